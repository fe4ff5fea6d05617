"""Operations that span several models: starting, queueing, resuming and cancelling a run; probing a target.

Recording what a run measured is in documents.py."""
import logging
import math

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from rest_framework.throttling import UserRateThrottle

from portal.sweeps.bounds import plan_field_errors, sweep_seconds
from portal.sweeps.models import Plan, QueueGrant, Run, Target
from portal.sweeps.snapshots import config_changes, snapshot_fields
from portal.taskqueue import PROBE_TARGET, RUN_SWEEP, enqueue

logger = logging.getLogger(__name__)

# Added to a plan's expected duration for the probe, input calibration and start-up,
# then a share on top for slow servers; the hard limit leaves the soft one time to clean up.
TIME_LIMIT_MARGIN_S = 120
TIME_LIMIT_FACTOR = 1.25
HARD_LIMIT_GRACE_S = 60
PROBE_SOFT_LIMIT_S = 60
# A probe nobody picked up within this time is dropped: the page has long stopped waiting.
PROBE_EXPIRES_S = 300


def create_run(*, target: Target, plan: Plan, user=None, label: str = "", notes: str = "",
               server_config: dict | None = None, source: str = Run.Source.PORTAL, repeat_of: Run | None = None) -> Run:
    """Create a queued run with snapshots of its target and plan (the caller enqueues it)."""
    return Run.objects.create(
        repeat_of=repeat_of,
        team=target.team,
        target=target,
        plan=plan,
        target_config=target.to_spec(with_secret=False),
        plan_config=plan.to_spec(),
        server_config=server_config or {},
        label=label,
        notes=notes,
        created_by=user if user is not None and user.is_authenticated else None,
        source=source,
    )


def plan_misfits(target: Target, plan: Plan | dict) -> list[str]:
    """What a plan (a Plan or its spec) asks for that the target's last successful probe says the server
    cannot give (more dimensions than its vectors have, longer texts than it accepts), with the figures.
    Checked before a run is queued; empty when no probe of the target's current URLs succeeded or it saw
    nothing to object to (a probe of other servers says nothing about these)."""
    probe = target.current_probe or {}
    if not probe.get("ok"):
        return []
    spec = plan.to_spec() if isinstance(plan, Plan) else plan
    dimensions, tokens = spec.get("dimensions"), spec.get("tokens")
    problems = []
    length = probe.get("vector_length")
    if dimensions and isinstance(length, int) and dimensions > length:
        problems.append(
            f"The plan asks for {dimensions:,} dimensions, but the target's last probe saw vectors of "
            f"{length:,}: leave the plan's dimensions blank to use the model's own, or ask for {length:,} or fewer."
        )
    limit = probe.get("max_input_tokens")
    if isinstance(limit, int) and isinstance(tokens, int) and tokens > limit:
        problems.append(
            f"The plan asks for {tokens:,}-token texts, but the server accepts at most {limit:,} tokens per "
            f"text (its last probe): ask for {limit:,} tokens or fewer."
        )
    return problems


def sweep_time_limits(plan: Plan | dict) -> tuple[int, int]:
    """(soft, hard) Celery time limits in seconds for a sweep of this plan (a Plan or its spec).

    Sized from the planned time, which never counts above EMBPERF_MAX_RUN_SECONDS: a plan saved
    before the bounds existed still gets a finite limit."""
    spec = plan.to_spec() if isinstance(plan, Plan) else plan
    soft = int(sweep_seconds(spec) * TIME_LIMIT_FACTOR + TIME_LIMIT_MARGIN_S)
    return soft, soft + HARD_LIMIT_GRACE_S


def queue_refusal(team, queue: str) -> str:
    """Why a team's target may not name this queue, with the queues it may name."""
    allowed = ", ".join(QueueGrant.objects.queues_for(team))
    return (f"The queue “{queue}” is not granted to {team.name}; this team's targets may use: {allowed}. "
            "An administrator grants queues (admin: Queue grants).")


