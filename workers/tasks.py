"""Celery tasks: run a sweep, probe a target. Tasks take ids, never model instances.

`run_sweep(run_id)` drives the engine (benchmarks.sweep.run_sweep) for one queued Run and writes the
outcome back: each level the moment it finishes, progress about once a second (workers.recorder),
and at the end the final status (succeeded, failed with a reason a person can act on, or
cancelled) with the run-wide document and summary. Messages are acknowledged late, so a broker may
deliver one twice: a run that already ended is skipped, a run another worker is still running is
left alone. Time limits come with each message (portal.sweeps.services.start_run).
"""
import logging
import socket
import traceback
from datetime import UTC, datetime

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_ready
from django.conf import settings
from django.db import connections, transaction
from django.utils import timezone

import benchmarks
from benchmarks import telemetry as engine_telemetry
from benchmarks.control import CancelToken
from benchmarks.document import level_load
from benchmarks.errors import SweepError
from benchmarks.sweep import run_sweep as engine_run_sweep
from portal.sweeps.bounds import plan_limits
from portal.sweeps.documents import record_document
from portal.sweeps.models import Level, Run, Target, new_servers
from portal.sweeps.outbound import outbound_policy
from portal.sweeps.samples import writer_for_run
from portal.sweeps.services import sweep_time_limits
from workers import recovery
from workers.recorder import RunRecorder

logger = logging.getLogger(__name__)

# Longest status_reason kept for an unexpected error; the traceback goes to the worker log only.
REASON_MAX = 300


def client_version() -> str:
    return benchmarks.__version__


def _node(task) -> str:
    return getattr(task.request, "hostname", None) or socket.gethostname()


# max_retries=None: a run waiting for its target (another run measuring it) waits as long as that takes.
@shared_task(bind=True, name="workers.tasks.run_sweep", acks_late=True, ignore_result=True, max_retries=None)
def run_sweep(self, run_id: int) -> str:
    """Execute one queued run; returns the status it ended with (or why it was skipped)."""
    run = Run.objects.filter(pk=run_id).first()
    if run is None:
        logger.warning("run %s: not found (deleted?); nothing to do", run_id)
        return "missing"
    if run.is_final:
        logger.info("run %s: already %s; message skipped", run_id, run.status)
        return run.status
    node = _node(self)
    if run.status == Run.Status.RUNNING:
        if not recovery.is_stale(run):
            logger.info("run %s: still running on %s; duplicate message skipped", run_id, run.worker_host)
            return "duplicate"
        recovery.mark_interrupted(run_id, (
            f"The worker {run.worker_host or '(unknown)'} stopped while this run was in progress and the "
            "broker delivered it again. Levels finished before that are kept; start the run again."))
        return Run.Status.INTERRUPTED
    with transaction.atomic():
        # Locks the target row (PostgreSQL; SQLite serialises write transactions) so two workers
        # cannot both find the target free and start measuring it at the same time.
        if run.target_id is not None:
            list(Target.objects.select_for_update().filter(pk=run.target_id).values_list("pk", flat=True))
        busy = target_busy_with(run)
        if busy is None:
            now = timezone.now()
            claimed = Run.objects.filter(pk=run_id, status=Run.Status.QUEUED).update(
                status=Run.Status.RUNNING, started=now, worker_host=node, client_version=client_version(),
                status_reason="", progress={"phase": "starting", "updated_at": now.isoformat(), "recent": []},
            )
        else:
            Run.objects.filter(pk=run_id, status=Run.Status.QUEUED).update(
                status_reason=f"Waiting for run #{busy} to finish: it is measuring the same target, and two "
                              "sweeps at once would distort each other's figures.")
    if busy is not None:
        wait_s = settings.EMBPERF_TARGET_WAIT_S
        logger.info("run %s: target busy with run %s; looking again in %s s", run_id, busy, wait_s)
        raise self.retry(countdown=wait_s)
    if not claimed:  # cancelled (or taken by another worker) between the read and the update
        return Run.objects.filter(pk=run_id).values_list("status", flat=True).first() or "missing"
    # The limits travel with the message (start_run); a message sent some other way gets the same sizing.
    time_limit = (getattr(self.request, "timelimit", None) or (None, None))[1] or planned_soft_limit(run)
    try:
        return execute_sweep(run_id, node=node, soft_time_limit=time_limit)
    except Exception as exc:
        # Last resort (e.g. the engine failed to import): a run must never stay "running" forever.
        logger.error("run %s: the worker failed\n%s", run_id, traceback.format_exc())
        Run.objects.filter(pk=run_id, status=Run.Status.RUNNING).update(
            status=Run.Status.FAILED, status_reason=internal_error_reason(exc, node), finished=timezone.now()
        )
        return Run.Status.FAILED


