"""Celery tasks: run a sweep, probe a target. Tasks take ids, never model instances.

`run_sweep(run_id)` drives the engine (benchmarks.sweep.run_sweep) for one queued Run and writes the
outcome back: each level the moment it finishes, progress about once a second (workers.recorder),
and at the end the final status (succeeded, failed with a reason a person can act on, or
cancelled, interrupted) with the run-wide document and summary. Messages are acknowledged late, so a
broker may deliver one twice: a run that already ended is skipped, a run another worker is still
running (its heartbeat is live) is left alone, and a run whose worker went silent is marked
interrupted. Time limits come with each message (portal.sweeps.services.start_run).

Every way the task can stop writes a final status: the engine's own end, a cancel, the soft time
limit, an exception, SystemExit or KeyboardInterrupt, and SIGTERM (`Shutdown`: while a sweep runs,
SIGTERM stops it at once and the run ends `interrupted`, its finished levels kept). When the pool
process itself dies, the worker's main process ends the run: the hard time limit through
`SweepTask.on_failure`, SIGKILL, out of memory or a segfault through Celery's `task_failure` signal
(`on_task_failure`: Celery calls no task hook for a lost process). A whole worker that dies or a
lost host is found by the run's silent heartbeat (Run.objects.interrupt_stale, run by every
worker's timer, workers.recovery).
"""
import logging
import signal
import socket
import threading
import time
import traceback
from datetime import UTC, datetime

from billiard.exceptions import WorkerLostError
from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celery.signals import task_failure
from django.conf import settings
from django.db import connections, transaction
from django.utils import timezone

import benchmarks
from benchmarks import telemetry as engine_telemetry
from benchmarks.control import CancelToken
from benchmarks.document import level_load
from benchmarks.errors import SweepError
from benchmarks.sweep import run_sweep as engine_run_sweep
from portal.storage import is_storage_full
from portal.sweeps.bounds import plan_limits
from portal.sweeps.documents import record_document
from portal.sweeps.models import Level, Run, Target, new_servers
from portal.sweeps.outbound import outbound_policy
from portal.sweeps.samples import writer_for_run
from portal.sweeps.services import run_time_limits
from portal.sweeps.tokenizers import tokenizer_policy
from workers import spill
from workers.database import DatabaseUnavailable, DatabaseWrites
from workers.recorder import RunRecorder

logger = logging.getLogger(__name__)

# Longest status_reason kept for an unexpected error; the traceback goes to the worker log only.
REASON_MAX = 300
# How long the final write is tried when the database already stayed away past EMBPERF_DB_RETRY_S.
FINAL_TRY_AFTER_LOSS_S = 5.0
# A sweep whose database is away when it starts waits this long, then goes back to the broker for later.
START_DB_WAIT_S = 30.0
START_DB_RETRY_S = 30
# Results neither the database nor a file took (a full disk) are tried again this often, growing to the max.
KEEP_FIRST_PAUSE_S = 1.0
KEEP_MAX_PAUSE_S = 5.0


def client_version() -> str:
    return benchmarks.__version__


def _node(task) -> str:
    return getattr(task.request, "hostname", None) or socket.gethostname()


class Shutdown:
    """The sweep running in this process, so a SIGTERM can stop it (see `on_sigterm`)."""

    active: "Shutdown | None" = None

    def __init__(self, token: CancelToken):
        self.token = token
        self.requested = False
        self.previous_handler = None

    def arm(self) -> "Shutdown":
        # Only the main thread may set signal handlers (a task run eagerly in a test is not in one).
        # Celery's pool process handles SIGTERM by raising SystemExit wherever the sweep happens to
        # be; for the sweep's duration this handler stops it cleanly instead.
        if threading.current_thread() is threading.main_thread():
            Shutdown.active = self
            self.previous_handler = signal.signal(signal.SIGTERM, on_sigterm)
        return self

    def disarm(self) -> None:
        if Shutdown.active is self:
            Shutdown.active = None
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGTERM, self.previous_handler or signal.SIG_DFL)


class WorkerStopping(SystemExit):
    """Raised in a pool process whose sweep did not stop within EMBPERF_SHUTDOWN_S of a SIGTERM."""


