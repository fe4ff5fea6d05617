"""The run page's charts: throughput and latency against load, the latency distribution of each level
(from its histogram), and the per-second timeline of a chosen level (with GPU overlay).

Chart specifications in the shape of portal/history/charts.py, drawn by static/js/result_charts.js.
"""
from __future__ import annotations

import math

from django.db.models import F

from benchmarks.document import level_load
from portal.history.charts import LOAD_TITLES, log_x, y_axis
from portal.history.models import LevelStats
from portal.sweeps.models import Level, Run

# Where the percentile axis stops: 99.9999 % (and the maximum is drawn there).
PERCENTILE_AXIS_MAX = 6.0


def percentile_x(p: float) -> float:
    """Position on the percentile axis: -log10(1 - p), so 90 %, 99 %, 99.9 % are evenly spaced."""
    return PERCENTILE_AXIS_MAX if p >= 100 else min(-math.log10(1 - p / 100), PERCENTILE_AXIS_MAX)


def run_charts(run: Run) -> list[dict]:
    """The run page's charts (empty while the run has no finished level)."""
    levels = list(Level.objects.filter(run=run).order_by("index").values(
        "id", "index", "concurrency", "rate", "qps", "texts_per_s", "tokens_per_s", "latency_p50_ms", "latency_p90_ms",
        "latency_p99_ms", "latency_mean_ms", "gpu_util_mean", "shape_value", timeseries=F("data__timeseries"),
        gpu_timeseries=F("data__gpu__timeseries"), outcome=F("data__capacity_step__outcome")))
    if not levels:
        return []
    stats = LevelStats.objects.for_levels([Level(pk=lv["id"]) for lv in levels])
    x_title = LOAD_TITLES[run.level_key]
    for lv in levels:
        lv["load"] = level_load(lv)
    loads = [lv["load"] for lv in levels]
    x = {"title": x_title, "log": log_x(loads), "ticks": None}

    def series(label, key, color, axis="y", dashed=False, scale=1.0):
        return {"label": label, "axis": axis, "color": color, "dashed": dashed,
                "data": [{"x": lv["load"], "y": lv[key] * scale} for lv in levels if lv[key] is not None]}

    throughput = {"id": "run-throughput", "title": "Throughput vs load", "x": x,
                  "axes": [y_axis("y", "Requests/s (req/s)"), y_axis("y2", "Tokens/s", "right")],
                  "datasets": [series("Requests/s", "qps", 0), series("Tokens/s", "tokens_per_s", 1, "y2")]}
    if any(lv["gpu_util_mean"] is not None for lv in levels):
        throughput["axes"].append(y_axis("y3", "GPU utilization (%)", "right", 100))
        throughput["datasets"].append(series("GPU utilization", "gpu_util_mean", 4, "y3", dashed=True))
    latency = {"id": "run-latency", "title": "Latency percentiles vs load", "x": x,
               "axes": [y_axis("y", "Latency (ms)")],
               "datasets": [series("p50", "latency_p50_ms", 0), series("p90", "latency_p90_ms", 2),
                            series("p99", "latency_p99_ms", 1)]}
    shape_field = (run.plan_config or {}).get("shape_field")
    if shape_field:
        throughput, latency = _shape_charts(shape_field, levels, x)
    distribution = {
        "id": "run-distribution", "title": "Latency distribution per level",
        "x": {"title": "Percentile", "log": False, "ticks": "percentile", "max": PERCENTILE_AXIS_MAX},
        "axes": [y_axis("y", "Latency (ms)")], "legendTitle": "Level",
        "datasets": [{"label": _cell_label(lv), "axis": "y", "color": i, "dashed": False,
                      "data": [{"x": percentile_x(p), "y": ms} for p, ms in stats[lv["id"]].curve]}
                     for i, lv in enumerate(levels) if stats.get(lv["id"]) and stats[lv["id"]].curve],
    }
    variants = {}
    for lv in levels:
        ts = lv["timeseries"] or []
        sets = [
            {"label": "Completed/s", "axis": "y", "color": 0, "dashed": False,
             "data": [{"x": s["t"], "y": s.get("completed")} for s in ts]},
            {"label": "p50 (ms)", "axis": "y2", "color": 2, "dashed": False,
             "data": [{"x": s["t"], "y": s.get("p50_ms")} for s in ts if s.get("p50_ms") is not None]},
            {"label": "p99 (ms)", "axis": "y2", "color": 1, "dashed": False,
             "data": [{"x": s["t"], "y": s.get("p99_ms")} for s in ts if s.get("p99_ms") is not None]},
        ]
        if any(s.get("errors") for s in ts):
            sets.append({"label": "Errors/s", "axis": "y", "color": 3, "dashed": True,
                         "data": [{"x": s["t"], "y": s.get("errors")} for s in ts]})
        gpu_ts = lv["gpu_timeseries"] or []
        if gpu_ts:
            sets.append({"label": "GPU utilization (%)", "axis": "y3", "color": 4, "dashed": True,
                         "data": [{"x": g["t"], "y": g.get("util")} for g in gpu_ts if g.get("util") is not None]})
        shape = f"{lv['shape_value']} · " if lv["shape_value"] else ""
        variants[str(lv["index"])] = {"label": f"{shape}{run.level_key} {lv['load']:g}", "datasets": sets}
    # The timeline opens on the last level: the highest load, where a run usually gets interesting.
    shown = str(levels[-1]["index"])
    timeline = {
        "id": "run-timeline", "title": "Per-second timeline of a level",
        "x": {"title": "Time in the measured window (s)", "log": False, "ticks": None},
        "axes": [y_axis("y", "Completed requests per second"), y_axis("y2", "Latency (ms)", "right"),
                 y_axis("y3", "GPU utilization (%)", "right", 100)],
        "datasets": variants[shown]["datasets"], "variants": variants, "variant": shown,
    }
    charts = [*throughput, *latency, distribution, timeline] if shape_field else [
        throughput, latency, distribution, timeline]
    capacity = run.capacity_answer
    if capacity:
        charts.insert(0, _capacity_chart(capacity, levels, x))
    return charts