def target_queue_error(target: Target) -> str | None:
    """Why this target's sweeps and probes may not go to its queue (its grant was withdrawn), or None."""
    if QueueGrant.objects.allows(target.team, target.queue):
        return None
    return queue_refusal(target.team, target.queue) + " Edit the target to pick one of those."


PLAN_OUT_OF_BOUNDS = "This plan is outside this installation's bounds; edit it before starting it: "


def plan_start_errors(plan: Plan | dict) -> list[str]:
    """Why this plan (a Plan or the spec a run will use) cannot be started as it stands (saved before
    today's bounds, or limits lowered since), one message per field; empty when it can."""
    spec = plan.to_spec() if isinstance(plan, Plan) else plan
    return [f"{field}: {' '.join(messages)}" for field, messages in plan_field_errors(spec).items()]


def probe_start_error(target: Target) -> str | None:
    """Why a sweep of this target is not sent to a worker: its last connection test, of its current URLs,
    failed (a sweep would fail at its own probe a moment later). None when the test passed, or when no test
    of these URLs has been stored (the sweep probes the target first, as every sweep does)."""
    probe = target.current_probe
    if not probe or probe.get("ok"):
        return None
    error = (probe.get("error") or "no answer").rstrip(".")
    state = probe_state(target)
    then = ("A new test is waiting for a worker; start once it passes." if state["pending"] else
            f"Test the connection again (Test connection on the target's page, or POST "
            f"/api/v1/targets/{target.pk}/probe/) and start once it passes.")
    return f"The target's last connection test failed: {error}. {then}"


def probe_state(target: Target) -> dict:
    """'Test connection' as the pages and the API show it: pending (asked, no worker answer yet) or the last
    answer for the target's current URLs, with when it was asked and answered."""
    result = target.current_probe
    requested = target.probe_requested_at
    answered_at = parse_datetime((result or {}).get("at") or "")
    # A result written before the latest request is the previous test's: the new one is still pending.
    pending = requested is not None and (result is None or (answered_at is not None and answered_at < requested))
    return {
        "pending": pending,
        "requested_at": requested,
        "waited_s": (timezone.now() - requested).total_seconds() if pending else None,
        "queue": target.queue,
        "result": None if pending else result,
        "tested_at": answered_at,
    }


class RunStateError(Exception):
    """The run is not in a state that allows this (the message says why and what to do instead)."""


def run_start_errors(target: Target | None, plan: Plan | None, *, spec: dict | None = None) -> dict[str, list[str]]:
    """The one gate for work: why this target and plan cannot be sent to a worker together, as
    {"plan" | "target": [messages]}; empty when they can. Every path that publishes a sweep asks it
    (start, run again through the start form, resume, enqueue). `spec` is the plan as the run will
    measure it (a resumed or requeued run's snapshot), by default the plan's own. Either may be None
    (a form with that field left empty): what can be checked still is."""
    errors: dict[str, list[str]] = {}
    if spec is None and plan is not None:
        spec = plan.to_spec()
    if target and plan and target.team_id != plan.team_id:
        errors["plan"] = [f"This plan belongs to {plan.team.name}; pick a plan of {target.team.name}, "
                          "the target's team."]
    elif spec is not None:
        problems = plan_start_errors(spec)
        if problems:
            errors["plan"] = [PLAN_OUT_OF_BOUNDS + "; ".join(problems)]
        elif target:
            misfits = plan_misfits(target, spec)
            if misfits:
                errors["plan"] = misfits
    for refusal in (target_queue_error(target), probe_start_error(target)) if target else ():
        if refusal:
            errors.setdefault("target", []).append(refusal)
    return errors


class RunRefused(RunStateError):
    """The gate (run_start_errors) refuses to send this work to a worker; `errors` as it gives them."""

    def __init__(self, errors: dict[str, list[str]]):
        self.errors = errors
        super().__init__(" ".join(m for messages in errors.values() for m in messages))


