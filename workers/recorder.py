"""Carries a running sweep's callbacks to the database from a thread of its own.

The engine may call `on_progress` / `on_level` from inside its event loop, where Django's ORM
refuses to run (SynchronousOnlyOperation), and a slow database write must never stall the
measurement. So the callbacks only put work on a queue; one recorder thread writes levels the
moment they arrive, writes progress at most about once a second and the heartbeat (Run.heartbeat)
at least every EMBPERF_HEARTBEAT_S, and polls `Run.cancel_requested` every half second to set the
engine's CancelToken.

When the database connection drops, the thread reconnects and retries with a growing pause
(workers.database) while the sweep goes on: finished levels and raw samples wait in memory and are
written, oldest first, when the database answers again; cancel and heartbeat resume then too.
Past EMBPERF_DB_RETRY_S without the database, the recorder stops the sweep (`database_lost`) and the
task saves what it holds to a file (workers.spill). When the run turns out to have been ended by
someone else (the stale-run sweeper, a cancel that found the worker silent), the sweep stops too
(`ended_elsewhere`): its target may already be measured by the next run.

Run.progress as written here (read by the run page and the API):
    the engine's latest progress dict (built in benchmarks/sweep.py, `_progress`), plus
    "updated_at": ISO time of the write (the same instant as Run.heartbeat),
    "recent": up to 300 per-second points, oldest first, each the engine's "second" dict
              ({"t", "completed", "errors", "p50_ms", "p99_ms", "in_flight"}) plus
              "level_index", "load" and "run_t" (seconds since the run started).
"""
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable

from django.conf import settings
from django.db import connections
from django.utils import timezone

from portal.sweeps.documents import record_level
from portal.sweeps.models import Run
from workers.database import DatabaseWrites

logger = logging.getLogger(__name__)

RECENT_POINTS = 300


