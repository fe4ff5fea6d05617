"""The result document (`embperf.run/1`, docs/result-schema.md): levels from runner partials,
the sweep summary, and the run-wide sections."""
import os
import platform
import socket
import sys
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import __version__, stats
from benchmarks.errors import ERROR_CLASSES, OK
from benchmarks.loadgen import STALL_MIN_S
from benchmarks.tokens import ESTIMATE, TOKENIZER, USAGE
from benchmarks.verdict import errored

SCHEMA = "embperf.run/1"
# The JSON Schema of that format: the contract the engine writes to and the portal checks ingests against.
SCHEMA_PATH = Path(__file__).with_name("result-schema.json")

# A level is labelled client-bound when the busiest load process used this much of one core, or
# its event loop fell behind by more than both CLIENT_LAG_BOUND_MS and CLIENT_LAG_BOUND_SHARE of the
# level's median latency: then the client, not the server, limits or colours the figures.
CLIENT_CPU_BOUND_PERCENT = 90.0
CLIENT_LAG_BOUND_MS = 5.0
CLIENT_LAG_BOUND_SHARE = 0.10
# A load process that spent this share of the window runnable but waiting for a CPU (its run-queue
# wait, /proc/thread-self/schedstat) was held back by other work on the host, not by its own load.
CLIENT_RUN_WAIT_PERCENT = 20.0
# A host whose CPUs were this busy over the window, or whose load average reached its core count,
# explains a lagging event loop in a load process that itself used little CPU.
HOST_BUSY_PERCENT = 80.0

ADVICE_PROCESS = "the load process is saturated: use more load processes (--processes) or worker hosts"
ADVICE_HOST = "the load host is shared with other work (the server?): move the load generator to another host"
ADVICE_LAG = "the load process's event loop fell behind: use more load processes, or a less busy host"

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
    wait = None
    host_busy = host_total = 0.0
    load_average = None
    for p in partials:
        lag = stats.percentile_ms(stats.decode(p["loop_lag"]), 99) or 0.0
        lag_p99 = max(lag_p99, lag)
        percent = 100.0 * p["cpu_s"] / p["wall_s"] if p["wall_s"] > 0 else 0.0
        cpu = max(cpu, percent)
        cpu_total += percent
        if p.get("run_wait_s") is not None and p["wall_s"] > 0:
            wait = max(wait or 0.0, 100.0 * p["run_wait_s"] / p["wall_s"])
        if p.get("host_total_s"):
            host_busy, host_total = p["host_busy_s"], p["host_total_s"]
        if p.get("load_average") is not None:
            load_average = p["load_average"]
    cores = next((p.get("host_cpus") for p in partials if p.get("host_cpus")), None)
    host_percent = round(100.0 * host_busy / host_total, 1) if host_total else None
    reasons = []
    process_bound = cpu >= CLIENT_CPU_BOUND_PERCENT
    if process_bound:
        reasons.append(f"a load process used {cpu:.0f} % of a CPU core (limit {CLIENT_CPU_BOUND_PERCENT:.0f} %)")
    lag_limit = max(CLIENT_LAG_BOUND_MS, CLIENT_LAG_BOUND_SHARE * (latency_p50_ms or 0.0))
    lag_over = lag_p99 > lag_limit
    if lag_over:
        reasons.append(f"event-loop lag p99 {lag_p99:.1f} ms (limit {lag_limit:.1f} ms)")
    waited = wait is not None and wait >= CLIENT_RUN_WAIT_PERCENT
    host_busy = ((host_percent is not None and host_percent >= HOST_BUSY_PERCENT)
                 or (load_average is not None and bool(cores) and load_average >= cores))
    # Not saturated itself, yet kept waiting for a CPU or lagging on a busy host: the host is the limit.
    host_bound = not process_bound and (waited or (lag_over and host_busy))
    if host_bound:
        host = []
        if host_percent is not None:
            host.append(f"the host's CPUs {host_percent:.0f} % busy")
        if load_average is not None and cores:
            host.append(f"load {load_average:.1f} on {cores} cores")
        reason = f"the load process used {cpu:.0f} % of a core"
        if waited:
            reason += f" and waited for a CPU {wait:.0f} % of the window (limit {CLIENT_RUN_WAIT_PERCENT:.0f} %)"
        reasons.append(reason + (f"; {', '.join(host)}" if host else ""))
    bound_by = "process" if process_bound else "host" if host_bound else "event loop" if lag_over else None
    advice = {"process": ADVICE_PROCESS, "host": ADVICE_HOST, "event loop": ADVICE_LAG}.get(bound_by)
    return {
        "loop_lag_p99_ms": round(lag_p99, 3),
        "cpu_percent": round(cpu, 1),
        "cpu_percent_total": round(cpu_total, 1),
        "run_wait_percent": round(wait, 1) if wait is not None else None,
        "host_cpu_percent": host_percent,
        "host_load": round(load_average, 2) if load_average is not None else None,
        "host_cpus": cores,
        "processes": len(partials),
        "client_bound": bool(reasons),
        "client_bound_reason": "; ".join(reasons) or None,
        "bound_by": bound_by,
        "advice": advice,
    }


