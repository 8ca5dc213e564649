"""transport.py and flusher.py: the outbox cap holds for every queued frame,
and clients that stop reading hold no thread, so nobody else waits on them."""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time

import pytest

from ws_multipath.sync.transport import MAX_OUTBOX_BYTES

from .faultkit import (
    HOST,
    collect_errors,
    connect,
    encode_frame,
    make_server,
    raw_connect,
    raw_upgrade,
    read_http_response,
    thread_names,
    tls_contexts,
    upgrade_request,
    wait_until,
)
from .tls_client import tls_connect

MiB = 1 << 20


def stalled_client(port: int, path: str, headers: tuple = (), tls: "ssl.SSLContext | None" = None) -> socket.socket:
    """A client that completes the handshake, then never reads again."""
    sock = raw_connect(port, rcvbuf=4096)
    if tls is not None:
        sock = tls.wrap_socket(sock, server_hostname=HOST)
    sock.sendall(upgrade_request(path, port, headers=headers))
    status, head, _ = read_http_response(sock)
    assert status == 101, head
    return sock


class Closes:
    """The ``'close'`` events of a handler's connections: ``codes`` holds the
    code each connection was closed with by the server (``sent_close_code``),
    ``events`` the code its ``'close'`` event reported."""

    def __init__(self, handler) -> None:
        self.codes: list[int] = []
        self.events: list[int] = []
        self.cond = threading.Condition()
        handler.on("connection", lambda ws, request: ws.on("close", lambda code, reason: self._on_close(ws, code)))

    def _on_close(self, ws, code) -> None:
        with self.cond:
            self.codes.append(ws.sent_close_code)
            self.events.append(code)
            self.cond.notify_all()

    def wait(self, count: int, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: len(self.codes) >= count, timeout)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("deflate", [False, True], ids=["plain", "deflate"])
@pytest.mark.parametrize("heartbeat", [None, 0.5], ids=["no-heartbeat", "heartbeat"])
def test_a_client_that_never_reads_broadcasts_is_dropped_with_1008(deflate, heartbeat):
    """Issue 8.2: compressed frames wait as encoders, and count all the same."""
    message = os.urandom(MiB)  # incompressible: compressed frames are as big
    with collect_errors() as errors, make_server() as server:
        handler = server.create_handler("/feed", per_message_deflate=deflate, ping_interval=heartbeat, ping_timeout=60, close_timeout=1)
        closes = Closes(handler)
        headers = (("Sec-WebSocket-Extensions", "permessage-deflate"),) if deflate else ()
        sock = stalled_client(server.port, "/feed", headers)
        try:
            sent = 0
            while sent < 3 * MAX_OUTBOX_BYTES // MiB and not closes.codes:
                sent += handler.broadcast(message)
            assert closes.wait(1, 10), f"still open after {sent} MiB broadcast"
            assert (closes.codes, closes.events) == ([1008], [1006])
            print(f"1 MiB broadcasts deflate={deflate} heartbeat={heartbeat}: 1008 after {sent} MiB")
            assert sent <= MAX_OUTBOX_BYTES // MiB + 16, sent  # the cap, plus what the kernel holds
        finally:
            sock.close()
        errors.assert_clean()


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.timeout(240)  # 20-25 s each on a loaded 2-core machine, and over 60 s once
@pytest.mark.parametrize("deflate, message", [(False, b"x"), (True, b""), (True, "é")], ids=["1-byte", "deflate-empty", "deflate-text"])
def test_a_flood_of_tiny_broadcasts_meets_the_same_cap(deflate, message):
    """Found by the attack pass: each queued entry costs memory beyond its
    bytes, and an empty compressed message counted nothing at all."""
    with collect_errors() as errors, make_server() as server:
        handler = server.create_handler("/feed", per_message_deflate=deflate, ping_interval=None, close_timeout=1)
        closes = Closes(handler)
        headers = (("Sec-WebSocket-Extensions", "permessage-deflate"),) if deflate else ()
        sock = stalled_client(server.port, "/feed", headers)
        try:
            baseline = _rss()
            sent = 0
            while sent < 2_000_000 and not closes.codes:
                sent += handler.broadcast(message)
            grown = (_rss() - baseline) / MiB
            print(f"tiny broadcasts {message!r} deflate={deflate}: dropped with {closes.codes} after {sent}, RSS +{grown:.1f} MiB")
            assert closes.wait(1, 10), f"still open after {sent} broadcasts"
            assert (closes.codes, closes.events) == ([1008], [1006])
            assert grown < 64, f"RSS grew {grown:.0f} MiB for {sent} tiny broadcasts"
        finally:
            sock.close()
        errors.assert_clean()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("use_tls", [False, True], ids=["ws", "wss"])
def test_stalled_clients_do_not_delay_a_healthy_one(use_tls, certificate):
    """Issue 8.5: 16 clients with full buffers, and a broadcast still
    reaches a healthy client at once."""
    server_tls, client_tls = tls_contexts(*certificate) if use_tls else (None, None)
    with collect_errors() as errors, make_server(ssl_context=server_tls) as server:
        handler = server.create_handler("/b", ping_interval=None, write_timeout=60, close_timeout=1)
        stalled = [stalled_client(server.port, "/b", tls=client_tls) for _ in range(16)]
        scheme = "wss" if use_tls else "ws"
        try:
            with (tls_connect(f"wss://{HOST}:{server.port}/b", client_tls, max_size=None) if use_tls else connect(f"ws://{HOST}:{server.port}/b", max_size=None)) as healthy:
                assert len(handler.clients) == 17
                for index in range(12):  # more than the kernel holds, less than the outbox cap
                    assert handler.broadcast(bytes([index]) * MiB) == 17
                    assert healthy.recv(timeout=30)[:1] == bytes([index])
                assert thread_names()["ws_multipath-writer"] == 0
                started = time.monotonic()
                handler.broadcast("hi")
                assert healthy.recv(timeout=30) == "hi"
                delay = time.monotonic() - started
                assert delay < 1.0, f"the healthy client waited {delay:.2f} s"  # before: about 10 s (write_timeout); unloaded: < 1 ms
                assert len(handler.clients) == 17  # nobody dropped: the stalled ones are under the cap
        finally:
            for sock in stalled:
                sock.close()
        errors.assert_clean()


