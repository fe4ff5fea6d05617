"""Per-level figures from the readings taken during a level's measured window.

Gauges (utilisation, power, queue depth) are averaged over the readings inside the window.
Counters (energy, prompt tokens) are read at the window's two edges, interpolated linearly between
the nearest readings on either side, so a level gets exactly its own share of the counter even
though readings arrive every half second or second.
"""
import bisect
from collections.abc import Iterable, Sequence

from benchmarks.telemetry.readings import GpuReading, ServerReading, throttle_reason_names


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _max(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def counter_at(points: Sequence[tuple[float, float]], t: float, *, max_extrapolation_s: float) -> float | None:
    """A counter's value at time t from sorted (time, value) readings.

    Between two readings: linear interpolation. Beyond the first or last reading: extrapolation
    from the two nearest readings, but only up to `max_extrapolation_s` away (further is a guess).
    """
    if not points:
        return None
    if len(points) == 1:
        return points[0][1] if abs(points[0][0] - t) <= 1e-9 else None
    if t < points[0][0] - max_extrapolation_s or t > points[-1][0] + max_extrapolation_s:
        return None
    # the pair of readings around t, or the two nearest ones when t lies outside them
    i = min(max(bisect.bisect_left(points, (t, float("-inf"))), 1), len(points) - 1)
    (t0, v0), (t1, v1) = points[i - 1], points[i]
    if t1 == t0:
        return v1
    return v0 + (v1 - v0) * (t - t0) / (t1 - t0)


def counter_delta(points: Sequence[tuple[float, float]], start: float, end: float) -> float | None:
    """How much a counter grew between start and end; None when it cannot be told or it was reset."""
    limit = max(2.0, 0.5 * (end - start))
    first = counter_at(points, start, max_extrapolation_s=limit)
    last = counter_at(points, end, max_extrapolation_s=limit)
    if first is None or last is None or last < first:
        return None
    return last - first


def summarise_gpus(readings: Sequence[GpuReading], start: float, end: float) -> tuple[dict | None, dict, list[str]]:
    """The level's `gpu` section, the energy per GPU as (joules, estimated from power), and notes.

    `readings` may extend beyond the window (the counters need the neighbours); only those
    inside [start, end] count for the gauges and the time series.
    """
    notes: list[str] = []
    by_gpu: dict[tuple[str, int], list[GpuReading]] = {}
    for reading in readings:
        by_gpu.setdefault(reading.key, []).append(reading)
    if not by_gpu:
        return None, {}, notes
    sources = {key[0] for key in by_gpu}
    several_sources = len(sources) > 1
    gpus = []
    energy: dict[tuple[str, int], tuple[float, bool]] = {}
    timeseries = []
    duration = max(end - start, 0.0)
    for key in sorted(by_gpu):
        series = sorted(by_gpu[key], key=lambda r: r.t)
        inside = [r for r in series if start <= r.t <= end]
        latest = series[-1]
        label = f"GPU {key[1]}" + (f" at {key[0]}" if key[0] != "nvml" else "")
        if not inside:
            notes.append(f"{label}: no reading during the level (shorter than the sampling interval?)")
        energy_j = None
        energy_points = [(r.t, r.energy_mj) for r in series if r.energy_mj is not None]
        delta = counter_delta(energy_points, start, end)
        estimated = False
        if delta is not None:
            energy_j = delta / 1000.0
            if delta == 0 and duration >= 3:  # a powered GPU always uses energy: the counter is stale
                notes.append(
                    f"{label}: the energy counter did not move during the level; a DCGM exporter collects every "
                    "30 s unless started with -c 1000"
                )
                energy_j = None
        elif energy_points:
            notes.append(f"{label}: energy counter could not be read at the level's edges (reset or gap)")
        power_mean = _mean(r.power_w for r in inside)
        if energy_j is None and power_mean is not None and inside:
            energy_j = power_mean * duration  # no usable counter: mean power over the window
            estimated = True
            notes.append(f"{label}: energy estimated from mean power (no usable energy counter)")
        if energy_j is not None:
            energy[key] = (energy_j, estimated)
        sm_active_mean = _mean(r.sm_active for r in inside)
        if inside and sm_active_mean is None:
            notes.append(f"{label}: SM activity unavailable (needs GPM on Hopper or newer, or DCGM profiling metrics)")
        mask = 0
        for reading in inside:
            mask |= reading.throttle_mask or 0
        entry = {
            "index": key[1],
            "name": latest.name,
            "utilization_mean": _round(_mean(r.util for r in inside), 1),
            "utilization_max": _round(_max(r.util for r in inside), 1),
            "memory_utilization_mean": _round(_mean(r.mem_util for r in inside), 1),
            "sm_active_mean": _round(sm_active_mean, 1),
            "sm_active_max": _round(_max(r.sm_active for r in inside), 1),
            "memory_used_peak_mib": _round(_max(r.mem_used_mib for r in inside), 1),
            "memory_reserved_mib": _round(_max(r.mem_reserved_mib for r in inside), 1),
            "memory_total_mib": _round(_max(r.mem_total_mib for r in series), 1),
            "power_mean_w": _round(power_mean, 1),
            "power_max_w": _round(_max(r.power_w for r in inside), 1),
            "energy_j": _round(energy_j, 1),
            "sm_clock_mean_mhz": _round(_mean(r.sm_clock_mhz for r in inside), 0),
            "temperature_max_c": _round(_max(r.temperature_c for r in inside), 0),
            "throttle_reasons": throttle_reason_names(mask),
            "samples": len(inside),
        }
        if key[0] != "nvml":
            entry["source"] = key[0]
        gpus.append(entry)
        for r in inside:
            point = {
                "t": round(r.t - start, 2),
                "gpu": r.index,
                "util": _round(r.util, 1),
                "sm_active": _round(r.sm_active, 1),
                "mem_used_mib": _round(r.mem_used_mib, 0),
                "power_w": _round(r.power_w, 1),
                "sm_clock_mhz": _round(r.sm_clock_mhz, 0),
            }
            if several_sources:
                point["source"] = r.source
            timeseries.append(point)
    timeseries.sort(key=lambda p: (p["t"], p.get("source", ""), p["gpu"]))
    section = {
        "source": "nvml" if sources == {"nvml"} else "prometheus",
        "gpus": gpus,
        "timeseries": timeseries,
    }
    return section, energy, notes


def energy_section(energy: dict, *, requests_ok: int, prompt_tokens: int) -> dict | None:
    """The level's `energy` section: joules over all sampled GPUs, per request and per 1,000 tokens.

    `energy` maps each GPU to (joules, estimated from mean power rather than the energy counter).
    """
    if not energy:
        return None
    joules = sum(j for j, _estimated in energy.values())
    estimated = {e for _j, e in energy.values()}
    return {
        "joules": round(joules, 1),
        "joules_per_request": round(joules / requests_ok, 4) if requests_ok > 0 else None,
        "joules_per_1k_tokens": round(joules * 1000.0 / prompt_tokens, 4) if prompt_tokens > 0 else None,
        "gpus": len(energy),
        "method": "mixed" if len(estimated) > 1 else ("power" if True in estimated else "counter"),
    }


# A gauge is cross-checked only when the client held at least this many requests in flight on average
# and their latency was at least this many times an idle request's: the server must then have had
# requests queued or running, whatever the moment a scrape looked.
GAUGE_CHECK_IN_FLIGHT = 2
GAUGE_CHECK_LATENCY_FACTOR = 2.0


def summarise_server(readings: Sequence[ServerReading], start: float, end: float, *,
                     client_prompt_tokens: int, client_in_flight: float | None = None,
                     latency_ms: float | None = None, idle_latency_ms: float | None = None,
                     ) -> tuple[dict | None, list[str]]:
    """The level's `server` section (sums over all server URLs) and notes.

    Like the token counter against the client's count, the queue and running gauges are checked against
    what the client saw: `client_in_flight` (mean requests in flight in the window), `latency_ms` (the
    level's p50) and `idle_latency_ms` (a request alone). Gauges that stay at 0 while N requests are in
    flight and wait far longer than an idle one did not follow the load: their figures are withheld
    (null, with `gauges_followed` false and what they reported under `gauges_reported`) and a note names
    them. A prompt token counter that does not move while the client sent tokens is withheld the same way."""
    notes: list[str] = []
    by_source: dict[str, list[ServerReading]] = {}
    for reading in readings:
        by_source.setdefault(reading.source, []).append(reading)
    if not by_source:
        return None, notes
    # Scrapes of all URLs happen in one round, so readings of one round share a time closely enough
    # to add up: group by round (their order within each source).
    rounds: dict[int, list[ServerReading]] = {}
    for series in by_source.values():
        inside = sorted((r for r in series if start <= r.t <= end), key=lambda r: r.t)
        for i, reading in enumerate(inside):
            rounds.setdefault(i, []).append(reading)
    timeseries = []
    for i in sorted(rounds):
        group = rounds[i]
        timeseries.append({
            "t": round(min(r.t for r in group) - start, 2),
            "queue_depth": _total(r.queue_depth for r in group),
            "running": _total(r.running for r in group),
        })
    tokens_delta = None
    batch_sum = batch_count = None
    for source, series in sorted(by_source.items()):
        series = sorted(series, key=lambda r: r.t)
        delta = counter_delta([(r.t, r.prompt_tokens) for r in series if r.prompt_tokens is not None], start, end)
        if delta is not None:
            tokens_delta = (tokens_delta or 0.0) + delta
        elif any(r.prompt_tokens is not None for r in series):
            notes.append(f"server at {source}: prompt token counter could not be read at the level's edges")
        s = counter_delta([(r.t, r.batch_size_sum) for r in series if r.batch_size_sum is not None], start, end)
        c = counter_delta([(r.t, r.batch_size_count) for r in series if r.batch_size_count is not None], start, end)
        if s is not None and c:
            batch_sum, batch_count = (batch_sum or 0.0) + s, (batch_count or 0.0) + c
    engines = sorted({e for series in by_source.values() for r in series for e in r.engines})
    sources = sorted(by_source)
    section = {
        "source": sources[0] if len(sources) == 1 else ", ".join(sources),
        "sources": sources,
        "engines": engines,
        "queue_depth": {"mean": _round(_mean(p["queue_depth"] for p in timeseries)),
                        "max": _round(_max(p["queue_depth"] for p in timeseries))},
        "running": {"mean": _round(_mean(p["running"] for p in timeseries)),
                    "max": _round(_max(p["running"] for p in timeseries))},
        "prompt_tokens_delta": None if tokens_delta is None else round(tokens_delta),
        "client_prompt_tokens": client_prompt_tokens,
        "prompt_tokens_ratio": (round(tokens_delta / client_prompt_tokens, 3)
                                if tokens_delta is not None and client_prompt_tokens > 0 else None),
        "batch_size_mean": _round(batch_sum / batch_count) if batch_sum is not None and batch_count else None,
        "samples": len(timeseries),
        "timeseries": timeseries,
    }
    if not timeseries:
        notes.append("server metrics: no reading during the level")
    # What the cross-checks find goes to `cross_checks` (the engine adds it to the level's notes).
    checks = section["cross_checks"] = []
    _check_gauges(section, checks, client_in_flight, latency_ms, idle_latency_ms)
    if tokens_delta is not None and round(tokens_delta) == 0 and client_prompt_tokens > 0:
        checks.append(f"the server's prompt token counter did not move while the client sent {client_prompt_tokens} "
                     "prompt tokens: it does not count these requests, so it is not shown")
        section.update(prompt_tokens_delta=None, prompt_tokens_ratio=None, tokens_counter_followed=False)
    ratio = section["prompt_tokens_ratio"]
    if ratio is not None and abs(ratio - 1.0) > 0.1:
        notes.append(
            f"the server counted {section['prompt_tokens_delta']} prompt tokens, the client "
            f"{client_prompt_tokens} ({(ratio - 1) * 100:+.0f} %): truncation, added special tokens, "
            "other traffic, or requests still in flight at the window's edges"
        )
    return section, notes


def _check_gauges(section: dict, notes: list[str], in_flight: float | None, latency_ms: float | None,
                  idle_latency_ms: float | None) -> None:
    """Withhold queue and running gauges that stayed at 0 while the client kept the server busy."""
    gauges = [name for name in ("running", "queue_depth") if section[name]["max"] is not None]
    if (not gauges or in_flight is None or in_flight < GAUGE_CHECK_IN_FLIGHT or latency_ms is None
            or not idle_latency_ms or latency_ms < GAUGE_CHECK_LATENCY_FACTOR * idle_latency_ms):
        return
    if any(section[name]["max"] != 0 for name in gauges):
        section["gauges_followed"] = True
        return
    held = round(in_flight)
    words = {"running": "running", "queue_depth": "waiting"}
    named = "/".join(words[name] for name in gauges)
    notes.append(f"the server's {named} gauge{'s' if len(gauges) > 1 else ''} did not follow the {held} requests in "
                 f"flight: {' and '.join(words[name] for name in gauges)} stayed at 0 while requests took "
                 f"{latency_ms:.3g} ms against {idle_latency_ms:.3g} ms for an idle one, so "
                 f"{'they are' if len(gauges) > 1 else 'it is'} not shown")
    section["gauges_followed"] = False
    section["gauges_reported"] = {name: dict(section[name]) for name in gauges}
    for name in gauges:
        section[name] = {"mean": None, "max": None}
        for point in section["timeseries"]:
            point[name] = None


def _total(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(sum(present)) if present else None
