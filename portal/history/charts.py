"""Chart specifications for history.js: plain dicts of axes and datasets, built from comparisons,
histories and a run's levels. Keeping the shaping here leaves the JavaScript a generic renderer.

A spec: {"id", "title", "x": {"title", "log", "ticks": "percentile"|"runs"|None}, "axes": [{"id",
"title", "position", "max"}], "datasets": [{"label", "axis", "color", "dashed", "data": [{"x", "y"}]}],
"runs": [...] (history charts: tooltip text per x), "variants": {...} (level selector)}.
"""
from __future__ import annotations

import math

from django.db.models import F

from benchmarks.compare import METRICS
from benchmarks.document import level_load
from portal.history.comparison import Comparison
from portal.history.models import LevelStats
from portal.history.timeline import History
from portal.sweeps.models import Level, Run

LOAD_TITLES = {"concurrency": "Concurrency (requests in flight)", "rate": "Arrival rate (req/s)", "load": "Load"}
# Where the percentile axis stops: 99.9999 % (and the maximum is drawn there).
PERCENTILE_AXIS_MAX = 6.0


def _axis(axis_id: str, title: str, position: str = "left", max_value: float | None = None) -> dict:
    return {"id": axis_id, "title": title, "position": position, "max": max_value}


def _log_x(loads) -> bool:
    """A log axis when levels span more than a factor 8 (1, 4, 8 ... 64 in flight)."""
    positive = [x for x in loads if x and x > 0]
    return len(positive) >= 2 and max(positive) / min(positive) > 8


def metric_axis_title(key: str) -> str:
    m = METRICS[key]
    return f"{m.label} (%)" if key == "error_rate" else f"{m.label} ({m.unit})"


def comparison_charts(comparison: Comparison) -> list[dict]:
    """One chart per metric with every run's curve overlaid."""
    data = comparison.to_dict()
    x_title = LOAD_TITLES.get(data["load_key"], "Load")
    charts = []
    for metric in data["metrics"]:
        key = metric["key"]
        datasets = []
        for i, run in enumerate(data["runs"]):
            points = []
            for row in data["rows"]:
                if row["metric"] != key:
                    continue
                value = row["cells"][i]["value"]
                if value is not None:
                    points.append({"x": row["load"], "y": value * 100 if key == "error_rate" else value})
            datasets.append({"label": run["title"] + (" (baseline)" if run["is_baseline"] else ""),
                             "axis": "y", "color": i, "dashed": False, "data": points})
        charts.append({
            "id": f"compare-{key}",
            "title": f"{metric['label']} vs load",
            "x": {"title": x_title, "log": _log_x(data["loads"]), "ticks": None},
            "axes": [_axis("y", metric_axis_title(key))],
            "datasets": datasets,
        })
    return charts


def history_charts(history: History) -> dict:
    """Key figures over time, one point per run: req/s and p99 per level, peak req/s, knee and SLO.

    Returns {"runs": [...], "charts": [...]}: the per-run tooltip texts once, shared by every chart
    (each chart's "runs" is "shared"), so a thousand runs are not sent four times.
    """
    chart_data = history.chart_data()
    runs = [{"id": r["id"], "created": r["created"][:16].replace("T", " "), "label": r["label"], "notes": r["notes"],
             "baseline": r["baseline"], "regressions": r["regressions"]} for r in chart_data["runs"]]
    x = {"title": "Run (oldest to newest)", "log": False, "ticks": "runs"}

    def per_level(metric: str) -> list[dict]:
        return [
            {"label": f"{load}", "axis": "y", "color": i, "dashed": False,
             "data": [{"x": n, "y": r[metric].get(load)} for n, r in enumerate(chart_data["runs"])
                      if r[metric].get(load) is not None]}
            for i, load in enumerate(chart_data["loads"])
        ]

    def figure(key: str, label: str, color: int, axis: str = "y") -> dict:
        return {"label": label, "axis": axis, "color": color, "dashed": False,
                "data": [{"x": n, "y": r["figures"].get(key)} for n, r in enumerate(chart_data["runs"])
                         if r["figures"].get(key) is not None]}

    return {"runs": runs, "charts": [
        {"id": "history-qps", "title": "Requests/s at each level", "x": x, "runs": "shared",
         "axes": [_axis("y", "Requests/s (req/s)")], "datasets": per_level("qps"), "legendTitle": "Level"},
        {"id": "history-p99", "title": "p99 latency at each level", "x": x, "runs": "shared",
         "axes": [_axis("y", "p99 latency (ms)")], "datasets": per_level("p99_ms"), "legendTitle": "Level"},
        {"id": "history-peak", "title": "Peak requests/s", "x": x, "runs": "shared",
         "axes": [_axis("y", "Peak requests/s (req/s)")], "datasets": [figure("peak_qps", "Peak req/s", 0)]},
        {"id": "history-knee", "title": "Knee and highest level within the SLO", "x": x, "runs": "shared",
         "axes": [_axis("y", "Level")],
         "datasets": [figure("knee_level", "Knee", 1), figure("slo_max_level", "Highest level within SLO", 2)]},
    ]}