class RunRecorder:
    """Writes one run's progress and levels; sets `token` when a cancel is requested."""

    def __init__(self, run_id: int, token, *, progress_interval_s: float = 1.0, cancel_poll_s: float = 0.5,
                 heartbeat_s: float | None = None, db_retry_s: float | None = None,
                 samples_writer: Callable[[int, list[tuple]], None] | None = None):
        self.run_id = run_id
        self.token = token
        self.progress_interval_s = progress_interval_s
        self.cancel_poll_s = cancel_poll_s
        self.heartbeat_s = float(settings.EMBPERF_HEARTBEAT_S if heartbeat_s is None else heartbeat_s)
        self.samples_writer = samples_writer
        self.errors: list[str] = []
        self.db = DatabaseWrites(f"run {run_id}", bound_s=db_retry_s)
        # Set when the database stayed away past the bound: the sweep is stopped, nothing more is written.
        self.database_lost = False
        # The status the run was given by someone else while this worker still ran it, if any.
        self.ended_elsewhere: str | None = None
        # Levels and raw-sample batches not yet stored, oldest first (they wait here while the database is away).
        self._levels: dict[int, dict] = {}
        self._samples: deque = deque()
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._latest: dict | None = None
        self._recent: deque = deque(maxlen=RECENT_POINTS)
        self._last_second: tuple | None = None
        self._dirty = False
        self._thread = threading.Thread(target=self._loop, name=f"run-{run_id}-recorder", daemon=True)

    # Callbacks handed to the engine: cheap, thread-safe, never touch the database.

    def on_progress(self, progress: dict) -> None:
        second = progress.get("second")
        with self._lock:
            # Seconds after the window closed (the drain) hold only stragglers: charting them shows a false dip.
            if second and progress.get("phase") != "drain":
                key = (progress.get("level_index"), second.get("t"))
                # The engine may report the same second twice (e.g. on a phase change): keep one point.
                if key != self._last_second:
                    self._last_second = key
                    self._recent.append({
                        **second,
                        "level_index": progress.get("level_index"),
                        "load": progress.get("load"),
                        "run_t": progress.get("run_elapsed_s"),
                    })
            self._latest = dict(progress)
            self._dirty = True

    def on_level(self, level_doc: dict) -> None:
        self._queue.put(("level", level_doc))

    def on_samples(self, level_index: int, batch: list[tuple]) -> None:
        self._queue.put(("samples", level_index, batch))

    # Life cycle.

    def start(self) -> None:
        self._thread.start()

    def close(self, final_progress: dict | None = None) -> list[str]:
        """Write everything still queued (waiting for the database up to its bound), stop the thread;
        returns the errors met while writing. Levels that could not be written stay in `unsaved_levels()`."""
        if final_progress is not None:
            with self._lock:
                self._latest = {**(self._latest or {}), **final_progress}
                self._dirty = True
        self._queue.put(("stop",))
        self._thread.join()
        return self.errors

    def unsaved_levels(self) -> list[dict]:
        """Level documents the database never took (empty unless `database_lost`)."""
        return [self._levels[index] for index in sorted(self._levels)]

    def progress_snapshot(self) -> dict:
        with self._lock:
            return {**(self._latest or {}), "recent": list(self._recent)}

    # The recorder thread.

    def _loop(self) -> None:
        next_poll = next_write = time.monotonic()
        last_beat = 0.0
        try:
            while True:
                now = time.monotonic()
                due = min(next_poll, next_write)
                if self.database_lost:
                    due = now + 1.0  # nothing more is written; only wait for "stop"
                elif self.db.is_down:
                    due = now + self.db.seconds_to_next_try()
                try:
                    item = self._queue.get(timeout=max(0.0, due - now))
                except queue.Empty:
                    item = None
                if item is not None and item[0] == "stop":
                    self._drain()
                    self._final_flush()
                    return
                if item is not None:
                    self._hold(item)
                if self.database_lost or not self.db.ready():
                    continue
                # Oldest first: held levels and samples, then progress and heartbeat, then the cancel flag.
                if not self._store_held():
                    self._check_bound()
                    continue
                now = time.monotonic()
                if now >= next_write:
                    written = self._write_progress(force=now >= last_beat + self.heartbeat_s)
                    if written is None:
                        self._check_bound()
                        continue
                    # Nothing new to write is no reason to look again at once: the next look is one interval away.
                    next_write = now + self.progress_interval_s
                    if written:
                        last_beat = now
                if now >= next_poll:
                    if not self._poll_cancel():
                        self._check_bound()
                        continue
                    next_poll = now + self.cancel_poll_s
        finally:
            connections.close_all()

    def _drain(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item[0] != "stop":
                self._hold(item)

    def _final_flush(self) -> None:
        """At the end of the sweep: everything held and the last progress, waiting up to the bound."""
        while not self.database_lost:
            if self._store_held() and self._write_progress(force=True) is not None:
                return
            self._check_bound()
            time.sleep(self.db.seconds_to_next_try())

    def _check_bound(self) -> None:
        if self.db.exhausted and not self.database_lost:
            self.database_lost = True
            logger.error("run %s: the database stayed away for over %.0f s (%s); stopping the sweep",
                         self.run_id, self.db.bound_s, self.db.last_error)
            self.token.cancel()

    def _hold(self, item: tuple) -> None:
        if item[0] == "level":
            self._levels[item[1]["index"]] = item[1]
        elif item[0] == "samples" and self.samples_writer is not None:
            self._samples.append((item[1], item[2]))

    def _store_held(self) -> bool:
        """Write held levels and samples; False when the database connection failed (they stay held)."""
        for index in sorted(self._levels):
            doc = self._levels[index]
            try:
                ok, _ = self.db.attempt(lambda doc=doc: record_level(Run(pk=self.run_id), doc))
            except Exception as exc:  # bad data, not a lost connection: keep measuring, report it at the end
                logger.exception("run %s: could not store level %s", self.run_id, index)
                self.errors.append(f"level {index}: {exc}")
                ok = True
            if not ok:
                return False
            del self._levels[index]
        while self._samples:
            level_index, batch = self._samples[0]
            try:
                ok, _ = self.db.attempt(lambda i=level_index, b=batch: self.samples_writer(i, b))
            except Exception as exc:
                logger.exception("run %s: could not store raw samples of level %s", self.run_id, level_index)
                self.errors.append(f"raw samples of level {level_index}: {exc}")
                ok = True
            if not ok:
                return False
            self._samples.popleft()
        return True

    def _poll_cancel(self) -> bool:
        """Read the cancel flag (and whether the run still runs); False when the database failed."""
        ok, row = self.db.attempt(
            lambda: Run.objects.filter(pk=self.run_id).values_list("cancel_requested", "status").first())
        if not ok:
            return False
        if row is None:
            self._ended(None)
            return True
        requested, status = row
        if status != Run.Status.RUNNING:
            self._ended(status)
        elif requested and not self.token.cancelled:
            logger.info("run %s: cancel requested", self.run_id)
            self.token.cancel()
        return True

    def _ended(self, status: str | None) -> None:
        if self.ended_elsewhere is None:
            self.ended_elsewhere = status or "deleted"
            logger.warning("run %s was ended outside this worker (%s); stopping the sweep",
                           self.run_id, self.ended_elsewhere)
        self.token.cancel()

    def _write_progress(self, *, force: bool) -> bool | None:
        """Write progress and heartbeat: True written, False nothing to write, None the database failed."""
        with self._lock:
            if not (self._dirty or force):
                return False
            now = timezone.now()
            progress = {**(self._latest or {}), "recent": list(self._recent), "updated_at": now.isoformat()}
            self._dirty = False
        ok, updated = self.db.attempt(lambda: Run.objects.filter(pk=self.run_id, status=Run.Status.RUNNING).update(
            progress=progress, heartbeat=now))
        if not ok:
            with self._lock:
                self._dirty = True
            return None
        if not updated:
            self._poll_cancel()  # finds out what ended it
        return True
