"""An event loop that runs open connections: ``EventLoop``.

Each handler has one (``loops=N``: N), and each of its connections, once
its ``'connection'`` listeners have returned, is registered in one of them.
The loop's thread waits in one selector (epoll on Linux) for every such
socket, and for each one that is readable runs a *task*: the connection
reads what is there, parses it and calls its listeners, inline, with no
hand-off per message. An idle connection so costs no thread.

User code may block in a task (a listener that queries a database, sleeps,
sends to a slow client). The loop is then handed off (``handoff.py``): the
thread stuck in the task loses the loop, and another thread, a spare or a
new one, takes over selecting and running the other connections' tasks,
starting with those the stuck thread had found ready. The stuck thread
finishes its task, runs the listener calls its connection queued for it
meanwhile (``dispatch.py``), then waits as a spare for the next hand-off,
or ends. So threads are bounded by the loops plus the listeners blocked at
the moment, not by connections.

Tasks also come from other threads as calls (``call_soon``): a connection
joining the loop, or told to read again once its application made room.

``_lock`` guards the calls, the owner, the ready list and its position,
the task being run, the spares and the stopped flag; the selector belongs
to the owner, which changes only under ``_lock``. It is never held while a
task runs or while selecting.
"""

from __future__ import annotations

import selectors
import socket
import threading
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol

from ..log import logger
from .dispatch import listener_thread
from .sockets import recv_nowait, send_small
from .handoff import HandOffs

if TYPE_CHECKING:
    from .handoff import Sysmon

__all__ = ["EventLoop", "LoopClient", "SPARE_IDLE", "MAX_SPARES"]

#: Seconds a spare thread waits for a hand-off before it ends.
SPARE_IDLE = 10.0
#: Spare threads kept per loop; a thread that frees itself beyond these ends.
MAX_SPARES = 2


class LoopClient(Protocol):
    """What a loop runs tasks for: a connection's reading
    (``loop_reading.LoopReading``) or a request head awaited
    (``http/head_waiting.HeadWaiter``)."""

    @property
    def in_listener(self) -> bool:
        """True while a task of it runs user code (the sysmon hands off only then)."""

    def on_ready(self, me: threading.Thread) -> None:
        """Its socket is readable: a task."""

    def sync_on_loop(self, selector: selectors.BaseSelector) -> None:
        """On the owner: have ``selector`` watch its socket as it wants."""

    def unregister_on_loop(self, selector: selectors.BaseSelector) -> None:
        """On the owner: stop watching its socket."""

    def hand_off(self, stuck: threading.Thread) -> Optional[Callable[[], None]]:
        """``stuck`` lost the loop inside its task: a call for the loop to take over with, or None."""

    def run_dispatcher(self, me: threading.Thread) -> None:
        """On the thread that lost the loop, once its task is done."""


Call = tuple[LoopClient, Callable[[], None]]

_DRAIN_SIZE = 4096  # wake-up bytes read at once


