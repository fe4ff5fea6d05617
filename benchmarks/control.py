"""Cooperative cancellation shared between the thread that asks and the engine that obeys."""
import threading


class CancelToken:
    """Thread-safe cancel flag. The engine checks it at least once a second and stops the sweep,
    keeping every level that had finished."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        """Ask the engine to stop as soon as it can."""
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        """Sleep up to `timeout` seconds, waking early on cancel; True when cancelled."""
        return self._event.wait(timeout)