def _stalls(partials: list[dict]) -> list[dict]:
    """Spans of the window in which no load process got any answer (each load process saw them)."""
    spans = None
    for p in partials:
        mine = [(t, t + length) for t, length in p.get("stalls") or []]
        if spans is None:
            spans = mine
            continue
        # A stall of the server is silent for every process: keep what all of them saw.
        spans = [(max(a, c), min(b, d)) for a, b in spans for c, d in mine if min(b, d) > max(a, c)]
    return [{"t": round(a, 1), "duration_s": round(b - a, 1)} for a, b in sorted(spans or [])
            if b - a >= STALL_MIN_S]


# Above this share of the mean latency, the client's own decoding and checking of answers, not the
# server, is what a level's throughput says most about.
DECODE_SHARE_NOTE = 0.25


def _answers(partials: list[dict], latency_mean_ms: float | None) -> dict:
    """Response bytes per successful request and the client's CPU time to decode and check one."""
    n = sum((p.get("answers") or {}).get("n", 0) for p in partials)
    if not n:
        return {"bytes_mean": None, "decode_ms_mean": None, "decode_share": None}
    decode_ms = 1000 * sum(p["answers"]["decode_s"] for p in partials if p.get("answers")) / n
    return {
        "bytes_mean": round(sum(p["answers"]["bytes"] for p in partials if p.get("answers")) / n, 1),
        "decode_ms_mean": round(decode_ms, 4),
        "decode_share": round(decode_ms / latency_mean_ms, 4) if latency_mean_ms else None,
    }


def decode_note(level: dict) -> str | None:
    """Plain words when decoding answers on the client took a large share of the latency."""
    share = (level.get("answers") or {}).get("decode_share")
    if share is None or share <= DECODE_SHARE_NOTE:
        return None
    return (f"decoding and checking answers took {level['answers']['decode_ms_mean']:g} ms of client CPU per "
            f"request, {share:.0%} of the mean latency: the client's decoding, not the server, dominated this "
            "level; base64 encoding, fewer dimensions or more client processes lighten it")