def target_busy_with(run: Run) -> int | None:
    """The id of another run measuring this run's target right now (stale runs do not count), or None."""
    if run.target_id is None:
        return None
    others = Run.objects.filter(target_id=run.target_id, status=Run.Status.RUNNING).exclude(pk=run.pk)
    for other in others.only("pk", "progress", "started"):
        if not recovery.is_stale(other):
            return other.pk
    return None


def planned_soft_limit(run: Run) -> int:
    return sweep_time_limits(dict(run.plan_config or {}))[0]


def internal_error_reason(exc: BaseException, node: str) -> str:
    """A short reason for an unexpected exception; the traceback goes to the worker log only."""
    detail = f"{type(exc).__name__}: {exc}"
    if len(detail) > REASON_MAX:
        detail = detail[: REASON_MAX - 1] + "…"
    return f"Internal error in the worker ({detail}). The worker log on {node} has the details."


def execute_sweep(run_id: int, *, node: str, soft_time_limit: float | None = None) -> str:
    """Run the engine for a run already marked running, record everything, set the final status."""
    run = Run.objects.select_related("target").get(pk=run_id)
    target_spec = dict(run.target_config)
    # The snapshot never holds the API key; the target's current key is used if the target still exists
    # and the run goes to the servers that key was entered for (the target may have moved since).
    if run.target is not None and run.target.api_key and not new_servers(run.target.base_urls,
                                                                         target_spec.get("base_urls")):
        target_spec["api_key"] = run.target.api_key
    outbound = outbound_policy()
    plan_spec = dict(run.plan_config)
    token = CancelToken()
    telemetry = build_telemetry_for(target_spec, outbound=outbound)
    samples_writer = writer_for_run(run) if plan_spec.get("keep_samples") else None
    recorder = RunRecorder(run_id, token, samples_writer=samples_writer)
    run_info = {
        "id": run.pk, "uuid": str(run.uuid), "label": run.label, "notes": run.notes,
        "server_config": run.server_config, "started_at": run.started.isoformat() if run.started else None,
    }
    document = None
    status, reason = Run.Status.FAILED, ""
    recorder.start()
    try:
        document = engine_run_sweep(
            target_spec, plan_spec, cancel=token, on_progress=recorder.on_progress, on_level=recorder.on_level,
            telemetry=telemetry, samples_sink=recorder.on_samples if samples_writer else None, run_info=run_info,
            outbound=outbound,
            limits=plan_limits(),
        )
        status = Run.Status.CANCELLED if token.cancelled else Run.Status.SUCCEEDED
    except SweepError as exc:
        reason = str(exc) or type(exc).__name__
        document = getattr(exc, "document", None)
        if token.cancelled:
            status, reason = Run.Status.CANCELLED, ""
    except SoftTimeLimitExceeded:
        token.cancel()
        limit = f"{soft_time_limit:.0f} s" if soft_time_limit else "its time limit"
        reason = (f"Stopped after {limit}, the limit sized from the plan's levels, warm-up, duration and timeout. "
                  "The server probably stalled or answered far slower than the timeout suggests; "
                  "check it, or raise the plan's timeout.")
    except Exception as exc:
        logger.error("run %s: the sweep failed unexpectedly\n%s", run_id, traceback.format_exc())
        reason = internal_error_reason(exc, node)
    finally:
        final_phase = {"phase": "done", "updated_at": timezone.now().isoformat()}
        write_errors = recorder.close(final_progress=final_phase)
        if telemetry is not None:
            # The engine closes telemetry itself (closing twice is safe); this covers a failure before it could.
            try:
                telemetry.close()
            except Exception:
                logger.debug("telemetry close after failure", exc_info=True)

    if write_errors and status == Run.Status.SUCCEEDED:
        status = Run.Status.FAILED
        reason = "Could not save all results to the database: " + "; ".join(write_errors[:3])
    if status == Run.Status.CANCELLED:
        reason = cancel_reason(run_id, document)
    elif status == Run.Status.SUCCEEDED:
        reason = stopped_levels_reason(document)
    finish(run_id, status, reason, document, recorder.progress_snapshot())
    logger.info("run %s: %s %s", run_id, status, reason)
    return status


