"""The WSGI side's threads: requests run on a bounded pool (``wsgi_threads``)
and idle keep-alive connections wait in one parking-lot thread per server,
holding no thread of their own (issue 17, item 5)."""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time

import pytest
from websockets.sync.client import connect

from ws_multipath.http.keepalive import ParkingLot
from ws_multipath.http.wsgi_socket import ClientSocket
from ws_multipath.sync.pool import WorkerPool
from ws_multipath.sync.loop import MAX_SPARES
from ws_multipath.sync.request_threads import IDLE_NAME

from .conftest import TIMEOUT, echo, read_until_eof, upgrade_head, url, wait_until

REQUEST = b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n"


def hello(environ, start_response):
    body = environ["PATH_INFO"].encode("latin-1")
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


_leftovers: dict = {}  # socket -> bytes read past the last response


def read_response(sock: socket.socket) -> bytes:
    """The body of the next 200 response (with a Content-Length) on ``sock``."""
    data = _leftovers.pop(sock, b"")
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")).split(b":")[1])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    assert head.startswith(b"HTTP/1.1 200 "), head
    if body[length:]:
        _leftovers[sock] = body[length:]
    return body[:length]


def parked(server) -> int:
    return len(server._wsgi._parking)


def idle_request_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == IDLE_NAME)


def connect_raw(server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)


def test_idle_keep_alive_connections_hold_no_thread(make_server):
    threads = 4
    server = make_server(wsgi_app=hello, wsgi_threads=threads)
    before = threading.active_count()
    # the pool, the parking lot's thread, the timers' (handshake deadlines), the
    # head loop's, the sysmon, and the head loop's spares after a hand-off (a
    # handshake slowed past the sysmon's samples on a loaded machine)
    bound = before + threads + 4 + MAX_SPARES
    socks = [connect_raw(server) for _ in range(200)]
    try:
        for i, sock in enumerate(socks):
            sock.sendall(REQUEST % i)
        for i, sock in enumerate(socks):
            assert read_response(sock) == b"/%d" % i
        assert wait_until(lambda: parked(server) == 200)
        # the accepting threads end once they handed the connection on
        assert wait_until(lambda: threading.active_count() <= bound), threading.active_count()
        for i, sock in enumerate(socks):  # each still served, and none got a thread to keep
            sock.sendall(REQUEST % (1000 + i))
        for i, sock in enumerate(socks):
            assert read_response(sock) == b"/%d" % (1000 + i)
        assert wait_until(lambda: parked(server) == 200)
        assert threading.active_count() <= bound
    finally:
        for sock in socks:
            sock.close()


def test_at_most_wsgi_threads_requests_run_at_once(make_server):
    threads = 3
    lock = threading.Lock()
    running = [0, 0]  # now, most at once
    release = threading.Event()

    def slow(environ, start_response):
        with lock:
            running[0] += 1
            running[1] = max(running[1], running[0])
        try:
            release.wait(TIMEOUT)
        finally:
            with lock:
                running[0] -= 1
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    server = make_server(wsgi_app=slow, wsgi_threads=threads)
    pool = server._wsgi._pool
    socks = [connect_raw(server) for _ in range(threads + 5)]
    try:
        for i, sock in enumerate(socks):
            sock.sendall(REQUEST % i)
        # three run, five wait in the pool's queue for a thread
        assert wait_until(lambda: running[0] == threads and pool.counts()[2] == 5), (running, pool.counts())
        assert pool.counts()[0] == threads
        release.set()
        for sock in socks:
            assert read_response(sock) == b"ok"
        assert running[1] == threads
    finally:
        release.set()
        for sock in socks:
            sock.close()


def test_the_idle_deadline_closes_parked_connections(make_server):
    server = make_server(wsgi_app=hello, http_keepalive_timeout=0.5, wsgi_threads=2)
    before = threading.active_count()
    socks = [connect_raw(server) for _ in range(20)]
    try:
        for i, sock in enumerate(socks):
            sock.sendall(REQUEST % i)
            assert read_response(sock) == b"/%d" % i
        assert wait_until(lambda: parked(server) == 20)
        # 2 pool threads, the lot, the timers, the head loop (where the 20
        # requests were read, and its spares) and the sysmon; no thread per connection
        assert threading.active_count() - idle_request_threads() <= before + 6 + MAX_SPARES
        start = time.monotonic()
        for sock in socks:
            assert read_until_eof(sock) == b""
        assert 0.2 < time.monotonic() - start < 5
        assert parked(server) == 0
    finally:
        for sock in socks:
            sock.close()


