"""loop.py, handoff.py: open connections live in their handler's event loop,
and a listener that blocks loses the loop, not the other connections."""

from __future__ import annotations

import statistics
import threading
import time

from ws_multipath.sync.loop import MAX_SPARES

from .conftest import LEGACY, TIMEOUT, url, wait_until
from .faultkit import close_frame, collect_errors, connect, encode_frame, make_server, raw_upgrade, read_server_frame


def _loop_threads(path: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"ws_multipath-loop {path}"]


def _connection_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "ws_multipath-connection"]


def _blocking_echo(handler, release: threading.Event, entered: "threading.Semaphore") -> None:
    @handler.on("connection")
    def on_connection(ws, request):
        @ws.on("message")
        def on_message(data, is_binary):
            if data == "block":
                entered.release()
                assert release.wait(60)
            ws.send(data)


def _echo_latencies(client, count: int) -> list[float]:
    latencies = []
    for index in range(count):
        started = time.perf_counter()
        client.send(str(index))
        assert client.recv(timeout=TIMEOUT) == str(index)
        latencies.append(time.perf_counter() - started)
    return latencies


def test_idle_connections_cost_no_thread():
    """Once their 'connection' listeners returned, 40 open connections are
    run by one loop thread: no thread of their own."""
    with collect_errors() as errors, make_server() as server:
        handler = server.create_handler("/echo")
        handler.on("connection", lambda ws, request: ws.on("message", lambda data, is_binary: ws.send(data)))
        clients = [connect(url(server, "/echo"), open_timeout=TIMEOUT, **LEGACY) for _ in range(40)]
        try:
            for client in clients:
                client.send("x")
                assert client.recv(timeout=TIMEOUT) == "x"
            assert wait_until(lambda: not _connection_threads())  # the request threads ended
            assert len(_loop_threads("/echo")) == 1
            assert len(handler.clients) == 40
        finally:
            for client in clients:
                client.close()
        errors.assert_clean()


def test_blocked_listeners_do_not_hold_up_a_healthy_client_of_their_path():
    """Eight listeners block at once: the loop is handed off each time, and
    a healthy client of the same path gets its echoes within 50 ms of
    normal (late echoes counted, not a clock against a budget). Clients of
    another path never see a hand-off."""
    with collect_errors() as errors, make_server() as server:
        handler = server.create_handler("/work")
        other = server.create_handler("/other")
        other.on("connection", lambda ws, request: ws.on("message", lambda data, is_binary: ws.send(data)))
        release = threading.Event()
        entered = threading.Semaphore(0)
        _blocking_echo(handler, release, entered)
        healthy = connect(url(server, "/work"), open_timeout=TIMEOUT, **LEGACY)
        elsewhere = connect(url(server, "/other"), open_timeout=TIMEOUT, **LEGACY)
        blocked = [connect(url(server, "/work"), open_timeout=TIMEOUT, **LEGACY) for _ in range(8)]
        try:
            normal = _echo_latencies(healthy, 200)
            _echo_latencies(elsewhere, 20)
            bound = sorted(normal)[int(len(normal) * 0.99)] + 0.050
            for client in blocked:
                client.send("block")
            for _ in blocked:
                assert entered.acquire(timeout=TIMEOUT)
            during = _echo_latencies(healthy, 200)
            late = [latency for latency in during if latency > bound]
            print(f"normal p50 {statistics.median(normal) * 1e3:.2f} ms, during p50 {statistics.median(during) * 1e3:.2f} ms, "
                  f"{len(late)} of {len(during)} later than {bound * 1e3:.1f} ms")
            assert len(late) <= 2, late
            assert len(_loop_threads("/other")) == 1  # the other path's loop was never handed off
            assert len(_loop_threads("/work")) >= 9  # eight stuck listeners and the loop
            _echo_latencies(elsewhere, 20)
            release.set()
            for client in blocked:
                assert client.recv(timeout=TIMEOUT) == "block"
            # the threads go back: at most the loop and its spares are left
            assert wait_until(lambda: len(_loop_threads("/work")) <= 1 + MAX_SPARES)
            _echo_latencies(healthy, 10)
        finally:
            release.set()
            for client in [healthy, elsewhere, *blocked]:
                client.close()
        errors.assert_clean()


