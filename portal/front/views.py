"""Pages for targets, plans and runs. Views stay thin: access checks, a form, a template."""

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import Count
from django.http import JsonResponse
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.utils import timezone
from django.utils.dateformat import format as date_format
from django.views.decorators.http import require_POST

from benchmarks.capacity import summary_text as capacity_summary
from benchmarks.document import token_notes
from benchmarks.plan import plan_cells
from portal.accounts.access import can_write, get_owned_or_404, teams_for_user
from portal.front.charts import SHAPE_TITLES, run_charts
from portal.front.forms import PlanForm, RunFilterForm, RunForm, TargetForm
from portal.front.presets import PLAN_PRESETS, PRESET_LABELS
from portal.history.timeline import compare_link
from portal.sweeps.models import Plan, Run, Target, WorkerPresence
from portal.sweeps.services import (
    ProbeThrottle,
    RunStateError,
    is_repeat,
    probe_state,
    repeat_changes,
    request_cancel,
    request_probe,
    requeue_run,
    resume_plan,
    resume_run,
    start_run,
)

RUNS_PER_PAGE = 25
# A message that says a run is queued: the run page drops it once the run is no longer queued, so the
# page's words agree with its status badge.
WHILE_QUEUED = "while-queued"
# A running run's phase in words, as static/js/run_progress.js writes them.
PHASE_WORDS = {"starting": "starting", "probe": "probing the target", "calibrate": "calibrating inputs",
               "warmup": "warming up", "measure": "measuring", "drain": "waiting for in-flight requests"}


# Targets ----------------------------------------------------------------------------------------


@login_required
def target_list(request):
    targets = (
        Target.objects.for_user(request.user).distinct().select_related("team").annotate(run_count=Count("runs"))
    )
    return render(request, "sweeps/target_list.html", {"targets": targets})


@login_required
def target_create(request):
    form = TargetForm(request.POST or None, user=request.user)
    if request.method == "POST" and form.is_valid():
        target = form.save()
        messages.success(request, f"Target “{target.name}” created. Test the connection before the first run.")
        return redirect(target)
    return render(
        request,
        "sweeps/target_form.html",
        {"form": form, "can_create": teams_for_user(request.user, write=True).exists()},
    )


@login_required
def target_detail(request, pk):
    target = get_owned_or_404(Target, request.user, pk)
    runs = target.runs.select_related("target", "plan")[:10]
    context = {"target": target, "runs": runs, "probe": probe_state(target)}
    return render(request, "sweeps/target_detail.html", context)


@login_required
def target_edit(request, pk):
    target = get_owned_or_404(Target, request.user, pk, write=True)
    form = TargetForm(request.POST or None, instance=target, user=request.user)
    if request.method == "POST" and form.is_valid():
        form.save()
        messages.success(request, "Target saved. Earlier runs keep the configuration they ran with.")
        return redirect(target)
    return render(request, "sweeps/target_form.html", {"form": form, "target": target, "can_create": True})


@login_required
def target_delete(request, pk):
    target = get_owned_or_404(Target, request.user, pk, write=True)
    if request.method == "POST":
        name = target.name
        target.delete()
        messages.success(request, f"Target “{name}” deleted. Its runs are kept.")
        return redirect("target-list")
    return render(request, "sweeps/target_confirm_delete.html", {"target": target, "run_count": target.runs.count()})


@login_required
def target_probe(request, pk):
    """POST: ask a worker on the target's queue to probe it. GET: the probe's state as JSON."""
    if request.method != "POST":
        target = get_owned_or_404(Target, request.user, pk)
        state = probe_state(target)
        state["html"] = render_to_string("sweeps/_probe_result.html", {"target": target, "probe": state})
        return JsonResponse(state)
    target = get_owned_or_404(Target, request.user, pk, write=True)
    throttle = ProbeThrottle()
    if not throttle.allow_request(request, None):
        message, wait = throttle.refusal()
        if "application/json" in request.headers.get("Accept", ""):
            html = render_to_string("sweeps/_probe_throttled.html", {"message": message})
            response = JsonResponse({"error": message, "retry_after_s": wait, "html": html}, status=429)
            response["Retry-After"] = str(wait)
            return response
        messages.error(request, message)
        return redirect(target)
    request_probe(target)
    target.refresh_from_db()
    if "application/json" in request.headers.get("Accept", ""):
        return JsonResponse(probe_state(target))
    return redirect(target)


