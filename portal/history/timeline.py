"""A target's history under one plan, and the runs that got worse than their baseline.

Everything here reads headline columns and the small LevelStats rows, in a fixed number of
queries whatever the number of runs, so a history of a thousand runs stays fast.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from django.db.models import Count, F, Max, Q, Window
from django.db.models.functions import RowNumber
from django.urls import reverse

from benchmarks.compare import (
    METRICS,
    capacity_delta,
    change_floor,
    combine_noise,
    compare_values,
)
from benchmarks.document import key_figures, level_load
from benchmarks.slo import limit_text
from benchmarks.verdict import FAILED
from portal.history.comparison import cell_order
from portal.history.models import LevelStats
from portal.history.segments import (
    Repeat,
    RepeatIndex,
    capacity_value,
    config_changes,
    config_fingerprint,
    snapshot_fields,
    usable_level,
)
from portal.sweeps.models import Level, Run

# The figures whose regressions are flagged: what a person tuning a server watches, and whether it
# still answers (a run whose server died has few successes and many errors).
WATCHED = ("qps", "p99_ms", "error_rate")
LEVEL_COLUMNS = {"qps": "qps", "p99_ms": "latency_p99_ms", "error_rate": "error_rate"}
# Flagged runs after a baseline listed on the dashboard, per target and plan.
DASHBOARD_WINDOW = 20
# Runs whose levels are compared against the baseline: finished runs that measured something.
CHECKED_STATUSES = (Run.Status.SUCCEEDED, Run.Status.FAILED)
POINT_FIELDS = ("id", "created", "label", "notes", "status", "is_baseline", "target_id", "plan_id",
                "target__name", "plan__name", "summary", "target_config", "plan_config", "server_config",
                "verdict", "verdict_detail", "document__capacity")


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
    fingerprint: str = ""  # segments.config_fingerprint of its snapshots
    config: dict[str, str] = field(default_factory=dict)  # segments.snapshot_fields of its snapshots
    levels: dict[float, dict] = field(default_factory=dict)  # load -> {"id", "qps", "p99_ms", "error_rate"}
    figures: dict = field(default_factory=dict)  # peak, knee and SLO level from the run's stored summary
    verdict: str = ""  # passed / failed against the plan's thresholds ("" before it is judged)
    verdict_reasons: list[str] = field(default_factory=list)
    regressions: list[str] = field(default_factory=list)
    capacity: dict | None = None  # a capacity search's answer (the document's "capacity"), else None


@dataclass
class Segment:
    """Consecutive runs with identical target, plan and server-config snapshots, and what changed
    from the segment before (empty for the first)."""

    points: list[RunPoint]
    changes: list[str]


def history_pairs(runs) -> list[dict]:
    """The (target, plan) pairs among `runs` with their run count and last run, newest first."""
    return list(
        runs.filter(target__isnull=False, plan__isnull=False)
        .values("target_id", "plan_id", "target__name", "plan__name")
        .annotate(runs=Count("id"), last=Max("created"))
        .order_by("-last")
    )


def _run_points(runs) -> dict[int, RunPoint]:
    points = {}
    for r in runs.values(*POINT_FIELDS):
        snapshots = (r["target_config"], r["plan_config"], r["server_config"])
        points[r["id"]] = RunPoint(
            id=r["id"], created=r["created"], label=r["label"], notes=r["notes"], status=r["status"],
            is_baseline=r["is_baseline"], target_id=r["target_id"], plan_id=r["plan_id"],
            target_name=r["target__name"] or "", plan_name=r["plan__name"] or "",
            fingerprint=config_fingerprint(*snapshots), config=snapshot_fields(*snapshots),
            figures=key_figures(r["summary"]), verdict=r["verdict"] or "",
            verdict_reasons=list((r["verdict_detail"] or {}).get("reasons") or []),
            capacity=r["document__capacity"] or None)
    return points


def _attach_levels(points: dict[int, RunPoint], level_filter: Q) -> None:
    rows = Level.objects.filter(level_filter).values_list("id", "run_id", "concurrency", "rate", "shape_value",
                                                         *LEVEL_COLUMNS.values())
    for level_id, run_id, concurrency, rate, shape, *values in rows:
        point = points.get(run_id)
        if point is not None:
            # Keyed by cell (shape value, load): a shape axis's levels share loads (Level.cell).
            cell = (shape, level_load({"concurrency": concurrency, "rate": rate}))
            point.levels[cell] = {"id": level_id, **dict(zip(LEVEL_COLUMNS, values, strict=True))}


def _within_noise(level_filter: Q) -> dict[int, dict]:
    """{level id: {metric: standard error}} for the watched figures (missing stats: unknown noise)."""
    rows = LevelStats.objects.filter(level__in=Level.objects.filter(level_filter)).values_list(
        "level_id", *(f"noise__{m}" for m in WATCHED))
    return {level_id: dict(zip(WATCHED, noise, strict=True)) for level_id, *noise in rows}


def segments_of(points: list[RunPoint]) -> list[Segment]:
    """The history's runs (oldest first) cut where their configuration changes."""
    segments: list[Segment] = []
    for point in points:
        if segments and segments[-1].points[-1].fingerprint == point.fingerprint:
            segments[-1].points.append(point)
        else:
            before = segments[-1].points[-1].config if segments else None
            changes = [] if before is None else config_changes(before, point.config)
            segments.append(Segment(points=[point], changes=changes))
    return segments


