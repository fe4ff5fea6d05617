"""`make bench` section "engine": how fast and how honest is the load generator itself?

Prints, beside each goal, the median of a few repeats:
 (a) requests/s of ONE engine process (closed loop, concurrency 64, full validation of 1024-float
     responses) against scripts/fast_target.py, and wrk (C, one thread) against the same target at the
     same concurrency; their ratio.                                     goal: >= 3,000 req/s
 (b) the same with --processes 2, as a ratio to one process.            goal: >= 1.7x
 (c) latency the client adds at concurrency 1 against the target with a fixed 20 ms delay
     (engine p50 and p99 minus 20 ms; wrk's figures beside them).       goal: p50 < 0.5 ms, p99 < 2 ms
 (d) cross-check: engine and wrk at the same concurrency against the simulator; requests/s should
     agree within 5 %.
The engine runs through `benchmarks.sweep.run_sweep` (what the CLI and the workers call), in a fresh
process per measurement, with the default validation of every response. Repeats alternate engine
and wrk so that load from other programs on the machine hits both alike; the load average is
printed, since a busy machine lowers every figure.

    python scripts/bench_engine.py [--repeats 3] [--duration 5] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
WRK_LUA = ROOT / "scripts" / "wrk_post.lua"
CONCURRENCY = 64
DELAY_MS = 20.0
CROSS_CHECK_CONCURRENCY = 32
# The simulator for the cross-check serves every request in a fixed 50 ms, independent of the others
# and of the input length (the engine sends unique calibrated texts, wrk one fixed body). Its batching
# scheduler is off on purpose: how requests fall into batches depends on how fast a client re-sends
# after a response, so a slower client would get fewer requests/s for a reason other than counting.
# With 50 ms per request, a client turnaround of 0.5 ms moves the figure by 1 %.
SIMULATOR_ARGS = ["--delay-ms", "50", "--batch-ms", "0", "--token-us", "0", "--batch-wait-ms", "0",
                  "--dimensions", "1024"]
TOKENS = 128

GOAL_QPS = 3000.0
GOAL_SCALING = 1.7
GOAL_ADDED_P50_MS = 0.5
GOAL_ADDED_P99_MS = 2.0
GOAL_AGREEMENT = 0.05


class BenchError(Exception):
    """A measurement that could not be made; the message says why."""


# ----- processes ---------------------------------------------------------------------------------
@contextmanager
def serving(command: list[str], what: str):
    """Start a server that prints its URL (http://127.0.0.1:PORT) on its first line; yield the root URL."""
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        line = process.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        if not match:
            rest = process.stdout.read() if process.poll() is not None else ""
            raise BenchError(f"{what} did not start: {(line + rest).strip() or 'no output'}")
        yield f"http://127.0.0.1:{match.group(1)}"
    finally:
        # The server's own process group: a multi-process target takes its children with it.
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        process.stdout.close()


def run_engine(url: str, model: str, *, concurrency: int, duration: float, warmup: float,
               processes: int = 1) -> dict:
    """One closed-loop level of the engine (``benchmarks.sweep.run_sweep``) in a fresh process.

    Returns the level document.
    """
    spec = {"target": {"name": "bench", "flavor": "openai", "base_urls": [url], "model": model},
            "plan": {"mode": "closed", "levels": [concurrency], "duration_s": duration, "warmup_s": warmup,
                     "tokens": TOKENS, "dimensions": 1024, "encoding": "float", "processes": processes,
                     "timeout_s": 10}}
    budget = warmup + duration + 60
    command = [PY, str(Path(__file__).resolve()), "--run-level", json.dumps(spec)]
    try:
        completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=budget)
    except subprocess.TimeoutExpired:
        raise BenchError(f"the engine did not finish within {budget:.0f} s") from None
    if completed.returncode != 0:
        tail = (completed.stderr or completed.stdout).strip().splitlines()[-5:]
        raise BenchError(f"the engine exited {completed.returncode}: {' | '.join(tail)}")
    level = json.loads(completed.stdout.strip().splitlines()[-1])
    if not level.get("requests_ok"):
        raise BenchError(f"the engine got no successful request: errors {level.get('errors')}, "
                         f"examples {level.get('error_examples')}")
    if level.get("requests_failed"):
        raise BenchError(f"the engine saw failures: {level.get('errors')}, examples {level.get('error_examples')}")
    return level


