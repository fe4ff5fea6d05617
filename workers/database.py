"""Database writes that outlive a dropped connection.

A worker holds its PostgreSQL connection for a whole sweep; a database restart, a failover or an
administrator's `pg_terminate_backend` breaks it, and Django never reconnects a connection in the
middle of a task by itself. `DatabaseWrites` runs one thread's database operations: when one fails
because the connection is gone, it closes that connection (the next query opens a new one), waits
a growing pause and lets the caller try again, for at most `bound_s` seconds in one streak. It logs
one warning when a streak starts and one line when the database answers again, never one per try.
"""
import logging
import time
from collections.abc import Callable

from django.conf import settings
from django.db import connections
from django.db.utils import InterfaceError, OperationalError

from portal.sweeps.models import note_database_back

logger = logging.getLogger(__name__)

# What a lost or refused connection raises (Django wraps the driver's errors into these two).
CONNECTION_ERRORS = (OperationalError, InterfaceError)
FIRST_PAUSE_S = 0.2
MAX_PAUSE_S = 5.0


class DatabaseUnavailable(Exception):
    """The database stayed away for longer than the bound."""


class DatabaseWrites:
    """Runs database operations for one thread, reconnecting and retrying with backoff."""

    def __init__(self, what: str, *, bound_s: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.what = what
        self.bound_s = float(settings.EMBPERF_DB_RETRY_S if bound_s is None else bound_s)
        self.clock = clock
        self.down_since: float | None = None
        self.last_error: str = ""
        self._pause = FIRST_PAUSE_S
        self._next_try = 0.0

    @property
    def is_down(self) -> bool:
        return self.down_since is not None

    @property
    def exhausted(self) -> bool:
        """True once the current failure streak has lasted longer than the bound."""
        return self.down_since is not None and self.clock() - self.down_since > self.bound_s

    def ready(self) -> bool:
        """Whether the pause after the last failure is over (always True while the database answers)."""
        return self.clock() >= self._next_try

    def seconds_to_next_try(self) -> float:
        return max(0.0, self._next_try - self.clock())

    def attempt(self, operation: Callable[[], object]) -> tuple[bool, object]:
        """Run `operation` once: (True, its result), or (False, None) when the connection failed.

        Any other exception propagates: it is a bug or bad data, and retrying would not help."""
        try:
            result = operation()
        except CONNECTION_ERRORS as exc:
            self._failed(exc)
            return False, None
        if self.down_since is not None:
            logger.warning("%s: the database answers again after %.1f s; carrying on", self.what,
                           self.clock() - self.down_since)
            # Heartbeats stopped with the database: nobody judges a run silent for a stale bound now.
            note_database_back()
        self.down_since = None
        self._pause = FIRST_PAUSE_S
        self._next_try = 0.0
        return True, result

    def call(self, operation: Callable[[], object], *, bound_s: float | None = None):
        """Run `operation`, retrying until it succeeds; raises DatabaseUnavailable past the bound."""
        bound = self.bound_s if bound_s is None else bound_s
        while True:
            time.sleep(self.seconds_to_next_try())
            ok, result = self.attempt(operation)
            if ok:
                return result
            if self.clock() - self.down_since > bound:
                raise DatabaseUnavailable(
                    f"the database did not answer for {bound:.0f} s (last error: {self.last_error})")

    def _failed(self, exc: Exception) -> None:
        self.last_error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        now = self.clock()
        if self.down_since is None:
            self.down_since = now
            self._pause = FIRST_PAUSE_S
            limit = f"for up to {self.bound_s:.0f} s" if self.bound_s != float("inf") else "until it answers"
            logger.warning("%s: lost the database (%s); reconnecting and retrying %s", self.what,
                           self.last_error, limit)
        else:
            self._pause = min(self._pause * 2, MAX_PAUSE_S)
        self._next_try = now + self._pause
        close_connection()


def close_connection() -> None:
    """Drop this thread's (broken) connection; Django opens a new one on the next query."""
    for conn in connections.all(initialized_only=True):
        try:
            conn.close()
        except Exception:  # closing a dead connection may itself fail; it is gone either way
            logger.debug("closing a broken database connection", exc_info=True)