def stall_note(level: dict) -> str | None:
    """Plain words for a level's stalls; closed loop says that its percentiles hide them."""
    stalls = level.get("stalls") or []
    if not stalls:
        return None
    longest = max(stalls, key=lambda s: s["duration_s"])
    text = f"the server stopped answering for {longest['duration_s']:g} s at t = {longest['t']:g} s"
    if len(stalls) > 1:
        text += f" ({len(stalls)} such stalls, the longest shown)"
    if level.get("concurrency") is not None:
        p99 = (level.get("latency_ms") or {}).get("p99")
        if p99 is not None and p99 >= 500 * longest["duration_s"]:
            # Few requests ran in the level, so the handful that waited reached its p99 this time.
            text += ("; in closed loop only the requests in flight waited through it; an open-loop plan at a "
                     "fixed rate shows its full effect")
        else:
            text += "; closed-loop percentiles do not show this; an open-loop plan at a fixed rate does"
    return text


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
                started_at: str, status: str = "completed", abort_reason: str | None = None,
                tokens_source: str | None = None, shape: dict | None = None) -> dict:
    """One level of the result document, merged exactly from the partials of its load processes.
    `shape`: the cell's `{"field", "value"}` on a plan's shape axis (None: no axis, no `shape` key)."""
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
    # Tokens per text over the measured requests whose tokens the server reported (usage.prompt_tokens).
    requests_with_tokens = sum(p["tokens_per_text"]["n"] for p in partials)
    tokens_per_text_sum = sum(p["tokens_per_text"]["sum"] for p in partials)
    min_tokens_per_text = [p["tokens_per_text"]["min"] for p in partials if p["tokens_per_text"]["min"] is not None]
    max_tokens_per_text = [p["tokens_per_text"]["max"] for p in partials if p["tokens_per_text"]["max"] is not None]
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

    usage = sum(p.get("window_usage", 0) for p in partials)
    counted = sum(p.get("window_counted", 0) for p in partials)
    missing = any(p["tokens_missing"] for p in partials)
    level = {
        "index": index,
        "concurrency": load if mode == "closed" else None,
        "rate": load if mode == "open" else None,
        **({"shape": {"field": shape["field"], "value": shape["value"]}} if shape else {}),
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
        "tokens_estimated": tokens_source == ESTIMATE or missing,
        "tokens_source": tokens_source or USAGE,
        "usage_tokens_ratio": round(usage / counted, 3) if counted and usage else None,
        "tokens_per_text": {
            "mean": round(tokens_per_text_sum / requests_with_tokens, 2) if requests_with_tokens else None,
            "min": round(min(min_tokens_per_text), 2) if min_tokens_per_text else None,
            "max": round(max(max_tokens_per_text), 2) if max_tokens_per_text else None,
        },
        "latency_ms": latency_summary,
        "answers": _answers(partials, latency_summary.get("mean")),
        "service_ms": stats.summary_ms(service),
        "schedule": schedule,
        "errors": {c: counts[c] for c in ERROR_CLASSES},
        "error_rate": round(failed / (ok + failed), 6) if ok + failed else 0.0,
        "unreachable_s": unreachable,
        "error_examples": examples,
        "timeseries": _timeseries(partials),
        "stalls": _stalls(partials),
        "client": _client_health(partials, latency_summary["p50"]),
        "histogram": stats.encode(latency),
        "service_histogram": stats.encode(service),
    }
    sent = [p["input_tokens"] for p in partials if p.get("input_tokens")]
    if sent:
        level["input_tokens"] = _input_tokens(sent)
    level["notes"] = [note for note in (stall_note(level), decode_note(level)) if note]
    return level


def _input_tokens(sent: list[dict]) -> dict:
    """A length distribution's texts sent in the window, over every load process: `p50`, `p90`, `max`,
    `mean` and `n` (texts) of their token counts, and their `source`: `tokenizer` (its exact counts)
    or `target` (the counts drawn, without a tokenizer to count the texts)."""
    summary = stats.count_summary(stats.merge_counts(s["hist"] for s in sent))
    sources = {s["source"] for s in sent}
    return {**summary, "source": TOKENIZER if sources == {TOKENIZER} else "target"}


USAGE_SHORT = {"characters": "usage counts characters", "words": "usage counts words",
               "implausible": "usage is no token count", "none": "no usage reported"}


def token_notes(document: dict) -> tuple[str | None, list[str]]:
    """Where a run's token counts come from: a short label for a table's note column (None when the
    server's own usage was used as it should be) and the plain sentences a reader must know."""
    tokens = (document.get("inputs") or {}).get("tokens") or {}
    source, kind = tokens.get("source"), tokens.get("usage")
    lines = []
    short = None
    if source == TOKENIZER:
        short = "tokens by tokenizer"
        if kind in ("characters", "words", "implausible"):
            short = f"{USAGE_SHORT[kind]}; tokens by tokenizer"
        line = f"tokens counted with the tokenizer {tokens.get('tokenizer')}"
        if tokens.get("usage_note"):
            line += f"; {tokens['usage_note']} (not used)"
        elif tokens.get("usage_ratio") is not None:
            line += f"; the server's usage / the tokenizer's count = {tokens['usage_ratio']:g}"
        lines.append(line)
    elif source == ESTIMATE:
        short = "tokens estimated" + (f" ({USAGE_SHORT[kind]})" if kind in USAGE_SHORT else "")
        lines.append("tokens estimated at 4 characters per token: " + (tokens.get("usage_note") or
                     "the server's usage could not be used")
                     + "; name the model's tokenizer for true counts")
    if tokens.get("note"):
        lines.append(tokens["note"])
    return short, lines


def level_load(level: dict):
    """A level's load: its concurrency (closed loop) or its rate (open loop)."""
    return level["concurrency"] if level.get("concurrency") is not None else level.get("rate")


def _usable(levels: list[dict], thresholds: list[dict] | None) -> list[dict]:
    """The levels that count for the peak, the knee and the SLO level: not cancelled (their window was
    cut short by a person, not by the server), with successes, and not errored (see `summarize`)."""
    return [lv for lv in levels if lv.get("status") != "cancelled" and lv.get("requests_ok")
            and not errored(lv, thresholds)]


def _peak(usable: list[dict]) -> dict | None:
    return max(usable, key=lambda lv: lv["qps"], default=None)


