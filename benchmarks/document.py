"""The result document (`embperf.run/1`, docs/result-schema.md): levels from runner partials,
the sweep summary, and the run-wide sections."""
import os
import platform
import socket
import sys
from datetime import UTC, datetime

from benchmarks import __version__, stats
from benchmarks.errors import ERROR_CLASSES, OK

SCHEMA = "embperf.run/1"

# A level is labelled client-bound when the busiest load process used this much of one core, or
# its event loop fell behind by more than both CLIENT_LAG_BOUND_MS and CLIENT_LAG_BOUND_SHARE of the
# level's median latency: then the client, not the server, limits or colours the figures.
CLIENT_CPU_BOUND_PERCENT = 90.0
CLIENT_LAG_BOUND_MS = 5.0
CLIENT_LAG_BOUND_SHARE = 0.10

# The knee: the first level after which requests/s grows by less than this while p99 grows.
KNEE_GROWTH = 0.10


def utc_now() -> str:
    """Current time, ISO 8601 in UTC."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def client_info(processes: int) -> dict:
    """The `client` section: which embperf ran where."""
    return {
        "version": __version__,
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "platform": f"{sys.platform}-{platform.machine()}",
        "cpu_count": os.cpu_count(),
        "processes": processes,
    }


def _client_health(partials: list[dict], latency_p50_ms: float | None) -> dict:
    lag_p99 = 0.0
    cpu = 0.0
    cpu_total = 0.0
    for p in partials:
        lag = stats.percentile_ms(stats.decode(p["loop_lag"]), 99) or 0.0
        lag_p99 = max(lag_p99, lag)
        percent = 100.0 * p["cpu_s"] / p["wall_s"] if p["wall_s"] > 0 else 0.0
        cpu = max(cpu, percent)
        cpu_total += percent
    reasons = []
    if cpu >= CLIENT_CPU_BOUND_PERCENT:
        reasons.append(f"a load process used {cpu:.0f} % of a CPU core (limit {CLIENT_CPU_BOUND_PERCENT:.0f} %)")
    lag_limit = max(CLIENT_LAG_BOUND_MS, CLIENT_LAG_BOUND_SHARE * (latency_p50_ms or 0.0))
    if lag_p99 > lag_limit:
        reasons.append(f"event-loop lag p99 {lag_p99:.1f} ms (limit {lag_limit:.1f} ms)")
    return {
        "loop_lag_p99_ms": round(lag_p99, 3),
        "cpu_percent": round(cpu, 1),
        "cpu_percent_total": round(cpu_total, 1),
        "processes": len(partials),
        "client_bound": bool(reasons),
        "client_bound_reason": "; ".join(reasons) or None,
    }


def merge_second(sec: int, rows: list[dict]) -> dict:
    """One `timeseries` entry: the load processes' reports of second `sec`, merged exactly."""
    hist = stats.merge(r["hist"] for r in rows)
    return {
        "t": sec,
        "completed": sum(r["completed"] for r in rows),
        "errors": sum(r["errors"] for r in rows),
        "p50_ms": stats.percentile_ms(hist, 50),
        "p99_ms": stats.percentile_ms(hist, 99),
        "in_flight": sum(r["in_flight"] for r in rows),
    }


def _timeseries(partials: list[dict]) -> list[dict]:
    n = max((len(p["seconds"]) for p in partials), default=0)
    series = []
    for sec in range(n):
        rows = [p["seconds"].get(sec) for p in partials]
        series.append(merge_second(sec, [r for r in rows if r]))
    return series