def _gate(run: Run) -> None:
    """Raise RunRefused when the start rules refuse the run as it would be sent (its own snapshot)."""
    errors = run_start_errors(run.target, run.plan, spec=dict(run.plan_config or {}))
    if errors:
        raise RunRefused(errors)


def _broker_failure(exc: Exception) -> str:
    return (f"Could not hand the job to a worker: the task broker ({_broker_name()}) did not answer "
            f"({type(exc).__name__}: {exc}). Check that it is running and that CELERY_BROKER_URL points at it.")


def _broker_name() -> str:
    url = str(getattr(settings, "CELERY_BROKER_URL", "") or "")
    return url.split("://", 1)[0] + "://…" if "://" in url else url or "default"


def run_time_limits(run: Run) -> tuple[int, int]:
    """(soft, hard) Celery time limits for a run, sized from the plan it runs (its snapshot)."""
    return sweep_time_limits(dict(run.plan_config or {}))


def enqueue_run(run: Run) -> str | None:
    """Hand a queued run to the workers of its target's queue, with time limits sized from its plan.

    Returns None, or the reason the broker refused it: the run is then marked failed without having
    started (`Run.never_started`), so it can be queued again (`requeue_run`) once the broker is back.
    """
    soft, hard = run_time_limits(run)
    queue = (run.target.queue if run.target_id else run.target_config.get("queue")) or "sweeps"
    try:
        enqueue(RUN_SWEEP, args=[run.pk], queue=queue, soft_time_limit=soft, time_limit=hard)
    except Exception as exc:
        logger.exception("run %s: could not enqueue", run.pk)
        reason = _broker_failure(exc)
        Run.objects.filter(pk=run.pk, status=Run.Status.QUEUED).update(
            status=Run.Status.FAILED, status_reason=reason, finished=timezone.now()
        )
        run.refresh_from_db()
        return reason
    return None


def _enqueue_on_commit(run: Run) -> None:
    # The worker must find the row: publish only once the transaction that created it commits
    # (outside a transaction, at once; the caller then sees a refusal on the returned run).
    transaction.on_commit(lambda: enqueue_run(run))


def start_run(*, target: Target, plan: Plan, user=None, label: str = "", notes: str = "",
              server_config: dict | None = None, source: str = Run.Source.PORTAL, repeat_of: Run | None = None) -> Run:
    """Create a queued run and hand it to the workers of the target's queue, with time limits sized
    from the plan. When the broker cannot be reached the run is marked failed with the reason
    (`Run.never_started`: it can be queued again with `requeue_run`)."""
    run = create_run(target=target, plan=plan, user=user, label=label, notes=notes,
                     server_config=server_config, source=source, repeat_of=repeat_of)
    _enqueue_on_commit(run)
    return run


def is_repeat(original: Run, target: Target | None, plan: Plan | None, server_config: dict | None) -> bool:
    """Whether a run of `target` and `plan` with `server_config` repeats `original` ("Run again"):
    the same target, plan and server config."""
    return (target is not None and plan is not None and original.target_id == target.pk
            and original.plan_id == plan.pk and dict(original.server_config or {}) == dict(server_config or {}))


def repeat_changes(original: Run) -> list[str]:
    """What differs between `original`'s target and plan snapshots and the target and plan as they are
    now ('Levels: 1, 4 → 1, 4, 8'): a repeat made today then starts a new segment of the history."""
    if original.target is None or original.plan is None:
        return []
    before = snapshot_fields(original.target_config, original.plan_config, {})
    now = snapshot_fields(original.target.to_spec(with_secret=False), original.plan.to_spec(), {})
    return config_changes(before, now)


def repeat_run(original: Run, *, user=None, source: str = Run.Source.PORTAL) -> Run:
    """Run again: a new run of `original`'s target and plan with its server config and label, linked to
    it (`repeat_of`), through the same checks as any start (RunRefused names what stops it; RunStateError
    when the target or plan is gone)."""
    if original.target is None or original.plan is None:
        gone = "target" if original.target is None else "plan"
        raise RunStateError(f"The {gone} of run {original.pk} has been deleted; there is nothing to repeat it with.")
    errors = run_start_errors(original.target, original.plan)
    if errors:
        raise RunRefused(errors)
    return start_run(target=original.target, plan=original.plan, user=user, label=original.label,
                     notes=original.notes, server_config=dict(original.server_config or {}), source=source,
                     repeat_of=original)