class EventLoop(HandOffs):
    """One selector and the threads that take turns running it (see above).

    ``task_seq`` and ``in_task`` are written by the owner and read by the
    sysmon under ``_lock``: a task seen running at two of its samples with
    the same ``task_seq`` is stuck (``handoff.py``).
    """

    def __init__(self, name: str, sysmon: "Sysmon") -> None:
        self.name = name
        self._sysmon = sysmon
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._spare_cond = threading.Condition(self._lock)
        self._calls: list[Call] = []
        self._pending: Optional[list[Call]] = None  # the calls being run (_run_calls)
        self._pending_next = 0
        self._ready: list[tuple[selectors.SelectorKey, int]] = []
        self._next = 0  # position in _ready of the next task
        self._owner: Optional[threading.Thread] = None
        self._started = False
        self._stopped = False
        self._selecting = False
        self._woken = False
        self._spares = 0
        self._wanted = 0  # hand-offs waiting for a spare to take the loop
        self.threads = 0  # threads of this loop alive now (owner, dispatchers, spares)
        self.task_seq = 0
        self.in_task = False
        self.task_reader: Optional[LoopClient] = None
        self.sampled_seq = -1  # the sysmon's, under _lock
        self.sampled_mark: Optional[tuple[float, float]] = None  # the owner's CPU time at that sample (handoff.cpu_mark)
        self.running_samples = 0  # samples in a row that found the task running (handoff.ran)
        #: Set by a hand-off, cleared after ``_BURST_QUIET`` quiet samples:
        #: while set, each task runs off the loop (``_run_detached``).
        self.bursting = False
        self._quiet = 0  # sysmon samples without a stuck task, during a burst
        self._quick = 0  # detached tasks since the last hand-off that ended without one
        #: Tasks run off the loop so far (stats, tests), under _lock.
        self.detached_runs = 0
        #: thread: [reader, seen by a sample, its cpu_mark, running samples, for good (run_off_loop)]
        self._detached: dict[threading.Thread, list[Any]] = {}

    def __repr__(self) -> str:
        return f"<EventLoop {self.name} threads={self.threads}>"

    # -- any thread -----------------------------------------------------------

    def call_soon(self, reader: LoopClient, fn: Callable[[], None]) -> bool:
        """Run ``fn`` as a task of ``reader``'s connection on the loop; False
        once the loop has stopped."""
        with self._lock:
            if self._stopped:
                return False
            self._calls.append((reader, fn))
            wake = self._selecting and not self._woken
            if wake:
                self._woken = True
            start = not self._started
            if start:
                self._sysmon.start()
                self._started = True
                self._owner = None
                self._wanted += 1
        if start:
            self._start_thread()
        elif wake:
            self._wake()
        return True

    def on_loop(self) -> bool:
        """True on the thread that owns the loop now."""
        return self._owner is threading.current_thread()

    def sync(self, reader: LoopClient) -> None:
        """Have the selector watch ``reader``'s socket exactly while it
        wants reading (at once on the loop's owner, else as a call)."""
        with self._lock:
            if self._owner is threading.current_thread():
                reader.sync_on_loop(self._selector)
                return
        self.call_soon(reader, lambda: self.sync(reader))

    def release(self, reader: LoopClient, then: Callable[[], None]) -> None:
        """Stop watching ``reader``'s socket for good, then call ``then``
        (which closes it) on the loop's owner; at once if the loop stopped."""
        with self._lock:
            owner = self._owner is threading.current_thread()
            if owner:
                reader.unregister_on_loop(self._selector)
        if owner or not self.call_soon(reader, lambda: self.release(reader, then)):
            then()

    def stop(self) -> None:
        """End the loop's threads (the connections are gone) and its descriptors."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            self._spare_cond.notify_all()
            started = self._started
        if started:
            self._wake()  # the last of its threads closes the descriptors
        else:
            self._close()

    def busy(self) -> bool:
        return self.in_task or bool(self._detached)

    # -- the loop's threads ---------------------------------------------------

    def _start_thread(self) -> None:
        thread = threading.Thread(target=self._thread_main, name=f"ws_multipath-loop {self.name}", daemon=True)
        try:
            thread.start()
        except RuntimeError as exc:  # out of threads: a spare or the stuck owner takes it later
            logger.error("cannot start a thread for the event loop of %s: %s", self.name, exc)

    def _thread_main(self) -> None:
        listener_thread.active = True
        me = threading.current_thread()
        with self._lock:
            self.threads += 1
        try:
            while self._claim(me):
                lost_in = self._run_owned(me)
                if lost_in is None:
                    return  # stopped
                lost_in.run_dispatcher(me)
                lost_in = None  # a spare holds nothing of the connection it served (its socket, its head)
                if not self._become_spare():
                    return
        except Exception:  # noqa: BLE001 - a bug: log it, a spare or a new thread goes on
            logger.exception("event loop %s failed", self.name)
        finally:
            with self._lock:
                self.threads -= 1
                last = self._stopped and self.threads == 0
            if last:
                self._close()

    def _claim(self, me: threading.Thread) -> bool:
        """Take the loop if a hand-off (or the start) wants an owner."""
        with self._lock:
            if self._stopped and self._owner is None and self._wanted == 0:
                return False
            if self._wanted and self._owner is None:
                self._wanted -= 1
                self._owner = me
                return True
            return False

    def _become_spare(self) -> bool:
        """Wait for a hand-off to take the loop; False to end the thread."""
        with self._lock:
            if self._spares >= MAX_SPARES and not self._wanted:
                return False
            self._spares += 1
            try:
                self._spare_cond.wait_for(lambda: self._stopped or (self._wanted and self._owner is None), SPARE_IDLE)
            finally:
                self._spares -= 1
            return bool(self._wanted and self._owner is None and not self._stopped)

    def _run_owned(self, me: threading.Thread) -> Optional[LoopClient]:
        """Run the loop while this thread owns it. Returns the reader of the
        task in which it lost the loop, or None once stopped."""
        selector = self._selector
        while True:
            with self._lock:
                if self._owner is not me:  # pragma: no cover - lost between tasks: cannot happen
                    return None
                if self._stopped:
                    self._owner = None
                    return None
                ready, start = self._ready, self._next
                calls, self._calls = self._calls, []
                idle = not calls and start >= len(ready)
                if idle:
                    self._ready, self._next = [], 0  # a hand-off left them: hold no ended connection while selecting
                    self._selecting = True
                    self._woken = False
            if not idle:
                lost = self._run_calls(me, calls) or self._run_ready(me)
                calls = []  # hold nothing of ended connections while selecting
                ready = []
                if lost is not None:
                    return lost
                continue
            ready = []
            try:
                events = selector.select()
            except OSError as exc:  # EINTR is retried by Python; anything else is a bug
                logger.error("event loop %s: select failed: %s", self.name, exc)
                events = []
            with self._lock:
                self._selecting = False
                self._ready, self._next = events, 0
            events = []

    def _run_calls(self, me: threading.Thread, calls: list[Call]) -> Optional[LoopClient]:
        # _pending and _pending_next are the owner's, read by a hand-off (under
        # _lock, while the owner is inside a call): the calls after the stuck
        # one go to the new owner then, not after the stuck call returns.
        self._pending = calls
        for index, (reader, fn) in enumerate(calls):
            self._pending_next = index + 1
            self._begin_task(reader)
            try:
                fn()
            except BaseException:  # noqa: BLE001 - a bug, or SystemExit from a listener: log it, keep the loop
                logger.exception("event loop %s: a call failed", self.name)
            if not self._end_task(me):
                return reader  # the hand-off gave the calls after this one to the new owner
        self._pending = None
        return None

    def _run_ready(self, me: threading.Thread) -> Optional[LoopClient]:
        # _ready and _next are the owner's: a hand-off happens only inside a
        # task (after _next moved on), and the new owner reads them once it
        # has taken the loop under _lock.
        while True:
            position = self._next
            ready = self._ready
            if position >= len(ready):
                self._ready, self._next = [], 0  # its keys hold readers: let ended ones go
                return None
            self._next = position + 1
            key, _ = ready[position]
            reader: Optional[LoopClient] = key.data
            if reader is None:
                _drain(self._wake_r)
                continue
            if self.bursting:
                self._run_detached(me, reader)
                return reader
            self.task_reader = reader  # _begin_task, inline: this runs once per message under load
            self.task_seq += 1
            self.in_task = True
            if self._sysmon.sleeping:
                self._sysmon.wake()
            try:
                reader.on_ready(me)
            except BaseException:  # noqa: BLE001 - a bug, or SystemExit from a listener: log it, keep the loop
                logger.exception("event loop %s: a connection failed", self.name)
            with self._lock:  # _end_task, inline
                if self._owner is not me:
                    return reader
                self.in_task = False
                self.task_reader = None

    def _begin_task(self, reader: LoopClient) -> None:
        self.task_reader = reader
        self.task_seq += 1
        self.in_task = True
        if self._sysmon.sleeping:  # read after in_task is set: see handoff.py
            self._sysmon.wake()

    def _end_task(self, me: threading.Thread) -> bool:
        """False when the loop was handed off during the task."""
        with self._lock:
            if self._owner is not me:
                return False
            self.in_task = False
            self.task_reader = None
            return True

    def _wake(self) -> None:
        try:
            send_small(self._wake_w, b"\0")  # the GIL kept (it cannot block): no switch to another thread here
        except OSError:  # closed (full returns 0: a wake-up is pending anyway)
            pass

    def _close(self) -> None:
        try:
            self._selector.close()
        except (OSError, ValueError):
            pass
        self._wake_r.close()
        self._wake_w.close()


def _drain(sock: socket.socket) -> None:
    """Read the wake-up bytes: one read that keeps the GIL, as a rule (a
    short read emptied the socket); no exception at the end."""
    try:
        while True:
            data = recv_nowait(sock, _DRAIN_SIZE)
            if not data or len(data) < _DRAIN_SIZE:
                return
    except OSError:
        pass
