"""Issue 18.2: ``write_timeout`` bounds the time a write waits *without
progress*, not the time the whole write takes, for ``ws.send()``, the outbox
(broadcasts) and the WSGI app's response alike.

Real sockets on 127.0.0.1; the clients are raw sockets with a small receive
buffer that read at a pace of their own (the pauses are the behaviour under
test, not a synchronisation). Every loop is bounded in time.
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import struct
import threading
import time

import pytest

from ws_multipath import ConnectionClosed
from ws_multipath.sync.sockets import MIN_PROGRESS

from .faultkit import (
    HOST,
    collect_errors,
    make_server,
    raw_connect,
    raw_upgrade,
    read_http_response,
    tls_contexts,
    upgrade_request,
)

KiB = 1024
MiB = 1024 * KiB
WRITE_TIMEOUT = 0.3


class PacedReader:
    """Reads ``chunk`` bytes, then pauses ``pause`` seconds, until ``total``
    bytes came, EOF, or ``limit`` seconds passed (on its own thread)."""

    def __init__(self, sock: socket.socket, total: int, chunk: int, pause: float, limit: float, first: bytes = b"") -> None:
        self.sock, self.total, self.chunk, self.pause, self.limit = sock, total, chunk, pause, limit
        self.data = bytearray(first)
        self.done = threading.Event()
        self.how = ""
        self.elapsed = 0.0
        self.thread = threading.Thread(target=self._run, name="paced-reader", daemon=True)

    def start(self) -> "PacedReader":
        self.thread.start()
        return self

    def _run(self) -> None:
        started = time.monotonic()
        deadline = started + self.limit
        try:
            while len(self.data) < self.total:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.how = "limit"
                    return
                self.sock.settimeout(remaining)
                chunk = self.sock.recv(self.chunk)
                if not chunk:
                    self.how = "eof"
                    return
                self.data += chunk
                if self.pause:
                    time.sleep(self.pause)  # the client's pace
            self.how = "complete"
        except OSError as exc:
            self.how = f"{type(exc).__name__}"
        finally:
            self.elapsed = time.monotonic() - started
            self.done.set()


def frame_length(data: bytes) -> int:
    """The whole length (header included) of the unmasked server frame that ``data`` starts."""
    length = data[1] & 0x7F
    if length == 126:
        return 4 + struct.unpack("!H", data[2:4])[0]
    if length == 127:
        return 10 + struct.unpack("!Q", data[2:10])[0]
    return 2 + length


def sender_handler(server, path: str, **options):
    """A handler that sends what the test puts in ``outgoing`` on a thread of its own,
    and reports each outcome (None, or the exception) in ``outcomes``."""
    handler = server.create_handler(path, write_timeout=WRITE_TIMEOUT, ping_interval=None, close_timeout=1, **options)
    outgoing: queue.Queue = queue.Queue()
    outcomes: queue.Queue = queue.Queue()

    @handler.on("connection")
    def on_connection(ws, request):
        def send():
            while True:
                item = outgoing.get()
                if item is None:
                    return
                started = time.monotonic()
                try:
                    ws.send(item)
                except Exception as exc:  # noqa: BLE001 - examined by the test
                    outcomes.put((exc, time.monotonic() - started))
                    return
                outcomes.put((None, time.monotonic() - started))

        threading.Thread(target=send, name="test-sender", daemon=True).start()

    return handler, outgoing, outcomes


@pytest.mark.timeout(60)
@pytest.mark.parametrize("use_tls, size", [(False, 8 * MiB), (True, 8 * MiB)], ids=["ws", "wss"])
def test_a_steady_slow_reader_gets_a_message_longer_than_write_timeout(use_tls, size, certificate):
    """Before: the send failed with 1011 after exactly ``write_timeout``
    (total time), however steadily the client read. (The kernel's send
    buffer holds megabytes on loopback: ``send()`` returns once it took the
    rest, a few MiB before the client has read it all.)"""
    ssl_kwargs = {}
    client_tls = None
    if use_tls:
        server_tls, client_tls = tls_contexts(*certificate)
        ssl_kwargs = {"ssl_context": server_tls}
    with collect_errors() as errors, make_server(**ssl_kwargs) as server:
        _, outgoing, outcomes = sender_handler(server, "/big")
        sock = raw_connect(server.port, rcvbuf=64 * KiB)
        if client_tls is not None:
            sock = client_tls.wrap_socket(sock, server_hostname=HOST)
        try:
            sock.sendall(upgrade_request("/big", server.port))
            status, head, rest = read_http_response(sock)
            assert status == 101, head
            # about 64 KiB per 20 ms at most: some MB/s, so 8 MiB take several write_timeouts (twice
            # what the kernel may buffer on loopback: with 4 MiB a TLS send once returned at once)
            reader = PacedReader(sock, size + 10, 64 * KiB, 0.02, limit=30, first=rest).start()
            outgoing.put(os.urandom(size))
            error, took = outcomes.get(timeout=40)
            assert reader.done.wait(35)
            outgoing.put(None)
            print(f"{size // MiB} MiB to a paced reader ({'wss' if use_tls else 'ws'}): {error!r} after {took:.2f} s; client: {reader.how}, {len(reader.data)} B in {reader.elapsed:.2f} s")
            assert error is None, f"send() failed after {took:.2f} s: {error!r}"
            assert reader.how == "complete", reader.how
            assert frame_length(bytes(reader.data[:10])) == size + 10
            assert took > 1.5 * WRITE_TIMEOUT, f"send() took {took:.2f} s: the test shows nothing"
        finally:
            sock.close()
        errors.assert_clean()


@pytest.mark.timeout(60)
def test_a_reader_that_stops_is_dropped_within_write_timeout_of_stopping():
    """The progress rule keeps the old bound for a client that stops: the
    send fails about ``write_timeout`` after the last progress."""
    size = 8 * MiB
    with collect_errors() as errors, make_server() as server:
        _, outgoing, outcomes = sender_handler(server, "/big")
        sock, rest = raw_upgrade(server.port, "/big", rcvbuf=64 * KiB)
        try:
            reader = PacedReader(sock, 1 * MiB, 64 * KiB, 0.02, limit=30, first=rest).start()
            outgoing.put(os.urandom(size))
            assert reader.done.wait(35)
            stopped = time.monotonic()
            assert reader.how == "complete", reader.how
            error, _ = outcomes.get(timeout=20)
            after = time.monotonic() - stopped
            print(f"reader stopped after 1 MiB: send() raised {error!r} {after:.2f} s later")
            assert isinstance(error, ConnectionClosed) and error.code == 1011, repr(error)
            assert after <= WRITE_TIMEOUT + 1.5, after
        finally:
            sock.close()
        errors.assert_clean()


@pytest.mark.timeout(60)
def test_a_trickling_reader_is_dropped():
    """A client that keeps reading, but little (8 KiB every 0.1 s through an
    8 KiB receive buffer: its kernel acknowledges something about every
    0.2 s, about 24 KiB per ``write_timeout``), does not hold a send for
    ever: progress means at least ``MIN_PROGRESS`` bytes per ``write_timeout``.
    With "any byte is progress", the send would last until the client's
    8 s limit."""
    size = 8 * MiB
    with collect_errors() as errors, make_server() as server:
        _, outgoing, outcomes = sender_handler(server, "/big")
        sock, rest = raw_upgrade(server.port, "/big", rcvbuf=8 * KiB)
        try:
            reader = PacedReader(sock, size, 8 * KiB, WRITE_TIMEOUT / 3, limit=8, first=rest).start()
            outgoing.put(os.urandom(size))
            error, took = outcomes.get(timeout=20)
            print(f"trickling reader: {error!r} after {took:.2f} s, client read {len(reader.data)} B")
            assert isinstance(error, ConnectionClosed) and error.code == 1011, repr(error)
            assert took < 5, took
        finally:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # the kernel still holds megabytes for it: stop now
            sock.close()
        assert reader.done.wait(10)
        errors.assert_clean()


@pytest.mark.timeout(60)
def test_a_steady_slow_reader_gets_a_large_broadcast():
    """The outbox (broadcasts, written by the flusher) measures progress too."""
    size = 4 * MiB
    with collect_errors() as errors, make_server() as server:
        handler = server.create_handler("/feed", write_timeout=WRITE_TIMEOUT, ping_interval=None, close_timeout=1)
        opened = threading.Event()
        closes: list = []
        handler.on("connection", lambda ws, request: (ws.on("close", lambda code, reason: closes.append(code)), opened.set()))
        sock, rest = raw_upgrade(server.port, "/feed", rcvbuf=64 * KiB)
        try:
            assert opened.wait(5)
            reader = PacedReader(sock, size + 10, 64 * KiB, 0.02, limit=30, first=rest).start()
            assert handler.broadcast(os.urandom(size)) == 1
            assert reader.done.wait(35)
            print(f"{size // MiB} MiB broadcast to a paced reader: client {reader.how}, {len(reader.data)} B in {reader.elapsed:.2f} s; closes {closes}")
            assert reader.how == "complete", (reader.how, closes)
            assert reader.elapsed > 2 * WRITE_TIMEOUT, reader.elapsed
            assert not closes
        finally:
            sock.close()
        errors.assert_clean()


def big_body_app(size: int, outcomes: queue.Queue):
    """A WSGI app that answers with ``size`` bytes in one piece, and reports
    whether the server wrote them all (``result.close()`` after the last)."""
    body = os.urandom(size)

    class Result:
        def __init__(self) -> None:
            self.started = time.monotonic()
            self.finished = False

        def __iter__(self):
            yield body
            self.finished = True

        def close(self) -> None:
            outcomes.put((self.finished, time.monotonic() - self.started))

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))])
        return Result()

    return app


def http_get(port: int, rcvbuf: int, tls=None) -> tuple[socket.socket, bytes]:
    """A raw HTTP client that sent ``GET /big``; returns the socket and what
    it read past the response head."""
    sock = raw_connect(port, rcvbuf=rcvbuf)
    if tls is not None:
        sock = tls.wrap_socket(sock, server_hostname=HOST)
    sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
    status, head, rest = read_http_response(sock)
    assert status == 200, head
    return sock, rest


@pytest.mark.timeout(60)
@pytest.mark.parametrize("use_tls, size", [(False, 8 * MiB), (True, 8 * MiB)], ids=["http", "https"])
def test_a_steady_slow_http_client_gets_a_response_longer_than_write_timeout(use_tls, size, certificate):
    """Before: ``settimeout`` then ``sendall`` bounded the whole body; the
    response was cut after ``http_write_timeout``."""
    server_tls, client_tls = tls_contexts(*certificate) if use_tls else (None, None)
    outcomes: queue.Queue = queue.Queue()
    with collect_errors() as errors, make_server(wsgi_app=big_body_app(size, outcomes), http_write_timeout=WRITE_TIMEOUT, ssl_context=server_tls) as server:
        sock, rest = http_get(server.port, 64 * KiB, client_tls)
        try:
            reader = PacedReader(sock, size, 64 * KiB, 0.02, limit=30, first=rest).start()
            finished, took = outcomes.get(timeout=40)
            assert reader.done.wait(35)
            print(f"{size // MiB} MiB response to a paced client ({'https' if use_tls else 'http'}): written={finished} in {took:.2f} s; client: {reader.how}, {len(reader.data)} B in {reader.elapsed:.2f} s")
            assert finished, f"the response was cut after {took:.2f} s"
            assert reader.how == "complete", reader.how
            assert took > 1.5 * WRITE_TIMEOUT, f"the write took {took:.2f} s: the test shows nothing"
        finally:
            sock.close()
        errors.assert_clean()


@pytest.mark.timeout(60)
def test_an_http_client_that_stops_reading_is_dropped_within_write_timeout():
    size = 16 * MiB
    outcomes: queue.Queue = queue.Queue()
    with collect_errors() as errors, make_server(wsgi_app=big_body_app(size, outcomes), http_write_timeout=WRITE_TIMEOUT) as server:
        sock, rest = http_get(server.port, 64 * KiB)
        try:
            reader = PacedReader(sock, 1 * MiB, 64 * KiB, 0.02, limit=30, first=rest).start()
            assert reader.done.wait(35)
            stopped = time.monotonic()
            assert reader.how == "complete", reader.how
            finished, _ = outcomes.get(timeout=20)
            after = time.monotonic() - stopped
            print(f"HTTP client stopped after 1 MiB: response cut {after:.2f} s later")
            assert not finished
            assert after <= WRITE_TIMEOUT + 1.5, after
        finally:
            sock.close()
        errors.assert_clean()
