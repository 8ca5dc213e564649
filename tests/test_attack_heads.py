"""Attacks on the head loop (``http/head_waiting.py``) as a hostile client
would make them: handshakes that block in user code, slow and malformed
heads, resets, heads with frames behind them, close() in the middle, and
the other ways a server listens. A plain connection's head is awaited in
the server's head loop and its handshake runs as a task of that loop."""

from __future__ import annotations

import gc
import os
import queue
import socket
import struct
import threading
import time

import pytest

from ws_multipath import MultipathServer
from ws_multipath.http.head_waiting import HeadWaiter
from ws_multipath.sync.loop import MAX_SPARES

from .conftest import TIMEOUT, library_threads, read_until_eof, response_head, upgrade_head, wait_until

#: Blocked handshakes sent just before a healthy one. Each used to hold the
#: head loop for a sysmon sample (5-10 ms): 60 of them, 0.3-0.6 s.
BLOCKED = 60
#: What they may cost a healthy handshake now (one sample, then a thread
#: start per blocked one), with room for a loaded machine.
HELD_UP = 0.2


def _connect(address, family=socket.AF_INET) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    sock.connect(address)
    if family != socket.AF_UNIX:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _local(server) -> socket.socket:
    return _connect(("127.0.0.1", server.port))


def _head_waiters() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is HeadWaiter)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _frame(opcode: int, payload: bytes) -> bytes:
    mask = b"\x11\x22\x33\x44"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


def _blocking_server(make_server, kind: str, release: threading.Event, entered: "queue.Queue[str]"):
    """A server with /fast and a way of blocking in the handshake of others."""

    def block(*_args) -> bool:
        entered.put(kind)
        release.wait(TIMEOUT)
        return True

    if kind == "grace":  # an unknown path during the first second waits for its handler
        server = make_server(auto_listen=False)
        server.create_handler(path="/fast")
        server.listen()
        entered.put(kind)  # nothing to wait for: the grace itself blocks
        return server, "/later"
    if kind == "unhandled":
        server = make_server(reject_unhandled=False)
        server.on("unhandled", lambda sock: (block(), sock.close()))
        server.create_handler(path="/fast")
        server.create_handler(path="/other")
        return server, "/nobody"
    server = make_server()
    server.create_handler(path="/fast")
    if kind == "connection":
        server.create_handler(path="/slow").on("connection", lambda ws, request: block())
    elif kind == "verify_client":
        server.create_handler(path="/slow", verify_client=block)
    elif kind == "should_handle":
        server.create_handler(path="/slow", should_handle=block)
    elif kind == "linger":  # refused, and the client never closes: the linger waits for it
        server.create_handler(path="/slow", verify_client=lambda request: (entered.put(kind), False)[1])
    return server, "/slow"


@pytest.mark.parametrize("kind", ["connection", "verify_client", "should_handle", "unhandled", "grace", "linger"])
def test_blocked_handshakes_do_not_hold_up_a_healthy_one(make_server, library_log, kind):
    """Broke before the fix for the hooks and listeners (0.3-0.6 s): a
    handshake runs as a call of the head loop, and the loop's burst mode,
    which runs a task off the loop, never applied to calls."""
    release = threading.Event()
    entered: "queue.Queue[str]" = queue.Queue()
    server, slow_path = _blocking_server(make_server, kind, release, entered)
    warm = _local(server)  # the head loop and the /fast handler's loop are running
    warm.sendall(upgrade_head("/fast"))
    assert response_head(warm).startswith(b"HTTP/1.1 101")
    # the 101 goes out before the connection joins its loop, which starts the loop's thread
    assert wait_until(lambda: "ws_multipath-loop /fast" in library_threads())
    threads_before, fds_before = len(library_threads()), _open_fds()
    slow = [_local(server) for _ in range(BLOCKED)]
    try:
        for sock in slow:
            sock.sendall(upgrade_head(slow_path))
        start = time.monotonic()
        with _local(server) as fast:
            fast.sendall(upgrade_head("/fast"))
            assert response_head(fast).startswith(b"HTTP/1.1 101")
        assert time.monotonic() - start < HELD_UP
        entered.get(timeout=TIMEOUT)
        with _local(server) as fast:  # once they are all blocked, as well
            start = time.monotonic()
            fast.sendall(upgrade_head("/fast"))
            assert response_head(fast).startswith(b"HTTP/1.1 101")
            assert time.monotonic() - start < HELD_UP
    finally:
        release.set()
        for sock in slow:
            sock.close()
    warm.close()
    # the threads come back (the head loop keeps MAX_SPARES spares for a
    # while; /slow's accepted connections started its loop), nothing is left
    # of the blocked ones
    assert wait_until(lambda: len(library_threads()) <= threads_before + 1 + MAX_SPARES), (threads_before, library_threads())
    assert wait_until(lambda: _head_waiters() == 0)
    assert wait_until(lambda: _open_fds() <= fds_before)
    assert not library_log.errors()


