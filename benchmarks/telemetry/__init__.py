"""GPU and inference-server telemetry, aligned with each load level.

The engine builds one `Telemetry` per run (`build_telemetry`), calls `start()` before the first
level, `begin_level()` / `end_level()` around each measured window and `close()` at the end.
Readings are taken in background threads (NVML every `interval_s`, Prometheus URLs once a second),
so the engine's event loop never waits on a GPU or a scrape. `end_level()` returns the level's
`gpu`, `server`, `energy` and `telemetry_notes` sections (docs/result-schema.md).

Nothing here ever fails a run: a source that cannot be read becomes a note, e.g.
"GPU telemetry unavailable: NVML library not found (no NVIDIA driver installed on this host)".
"""
import threading
import time
from collections.abc import Callable

from benchmarks.outbound import OutboundPolicy
from benchmarks.telemetry.nvml import GpuUnavailable, NvmlReader
from benchmarks.telemetry.prometheus import SCRAPE_THREAD, ScrapeError, Scraper
from benchmarks.telemetry.readings import GpuReading, ServerReading
from benchmarks.telemetry.summary import energy_section, summarise_gpus, summarise_server

__all__ = ["Telemetry", "build_telemetry"]

# Readings older than this before the current level's start are dropped; the counters only need
# the neighbours of the window's edges.
_KEEP_BEFORE_LEVEL_S = 10.0


def build_telemetry(*, gpus: list[int] | None = None, metrics_urls: list[str] | None = None,
                    interval_s: float = 0.5, outbound: OutboundPolicy | None = None) -> "Telemetry":
    """A Telemetry for a target's GPU sources.

    gpus: NVML indices of local GPUs to sample (None: no local sampling; []: every local GPU).
    metrics_urls: Prometheus endpoints (DCGM exporter, gpu-agent, vLLM / SGLang / TEI /metrics).
    interval_s: NVML sampling period (0.5 s gives 2 Hz; NVML's own utilisation window is 1/6-1 s).
    outbound: the outbound policy every scrape passes (default: the one of $EMBPERF_ALLOWED_TARGETS).
    """
    return Telemetry(gpus=gpus, metrics_urls=metrics_urls, interval_s=interval_s, outbound=outbound)


class _Sampler(threading.Thread):
    """Calls `take()` every `period_s` on a fixed schedule until stopped."""

    def __init__(self, name: str, period_s: float, take: Callable[[], None], on_error: Callable[[Exception], None]):
        super().__init__(name=name, daemon=True)
        self.period_s = period_s
        self._take = take
        self._on_error = on_error
        self._stop_event = threading.Event()

    def run(self) -> None:
        next_at = time.monotonic()
        while not self._stop_event.is_set():
            try:
                self._take()
            except Exception as exc:  # a sampling thread must outlive any one bad reading
                self._on_error(exc)
            next_at += self.period_s
            now = time.monotonic()
            if next_at < now:  # fell behind (slow scrape): skip, don't burst
                next_at = now + self.period_s
            self._stop_event.wait(next_at - now)

    def stop(self) -> None:
        self._stop_event.set()


