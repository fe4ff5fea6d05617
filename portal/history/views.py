"""Dashboard, compare, history and the baseline switch. Views stay thin: the work is in
comparison.py, timeline.py and charts.py."""
from urllib.parse import quote

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import F
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from benchmarks.compare import METRICS
from portal.accounts.access import get_owned_or_404
from portal.history import charts
from portal.history.comparison import (
    MAX_RUNS,
    MIN_RUNS,
    ComparisonError,
    build_comparison,
    is_id,
    parse_levels,
    parse_metrics,
    parse_run_ids,
)
from portal.history.timeline import (
    build_history,
    dashboard_regressions,
    has_baseline,
    history_pairs,
    last_two_per_pair,
)
from portal.sweeps.models import Plan, Run, Target
from portal.sweeps.services import RunStateError, clear_baseline, set_baseline

# Rows of the history table shown unless ?all=1 (the charts always show every run).
HISTORY_TABLE_ROWS = 50
# Columns a list of runs needs; the JSON snapshots and progress stay in the database.
RUN_LIST_FIELDS = ("id", "label", "status", "created", "target_id", "plan_id", "target__name", "plan__name")


def _compare_url(ids: list[int], baseline: int | None, picks: str = "") -> str:
    url = reverse("compare") + "?runs=" + ",".join(str(i) for i in ids)
    return url + (f"&baseline={baseline}" if baseline else "") + picks


def _picks_query(request) -> str:
    """The figure and level picks of a compare URL, to carry into its other links."""
    out = ""
    for key in ("metrics", "levels"):
        values = [v for v in request.GET.getlist(key) if v]
        if values:
            out += f"&{key}=" + quote(",".join(values), safe=",.")
    return out


def _picker_runs(user):
    return (Run.objects.for_user(user).filter(status=Run.Status.SUCCEEDED)
            .values(*RUN_LIST_FIELDS)[:100])


