"""One thread that runs every deadline of a server: handshake timeouts, write
timeouts, heartbeats and closing-handshake timeouts.

Callbacks run on the timer thread, one after another, so they must be short
and never block: they shut a socket down, post a ping, or set a flag. A
callback that raises is logged and the thread goes on.

A cancelled timer lets go of its callback at once: a callback is usually a
bound method of a connection, and an ended connection's heartbeat would
otherwise keep the whole connection (its request, parser, buffers) alive
until the ping it no longer sends was due. The entry itself leaves the
heap when it reaches the top, or when cancelled entries are more than a
quarter of the heap (then the heap is rebuilt without them: at most four
entries looked at per cancellation, amortised), so the heap holds at most
a third more entries than there are pending timers. Every connection
cancels two timers as it opens (the handshake deadline, the watchdog).
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import time
from typing import Callable, Optional

from ..log import logger

__all__ = ["Timers", "Timer"]

#: Cancelled entries tolerated in the heap before it is rebuilt without them
#: (and only once they are also more than a quarter of it).
_COMPACT_AFTER = 64
#: Seconds the thread sleeps at most while timers are pending. A new timer
#: wakes it only when due before it would wake anyway: so the short timers
#: that every new connection sets and cancels at once (its handshake
#: deadline, its watchdog: 1 s) do not wake it each time.
_MAX_SLEEP = 1.0


class Timer:
    """A scheduled call; ``cancel()`` prevents it if it has not started."""

    __slots__ = ("deadline", "callback", "cancelled", "_timers")

    def __init__(self, deadline: float, callback: Optional[Callable[[], None]], timers: Optional["Timers"] = None) -> None:
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False
        #: The ``Timers`` whose heap holds this timer, until it is popped
        #: or cancelled (read and written under that ``Timers``' lock).
        self._timers = timers

    def cancel(self) -> None:
        self.cancelled = True
        self.callback = None  # let go of what it holds now, not at its deadline
        timers = self._timers
        if timers is not None:
            timers._forget(self)


class Timers:
    """A heap of ``Timer`` objects served by one daemon thread.

    The heap, the count of cancelled entries still in it and each queued
    timer's ``_timers`` are guarded by ``_cond``; the thread starts on the
    first ``call_later`` and ends on ``stop()``. A queued timer whose
    ``_timers`` is None was cancelled and is counted in ``_cancelled``.
    """

    def __init__(self, name: str = "ws_multipath-timers") -> None:
        self._name = name
        self._heap: list[tuple[float, int, Timer]] = []
        self._cancelled = 0  # cancelled timers still in the heap
        self._sequence = itertools.count()
        self._cond = threading.Condition(threading.Lock())
        self._thread: Optional[threading.Thread] = None
        self._stopped = False
        #: When the waiting thread wakes by itself; -inf while it is not
        #: waiting (it looks at the heap before it waits again).
        self._wake_at = -math.inf

    def __len__(self) -> int:
        """Timers waiting for their deadline (cancelled ones not counted)."""
        with self._cond:
            return len(self._heap) - self._cancelled

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` on the timer thread after ``delay`` seconds."""
        timer = Timer(time.monotonic() + delay, callback, self)
        with self._cond:
            if self._stopped:
                timer.cancelled, timer.callback, timer._timers = True, None, None
                return timer
            heapq.heappush(self._heap, (timer.deadline, next(self._sequence), timer))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            elif timer.deadline < self._wake_at:
                self._cond.notify()
        return timer

    def stop(self) -> None:
        """Drop every pending timer and end the thread (waits for it)."""
        with self._cond:
            self._stopped = True
            for _, _, timer in self._heap:
                timer._timers = None
            self._heap.clear()
            self._cancelled = 0
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _forget(self, timer: Timer) -> None:
        """``timer`` was cancelled (any thread): count it, and rebuild the
        heap without the cancelled entries once they are a quarter of it."""
        with self._cond:
            if timer._timers is not self:
                return  # already popped (running or run), or dropped by stop()
            timer._timers = None
            self._cancelled += 1
            if self._cancelled > _COMPACT_AFTER and 4 * self._cancelled > len(self._heap):
                self._heap = [entry for entry in self._heap if entry[2]._timers is self]
                heapq.heapify(self._heap)
                self._cancelled = 0

    def _run(self) -> None:
        while True:
            with self._cond:
                timer = self._next_due()
                if timer is None:
                    return
            callback = timer.callback  # None once cancelled, even after the pop
            if callback is not None:
                try:
                    callback()
                except Exception:  # noqa: BLE001 - keep every other deadline alive
                    logger.exception("a timer callback raised")

    def _next_due(self) -> Optional[Timer]:
        """Wait (with ``_cond`` held) for the earliest timer to be due; pop it.
        Cancelled timers that reach the top are dropped without waiting."""
        while not self._stopped:
            heap = self._heap  # compaction replaces the list
            if heap and heap[0][2]._timers is None:  # counted in _cancelled by _forget
                heapq.heappop(heap)
                self._cancelled -= 1
                continue
            if not heap:
                self._wait(math.inf)
                continue
            now = time.monotonic()
            delay = heap[0][0] - now
            if delay > 0:
                self._wait(min(delay, _MAX_SLEEP))
                continue
            timer = heapq.heappop(heap)[2]
            timer._timers = None
            return timer
        return None

    def _wait(self, delay: float) -> None:
        """Wait (``_cond`` held) ``delay`` seconds at most, or until a
        timer due before then is added."""
        self._wake_at = time.monotonic() + delay
        self._cond.wait(None if delay == math.inf else delay)
        self._wake_at = -math.inf