def test_a_reset_mid_head_is_a_drop_not_a_refusal(make_server, library_log):
    """Broke before the fix: the handshake read the socket again after the
    reset, saw an end, and counted a 400 'bad_request' refusal (logged as
    'refused') for a client that was gone."""
    server = make_server()
    server.create_handler(path="/echo")
    for _ in range(3):
        sock = _local(server)
        sock.sendall(upgrade_head("/echo")[:30])
        assert wait_until(lambda: _head_waiters() == 1 and any(
            len(key.data._buffer) == 30 for key in server._http._head_loop._selector.get_map().values() if key.data is not None))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        assert wait_until(lambda: not server._http._deadlines)
    assert wait_until(lambda: sum(1 for r in library_log.records if "connection lost during the handshake" in r.getMessage()) == 3)
    assert server.stats()["refused"] == {}
    assert not [r for r in library_log.records if r.getMessage().startswith("refused")]


@pytest.mark.parametrize("head, status", [
    (b"GET /echo HTTP/1.1\r\nHost: x\nUpgrade: websocket\r\n\r\n", b"400"),  # bare LF
    (b"GET /echo HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", b"400"),  # NUL in a value
    (b"GET /echo\x00 HTTP/1.1\r\nHost: x\r\n\r\n", b"400"),
    (b"\r\n" * 2000 + upgrade_head("/echo"), b"101"),  # CRLFs before the request line, within the limit
    (b"\r\n" * 9000 + upgrade_head("/echo"), b"431"),  # ... beyond it
    (b"\n" * 10 + upgrade_head("/echo"), b"400"),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", b"414"),
])
def test_malformed_heads_get_their_status(make_server, head, status):
    server = make_server(max_header_size=16384)
    server.create_handler(path="/echo")
    with _local(server) as sock:
        sock.sendall(head)
        response = response_head(sock)
        assert response.startswith(b"HTTP/1.1 " + status), response[:60]


def _sized_head(size: int) -> bytes:
    base = upgrade_head("/echo")
    filler = size - len(base) - len(b"X-Pad: \r\n")
    return base[:-2] + b"X-Pad: " + b"p" * filler + b"\r\n\r\n"


def test_heads_at_and_over_the_limits(make_server):
    server = make_server(max_header_size=4096, max_headers=20, max_target_size=100)
    server.create_handler(path="/echo")
    extra = "".join(f"X-{i}: v\r\n" for i in range(15))  # upgrade_head has 5: 20
    cases = [
        (_sized_head(4096), b"101"),
        (_sized_head(4097), b"431"),
        (upgrade_head("/echo", extra), b"101"),
        (upgrade_head("/echo", extra + "X-Last: v\r\n"), b"431"),
        (upgrade_head("/echo?" + "q" * (100 - len("/echo?"))), b"101"),
        (upgrade_head("/echo?" + "q" * (101 - len("/echo?"))), b"414"),
    ]
    for head, status in cases:
        for step in (len(head), 1000, 7):  # whole, in pieces, in small pieces
            with _local(server) as sock:
                for at in range(0, len(head), step):
                    sock.sendall(head[at:at + step])
                response = response_head(sock)
                assert response.startswith(b"HTTP/1.1 " + status), (len(head), step, response[:60])


def test_the_head_end_straddling_two_reads(make_server):
    server = make_server()
    server.create_handler(path="/echo")
    head = upgrade_head("/echo")
    for cut in (1, 2, 3):  # "\r\n\r" + "\n", "\r\n" + "\r\n", "\r" + "\n\r\n"
        with _local(server) as sock:
            sock.sendall(head[:-cut])

            def read_so_far() -> bool:
                return any(len(key.data._buffer) == len(head) - cut
                           for key in server._http._head_loop._selector.get_map().values() if key.data is not None)

            assert wait_until(read_so_far)
            sock.sendall(head[-cut:])
            assert response_head(sock).startswith(b"HTTP/1.1 101")