def _run_level(spec_json: str) -> int:
    """Child process of run_engine: run the sweep and print its one level as JSON on the last line."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.sweep import run_sweep

    spec = json.loads(spec_json)
    document = run_sweep(spec["target"], spec["plan"])
    print(json.dumps(document["levels"][0]))
    return 0


_WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def ensure_wrk() -> str:
    """Path of wrk, installed with apt-get (Debian package `wrk`) when missing."""
    found = shutil.which("wrk")
    if found:
        return found
    print("wrk not found; installing the Debian package with apt-get ...", flush=True)
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for step in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "wrk"]):
        if subprocess.run(prefix + step, env=env, capture_output=True).returncode != 0:
            raise BenchError("wrk is missing and `apt-get install wrk` failed; install the Debian package wrk")
    found = shutil.which("wrk")
    if not found:
        raise BenchError("wrk is still missing after apt-get install wrk")
    return found


def run_wrk(wrk: str, url: str, body: dict, *, concurrency: int, duration: float, threads: int = 1) -> dict:
    """wrk with one POST body; returns {"qps", "p50_ms", "p99_ms", "non_2xx"}."""
    command = [wrk, f"-t{threads}", f"-c{concurrency}", f"-d{max(1, round(duration))}s", "--latency",
               "-s", str(WRK_LUA), url]
    env = dict(os.environ, EMBPERF_WRK_BODY=json.dumps(body))
    completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=duration + 30)
    try:
        result = parse_wrk(completed.stdout)
    except BenchError:
        if completed.returncode != 0:
            raise BenchError(f"wrk failed: {(completed.stderr or completed.stdout).strip()[-300:]}") from None
        raise
    if result["non_2xx"] or result["socket_errors"]:
        raise BenchError(f"wrk saw failures: {result['non_2xx']} non-2xx responses; {result['socket_errors']}")
    return result


def parse_wrk(output: str) -> dict:
    """wrk's report -> {"qps", "p50_ms", "p99_ms" (None without --latency), "non_2xx", "socket_errors"}."""
    qps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if not qps:
        raise BenchError(f"wrk printed no Requests/sec: {output.strip()[-300:]}")
    result = {"qps": float(qps.group(1)), "non_2xx": 0, "socket_errors": ""}
    for name, label in (("p50_ms", "50%"), ("p99_ms", "99%")):
        found = re.search(rf"^\s+{re.escape(label)}\s+([\d.]+)(us|ms|s|m)\s*$", output, re.M)
        result[name] = float(found.group(1)) * _WRK_UNITS[found.group(2)] if found else None
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    if non_2xx:
        result["non_2xx"] = int(non_2xx.group(1))
    errors = re.search(r"Socket errors:.*", output)
    if errors:
        result["socket_errors"] = errors.group(0).strip()
    return result


def wrk_body(model: str) -> dict:
    """A request like the engine's: one text of about TOKENS tokens, 1024 dimensions."""
    words = ("measure embedding servers honestly with unique inputs and checked vectors " * 40).split()
    text = " ".join(words[: int(TOKENS * 0.75)])
    return {"model": model, "input": text, "dimensions": 1024}


# ----- report ------------------------------------------------------------------------------------
def median(values: list[float]) -> float:
    return statistics.median(values)


def fmt_runs(values: list[float], digits: int = 0) -> str:
    return " ".join(f"{value:,.{digits}f}" for value in values)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def line(label: str, figure: str, goal: str = "", result: str = "", runs: str = "") -> None:
    print(f"  {label:<34} {figure:>14}   {goal:<16} {result:<5} {runs}", flush=True)


def load_note() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} CPUs"