# -- coalescing: the answers to messages read together leave together ----------

BATCH = 32


def _segments_out(sock: socket.socket) -> int:
    """``tcpi_segs_out`` of Linux's ``struct tcp_info`` (offset 136, since 4.2)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return int.from_bytes(info[136:140], "little")


def _read_frames(sock: socket.socket, count: int, timeout: float = 5.0) -> list[bytes]:
    """``count`` unmasked server frames' payloads (7-bit lengths only)."""
    buffer, payloads = b"", []
    sock.settimeout(timeout)
    while len(payloads) < count:
        while len(buffer) >= 2 and len(buffer) >= 2 + (buffer[1] & 0x7F) and len(payloads) < count:
            size = buffer[1] & 0x7F
            payloads.append(buffer[2 : 2 + size])
            buffer = buffer[2 + size :]
        if len(payloads) < count:
            chunk = sock.recv(65536)
            assert chunk, "the server closed the connection"
            buffer += chunk
    return payloads


def _echo_server(server, style: str, gate: "threading.Event | None" = None):
    """``/echo`` answering each message; with ``gate``, the answer to
    ``"wait"`` is held until the gate opens (a listener busy mid-batch)."""
    handler = server.create_handler(path="/echo")
    connections = []

    def answer(ws, data):
        if data == "wait" and gate is not None:
            assert gate.wait(10)
        ws.send(data)

    @handler.on("connection")
    def on_connection(ws, request):
        connections.append(ws)
        if style == "callback":
            ws.on("message", lambda data, is_binary: answer(ws, data))
        else:
            for message in ws:
                answer(ws, message)

    return connections


@pytest.mark.skipif(not hasattr(socket, "TCP_INFO"), reason="TCP_INFO is Linux's")
@pytest.mark.parametrize("style", ["callback", "iterator"])
def test_answers_to_pipelined_messages_leave_in_fewer_segments(server, style):
    connections = _echo_server(server, style)
    client, rest = raw_upgrade(server.port, "/echo")
    assert rest == b""
    with client:
        wait_until(lambda: connections, 5, message="the connection")
        server_sock = connections[0]._transport.sock
        before = _segments_out(server_sock)
        batch = [f"m{i}" for i in range(BATCH)]
        client.sendall(b"".join(encode_frame(0x1, m.encode()) for m in batch))  # one write: read together
        assert _read_frames(client, BATCH) == [m.encode() for m in batch]  # all, in order
        wait_until(lambda: not connections[0]._transport.corked, 5, message="nothing held")
        sent = _segments_out(server_sock) - before
    # the batch is one segment, read by one recv: its answers go in one or two
    # (without MSG_MORE, Linux's autocorking alone sent 12 here, TCP_NODELAY set)
    assert sent <= 4, f"{sent} segments for {BATCH} answers"


@pytest.mark.parametrize("style", ["callback", "iterator"])
def test_an_answer_is_not_held_while_the_next_message_is_busy(server, style):
    """The first answer goes with MSG_MORE (a second message was read with
    it); its listener then blocks on the second. The flusher pushes the
    first within a few milliseconds, not the kernel's 200 ms probe."""
    gate = threading.Event()
    connections = _echo_server(server, style, gate)
    client, _ = raw_upgrade(server.port, "/echo")
    try:
        wait_until(lambda: connections, 5, message="the connection")
        rounds = []
        for _ in range(5):
            started = time.perf_counter()
            client.sendall(encode_frame(0x1, b"first") + encode_frame(0x1, b"wait"))
            assert _read_frames(client, 1) == [b"first"]
            rounds.append(time.perf_counter() - started)
            gate.set()
            assert _read_frames(client, 1) == [b"wait"]
            gate.clear()
        # pushed after 2-4 ms by the flusher; the kernel would hold it >= 200 ms
        assert sorted(rounds)[2] < 0.1, f"first answers took (s): {rounds}"
    finally:
        gate.set()
        client.close()


def test_connections_that_end_while_corked_leave_the_flusher(server):
    """The answer to "a" goes with MSG_MORE ("b" was read with it); the
    connection ends before the flusher's tick. The flusher must forget it
    (it held the connection and woke every 2 ms for good)."""
    handler = server.create_handler(path="/once")

    @handler.on("connection")
    def on_connection(ws, request):
        ws.send(ws.receive())

    answers = 0
    for _ in range(20):
        client, _ = raw_upgrade(server.port, "/once")
        with client:
            client.sendall(encode_frame(0x1, b"a") + encode_frame(0x1, b"b") + encode_frame(0x8, b"\x03\xe8"))
            client.shutdown(socket.SHUT_WR)
            answers += _read_frames(client, 1) == [b"a"]
    assert answers == 20
    flusher = server._flusher
    assert wait_until(lambda: not flusher._corked and not handler.clients, 5, message="no connection left in the flusher")
    ticks = flusher.ticks
    time.sleep(0.05)  # a window to count ticks in (the flusher must sleep through it), not synchronisation
    assert flusher.ticks == ticks