def build_level(partials: list[dict], *, index: int, mode: str, load: float, warmup_s: float,
                started_at: str, status: str = "completed", abort_reason: str | None = None) -> dict:
    """One level of the result document, merged exactly from the partials of its load processes."""
    duration = max((p["duration_s"] for p in partials), default=0.0)
    counts = dict.fromkeys((OK, *ERROR_CLASSES), 0)
    for p in partials:
        for key, value in p["counts"].items():
            counts[key] += value
    ok = counts[OK]
    failed = sum(counts[c] for c in ERROR_CLASSES)
    window_ok = sum(p["window_ok"] for p in partials)
    window_texts = sum(p["window_texts"] for p in partials)
    window_tokens = sum(p["window_tokens"] for p in partials)
    tpt_n = sum(p["tokens_per_text"]["n"] for p in partials)
    tpt_mins = [p["tokens_per_text"]["min"] for p in partials if p["tokens_per_text"]["min"] is not None]
    tpt_maxs = [p["tokens_per_text"]["max"] for p in partials if p["tokens_per_text"]["max"] is not None]
    latency = stats.merge(p["latency"] for p in partials)
    service = stats.merge(p["service"] for p in partials)
    latency_summary = stats.summary_ms(latency)
    examples = {}
    for p in partials:
        for key, message in p["examples"].items():
            examples.setdefault(key, message)
    schedule = None
    if mode == "open":
        lag = stats.merge(p["schedule"] for p in partials)
        lag_summary = stats.summary_ms(lag)
        schedule = {
            "late_requests": sum(p["late"] for p in partials),
            "late_threshold_ms": 1.0,
            "lag_ms": {"p50": lag_summary["p50"], "p99": lag_summary["p99"], "max": lag_summary["max"]},
        }

    def per_s(value: float) -> float:
        return round(value / duration, 3) if duration > 0 else 0.0

    # Load processes see the same outage; the longest view of it stands for the level.
    unreachable = round(max((p.get("unreachable_s", 0.0) for p in partials), default=0.0), 3)
    if abort_reason and unreachable > 0:
        abort_reason += f"; the target refused connections for {unreachable:.1f} s of the level"

    return {
        "index": index,
        "concurrency": load if mode == "closed" else None,
        "rate": load if mode == "open" else None,
        "status": status,
        "abort_reason": abort_reason,
        "started_at": started_at,
        "warmup_s": warmup_s,
        "duration_s": round(duration, 3),
        "requests_started": sum(p["started"] for p in partials),
        "requests_ok": ok,
        "requests_failed": failed,
        "in_flight_at_end": sum(p["in_flight_at_end"] for p in partials),
        "qps": per_s(window_ok),
        "texts_per_s": per_s(window_texts),
        "tokens_per_s": per_s(window_tokens),
        "tokens_estimated": any(p["tokens_missing"] for p in partials),
        "tokens_per_text": {
            "mean": round(sum(p["tokens_per_text"]["sum"] for p in partials) / tpt_n, 2) if tpt_n else None,
            "min": round(min(tpt_mins), 2) if tpt_mins else None,
            "max": round(max(tpt_maxs), 2) if tpt_maxs else None,
        },
        "latency_ms": latency_summary,
        "service_ms": stats.summary_ms(service),
        "schedule": schedule,
        "errors": {c: counts[c] for c in ERROR_CLASSES},
        "error_rate": round(failed / (ok + failed), 6) if ok + failed else 0.0,
        "unreachable_s": unreachable,
        "error_examples": examples,
        "timeseries": _timeseries(partials),
        "client": _client_health(partials, latency_summary["p50"]),
        "histogram": stats.encode(latency),
        "service_histogram": stats.encode(service),
    }


def level_load(level: dict):
    """A level's load: its concurrency (closed loop) or its rate (open loop)."""
    return level["concurrency"] if level.get("concurrency") is not None else level.get("rate")


def summarize(levels: list[dict], slo_p99_ms: float | None) -> dict:
    """Peak requests/s, the knee, and the highest level that met the p99 SLO.

    Cancelled levels are left out (their window was cut short by a person, not by the server)."""
    usable = [lv for lv in levels if lv.get("status") != "cancelled" and lv.get("requests_ok")]
    peak = max(usable, key=lambda lv: lv["qps"], default=None)
    knee = None
    for before, after in zip(usable, usable[1:], strict=False):
        p99_before = before["latency_ms"]["p99"]
        p99_after = after["latency_ms"]["p99"]
        if (after["qps"] < before["qps"] * (1 + KNEE_GROWTH) and p99_before is not None
                and p99_after is not None and p99_after > p99_before):
            knee = level_load(before)
            break
    slo_level = None
    if slo_p99_ms is not None:
        meeting = [lv for lv in usable if lv["status"] == "completed"
                   and lv["latency_ms"]["p99"] is not None and lv["latency_ms"]["p99"] <= slo_p99_ms]
        if meeting:
            slo_level = max(level_load(lv) for lv in meeting)
    return {
        "peak_qps": peak["qps"] if peak else None,
        "peak_level": level_load(peak) if peak else None,
        "knee_level": knee,
        "slo_p99_ms": slo_p99_ms,
        "slo_max_level": slo_level,
        "client_bound_levels": [level_load(lv) for lv in levels if lv.get("client", {}).get("client_bound")],
    }


def public_target(target: dict) -> dict:
    """The target as stored in a document: everything except the API key."""
    return {k: v for k, v in target.items() if k != "api_key"}


def public_plan(plan: dict) -> dict:
    """The plan as stored in a document (as run, defaults filled in)."""
    return dict(plan)