# ----- sections ----------------------------------------------------------------------------------
def section_throughput(wrk: str | None, args, report: dict) -> None:
    print(f"(a) one engine process vs wrk: closed loop, concurrency {CONCURRENCY}, 1024-float responses, "
          f"validation on (target: scripts/fast_target.py)", flush=True)
    print("(b) the same with --processes 2", flush=True)
    engine_1: list[float] = []
    engine_2: list[float] = []
    wrk_qps: list[float] = []
    cpu: list[float] = []
    cpu_2: list[float] = []
    bound: list[bool] = []
    with serving([PY, "scripts/fast_target.py", "--port", "0", "--processes", str(args.target_processes)],
                 "scripts/fast_target.py") as root:
        url = f"{root}/v1"
        for _ in range(args.repeats):
            level = run_engine(url, "fast-target", concurrency=CONCURRENCY, duration=args.duration,
                               warmup=args.warmup)
            engine_1.append(level["qps"])
            cpu.append((level.get("client") or {}).get("cpu_percent") or 0.0)
            bound.append(bool((level.get("client") or {}).get("client_bound")))
            if wrk:
                wrk_qps.append(run_wrk(wrk, f"{url}/embeddings", wrk_body("fast-target"),
                                       concurrency=CONCURRENCY, duration=args.duration)["qps"])
            level = run_engine(url, "fast-target", concurrency=CONCURRENCY, duration=args.duration,
                               warmup=args.warmup, processes=2)
            engine_2.append(level["qps"])
            client = level.get("client") or {}
            cpu_2.append(client.get("cpu_percent_total") or client.get("cpu_percent") or 0.0)
    one = median(engine_1)
    line("engine, 1 process", f"{one:,.0f} req/s", f">= {GOAL_QPS:,.0f} req/s", verdict(one >= GOAL_QPS),
         f"runs {fmt_runs(engine_1)}")
    line("  client CPU / client_bound", f"{median(cpu):.0f} %", "", "", f"client_bound in {sum(bound)}/{len(bound)}")
    # CPU time per request does not depend on how much CPU other programs left us: it gives the
    # throughput of one whole free core, a figure that survives a busy machine.
    cpu_us = [percent / 100 / qps * 1e6 for percent, qps in zip(cpu, engine_1, strict=True) if percent and qps]
    per_core = 1e6 / median(cpu_us) if cpu_us else None
    if per_core:
        line("  CPU per request", f"{median(cpu_us):.0f} us", "", "",
             f"= {per_core:,.0f} req/s on one whole free core")
    report["a"] = {"engine_qps": one, "engine_runs": engine_1, "client_cpu_percent": median(cpu),
                   "cpu_us_per_request": median(cpu_us) if cpu_us else None, "qps_per_free_core": per_core,
                   "goal_qps": GOAL_QPS, "pass": one >= GOAL_QPS}
    if wrk_qps:
        reference = median(wrk_qps)
        line("wrk, 1 thread", f"{reference:,.0f} req/s", "", "", f"runs {fmt_runs(wrk_qps)}")
        line("engine / wrk", f"{one / reference:.1%}")
        report["a"].update({"wrk_qps": reference, "wrk_runs": wrk_qps, "ratio": one / reference})
    two = median(engine_2)
    scaling = two / one
    line("engine, 2 processes", f"{two:,.0f} req/s", "", "", f"runs {fmt_runs(engine_2)}")
    line("  CPU the 2 processes got", f"{median(cpu_2):.0f} %", "", "", "(200 % = two whole cores)")
    line("scaling 2 processes / 1", f"{scaling:.2f}x", f">= {GOAL_SCALING}x", verdict(scaling >= GOAL_SCALING))
    report["b"] = {"engine_qps_2": two, "runs": engine_2, "cpu_percent_total": median(cpu_2), "scaling": scaling,
                   "goal": GOAL_SCALING, "pass": scaling >= GOAL_SCALING}
    cpu_us_2 = [percent / 100 / qps * 1e6 for percent, qps in zip(cpu_2, engine_2, strict=True) if percent and qps]
    if cpu_us and cpu_us_2:
        # Two whole free cores would give each process what one process gets from one: the scaling then
        # only depends on how much CPU a request costs with two processes (an estimate, labelled so).
        estimate = 2 * median(cpu_us) / median(cpu_us_2)
        line("  CPU per request, 2 processes", f"{median(cpu_us_2):.0f} us", "", "",
             f"-> about {estimate:.2f}x on two whole free cores (estimate)")
        report["b"]["scaling_estimate_free_cores"] = estimate


def section_added_latency(wrk: str | None, args, report: dict) -> None:
    print(f"(c) latency added by the client: concurrency 1, target with a fixed {DELAY_MS:.0f} ms delay", flush=True)
    p50: list[float] = []
    p99: list[float] = []
    wrk_p50: list[float] = []
    wrk_p99: list[float] = []
    duration = max(args.duration, 8.0)  # 50 requests/s: p99 needs a few hundred samples
    with serving([PY, "scripts/fast_target.py", "--port", "0", "--delay-ms", str(DELAY_MS)],
                 "scripts/fast_target.py --delay-ms") as root:
        url = f"{root}/v1"
        for _ in range(max(1, args.repeats - 1)):
            level = run_engine(url, "fast-target", concurrency=1, duration=duration, warmup=1)
            p50.append(level["latency_ms"]["p50"] - DELAY_MS)
            p99.append(level["latency_ms"]["p99"] - DELAY_MS)
        if wrk:
            result = run_wrk(wrk, f"{url}/embeddings", wrk_body("fast-target"), concurrency=1, duration=duration)
            wrk_p50.append(result["p50_ms"] - DELAY_MS)
            wrk_p99.append(result["p99_ms"] - DELAY_MS)
    added_p50, added_p99 = median(p50), median(p99)
    line("engine p50 - 20 ms", f"{added_p50:.3f} ms", f"< {GOAL_ADDED_P50_MS} ms",
         verdict(added_p50 < GOAL_ADDED_P50_MS), f"runs {fmt_runs(p50, 3)}")
    line("engine p99 - 20 ms", f"{added_p99:.3f} ms", f"< {GOAL_ADDED_P99_MS} ms",
         verdict(added_p99 < GOAL_ADDED_P99_MS), f"runs {fmt_runs(p99, 3)}")
    report["c"] = {"added_p50_ms": added_p50, "added_p99_ms": added_p99,
                   "pass": added_p50 < GOAL_ADDED_P50_MS and added_p99 < GOAL_ADDED_P99_MS}
    if wrk_p50:
        # wrk sees the same target, kernel and machine load: what it adds is not the engine's doing.
        line("wrk p50 / p99 - 20 ms (reference)", f"{wrk_p50[0]:.3f} / {wrk_p99[0]:.3f} ms")
        line("engine beyond wrk, p50 / p99", f"{added_p50 - wrk_p50[0]:.3f} / {added_p99 - wrk_p99[0]:.3f} ms")
        report["c"].update({"wrk_added_p50_ms": wrk_p50[0], "wrk_added_p99_ms": wrk_p99[0]})