def test_frames_in_the_heads_packet_come_in_order(make_server):
    server = make_server()
    got: "queue.Queue[tuple[str, bytes]]" = queue.Queue()

    def on_connection(ws, request):
        ws.on("message", lambda data, is_binary: (got.put(("message", data)), ws.send(data)))
        ws.on("ping", lambda data: got.put(("ping", data)))

    server.create_handler(path="/echo").on("connection", on_connection)
    with _local(server) as sock:
        sock.sendall(upgrade_head("/echo") + _frame(1, b"one") + _frame(9, b"p") + _frame(1, b"two")
                     + _frame(8, struct.pack("!H", 1000) + b"bye"))
        assert [got.get(timeout=TIMEOUT) for _ in range(3)] == [("message", "one"), ("ping", b"p"), ("message", "two")]
        received = b""
        while b"\x88" not in received.split(b"\r\n\r\n", 1)[-1]:  # up to the close frame
            chunk = sock.recv(4096)
            assert chunk
            received += chunk
        frames = received.split(b"\r\n\r\n", 1)[1]
        assert frames.startswith(b"\x81\x03one\x8a\x01p\x81\x03two\x88")


def test_pipelined_requests_and_a_later_upgrade_with_a_wsgi_app(make_server):
    def app(environ, start_response):
        body = environ["PATH_INFO"].encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    server = make_server(wsgi_app=app)
    server.create_handler(path="/echo")
    with _local(server) as sock:
        sock.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /bb HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /ccc HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        response = read_until_eof(sock)
        assert response.count(b"HTTP/1.1 200 OK") == 3 and response.endswith(b"/ccc")
        assert response.index(b"/a") < response.index(b"/bb") < response.index(b"/ccc")
    with _local(server) as sock:
        sock.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        assert response_head(sock).startswith(b"HTTP/1.1 200")
        sock.sendall(upgrade_head("/echo"))
        received = b""
        while b"101 Switching" not in received:
            chunk = sock.recv(4096)
            assert chunk
            received += chunk


def test_many_half_heads_hold_no_thread_and_close_ends_them(make_server, library_log):
    server = make_server(open_timeout=60)
    server.create_handler(path="/echo")
    warm = _local(server)
    warm.sendall(upgrade_head("/echo"))
    assert response_head(warm).startswith(b"HTTP/1.1 101")
    threads_before = len(library_threads())
    half = []
    try:
        for i in range(500):
            sock = _local(server)
            sock.sendall(upgrade_head("/echo")[: 10 + i % 60])
            half.append(sock)
        assert wait_until(lambda: len(server._http._deadlines) == 500)
        assert len(library_threads()) <= threads_before + MAX_SPARES
        start = time.monotonic()
        with _local(server) as fast:
            fast.sendall(upgrade_head("/echo"))
            assert response_head(fast).startswith(b"HTTP/1.1 101")
        assert time.monotonic() - start < HELD_UP
        server.close()
        for sock in half:
            sock.settimeout(TIMEOUT)
            read_until_eof(sock)  # closed at once
        assert wait_until(lambda: server._http._waiting == 0 and not server._http._deadlines)
        assert wait_until(lambda: "ws_multipath-loop heads" not in library_threads())
        assert wait_until(lambda: _head_waiters() == 0)
    finally:
        warm.close()
        for sock in half:
            sock.close()
    assert not library_log.errors()


def test_close_while_hooks_block_and_heads_are_awaited(make_server, library_log):
    server = make_server(open_timeout=60)
    release = threading.Event()
    entered = threading.Semaphore(0)

    def verify(request) -> bool:
        entered.release()
        release.wait(TIMEOUT)
        return True

    server.create_handler(path="/slow", verify_client=verify)
    blocked = [_local(server) for _ in range(5)]
    half = [_local(server) for _ in range(5)]
    try:
        for sock in blocked:
            sock.sendall(upgrade_head("/slow"))
        for sock in half:
            sock.sendall(b"GET /slow HTTP/1.1\r\n")
        for _ in blocked:
            assert entered.acquire(timeout=TIMEOUT)
        assert wait_until(lambda: server._http._waiting == 5)
        closer = threading.Thread(target=server.close)
        closer.start()
        closer.join(TIMEOUT)
        assert not closer.is_alive()
        for sock in half + blocked:
            read_until_eof(sock)
        release.set()
        assert wait_until(lambda: not [n for n in library_threads() if n != "ws_multipath-sysmon"])
        assert wait_until(lambda: _head_waiters() == 0)
    finally:
        release.set()
        for sock in blocked + half:
            sock.close()
    assert not library_log.errors()


