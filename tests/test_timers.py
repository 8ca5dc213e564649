"""Timers: one thread runs every deadline in order; cancel (which frees the callback at once); stop."""

from __future__ import annotations

import threading
import time
import weakref

from ws_multipath.sync.timers import Timers


def test_callbacks_run_in_deadline_order_and_cancelled_ones_do_not():
    timers, order, done = Timers(), [], threading.Event()
    timers.call_later(0.06, lambda: (order.append(3), done.set()))
    timers.call_later(0.02, lambda: order.append(1))
    cancelled = timers.call_later(0.01, lambda: order.append("cancelled"))
    timers.call_later(0.04, lambda: order.append(2))
    cancelled.cancel()
    assert done.wait(5)
    assert order == [1, 2, 3]
    timers.stop()


def test_a_raising_callback_does_not_stop_the_thread(caplog):
    timers, done = Timers(), threading.Event()
    timers.call_later(0, lambda: 1 / 0)
    timers.call_later(0.01, done.set)
    assert done.wait(5)
    timers.stop()


def test_stop_ends_the_thread_and_later_timers_never_run():
    timers = Timers()
    ran = threading.Event()
    timers.call_later(0, lambda: None)
    thread = timers._thread
    timers.stop()
    assert thread is not None and not thread.is_alive()
    timer = timers.call_later(0, ran.set)
    assert timer.cancelled and not ran.wait(0.05)


class _Holder:
    """Stands for what a callback keeps alive (a connection, its buffers)."""

    def fire(self) -> None:
        pass


def test_a_cancelled_timer_lets_go_of_its_callback_at_once():
    timers = Timers()
    try:
        holder = _Holder()
        gone = weakref.ref(holder)
        timer = timers.call_later(3600, holder.fire)
        del holder
        assert gone() is not None  # the pending timer keeps it
        timer.cancel()
        assert gone() is None  # not an hour from now
        assert len(timers) == 0
    finally:
        timers.stop()


def test_many_cancelled_timers_leave_the_pending_ones_in_order():
    timers, order, done = Timers(), [], threading.Event()
    try:
        holders = [_Holder() for _ in range(1000)]
        refs = [weakref.ref(h) for h in holders]
        far = [timers.call_later(3600 + i, h.fire) for i, h in enumerate(holders)]
        timers.call_later(0.03, lambda: (order.append(2), done.set()))
        timers.call_later(0.01, lambda: order.append(1))
        del holders
        for timer in far:
            timer.cancel()  # most of the heap: it is rebuilt without them
        assert all(ref() is None for ref in refs)
        assert len(timers) in (0, 1, 2)  # the two short ones, unless they already ran
        assert done.wait(5)
        assert order == [1, 2]
        assert len(timers) == 0
        third = threading.Event()
        timers.call_later(0, lambda: (order.append(3), third.set()))  # the heap still works after the rebuild
        assert third.wait(5) and order == [1, 2, 3]
    finally:
        timers.stop()


def test_cancelling_after_it_ran_or_after_stop_is_harmless():
    timers, ran = Timers(), threading.Event()
    timer = timers.call_later(0, ran.set)
    assert ran.wait(5)
    timer.cancel()
    assert len(timers) == 0
    later = timers.call_later(3600, ran.set)
    timers.stop()
    later.cancel()
    assert len(timers) == 0



class _CountingCondition(threading.Condition):
    """The timers' condition, counting the wake-ups that adding timers asks for."""

    notified = 0

    def notify(self, n: int = 1) -> None:
        self.notified += 1
        super().notify(n)


def test_timers_set_and_cancelled_at_once_do_not_wake_the_thread_each_time():
    """Each new connection sets and cancels a 1 s watchdog and its handshake
    deadline: the sleeping timer thread is not woken for each (it was,
    twice per connection, and it then competed for the GIL)."""
    timers = Timers()
    condition = timers._cond = _CountingCondition(threading.Lock())
    far = timers.call_later(20, lambda: None)  # starts the thread; it sleeps
    for _ in range(200):
        deadline = timers.call_later(10, lambda: None)
        watchdog = timers.call_later(1.0, lambda: None)
        watchdog.cancel()
        deadline.cancel()
    assert condition.notified <= 2, condition.notified
    far.cancel()
    timers.stop()


def test_a_timer_due_before_the_thread_wakes_still_runs_on_time():
    timers, ran = Timers(), threading.Event()
    timers.call_later(20, lambda: None)
    timers.call_later(0.5, lambda: None)  # the thread sleeps until then
    started = time.monotonic()
    timers.call_later(0.05, ran.set)
    assert ran.wait(5)
    assert time.monotonic() - started < 0.4
    timers.stop()