SHAPE_TITLES = {"tokens": "tokens per text", "batch": "texts per request", "encoding": "encoding",
                "dimensions": "dimensions"}


def _cell_label(lv: dict) -> str:
    """A level's name in a legend: its load, after its shape value on a shape axis ("512 · 16")."""
    return f"{lv['shape_value']} · {lv['load']:g}" if lv.get("shape_value") else f"{lv['load']:g}"


def _shape_charts(field: str, levels: list[dict], x: dict) -> tuple[list[dict], list[dict]]:
    """A shape axis's curves: one per shape value of requests/s, texts/s and tokens/s against load, and
    of p99 against load."""
    shapes = list(dict.fromkeys(lv["shape_value"] for lv in levels))
    legend = SHAPE_TITLES.get(field, field).capitalize()

    def per_shape(key: str) -> list[dict]:
        return [{"label": shape, "axis": "y", "color": i, "dashed": False,
                 "data": [{"x": lv["load"], "y": lv[key]} for lv in levels
                          if lv["shape_value"] == shape and lv[key] is not None]}
                for i, shape in enumerate(shapes)]

    def chart(key: str, chart_id: str, title: str, axis: str) -> dict:
        return {"id": chart_id, "title": f"{title} vs load, per {SHAPE_TITLES.get(field, field)}", "x": x,
                "axes": [y_axis("y", axis)], "datasets": per_shape(key), "legendTitle": legend}

    throughput = [chart("qps", "run-throughput", "Requests/s", "Requests/s (req/s)"),
                  chart("texts_per_s", "run-texts", "Texts/s", "Texts/s"),
                  chart("tokens_per_s", "run-tokens", "Tokens/s", "Tokens/s")]
    latency = [chart("latency_p99_ms", "run-latency", "p99 latency", "p99 latency (ms)")]
    return throughput, latency


def _capacity_chart(capacity: dict, levels: list[dict], x: dict) -> dict:
    """A capacity search's probes: the latency the SLO bounds at each load tried, passes and fails
    apart, against the SLO's line (docs/capacity.md)."""
    slo = capacity.get("slo") or {}
    key = next((k for k in ("p99", "p90", "p50", "mean") if slo.get(f"{k}_ms") is not None), "p99")
    column = f"latency_{key}_ms"
    probes = sorted((lv for lv in levels if lv[column] is not None), key=lambda lv: lv["load"])

    def points(outcome):
        return [{"x": lv["load"], "y": lv[column]} for lv in probes if lv["outcome"] == outcome]

    datasets = [{"label": f"{key} of a {word} level", "axis": "y", "color": color, "dashed": False,
                 "data": points(outcome)} for word, outcome, color in (("passing", "pass", 0), ("failing", "fail", 1))]
    if slo.get(f"{key}_ms") is not None and probes:
        datasets.append({"label": f"SLO: {key} ≤ {slo[f'{key}_ms']:g} ms", "axis": "y", "color": 3, "dashed": True,
                         "data": [{"x": probes[0]["load"], "y": slo[f"{key}_ms"]},
                                  {"x": probes[-1]["load"], "y": slo[f"{key}_ms"]}]})
    return {"id": "run-capacity", "title": "Capacity search: the probes against the SLO", "x": x,
            "axes": [y_axis("y", "Latency (ms)")], "datasets": datasets}
