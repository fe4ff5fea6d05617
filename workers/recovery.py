"""Runs left in "running" by a worker that died are marked interrupted.

Two ways catch them:
- when a worker starts (Celery's worker_ready signal, connected in workers.tasks), every run that
  still says it runs on this same worker node cannot be running any more;
- `manage.py embperf_interrupt_stale` marks running runs whose heartbeat (Run.progress
  "updated_at", refreshed by the worker at least every 10 s) is older than a threshold, for a worker
  that never comes back. Run it from cron or at deploy time.
"""
import logging
from datetime import datetime, timedelta

from django.utils import timezone

from portal.sweeps.models import Run

logger = logging.getLogger(__name__)

STALE_AFTER_S = 120


def heartbeat(run: Run) -> datetime | None:
    """When the worker last wrote this run's progress, or when it started it."""
    raw = (run.progress or {}).get("updated_at")
    if raw:
        try:
            return datetime.fromisoformat(raw)
        except ValueError:
            pass
    return run.started


def is_stale(run: Run, *, stale_after_s: float = STALE_AFTER_S) -> bool:
    beat = heartbeat(run)
    return beat is None or timezone.now() - beat > timedelta(seconds=stale_after_s)


def mark_interrupted(run_id: int, reason: str) -> bool:
    """Interrupt a run that is still marked running; False when it already ended meanwhile."""
    done = Run.objects.filter(pk=run_id, status=Run.Status.RUNNING).update(
        status=Run.Status.INTERRUPTED, status_reason=reason, finished=timezone.now()
    )
    if done:
        logger.warning("run %s interrupted: %s", run_id, reason)
    return bool(done)


def interrupt_runs_of_node(node: str) -> list[int]:
    """A worker node just started: whatever it was running before is gone."""
    interrupted = []
    for run_id in Run.objects.filter(status=Run.Status.RUNNING, worker_host=node).values_list("pk", flat=True):
        reason = (f"The worker {node} stopped while this run was in progress (it was restarted or killed). "
                  "Levels finished before that are kept; start the run again for a complete result.")
        if mark_interrupted(run_id, reason):
            interrupted.append(run_id)
    return interrupted


def interrupt_stale_runs(*, stale_after_s: float = STALE_AFTER_S) -> list[int]:
    """Interrupt running runs whose worker has not written for `stale_after_s` seconds."""
    interrupted = []
    for run in Run.objects.filter(status=Run.Status.RUNNING).only("pk", "progress", "started", "worker_host"):
        if is_stale(run, stale_after_s=stale_after_s):
            reason = (f"The worker {run.worker_host or '(unknown)'} stopped reporting for over "
                      f"{int(stale_after_s)} s; it probably died. Levels finished before that are kept; "
                      "start the run again for a complete result.")
            if mark_interrupted(run.pk, reason):
                interrupted.append(run.pk)
    return interrupted
