"""The gpu-agent: serves this host's NVML readings as Prometheus text under DCGM exporter names.

For GPU hosts without a DCGM exporter: `python -m benchmarks gpu-agent --port 9400` on the GPU host,
then give the target the metrics URL `http://<gpu-host>:9400/metrics`. A sweep run from any worker
then samples that host's GPUs exactly as it would sample a DCGM exporter.
"""
import argparse
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from benchmarks.telemetry.nvml import GpuUnavailable, NvmlReader
from benchmarks.telemetry.readings import GpuReading

# (DCGM field name, type, help, value from a reading); the units are the exporter's own.
_FIELDS = (
    ("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %).", lambda r: r.util),
    ("DCGM_FI_DEV_MEM_COPY_UTIL", "gauge", "Memory utilization (in %).", lambda r: r.mem_util),
    ("DCGM_FI_PROF_SM_ACTIVE", "gauge", "The ratio of cycles an SM has at least 1 warp assigned.",
     lambda r: None if r.sm_active is None else r.sm_active / 100.0),
    ("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB).", lambda r: r.mem_used_mib),
    ("DCGM_FI_DEV_FB_FREE", "gauge", "Framebuffer memory free (in MiB).",
     lambda r: None if r.mem_total_mib is None or r.mem_used_mib is None
     else r.mem_total_mib - r.mem_used_mib - (r.mem_reserved_mib or 0.0)),
    ("DCGM_FI_DEV_FB_RESERVED", "gauge", "Framebuffer memory reserved (in MiB).", lambda r: r.mem_reserved_mib),
    ("DCGM_FI_DEV_FB_TOTAL", "gauge", "Framebuffer memory total (in MiB).", lambda r: r.mem_total_mib),
    ("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W).", lambda r: r.power_w),
    ("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "counter", "Total energy consumption since boot (in mJ).",
     lambda r: r.energy_mj),
    ("DCGM_FI_DEV_SM_CLOCK", "gauge", "SM clock frequency (in MHz).", lambda r: r.sm_clock_mhz),
    ("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C).", lambda r: r.temperature_c),
    ("DCGM_FI_DEV_CLOCKS_EVENT_REASONS", "gauge", "Current clock event reasons (bitmask).",
     lambda r: r.throttle_mask),
)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def render_metrics(readings: list[GpuReading], *, hostname: str) -> str:
    """Prometheus exposition text for the readings, labelled the way the DCGM exporter labels them.

    A figure the GPU does not offer is left out rather than sent as a sentinel.
    """
    lines = []
    for name, kind, help_text, value_of in _FIELDS:
        rows = []
        for r in readings:
            value = value_of(r)
            if value is None:
                continue
            labels = (f'gpu="{r.index}",UUID="{_label(r.uuid or "")}",device="nvidia{r.index}",'
                      f'modelName="{_label(r.name or "")}",Hostname="{_label(hostname)}"')
            rows.append(f"{name}{{{labels}}} {_number(value)}")
        if rows:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(rows)
    return "\n".join(lines) + "\n"


class GpuAgent:
    """An HTTP server answering GET /metrics with fresh readings from `reader` (anything with `read()`)."""

    # Readings closer together than this are served from the last read: GPM's SM activity needs
    # some distance between its two samples, and two scrapers at once should not halve it.
    min_read_interval_s = 0.1

    def __init__(self, reader, *, host: str = "0.0.0.0", port: int = 9400, hostname: str | None = None):
        self.reader = reader
        self.hostname = hostname or socket.gethostname()
        self._lock = threading.Lock()
        self._last: tuple[float, str] | None = None
        self._thread: threading.Thread | None = None
        agent = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # http.server's naming
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    try:
                        body, status = agent.metrics_text().encode(), 200
                    except Exception as exc:  # a failed read is the scraper's problem to note, not a crash
                        body, status = f"reading the GPUs failed: {exc}\n".encode(), 500
                    ctype = "text/plain; version=0.0.4; charset=utf-8"
                elif path == "/":
                    body, status, ctype = b"embperf gpu-agent: GPU readings at /metrics\n", 200, "text/plain"
                else:
                    body, status, ctype = b"not found: try /metrics\n", 404, "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format, *args):  # http.server's signature
                pass  # one line per scrape each second would drown the console

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        return f"http://{shown}:{port}/metrics"

    def metrics_text(self) -> str:
        """Read the GPUs (at most every `min_read_interval_s`) and render the text."""
        with self._lock:
            now = time.monotonic()
            if self._last is None or now - self._last[0] >= self.min_read_interval_s:
                self._last = (now, render_metrics(self.reader.read(), hostname=self.hostname))
            return self._last[1]

    def start(self) -> "GpuAgent":
        """Serve in a background thread (for embedding and tests)."""
        self._thread = threading.Thread(target=self.server.serve_forever, name="gpu-agent", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=3)


def _parse_gpus(text: str) -> list[int]:
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--gpus takes NVML indices such as 0,1 (got {text!r})") from None


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks gpu-agent [--host H] [--port 9400] [--gpus 0,1]`; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks gpu-agent",
        description="Serve this host's NVIDIA GPU readings (NVML) as Prometheus text under DCGM exporter names.",
    )
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default: all interfaces)")
    parser.add_argument("--port", type=int, default=9400, help="port to listen on (default: 9400, as DCGM's)")
    parser.add_argument("--gpus", type=_parse_gpus, default=[], help="NVML indices to serve, e.g. 0,1 (default: all)")
    args = parser.parse_args(argv)
    reader = NvmlReader(args.gpus)
    try:
        reader.open()
    except GpuUnavailable as exc:
        print(f"gpu-agent: GPU telemetry unavailable: {exc}", file=sys.stderr)
        return 2
    try:
        agent = GpuAgent(reader, host=args.host, port=args.port)
    except OSError as exc:
        reader.close()
        print(f"gpu-agent: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    for text in reader.notes:
        print(f"gpu-agent: {text}", file=sys.stderr)
    gpus = ", ".join(str(i) for i in reader.gpu_indices)
    print(f"gpu-agent: serving GPU {gpus} at http://{args.host}:{agent.server.server_address[1]}/metrics "
          "(Ctrl-C to stop)", flush=True)
    try:
        agent.server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        agent.server.server_close()
        reader.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