@login_required
def compare(request):
    """Compare 2-10 runs; the selection lives in the URL (?runs=..&baseline=..), so the page is a permalink."""
    raw = request.GET.getlist("runs")
    try:
        ids = parse_run_ids(raw)
    except ComparisonError as exc:
        messages.error(request, str(exc))
        ids = []
    picks = _picks_query(request)
    if len(raw) > 1 or len(request.GET.getlist("metrics")) > 1 or len(request.GET.getlist("levels")) > 1:
        # A form submission with one box per run, figure or level: go to the canonical permalink.
        return redirect(_compare_url(ids, request.GET.get("baseline"), picks))
    pick = request.GET.get("pick", "")
    context = {"picker": _picker_runs(request.user), "selected": ids or ([int(pick)] if is_id(pick) else []),
               "min_runs": MIN_RUNS, "max_runs": MAX_RUNS}
    if not ids:
        context["pick_hint"] = int(pick) if is_id(pick) else None
        return render(request, "history/compare.html", context)
    found = {r.pk: r for r in Run.objects.for_user(request.user).filter(pk__in=ids).defer("progress")}
    if len(found) != len(ids):
        raise Http404("No such run.")
    runs = [found[i] for i in ids]
    baseline_param = request.GET.get("baseline", "")
    baseline = found.get(int(baseline_param)) if is_id(baseline_param) else runs[0]
    if baseline is None:
        # Never added to the compared runs: the person picked these runs, the link named another.
        messages.error(request, f"Run #{baseline_param} is not one of the compared runs; "
                                "the first run is the baseline.")
        baseline = runs[0]
    try:
        comparison = build_comparison(runs, baseline, metrics=parse_metrics(request.GET.get("metrics")),
                                      loads=parse_levels(request.GET.get("levels")))
    except ComparisonError as exc:
        messages.error(request, str(exc))
        return render(request, "history/compare.html", context)
    fmt = request.GET.get("format")
    if fmt == "csv":
        response = HttpResponse(comparison.to_csv(), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="embperf-compare-{"-".join(map(str, ids))}.csv"'
        return response
    if fmt == "md":
        return HttpResponse(comparison.to_markdown(), content_type="text/markdown; charset=utf-8")
    data = comparison.to_dict()
    context.update({
        "comparison": data,
        "markdown": comparison.to_markdown(),
        "charts": charts.comparison_charts(comparison),
        "permalink": request.build_absolute_uri(_compare_url(ids, baseline.pk, picks)),
        "csv_url": _compare_url(ids, baseline.pk, picks) + "&format=csv",
        "baseline_links": [(r["id"], r["title"], _compare_url(ids, r["id"], picks)) for r in data["runs"]],
        "table": _comparison_table(data),
        "figure_choices": [(key, METRICS[key].label, key in comparison.metrics) for key in METRICS],
        "level_choices": [(load, load in comparison.loads) for load in comparison.all_loads],
        "picked": comparison.picked,
    })
    return render(request, "history/compare.html", context)


def _comparison_table(data: dict) -> list[dict]:
    """Rows grouped by level for the template: [{"load", "rows": [{"metric", "cells"}]}]."""
    metrics = {m["key"]: m for m in data["metrics"]}
    groups: list[dict] = []
    for row in data["rows"]:
        if not groups or (groups[-1]["shape"], groups[-1]["load"]) != (row["shape"], row["load"]):
            groups.append({"shape": row["shape"], "load": row["load"], "rows": []})
        metric = metrics[row["metric"]]
        cells = []
        for run, cell in zip(data["runs"], row["cells"], strict=True):
            value = cell["value"]
            delta = cell["delta"]
            if metric["key"] == "error_rate":
                value = None if value is None else value * 100
                if delta:
                    threshold = delta["threshold"]
                    delta = {**delta, "diff": delta["diff"] * 100,
                             "threshold": None if threshold is None else threshold * 100}
            cells.append({**cell, "value": value, "delta": delta, "is_reference": run["is_reference"]})
        unit = "%" if metric["key"] == "error_rate" else metric["unit"]
        groups[-1]["rows"].append({"metric": metric, "unit": unit, "cells": cells})
    return groups


@login_required
def history(request):
    """A target's history under one plan (?target=..&plan=..), or the list of target+plan pairs."""
    runs = Run.objects.for_user(request.user)
    target_id, plan_id = request.GET.get("target", ""), request.GET.get("plan", "")
    if not (is_id(target_id) and is_id(plan_id)):
        if target_id or plan_id:
            messages.error(request, "Pick a target and a plan to see their history.")
        return render(request, "history/history.html", {"pairs": history_pairs(runs)})
    target = get_owned_or_404(Target, request.user, int(target_id))
    plan = get_owned_or_404(Plan, request.user, int(plan_id))
    hist = build_history(runs.filter(target=target, plan=plan))
    newest_first = list(reversed(hist.points))
    show_all = request.GET.get("all") == "1"
    return render(request, "history/history.html", {
        "target": target,
        "plan": plan,
        "history": hist,
        **_history_chart_context(hist),
        "table": newest_first if show_all else newest_first[:HISTORY_TABLE_ROWS],
        "hidden_rows": 0 if show_all else max(0, len(newest_first) - HISTORY_TABLE_ROWS),
        "pairs": history_pairs(runs),
        "permalink": request.build_absolute_uri(),
    })


def _history_chart_context(hist) -> dict:
    payload = charts.history_charts(hist)
    return {"charts": payload["charts"], "chart_payload": payload}


@require_POST
@login_required
def mark_baseline(request, pk: int):
    """Make this run the baseline of its target and plan (or, with clear=1, stop it being one)."""
    run = get_owned_or_404(Run, request.user, pk, write=True)
    if request.POST.get("clear") == "1":
        clear_baseline(run)
        messages.success(request, f"Run #{run.pk} is no longer the baseline.")
    else:
        try:
            set_baseline(run)
            messages.success(request, f"Run #{run.pk} is now the baseline of {run.target_config.get('name', '')}.")
        except RunStateError as exc:
            messages.error(request, str(exc))
    nxt = request.POST.get("next", "")
    if nxt and url_has_allowed_host_and_scheme(nxt, allowed_hosts={request.get_host()},
                                               require_https=request.is_secure()):
        return redirect(nxt)
    if run.target_id and run.plan_id:
        return redirect(f"{reverse('history')}?target={run.target_id}&plan={run.plan_id}")
    return redirect(run.get_absolute_url())


@login_required
def dashboard(request):
    """Home page: running runs with progress, recent runs, regressions, quick compare links."""
    runs = Run.objects.for_user(request.user)
    running = list(runs.active().order_by("created").values(
        "id", "label", "status", "created", "target__name", "plan__name",
        level_index=F("progress__level_index"), levels_total=F("progress__levels_total"),
        run_elapsed_s=F("progress__run_elapsed_s"), run_eta_s=F("progress__run_eta_s"), phase=F("progress__phase"),
        load=F("progress__load")))
    for r in running:
        total = r["levels_total"] or 0
        done = (r["level_index"] or 0)
        elapsed, eta = r["run_elapsed_s"] or 0, r["run_eta_s"]
        if eta is not None and elapsed + eta > 0:
            r["percent"] = round(100 * elapsed / (elapsed + eta))
        else:
            r["percent"] = round(100 * done / total) if total else 0
    recent = list(runs.exclude(status__in=[Run.Status.QUEUED, Run.Status.RUNNING]).values(
        *RUN_LIST_FIELDS, peak_qps=F("summary__peak_qps"), knee_level=F("summary__knee_level"),
        slo_max_level=F("summary__slo_max_level"), capacity=F("document__capacity__load"),
        capacity_unit=F("document__capacity__unit"), capacity_status=F("document__capacity__status"))[:10])
    return render(request, "history/dashboard.html", {
        "running": running,
        "recent": recent,
        "recent_capacity": any(r["capacity_status"] for r in recent),
        "regressions": dashboard_regressions(runs)[:20],
        "has_baseline": has_baseline(runs),
        "quick": last_two_per_pair(runs),
    })