class Telemetry:
    """Samples GPUs (NVML and/or DCGM-style Prometheus) and server metrics during a run."""

    def __init__(self, *, gpus: list[int] | None = None, metrics_urls: list[str] | None = None,
                 interval_s: float = 0.5, scrape_interval_s: float = 1.0, nvml_reader: NvmlReader | None = None,
                 outbound: OutboundPolicy | None = None):
        self.notes: list[str] = []
        self.outbound = outbound
        self.gpus = None if gpus is None else list(gpus)
        self.metrics_urls = []
        for url in metrics_urls or []:
            url = str(url).strip()
            if url.startswith(("http://", "https://")):
                self.metrics_urls.append(url)
            elif url:
                self._note(f"metrics URL {url!r} skipped: it must start with http:// or https://")
        self.interval_s = max(float(interval_s), 0.05)
        self.scrape_interval_s = max(float(scrape_interval_s), 0.05)
        self._reader = nvml_reader
        self._lock = threading.Lock()
        self._gpu_readings: list[GpuReading] = []
        self._server_readings: list[ServerReading] = []
        self._latest_gpu: dict[tuple[str, int], GpuReading] = {}
        self._latest_server: dict[str, ServerReading] = {}
        self._scrapers: list[Scraper] = []
        self._scrape_stats: dict[str, dict] = {}
        self._silent_urls: set[str] = set()
        self._samplers: list[_Sampler] = []
        self._started = False
        self._level_start: float | None = None
        self._last_end: float | None = None

    # -- notes ---------------------------------------------------------------------------------
    def _note(self, text: str) -> None:
        """Add a run-wide note once."""
        if text not in self.notes:
            self.notes.append(text)

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Open the sources (NVML is initialised here, in the process that runs the sweep) and start sampling."""
        if self._started:
            return
        self._started = True
        self._last_end = time.monotonic()
        if self.gpus is not None:
            reader = self._reader or NvmlReader(self.gpus)
            try:
                reader.open()
            except GpuUnavailable as exc:
                self._note(f"GPU telemetry unavailable: {exc}")
                reader = None
            except Exception as exc:  # whatever NVML does, the run goes on
                self._note(f"GPU telemetry unavailable: {type(exc).__name__}: {exc}")
                reader = None
            self._reader = reader
            if reader is not None:
                self._merge_reader_notes()
                sampler = _Sampler("telemetry-nvml", self.interval_s, self._read_nvml,
                                   lambda exc: self._note(f"GPU reading failed: {exc}"))
                self._samplers.append(sampler)
        if self.metrics_urls:
            # a scrape that takes longer than the period is late anyway; a short floor keeps a busy host
            # from failing every scrape when the period is short
            timeout_s = min(max(0.9 * self.scrape_interval_s, 0.5), 2.0)
            self._scrapers = [Scraper(url, timeout_s=timeout_s, outbound=self.outbound) for url in self.metrics_urls]
            self._scrape_stats = {url: _new_stats() for url in self.metrics_urls}
            sampler = _Sampler(SCRAPE_THREAD, self.scrape_interval_s, self._scrape_all,
                               lambda exc: self._note(f"metrics scrape failed: {exc}"))
            self._samplers.append(sampler)
        for sampler in self._samplers:
            sampler.start()

    def close(self) -> None:
        """Stop sampling and release NVML and HTTP clients; safe to call more than once."""
        for sampler in self._samplers:
            sampler.stop()
        for sampler in self._samplers:
            if sampler.is_alive() and sampler is not threading.current_thread():
                sampler.join(timeout=3)
        self._samplers = []
        for scraper in self._scrapers:
            scraper.close()
        self._scrapers = []
        if self._reader is not None:
            try:
                self._reader.close()
            except Exception as exc:
                self._note(f"closing NVML failed: {exc}")
            self._reader = None

    # -- sampling (background threads) ---------------------------------------------------------
    def _merge_reader_notes(self) -> None:
        if self._reader is not None:
            for text in self._reader.notes:
                self._note(text)

    def _read_nvml(self) -> None:
        readings = self._reader.read() if self._reader is not None else []
        with self._lock:
            self._gpu_readings.extend(readings)
            for reading in readings:
                self._latest_gpu[reading.key] = reading
            self._merge_reader_notes()

    def _scrape_all(self) -> None:
        for scraper in list(self._scrapers):
            t = time.monotonic()  # the send time: what the server reports is at or just after it
            try:
                parsed = scraper.scrape(t)
            except ScrapeError as exc:
                with self._lock:
                    stats = self._scrape_stats[scraper.url]
                    stats["failed"] += 1
                    stats["last_error"] = str(exc)
                continue
            with self._lock:
                self._scrape_stats[scraper.url]["ok"] += 1
                if not parsed.gpus and parsed.server is None and scraper.url not in self._silent_urls:
                    self._silent_urls.add(scraper.url)
                    self._note(f"metrics URL {scraper.url} serves no DCGM, vLLM, SGLang or TEI metrics")
                for metric in sorted(parsed.blank_fields):
                    self._note(f"{metric} is not available from {scraper.url} (DCGM reports it as blank)")
                self._gpu_readings.extend(parsed.gpus)
                for reading in parsed.gpus:
                    self._latest_gpu[reading.key] = reading
                if parsed.server is not None:
                    self._server_readings.append(parsed.server)
                    self._latest_server[scraper.url] = parsed.server

    # -- levels --------------------------------------------------------------------------------
    def begin_level(self, index: int) -> None:
        """Mark the start of a level's measured window."""
        now = time.monotonic()
        with self._lock:
            self._level_start = now
            horizon = now - _KEEP_BEFORE_LEVEL_S
            self._gpu_readings = [r for r in self._gpu_readings if r.t >= horizon]
            self._server_readings = [r for r in self._server_readings if r.t >= horizon]
            for url in self._scrape_stats:
                self._scrape_stats[url] = _new_stats()

    def end_level(self, *, requests_ok: int, prompt_tokens: int, duration_s: float | None = None,
                  client_in_flight: float | None = None, latency_ms: float | None = None,
                  idle_latency_ms: float | None = None) -> dict:
        """The level's telemetry sections (`gpu`, `server`, `energy` when there is data) and its notes.

        duration_s: the measured window's length. A level may end after its window (requests still in
        flight are waited for); with duration_s the window closes at begin_level() + duration_s, so the
        energy and the averages cover exactly the time its requests_ok and prompt_tokens were counted in.
        client_in_flight, latency_ms, idle_latency_ms: what the client saw (mean requests in flight, the
        level's p50, an idle request's latency), to check the server's gauges against (summarise_server).
        """
        now = time.monotonic()
        with self._lock:
            start = self._level_start if self._level_start is not None else (self._last_end or now)
            end = now if duration_s is None or duration_s <= 0 else min(now, start + duration_s)
            gpu_readings = list(self._gpu_readings)
            server_readings = list(self._server_readings)
            stats = {url: dict(s) for url, s in self._scrape_stats.items()}
            self._level_start = None
            self._last_end = now
        out: dict = {}
        notes: list[str] = []
        for url, s in stats.items():
            if s["failed"]:
                attempts = s["ok"] + s["failed"]
                notes.append(f"metrics URL {url}: {s['failed']} of {attempts} scrapes failed ({s['last_error']})")
        gpu, energy, gpu_notes = summarise_gpus(gpu_readings, start, end)
        notes.extend(gpu_notes)
        if gpu is not None:
            out["gpu"] = gpu
        section = energy_section(energy, requests_ok=requests_ok, prompt_tokens=prompt_tokens)
        if section is not None:
            out["energy"] = section
        if server_readings:
            server, server_notes = summarise_server(server_readings, start, end, client_prompt_tokens=prompt_tokens,
                                                    client_in_flight=client_in_flight, latency_ms=latency_ms,
                                                    idle_latency_ms=idle_latency_ms)
            notes.extend(server_notes)
            if server is not None:
                out["server"] = server
        out["telemetry_notes"] = notes
        return out

    def latest(self) -> dict | None:
        """The newest reading of each GPU and the newest server figures, for live progress."""
        with self._lock:
            gpus = [self._latest_gpu[key] for key in sorted(self._latest_gpu)]
            servers = list(self._latest_server.values())
        if not gpus and not servers:
            return None
        out: dict = {}
        if gpus:
            out["gpus"] = [
                {
                    "index": r.index,
                    **({"source": r.source} if r.source != "nvml" else {}),
                    "util": r.util,
                    "sm_active": r.sm_active,
                    "mem_used_mib": None if r.mem_used_mib is None else round(r.mem_used_mib),
                    "mem_total_mib": None if r.mem_total_mib is None else round(r.mem_total_mib),
                    "power_w": None if r.power_w is None else round(r.power_w, 1),
                    "sm_clock_mhz": r.sm_clock_mhz,
                    "temperature_c": r.temperature_c,
                }
                for r in gpus
            ]
        if servers:
            queue = [r.queue_depth for r in servers if r.queue_depth is not None]
            running = [r.running for r in servers if r.running is not None]
            out["server"] = {"queue_depth": sum(queue) if queue else None,
                             "running": sum(running) if running else None}
        return out


def _new_stats() -> dict:
    return {"ok": 0, "failed": 0, "last_error": ""}
