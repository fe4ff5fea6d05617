"""A run's verdict: whether the server met the plan's thresholds (benchmarks.plan holds their rule).

Status says how a run ended; the verdict says whether the server met the plan. A run passes when
every planned level was measured, no threshold was breached and the target never refused
connections; otherwise it fails, and each reason is named ("error_rate <= 0.01 breached at level 16
(100 %)", "target unreachable for 12.4 s", "the abort policy stopped the sweep at level 16").

The same error-rate thresholds decide which levels count for the peak, the knee and the highest
level within the SLO (`errored`): a level whose errors breach them measured a failing server.
"""
from collections.abc import Mapping

from benchmarks.plan import DEFAULT_THRESHOLDS, format_threshold, plan_cells, show

PASSED, FAILED = "passed", "failed"

# figure -> (how a reader names it, how a value is written)
_NAMES = {
    "p50_ms": "p50 latency", "p90_ms": "p90 latency", "p99_ms": "p99 latency", "mean_ms": "mean latency",
    "error_rate": "error rate", "qps": "requests/s", "tokens_per_s": "tokens/s",
}
_LATENCY_KEYS = {"p50_ms": "p50", "p90_ms": "p90", "p99_ms": "p99", "mean_ms": "mean"}


def _load(level: Mapping):
    return level["concurrency"] if level.get("concurrency") is not None else level.get("rate")


def thresholds_of(plan: Mapping | None) -> list[dict]:
    """The plan's thresholds; a plan that names none (older documents) has the default ones."""
    value = (plan or {}).get("thresholds")
    return [dict(t) for t in (DEFAULT_THRESHOLDS if value is None else value)]


def applies(threshold: Mapping, level: Mapping) -> bool:
    """Whether a threshold covers this level (no levels named: every level)."""
    levels = threshold.get("levels")
    return not levels or any(float(load) == float(_load(level)) for load in levels)


def figure_value(level: Mapping, figure: str) -> float | None:
    """A level's value of a threshold figure (None when it was not measured, e.g. no success)."""
    if figure in _LATENCY_KEYS:
        return (level.get("latency_ms") or {}).get(_LATENCY_KEYS[figure])
    return level.get(figure, 0.0 if figure == "error_rate" else None)


def breached(threshold: Mapping, value: float | None) -> bool:
    """True when the value breaks the threshold; a figure that could not be measured breaks it."""
    if value is None:
        return True
    return value > threshold["limit"] if threshold["op"] == "<=" else value < threshold["limit"]


def describe(threshold: Mapping) -> str:
    """A threshold in a reader's words: "p99 latency <= 500 ms", "error rate <= 1 % at 16, 32"."""
    figure, limit = threshold["figure"], threshold["limit"]
    text = f"{_NAMES.get(figure, figure)} {threshold['op']} {_value(figure, limit)}"
    if threshold.get("levels"):
        text += " at " + ", ".join(show(level) for level in threshold["levels"])
    return text


def _value(figure: str, value: float | None) -> str:
    if value is None:
        return "not measured"
    if figure == "error_rate":
        return f"{show(round(value * 100, 2))} %"
    if figure.endswith("_ms"):
        return f"{value:.4g} ms"
    return f"{value:.4g} {_NAMES[figure]}"


def errored(level: Mapping, thresholds: list[Mapping] | None) -> bool:
    """True when the level's error rate breaks an error-rate threshold that covers it (the default
    1 % when none does): such a level never counts for the peak, the knee or the SLO level."""
    rules = [t for t in (thresholds if thresholds is not None else DEFAULT_THRESHOLDS)
             if t["figure"] == "error_rate" and applies(t, level)]
    if not rules:
        rules = list(DEFAULT_THRESHOLDS)
    rate = level.get("error_rate") or 0.0
    return any(breached(t, rate) for t in rules)


def _shape_text(level: Mapping) -> str:
    """A level's shape for a reason, "tokens 512: " (empty without a shape axis)."""
    shape = level.get("shape")
    if not shape:
        return ""
    value = shape["value"]
    return f"{shape['field']} {value if isinstance(value, str) else show(value)}: "


def judge(plan: Mapping, levels: list[Mapping], *, status: str, aborted_at_level=None,
          planned_levels: int | None = None) -> dict:
    """The verdict of a finished run: {"verdict": "passed" | "failed", "reasons": [str],
    "unreachable_s": seconds the target refused connections over all levels, "thresholds": the rules
    judged, as written}.

    planned_levels: how many levels the run was to measure (default: the plan's levels, every cell of
    a shape axis's grid)."""
    thresholds = thresholds_of(plan)
    reasons = []
    for threshold in thresholds:
        figure = threshold["figure"]
        broken = [f"{show(_load(lv))} ({_shape_text(lv)}{_value(figure, figure_value(lv, figure))})"
                  for lv in levels if applies(threshold, lv)
                  and breached(threshold, figure_value(lv, threshold["figure"]))]
        if broken:
            reasons.append(f"{describe(threshold)} breached at level {', '.join(broken)}")
    unreachable = round(sum(float(lv.get("unreachable_s") or 0.0) for lv in levels), 1)
    if unreachable > 0:
        reasons.append(f"target unreachable for {unreachable:g} s")
    planned = len(plan_cells(plan or {})) if planned_levels is None else planned_levels
    measured = sum(1 for lv in levels if lv.get("status") == "completed")
    if aborted_at_level is not None:
        missing = max(planned - len(levels), 0)
        reasons.append(f"the abort policy stopped the sweep at level {show(aborted_at_level)}"
                       + (f"; {missing} of {planned} levels were not measured" if missing else ""))
    elif status != "succeeded":
        ended = {"failed": "the run failed", "cancelled": "the run was cancelled",
                 "interrupted": "the run was interrupted"}.get(status, f"the run ended {status}")
        reasons.append(f"{ended}: {measured} of {planned} levels measured")
    elif measured < planned:
        reasons.append(f"{measured} of {planned} levels measured")
    return {"verdict": FAILED if reasons else PASSED, "reasons": reasons, "unreachable_s": unreachable,
            "thresholds": [format_threshold(t) for t in thresholds]}


def judge_run(plan: Mapping, levels: list[Mapping], *, status: str, aborted_at_level=None,
              capacity: Mapping | None = None, planned_levels: int | None = None) -> dict:
    """`judge` for a run of any plan. A capacity search (benchmarks/capacity.py) fails levels on
    purpose to find its limit, so its thresholds are judged on the capacity's level alone, and a
    search that found no capacity fails with the search's reason."""
    if (plan or {}).get("search") != "capacity":
        return judge(plan, levels, status=status, aborted_at_level=aborted_at_level, planned_levels=planned_levels)
    index = (capacity or {}).get("level_index")
    judged = [lv for lv in levels if index is not None and lv.get("index") == index]
    result = judge(plan, judged, status=status, aborted_at_level=aborted_at_level, planned_levels=len(judged))
    if not judged and status == "succeeded":
        reason = (capacity or {}).get("reason") or "no load met the SLO"
        result.update(verdict=FAILED, reasons=[*result["reasons"], f"no capacity: {reason}"])
    return result
