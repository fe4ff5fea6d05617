"""A target's history under one plan, and the runs that got worse than their baseline.

Everything here reads headline columns and the small LevelStats rows, in a fixed number of
queries whatever the number of runs, so a history of a thousand runs stays fast.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from django.db.models import Count, F, Max, Q, Window
from django.db.models.functions import RowNumber

from benchmarks.compare import METRICS, between_run_noise, combine_noise, compare_values
from benchmarks.document import key_figures, level_load
from portal.history.models import LevelStats
from portal.sweeps.models import Level, Run

# The figures whose regressions are flagged: what a person tuning a server watches.
WATCHED = ("qps", "p99_ms")
WATCHED_COLUMNS = {"qps": "qps", "p99_ms": "latency_p99_ms"}
# Runs after a baseline examined for the dashboard's regressions list, per target and plan.
DASHBOARD_WINDOW = 20


@dataclass
class RunPoint:
    """One run on a history chart."""

    id: int
    created: object
    label: str
    notes: str
    status: str
    is_baseline: bool
    target_id: int | None = None
    plan_id: int | None = None
    target_name: str = ""
    plan_name: str = ""
    levels: dict[float, dict] = field(default_factory=dict)  # load -> {"id", "qps", "p99_ms"}
    figures: dict = field(default_factory=dict)  # peak, knee and SLO level from the run's stored summary
    regressions: list[str] = field(default_factory=list)


def history_pairs(runs) -> list[dict]:
    """The (target, plan) pairs among `runs` with their run count and last run, newest first."""
    return list(
        runs.filter(target__isnull=False, plan__isnull=False)
        .values("target_id", "plan_id", "target__name", "plan__name")
        .annotate(runs=Count("id"), last=Max("created"))
        .order_by("-last")
    )


def _run_points(runs) -> dict[int, RunPoint]:
    rows = runs.values("id", "created", "label", "notes", "status", "is_baseline", "target_id", "plan_id",
                       "target__name", "plan__name", "summary")
    return {
        r["id"]: RunPoint(id=r["id"], created=r["created"], label=r["label"], notes=r["notes"], status=r["status"],
                          is_baseline=r["is_baseline"], target_id=r["target_id"],
                          plan_id=r["plan_id"], target_name=r["target__name"] or "", plan_name=r["plan__name"] or "",
                          figures=key_figures(r["summary"]))
        for r in rows
    }


def _attach_levels(points: dict[int, RunPoint], level_filter: Q) -> None:
    rows = Level.objects.filter(level_filter).values_list("id", "run_id", "concurrency", "rate", "qps",
                                                         "latency_p99_ms")
    for level_id, run_id, concurrency, rate, qps, p99 in rows:
        point = points.get(run_id)
        if point is not None:
            load = level_load({"concurrency": concurrency, "rate": rate})
            point.levels[load] = {"id": level_id, "qps": qps, "p99_ms": p99}


def _within_noise(level_filter: Q) -> dict[int, dict]:
    """{level id: {metric: standard error}} for the watched figures (missing stats: unknown noise)."""
    rows = LevelStats.objects.filter(level__in=Level.objects.filter(level_filter)).values_list(
        "level_id", "noise__qps", "noise__p99_ms")
    return {level_id: {"qps": qps, "p99_ms": p99} for level_id, qps, p99 in rows}


def _between_noise(series: list[RunPoint]) -> dict[float, dict[str, float | None]]:
    """Between-run noise per load and watched figure over succeeded runs in time order."""
    values: dict[float, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for point in series:
        if point.status == Run.Status.SUCCEEDED:
            for load, v in point.levels.items():
                for metric in WATCHED:
                    values[load][metric].append(v[metric])
    return {load: {m: between_run_noise(vs) for m, vs in by_metric.items()} for load, by_metric in values.items()}


def flag_regressions(baseline: RunPoint, candidates: list[RunPoint], within: dict[int, dict],
                     between: dict[float, dict]) -> None:
    """Fill each candidate's `regressions` with the watched figures that are worse than the baseline's
    beyond the noise, summarised per figure: 'Requests/s -12.3 % at 32 (worse at 4 of 6 levels)'.

    The test is benchmarks.compare.compare_values's verdict "worse", the one the compare page uses.
    """
    # Per load and figure: the baseline's value and noise, and the between-run spread.
    reference: dict[tuple, tuple] = {}
    for load, base in baseline.levels.items():
        for metric in WATCHED:
            if base[metric] is not None:
                spread = between.get(load, {}).get(metric)
                reference[(load, metric)] = (base[metric], combine_noise(within.get(base["id"], {}).get(metric),
                                                                         spread), spread)
    for point in candidates:
        point.regressions = []
        if point.id == baseline.id or point.status != Run.Status.SUCCEEDED:
            continue
        worst: dict[str, tuple] = {}
        count: dict[str, int] = dict.fromkeys(WATCHED, 0)
        compared: dict[str, int] = dict.fromkeys(WATCHED, 0)
        for load, cur in point.levels.items():
            noise_of = within.get(cur["id"], {})
            for metric in WATCHED:
                ref = reference.get((load, metric))
                value = cur[metric]
                if ref is None or value is None:
                    continue
                base_value, base_noise, spread = ref
                compared[metric] += 1
                delta = compare_values(METRICS[metric], base_value, base_noise, value,
                                       combine_noise(noise_of.get(metric), spread))
                if delta.verdict == "worse" and delta.pct is not None:
                    count[metric] += 1
                    if metric not in worst or abs(delta.pct) > abs(worst[metric][0]):
                        worst[metric] = (delta.pct, load)
        for metric in WATCHED:
            if metric in worst:
                pct, load = worst[metric]
                point.regressions.append(f"{METRICS[metric].label} {pct:+.1f} % at {load:g} "
                                         f"(worse at {count[metric]} of {compared[metric]} levels)")


@dataclass
class History:
    points: list[RunPoint]
    baseline: RunPoint | None
    loads: list[float]

    @property
    def regressions(self) -> list[RunPoint]:
        return [p for p in self.points if p.regressions]

    def chart_data(self) -> dict:
        """What the history charts are built from: one point per run, series per load."""
        return {
            "runs": [
                {"id": p.id, "created": p.created.isoformat(), "label": p.label, "notes": p.notes,
                 "baseline": p.is_baseline, "regressions": p.regressions, "status": p.status,
                 "qps": {f"{load:g}": v["qps"] for load, v in p.levels.items()},
                 "p99_ms": {f"{load:g}": v["p99_ms"] for load, v in p.levels.items()},
                 "figures": p.figures}
                for p in self.points
            ],
            "loads": [f"{load:g}" for load in self.loads],
        }


def build_history(runs) -> History:
    """The history of the given runs (one target under one plan), oldest first, with regression flags
    for the runs after the baseline."""
    runs = runs.order_by("created", "id")
    points = _run_points(runs)
    level_filter = Q(run__in=runs.values("id"))
    _attach_levels(points, level_filter)
    ordered = sorted(points.values(), key=lambda p: (p.created, p.id))
    baseline = next((p for p in reversed(ordered) if p.is_baseline), None)
    loads = sorted({load for p in ordered for load in p.levels})
    if baseline is not None:
        later = [p for p in ordered if (p.created, p.id) > (baseline.created, baseline.id)]
        if later:
            flag_regressions(baseline, later, _within_noise(level_filter), _between_noise(ordered))
    return History(points=ordered, baseline=baseline, loads=loads)


def dashboard_regressions(runs) -> list[RunPoint]:
    """Runs after their target+plan's baseline (at most DASHBOARD_WINDOW per pair) that are worse than
    the baseline beyond the noise, newest first."""
    baselines = _run_points(runs.filter(is_baseline=True, target__isnull=False, plan__isnull=False))
    if not baselines:
        return []
    after = Q()
    for b in baselines.values():
        after |= Q(target_id=b.target_id, plan_id=b.plan_id, created__gt=b.created)
    recent = (runs.filter(after, status=Run.Status.SUCCEEDED)
              .annotate(nth=Window(RowNumber(), partition_by=[F("target_id"), F("plan_id")],
                                   order_by=F("created").desc()))
              .filter(nth__lte=DASHBOARD_WINDOW))
    candidates = _run_points(Run.objects.filter(pk__in=[r for r in recent.values_list("id", flat=True)]))
    everything = {**candidates, **baselines}
    level_filter = Q(run_id__in=list(everything))
    _attach_levels(everything, level_filter)
    within = _within_noise(level_filter)
    flagged = []
    for b in baselines.values():
        group = sorted((p for p in candidates.values() if (p.target_id, p.plan_id) == (b.target_id, b.plan_id)),
                       key=lambda p: (p.created, p.id))
        flag_regressions(b, group, within, _between_noise([b, *group]))
        flagged += [p for p in group if p.regressions]
    return sorted(flagged, key=lambda p: p.created, reverse=True)


def last_two_per_pair(runs, pairs: int = 8) -> list[dict]:
    """For the latest `pairs` target+plan pairs with two succeeded runs: the two newest run ids."""
    ranked = (runs.filter(status=Run.Status.SUCCEEDED, target__isnull=False, plan__isnull=False)
              .annotate(nth=Window(RowNumber(), partition_by=[F("target_id"), F("plan_id")],
                                   order_by=[F("created").desc(), F("id").desc()]))
              .filter(nth__lte=2)
              .values("id", "target_id", "plan_id", "target__name", "plan__name", "created", "label"))
    grouped: dict[tuple, list] = defaultdict(list)
    for row in ranked:
        grouped[(row["target_id"], row["plan_id"])].append(row)
    out = []
    for rows in grouped.values():
        if len(rows) == 2:
            rows.sort(key=lambda r: (r["created"], r["id"]))
            older, newer = rows
            out.append({"target": newer["target__name"], "plan": newer["plan__name"], "older": older,
                        "newer": newer, "last": newer["created"]})
    out.sort(key=lambda x: x["last"], reverse=True)
    return out[:pairs]
