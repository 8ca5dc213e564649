"""One thread that runs every deadline of a server: handshake timeouts, write
timeouts, heartbeats and closing-handshake timeouts.

Callbacks run on the timer thread, one after another, so they must be short
and never block: they shut a socket down, post a ping, or set a flag. A
callback that raises is logged and the thread goes on.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from typing import Callable, Optional

from ..log import logger

__all__ = ["Timers", "Timer"]


class Timer:
    """A scheduled call; ``cancel()`` prevents it if it has not started."""

    __slots__ = ("deadline", "callback", "cancelled")

    def __init__(self, deadline: float, callback: Callable[[], None]) -> None:
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Timers:
    """A heap of ``Timer`` objects served by one daemon thread.

    The heap is guarded by ``_cond``; the thread starts on the first
    ``call_later`` and ends on ``stop()``. Cancelled timers stay in the heap
    until their deadline and are then skipped.
    """

    def __init__(self, name: str = "ws_multipath-timers") -> None:
        self._name = name
        self._heap: list[tuple[float, int, Timer]] = []
        self._sequence = itertools.count()
        self._cond = threading.Condition(threading.Lock())
        self._thread: Optional[threading.Thread] = None
        self._stopped = False

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` on the timer thread after ``delay`` seconds."""
        timer = Timer(time.monotonic() + delay, callback)
        with self._cond:
            if self._stopped:
                timer.cancelled = True
                return timer
            heapq.heappush(self._heap, (timer.deadline, next(self._sequence), timer))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            elif self._heap[0][2] is timer:
                self._cond.notify()
        return timer

    def stop(self) -> None:
        """Drop every pending timer and end the thread (waits for it)."""
        with self._cond:
            self._stopped = True
            self._heap.clear()
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                timer = self._next_due()
                if timer is None:
                    return
            if not timer.cancelled:
                try:
                    timer.callback()
                except Exception:  # noqa: BLE001 - keep every other deadline alive
                    logger.exception("a timer callback raised")

    def _next_due(self) -> Optional[Timer]:
        """Wait (with ``_cond`` held) for the earliest timer to be due; pop it."""
        while not self._stopped:
            if not self._heap:
                self._cond.wait()
                continue
            delay = self._heap[0][0] - time.monotonic()
            if delay > 0:
                self._cond.wait(delay)
                continue
            return heapq.heappop(self._heap)[2]
        return None