def _repeats(points: list[RunPoint]) -> list[Repeat]:
    return [Repeat(id=p.id, created=p.created, key=p.fingerprint, counts=p.status == Run.Status.SUCCEEDED,
                   levels={load: {m: v[m] for m in WATCHED} for load, v in p.levels.items()},
                   capacity=capacity_value(p.capacity))
            for p in points]


def cell_label(cell: tuple[str, float]) -> str:
    """A cell as the history names it: '32', or '512 · 32' on a shape axis."""
    shape, load = cell
    return f"{shape} · {load:g}" if shape else f"{load:g}"


def _regression_text(metric: str, delta, cell: tuple, count: int, compared: int) -> str:
    change = f"{delta.diff * 100:+.1f} pp" if metric == "error_rate" else f"{delta.pct:+.1f} %"
    return f"{METRICS[metric].label} {change} at {cell_label(cell)} (worse at {count} of {compared} levels)"


def flag_regressions(baseline: RunPoint, candidates: list[RunPoint], within: dict[int, dict],
                     between: dict[int, dict], index: RepeatIndex | None = None) -> None:
    """Fill each candidate's `regressions` with the watched figures that are worse than the baseline's
    beyond the noise, summarised per figure: 'Requests/s -12.3 % at 32 (worse at 4 of 6 levels)',
    'Error rate +98.0 pp at 16 (worse at 3 of 6 levels)'; and a failed verdict when the baseline's
    was not: 'Verdict failed: error rate <= 1 % breached at 16 (100 %); ...'.

    The test is benchmarks.compare.compare_values's verdict "worse", the one the compare page uses,
    with each side's noise the larger of its level's own and its segment's between-run noise. A capacity
    search's answer is judged by benchmarks.compare.capacity_delta, against the answers' own uncertainty
    and their set-ups' spread over repeats: 'Capacity -22 % at p99 ≤ 200 ms (40 → 31 req/s, beyond ±2)'.

    `between` is each run's between-run noise from its other repeats. With `index` (the repeats), the
    baseline's is taken without the candidate judged against it: a slower run in the baseline's own
    segment must not widen the noise that would flag it.
    """
    judged = {"base": between.get(baseline.id, {})}  # the baseline's noise, the judged candidate left out

    def noise(point: RunPoint, load: float, level: dict, metric: str) -> float | None:
        return combine_noise(within.get(level["id"], {}).get(metric), repeat(point, load, metric))

    def repeat(point: RunPoint, load: float, metric: str) -> float | None:
        source = judged["base"] if point.id == baseline.id else between.get(point.id, {})
        return source.get(load, {}).get(metric)

    for point in candidates:
        point.regressions = []
        if point.id == baseline.id or point.status not in CHECKED_STATUSES:
            continue
        base_capacity_spread = capacity_spread = None
        if index is not None and baseline.id in index.by_id:
            if point.fingerprint == baseline.fingerprint:
                judged["base"] = index.noise(baseline.id, exclude=[point.id])
            else:
                judged["base"] = between.get(baseline.id, {})
            base_capacity_spread = index.capacity(baseline.id, exclude=[point.id])
            capacity_spread = index.capacity(point.id) if point.id in index.by_id else None
        if point.verdict == FAILED and baseline.verdict != FAILED:
            # The baseline met the plan's thresholds (or was not judged); this run did not.
            reasons = "; ".join(point.verdict_reasons[:2]) or "a threshold was breached"
            more = len(point.verdict_reasons) - 2
            point.regressions.append(f"Verdict failed: {reasons}" + (f" (and {more} more)" if more > 0 else ""))
        if baseline.capacity and point.capacity:
            delta = capacity_delta(baseline.capacity, point.capacity, base_spread=base_capacity_spread,
                                   spread=capacity_spread)
            if delta["verdict"] == "worse":
                point.regressions.append(_capacity_regression_text(baseline.capacity, point.capacity, delta))
        if baseline.capacity or point.capacity:
            # A search's levels are its own probes, many of them past the limit on purpose: its answer is
            # the figure to watch, and a level that two searches happened to share is no comparison.
            continue
        worst: dict[str, tuple] = {}
        count: dict[str, int] = dict.fromkeys(WATCHED, 0)
        compared: dict[str, int] = dict.fromkeys(WATCHED, 0)
        for load, cur in point.levels.items():
            base = baseline.levels.get(load)
            if base is None:
                continue
            for metric in WATCHED:
                if base[metric] is None or cur[metric] is None:
                    continue
                compared[metric] += 1
                # Until both set-ups have repeats, the wider floor (benchmarks.compare.change_floor).
                repeated = repeat(baseline, load, metric) is not None and repeat(point, load, metric) is not None
                delta = compare_values(METRICS[metric], base[metric], noise(baseline, load, base, metric),
                                       cur[metric], noise(point, load, cur, metric),
                                       floor=change_floor(metric, repeated))
                if delta.verdict != "worse":
                    continue
                size = abs(delta.diff) if delta.pct is None or metric == "error_rate" else abs(delta.pct)
                count[metric] += 1
                if metric not in worst or size > worst[metric][0]:
                    worst[metric] = (size, delta, load)
        for metric in WATCHED:
            if metric in worst:
                _, delta, load = worst[metric]
                if metric != "error_rate" and delta.pct is None:
                    continue  # a figure worse than a baseline of 0 has no % to name; the error rate will
                point.regressions.append(_regression_text(metric, delta, load, count[metric], compared[metric]))