def section_cross_check(wrk: str | None, args, report: dict) -> None:
    print(f"(d) cross-check against wrk: the simulator ({' '.join(SIMULATOR_ARGS)}), "
          f"concurrency {CROSS_CHECK_CONCURRENCY}", flush=True)
    if not wrk:
        print("  skipped: wrk is not available", flush=True)
        return
    engine: list[float] = []
    reference: list[float] = []
    command = [PY, "-m", "benchmarks", "simulate", "--port", "0", *SIMULATOR_ARGS]
    with serving(command, "the simulator") as root:
        for _ in range(args.repeats):
            level = run_engine(f"{root}/v1", "sim-embed", concurrency=CROSS_CHECK_CONCURRENCY,
                               duration=args.duration, warmup=args.warmup)
            engine.append(level["qps"])
            reference.append(run_wrk(wrk, f"{root}/v1/embeddings", wrk_body("sim-embed"),
                                     concurrency=CROSS_CHECK_CONCURRENCY, duration=args.duration)["qps"])
    ours, theirs = median(engine), median(reference)
    difference = ours / theirs - 1
    line("engine", f"{ours:,.1f} req/s", "", "", f"runs {fmt_runs(engine, 1)}")
    line("wrk", f"{theirs:,.1f} req/s", "", "", f"runs {fmt_runs(reference, 1)}")
    line("difference", f"{difference:+.1%}", f"within {GOAL_AGREEMENT:.0%}", verdict(abs(difference) <= GOAL_AGREEMENT))
    report["d"] = {"engine_qps": ours, "wrk_qps": theirs, "difference": difference,
                   "pass": abs(difference) <= GOAL_AGREEMENT}


def main(argv: list[str] | None = None) -> int:
    """Run the engine section; returns 0 when every measurement could be made."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="repeats per figure; the median is shown")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per engine run")
    parser.add_argument("--target-processes", type=int, default=1, help="processes of the fast target")
    parser.add_argument("--only", choices=["ab", "c", "d"], action="append", help="run only these parts")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--run-level", help=argparse.SUPPRESS)  # internal: one engine measurement
    args = parser.parse_args(argv)
    if args.run_level:
        return _run_level(args.run_level)
    if args.repeats < 1 or args.duration < 1:
        parser.error("--repeats must be at least 1 and --duration at least 1 s")

    print(f"machine: {load_note()} at start", flush=True)
    report: dict = {"started_load": os.getloadavg()[0], "cpu_count": os.cpu_count()}
    try:
        wrk = ensure_wrk()
    except BenchError as exc:
        print(f"  wrk unavailable: {exc}", flush=True)
        wrk = None
    failures = []
    parts = [("ab", section_throughput), ("c", section_added_latency), ("d", section_cross_check)]
    started = time.monotonic()
    for name, section in parts:
        if args.only and name not in args.only:
            continue
        try:
            section(wrk, args, report)
        except BenchError as exc:
            print(f"  could not measure: {exc}", flush=True)
            failures.append(name)
    print(f"machine: {load_note()} at end; {time.monotonic() - started:.0f} s", flush=True)
    # The load at start is other programs' (the end includes this section's own processes).
    if report["started_load"] > (os.cpu_count() or 1) * 0.5:
        print("note: the machine was busy with other work at start; figures are lower and noisier than on an "
              "idle one (CPU per request is the figure to trust)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
