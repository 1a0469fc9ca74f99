"""Noticing an engine that has stopped moving (a model call that hangs), for liveness checks.

An engine wraps each unit of model work in ``with watchdog.working():`` and calls ``watchdog.progress()``
whenever any work moves on (a token, a frame, a sentence). ``stalled_seconds`` is how long the engine has
had work in hand without any progress: work that merely waits its turn behind moving work (a batch slot, a
lock) does not count as stalled, and new work arriving does not hide a hang. ``check_health`` compares it
with a limit. Thread-safe: the work runs on executor threads, the check on the event loop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class StallWatchdog:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._active = 0
        self._last_progress = clock()
        self._lock = threading.Lock()

    @contextmanager
    def working(self) -> Iterator[None]:
        """Mark one piece of work in hand for the duration of the block."""
        with self._lock:
            if self._active == 0:  # idle until now: the stall clock starts here
                self._last_progress = self._clock()
            self._active += 1
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1

    def progress(self) -> None:
        with self._lock:
            self._last_progress = self._clock()

    def stalled_seconds(self) -> float:
        """Seconds the engine has had work in hand without progress (0 when idle)."""
        with self._lock:
            return self._clock() - self._last_progress if self._active else 0.0