def test_a_request_after_a_pause_is_served_from_the_lot(make_server):
    server = make_server(wsgi_app=hello)
    with connect_raw(server) as sock:
        for i in range(5):
            sock.sendall(REQUEST % i)
            assert read_response(sock) == b"/%d" % i
            assert wait_until(lambda: parked(server) == 1)  # waited in the lot, then came back
        # pipelined while parked: both answered, in order, and the
        # second (left over in the parser, not readable to the lot) at once
        sock.sendall(REQUEST % 10 + REQUEST % 11)
        assert read_response(sock) == b"/10"
        assert read_response(sock) == b"/11"
        # a head in two pieces
        sock.sendall(b"GET /split HTTP/1.1\r\nHo")
        sock.sendall(b"st: x\r\n\r\n")
        assert read_response(sock) == b"/split"


def test_close_with_parked_connections_returns_promptly(make_server):
    server = make_server(wsgi_app=hello, http_graceful_timeout=5)
    socks = [connect_raw(server) for _ in range(50)]
    try:
        for i, sock in enumerate(socks):
            sock.sendall(REQUEST % i)
            assert read_response(sock) == b"/%d" % i
        assert wait_until(lambda: parked(server) == 50)
        start = time.monotonic()
        server.close()
        assert time.monotonic() - start < 1.0
        for sock in socks:
            assert read_until_eof(sock) == b""
    finally:
        for sock in socks:
            sock.close()


def test_close_lets_a_request_queued_for_a_thread_finish(make_server):
    started, release = threading.Event(), threading.Event()

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/slow":
            started.set()
            release.wait(TIMEOUT)
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "4")])
        return [b"done"]

    server = make_server(wsgi_app=app, wsgi_threads=1)
    pool = server._wsgi._pool
    with connect_raw(server) as slow, connect_raw(server) as queued:
        slow.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        assert started.wait(TIMEOUT)
        queued.sendall(b"GET /queued HTTP/1.1\r\nHost: x\r\n\r\n")
        assert wait_until(lambda: pool.counts()[2] == 1)  # waits for the one thread
        closer = threading.Thread(target=server.close)
        closer.start()
        wsgi = server._wsgi  # both connections told the server is closing, then the app goes on
        assert wait_until(lambda: wsgi._closing and all(c._socket.closing for c in list(wsgi._connections)))
        release.set()
        for sock in (slow, queued):
            answer = read_until_eof(sock)
            assert answer.startswith(b"HTTP/1.1 200 ") and b"Connection: close" in answer and answer.endswith(b"done")
        closer.join(TIMEOUT)
        assert not closer.is_alive()


def test_close_from_the_app_does_not_wait_for_the_app(make_server):
    holder = {}

    def app(environ, start_response):
        holder["server"].close()  # on a pool thread: must not wait for this very request
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
        return [b"bye"]

    server = holder["server"] = make_server(wsgi_app=app, http_graceful_timeout=10)
    with connect_raw(server) as sock:
        start = time.monotonic()
        sock.sendall(REQUEST % 0)
        assert read_response(sock) == b"bye"
        assert time.monotonic() - start < 3


def test_tls_keep_alive_parks_and_comes_back(make_server, certificate):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    server = make_server(wsgi_app=hello, ssl_context=context, wsgi_threads=2)
    client_context = ssl._create_unverified_context()
    before = threading.active_count()
    conns = [http.client.HTTPSConnection("127.0.0.1", server.port, timeout=TIMEOUT, context=client_context) for _ in range(10)]
    try:
        for round_ in range(3):
            for i, conn in enumerate(conns):
                conn.request("GET", f"/{round_}-{i}")
                assert conn.getresponse().read() == f"/{round_}-{i}".encode()
            assert wait_until(lambda: parked(server) == 10)
        assert wait_until(lambda: threading.active_count() <= before + 4), threading.active_count()
        # pipelined on TLS, after a parking: both served, in order
        with connect_raw(server) as raw:
            tls = client_context.wrap_socket(raw)
            tls.sendall(REQUEST % 1)
            assert read_response(tls) == b"/1"
            assert wait_until(lambda: parked(server) == 11)
            tls.sendall(REQUEST % 2 + REQUEST % 3)
            assert read_response(tls) == b"/2"
            assert read_response(tls) == b"/3"
    finally:
        for conn in conns:
            conn.close()


def test_tls_bytes_already_decrypted_are_read_without_waiting(certificate):
    # a selector sees the kernel's buffer, not what OpenSSL decrypted
    # already (``pending()``): read_now must return those bytes
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=TIMEOUT)
        accepted, _ = listener.accept()
        result = {}
        handshake = threading.Thread(target=lambda: result.update(tls=context.wrap_socket(accepted, server_side=True)))
        handshake.start()
        tls_client = ssl._create_unverified_context().wrap_socket(client)
        handshake.join(TIMEOUT)
        server_side = result["tls"]
        try:
            tls_client.sendall(b"0123456789")  # one record
            server_side.settimeout(TIMEOUT)
            assert server_side.recv(4) == b"0123"
            assert server_side.pending() == 6
            import select

            assert select.select([server_side], [], [], 0)[0] == []  # the kernel's buffer is empty
            assert ClientSocket(server_side, 1.0).read_now() == b"456789"
            assert ClientSocket(server_side, 1.0).read_now() is None  # nothing more: park
        finally:
            tls_client.close()
            server_side.close()


