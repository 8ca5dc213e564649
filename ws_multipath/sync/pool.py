"""A bounded pool of worker threads: tasks run on at most ``max_threads``
threads, first in, first out.

Threads are started on demand (a task that finds none idle starts one while
fewer than ``max_threads`` run) and an idle thread ends after
``idle_timeout`` seconds without work, so an unused pool holds no thread.
Past the bound, tasks wait in a FIFO for the next free thread. gunicorn's
``gthread`` worker runs requests the same way on its ``--threads`` pool
(``gunicorn/workers/gthread.py``, on ``concurrent.futures``); this one
adds the idle exit, and a ``submit`` that fails rather than strands a task.

Thread safety: ``_lock`` (with its condition ``_work``) guards the queue and
the counts; it is never held while a task runs or a thread starts.
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
        self._work = threading.Condition(self._lock)
        self._tasks: collections.deque[Callable[[], object]] = collections.deque()
        self._threads = 0  # started and not ended
        self._idle = 0  # waiting for a task (some may be notified already)
        self._closed = False

    def submit(self, task: Callable[[], object]) -> None:
        """Run ``task()`` on a pool thread, now or when one is free.
        ``RuntimeError`` when no thread could be started and none runs that
        would take it (the task was not queued)."""
        with self._lock:
            self._tasks.append(task)
            if len(self._tasks) <= self._idle:  # an idle thread per queued task: wake one
                self._work.notify()
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
            self._work.notify_all()

    def counts(self) -> tuple[int, int, int]:
        """``(threads, idle, queued)`` now: threads started and not ended,
        those waiting for a task, and tasks waiting for a thread."""
        with self._lock:
            return self._threads, self._idle, len(self._tasks)

    def _work_loop(self) -> None:
        while True:
            with self._lock:
                while not self._tasks:
                    if self._closed:
                        self._threads -= 1
                        return
                    self._idle += 1
                    woken = self._work.wait(self._idle_timeout)
                    self._idle -= 1
                    if not woken and not self._tasks:  # idle for idle_timeout
                        self._threads -= 1
                        return
                task = self._tasks.popleft()
            try:
                task()
            except Exception:  # noqa: BLE001 - a task's own bug: the thread goes on
                logger.exception("a task of the %s pool failed", self._name)
            del task  # not kept alive while the thread waits for the next one
