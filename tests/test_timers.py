"""Timers: one thread runs every deadline in order; cancel; stop."""

from __future__ import annotations

import threading

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