def test_a_blocked_connection_gets_its_pings_answered_and_its_messages_in_order():
    """The ping came in the same read as the message whose listener
    blocks: it is answered while the listener still runs, and the messages
    after it reach the listener once it returns, in order."""
    with collect_errors() as errors, make_server() as server:
        handler = server.create_handler("/work", ping_interval=None, max_queue=4)
        release = threading.Event()
        entered = threading.Semaphore(0)
        _blocking_echo(handler, release, entered)
        sock, rest = raw_upgrade(server.port, "/work")
        buffer = bytearray(rest)
        try:
            sock.sendall(encode_frame(0x1, b"block") + encode_frame(0x9, b"first") + b"".join(encode_frame(0x1, b"m%d" % i) for i in range(3)))
            assert entered.acquire(timeout=TIMEOUT)
            frame = read_server_frame(sock, buffer)
            assert (frame.opcode, frame.payload) == (0xA, b"first")
            sock.sendall(encode_frame(0x9, b"second"))  # a later read: the loop reads it at once
            frame = read_server_frame(sock, buffer)
            assert (frame.opcode, frame.payload) == (0xA, b"second")
            release.set()
            echoed = [read_server_frame(sock, buffer).payload for _ in range(4)]
            assert echoed == [b"block", b"m0", b"m1", b"m2"]
            sock.sendall(close_frame(1000))
            frame = read_server_frame(sock, buffer)
            assert frame.opcode == 0x8
        finally:
            release.set()
            sock.close()
        errors.assert_clean()


def test_a_close_frame_waits_for_the_answers_to_the_messages_before_it():
    """While the loop reads for a blocked listener, the client's close frame
    is acted on after the queued messages, so their answers go out first."""
    with collect_errors() as errors, make_server() as server:
        handler = server.create_handler("/work", ping_interval=None)
        release = threading.Event()
        entered = threading.Semaphore(0)
        _blocking_echo(handler, release, entered)
        sock, rest = raw_upgrade(server.port, "/work")
        buffer = bytearray(rest)
        try:
            sock.sendall(encode_frame(0x1, b"block"))
            assert entered.acquire(timeout=TIMEOUT)
            sock.sendall(encode_frame(0x9, b"sync"))
            assert read_server_frame(sock, buffer).opcode == 0xA  # the loop reads for it now
            sock.sendall(encode_frame(0x1, b"after") + close_frame(1000))
            release.set()
            frames = [read_server_frame(sock, buffer) for _ in range(3)]
            assert [(f.opcode, f.payload[:5]) for f in frames] == [(0x1, b"block"), (0x1, b"after"), (0x8, b"\x03\xe8")]
        finally:
            release.set()
            sock.close()
        errors.assert_clean()


def test_a_full_queue_behind_a_blocked_listener_stops_reading_and_loses_nothing():
    with collect_errors() as errors, make_server() as server:
        handler = server.create_handler("/work", ping_interval=None, max_queue=2)
        release = threading.Event()
        entered = threading.Semaphore(0)
        _blocking_echo(handler, release, entered)
        with connect(url(server, "/work"), open_timeout=TIMEOUT, **LEGACY) as client:
            client.send("block")
            assert entered.acquire(timeout=TIMEOUT)
            for index in range(50):
                client.send(f"m{index}")
            assert client.ping(b"alive?").wait(TIMEOUT)  # read ahead of the waiting messages
            release.set()
            assert client.recv(timeout=TIMEOUT) == "block"
            assert [client.recv(timeout=TIMEOUT) for _ in range(50)] == [f"m{index}" for index in range(50)]
        errors.assert_clean()


def test_pause_holds_messages_back_until_resume():
    with collect_errors() as errors, make_server() as server:
        handler = server.create_handler("/p", ping_interval=None)
        got: list = []
        arrived = threading.Event()
        connections: list = []

        @handler.on("connection")
        def on_connection(ws, request):
            connections.append(ws)

            @ws.on("message")
            def on_message(data, is_binary):
                got.append(data)
                arrived.set()
                if data == "pause":
                    ws.pause()

        with connect(url(server, "/p"), open_timeout=TIMEOUT, **LEGACY) as client:
            client.send("pause")
            assert arrived.wait(TIMEOUT)
            ws = connections[0]
            assert ws.is_paused
            for index in range(5):
                client.send(f"m{index}")
            pong = client.ping(b"unread")
            assert not pong.wait(0.3)  # nothing is read while paused: not even pings
            assert got == ["pause"]
            ws.resume()
            assert not ws.is_paused
            assert pong.wait(TIMEOUT)
            assert wait_until(lambda: len(got) == 6)
            assert got == ["pause", "m0", "m1", "m2", "m3", "m4"]
        errors.assert_clean()


def test_a_refused_create_handler_keeps_no_loop_descriptors():
    """A handler's loop opens an epoll and a wake-up socket pair when it is
    made; a duplicate path's handler, refused, must close them at once."""
    import os

    import pytest

    with make_server() as server:
        server.create_handler("/dup")
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(10):
            with pytest.raises(ValueError):
                server.create_handler("/dup")
        assert len(os.listdir("/proc/self/fd")) == before


