"""Chart specifications for static/js/result_charts.js: plain dicts of axes and datasets, built here from
comparisons and histories (and, in portal/front/charts.py, from a run's levels). Keeping the shaping in
Python leaves the JavaScript a generic renderer.

A spec: {"id", "title", "x": {"title", "log", "ticks": "percentile"|"runs"|None}, "axes": [{"id",
"title", "position", "max"}], "datasets": [{"label", "axis", "color", "dashed", "data": [{"x", "y"}]}],
"runs": [...] (history charts: tooltip text per x), "variants": {...} (level selector), "steps": [{"x",
"changes"}] (history: a configuration change between runs), "bands": [{"color", "from", "to", "low", "high"}]
(history: a segment's spread at one level)}.
"""
from __future__ import annotations

from benchmarks.compare import METRICS
from portal.history.comparison import Comparison
from portal.history.timeline import History

LOAD_TITLES = {"concurrency": "Concurrency (requests in flight)", "rate": "Arrival rate (req/s)", "load": "Load"}


def y_axis(axis_id: str, title: str, position: str = "left", max_value: float | None = None) -> dict:
    """One y axis of a chart specification."""
    return {"id": axis_id, "title": title, "position": position, "max": max_value}


def log_x(loads) -> bool:
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
    shapes = list(dict.fromkeys(row["shape"] for row in data["rows"]))
    for metric in data["metrics"]:
        key = metric["key"]
        datasets = []
        for i, run in enumerate(data["runs"]):
            for n, shape in enumerate(shapes):
                # One curve per run; on a shape axis one per run and shape, a colour per shape, the
                # baseline solid and the other runs dashed.
                points = []
                for row in data["rows"]:
                    if row["metric"] != key or row["shape"] != shape:
                        continue
                    value = row["cells"][i]["value"]
                    if value is not None:
                        points.append({"x": row["load"], "y": value * 100 if key == "error_rate" else value})
                label = run["title"] + (" (baseline)" if run["is_reference"] else "")
                datasets.append({"label": f"{label} · {shape}" if shape else label, "axis": "y",
                                 "color": n if shape else i, "dashed": bool(shape) and not run["is_reference"],
                                 "data": points})
        charts.append({
            "id": f"compare-{key}",
            "title": f"{metric['label']} vs load",
            "x": {"title": x_title, "log": log_x(data["loads"]), "ticks": None},
            "axes": [y_axis("y", metric_axis_title(key))],
            "datasets": datasets,
        })
    return charts


def history_charts(history: History) -> dict:
    """Key figures over time, one point per run: req/s and p99 per level, peak req/s, knee and SLO.

    Returns {"runs": [...], "charts": [...]}: the per-run tooltip texts once, shared by every chart
    (each chart's "runs" is "shared"), so a thousand runs are not sent four times.
    """
    chart_data = history.chart_data()
    segments = chart_data["segments"]
    changes_at = {seg["start"]: seg["changes"] for seg in segments if seg["changes"]}
    runs = [{"id": r["id"], "created": r["created"][:16].replace("T", " "), "label": r["label"], "notes": r["notes"],
             "baseline": r["baseline"], "regressions": r["regressions"], "changes": changes_at.get(n, [])}
            for n, r in enumerate(chart_data["runs"])]
    x = {"title": "Run (oldest to newest)", "log": False, "ticks": "runs"}
    # A configuration change: a marked step half-way between the last run before it and the first after.
    steps = [{"x": start - 0.5, "changes": changes} for start, changes in sorted(changes_at.items())]

    def per_level(metric: str) -> list[dict]:
        return [
            {"label": f"{load}", "axis": "y", "color": i, "dashed": False,
             "data": [{"x": n, "y": r[metric].get(load)} for n, r in enumerate(chart_data["runs"])
                      if r[metric].get(load) is not None]}
            for i, load in enumerate(chart_data["loads"])
        ]

    def bands(metric: str) -> list[dict]:
        """The spread (min to max) of each segment's repeated runs at each level, drawn as a band."""
        colors = {load: i for i, load in enumerate(chart_data["loads"])}
        return [{"color": colors[load], "from": seg["start"] - 0.3, "to": seg["end"] + 0.3, "low": band["min"],
                 "high": band["max"], "mean": band["mean"], "sd": band["sd"], "n": band["n"], "level": load}
                for seg in segments for load, band in seg["bands"][metric].items()]

    def figure(key: str, label: str, color: int, axis: str = "y") -> dict:
        return {"label": label, "axis": axis, "color": color, "dashed": False,
                "data": [{"x": n, "y": r["figures"].get(key)} for n, r in enumerate(chart_data["runs"])
                         if r["figures"].get(key) is not None]}

    charts = [capacity] if (capacity := _capacity_history_chart(chart_data["runs"], x, steps)) else []
    return {"runs": runs, "charts": [
        *charts,
        {"id": "history-qps", "title": "Requests/s at each level", "x": x, "runs": "shared", "steps": steps,
         "bands": bands("qps"), "axes": [y_axis("y", "Requests/s (req/s)")], "datasets": per_level("qps"),
         "legendTitle": "Level"},
        {"id": "history-p99", "title": "p99 latency at each level", "x": x, "runs": "shared", "steps": steps,
         "bands": bands("p99_ms"), "axes": [y_axis("y", "p99 latency (ms)")], "datasets": per_level("p99_ms"),
         "legendTitle": "Level"},
        {"id": "history-peak", "title": "Peak requests/s", "x": x, "runs": "shared", "steps": steps,
         "axes": [y_axis("y", "Peak requests/s (req/s)")], "datasets": [figure("peak_qps", "Peak req/s", 0)]},
        {"id": "history-knee", "title": "Knee and highest level within the SLO", "x": x, "runs": "shared",
         "steps": steps, "axes": [y_axis("y", "Level")],
         "datasets": [figure("knee_level", "Knee", 1), figure("slo_max_level", "Highest level within SLO", 2)]},
    ]}


def _capacity_history_chart(runs: list[dict], x: dict, steps: list[dict]) -> dict | None:
    """Capacity over time: each search's answer, its lowest failing load dashed above it, and the gap
    between the two (the answer's own uncertainty) shaded; None when no run searched for capacity."""
    answers = [(n, r["capacity"]) for n, r in enumerate(runs) if r.get("capacity")]
    if not answers:
        return None
    units = {a["unit"] for _, a in answers}
    unit = units.pop() if len(units) == 1 else ""
    axis = {"rate": "Capacity (req/s)", "concurrency": "Capacity (requests in flight)"}.get(unit, "Capacity")
    slos = {a["slo"] for _, a in answers}
    title = "Capacity within the SLO" + (f" ({slos.pop()})" if len(slos) == 1 else "")
    return {
        "id": "history-capacity", "title": title, "x": x, "runs": "shared", "steps": steps,
        "bands": [{"color": 0, "from": n - 0.25, "to": n + 0.25, "low": a["load"], "high": a["lowest_fail"]}
                  for n, a in answers if a["load"] is not None and a["lowest_fail"] is not None],
        "axes": [y_axis("y", axis)],
        "datasets": [
            {"label": "Capacity", "axis": "y", "color": 0, "dashed": False,
             "data": [{"x": n, "y": a["load"]} for n, a in answers if a["load"] is not None]},
            {"label": "Lowest failing load", "axis": "y", "color": 3, "dashed": True,
             "data": [{"x": n, "y": a["lowest_fail"]} for n, a in answers if a["lowest_fail"] is not None]},
        ],
    }
