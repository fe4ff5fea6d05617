"""What one sample of a GPU or of an inference server's metrics holds.

Both sources (local NVML and a scraped Prometheus endpoint) produce the same readings, so the
per-level summaries do not care where a figure came from. Times are `time.monotonic()` seconds
of the process that samples; a missing figure is None, never 0.
"""
from dataclasses import dataclass, field

# Clock event ("throttle") reason bits. NVML and DCGM share the same bit values.
THROTTLE_REASONS: tuple[tuple[int, str], ...] = (
    (0x0001, "gpu_idle"),
    (0x0002, "applications_clocks_setting"),
    (0x0004, "sw_power_cap"),
    (0x0008, "hw_slowdown"),
    (0x0010, "sync_boost"),
    (0x0020, "sw_thermal_slowdown"),
    (0x0040, "hw_thermal_slowdown"),
    (0x0080, "hw_power_brake_slowdown"),
    (0x0100, "display_clock_setting"),
)


def throttle_reason_names(mask: int | None) -> list[str]:
    """Names of the reasons set in a clock event bitmask, in bit order."""
    if not mask:
        return []
    return [name for bit, name in THROTTLE_REASONS if mask & bit]


@dataclass
class GpuReading:
    """One GPU at one moment."""

    t: float
    index: int
    source: str = "nvml"  # "nvml", or the metrics URL it was scraped from
    name: str | None = None
    uuid: str | None = None
    util: float | None = None  # % of time any kernel ran
    mem_util: float | None = None  # % of time device memory was read or written
    sm_active: float | None = None  # % of SMs busy (GPM / DCGM profiling), the truer "how full"
    mem_used_mib: float | None = None
    mem_reserved_mib: float | None = None
    mem_total_mib: float | None = None
    power_w: float | None = None
    energy_mj: float | None = None  # counter since driver load, millijoules
    sm_clock_mhz: float | None = None
    temperature_c: float | None = None
    throttle_mask: int | None = None

    @property
    def key(self) -> tuple[str, int]:
        """Identifies one GPU across samples (several exporters may each have a GPU 0)."""
        return (self.source, self.index)


@dataclass
class ServerReading:
    """One inference server's /metrics at one moment (sums over its label sets)."""

    t: float
    source: str
    engines: list[str] = field(default_factory=list)  # vllm, sglang, tei
    queue_depth: float | None = None
    running: float | None = None
    prompt_tokens: float | None = None  # counter
    batch_size_sum: float | None = None  # TEI te_batch_next_size histogram sum (counter)
    batch_size_count: float | None = None  # and its count
