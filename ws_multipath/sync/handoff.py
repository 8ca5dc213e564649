"""The sysmon: one thread per server that notices a loop stuck in user code
and hands the loop to another thread.

A loop runs its connections' listeners inline (``loop.py``), so a listener
that blocks would hold up every other connection of the loop. The sysmon
samples each busy loop every ``PERIOD`` seconds; a loop seen in the same
task at two samples in a row (so for ``PERIOD`` to ``2 * PERIOD``) is handed
off: its stuck thread keeps the task, and another thread takes over the
selector and the other connections (``EventLoop.check_stuck``). If the stuck
task was inside one of its connection's listeners, that connection's
reading moves too: the loop goes on answering its pings while its later
messages queue for the stuck thread (``reader.SocketReader.hand_off``).

This is Go's ``sysmon``, which retakes the processor of a thread blocked in
a system call (``runtime/proc.go``, ``retake``), and Jetty's adaptive
execution strategy, where the thread that found a task runs it while
another takes over selecting; here the switch happens only when a task
turns out to be slow, so a fast listener costs no hand-off at all.

While no loop runs a task the sysmon sleeps, and the first loop to start
one wakes it (``sleeping`` is read by the loops without a lock: the sysmon
sets it before its last look at the loops, so either it sees the task or
the loop sees the flag).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Optional

from ..log import logger

if TYPE_CHECKING:
    from .loop import EventLoop

__all__ = ["Sysmon", "PERIOD"]

#: Seconds between two samples of a busy loop: a listener that keeps its
#: loop's thread from 5 to 10 ms loses the loop.
PERIOD = 0.005

#: Samples with every loop idle before the sysmon sleeps (under load the
#: loops go idle between batches: no wake-up per batch).
_IDLE_SAMPLES = 20


class Sysmon:
    """Watches the loops of one server. ``_cond`` guards the loop list, the
    stopped flag and the thread; ``sleeping`` is written under it."""

    def __init__(self, name: str = "ws_multipath-sysmon") -> None:
        self._name = name
        self._cond = threading.Condition(threading.Lock())
        self._loops: list["EventLoop"] = []
        self._thread: Optional[threading.Thread] = None
        self._stopped = False
        #: True while the thread waits for a loop to start a task.
        self.sleeping = False
        #: Hand-offs made so far (stats, tests).
        self.hand_offs = 0

    def watch(self, loop: "EventLoop") -> None:
        with self._cond:
            if self._stopped:
                return
            self._loops.append(loop)

    def start(self) -> None:
        """Start the thread (a loop's first task is coming)."""
        with self._cond:
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()

    def forget(self, loop: "EventLoop") -> None:
        with self._cond:
            if loop in self._loops:
                self._loops.remove(loop)

    def wake(self) -> None:
        with self._cond:
            if self.sleeping:
                self.sleeping = False
                self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _run(self) -> None:
        idle = 0
        while True:
            with self._cond:
                if self._stopped:
                    return
                loops = list(self._loops)
                if idle >= _IDLE_SAMPLES:
                    self.sleeping = True
                    if not any(loop.busy() for loop in loops):
                        self._cond.wait()
                    self.sleeping = False
                    idle = 0
                    continue
                self._cond.wait(PERIOD)
                if self._stopped:
                    return
            busy = False
            for loop in loops:
                try:
                    if loop.check_stuck() is not None:
                        self.hand_offs += 1
                        logger.debug("%s: a task kept its thread past %.0f ms: the loop goes on on another thread", loop.name, PERIOD * 1000)
                except Exception:  # noqa: BLE001 - a bug: keep watching the others
                    logger.exception("sysmon: checking %s failed", loop.name)
                busy = busy or loop.busy()
            idle = 0 if busy else idle + 1
