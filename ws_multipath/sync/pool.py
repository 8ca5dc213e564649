"""A bounded pool of worker threads: tasks run on at most ``max_threads``
threads, first in, first out.

Threads are started on demand (a task that finds none idle starts one while
fewer than ``max_threads`` run) and an idle thread ends after
``idle_timeout`` seconds without work, so an unused pool holds no thread.
Past the bound, tasks wait in a FIFO for the next free thread. gunicorn's
``gthread`` worker runs requests the same way on its ``--threads`` pool
(``gunicorn/workers/gthread.py``, on ``concurrent.futures``); this one
adds the idle exit, and a ``submit`` that fails rather than strands a task.

Each idle thread waits on a lock of its own, which ``submit`` releases to
wake it: one C-level wake-up per hand-off (a ``threading.Condition`` costs
about 6 us more of CPU per hand-off, in Python). The most recently idle
thread is woken first, so the others stay idle and end when there are more
threads than work.

Thread safety: ``_lock`` guards the queue, the idle threads' locks and the
counts; it is never held while a task runs or a thread starts.
"""

from __future__ import annotations

import collections
import threading
from typing import Callable

from ..log import logger

__all__ = ["WorkerPool", "IDLE_TIMEOUT"]

#: Seconds an idle worker thread waits for a task before it ends.
IDLE_TIMEOUT = 30.0


class WorkerPool:
    """Runs callables on at most ``max_threads`` daemon threads named ``name``.

    ``submit(task)`` never blocks on the tasks: it queues ``task`` and wakes
    an idle thread or starts one. A task that raises is logged and the
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
        self._tasks: collections.deque[Callable[[], object]] = collections.deque()
        self._idle: list[threading.Lock] = []  # the held locks of idle threads, most recent last
        self._threads = 0  # started and not ended
        self._closed = False

    def submit(self, task: Callable[[], object]) -> None:
        """Run ``task()`` on a pool thread, now or when one is free.
        ``RuntimeError`` when no thread could be started and none runs that
        would take it (the task was not queued)."""
        with self._lock:
            self._tasks.append(task)
            if self._idle:
                self._idle.pop().release()  # that thread wakes and takes a task
                return
            if self._threads >= self.max_threads:
                return  # waits for a thread to finish its task
            self._threads += 1
        try:
            threading.Thread(target=self._work_loop, name=self._name, daemon=True).start()
        except RuntimeError:  # can't start new thread (pid or memory limits)
            with self._lock:
                self._threads -= 1
                stranded = self._threads == 0
                if stranded:
                    self._tasks.remove(task)
            if stranded:
                raise
            # else a running thread takes it when its task ends

    def close(self) -> None:
        """Let idle threads end now; running and queued tasks still run."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for wake in idle:
            wake.release()

    def counts(self) -> tuple[int, int, int]:
        """``(threads, idle, queued)`` now: threads started and not ended,
        those waiting for a task, and tasks waiting for a thread."""
        with self._lock:
            return self._threads, len(self._idle), len(self._tasks)

    def _work_loop(self) -> None:
        wake = threading.Lock()
        wake.acquire()
        while True:
            with self._lock:
                if self._tasks:
                    task = self._tasks.popleft()
                elif self._closed:
                    self._threads -= 1
                    return
                else:
                    self._idle.append(wake)
                    task = None
            if task is None:
                if not wake.acquire(timeout=self._idle_timeout):
                    with self._lock:
                        if wake in self._idle:  # not woken: idle for idle_timeout
                            self._idle.remove(wake)
                            self._threads -= 1
                            return
                    wake.acquire()  # woken just as the wait ended: take that release
                continue
            try:
                task()
            except Exception:  # noqa: BLE001 - a task's own bug: the thread goes on
                logger.exception("a task of the %s pool failed", self._name)
            del task  # not kept alive while the thread waits for the next one
