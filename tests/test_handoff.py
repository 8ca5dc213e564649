"""handoff.py: the sysmon hands off a loop whose task waits, not one whose
task runs (for a bounded time). The blocking side is in test_loop.py."""

from __future__ import annotations

import random
import threading

import pytest

from ws_multipath.sync import handoff

from .conftest import LEGACY, TIMEOUT, url
from .faultkit import collect_errors, connect, make_server

pytestmark = pytest.mark.skipif(handoff.cpu_mark(threading.current_thread()) is None,
                                reason="the platform does not tell a thread's CPU time")


def _text(size: int) -> str:
    """Words that compress like real text (about 4:1), not like repeated bytes."""
    rng = random.Random(12345)
    vocabulary = ("the of and to in is was for on that with as by at from message server client socket thread frame "
                  "buffer kernel deflate window stream event listener request response").split()
    words = []
    length = 0
    while length < size:
        word = rng.choice(vocabulary)
        words.append(word)
        length += len(word) + 1
    return " ".join(words)[:size]


def test_echoing_large_compressed_messages_costs_no_hand_off():
    """A listener that echoes 512 KiB text with permessage-deflate on keeps
    its loop's thread 10 to 20 ms, in zlib (which lets the GIL go): past
    the 5-10 ms after which a waiting task loses the loop. It runs, so it
    keeps the loop: before, each message was handed off (a thread switch,
    and on a busy machine a thread more each time)."""
    with collect_errors() as errors, make_server() as server:
        handler = server.create_handler("/z", per_message_deflate=True, max_payload=2**20, ping_interval=None)
        handler.on("connection", lambda ws, request: ws.on("message", lambda data, is_binary: ws.send(data)))
        message = _text(512 * 1024)
        with connect(url(server, "/z"), open_timeout=TIMEOUT, compression="deflate", max_size=2**20, **LEGACY) as client:
            for _ in range(10):
                client.send(message)
                assert client.recv(timeout=TIMEOUT) == message
        assert server._sysmon.hand_offs == 0
        assert all(loop.detached_runs == 0 for loop in handler._loops)
        errors.assert_clean()


def test_a_listener_that_runs_on_is_handed_off_all_the_same():
    """Running keeps the loop for a few samples only: a listener that
    computes for half a second loses it, and the other clients of its path
    get their echoes meanwhile."""
    with collect_errors() as errors, make_server() as server:
        handler = server.create_handler("/cpu", ping_interval=None)
        computing = threading.Event()
        done = threading.Event()

        @handler.on("connection")
        def on_connection(ws, request):
            @ws.on("message")
            def on_message(data, is_binary):
                if data == "compute":
                    computing.set()
                    while not done.is_set():  # runs (holds the GIL in turns) until the other client got its echo
                        sum(range(1000))
                ws.send(data)

        with connect(url(server, "/cpu"), open_timeout=TIMEOUT, **LEGACY) as busy, \
                connect(url(server, "/cpu"), open_timeout=TIMEOUT, **LEGACY) as other:
            busy.send("compute")
            assert computing.wait(TIMEOUT)
            other.send("hello")
            try:
                assert other.recv(timeout=TIMEOUT) == "hello"  # only once the loop was handed off
            finally:
                done.set()
            assert busy.recv(timeout=TIMEOUT) == "compute"
        assert server._sysmon.hand_offs >= 1
        errors.assert_clean()