# Plans ------------------------------------------------------------------------------------------


@login_required
def plan_list(request):
    plans = Plan.objects.for_user(request.user).distinct().select_related("team").annotate(run_count=Count("runs"))
    return render(request, "sweeps/plan_list.html", {"plans": plans})


@login_required
def plan_create(request):
    preset = request.GET.get("preset", "")
    initial = dict(PLAN_PRESETS.get(preset, {}))
    form = PlanForm(request.POST or None, initial=initial, user=request.user)
    if request.method == "POST" and form.is_valid():
        plan = form.save()
        messages.success(request, f"Plan “{plan.name}” created.")
        return redirect(plan)
    context = {
        "form": form,
        "presets": PRESET_LABELS,
        "preset": preset,
        "can_create": teams_for_user(request.user, write=True).exists(),
    }
    return render(request, "sweeps/plan_form.html", context)


@login_required
def plan_detail(request, pk):
    plan = get_owned_or_404(Plan, request.user, pk)
    runs = plan.runs.select_related("target", "plan")[:10]
    return render(request, "sweeps/plan_detail.html", {"plan": plan, "runs": runs})


@login_required
def plan_edit(request, pk):
    plan = get_owned_or_404(Plan, request.user, pk, write=True)
    form = PlanForm(request.POST or None, instance=plan, user=request.user)
    if request.method == "POST" and form.is_valid():
        form.save()
        messages.success(request, "Plan saved. Earlier runs keep the plan they ran with.")
        return redirect(plan)
    return render(request, "sweeps/plan_form.html", {"form": form, "plan": plan, "can_create": True})


# Runs -------------------------------------------------------------------------------------------


@login_required
def run_list(request):
    filters = RunFilterForm(request.GET or None, user=request.user)
    runs = Run.objects.for_user(request.user).distinct().select_related("target", "plan")
    runs = filters.filter(runs).order_by("-created", "-id")
    page = Paginator(runs, RUNS_PER_PAGE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    context = {"filters": filters, "page": page, "runs": page.object_list, "query": query.urlencode()}
    return render(request, "sweeps/run_list.html", context)


def _repeated_run(request) -> Run | None:
    """The run named by ?repeat=N (or the form's repeat_of): "Run again" of a run this user can see."""
    raw = request.POST.get("repeat_of") or request.GET.get("repeat") or ""
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 18):
        return None
    return get_owned_or_404(Run, request.user, int(raw))


@login_required
def run_create(request):
    """Start a run; with ?repeat=N ("Run again") the form starts from run N's target, plan, label and
    server config, and the new run is recorded as its repeat when those are kept."""
    original = _repeated_run(request)
    initial = {k: request.GET[k] for k in ("target", "plan", "label") if request.GET.get(k)}
    if original is not None:
        initial.update({"target": original.target_id, "plan": original.plan_id, "label": original.label,
                        "server_config": dict(original.server_config or {}), "repeat_of": original.pk})
    form = RunForm(request.POST or None, initial=initial, user=request.user)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        repeat_of = original if original is not None and is_repeat(
            original, data["target"], data["plan"], data["server_config"]) else None
        run = start_run(
            target=data["target"],
            plan=data["plan"],
            user=request.user,
            label=data["label"],
            notes=data["notes"],
            server_config=data["server_config"],
            repeat_of=repeat_of,
        )
        if run.never_started:
            messages.error(request, "The run could not be queued; it is kept, and can be queued again from this page.")
        elif repeat_of is not None:
            messages.success(request, f"Run queued: a repeat of #{repeat_of.pk}. This page follows it live.",
                             extra_tags=WHILE_QUEUED)
        elif original is not None:
            messages.success(request, f"Run queued. It is not a repeat of #{original.pk}: its target, plan or "
                                      "server config differs. This page follows it live.", extra_tags=WHILE_QUEUED)
        else:
            messages.success(request, "Run queued. This page follows it live.", extra_tags=WHILE_QUEUED)
        return redirect(run)
    return render(request, "sweeps/run_form.html", {
        "form": form, "repeat_of": original,
        "repeat_changes": repeat_changes(original) if original is not None else [],
    })


