"""EventEmitter: on/once/off/listeners/emit, decorator form, error routing."""

from __future__ import annotations

import logging
import threading

import pytest

from ws_multipath.emitter import EventEmitter


class Thing(EventEmitter):
    EVENTS = frozenset({"a", "error"})


def test_on_returns_the_listener_and_emit_calls_in_order():
    thing, calls = Thing(), []
    first = thing.on("a", lambda x: calls.append(("first", x)))
    thing.on("a", lambda x: calls.append(("second", x)))
    assert callable(first)
    assert thing.emit("a", 1) is True
    assert calls == [("first", 1), ("second", 1)]
    assert Thing().emit("a") is False


def test_decorator_form():
    thing, calls = Thing(), []

    @thing.on("a")
    def listener(x):
        calls.append(x)

    @thing.once("a")
    def once(x):
        calls.append(-x)

    thing.emit("a", 1)
    thing.emit("a", 2)
    assert calls == [1, -1, 2] and listener.__name__ == "listener"


def test_once_off_listeners_and_remove_all():
    thing, calls = Thing(), []
    fn = thing.once("a", calls.append)
    assert thing.listeners("a") == [fn]
    thing.off("a", fn)
    thing.emit("a", 1)
    assert calls == [] and thing.listener_count("a") == 0
    thing.on("a", calls.append)
    thing.remove_listener("a", calls.append)
    thing.on("a", calls.append)
    thing.remove_all_listeners()
    thing.emit("a", 2)
    assert calls == []


def test_unknown_event_and_non_callable_are_refused():
    with pytest.raises(ValueError, match="nope"):
        Thing().on("nope", print)
    with pytest.raises(TypeError, match="callable"):
        Thing().on("a", 5)  # type: ignore[arg-type]


def test_a_listener_may_remove_itself_during_emit():
    thing, calls = Thing(), []

    def remover(x):
        calls.append("remover")
        thing.off("a", remover)

    thing.on("a", remover)
    thing.on("a", lambda x: calls.append("other"))
    thing.emit("a", 0)
    thing.emit("a", 0)
    assert calls == ["remover", "other", "other"]


def test_errors_go_to_error_listeners_then_parent_then_log(caplog):
    parent, child = Thing(), Thing(error_parent=None)
    child._error_parent = parent
    got = []
    child.on("a", lambda: 1 / 0)
    child.on("a", lambda: got.append("still called"))
    parent.on("error", got.append)
    child.emit("a")
    assert isinstance(got[0], ZeroDivisionError) and got[1] == "still called"
    child.on("error", lambda exc: got.append("child"))
    child.emit("a")
    assert "child" in got
    orphan = Thing()
    orphan.on("a", lambda: {}["k"])
    with caplog.at_level(logging.ERROR, logger="ws_multipath"):
        orphan.emit("a")
    assert caplog.records and caplog.records[0].exc_info[0] is KeyError


def test_concurrent_on_and_emit_are_safe():
    thing, count = Thing(), []
    lock = threading.Lock()

    def add():
        for _ in range(200):
            thing.on("a", lambda: None)

    def fire():
        for _ in range(200):
            thing.emit("a")
            with lock:
                count.append(1)

    threads = [threading.Thread(target=add) for _ in range(4)] + [threading.Thread(target=fire) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert thing.listener_count("a") == 800 and len(count) == 800
