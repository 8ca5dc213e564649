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
    make_server,
    raw_connect,
    read_http_response,
    thread_names,
    tls_contexts,
    upgrade_request,
)

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
    """The ``'close'`` events of a handler's connections."""

    def __init__(self, handler) -> None:
        self.codes: list[int] = []
        self.cond = threading.Condition()
        handler.on("connection", lambda ws, request: ws.on("close", self._on_close))

    def _on_close(self, code, reason) -> None:
        with self.cond:
            self.codes.append(code)
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
            assert closes.codes == [1008]
            print(f"1 MiB broadcasts deflate={deflate} heartbeat={heartbeat}: 1008 after {sent} MiB")
            assert sent <= MAX_OUTBOX_BYTES // MiB + 16, sent  # the cap, plus what the kernel holds
        finally:
            sock.close()
        errors.assert_clean()


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.timeout(60)
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
            assert closes.codes == [1008]
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
            with connect(f"{scheme}://{HOST}:{server.port}/b", ssl=client_tls, max_size=None) as healthy:
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
