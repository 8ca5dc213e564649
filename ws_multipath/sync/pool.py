"""A bounded pool of worker threads: tasks run on at most ``max_threads``
threads, first in, first out.

Threads are started on demand (a task that finds none idle starts one while
fewer than ``max_threads`` run) and an idle thread ends after
``idle_timeout`` seconds without work, so an unused pool holds no thread.
Past the bound, tasks wait in a FIFO for the next free thread. gunicorn's
``gthread`` worker runs requests the same way on its ``--threads`` pool
(``gunicorn/workers/gthread.py``, on ``concurrent.futures``); this one
adds the idle exit, and a ``submit`` that fails rather than strands a task.

A task goes straight to an idle thread when there is one: ``submit`` puts
it in that thread's slot and releases the lock the thread waits on (one
C-level wake-up per hand-off; a ``threading.Condition`` costs about 6 us
more of CPU per hand-off, in Python), so no other thread can take it first
and leave the woken one with nothing to do. The most recently idle thread is
woken first, so the others stay idle and end when there are more threads
than work. Only when every thread is busy do tasks wait in the queue, which
a thread empties, oldest first, before it goes idle: so the queue is never
waiting while a thread is idle, and tasks start in the order they came.

Thread safety: ``_lock`` guards the queue, the idle threads, their slots and
the counts; it is never held while a task runs or a thread starts.
"""

from __future__ import annotations

import collections
import threading
from typing import Callable, Optional

from ..log import logger

__all__ = ["WorkerPool", "IDLE_TIMEOUT"]

#: Seconds an idle worker thread waits for a task before it ends.
IDLE_TIMEOUT = 30.0


class _Idle:
    """An idle thread: the lock it waits on, and the task it is given."""

    __slots__ = ("wake", "task")

    def __init__(self) -> None:
        self.wake = threading.Lock()
        self.wake.acquire()
        self.task: Optional[Callable[[], object]] = None


class WorkerPool:
    """Runs callables on at most ``max_threads`` daemon threads named ``name``.

    ``submit(task)`` never blocks on the tasks: it gives ``task`` to an idle
    thread, starts one, or queues it. A task that raises is logged and the
    thread goes on. ``close()`` lets the idle threads end now; tasks queued
    or submitted later still run (each thread ends once the queue is empty).
    """

    def __init__(self, max_threads: int, name: str, idle_timeout: float = IDLE_TIMEOUT) -> None:
        if not isinstance(max_threads, int) or isinstance(max_threads, bool) or max_threads < 1:
            raise ValueError(f"max_threads must be a positive int, not {max_threads!r}")
        self.max_threads = max_threads
        self._name = name
        self._idle_timeout = idle_timeout
        self._lock = threading.Lock()
        self._tasks: collections.deque[Callable[[], object]] = collections.deque()  # only while no thread is idle
        self._idle: list[_Idle] = []  # most recently idle last
        self._threads = 0  # started and not ended
        self._closed = False

    def submit(self, task: Callable[[], object]) -> None:
        """Run ``task()`` on a pool thread, now or when one is free.
        ``RuntimeError`` when no thread could be started and none runs that
        would take it (the task was not queued)."""
        with self._lock:
            if self._give(task):
                return
            if self._threads >= self.max_threads:
                self._tasks.append(task)  # the next thread to finish takes it
                return
            self._threads += 1
        try:
            threading.Thread(target=self._work_loop, args=(task,), name=self._name, daemon=True).start()
        except RuntimeError:  # can't start new thread (pid or memory limits)
            with self._lock:
                self._threads -= 1
                if self._give(task):
                    return
                if self._threads == 0:
                    raise
                self._tasks.append(task)  # a running thread takes it when its task ends

    def _give(self, task: Callable[[], object]) -> bool:
        """Give ``task`` to the most recently idle thread (``_lock`` held)."""
        if not self._idle:
            return False
        idle = self._idle.pop()
        idle.task = task
        idle.wake.release()
        return True

    def close(self) -> None:
        """Let idle threads end now; running and queued tasks still run."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for each in idle:
            each.wake.release()  # with no task: it ends

    def counts(self) -> tuple[int, int, int]:
        """``(threads, idle, queued)`` now: threads started and not ended,
        those waiting for a task, and tasks waiting for a thread."""
        with self._lock:
            return self._threads, len(self._idle), len(self._tasks)

    def _work_loop(self, task: Optional[Callable[[], object]]) -> None:
        me = _Idle()
        while True:
            if task is not None:
                try:
                    task()
                except Exception:  # noqa: BLE001 - a task's own bug: the thread goes on
                    logger.exception("a task of the %s pool failed", self._name)
                task = None  # not kept alive while the thread waits for the next one
            with self._lock:
                if self._tasks:
                    task = self._tasks.popleft()
                    continue
                if self._closed:
                    self._threads -= 1
                    return
                self._idle.append(me)
            if not me.wake.acquire(timeout=self._idle_timeout):
                with self._lock:
                    if me in self._idle:  # not given a task: idle for idle_timeout
                        self._idle.remove(me)
                        self._threads -= 1
                        return
                me.wake.acquire()  # given one just as the wait ended
            task, me.task = me.task, None  # None: woken by close()