def test_a_later_upgrade_gets_its_own_thread_not_a_pool_one(make_server):
    server = make_server(wsgi_app=hello, wsgi_threads=1)
    server.create_handler("/echo").on("connection", echo)
    with connect_raw(server) as sock:
        sock.sendall(REQUEST % 1)
        assert read_response(sock) == b"/1"
        assert wait_until(lambda: parked(server) == 1)
        frame = b"\x81\x82\x00\x00\x00\x00hi"  # masked "hi", zero mask
        sock.sendall(upgrade_head("/echo") + frame)
        data = b""
        while b"\x81\x02hi" not in data:
            chunk = sock.recv(4096)
            assert chunk
            data += chunk
        assert data.startswith(b"HTTP/1.1 101 ")
        # the WebSocket is open and idle: the one pool thread still serves HTTP
        with connect_raw(server) as other:
            other.sendall(REQUEST % 2)
            assert read_response(other) == b"/2"
        with connect(url(server, "/echo"), open_timeout=TIMEOUT) as ws:
            ws.send("again")
            assert ws.recv(TIMEOUT) == "again"


def test_wsgi_threads_is_checked(make_server):
    for bad in (0, -1, 1.5, True, "4"):
        with pytest.raises(ValueError, match="wsgi_threads"):
            make_server(wsgi_app=hello, wsgi_threads=bad)


# -- the pool -------------------------------------------------------------------


def test_pool_runs_tasks_in_order_past_its_bound_and_idle_threads_end():
    pool = WorkerPool(1, "test-pool", idle_timeout=0.2)
    gate = threading.Event()
    order: list[int] = []
    done = threading.Event()
    pool.submit(lambda: gate.wait(TIMEOUT))
    for i in range(5):
        pool.submit(lambda i=i: order.append(i))
    pool.submit(done.set)
    assert pool.counts() == (1, 0, 6)
    gate.set()
    assert done.wait(TIMEOUT)
    assert order == [0, 1, 2, 3, 4]
    assert wait_until(lambda: pool.counts() == (0, 0, 0))  # the idle thread ended
    again = threading.Event()
    pool.submit(again.set)  # a new one starts on demand
    assert again.wait(TIMEOUT)
    pool.close()
    assert wait_until(lambda: pool.counts()[0] == 0)


def test_pool_a_failing_task_is_logged_and_the_thread_goes_on(library_log, no_thread_exceptions):
    pool = WorkerPool(1, "test-pool")
    done = threading.Event()
    pool.submit(lambda: 1 / 0)
    pool.submit(done.set)
    assert done.wait(TIMEOUT)
    assert any("test-pool" in r.getMessage() for r in library_log.errors())
    pool.close()


def test_pool_wakes_idle_threads_rather_than_starting_more():
    pool = WorkerPool(4, "test-pool")
    for _ in range(3):
        finished = threading.Event()
        pool.submit(finished.set)
        assert finished.wait(TIMEOUT)
        assert wait_until(lambda: pool.counts()[1] == pool.counts()[0])  # back to idle
    assert pool.counts()[0] == 1
    pool.close()


def test_slow_later_heads_hold_no_pool_thread(make_server):
    """Keep-alive clients that send part of their next request head and
    stall wait in the lot, not on a pool thread: more of them than
    ``wsgi_threads`` do not hold up another client's request (before, each
    held a thread until ``open_timeout``, 20 s here)."""
    server = make_server(wsgi_app=hello, wsgi_threads=2, open_timeout=20)
    slow = [connect_raw(server) for _ in range(4)]
    try:
        for i, sock in enumerate(slow):
            sock.sendall(REQUEST % i)
            assert read_response(sock) == b"/%d" % i
            sock.sendall(b"GET /later HTTP/1.1\r\nHo")  # and no more, for now
        assert wait_until(lambda: parked(server) == 4)
        with connect_raw(server) as healthy:
            healthy.settimeout(10)  # half the slow heads' deadline
            for i in range(3):
                healthy.sendall(REQUEST % (100 + i))
                assert read_response(healthy) == b"/%d" % (100 + i)
        for sock in slow:  # the bytes of each head so far were kept
            sock.sendall(b"st: x\r\n\r\n")
            assert read_response(sock) == b"/later"
    finally:
        for sock in slow:
            sock.close()


