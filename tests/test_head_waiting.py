"""http/head_waiting.py: a plain connection's request head is awaited in
the server's head loop, and its handshake runs there: no thread per
connection while clients send their heads, rules applied as the bytes come,
a blocking hook or listener handed off, and close() ending the waits."""

from __future__ import annotations

import socket
import threading

from ws_multipath.sync.loop import MAX_SPARES

from .conftest import TIMEOUT, library_threads, read_until_eof, response_head, upgrade_head, wait_until


def _connect(server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def test_clients_sending_their_heads_hold_no_thread(make_server):
    server = make_server()
    server.create_handler(path="/echo")
    head = upgrade_head("/echo")
    first = _connect(server)  # starts the head loop (and the sysmon)
    first.sendall(head)
    assert response_head(first).startswith(b"HTTP/1.1 101")
    before = len(library_threads())
    socks = [_connect(server) for _ in range(100)]
    try:
        for sock in socks:
            sock.sendall(head[:40])
        assert wait_until(lambda: len(server._http._deadlines) == 100)  # all accepted, their heads awaited
        assert len(library_threads()) <= before + MAX_SPARES
        for sock in socks:
            sock.sendall(head[40:])
        for sock in socks:
            assert response_head(sock).startswith(b"HTTP/1.1 101")
        assert len(library_threads()) <= before + 1 + MAX_SPARES  # + the handler's loop
    finally:
        first.close()
        for sock in socks:
            sock.close()


def test_a_head_sent_a_byte_at_a_time_is_answered(make_server):
    server = make_server()
    server.create_handler(path="/echo")
    with _connect(server) as sock:
        for byte in upgrade_head("/echo"):
            sock.sendall(bytes([byte]))
        assert response_head(sock).startswith(b"HTTP/1.1 101")


def test_rules_are_applied_as_the_head_comes_not_at_its_end(make_server):
    """A refusal does not wait for the head's end (or the handshake deadline)."""
    server = make_server(open_timeout=60)
    server.create_handler(path="/echo")
    with _connect(server) as sock:  # a bare LF ends a line
        sock.sendall(b"GET /echo HTTP/1.1\nHost: x\n")
        assert read_until_eof(sock).startswith(b"HTTP/1.1 400 ")
    with _connect(server) as sock:  # a target longer than max_target_size, no line end yet
        sock.sendall(b"GET /" + b"a" * 8200)
        assert read_until_eof(sock).startswith(b"HTTP/1.1 414 ")
    with _connect(server) as sock:  # a head larger than max_header_size, still open
        sock.sendall(b"GET /echo HTTP/1.1\r\n" + b"X-Long: " + b"b" * 20000)
        assert read_until_eof(sock).startswith(b"HTTP/1.1 431 ")


def test_a_blocking_connection_listener_does_not_hold_up_other_handshakes(make_server):
    server = make_server()
    release = threading.Event()
    blocked = threading.Event()
    opened: list[str] = []

    def on_connection(ws, request):
        opened.append(request.path)
        if request.path == "/slow":
            blocked.set()
            release.wait(TIMEOUT)

    server.create_handler(path="/slow").on("connection", on_connection)
    server.create_handler(path="/fast").on("connection", on_connection)
    slow = _connect(server)
    try:
        slow.sendall(upgrade_head("/slow"))
        assert blocked.wait(TIMEOUT)
        fast = [_connect(server) for _ in range(5)]
        for sock in fast:
            sock.sendall(upgrade_head("/fast"))
        for sock in fast:
            assert response_head(sock).startswith(b"HTTP/1.1 101")
            sock.close()
        assert wait_until(lambda: opened.count("/fast") == 5)  # the 101 goes out before 'connection'
        assert not release.is_set()
        # the thread the listener blocks serves that connection now, and says so
        assert wait_until(lambda: "ws_multipath-connection" in library_threads())
        release.set()
        assert response_head(slow).startswith(b"HTTP/1.1 101")
    finally:
        release.set()
        slow.close()


def test_close_ends_the_waits_and_the_head_loop(make_server):
    server = make_server(open_timeout=60)
    server.create_handler(path="/echo")
    socks = [_connect(server) for _ in range(10)]
    try:
        for sock in socks:
            sock.sendall(upgrade_head("/echo")[:30])
        assert wait_until(lambda: "ws_multipath-loop heads" in library_threads())
        server.close()
        for sock in socks:
            read_until_eof(sock)  # closed at once, not at the deadline a minute away
        assert wait_until(lambda: "ws_multipath-loop heads" not in library_threads())
    finally:
        for sock in socks:
            sock.close()
