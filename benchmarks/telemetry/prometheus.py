"""Reading GPUs and inference servers from Prometheus text (`/metrics`).

One parser understands what embperf cares about in four dialects:
- the DCGM exporter (and embperf's own gpu-agent, which speaks the same names): per-GPU series
  labelled `gpu="<index>"`;
- vLLM (`vllm:num_requests_waiting`, `vllm:num_requests_running`, `vllm:prompt_tokens_total`);
- SGLang (`sglang:num_queue_reqs`, `sglang:num_running_reqs`, `sglang:prompt_tokens_total`);
- TEI (`te_queue_size`, `te_batch_next_size` histogram, `te_request_input_length` histogram).
Parsing is done by prometheus_client's own text parser, never by hand.
"""
import math
from dataclasses import dataclass, field

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.answers import (
    IDENTITY,
    MAX_METRICS_BYTES,
    AnswerTooLarge,
    describe_body,
    failure,
    mib,
    read_body,
    run_blocking,
)
from benchmarks.outbound import OutboundPolicy, OutboundRefused
from benchmarks.outbound import connector as outbound_connector
from benchmarks.telemetry.readings import GpuReading, ServerReading

# DCGM reports "no value" as a sentinel near the top of the field's range: 0x7ffffff0 (int32),
# 0x7ffffffffffffff0 (int64, near 2^63) or 2^47 (float64). No real GPU figure comes near them
# (2^47 mJ is 4 years at 1 kW), so anything at or above the smallest sentinel's range is "missing".
_DCGM_INT32_BLANK = 0x7FFFFFF0
_DCGM_FP64_BLANK = 2.0**47

# DCGM field -> GpuReading attribute, with a scale to embperf's units.
DCGM_FIELDS: dict[str, tuple[str, float]] = {
    "DCGM_FI_DEV_GPU_UTIL": ("util", 1.0),  # %
    "DCGM_FI_DEV_MEM_COPY_UTIL": ("mem_util", 1.0),  # %
    "DCGM_FI_PROF_SM_ACTIVE": ("sm_active", 100.0),  # ratio 0..1 -> %
    "DCGM_FI_DEV_FB_USED": ("mem_used_mib", 1.0),  # MiB
    "DCGM_FI_DEV_FB_RESERVED": ("mem_reserved_mib", 1.0),  # MiB
    "DCGM_FI_DEV_FB_TOTAL": ("mem_total_mib", 1.0),  # MiB
    "DCGM_FI_DEV_POWER_USAGE": ("power_w", 1.0),  # W
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": ("energy_mj", 1.0),  # mJ since boot
    "DCGM_FI_DEV_SM_CLOCK": ("sm_clock_mhz", 1.0),  # MHz
    "DCGM_FI_DEV_GPU_TEMP": ("temperature_c", 1.0),  # C
}
_DCGM_FB_FREE = "DCGM_FI_DEV_FB_FREE"
# Newer exporters renamed the throttle bitmask field; both carry NVML's bits.
_DCGM_THROTTLE = ("DCGM_FI_DEV_CLOCKS_EVENT_REASONS", "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS")

# Server dialects: (engine, queue depth metric, running metric, prompt token counter).
SERVER_DIALECTS: tuple[tuple[str, str, str | None, str | None], ...] = (
    ("vllm", "vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:prompt_tokens"),
    ("sglang", "sglang:num_queue_reqs", "sglang:num_running_reqs", "sglang:prompt_tokens"),
    # TEI has no "running" gauge; its prompt tokens are the sum of the input-length histogram.
    ("tei", "te_queue_size", None, "te_request_input_length_sum"),
)


def dcgm_value(value: float) -> float | None:
    """A DCGM sample's value, or None when it is DCGM's "not available" sentinel (or not a number)."""
    if value is None or math.isnan(value) or math.isinf(value):
        return None
    if value >= _DCGM_FP64_BLANK or _DCGM_INT32_BLANK <= value <= 0x7FFFFFFF:
        return None
    return float(value)


@dataclass
class ParsedMetrics:
    """What one scrape found."""

    gpus: list[GpuReading] = field(default_factory=list)
    server: ServerReading | None = None
    blank_fields: set[str] = field(default_factory=set)  # DCGM fields present but "not available"


def _sample_name(name: str) -> str:
    # The parser adds `_total` to every counter sample; DCGM's counters have no such suffix and
    # vLLM's do. Dropping it gives one spelling for both.
    return name[: -len("_total")] if name.endswith("_total") else name