def _knee(usable: list[dict]):
    """The load of the first level after which requests/s grows by less than KNEE_GROWTH while p99 grows."""
    for before, after in zip(usable, usable[1:], strict=False):
        p99_before = before["latency_ms"]["p99"]
        p99_after = after["latency_ms"]["p99"]
        if (after["qps"] < before["qps"] * (1 + KNEE_GROWTH) and p99_before is not None
                and p99_after is not None and p99_after > p99_before):
            return level_load(before)
    return None


def _slo_level(usable: list[dict], slo_p99_ms: float | None):
    """The highest completed level whose p99 met the SLO (None without an SLO or when none met it)."""
    if slo_p99_ms is None:
        return None
    meeting = [lv for lv in usable if lv["status"] == "completed"
               and lv["latency_ms"]["p99"] is not None and lv["latency_ms"]["p99"] <= slo_p99_ms]
    return max((level_load(lv) for lv in meeting), default=None)


def shape_key(shape: dict | None):
    """A shape as a comparable key: (field, value)."""
    return (shape["field"], shape["value"]) if shape else None


def summarize_shapes(levels: list[dict], slo_p99_ms: float | None, thresholds: list[dict] | None = None,
                     shapes: list[dict] | None = None) -> list[dict]:
    """One entry per shape of a shape axis, in order: the peak, knee and SLO level over that shape's own
    levels, by the rules `summarize` uses for the whole run, with the peak level's texts/s, tokens/s
    and p99. `shapes` (the plan's, in order) defaults to the shapes of the levels as they appear."""
    if shapes is None:
        shapes = []
        for level in levels:
            if level.get("shape") and shape_key(level["shape"]) not in map(shape_key, shapes):
                shapes.append(level["shape"])
    out = []
    for shape in shapes:
        own = [lv for lv in levels if shape_key(lv.get("shape")) == shape_key(shape)]
        usable = _usable(own, thresholds)
        peak = _peak(usable)
        out.append({
            "field": shape["field"],
            "value": shape["value"],
            "peak_qps": peak["qps"] if peak else None,
            "peak_level": level_load(peak) if peak else None,
            "peak_texts_per_s": peak["texts_per_s"] if peak else None,
            "peak_tokens_per_s": peak["tokens_per_s"] if peak else None,
            "p99_ms_at_peak": peak["latency_ms"]["p99"] if peak else None,
            "knee_level": _knee(usable),
            "slo_max_level": _slo_level(usable, slo_p99_ms),
        })
    return out


def summarize(levels: list[dict], slo_p99_ms: float | None, thresholds: list[dict] | None = None,
              shapes: list[dict] | None = None) -> dict:
    """Peak requests/s, the knee, and the highest level that met the p99 SLO.

    Cancelled levels are left out (their window was cut short by a person, not by the server), and so
    are levels whose error rate breaks the plan's error-rate thresholds (default: above 1 %): a level
    that mostly failed measured a failing server, not its capacity. With a shape axis (levels with a
    `shape`, or `shapes` given) `shapes` holds the same figures for each shape (`summarize_shapes`);
    the run-wide ones stay over every level."""
    usable = _usable(levels, thresholds)
    peak = _peak(usable)
    summary = {
        "peak_qps": peak["qps"] if peak else None,
        "peak_level": level_load(peak) if peak else None,
        "knee_level": _knee(usable),
        "slo_p99_ms": slo_p99_ms,
        "slo_max_level": _slo_level(usable, slo_p99_ms),
        "client_bound_levels": [level_load(lv) for lv in levels if lv.get("client", {}).get("client_bound")],
        "errored_levels": [level_load(lv) for lv in levels if errored(lv, thresholds)],
    }
    if shapes or any(lv.get("shape") for lv in levels):
        summary["shapes"] = summarize_shapes(levels, slo_p99_ms, thresholds, shapes or None)
    return summary


# The run-wide figures history and comparison show, as `summarize` stores them.
KEY_FIGURES = ("peak_qps", "peak_level", "knee_level", "slo_max_level")


def key_figures(summary: dict | None) -> dict:
    """Peak requests/s, its level, the knee and the highest level within the SLO, read from a stored
    summary (None for each figure the summary lacks, e.g. a run that failed before finishing)."""
    summary = summary or {}
    return {key: summary.get(key) for key in KEY_FIGURES}


def public_target(target: dict) -> dict:
    """The target as stored in a document: everything except the API key."""
    return {k: v for k, v in target.items() if k != "api_key"}