def level_rows(run: Run) -> list[dict]:
    """The finished levels of a run as plain dictionaries for the results table and charts."""
    rows = []
    for level in run.levels.all():
        data = level.data or {}
        client = data.get("client") or {}
        rows.append(
            {
                "index": level.index,
                "load": level.load,
                "status": level.status,
                "abort_reason": data.get("abort_reason"),
                "duration_s": level.duration_s,
                "requests_ok": level.requests_ok,
                "requests_failed": level.requests_failed,
                "qps": level.qps,
                "texts_per_s": level.texts_per_s,
                "tokens_per_s": level.tokens_per_s,
                "tokens_estimated": bool(data.get("tokens_estimated")),
                "tokens_source": data.get("tokens_source") or "",
                "stalls": data.get("stalls") or [],
                "notes": data.get("notes") or [],
                "latency_mean_ms": level.latency_mean_ms,
                "latency_p50_ms": level.latency_p50_ms,
                "latency_p90_ms": level.latency_p90_ms,
                "latency_p99_ms": level.latency_p99_ms,
                "error_rate": level.error_rate,
                "errors": {k: v for k, v in (level.errors or {}).items() if v},
                "error_examples": data.get("error_examples") or {},
                "client_bound": level.client_bound,
                "client_bound_reason": client.get("client_bound_reason") or "",
                "client_bound_by": client.get("bound_by") or "",
                "client_advice": client.get("advice") or "",
                "vram_peak_mib": level.vram_peak_mib,
                "gpu_util_mean": level.gpu_util_mean,
                "power_mean_w": level.power_mean_w,
                "joules_per_1k_tokens": level.joules_per_1k_tokens,
                "goodput_per_s": (data.get("goodput") or {}).get("per_s"),
                "capacity_step": data.get("capacity_step") or {},
                "shape": level.shape_value,
                "answers": data.get("answers") or {},
                "input_tokens": data.get("input_tokens") or {},
                # A capacity search's synchronous level is closed loop in an open-loop run.
                "in_flight": level.rate is None and run.level_key == "rate",
            }
        )
    return rows


def _results_context(run: Run) -> dict:
    rows = level_rows(run)
    tokens_short, token_lines = token_notes(run.document or {})
    shape_field = (run.plan_config or {}).get("shape_field")
    return {
        "tokens_short": tokens_short,
        "token_lines": token_lines,
        "level_notes": [(f"{shape_field} {r['shape']}, " if r["shape"] else "", r["load"], note)
                        for r in rows for note in r["notes"]],
        "run": run,
        "rows": rows,
        "load_label": "Rate (req/s)" if run.level_key == "rate" else "Concurrency",
        "show_gpu": any(r[key] is not None for r in rows
                        for key in ("vram_peak_mib", "gpu_util_mean", "power_mean_w", "joules_per_1k_tokens")),
        "any_client_bound": any(r["client_bound"] for r in rows),
        "show_goodput": any(r["goodput_per_s"] is not None for r in rows),
        "shape_title": SHAPE_TITLES.get(shape_field, shape_field or "").capitalize(),
        "shape_best": list((run.summary or {}).get("shapes") or []) if shape_field else [],
        "show_answers": any(r["answers"].get("bytes_mean") is not None for r in rows),
        "show_input_tokens": any(r["input_tokens"] for r in rows),
        "capacity_text": capacity_summary(capacity) if (capacity := run.capacity_answer) else "",
        "capacity": capacity,
    }