def parse_metrics(text: str, *, source: str, t: float) -> ParsedMetrics:
    """Parse Prometheus exposition text into GPU readings (DCGM names) and a server reading.

    Raises ValueError when the text is not Prometheus exposition format.
    """
    samples: dict[str, list[tuple[dict, float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(_sample_name(sample.name), []).append((sample.labels, sample.value))
    parsed = ParsedMetrics()
    parsed.gpus = _gpu_readings(samples, source=source, t=t, blank=parsed.blank_fields)
    parsed.server = _server_reading(samples, source=source, t=t)
    return parsed


def _gpu_readings(samples: dict, *, source: str, t: float, blank: set[str]) -> list[GpuReading]:
    gpus: dict[int, GpuReading] = {}

    def gpu_for(labels: dict) -> GpuReading | None:
        try:
            index = int(labels.get("gpu", ""))
        except ValueError:
            return None
        if index not in gpus:
            gpus[index] = GpuReading(t=t, index=index, source=source, name=labels.get("modelName"),
                                     uuid=labels.get("UUID"))
        return gpus[index]

    for metric, (attribute, scale) in DCGM_FIELDS.items():
        for labels, raw in samples.get(metric, []):
            reading = gpu_for(labels)
            if reading is None:
                continue
            value = dcgm_value(raw)
            if value is None:
                blank.add(metric)
                continue
            setattr(reading, attribute, value * scale)
    free: dict[int, float] = {}
    for labels, raw in samples.get(_DCGM_FB_FREE, []):
        reading = gpu_for(labels)
        value = dcgm_value(raw)
        if reading is not None and value is not None:
            free[reading.index] = value
    for metric in _DCGM_THROTTLE:
        for labels, raw in samples.get(metric, []):
            reading = gpu_for(labels)
            value = dcgm_value(raw)
            if reading is not None and value is not None and reading.throttle_mask is None:
                reading.throttle_mask = int(value)
    for index, reading in gpus.items():
        # Exporters without FB_TOTAL: used + free (+ reserved) is the whole frame buffer.
        if reading.mem_total_mib is None and reading.mem_used_mib is not None and index in free:
            reading.mem_total_mib = reading.mem_used_mib + free[index] + (reading.mem_reserved_mib or 0.0)
    return [gpus[i] for i in sorted(gpus)]


def _sum(samples: dict, name: str | None) -> float | None:
    """Sum over label sets (data-parallel engines report one series per engine)."""
    if name is None or name not in samples:
        return None
    values = [v for _labels, v in samples[name] if v is not None and not math.isnan(v)]
    return float(sum(values)) if values else None


def _server_reading(samples: dict, *, source: str, t: float) -> ServerReading | None:
    reading = ServerReading(t=t, source=source)
    for engine, queue, running, tokens in SERVER_DIALECTS:
        found = [_sum(samples, queue), _sum(samples, running), _sum(samples, tokens)]
        if all(v is None for v in found):
            continue
        reading.engines.append(engine)
        for attribute, value in zip(("queue_depth", "running", "prompt_tokens"), found, strict=True):
            if value is not None:
                setattr(reading, attribute, (getattr(reading, attribute) or 0.0) + value)
    if "tei" in reading.engines:
        reading.batch_size_sum = _sum(samples, "te_batch_next_size_sum")
        reading.batch_size_count = _sum(samples, "te_batch_next_size_count")
    return reading if reading.engines else None


SCRAPE_THREAD = "telemetry-scrape"


class Scraper:
    """Fetches one metrics URL from the sampling thread, within a total timeout and a 16 MiB cap.

    Each scrape runs a short aiohttp exchange on its own event loop (benchmarks/answers.py): the
    timeout covers the headers and the whole body, so a server that trickles or streams without
    end costs one failed scrape (a telemetry note), never a stuck thread or unbounded memory.
    The URL passes the outbound policy (benchmarks/outbound.py) at every connection, a redirect is
    reported and never followed, and no credential is sent (a target's API key belongs to its base
    URLs only)."""

    def __init__(self, url: str, *, timeout_s: float = 0.9, limit: int = MAX_METRICS_BYTES,
                 outbound: OutboundPolicy | None = None):
        self.url = url
        self.timeout_s = timeout_s
        self.limit = limit
        self.outbound = outbound if outbound is not None else OutboundPolicy.from_environment()

    async def _fetch(self) -> tuple[int, bytes, dict]:
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout, connector=outbound_connector(self.outbound),
                                         auto_decompress=False, raise_for_status=False) as session:
            headers = {"Accept": "text/plain", **IDENTITY}
            async with session.get(self.url, headers=headers, allow_redirects=False) as response:
                if 300 <= response.status < 400:
                    return response.status, b"", response.headers
                body = await read_body(response, self.limit)
                return response.status, body, response.headers

    def scrape(self, t: float) -> ParsedMetrics:
        """Fetch and parse once; raises ScrapeError with a plain-words reason (never the page's text)."""
        try:
            self.outbound.check_url(self.url)
            status, body, headers = run_blocking(self._fetch)
        except OutboundRefused as exc:
            raise ScrapeError(f"not contacted: {exc}") from exc
        except AnswerTooLarge as exc:
            raise ScrapeError(f"the metrics page is larger than {mib(exc.limit)}") from exc
        except aiohttp.ClientConnectorError as exc:
            raise ScrapeError(f"cannot connect ({_reason(exc.os_error or exc)})") from exc
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            raise ScrapeError(failure(exc, self.timeout_s)[1]) from exc
        content_type = headers.get("Content-Type")
        if 300 <= status < 400:
            raise ScrapeError(f"HTTP {status}: the metrics URL redirects, and embperf follows no redirects; "
                              "give the URL it redirects to")
        if status != 200:
            raise ScrapeError(f"HTTP {status} ({describe_body(body, content_type)})")
        encoding = headers.get("Content-Encoding")
        if encoding is not None and encoding.strip().lower() not in ("", "identity"):
            raise ScrapeError(f"the page is compressed (Content-Encoding: {encoding[:40]}) although asked for none")
        try:
            return parse_metrics(body.decode("utf-8", "replace"), source=self.url, t=t)
        except Exception as exc:  # the parser's errors on garbage are not all ValueError
            # The parser's message quotes the offending line: say what the page was instead.
            raise ScrapeError(f"not Prometheus text ({describe_body(body, content_type)})") from exc

    def close(self) -> None:
        """Nothing is held between scrapes (each one opens and closes its own session)."""


class ScrapeError(Exception):
    """A scrape failed; str() says why in plain words."""


def _reason(exc: Exception) -> str:
    text = str(exc)
    return text or type(exc).__name__