def finish(run_id: int, status: str, reason: str, document: dict | None, progress: dict) -> None:
    """Store the final status, the run-wide document and the summary; store any level not yet stored."""
    record_document(Run(pk=run_id), document, status=status, status_reason=reason, progress=progress)


def cancel_reason(run_id: int, document: dict | None) -> str:
    levels = (document or {}).get("levels")
    if levels is None:  # no document (the engine raised): count what the recorder stored
        levels = [level.data for level in Level.objects.filter(run_id=run_id).only("data")]
    done = sum(1 for level in levels if level.get("status", "completed") == "completed")
    partial = len(levels) - done
    reason = ("Cancelled on request; 1 level had finished and is kept" if done == 1
              else f"Cancelled on request; {done} levels had finished and are kept")
    if partial:
        reason += "; the level in progress is kept too, marked cancelled (its figures cover a shorter window)"
    return reason + "."


def stopped_levels_reason(document: dict | None) -> str:
    """A succeeded run whose abort policy stopped some levels says which, so nobody misreads them."""
    notes = []
    for level in (document or {}).get("levels") or []:
        if level.get("status") == "aborted":
            why = level.get("abort_reason") or "error-abort policy"
            notes.append(f"level {level_load(level)} stopped early: {why}")
    return "; ".join(notes)


def build_telemetry_for(target_spec: dict, outbound=None):
    """The engine's Telemetry for the target's GPU source and metrics URLs, or None when it has neither.
    Its scrapes pass `outbound` (the installation's outbound policy when not given)."""
    source = target_spec.get("gpu_source") or "none"
    # No indices given means every GPU of the worker's host ([] to build_telemetry); None means no NVML.
    gpus = list(target_spec.get("gpus") or []) if source == "nvml" else None
    # Metrics URLs are scraped whatever the GPU source: they may be the server's own /metrics.
    metrics_urls = list(target_spec.get("metrics_urls") or [])
    if source not in ("none", "nvml", "prometheus"):
        logger.warning("unknown gpu_source %r; the run samples no GPU", source)
    if gpus is None and not metrics_urls:
        return None
    return engine_telemetry.build_telemetry(gpus=gpus, metrics_urls=metrics_urls,
                                            outbound=outbound if outbound is not None else outbound_policy())


@shared_task(bind=True, name="workers.tasks.probe_target", acks_late=True, ignore_result=True)
def probe_target(self, target_id: int) -> dict | None:
    """Send one request to the target through the engine's probe; store the answer on Target.last_probe."""
    from benchmarks.probe import probe

    target = Target.objects.filter(pk=target_id).first()
    if target is None:
        logger.warning("target %s: not found (deleted?); probe skipped", target_id)
        return None
    node = _node(self)
    try:
        result = probe(target.to_spec(), outbound=outbound_policy())
    except Exception as exc:
        logger.error("target %s: probe failed unexpectedly\n%s", target_id, traceback.format_exc())
        result = {"ok": False, "served_model": None, "vector_length": None, "prompt_tokens": None,
                  "latency_ms": None, "status": None,
                  "error": f"The probe failed inside the worker ({type(exc).__name__}: {exc})"[:REASON_MAX],
                  "hint": f"The worker log on {node} has the details."}
    result = {**result, "at": datetime.now(UTC).isoformat(), "worker_host": node}
    Target.objects.filter(pk=target_id).update(last_probe=result)
    return result


@worker_ready.connect
def interrupt_runs_left_by_this_node(sender=None, **kwargs) -> None:
    """On worker start: runs still marked running on this node died with its previous process."""
    node = getattr(sender, "hostname", None)
    if not node:
        return
    try:
        ids = recovery.interrupt_runs_of_node(node)
        if ids:
            logger.warning("marked runs %s interrupted: %s had been running them before it restarted", ids, node)
    except Exception:
        logger.exception("could not check for runs interrupted by a restart of %s", node)
    finally:
        # This runs in the main worker process; pool processes must not share its connection.
        connections.close_all()
