"""Carries a running sweep's callbacks to the database from a thread of its own.

The engine may call `on_progress` / `on_level` from inside its event loop, where Django's ORM
refuses to run (SynchronousOnlyOperation), and a slow database write must never stall the
measurement. So the callbacks only put work on a queue; one recorder thread writes levels the
moment they arrive, writes progress at most about once a second, and polls
`Run.cancel_requested` every half second to set the engine's CancelToken.

Run.progress as written here (read by the run page and the API):
    the engine's latest progress dict (built in benchmarks/sweep.py, `_progress`), plus
    "updated_at": ISO time of the write (the worker's heartbeat, refreshed at least every 10 s),
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

from django.db import connections
from django.utils import timezone

from portal.sweeps.models import Run
from portal.sweeps.services import store_level

logger = logging.getLogger(__name__)

RECENT_POINTS = 300
HEARTBEAT_S = 10.0


class RunRecorder:
    """Writes one run's progress and levels; sets `token` when a cancel is requested."""

    def __init__(self, run_id: int, token, *, progress_interval_s: float = 1.0, cancel_poll_s: float = 0.5,
                 samples_writer: Callable[[int, list[tuple]], None] | None = None):
        self.run_id = run_id
        self.token = token
        self.progress_interval_s = progress_interval_s
        self.cancel_poll_s = cancel_poll_s
        self.samples_writer = samples_writer
        self.errors: list[str] = []
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
        """Write everything still queued, stop the thread; returns the errors met while writing."""
        if final_progress is not None:
            with self._lock:
                self._latest = {**(self._latest or {}), **final_progress}
                self._dirty = True
        self._queue.put(("stop",))
        self._thread.join()
        return self.errors

    def progress_snapshot(self) -> dict:
        with self._lock:
            return {**(self._latest or {}), "recent": list(self._recent)}

    # The recorder thread.

    def _loop(self) -> None:
        next_poll = time.monotonic()
        last_write = 0.0
        try:
            while True:
                now = time.monotonic()
                wait = max(0.0, min(next_poll, last_write + self.progress_interval_s) - now)
                try:
                    item = self._queue.get(timeout=wait)
                except queue.Empty:
                    item = None
                if item is not None and item[0] == "stop":
                    self._drain()
                    self._write_progress(force=True)
                    return
                if item is not None:
                    self._handle(item)
                now = time.monotonic()
                if now >= next_poll:
                    self._poll_cancel()
                    next_poll = now + self.cancel_poll_s
                if now >= last_write + self.progress_interval_s:
                    if self._write_progress(force=now >= last_write + HEARTBEAT_S):
                        last_write = now
        finally:
            connections.close_all()

    def _drain(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item[0] != "stop":
                self._handle(item)

    def _handle(self, item: tuple) -> None:
        kind = item[0]
        if kind == "level":
            doc = item[1]
            try:
                store_level(Run(pk=self.run_id), doc)
            except Exception as exc:  # keep measuring; the run reports it at the end
                logger.exception("run %s: could not store level %s", self.run_id, doc.get("index"))
                self.errors.append(f"level {doc.get('index')}: {exc}")
        elif kind == "samples" and self.samples_writer is not None:
            try:
                self.samples_writer(item[1], item[2])
            except Exception as exc:
                logger.exception("run %s: could not store raw samples of level %s", self.run_id, item[1])
                self.errors.append(f"raw samples of level {item[1]}: {exc}")

    def _poll_cancel(self) -> None:
        if self.token.cancelled:
            return
        try:
            requested = Run.objects.filter(pk=self.run_id).values_list("cancel_requested", flat=True).first()
        except Exception:
            # A busy SQLite file or a database hiccup: the next poll, half a second later, tries again.
            logger.warning("run %s: could not read the cancel flag", self.run_id, exc_info=True)
            return
        if requested:
            logger.info("run %s: cancel requested", self.run_id)
            self.token.cancel()

    def _write_progress(self, *, force: bool) -> bool:
        with self._lock:
            if not (self._dirty or force):
                return False
            progress = {**(self._latest or {}), "recent": list(self._recent),
                        "updated_at": timezone.now().isoformat()}
            self._dirty = False
        try:
            Run.objects.filter(pk=self.run_id).update(progress=progress)
        except Exception:
            logger.warning("run %s: could not write progress", self.run_id, exc_info=True)
            return False
        return True