def _percentile_x(p: float) -> float:
    """Position on the percentile axis: -log10(1 - p), so 90 %, 99 %, 99.9 % are evenly spaced."""
    return PERCENTILE_AXIS_MAX if p >= 100 else min(-math.log10(1 - p / 100), PERCENTILE_AXIS_MAX)


def run_charts(run: Run) -> list[dict]:
    """The run page's charts: throughput and latency against load, the latency distribution of each
    level (from its histogram), and the per-second timeline of a chosen level (with GPU overlay)."""
    levels = list(Level.objects.filter(run=run).order_by("index").values(
        "id", "index", "concurrency", "rate", "qps", "tokens_per_s", "latency_p50_ms", "latency_p90_ms",
        "latency_p99_ms", "gpu_util_mean", timeseries=F("data__timeseries"), gpu_timeseries=F("data__gpu__timeseries")))
    if not levels:
        return []
    stats = LevelStats.objects.for_levels([Level(pk=lv["id"]) for lv in levels])
    x_title = LOAD_TITLES[run.level_key]
    for lv in levels:
        lv["load"] = level_load(lv)
    loads = [lv["load"] for lv in levels]
    x = {"title": x_title, "log": _log_x(loads), "ticks": None}

    def series(label, key, color, axis="y", dashed=False, scale=1.0):
        return {"label": label, "axis": axis, "color": color, "dashed": dashed,
                "data": [{"x": lv["load"], "y": lv[key] * scale} for lv in levels if lv[key] is not None]}

    throughput = {"id": "run-throughput", "title": "Throughput vs load", "x": x,
                  "axes": [_axis("y", "Requests/s (req/s)"), _axis("y2", "Tokens/s", "right")],
                  "datasets": [series("Requests/s", "qps", 0), series("Tokens/s", "tokens_per_s", 1, "y2")]}
    if any(lv["gpu_util_mean"] is not None for lv in levels):
        throughput["axes"].append(_axis("y3", "GPU utilization (%)", "right", 100))
        throughput["datasets"].append(series("GPU utilization", "gpu_util_mean", 4, "y3", dashed=True))
    latency = {"id": "run-latency", "title": "Latency percentiles vs load", "x": x,
               "axes": [_axis("y", "Latency (ms)")],
               "datasets": [series("p50", "latency_p50_ms", 0), series("p90", "latency_p90_ms", 2),
                            series("p99", "latency_p99_ms", 1)]}
    distribution = {
        "id": "run-distribution", "title": "Latency distribution per level",
        "x": {"title": "Percentile", "log": False, "ticks": "percentile", "max": PERCENTILE_AXIS_MAX},
        "axes": [_axis("y", "Latency (ms)")], "legendTitle": "Level",
        "datasets": [{"label": f"{lv['load']:g}", "axis": "y", "color": i, "dashed": False,
                      "data": [{"x": _percentile_x(p), "y": ms} for p, ms in stats[lv["id"]].curve]}
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
        variants[str(lv["index"])] = {"label": f"{run.level_key} {lv['load']:g}", "datasets": sets}
    first = str(levels[-1]["index"])
    timeline = {
        "id": "run-timeline", "title": "Per-second timeline of a level",
        "x": {"title": "Time in the measured window (s)", "log": False, "ticks": None},
        "axes": [_axis("y", "Completed requests per second"), _axis("y2", "Latency (ms)", "right"),
                 _axis("y3", "GPU utilization (%)", "right", 100)],
        "datasets": variants[first]["datasets"], "variants": variants, "variant": first,
    }
    return [throughput, latency, distribution, timeline]