# The telemetry table's columns, each with whether a level has data for it (a level document's parts).
TELEMETRY_COLUMNS = {
    "gpu_util": lambda lv, gpus, server, energy: lv.gpu_util_mean is not None,
    "sm_active": lambda lv, gpus, server, energy: any(g.get("sm_active_mean") is not None for g in gpus),
    "vram": lambda lv, gpus, server, energy: lv.vram_peak_mib is not None,
    "power": lambda lv, gpus, server, energy: lv.power_mean_w is not None,
    "energy": lambda lv, gpus, server, energy: energy.get("joules") is not None,
    "j_per_request": lambda lv, gpus, server, energy: energy.get("joules_per_request") is not None,
    "j_per_1k": lambda lv, gpus, server, energy: lv.joules_per_1k_tokens is not None,
    "sm_clock": lambda lv, gpus, server, energy: any(g.get("sm_clock_mean_mhz") is not None for g in gpus),
    "clock_events": lambda lv, gpus, server, energy: any(g.get("throttle_reasons") for g in gpus),
    "server_gauges": lambda lv, gpus, server, energy: bool(server) and (
        server.get("gauges_followed") is False or any(
            (server.get(key) or {}).get("mean") is not None for key in ("queue_depth", "running"))),
    "server_tokens": lambda lv, gpus, server, energy: bool(server) and (
        server.get("tokens_counter_followed") is False or server.get("prompt_tokens_ratio") is not None),
}


def telemetry_columns(levels) -> list[str]:
    """The telemetry table's columns that some level has data for: a run without GPUs shows only the
    server's columns, so the table fits its box and no column is all dashes."""
    present = set()
    for level in levels:
        data = level.data or {}
        gpus = (data.get("gpu") or {}).get("gpus") or []
        server, energy = data.get("server") or {}, data.get("energy") or {}
        present |= {name for name, has in TELEMETRY_COLUMNS.items() if has(level, gpus, server, energy)}
    return [name for name in TELEMETRY_COLUMNS if name in present]


def waiting_note(run: Run) -> str:
    """For a run queued a while on a queue no worker reported consuming: says so, and what to do."""
    if run.status != Run.Status.QUEUED:
        return ""
    if (timezone.now() - run.created).total_seconds() < settings.EMBPERF_NO_WORKER_AFTER_S:
        return ""
    queue = (run.target_config or {}).get("queue") or "sweeps"
    if WorkerPresence.listening_on(queue):
        return ""
    return (f"No worker is listening on queue {queue}: the run starts when one does "
            f"(.venv/bin/celery -A workers worker -Q {queue}).")


@login_required
def run_detail(request, pk):
    run = get_owned_or_404(Run, request.user, pk)
    context = _results_context(run)
    context["waiting_note"] = waiting_note(run)
    context["levels_total"] = len(plan_cells(run.plan_config or {}))
    context["elapsed_s"] = (run.finished - run.started).total_seconds() if run.started and run.finished else None
    context.update(_continuation_context(request.user, run))
    context["queue_text"] = run.queue_text()
    context["phase_text"] = PHASE_WORDS.get((run.progress or {}).get("phase") or "starting", "")
    # A finished run gets its full charts; while it runs, run_progress.js grows two charts as levels finish.
    context["charts"] = run_charts(run) if run.is_final else []
    context["run_compare_url"] = compare_link(run)
    context["telemetry_columns"] = telemetry_columns(run.levels.all())
    return render(request, "sweeps/run_detail.html", context)