def on_sigterm(signum, frame) -> None:
    """SIGTERM while a sweep runs: it stops at once and ends `interrupted`; if it has not ended
    within EMBPERF_SHUTDOWN_S, SIGALRM raises WorkerStopping, which still writes the status."""
    current = Shutdown.active
    if current is None or current.requested:
        return
    current.requested = True
    current.token.cancel()
    signal.signal(signal.SIGALRM, _on_shutdown_overdue)
    signal.setitimer(signal.ITIMER_REAL, max(1.0, settings.EMBPERF_SHUTDOWN_S - 3))


def _on_shutdown_overdue(signum, frame) -> None:
    raise WorkerStopping(f"the sweep did not stop within {settings.EMBPERF_SHUTDOWN_S:.0f} s of SIGTERM")


class SweepTask(Task):
    """run_sweep's task class: the worker's main process ends the run when the pool process died."""

    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
        # Celery calls this in the main process when the hard time limit killed the pool process.
        if isinstance(exc, TimeLimitExceeded) and args:
            end_run_of_lost_process(args[0], exc, _node(self))


@task_failure.connect
def on_task_failure(sender=None, exception=None, args=None, **kwargs) -> None:
    """A pool process that died (SIGKILL, the out-of-memory killer, a segfault) reaches the worker's main
    process as WorkerLostError: Celery sends this signal there, but calls no task hook."""
    if getattr(sender, "name", None) == "workers.tasks.run_sweep" and isinstance(exception, WorkerLostError) and args:
        end_run_of_lost_process(args[0], exception, _node(sender))


def end_run_of_lost_process(run_id: int, exc: BaseException, node: str) -> None:
    """In the worker's main process: end the run whose pool process is gone (nothing in it could)."""
    try:
        if isinstance(exc, TimeLimitExceeded):
            status, reason = Run.Status.FAILED, (
                f"Killed after the hard time limit ({exc}), sized from the plan; the sweep did not stop at the "
                "soft limit before it. The server probably stalled; check it, or raise the plan's timeout.")
        else:
            status, reason = Run.Status.INTERRUPTED, (
                f"The worker process measuring this run on {node} died ({exc}). Levels finished before that "
                "are kept; resume the run to measure the rest.")
        # Only the run this node measures: the lost process may have held a duplicate of another's run.
        ended = DatabaseWrites(f"run {run_id}", bound_s=10).call(
            lambda: Run.objects.filter(pk=run_id, worker_host=node).end_as(status, reason))
        if ended:
            logger.warning("run %s: %s (%s)", run_id, status, exc)
    except DatabaseUnavailable:
        logger.error("run %s: could not record that its worker process died; the stale-run sweeper will", run_id)
    finally:
        # The main process forks new pool processes: they must not inherit its connection.
        connections.close_all()


# max_retries=None: a run waiting for its target (another run measuring it) waits as long as that takes.
@shared_task(bind=True, base=SweepTask, name="workers.tasks.run_sweep", acks_late=True, ignore_result=True,
             max_retries=None)
def run_sweep(self, run_id: int) -> str:
    """Execute one queued run; returns the status it ended with (or why it was skipped)."""
    try:
        run = DatabaseWrites(f"run {run_id}").call(lambda: Run.objects.filter(pk=run_id).first(),
                                                   bound_s=START_DB_WAIT_S)
    except DatabaseUnavailable as exc:
        # The message must not be lost with the database: it comes back later, and the run starts then.
        logger.warning("run %s: %s; the run is taken up again in %s s", run_id, exc, START_DB_RETRY_S)
        raise self.retry(countdown=START_DB_RETRY_S) from None
    if run is None:
        logger.warning("run %s: not found (deleted?); nothing to do", run_id)
        return "missing"
    if run.is_final:
        logger.info("run %s: already %s; message skipped", run_id, run.status)
        return run.status
    node = _node(self)
    if run.status == Run.Status.RUNNING:
        if not run.worker_is_silent():
            logger.info("run %s: still running on %s; duplicate message skipped", run_id, run.worker_host)
            return "duplicate"
        Run.objects.filter(pk=run_id).end_as(Run.Status.INTERRUPTED, (
            f"The worker {run.worker_host or '(unknown)'} stopped while this run was in progress and the "
            "broker delivered it again. Levels finished before that are kept; resume the run to measure the rest."))
        logger.warning("run %s: its worker %s went silent; marked interrupted", run_id, run.worker_host)
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
                status=Run.Status.RUNNING, started=now, heartbeat=now, worker_host=node,
                client_version=client_version(),
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
    except BaseException as exc:
        # Last resort (e.g. the engine failed to import): a run must never stay "running" forever.
        logger.error("run %s: the worker failed\n%s", run_id, traceback.format_exc())
        why = internal_error_reason(exc, node)
        try:
            DatabaseWrites(f"run {run_id}").call(lambda: Run.objects.filter(
                pk=run_id, status=Run.Status.RUNNING).update(
                status=Run.Status.FAILED, status_reason=why, finished=timezone.now()))
        except DatabaseUnavailable:
            logger.error("run %s: could not record the failure; the stale-run sweeper will end it", run_id)
        if not isinstance(exc, Exception):
            raise
        return Run.Status.FAILED


