"""Queued work is reconciled: the database is the truth about runs, a broker message only a hint.

A broker without persistence that restarts (Redis without `appendonly`), a removed file-system broker
folder, or a worker's connection loss that drops the countdown of a run waiting for its target, all
lose a queued run's message while the run stays `queued`. A run's message is taken for lost when the
run has been queued (or, waiting for its target, the target has been free) for EMBPERF_REQUEUE_AFTER_S
while a worker that consumes its queue had a free pool process all that time and does not hold the
run's message (workers report both in WorkerPresence). Such a run is sent again once, with a note; lost
a second time it is failed with a reason that says so, and can be queued again by hand (`enqueue/`).
Sending again is safe: the task claims a queued run at most once and skips any other delivery.
"""
import logging
from datetime import timedelta

from django.conf import settings
from django.db.models import Max
from django.utils import timezone

from portal.sweeps.models import Run, WorkerPresence, stale_after

logger = logging.getLogger(__name__)


def lost_message_reason(run: Run) -> str | None:
    """Why this queued run's broker message is taken for lost, or None while it may still be on its way."""
    if run.status != Run.Status.QUEUED:
        return None
    now = timezone.now()
    bound = timedelta(seconds=settings.EMBPERF_REQUEUE_AFTER_S)
    since = max(at for at in (run.created, run.resent_at) if at is not None)
    if run.target_id is not None:
        others = Run.objects.filter(target_id=run.target_id).exclude(pk=run.pk)
        if others.running().exists():
            return None  # waiting for its target, as it should
        # A run that waited for its target is taken up within EMBPERF_TARGET_WAIT_S of the target's last run ending.
        freed = others.filter(finished__isnull=False).aggregate(at=Max("finished"))["at"]
        if freed is not None and freed > since:
            since = freed
    if now - since < bound:
        return None
    listening = [row for row in WorkerPresence.objects.filter(seen__gte=now - timedelta(seconds=stale_after()))
                 if run.queue in (row.queues or [])]
    if any(run.pk in (row.holding or []) for row in listening):
        return None
    free = [row for row in listening if row.free_since is not None and row.free_since <= now - bound]
    if not free:
        return None  # no worker listens, or all are busy: the message may be waiting its turn
    waited = (now - since).total_seconds()
    return (f"it stayed queued for {waited:.0f} s while the worker {free[0].node}, which consumes queue "
            f"{run.queue}, had a free process and never received it")


def resend_lost(run: Run, *, on_request: bool = False) -> str | None:
    """Send a queued run whose message was lost again (the first time, or whenever someone asks:
    `on_request`), or fail it (lost a second time). Returns what was done, as the run's new reason, or
    None when its message is not taken for lost."""
    from portal.sweeps.services import enqueue_run, run_start_errors

    why = lost_message_reason(run)
    if why is None:
        return None
    now = timezone.now()
    stamp = now.strftime("%H:%M:%S UTC")
    # Sending again is sending work: the gate every start passes (a queue grant may have been withdrawn).
    errors = run_start_errors(run.target, run.plan, spec=dict(run.plan_config or {}))
    if errors:
        refusal = " ".join(message for messages in errors.values() for message in messages)
        reason = f"The broker lost this run's message ({why}); it was not sent again: {refusal}"
        if Run.objects.filter(pk=run.pk, status=Run.Status.QUEUED).update(
                status=Run.Status.FAILED, status_reason=reason, finished=now):
            logger.warning("run %s: %s", run.pk, reason)
            return reason
        return None
    if run.resent_at is None or on_request:
        reason = f"The broker lost this run's message ({why}); it was sent again at {stamp}."
        if not Run.objects.filter(pk=run.pk, status=Run.Status.QUEUED, resent_at=run.resent_at).update(
                resent_at=now, status_reason=reason):
            return None  # another worker's reconciler, or a worker, got there first
        logger.warning("run %s: %s", run.pk, reason)
        run.refresh_from_db()
        refused = enqueue_run(run)
        return refused or reason
    reason = (f"The broker lost this run's message twice: it was sent again at "
              f"{run.resent_at.strftime('%H:%M:%S UTC')} and then {why}. It never started; queue it again once "
              "the broker keeps its messages (a Redis without persistence loses them when it restarts: "
              "appendonly yes).")
    if not Run.objects.filter(pk=run.pk, status=Run.Status.QUEUED, resent_at=run.resent_at).update(
            status=Run.Status.FAILED, status_reason=reason, finished=now):
        return None
    logger.error("run %s: %s", run.pk, reason)
    run.refresh_from_db()
    return reason


def reconcile_queued(queues: list[str]) -> list[int]:
    """Resend (or fail) the queued runs on these queues whose messages were lost; returns their ids."""
    done = []
    now = timezone.now()
    free_since = now - timedelta(seconds=settings.EMBPERF_REQUEUE_AFTER_S)
    if not WorkerPresence.objects.filter(seen__gte=now - timedelta(seconds=stale_after()),
                                         free_since__lte=free_since).exists():
        return done  # no worker has been free for a whole bound: no message can be taken for lost
    for run in Run.objects.filter(status=Run.Status.QUEUED).order_by("created"):
        if run.queue in queues and resend_lost(run) is not None:
            done.append(run.pk)
    return done