def _continuation_context(user, run: Run) -> dict:
    """What the run page offers after a run that did not finish: resume it, or queue it again; and for
    a resumed run, the levels measured by the runs it continues."""
    writer = can_write(user, run.team)
    resumed_by = run.resumed_by.order_by("-created").first()
    resume_levels = None
    if writer and resumed_by is None and not run.never_started:
        try:
            resume_levels = resume_plan(run)
        except RunStateError:
            pass
    earlier = [{"run": origin, "load": level.load, "qps": level.qps, "latency_p99_ms": level.latency_p99_ms,
                "error_rate": level.error_rate} for origin, level in run.earlier_levels()]
    return {"can_resume": resume_levels is not None, "resume_from_load": resume_levels[0] if resume_levels else None,
            "can_enqueue": writer and run.never_started, "resumed_by": resumed_by, "earlier_levels": earlier}


@login_required
def run_progress(request, pk):
    """The live state of a run as JSON, polled by the run page.

    `?levels=N` says how many finished levels the page already shows; the levels and the results
    table are sent only when that number changed, so a poll stays small while a level runs.
    """
    run = get_owned_or_404(Run, request.user, pk)
    state = {
        "id": run.pk,
        "status": run.status,
        "status_display": run.get_status_display(),
        "status_reason": run.status_reason,
        "is_final": run.is_final,
        "cancel_requested": run.cancel_requested,
        "started": run.started.isoformat() if run.started else None,
        "finished": run.finished.isoformat() if run.finished else None,
        "started_display": date_format(timezone.localtime(run.started), "Y-m-d H:i:s") if run.started else None,
        "worker_host": run.worker_host,
        "levels_total": len(plan_cells(run.plan_config or {})),
        "levels_done": run.levels.count(),
        "queue_position": run.queue_position(),
        "queue_text": run.queue_text(),
        "progress": run.progress or {},
        "heartbeat_age_s": run.heartbeat_age_s() if run.status == Run.Status.RUNNING else None,
        "worker_silent": run.worker_is_silent(),
        "waiting_note": waiting_note(run),
        "levels": None,
        "results_html": None,
    }
    if request.GET.get("levels") != str(state["levels_done"]):
        context = _results_context(run)
        state["levels"] = context["rows"]
        state["results_html"] = render_to_string("sweeps/_run_results.html", context, request=request)
    return JsonResponse(state)


@login_required
@require_POST
def run_cancel(request, pk):
    """Ask the worker to stop the run; a run no worker has picked up yet is cancelled at once."""
    run = get_owned_or_404(Run, request.user, pk, write=True)
    if run.is_final:
        messages.info(request, f"This run has already finished ({run.get_status_display().lower()}).")
        return redirect(run)
    run = request_cancel(run)
    if run.status == Run.Status.CANCELLED and run.started is None:
        messages.success(request, "Run cancelled before it started.")
    elif run.status == Run.Status.CANCELLED:
        messages.success(request, "Run cancelled: its worker had stopped reporting, so it was ended at once.")
    else:
        messages.info(request, "Cancelling: the worker stops within a few seconds and keeps the finished levels.")
    return redirect(run)


@login_required
@require_POST
def run_resume(request, pk):
    """Continue an interrupted or failed run from its first unfinished level, as a new linked run."""
    run = get_owned_or_404(Run, request.user, pk, write=True)
    try:
        new = resume_run(run, user=request.user)
    except RunStateError as exc:
        messages.error(request, str(exc))
        return redirect(run)
    if new.never_started:
        messages.error(request, "The new run could not be queued: " + new.status_reason)
    else:
        messages.success(request, f"Resumed as run #{new.pk}: it measures only the levels "
                                  f"run #{run.pk} had not finished.")
    return redirect(new)


@login_required
@require_POST
def run_enqueue(request, pk):
    """Queue again a run the broker refused when it was started."""
    run = get_owned_or_404(Run, request.user, pk, write=True)
    try:
        run = requeue_run(run)
    except RunStateError as exc:
        messages.error(request, str(exc))
        return redirect(run)
    if run.never_started:
        messages.error(request, "Still not queued: " + run.status_reason)
    else:
        messages.success(request, "Run queued. This page follows it live.", extra_tags=WHILE_QUEUED)
    return redirect(run)
