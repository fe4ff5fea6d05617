"""Reading local GPUs through NVML (`nvidia-ml-py`, module `pynvml`).

NVML is initialised in `NvmlReader.open()`, never at import: a Celery worker forks its task
processes, and an NVML handle opened before the fork is not valid after it. Everything that can
go wrong on a host without a usable GPU (no library, no driver, no permission, no device) ends in
`GpuUnavailable` with a reason a person can act on; a figure one GPU does not offer (power on
some boards, SM activity before Hopper) becomes None plus one note.
"""
import time

from benchmarks.telemetry.readings import GpuReading

MIB = 1024 * 1024


class GpuUnavailable(Exception):
    """NVML cannot be used on this host; str() is the reason."""


def _pynvml():
    try:
        import pynvml
    except ImportError as exc:  # the package is a runtime dependency, but say so plainly if it is missing
        raise GpuUnavailable("nvidia-ml-py (module pynvml) is not installed") from exc
    return pynvml


def unavailable_reason(exc: Exception) -> str:
    """Plain words for an NVML failure at start-up."""
    pynvml = _pynvml()
    if isinstance(exc, pynvml.NVMLError_LibraryNotFound):
        return "NVML library not found (no NVIDIA driver installed on this host)"
    if isinstance(exc, pynvml.NVMLError_DriverNotLoaded):
        return "NVIDIA driver not loaded"
    if isinstance(exc, pynvml.NVMLError_NoPermission):
        return "no permission to read the GPU through NVML (Insufficient Permissions)"
    if isinstance(exc, pynvml.NVMLError_LibRmVersionMismatch):
        return "NVML library and kernel driver versions differ (reboot or reload the driver)"
    if isinstance(exc, pynvml.NVMLError):
        return f"NVML error: {exc}"
    return f"{type(exc).__name__}: {exc}"


class _Gpu:
    """Handle and static facts of one GPU, plus its GPM sample pair."""

    def __init__(self, index: int, handle, name: str, uuid: str | None):
        self.index = index
        self.handle = handle
        self.name = name
        self.uuid = uuid
        self.gpm_samples = None  # [previous, current] when GPM works on this GPU