def requeue_run(run: Run) -> Run:
    """Queue again a run the broker refused, or send again a queued run whose message the broker lost
    (portal.sweeps.reconcile); raises RunStateError for a run a worker already took."""
    if run.status == Run.Status.QUEUED:
        from portal.sweeps.reconcile import resend_lost

        _gate(run)
        if resend_lost(run, on_request=True) is None:
            raise RunStateError(
                f"Run {run.pk} is queued and its message is still with the broker or a worker; it starts when a "
                f"worker of queue {run.queue} is free. A queued run is sent again only once its message is taken "
                f"for lost (no free worker received it within {settings.EMBPERF_REQUEUE_AFTER_S:.0f} s).")
        run.refresh_from_db()
        return run
    if not run.never_started:
        raise RunStateError(
            f"Run {run.pk} is {run.status} and a worker has already taken it; only a run the broker refused "
            "can be queued again. Resume an interrupted or failed run instead.")
    if run.target_id is None:
        raise RunStateError(f"The target of run {run.pk} has been deleted; there is nothing to queue it against.")
    _gate(run)
    Run.objects.filter(pk=run.pk, status=Run.Status.FAILED, started__isnull=True).update(
        status=Run.Status.QUEUED, status_reason="", finished=None, cancel_requested=False, resent_at=None)
    run.refresh_from_db()
    _enqueue_on_commit(run)
    run.refresh_from_db()
    return run


RESUMABLE = (Run.Status.INTERRUPTED, Run.Status.FAILED)


def resume_plan(run: Run) -> list:
    """The levels a resumed run would measure: the plan's levels from the first one `run` did not finish
    (raises RunStateError when the run cannot be resumed)."""
    if run.status not in RESUMABLE:
        raise RunStateError(f"Run {run.pk} is {run.status}; only an interrupted or failed run can be resumed.")
    if run.source == Run.Source.INGEST:
        raise RunStateError(f"Run {run.pk} was ingested from a result document; start a new run instead.")
    if run.target_id is None:
        raise RunStateError(f"The target of run {run.pk} has been deleted; there is nothing to resume against.")
    if (run.plan_config or {}).get("search") == "capacity":
        # Each level of a capacity search is chosen from the ones before it: it cannot continue halfway.
        raise RunStateError(f"Run {run.pk} is a capacity search, which cannot be resumed; run it again instead.")
    if (run.plan_config or {}).get("shape_field"):
        raise RunStateError(f"Run {run.pk} sweeps a shape axis, whose grid cannot be resumed; run it again instead.")
    levels = list((run.plan_config or {}).get("levels") or [])
    remaining = levels[len(run.finished_levels()):]
    if not remaining:
        raise RunStateError(f"Run {run.pk} finished every level of its plan; there is nothing left to measure.")
    return remaining


def resume_run(run: Run, *, user=None, source: str = Run.Source.PORTAL) -> Run:
    """Continue an interrupted or failed run: a new run, linked to it (`resumed_from`), with the same
    target and plan snapshots but only the levels it had not finished; queued like `start_run`."""
    remaining = resume_plan(run)
    errors = run_start_errors(run.target, run.plan, spec={**run.plan_config, "levels": remaining})
    if errors:
        raise RunRefused(errors)
    new = Run.objects.create(
        team=run.team, target=run.target, plan=run.plan, target_config=dict(run.target_config),
        plan_config={**run.plan_config, "levels": remaining}, server_config=dict(run.server_config or {}),
        label=run.label, notes=run.notes, source=source, resumed_from=run,
        created_by=user if user is not None and user.is_authenticated else None,
    )
    _enqueue_on_commit(new)
    new.refresh_from_db()
    return new