def target_busy_with(run: Run) -> int | None:
    """The id of another run measuring this run's target right now, or None.

    A target is free only once its run has ended: a run whose worker went silent is first marked
    interrupted (so its worker, should it still be alive, stops at its next heartbeat)."""
    if run.target_id is None:
        return None
    others = Run.objects.filter(target_id=run.target_id).exclude(pk=run.pk)
    ended = others.interrupt_stale()
    if ended:
        logger.warning("marked runs %s interrupted: their workers stopped reporting (same target as run %s)",
                       ended, run.pk)
    return others.running().values_list("pk", flat=True).first()


def planned_soft_limit(run: Run) -> int:
    return run_time_limits(run)[0]


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
    stopping: BaseException | None = None
    shutdown = Shutdown(token).arm()
    recorder.start()
    try:
        document = engine_run_sweep(
            target_spec, plan_spec, cancel=token, on_progress=recorder.on_progress, on_level=recorder.on_level,
            telemetry=telemetry, samples_sink=recorder.on_samples if samples_writer else None, run_info=run_info,
            outbound=outbound,
            limits=plan_limits(), tokenizers=tokenizer_policy(),
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
    except BaseException as exc:  # SystemExit, KeyboardInterrupt: record the ending, then let the process go
        token.cancel()
        stopping = exc
        status = Run.Status.INTERRUPTED
        reason = (f"The worker {node} was stopped ({type(exc).__name__}) while this run was in progress. "
                  "Levels finished before that are kept; resume the run to measure the rest.")
    finally:
        final_phase = {"phase": "done", "updated_at": timezone.now().isoformat()}
        recorder.close(final_progress=final_phase)
        if telemetry is not None:
            # The engine closes telemetry itself (closing twice is safe); this covers a failure before it could.
            try:
                telemetry.close()
            except Exception:
                logger.debug("telemetry close after failure", exc_info=True)
    try:
        return record_end(run_id, node, status, reason, document, recorder, shutdown, stopping)
    finally:
        shutdown.disarm()


def record_end(run_id: int, node: str, status: str, reason: str, document: dict | None, recorder: RunRecorder,
               shutdown: Shutdown, stopping: BaseException | None) -> str:
    """Settle the final status and reason, and write them (or save the levels to a file)."""
    if shutdown.requested and stopping is None:
        status = Run.Status.INTERRUPTED
        reason = (f"The worker {node} was asked to stop (SIGTERM) while this run was in progress; the sweep "
                  "stopped at once. Levels finished before that are kept (a level cut short is marked "
                  "cancelled); resume the run to measure the rest.")
    elif recorder.errors and status == Run.Status.SUCCEEDED:
        status = Run.Status.FAILED
        reason = "Could not save all results to the database: " + "; ".join(recorder.errors[:3])
    elif status == Run.Status.CANCELLED and recorder.database_lost:
        status = Run.Status.FAILED
    elif status == Run.Status.CANCELLED:
        reason = cancel_reason(run_id, document)
    elif status == Run.Status.SUCCEEDED:
        reason = stopped_levels_reason(document)
    progress = recorder.progress_snapshot()
    db = DatabaseWrites(f"run {run_id}")
    if recorder.database_lost:
        cause = loss_cause(recorder.db.last_error, f"for over {recorder.db.bound_s:.0f} s while this run was measured")
        status = Run.Status.FAILED
        keep_results(run_id, node, cause=cause + ", so the sweep was stopped", status=status, document=document,
                     levels=list((document or {}).get("levels") or []) or recorder.unsaved_levels(),
                     progress=progress, db=db)
    else:
        try:
            db.call(lambda: finish(run_id, status, reason, document, progress))
        except DatabaseUnavailable as exc:
            logger.error("run %s: could not record its end: %s", run_id, exc)
            status = Run.Status.FAILED
            keep_results(run_id, node, cause=loss_cause(db.last_error, "when this run ended"), status=status,
                         document=document,
                         levels=list((document or {}).get("levels") or []) or recorder.unsaved_levels(),
                         progress=progress, db=db)
    if recorder.ended_elsewhere:
        logger.info("run %s: ended elsewhere as %s; its measured levels are kept", run_id, recorder.ended_elsewhere)
    else:
        logger.info("run %s: %s %s", run_id, status, reason)
    if stopping is not None:
        raise stopping
    return recorder.ended_elsewhere or status


def loss_cause(error: str, when: str) -> str:
    """What kept the results from the database, in a sentence: a full disk is named as such."""
    if is_storage_full(error):
        return f"The disk holding the database was full {when} ({error}); nothing more could be stored"
    return f"The database was unreachable {when} ({error})"


def keep_results(run_id: int, node: str, *, cause: str, status: str, document: dict | None, levels: list[dict],
                 progress: dict, db: DatabaseWrites) -> None:
    """The database did not take the run's end: save everything to a file under unsaved/ (the worker's
    timer writes it back, workers.spill), then give the database one short try. When the file cannot be
    written either (the same disk is full), keep it all in memory and try the file and the database
    again, with a growing pause, until one takes it: what was measured is never dropped."""
    path = spill.path_for(run_id)
    pause, told = KEEP_FIRST_PAUSE_S, False
    while True:
        reason = (f"{cause}. Its {len(levels)} measured level(s) were saved to {path} on the worker {node}; "
                  "the worker writes them here once the database answers again.")
        try:
            spill.save(path, run_id, status=status, reason=reason, levels=levels, document=document, cause=cause,
                       progress=progress)
        except OSError as exc:
            if not told:
                logger.error("run %s: could not save its results to %s either (%s); keeping them in memory and "
                             "trying again", run_id, path, exc)
                told = True
        else:
            try:
                db.call(lambda why=reason: finish(run_id, status, why, document, progress),
                        bound_s=FINAL_TRY_AFTER_LOSS_S)
            except DatabaseUnavailable:
                logger.error("run %s: its results wait in %s until the database answers", run_id, path)
            return
        time.sleep(pause)
        pause = min(pause * 2, KEEP_MAX_PAUSE_S)
        held = (f"{cause}. Its {len(levels)} measured level(s) could not be saved to a file on the worker {node} "
                "either (its data folder was full too), so they were kept in memory and written here once "
                "there was space again.")
        ok, _ = db.attempt(lambda why=held: finish(run_id, status, why, document, progress))
        if ok:
            logger.warning("run %s: its results kept in memory are now in the database", run_id)
            return


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
        result = probe(target.to_spec(), outbound=outbound_policy(),
                       max_vector_length=plan_limits().max_vector_length)
    except Exception as exc:
        logger.error("target %s: probe failed unexpectedly\n%s", target_id, traceback.format_exc())
        result = {"ok": False, "served_model": None, "vector_length": None, "prompt_tokens": None,
                  "latency_ms": None, "status": None,
                  "error": f"The probe failed inside the worker ({type(exc).__name__}: {exc})"[:REASON_MAX],
                  "hint": f"The worker log on {node} has the details."}
    result = target.probe_answer(**result, at=datetime.now(UTC).isoformat(), worker_host=node)
    with transaction.atomic():
        # The target may have been pointed elsewhere while the probe ran: an answer about the old servers
        # is not stored (the edit cleared the last one; the page's test of the new URLs is asked anew).
        current = Target.objects.select_for_update().filter(pk=target_id).first()
        if current is not None and list(current.base_urls or []) == result["base_urls"]:
            Target.objects.filter(pk=target_id).update(last_probe=result)
    return result