def test_the_deadline_passing_while_a_hook_blocks(make_server, library_log):
    server = make_server(open_timeout=0.3)
    release = threading.Event()
    entered = threading.Event()
    server.create_handler(path="/slow", verify_client=lambda request: (entered.set(), release.wait(TIMEOUT))[1])
    server.create_handler(path="/fast")
    with _local(server) as slow:
        slow.sendall(upgrade_head("/slow"))
        assert entered.wait(TIMEOUT)
        assert read_until_eof(slow) == b""  # dropped at the deadline, the hook still blocked
        with _local(server) as fast:
            fast.sendall(upgrade_head("/fast"))
            assert response_head(fast).startswith(b"HTTP/1.1 101")
        release.set()
    assert wait_until(lambda: not server._http._deadlines and _head_waiters() == 0)
    assert not library_log.errors()


def _handshake_through(family, address) -> bytes:
    with _connect(address, family) as sock:
        sock.sendall(upgrade_head("/echo"))
        return response_head(sock)


def test_unix_ipv6_given_socket_and_late_listen(make_server, tmp_path):
    path = str(tmp_path / "ws.sock")
    with MultipathServer(unix_path=path) as server:
        server.create_handler(path="/echo")
        assert _handshake_through(socket.AF_UNIX, path).startswith(b"HTTP/1.1 101")

    given = socket.create_server(("127.0.0.1", 0))
    with MultipathServer(sock=given) as server:
        server.create_handler(path="/echo")
        assert _handshake_through(socket.AF_INET, given.getsockname()).startswith(b"HTTP/1.1 101")

    server = make_server(auto_listen=False)
    server.create_handler(path="/echo")
    server.listen()
    assert _handshake_through(socket.AF_INET, ("127.0.0.1", server.port)).startswith(b"HTTP/1.1 101")

    try:
        server = make_server(host="::1")
    except OSError:
        pytest.skip("no ::1 here")
    server.create_handler(path="/echo")
    assert _handshake_through(socket.AF_INET6, ("::1", server.port)).startswith(b"HTTP/1.1 101")


def test_max_connections_refusal_from_the_head_loop(make_server):
    server = make_server(max_connections=1)
    server.create_handler(path="/echo")
    with _local(server) as first:
        first.sendall(upgrade_head("/echo"))
        assert response_head(first).startswith(b"HTTP/1.1 101")
        with _local(server) as second:
            second.sendall(upgrade_head("/echo"))
            assert response_head(second).startswith(b"HTTP/1.1 503")
    assert server.stats()["paths"]["/echo"]["refused"] == {503: {"max_connections": 1}}


def test_the_sysmon_sleeps_while_handshakes_block_for_good(make_server):
    """Broke before the fix: a handshake run off the head loop during a
    burst stayed watched as long as it blocked (a 'connection' listener
    serving its connection in the blocking style blocks for its lifetime),
    so the burst never ended and the sysmon sampled every 5 ms meanwhile."""
    server = make_server()
    release = threading.Event()
    entered = threading.Semaphore(0)

    def on_connection(ws, request):
        entered.release()
        release.wait(TIMEOUT)

    server.create_handler(path="/slow").on("connection", on_connection)
    socks = [_local(server) for _ in range(4)]
    try:
        for sock in socks:
            sock.sendall(upgrade_head("/slow"))
        for _ in socks:
            assert entered.acquire(timeout=TIMEOUT)
        loop = server._http._head_loop
        assert wait_until(lambda: server._sysmon.sleeping and not loop.bursting and not loop._detached, timeout=3)
        assert not release.is_set()
        with _local(server) as fast:  # the head loop still serves
            fast.sendall(upgrade_head("/slow"))
            assert response_head(fast).startswith(b"HTTP/1.1 101")
    finally:
        release.set()
        for sock in socks:
            sock.close()


def test_a_flood_of_clients_that_reset_or_leave_at_every_point(make_server, library_log):
    server = make_server()
    server.create_handler(path="/echo")
    head = upgrade_head("/echo")
    cuts = [0, 1, 20, len(head) - 1, len(head)]
    for round_ in range(40):
        for cut in cuts:
            sock = _local(server)
            if cut:
                sock.sendall(head[:cut])
            if round_ % 2:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # a reset
            else:
                sock.shutdown(socket.SHUT_WR)  # an end
            sock.close()
    assert wait_until(lambda: server._http._waiting == 0 and not server._http._deadlines)
    with _local(server) as fast:
        fast.sendall(head)
        assert response_head(fast).startswith(b"HTTP/1.1 101")
    assert wait_until(lambda: _head_waiters() == 0)
    assert not library_log.errors()
    # an end before the head is whole is a 400 (as before the head loop), a reset a drop
    assert set(server.stats()["refused"]) <= {400}
