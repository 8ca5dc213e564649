"""What an open connection keeps, and for how long: nothing of its handshake
but ``ws.request``, and nothing once it has ended (its cancelled timers let
go of it at once). Memory itself is measured by the benchmark's idle and
soak scenarios, not here."""

from __future__ import annotations

import gc
import queue
import socket
import struct
import threading
import uuid
import weakref

from ws_multipath.sync.loop import MAX_SPARES

from .conftest import TIMEOUT, echo, upgrade_head, wait_until


def _masked_text(text: bytes) -> bytes:
    mask = b"\x01\x02\x03\x04"
    return struct.pack("!BB", 0x81, 0x80 | len(text)) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(text))


def _open(server, token: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
    sock.sendall(upgrade_head("/echo", f"X-Probe: {token}\r\n"))
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(4096)
        assert chunk, "closed during the handshake"
        response += chunk
    assert response.startswith(b"HTTP/1.1 101")
    return sock


def _echo_once(sock: socket.socket) -> None:
    """A message and its echo: the connection's thread is in its read loop."""
    sock.sendall(_masked_text(b"hi"))
    reply = b""
    while len(reply) < 4:
        chunk = sock.recv(16)
        assert chunk
        reply += chunk
    assert reply == b"\x81\x02hi"


def _track(handler) -> "queue.Queue[tuple[object, threading.Thread]]":
    opened: "queue.Queue[tuple[object, threading.Thread]]" = queue.Queue()
    handler.on("connection", lambda ws, request: opened.put((ws, threading.current_thread())))
    handler.on("connection", echo)
    return opened


def test_an_open_connection_keeps_no_thread_and_nothing_of_its_head_but_the_request(server):
    """Its handshake ran on the server's head loop (``http/head_waiting.py``),
    and once its 'connection' listeners returned, the connection lives in its
    handler's event loop: no thread is its own, and nothing that held the
    head's bytes (the head's waiter) is left."""
    from ws_multipath.http.head_waiting import HeadWaiter

    handler = server.create_handler(path="/echo")
    opened = _track(handler)
    token = uuid.uuid4().hex
    with _open(server, token) as sock:
        ws, thread = opened.get(timeout=TIMEOUT)
        assert thread.name == "ws_multipath-loop heads"
        _echo_once(sock)
        before = {t.name for t in threading.enumerate()}
        more = [_open(server, uuid.uuid4().hex) for _ in range(20)]
        ours = {sock.getsockname()} | {other.getsockname() for other in more}
        try:
            for other in more:
                _echo_once(other)
            after = [t.name for t in threading.enumerate()]
            assert set(after) <= before and after.count("ws_multipath-loop heads") <= 1 + MAX_SPARES, after
        finally:
            for other in more:
                other.close()
        assert wait_until(lambda: not [o for o in gc.get_objects() if type(o) is HeadWaiter and o.address in ours])
        _echo_once(sock)  # still served, by the loop
        assert ws.request.headers["X-Probe"] == token  # what the application may read stays


def test_an_ended_connection_is_freed_without_waiting_for_its_heartbeat(make_server):
    server = make_server()
    handler = server.create_handler(path="/echo", ping_interval=3600, close_timeout=3600)
    opened = _track(handler)
    closed = threading.Event()
    handler.on("connection", lambda ws, request: ws.on("close", lambda code, reason: closed.set()))
    with _open(server, "x") as sock:
        ws, thread = opened.get(timeout=TIMEOUT)
        _echo_once(sock)
        gone = weakref.ref(ws)
        del ws
    assert closed.wait(TIMEOUT)  # the client left: the connection ends
    assert wait_until(lambda: not handler.clients)
    # its listeners and it refer to each other (gc.collect); the loop's thread lets go of it once its task ends
    assert wait_until(lambda: gc.collect() >= 0 and gone() is None)  # not an hour from now, when its next ping was due