def _capacity_regression_text(base: dict, answer: dict, delta: dict) -> str:
    """'Capacity -22 % at p99 ≤ 200 ms (40 → 31 req/s, beyond ±2)' or 'No capacity at p99 ≤ 200 ms
    (baseline 40 req/s)'."""
    unit = " req/s" if answer.get("unit") == "rate" else " in flight"
    slo = limit_text(answer.get("slo") or {})
    if delta["pct"] is None:
        return f"No capacity at {slo} (baseline {base['load']:g}{unit})"
    return (f"Capacity {delta['pct']:+.0f} % at {slo} ({base['load']:g} → {answer['load']:g}{unit}, "
            f"beyond ±{delta['threshold']:.3g})")


def find_regressions(points: list[RunPoint], within: dict[int, dict]) -> tuple[RunPoint | None, dict]:
    """The one rule for a history's regressions, used by the history page and the dashboard: flag the
    runs after the newest baseline of `points` (one target and plan, oldest first). Returns the
    baseline and each run's between-run noise."""
    baseline = next((p for p in reversed(points) if p.is_baseline), None)
    index = RepeatIndex(_repeats(points))
    between = {r.id: index.noise(r.id) for r in index.repeats}
    if baseline is not None:
        later = [p for p in points if (p.created, p.id) > (baseline.created, baseline.id)]
        flag_regressions(baseline, later, within, between, index)
    return baseline, between


@dataclass
class History:
    points: list[RunPoint]
    baseline: RunPoint | None
    loads: list[tuple[str, float]]  # the cells (shape value, load) of its runs, in grid order
    segments: list[Segment] = field(default_factory=list)
    between_noise: dict[int, dict] = field(default_factory=dict)

    @property
    def has_capacity(self) -> bool:
        """Whether any run of the history searched for its capacity (the page then shows capacities)."""
        return any(p.capacity for p in self.points)

    @property
    def regressions(self) -> list[RunPoint]:
        return [p for p in self.points if p.regressions]

    def segment_spread(self) -> list[dict]:
        """Per segment of 2+ counting runs, per load: the mean and spread (min, max, sd) of req/s and
        p99 over its succeeded runs' usable levels: what the charts draw as a band."""
        out = []
        start = 0
        for seg in self.segments:
            bands: dict[str, dict[str, dict]] = {"qps": {}, "p99_ms": {}}
            counting = [p for p in seg.points if p.status == Run.Status.SUCCEEDED]
            for load in self.loads:
                levels = [p.levels[load] for p in counting if load in p.levels and usable_level(p.levels[load])]
                for metric in bands:
                    values = [lv[metric] for lv in levels if lv[metric] is not None]
                    if len(values) >= 2:
                        mean = sum(values) / len(values)
                        sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
                        bands[metric][cell_label(load)] = {"mean": mean, "sd": sd, "min": min(values),
                                                      "max": max(values), "n": len(values)}
            out.append({"start": start, "end": start + len(seg.points) - 1, "changes": seg.changes,
                        "runs": len(seg.points), "bands": bands})
            start += len(seg.points)
        return out

    def chart_data(self) -> dict:
        """What the history charts are built from: one point per run, series per load, and the
        segments (where the configuration changed, and each segment's spread)."""
        return {
            "runs": [
                {"id": p.id, "created": p.created.isoformat(), "label": p.label, "notes": p.notes,
                 "baseline": p.is_baseline, "regressions": p.regressions, "status": p.status,
                 "qps": {cell_label(cell): v["qps"] for cell, v in p.levels.items()},
                 "p99_ms": {cell_label(cell): v["p99_ms"] for cell, v in p.levels.items()},
                 "figures": p.figures, "capacity": _capacity_point(p.capacity)}
                for p in self.points
            ],
            "loads": [cell_label(cell) for cell in self.loads],
            "segments": self.segment_spread(),
        }


