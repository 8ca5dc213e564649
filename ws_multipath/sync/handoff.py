"""The hand-off: the sysmon, one thread per server that notices a loop
stuck in user code, and ``HandOffs``, the loop's side of handing itself to
another thread.

A loop runs its connections' listeners inline (``loop.py``), so a listener
that blocks would hold up every other connection of the loop. The sysmon
samples each busy loop every ``PERIOD`` seconds; a loop seen in the same
task at two samples in a row (so for ``PERIOD`` to ``2 * PERIOD``) is handed
off: its stuck thread keeps the task, and another thread takes over the
selector and the other connections (``EventLoop.check_stuck``). If the stuck
task was inside one of its connection's listeners, that connection's
reading moves too: the loop goes on answering its pings while its later
messages queue for the stuck thread (``reader.SocketReader.hand_off``).

A task whose thread *ran* through the period (it used at least
``_RUNNING_SHARE`` of a CPU, or waited for one in the kernel's run queue:
compressing a large message on a busy machine, Python code at work) is
not stuck yet: it keeps the loop for up to ``_RUNNING_SAMPLES``
samples more, about 25 ms in all, before it is handed off anyway. The
hand-off rescues the loop from a task that waits (a lock, a socket, a
sleep); from one that computes it gains little on a busy machine and costs
a thread switch per task: with permessage-deflate on, a 64 KiB echo (1.5 ms
of zlib) that the machine's load stretched past 5 ms was handed off, and
the threads that followed stretched the next ones (90 to 200 threads,
a third slower). Go's sysmon makes the same difference: a thread in a
system call loses its processor within 20 us to 10 ms, a goroutine that
runs is preempted after 10 ms.

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

import os
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

from ..log import logger

if TYPE_CHECKING:
    from .loop import EventLoop, LoopClient

__all__ = ["Sysmon", "HandOffs", "PERIOD"]

#: Seconds between two samples of a busy loop: a listener that keeps its
#: loop's thread from 5 to 10 ms loses the loop.
PERIOD = 0.005

#: Sysmon samples without a stuck task that end a burst (``EventLoop.bursting``)...
_BURST_QUIET = 20
#: ... or tasks run off the loop since the last hand-off that ended before
#: a sample found them stuck (two samples in the task: what hands off an
#: inline task). A task of a few ms is seen by one sample or another in
#: most cases: counting only those no sample saw, a burst of such tasks
#: (compressing 64 KiB messages on a busy machine) went on for as long as
#: the load, a thread switch per message.
_BURST_QUICK = 8

#: A task whose thread used at least this share of a CPU since the last
#: sample is running, not stuck...
_RUNNING_SHARE = 0.25
#: ... for at most this many samples in a row; then it is handed off anyway.
_RUNNING_SAMPLES = 4

_SCHEDSTAT = os.path.exists("/proc/thread-self/schedstat")  # Linux
_thread_clock = getattr(time, "pthread_getcpuclockid", None)  # elsewhere the CPU time alone; not on Windows or macOS


def cpu_mark(thread: Optional[threading.Thread]) -> Optional[tuple[float, float]]:
    """The seconds ``thread`` has run or waited to run (Linux: its
    ``schedstat``, time on a CPU plus time in the run queue; elsewhere its
    CPU time) and the time now, or None where the platform cannot tell.
    A thread that waits for a lock, a socket or the GIL sleeps: that time
    is in neither. ``thread`` must be alive (the caller holds the loop's
    lock, under which neither its owner nor a detached thread ends)."""
    if thread is None or thread.ident is None:
        return None
    try:
        if _SCHEDSTAT:
            with open(f"/proc/self/task/{thread.native_id}/schedstat", "rb") as stat:
                on_cpu, queued = stat.read().split()[:2]
            return (int(on_cpu) + int(queued)) / 1e9, time.monotonic()
        if _thread_clock is not None:
            return time.clock_gettime(_thread_clock(thread.ident)), time.monotonic()
    except (OSError, ValueError, OverflowError):
        pass
    return None


def ran(before: Optional[tuple[float, float]], after: Optional[tuple[float, float]]) -> bool:
    """True if the thread ran or waited to (``_RUNNING_SHARE`` of the time)
    between two ``cpu_mark``s."""
    if before is None or after is None:
        return False
    return after[0] - before[0] >= _RUNNING_SHARE * (after[1] - before[1])


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


class HandOffs:
    """The hand-off side of ``EventLoop`` (a mixin; its state is the loop's,
    guarded by the loop's ``_lock``): the sysmon's verdict on a sampled
    loop (``check_stuck``), and, while a burst of blocking listeners lasts
    (``bursting``), tasks run off the loop (``_run_detached``): the thread
    that found the task runs it after giving the loop to another, as in
    Jetty's execute-produce-consume mode, so that listeners blocking one
    after another do not hold up the tasks behind them by a sample each; a
    task that runs user code from a call, or after its connection was read
    off the loop, goes off the loop itself (``run_off_loop``)."""

    if TYPE_CHECKING:  # EventLoop's fields and methods used here
        name: str
        _lock: threading.Lock
        _spare_cond: threading.Condition
        _calls: list[Any]
        _pending: Optional[list[Any]]
        _pending_next: int
        _owner: Optional[threading.Thread]
        _stopped: bool
        _selecting: bool
        _woken: bool
        _spares: int
        _wanted: int
        task_seq: int
        in_task: bool
        task_reader: Optional["LoopClient"]
        sampled_seq: int
        sampled_mark: Optional[tuple[float, float]]
        running_samples: int
        bursting: bool
        _quiet: int
        _quick: int
        detached_runs: int
        _detached: dict[threading.Thread, list[Any]]

        def _start_thread(self) -> None: ...
        def _wake(self) -> None: ...
    else:
        __slots__ = ()

    def check_stuck(self) -> Optional["LoopClient"]:
        """The sysmon's sample: if the owner has been in the same task since
        the last sample, and did not run through it (``ran``; then for at
        most ``_RUNNING_SAMPLES``), hand the loop off and return the task's
        reader; a task running off the loop (a burst, below) seen at two
        samples, by the same rule, has its connection's reading moved to
        the loop."""
        with self._lock:
            if self._stopped:
                return None
            woken = self._check_detached()
            if not self.in_task:
                self.sampled_seq = -1
                self._after_sample(woken)
                return None
            if self.task_seq != self.sampled_seq or not self._in_user_code(self.task_reader):
                if self.task_seq != self.sampled_seq:
                    self.running_samples = 0
                self.sampled_seq = self.task_seq
                self.sampled_mark = cpu_mark(self._owner)
                self._after_sample(woken)
                return None
            mark = cpu_mark(self._owner)
            if self.running_samples < _RUNNING_SAMPLES and ran(self.sampled_mark, mark):
                self.running_samples += 1
                self.sampled_mark = mark
                self._after_sample(woken)
                return None
            stuck, reader = self._owner, self.task_reader
            self.sampled_seq = -1
            self.in_task = False  # the owner's task ends off the loop
            self.task_reader = None
            self._owner = None
            pending = self._pending
            if pending is not None:  # stuck in a call: the calls after it are the new owner's
                self._calls[:0] = pending[self._pending_next:]
                self._pending = None
            if reader is not None and stuck is not None:
                call = reader.hand_off(stuck)
                if call is not None:  # the connection's own events, from where the stuck thread left them
                    self._calls.append((reader, call))
            self.bursting, self._quiet, self._quick = True, 0, 0
            self._wanted += 1
            spare = self._spares > 0
            if spare:
                self._spare_cond.notify()
        if not spare:
            self._start_thread()
        return reader

    def _check_detached(self) -> bool:
        """Under ``_lock``: move the reading of connections whose detached
        task is stuck to the loop; True if the loop must be woken for it.
        A task of ``run_off_loop`` (``entry[4]``) has nothing to move: once
        stuck it is told (``hand_off``) and no longer watched, so that a
        handshake that blocks for as long as its connection lives keeps
        neither the burst going nor the sysmon awake."""
        woken = False
        for thread, entry in list(self._detached.items()):
            if not entry[1]:
                entry[1] = True  # seen once: stuck if still there at the next sample
                entry[2] = cpu_mark(thread)
                continue
            mark = cpu_mark(thread)
            if entry[3] < _RUNNING_SAMPLES and ran(entry[2], mark):
                entry[2], entry[3] = mark, entry[3] + 1  # it runs: not stuck yet
                continue
            call = entry[0].hand_off(thread)
            if call is not None or entry[4]:  # for good: nothing moves back, stop watching it
                del self._detached[thread]
                self.bursting, self._quiet, self._quick = True, 0, 0
            if call is not None:
                self._calls.append((entry[0], call))
                woken = True
        return woken

    @staticmethod
    def _in_user_code(reader: Optional["LoopClient"]) -> bool:
        """Only a task inside a listener is handed off: the library's own
        code on a loop never blocks, and a thread that merely waits for the
        GIL (other threads ran Python meanwhile) gains nothing from it."""
        return reader is not None and reader.in_listener

    def _after_sample(self, woken: bool) -> None:
        """Under ``_lock``: count quiet samples (a burst ends after
        ``_BURST_QUIET``); wake the selector for calls just queued."""
        if not woken and not self._detached:
            self._quiet += 1
            if self._quiet >= _BURST_QUIET:
                self.bursting = False
        if woken and self._selecting and not self._woken:
            self._woken = True
            self._wake()
        return None

    def _run_detached(self, me: threading.Thread, reader: "LoopClient") -> None:
        """During a burst of blocking listeners: give the loop to another
        thread first, then run the task (Jetty's execute-produce-consume:
        the thread that found the task runs it, another goes on selecting),
        so that listeners blocking one after another do not hold up the
        tasks behind them by a sample each. The sysmon still watches it."""
        self._give_away(me, reader, False)
        try:
            reader.on_ready(me)
        except BaseException:  # noqa: BLE001 - a bug, or SystemExit from a listener: log it
            logger.exception("event loop %s: a connection failed", self.name)
        finally:
            self._detached_done(me)

    def run_off_loop(self, reader: "LoopClient", fn: Callable[[], None]) -> None:
        """Inside a task on the owner: run ``fn``, the rest of the task, off
        the loop if a burst lasts (another thread takes the loop first, the
        calls after this one included, as in ``_run_detached``), else
        inline. For a task that runs user code that may block, which a
        burst would otherwise not keep from holding up the loop by a sample
        each: the handshake of a head awaited in the head loop
        (``http/head_waiting.py``), which runs as a call or after its
        connection was read off the loop."""
        me = threading.current_thread()
        if not self._give_away(me, reader, True):
            fn()
            return
        try:
            fn()
        finally:
            self._detached_done(me)

    def _give_away(self, me: threading.Thread, reader: "LoopClient", final: bool) -> bool:
        """The owner ``me`` gives the loop to a spare or a new thread and
        goes on with ``reader``'s task off the loop (``_detached``; ``final``:
        for good, nothing of it can move back, see ``_check_detached``, and
        only while a burst lasts and ``me`` still owns the loop: the sysmon
        may have taken it in the same task). False when it did not."""
        with self._lock:
            if final and not (self.bursting and self._owner is me and not self._stopped):
                return False
            self._owner = None
            self.in_task = False
            self.task_reader = None
            pending = self._pending
            if pending is not None:  # inside a call: the calls after it are the new owner's
                self._calls[:0] = pending[self._pending_next:]
                self._pending = None
            self._wanted += 1
            self._detached[me] = [reader, False, None, 0, final]
            spare = self._spares > 0
            if spare:
                self._spare_cond.notify()
        if not spare:
            self._start_thread()
        return True

    def _detached_done(self, me: threading.Thread) -> None:
        with self._lock:
            entry = self._detached.pop(me, None)
            self.detached_runs += 1
            if entry is not None:  # not handed off: it would not have been inline either
                self._quick += 1
                if self._quick >= _BURST_QUICK:
                    self.bursting = False
