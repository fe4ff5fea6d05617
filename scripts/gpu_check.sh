#!/usr/bin/env bash
# GPU check for embperf's telemetry, to run on a host with an NVIDIA GPU.
#
# Puts a torch matmul load on one GPU and samples it for 10 s through embperf's own NVML path
# (benchmarks.telemetry, the code a sweep uses), then checks that utilisation rose above 50 % and
# memory use above idle, and prints the figures. Exits 0 when the checks pass, 1 when they fail,
# 2 when there is no usable GPU here, 3 when torch (with CUDA) is missing.
#
#   scripts/gpu_check.sh              # GPU 0 (NVML index, as nvidia-smi numbers them)
#   EMBPERF_GPU=1 scripts/gpu_check.sh
#   PYTHON=/path/to/python scripts/gpu_check.sh   # default: .venv/bin/python, else python3
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
GPU="${EMBPERF_GPU:-0}"
case "$GPU" in
    ''|*[!0-9]*) echo "gpu_check: EMBPERF_GPU must be one NVML GPU index such as 0 (got '$GPU')" >&2; exit 2 ;;
esac

exec "$PY" - "$GPU" <<'PYTHON'
import os
import sys
import threading
import time

gpu = int(sys.argv[1])
MEASURE_S = 10.0

try:
    from benchmarks.telemetry import build_telemetry
except ImportError as exc:
    print(f"gpu_check: cannot import embperf's telemetry ({exc}); run it from the repository", file=sys.stderr)
    sys.exit(2)

telemetry = build_telemetry(gpus=[gpu], interval_s=0.5)
telemetry.start()
unavailable = [n for n in telemetry.notes if n.startswith("GPU telemetry unavailable") or "not found on this host" in n]
if unavailable:
    telemetry.close()
    print(f"gpu_check: no usable NVIDIA GPU {gpu} here: {'; '.join(unavailable)}", file=sys.stderr)
    sys.exit(2)
for note in telemetry.notes:
    print(f"note: {note}")

# Idle first, before torch creates its CUDA context (which itself takes a few hundred MiB).
time.sleep(1.0)
telemetry.begin_level(0)
time.sleep(2.0)
idle_doc = telemetry.end_level(requests_ok=0, prompt_tokens=0)
if "gpu" not in idle_doc:
    telemetry.close()
    print(f"gpu_check: NVML opened but gave no reading of GPU {gpu}: {idle_doc['telemetry_notes']}", file=sys.stderr)
    sys.exit(2)
idle = idle_doc["gpu"]["gpus"][0]

# NVML numbers GPUs in PCI bus order; make CUDA number them the same way, and show it only ours.
os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
try:
    import torch
except ImportError:
    telemetry.close()
    print("gpu_check: torch is not installed; install a CUDA build of torch (pip install torch) to run the load",
          file=sys.stderr)
    sys.exit(3)
if not torch.cuda.is_available():
    telemetry.close()
    print(f"gpu_check: torch {torch.__version__} sees no CUDA GPU (CPU-only build, or driver too old for it)",
          file=sys.stderr)
    sys.exit(3)

N = 8192
a = torch.randn(N, N, device="cuda", dtype=torch.float16)
b = torch.randn(N, N, device="cuda", dtype=torch.float16)
stop = threading.Event()
done = [0]


def load() -> None:
    # Keep a few matmuls queued at all times; synchronising every few keeps the queue bounded.
    while not stop.is_set():
        for _ in range(8):
            torch.matmul(a, b)
        torch.cuda.synchronize()
        done[0] += 8


worker = threading.Thread(target=load, daemon=True)
worker.start()
time.sleep(1.0)  # let clocks ramp before the window opens
telemetry.begin_level(1)
before, started = done[0], time.monotonic()
time.sleep(MEASURE_S)
level = telemetry.end_level(requests_ok=0, prompt_tokens=0)
elapsed, matmuls = time.monotonic() - started, done[0] - before
stop.set()
worker.join(timeout=10)
telemetry.close()

busy = level["gpu"]["gpus"][0]
tflops = 2 * N**3 * matmuls / elapsed / 1e12


def show(value, unit=""):
    return "n/a" if value is None else f"{value:g}{unit}"


print(f"GPU {gpu}: {busy['name']}  ({busy['samples']} samples in {elapsed:.1f} s, {matmuls} matmuls "
      f"{N}x{N} fp16 = {tflops:.0f} TFLOP/s)")
rows = (
    ("utilization mean %", "utilization_mean"), ("utilization max %", "utilization_max"),
    ("SM activity mean % (GPM)", "sm_active_mean"), ("memory used peak MiB", "memory_used_peak_mib"),
    ("memory total MiB", "memory_total_mib"), ("power mean W", "power_mean_w"), ("energy J", "energy_j"),
    ("SM clock mean MHz", "sm_clock_mean_mhz"), ("temperature max C", "temperature_max_c"),
)
print(f"{'':28}{'idle':>12}{'load':>12}")
for label, key in rows:
    print(f"{label:28}{show(idle[key]):>12}{show(busy[key]):>12}")
print(f"{'clock event reasons':28}{','.join(idle['throttle_reasons']) or '-':>12}"
      f"{','.join(busy['throttle_reasons']) or '-':>12}")
if "energy" in level:
    print(f"energy over the window: {level['energy']['joules']} J ({level['energy']['method']})")
for note in level["telemetry_notes"]:
    print(f"note: {note}")

failures = []
if busy["utilization_mean"] is None or busy["utilization_mean"] <= 50:
    failures.append(f"utilization mean {show(busy['utilization_mean'])} % is not above 50 %")
if busy["memory_used_peak_mib"] is None or idle["memory_used_peak_mib"] is None \
        or busy["memory_used_peak_mib"] <= idle["memory_used_peak_mib"]:
    failures.append(f"memory used peak {show(busy['memory_used_peak_mib'])} MiB is not above idle "
                    f"{show(idle['memory_used_peak_mib'])} MiB")
if busy["samples"] < MEASURE_S:  # 2 Hz for 10 s should give about 20
    failures.append(f"only {busy['samples']} samples in {MEASURE_S:g} s")
if failures:
    for failure in failures:
        print(f"FAIL: {failure}")
    sys.exit(1)
print("PASS: utilization above 50 % and memory above idle, read through embperf's NVML sampling")
PYTHON