class NvmlReader:
    """Reads utilisation, memory, power, energy, clocks, temperature and SM activity of local GPUs.

    `indices` are NVML indices (PCI bus order, as `nvidia-smi` lists them); None or [] means all.
    Not thread-safe: one thread calls `read()`.
    """

    def __init__(self, indices: list[int] | None = None):
        self.indices = list(indices or [])
        self.notes: list[str] = []
        self._gpus: list[_Gpu] = []
        self._open = False
        self._failed_fields: set[tuple[int, str]] = set()

    def _note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def open(self) -> None:
        """Initialise NVML and find the GPUs; raises GpuUnavailable with the reason."""
        pynvml = _pynvml()
        try:
            pynvml.nvmlInit()
        except Exception as exc:
            raise GpuUnavailable(unavailable_reason(exc)) from exc
        self._open = True
        try:
            count = pynvml.nvmlDeviceGetCount()
            if count == 0:
                raise GpuUnavailable("NVML found no NVIDIA GPU on this host")
            wanted = self.indices or list(range(count))
            missing = [i for i in wanted if i < 0 or i >= count]
            if missing:
                self._note(
                    f"GPU {', '.join(map(str, missing))} not found on this host "
                    f"(NVML sees {count} GPU{'s' if count != 1 else ''}: 0-{count - 1})"
                )
            for index in wanted:
                if index in missing:
                    continue
                try:
                    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                except pynvml.NVMLError as exc:
                    self._note(f"GPU {index} cannot be read: {unavailable_reason(exc)}")
                    continue
                self._gpus.append(_Gpu(index, handle, _text(_optional(pynvml.nvmlDeviceGetName, handle)),
                                       _optional(pynvml.nvmlDeviceGetUUID, handle)))
            if not self._gpus:
                raise GpuUnavailable(self.notes[-1] if self.notes else "no GPU could be opened")
            for gpu in self._gpus:
                self._open_gpm(pynvml, gpu)
        except GpuUnavailable:
            self.close()
            raise
        except Exception as exc:
            self.close()
            raise GpuUnavailable(unavailable_reason(exc)) from exc

    def _open_gpm(self, pynvml, gpu: _Gpu) -> None:
        """SM activity comes from GPM (Hopper and later); elsewhere it stays None."""
        try:
            support = pynvml.nvmlGpmQueryDeviceSupport(gpu.handle)
            if not support.isSupportedDevice:
                self._note(f"SM activity unavailable on GPU {gpu.index} ({gpu.name}): GPM metrics need Hopper or newer")
                return
            gpu.gpm_samples = [pynvml.nvmlGpmSampleAlloc(), pynvml.nvmlGpmSampleAlloc()]
            pynvml.nvmlGpmSampleGet(gpu.handle, gpu.gpm_samples[0])
        except Exception as exc:
            self._free_gpm(pynvml, gpu)
            self._note(f"SM activity unavailable on GPU {gpu.index} ({gpu.name}): {_error_text(exc)}")

    @staticmethod
    def _free_gpm(pynvml, gpu: _Gpu) -> None:
        for sample in gpu.gpm_samples or []:
            try:
                pynvml.nvmlGpmSampleFree(sample)
            except Exception:  # freeing on shutdown: nothing useful to do with an error
                pass
        gpu.gpm_samples = None

    @property
    def gpu_indices(self) -> list[int]:
        return [gpu.index for gpu in self._gpus]

    def read(self) -> list[GpuReading]:
        """One reading per GPU; a figure NVML refuses becomes None (and one note per GPU and figure)."""
        pynvml = _pynvml()
        out = []
        for gpu in self._gpus:
            t = time.monotonic()
            h = gpu.handle
            util = self._field(gpu, "utilization", pynvml.nvmlDeviceGetUtilizationRates, h)
            mem = self._memory(pynvml, gpu)
            power_mw = self._field(gpu, "power", pynvml.nvmlDeviceGetPowerUsage, h)
            energy = self._field(gpu, "energy counter", pynvml.nvmlDeviceGetTotalEnergyConsumption, h)
            clock = self._field(gpu, "SM clock", pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_SM)
            temp = self._field(gpu, "temperature", pynvml.nvmlDeviceGetTemperature, h, pynvml.NVML_TEMPERATURE_GPU)
            reasons = self._throttle(pynvml, gpu)
            out.append(GpuReading(
                t=t,
                index=gpu.index,
                source="nvml",
                name=gpu.name,
                uuid=gpu.uuid,
                util=float(util.gpu) if util is not None else None,
                mem_util=float(util.memory) if util is not None else None,
                sm_active=self._sm_active(pynvml, gpu),
                mem_used_mib=mem.used / MIB if mem is not None else None,
                mem_reserved_mib=getattr(mem, "reserved", 0) / MIB if mem is not None else None,
                mem_total_mib=mem.total / MIB if mem is not None else None,
                power_w=power_mw / 1000.0 if power_mw is not None else None,
                energy_mj=float(energy) if energy is not None else None,
                sm_clock_mhz=float(clock) if clock is not None else None,
                temperature_c=float(temp) if temp is not None else None,
                throttle_mask=reasons,
            ))
        return out

    def _field(self, gpu: _Gpu, what: str, fn, *args):
        try:
            return fn(*args)
        except Exception as exc:
            return self._failed(gpu, what, exc)

    def _failed(self, gpu: _Gpu, what: str, exc: Exception) -> None:
        """Note a figure this GPU refuses, once per GPU and figure; the figure reads None."""
        if (gpu.index, what) not in self._failed_fields:
            self._failed_fields.add((gpu.index, what))
            self._note(f"{what} unavailable on GPU {gpu.index}: {_error_text(exc)}")
        return None

    def _memory(self, pynvml, gpu: _Gpu):
        # v2 separates memory the driver reserves from memory processes use; drivers before
        # R510 lack it, so fall back to v1 there.
        try:
            return pynvml.nvmlDeviceGetMemoryInfo(gpu.handle, version=pynvml.nvmlMemory_v2)
        except pynvml.NVMLError_FunctionNotFound:
            return self._field(gpu, "memory", pynvml.nvmlDeviceGetMemoryInfo, gpu.handle)
        except Exception as exc:
            return self._failed(gpu, "memory", exc)

    def _throttle(self, pynvml, gpu: _Gpu) -> int | None:
        try:
            return int(pynvml.nvmlDeviceGetCurrentClocksEventReasons(gpu.handle))
        except pynvml.NVMLError_FunctionNotFound:
            # drivers before R535 only have the older name for the same bitmask
            value = self._field(gpu, "throttle reasons", pynvml.nvmlDeviceGetCurrentClocksThrottleReasons, gpu.handle)
            return int(value) if value is not None else None
        except Exception as exc:
            return self._failed(gpu, "throttle reasons", exc)

    def _sm_active(self, pynvml, gpu: _Gpu) -> float | None:
        """Share of SMs busy between the previous read and this one (GPM SM_UTIL), in %."""
        if not gpu.gpm_samples:
            return None
        previous, current = gpu.gpm_samples
        try:
            pynvml.nvmlGpmSampleGet(gpu.handle, current)
            request = pynvml.c_nvmlGpmMetricsGet_t()
            request.version = pynvml.NVML_GPM_METRICS_GET_VERSION
            request.numMetrics = 1
            request.sample1 = previous
            request.sample2 = current
            request.metrics[0].metricId = pynvml.NVML_GPM_METRIC_SM_UTIL
            pynvml.nvmlGpmMetricsGet(request)
            gpu.gpm_samples = [current, previous]  # this read's sample is the next one's start
            metric = request.metrics[0]
            if metric.nvmlReturn != pynvml.NVML_SUCCESS:
                raise pynvml.NVMLError(metric.nvmlReturn)
            return float(metric.value)
        except Exception as exc:
            self._note(f"SM activity unavailable on GPU {gpu.index}: {_error_text(exc)}")
            self._free_gpm(pynvml, gpu)
            return None

    def close(self) -> None:
        """Free GPM samples and shut NVML down; safe to call twice."""
        if not self._open:
            return
        pynvml = _pynvml()
        for gpu in self._gpus:
            self._free_gpm(pynvml, gpu)
        self._gpus = []
        self._open = False
        try:
            pynvml.nvmlShutdown()
        except Exception:  # already shut down or the driver went away: nothing left to release
            pass


def _optional(fn, *args):
    try:
        return fn(*args)
    except Exception:
        return None


def _text(value) -> str | None:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value


def _error_text(exc: Exception) -> str:
    text = str(exc)
    return text if text else type(exc).__name__