def _capacity_point(answer: dict | None) -> dict | None:
    """What a history chart draws of a capacity answer: the capacity, the lowest failing load above it,
    the unit, the binding constraint and the SLO."""
    if not answer:
        return None
    return {"load": answer.get("load"), "lowest_fail": answer.get("lowest_fail"), "unit": answer.get("unit"),
            "binding": answer.get("binding"), "status": answer.get("status"),
            "slo": limit_text(answer.get("slo") or {})}


def build_history(runs) -> History:
    """The history of the given runs (one target under one plan), oldest first, cut into segments, with
    regression flags for the runs after the baseline."""
    runs = runs.order_by("created", "id")
    points = _run_points(runs)
    level_filter = Q(run__in=runs.values("id"))
    _attach_levels(points, level_filter)
    ordered = sorted(points.values(), key=lambda p: (p.created, p.id))
    loads = sorted({cell for p in ordered for cell in p.levels}, key=cell_order)
    baseline, between = find_regressions(ordered, _within_noise(level_filter))
    return History(points=ordered, baseline=baseline, loads=loads, segments=segments_of(ordered),
                   between_noise=between)


def dashboard_regressions(runs) -> list[RunPoint]:
    """The runs the history pages flag, for every target+plan with a baseline (the newest
    DASHBOARD_WINDOW per pair), newest first. The same rule as the history page (find_regressions),
    over the same runs, so the two always agree."""
    pairs = set(runs.filter(is_baseline=True, target__isnull=False, plan__isnull=False)
                .values_list("target_id", "plan_id"))
    if not pairs:
        return []
    match = Q()
    for target_id, plan_id in pairs:
        match |= Q(target_id=target_id, plan_id=plan_id)
    scope = runs.filter(match)
    points = _run_points(scope)
    level_filter = Q(run__in=scope.values("id"))
    _attach_levels(points, level_filter)
    within = _within_noise(level_filter)
    grouped: dict[tuple, list[RunPoint]] = defaultdict(list)
    for p in sorted(points.values(), key=lambda p: (p.created, p.id)):
        grouped[(p.target_id, p.plan_id)].append(p)
    flagged = []
    for group in grouped.values():
        find_regressions(group, within)
        flagged += [p for p in group if p.regressions][-DASHBOARD_WINDOW:]
    return sorted(flagged, key=lambda p: (p.created, p.id), reverse=True)


def compare_link(run: Run) -> str:
    """Where the run page's *Compare…* goes: this run against its target and plan's baseline; a baseline
    against the newest run after it; else against the run before it; else the picker with it ticked."""
    url = reverse("compare")
    if run.target_id and run.plan_id:
        pair = Run.objects.filter(team_id=run.team_id, target_id=run.target_id, plan_id=run.plan_id,
                                  status__in=CHECKED_STATUSES).exclude(pk=run.pk)
        baseline = pair.filter(is_baseline=True).values_list("id", flat=True).first()
        if baseline is not None and not run.is_baseline:
            return f"{url}?runs={baseline},{run.pk}&baseline={baseline}"
        if run.is_baseline:
            later = pair.filter(created__gte=run.created).order_by("-created", "-id").values_list("id", flat=True)
            if later.first() is not None:
                return f"{url}?runs={run.pk},{later.first()}&baseline={run.pk}"
        before = (pair.filter(created__lte=run.created).exclude(created=run.created, id__gt=run.pk)
                  .order_by("-created", "-id").values_list("id", flat=True).first())
        if before is not None:
            return f"{url}?runs={before},{run.pk}&baseline={before}"
    return f"{url}?pick={run.pk}"


def has_baseline(runs) -> bool:
    """Whether any target+plan among `runs` has a baseline (the dashboard's empty list says why)."""
    return runs.filter(is_baseline=True, target__isnull=False, plan__isnull=False).exists()


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