def set_baseline(run: Run) -> Run:
    """Make `run` the baseline of its target and plan (the one before stops being it); returns it refreshed.
    A run whose target or plan was deleted has no history to be the baseline of (RunStateError)."""
    if run.target_id is None or run.plan_id is None:
        raise RunStateError(f"The target or plan of run {run.pk} has been deleted; it has no history to be the "
                            "baseline of.")
    with transaction.atomic():
        Run.objects.filter(team=run.team, target_id=run.target_id, plan_id=run.plan_id,
                           is_baseline=True).exclude(pk=run.pk).update(is_baseline=False)
        Run.objects.filter(pk=run.pk).update(is_baseline=True)
    run.refresh_from_db()
    return run


def clear_baseline(run: Run) -> Run:
    """Stop `run` being a baseline; returns it refreshed."""
    Run.objects.filter(pk=run.pk).update(is_baseline=False)
    run.refresh_from_db()
    return run


def request_cancel(run: Run) -> Run:
    """Cancel a run: a queued one ends at once, a running one is asked to stop (the worker checks
    the flag every half second and the engine stops within a second). A running run whose worker
    went silent (heartbeat older than EMBPERF_STALE_AFTER_S) ends at once too: no worker would read
    the flag. Returns the refreshed run."""
    cancelled = Run.objects.filter(pk=run.pk, status=Run.Status.QUEUED).update(
        status=Run.Status.CANCELLED, cancel_requested=True, finished=timezone.now(),
        status_reason="Cancelled before it started.",
    )
    if not cancelled:
        Run.objects.filter(pk=run.pk, status=Run.Status.RUNNING).update(cancel_requested=True)
        silent = Run.objects.filter(pk=run.pk).stale()
        for row in silent.only("pk", "worker_host", "heartbeat", "started"):
            age = row.heartbeat_age_s()
            heard = f"{age:.0f} s ago" if age is not None else "never"
            silent.end_as(Run.Status.CANCELLED, (
                f"Cancelled on request. Its worker {row.worker_host or '(unknown)'} was last heard from {heard} "
                "(it probably died), so the run was ended here at once; levels finished before that are kept."))
    run.refresh_from_db()
    return run


class ProbeThrottle(UserRateThrottle):
    """How often one user may ask for a probe ("Test connection"): EMBPERF_PROBE_RATE, counted in the
    Django cache (shared by all web processes when the cache is, e.g. Redis)."""

    scope = "probe"

    def get_rate(self) -> str:
        return settings.EMBPERF_PROBE_RATE

    def refusal(self) -> tuple[str, int]:
        """(message, seconds to wait) once allow_request() said no: the page and the API say the same."""
        wait = math.ceil(self.wait() or 1)
        return (f"Too many connection tests: at most {self.rate} per user on this installation "
                f"(EMBPERF_PROBE_RATE). Try again in {wait} s."), wait


def request_probe(target: Target) -> None:
    """Ask a worker of the target's queue to probe it; the answer lands on Target.last_probe."""
    now = timezone.now()
    refusal = target_queue_error(target)
    if refusal:
        target.last_probe = target.probe_answer(ok=False, error=refusal, hint=None, at=now.isoformat())
        Target.objects.filter(pk=target.pk).update(last_probe=target.last_probe)
        return
    Target.objects.filter(pk=target.pk).update(probe_requested_at=now)
    target.probe_requested_at = now
    try:
        enqueue(PROBE_TARGET, args=[target.pk], queue=target.queue or "sweeps", expires=PROBE_EXPIRES_S,
                soft_time_limit=PROBE_SOFT_LIMIT_S, time_limit=PROBE_SOFT_LIMIT_S + 30)
    except Exception as exc:
        logger.exception("target %s: could not enqueue the probe", target.pk)
        target.last_probe = target.probe_answer(ok=False, error=_broker_failure(exc), hint=None, at=now.isoformat())
        Target.objects.filter(pk=target.pk).update(last_probe=target.last_probe)