def test_lingering_after_the_last_response_holds_no_pool_thread(make_server):
    """After a response with ``Connection: close`` the server reads what the
    client still sends for up to 2 s before closing (so that unread bytes do
    not reset the response away). Clients that keep their side open linger
    parked, not on the one pool thread, and a third client is served meanwhile."""
    server = make_server(wsgi_app=hello, wsgi_threads=1)
    lingering = [connect_raw(server) for _ in range(3)]
    try:
        for i, sock in enumerate(lingering):
            sock.sendall(b"GET /%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % i)
            assert read_response(sock) == b"/%d" % i
            assert read_until_eof(sock) == b""  # the server's FIN; our side stays open
        assert wait_until(lambda: parked(server) == 3)
        with connect_raw(server) as healthy:
            healthy.sendall(REQUEST % 7)
            assert read_response(healthy) == b"/7"
        assert wait_until(lambda: parked(server) == 0)  # each ends after 2 s (LINGER), its client silent
    finally:
        for sock in lingering:
            sock.close()


def test_a_later_head_not_completed_in_time_is_dropped(make_server, library_log):
    server = make_server(wsgi_app=hello, open_timeout=0.5, http_keepalive_timeout=30)
    with connect_raw(server) as sock:
        sock.sendall(REQUEST % 1)
        assert read_response(sock) == b"/1"
        sock.sendall(b"GET /never HTTP/1.1\r\n")
        start = time.monotonic()
        assert read_until_eof(sock) == b""
        assert time.monotonic() - start < 10  # the head deadline (0.5 s), not the idle one (30 s)
    assert wait_until(lambda: any("request head not completed within 0.5s" in r.getMessage() for r in list(library_log.records)))
    assert parked(server) == 0


def test_a_later_head_cut_midway_gets_400(make_server):
    server = make_server(wsgi_app=hello)
    with connect_raw(server) as sock:
        sock.sendall(REQUEST % 1)
        assert read_response(sock) == b"/1"
        sock.sendall(b"GET /cut HTTP/1.1\r\nHo")
        assert wait_until(lambda: parked(server) == 1)
        sock.shutdown(socket.SHUT_WR)
        assert read_until_eof(sock).startswith(b"HTTP/1.1 400 ")


# -- the parking lot, on epoll and on the portable selector ---------------------------


@pytest.mark.parametrize("use_epoll", [True, False], ids=["epoll", "selector"])
def test_parking_lot_hands_over_readable_sockets_expires_idle_ones_and_closes(use_epoll):
    ready: list = []
    expired: list = []
    arrived = threading.Event()
    lot = ParkingLot(0.3, lambda c: (ready.append(c), arrived.set()), expired.append, use_epoll=use_epoll)
    pairs = [socket.socketpair() for _ in range(3)]
    try:
        for i, (ours, _) in enumerate(pairs):
            assert lot.park(f"conn{i}", ours.fileno())
        assert not lot.park("again", pairs[0][0].fileno())  # parked already
        pairs[1][1].sendall(b"x")
        assert arrived.wait(TIMEOUT)
        assert ready == ["conn1"]
        assert wait_until(lambda: sorted(expired) == ["conn0", "conn2"])
        assert len(lot) == 0
        assert lot.park("conn0", pairs[0][0].fileno())  # parked anew
        assert lot.close() == ["conn0"]
        assert not lot.park("conn2", pairs[2][0].fileno())  # closed
        assert ready == ["conn1"]
    finally:
        lot.close()
        for a, b in pairs:
            a.close()
            b.close()


@pytest.mark.parametrize("use_epoll", [True, False], ids=["epoll", "selector"])
def test_parking_lot_a_deadline_of_its_own_wakes_the_wait(use_epoll):
    """An idle parking waits the lot's timeout (30 s here); one parked after
    it with an earlier deadline of its own expires at that deadline."""
    expired: list = []
    gone = threading.Event()
    lot = ParkingLot(30.0, lambda c: None, lambda c: (expired.append(c), gone.set()), use_epoll=use_epoll)
    pairs = [socket.socketpair() for _ in range(2)]
    try:
        assert lot.park("idle", pairs[0][0].fileno())
        assert wait_until(lambda: lot._thread is not None)
        start = time.monotonic()
        assert lot.park("head", pairs[1][0].fileno(), deadline=start + 0.2)
        assert gone.wait(TIMEOUT)
        assert expired == ["head"] and time.monotonic() - start < TIMEOUT
        assert len(lot) == 1
        assert lot.park("head", pairs[1][0].fileno(), deadline=time.monotonic() + 30)
        pairs[1][1].sendall(b"x")
        assert wait_until(lambda: len(lot) == 1)  # taken out when readable
        assert sorted(lot.close()) == ["idle"]
    finally:
        lot.close()
        for a, b in pairs:
            a.close()
            b.close()
