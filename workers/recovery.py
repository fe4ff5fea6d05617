"""The worker's own upkeep: dead workers' runs, its presence, and a bounded shutdown.

- Dead workers are found by their silence, not their name. Every worker's main process runs a
  timer thread that, every EMBPERF_SWEEP_INTERVAL_S, marks running runs whose heartbeat is older
  than EMBPERF_STALE_AFTER_S `interrupted` (Run.objects.interrupt_stale, whatever worker ran them),
  reports which queues this worker consumes (WorkerPresence, read by the run page for "no worker
  is listening on queue X", and whether it has a free pool process and which runs' messages it
  holds), writes back results a database outage left in files (workers.spill), and sends again
  queued runs whose broker messages were lost (portal.sweeps.reconcile). Silence is judged by
  one rule (portal.sweeps.models.silent_before), which waits a stale bound after a database outage.
  With the defaults a dead worker's run ends within 40 s. No cron and no beat process are needed;
  `manage.py embperf_interrupt_stale` does the same sweep by hand.
- When a worker starts, runs still recorded as running on its own node name are interrupted at once.
- Shutdown: SIGTERM to a pool process stops its sweep at once (workers.tasks.Shutdown); SIGTERM
  (or Ctrl-C) to the main process is passed on to the pool processes, and a watchdog ends the main
  process if it has not exited EMBPERF_SHUTDOWN_S later, so a worker never hangs on shutdown.
"""
import logging
import os
import signal
import threading
import time

import psutil
from celery.signals import worker_process_init, worker_ready, worker_shutting_down
from celery.worker import state as worker_state
from django.conf import settings
from django.db import connections
from django.utils import timezone

from portal.sweeps.models import Run, WorkerPresence, database_back_here
from portal.sweeps.reconcile import reconcile_queued
from portal.taskqueue import RUN_SWEEP
from workers import spill
from workers.database import DatabaseWrites

logger = logging.getLogger(__name__)


class Upkeep(threading.Thread):
    """The timer thread of a worker's main process (see the module docstring)."""

    def __init__(self, node: str, queues: list[str], *, interval_s: float | None = None, concurrency: int = 1):
        super().__init__(name="embperf-upkeep", daemon=True)
        self.node = node
        self.queues = queues
        self.concurrency = max(1, int(concurrency or 1))
        self._free_since = timezone.now()
        self.interval_s = float(settings.EMBPERF_SWEEP_INTERVAL_S if interval_s is None else interval_s)
        self.stopped = threading.Event()
        # A database outage also stopped every live worker's heartbeat: the rule for "silent"
        # (portal.sweeps.models.silent_before) waits a stale bound after this noticed it ended.
        self.db = DatabaseWrites(f"worker {node} upkeep", bound_s=float("inf"))

    def run(self) -> None:
        try:
            while not self.stopped.is_set():
                self.tick()
                self.stopped.wait(max(self.interval_s, self.db.seconds_to_next_try()))
        finally:
            connections.close_all()

    def report(self) -> None:
        """This worker's presence: its queues, the last database outage it saw end, whether it has a
        free pool process (and since when), and the runs whose messages it holds."""
        held = (*worker_state.active_requests, *worker_state.reserved_requests,
                *getattr(worker_state, "scheduled_requests", ()))  # scheduled: a run waiting for its target
        holding = {request.args[0] for request in held if request.name == RUN_SWEEP and request.args}
        if len(worker_state.active_requests) >= self.concurrency:
            self._free_since = None
        elif self._free_since is None:
            self._free_since = timezone.now()
        WorkerPresence.report(self.node, self.queues, database_back_at=database_back_here(),
                              free_since=self._free_since, holding=sorted(holding))

    def tick(self) -> None:
        ok, _ = self.db.attempt(self.report)
        if not ok:
            return
        try:
            ok, ids = self.db.attempt(lambda: Run.objects.interrupt_stale())
            if ok and ids:
                logger.warning("marked runs %s interrupted: their workers stopped reporting", ids)
            self.db.attempt(spill.write_pending)
            ok, ids = self.db.attempt(lambda: reconcile_queued(self.queues))
            if ok and ids:
                logger.warning("runs %s: their broker messages were lost; sent again (or failed)", ids)
        except Exception:  # a bug must not end the timer: the next tick tries again
            logger.exception("worker upkeep failed")


_upkeep: Upkeep | None = None


@worker_ready.connect
def on_worker_ready(sender=None, **kwargs) -> None:
    """Interrupt this node's leftover runs, then start the upkeep timer."""
    global _upkeep
    node = getattr(sender, "hostname", None)
    if not node:
        return
    try:
        ids = Run.objects.interrupt_of_node(node)
        if ids:
            logger.warning("marked runs %s interrupted: %s had been running them before it restarted", ids, node)
    except Exception:
        logger.exception("could not check for runs interrupted by a restart of %s", node)
    finally:
        # This runs in the main worker process; pool processes must not share its connection.
        connections.close_all()
    queues = sorted(sender.app.amqp.queues.consume_from or {})
    concurrency = getattr(getattr(sender, "controller", None), "concurrency", None) or 1
    _upkeep = Upkeep(node, queues, concurrency=concurrency)
    _upkeep.start()


@worker_process_init.connect
def on_pool_process_start(**kwargs) -> None:
    """An idle pool process ignores SIGTERM (billiard then leaves it so): the main process stops it
    through the pool. Killed by a SIGTERM to the group instead, it would leave billiard waiting for
    it and the main process hanging in its shutdown. While a sweep runs, workers.tasks.Shutdown
    handles SIGTERM by stopping the sweep."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


@worker_shutting_down.connect
def on_worker_shutting_down(sig=None, how=None, exitcode=None, **kwargs) -> None:
    """Pass the stop on to the pool processes, and make sure this process exits within the bound."""
    if _upkeep is not None:
        _upkeep.stopped.set()
    if how == "Warm":
        for child in psutil.Process().children():
            try:
                child.send_signal(signal.SIGTERM)
            except psutil.Error:
                pass
    threading.Thread(target=_exit_when_overdue, args=(exitcode,), name="embperf-shutdown-watchdog",
                     daemon=True).start()


def _exit_when_overdue(exitcode) -> None:
    time.sleep(settings.EMBPERF_SHUTDOWN_S)
    logger.error("the worker did not stop within %.0f s (EMBPERF_SHUTDOWN_S); exiting now",
                 settings.EMBPERF_SHUTDOWN_S)
    for handler in logging.getLogger().handlers:
        handler.flush()
    for child in psutil.Process().children(recursive=True):
        try:
            child.kill()
        except psutil.Error:
            pass
    os._exit(exitcode or 1)