def test_frames_that_came_with_the_handshake_keep_their_order_across_a_hand_off():
    """The client's frames arrive with its upgrade request: the first
    message's listener keeps the loop's thread until the loop is handed off,
    and the message and the close frame after it must still be answered in
    order. The thread that lost the loop went on acting on those frames: it
    answered the close frame at once, and the echo of the message before it,
    queued for that same thread, was lost (1 run in about 500 on a loaded
    machine, where a listener is descheduled past the hand-off). Which thread
    acts first after the hand-off is the scheduler's choice: this test takes
    that chance 20 times; stress runs (3,000 connections beside two busy
    processes) lost 1 to 7 echoes before the fix."""
    from .faultkit import parse_server_frames, raw_connect, read_until_eof, upgrade_request

    with collect_errors() as errors, make_server() as server:
        handler = server.create_handler("/work", ping_interval=None)
        failed = []

        @handler.on("connection")
        def on_connection(ws, request):
            @ws.on("message")
            def on_message(data, is_binary):
                if data == "block":
                    # until the sysmon hands the loop off (5-10 ms), then return at once: the
                    # race's bad side needs this thread back before the loop's next one acts
                    reader = ws._socket_reader
                    deadline = time.monotonic() + TIMEOUT
                    while reader.dispatcher is None and time.monotonic() < deadline:
                        pass
                    return
                try:
                    ws.send(data)
                except Exception as exc:  # noqa: BLE001 - recorded: the assertion says what went wrong
                    failed.append(repr(exc))

        for _ in range(20):
            sock = raw_connect(server.port)
            try:
                frames = encode_frame(1, b"block") + encode_frame(1, b"two") + close_frame(1000)
                sock.sendall(upgrade_request("/work", server.port) + frames)
                data, _ = read_until_eof(sock, TIMEOUT)
            finally:
                sock.close()
            head, _, rest = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101")
            got = [(frame.opcode, frame.payload) for frame in parse_server_frames(rest)[0]]
            assert got == [(1, b"two"), (8, b"\x03\xe8")], (got, failed)
        errors.assert_clean()


def test_pause_in_the_connection_listener_holds_back_what_came_with_the_handshake():
    """Frames sent with the upgrade request are parsed before the first
    read: ``pause()`` in the ``'connection'`` listener must hold them back
    too, as it holds back what is read later."""
    from .faultkit import raw_connect, upgrade_request, read_http_response

    with collect_errors() as errors, make_server() as server:
        handler = server.create_handler("/p", ping_interval=None)
        got: list = []
        arrived = threading.Event()
        connections: list = []

        @handler.on("connection")
        def on_connection(ws, request):
            connections.append(ws)
            ws.pause()

            @ws.on("message")
            def on_message(data, is_binary):
                got.append(data)
                arrived.set()

        sock = raw_connect(server.port)
        try:
            sock.sendall(upgrade_request("/p", server.port) + encode_frame(1, b"early") + encode_frame(9, b"ping"))
            status, head, rest = read_http_response(sock)
            assert status == 101, head
            assert not arrived.wait(0.3), got  # paused: nothing is delivered
            assert got == []
            buffer = bytearray(rest)
            connections[0].resume()
            assert arrived.wait(TIMEOUT)
            frame = read_server_frame(sock, buffer)
            assert (frame.opcode, frame.payload) == (10, b"ping")
            assert got == ["early"]
        finally:
            sock.close()
        errors.assert_clean()


class _CallsOnly:
    """A loop client that only has calls run for it (``loop.LoopClient``)."""

    def __init__(self, user_code: bool) -> None:
        self.in_listener = user_code

    def on_ready(self, me): pass  # noqa: E704
    def sync_on_loop(self, selector): pass  # noqa: E704
    def unregister_on_loop(self, selector): pass  # noqa: E704
    def hand_off(self, stuck): return None  # noqa: E704
    def run_dispatcher(self, me): pass  # noqa: E704


def test_calls_taken_with_a_call_that_blocks_run_on_the_next_owner():
    """A call in user code that blocks loses the loop; the calls the owner took
    in the same batch go to the thread that takes over, not after it returns
    (new connections' handshakes queued behind a blocking 'connection' listener)."""
    from ws_multipath.sync.handoff import Sysmon
    from ws_multipath.sync.loop import EventLoop

    sysmon = Sysmon()
    loop = EventLoop("calls", sysmon)
    sysmon.watch(loop)
    queued, release, ran = threading.Event(), threading.Event(), threading.Event()
    try:
        loop.call_soon(_CallsOnly(False), lambda: queued.wait(TIMEOUT))  # library code: keeps the loop, never handed off
        loop.call_soon(_CallsOnly(True), lambda: release.wait(TIMEOUT))  # taken in one batch with the next
        loop.call_soon(_CallsOnly(False), ran.set)
        queued.set()
        assert ran.wait(TIMEOUT / 2)
        assert not release.is_set()
    finally:
        release.set()
        queued.set()
        loop.stop()
        sysmon.stop()
