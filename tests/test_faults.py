"""Fault tests (issue 4): hostile and broken clients, resource exhaustion,
shutdown under load, and the server's limits.

Real sockets on 127.0.0.1 with port 0; real clients (``websockets``,
``simple_websocket``) where a client behaves, raw sockets where it must not.
Waits are on events, conditions or polled predicates with deadlines; every
load loop is bounded in count and time. ``WS_MULTIPATH_FAULT_SCALE`` scales the
load counts (see tests/faultkit.py); CI uses the defaults.
"""

from __future__ import annotations

import collections
import os
import queue
import select
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import simple_websocket
from websockets.exceptions import ConnectionClosed as WebSocketsClosed
from websockets.exceptions import InvalidStatus

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from faultkit import (  # noqa: E402
    HOST,
    ConnectionLog,
    Counter,
    add_echo,
    close_frame,
    collect_errors,
    connect,
    encode_frame,
    fd_count,
    make_server,
    parse_server_frames,
    raise_nofile,
    raw_connect,
    raw_upgrade,
    read_http_response,
    read_server_frame,
    read_until_eof,
    readable,
    reset,
    scaled,
    thread_names,
    tls_contexts,
    upgrade_request,
    wait_until,
)

from tls_client import tls_connect  # noqa: E402

from ws_multipath import ConnectionClosed  # noqa: E402

FLUSHERS = 1  # the server's flusher thread lives until close()


@pytest.fixture
def errors():
    with collect_errors() as collector:
        yield collector


@pytest.fixture
def servers():
    """Servers made by a test; closed at its end (each close is bounded)."""
    made = []

    def factory(**kwargs):
        server = make_server(**kwargs)
        made.append(server)
        return server

    yield factory
    for server in made:
        server.close()


def report(record_property, name, value):
    record_property(name, value)
    print(f"{name}: {value}")


# -- 1. connection churn --------------------------------------------------------


CHURN_CYCLES = scaled(10_000, minimum=2_000)


@pytest.mark.timeout(240)
def test_connection_churn_returns_to_baseline(servers, errors, record_property):
    """Many connect-handshake-close cycles of every kind; afterwards the
    server holds no extra threads or descriptors and no clients.

    Default 10,000 cycles (10-16 s on a 2-core machine); WS_MULTIPATH_FAULT_SCALE
    scales it (never below 2,000)."""
    log = ConnectionLog()
    server = servers(open_timeout=5)
    handler = add_echo(server, "/echo", log, close_timeout=2)
    port = server.port
    url = f"ws://{HOST}:{port}/echo"

    def clean_close():
        sock, rest = raw_upgrade(port, "/echo")
        with sock:
            sock.sendall(close_frame(1000))
            frame = read_server_frame(sock, bytearray(rest))
            assert frame.opcode == 0x8 and frame.close_code == 1000, frame
            _, how = read_until_eof(sock, 5)
            assert how in ("eof", "reset"), how

    def library_client(j):
        if (j // 16) % 2:
            with connect(url, ping_interval=None) as ws:
                ws.send("ping")
                assert ws.recv(timeout=5) == "ping"
        else:
            ws = simple_websocket.Client.connect(url)
            try:
                ws.send("ping")
                assert ws.receive(timeout=5) == "ping"
            finally:
                ws.close()

    def reset_after_handshake():
        sock, _ = raw_upgrade(port, "/echo")
        reset(sock)

    def fin_during_head():
        sock = raw_connect(port)
        sock.sendall(upgrade_request("/echo", port)[:40])
        sock.close()

    def reset_during_head():
        sock = raw_connect(port)
        sock.sendall(upgrade_request("/echo", port)[:70])
        reset(sock)

    def reset_at_once():
        reset(raw_connect(port))

    def reset_before_response():
        sock = raw_connect(port)
        sock.sendall(upgrade_request("/echo", port))
        reset(sock)  # the server may or may not have upgraded it

    # j % 16 -> kind. Opened connections end with 1000 (clean), 1006 (reset).
    kinds = {0: "clean", 1: "clean", 2: "clean", 3: "clean", 4: "clean", 5: "library",
             6: "rst", 7: "rst", 8: "rst", 9: "rst", 10: "fin-head", 11: "fin-head",
             12: "rst-head", 13: "rst-head", 14: "rst-now", 15: "rst-race"}

    def cycle(j):
        kind = kinds[j % 16]
        if kind == "clean":
            clean_close()
        elif kind == "library":
            library_client(j)
        elif kind == "rst":
            reset_after_handshake()
        elif kind == "fin-head":
            fin_during_head()
        elif kind == "rst-head":
            reset_during_head()
        elif kind == "rst-now":
            reset_at_once()
        else:
            reset_before_response()

    # Warm up (timer thread, flusher thread, lazily made objects), then measure.
    for j in range(64):
        cycle(j)
    wait_until(lambda: not handler.clients and len(log.closes) == len(log.opened), 10, message="warm-up connections to end")
    wait_until(lambda: thread_names()["ws_multipath-connection"] == 0, 10, message="warm-up threads to end")
    baseline_threads = threading.active_count()
    baseline_kinds = thread_names()
    baseline_fds = fd_count()
    opened_before = len(log.opened)
    closes_before = log.close_codes()

    workers = 8
    budget = 150 * max(1.0, CHURN_CYCLES / 10_000)
    started = time.monotonic()
    failures: list = []
    done = Counter()

    def worker(index):
        for j in range(index, CHURN_CYCLES, workers):
            if time.monotonic() - started > budget:
                failures.append(f"cycle budget of {budget}s exhausted")
                return
            try:
                cycle(j)
            except Exception as exc:  # noqa: BLE001 - reported below
                failures.append(f"cycle {j} ({kinds[j % 16]}): {type(exc).__name__}: {exc}")
                if len(failures) > 20:
                    return
            done.add()

    threads = [threading.Thread(target=worker, args=(i,), name=f"churn-{i}") for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(budget + 30)
    elapsed = time.monotonic() - started
    report(record_property, "churn_cycles", CHURN_CYCLES)
    report(record_property, "churn_seconds", round(elapsed, 2))
    assert not failures, failures[:20]
    assert done.value == CHURN_CYCLES

    # Every connection the server opened ends, with the code its kind implies.
    wait_until(lambda: not handler.clients, 15, message="handler.clients to empty")
    wait_until(lambda: len(log.closes) == len(log.opened), 15, message="a 'close' event per connection")
    per_kind = collections.Counter(kinds[j % 16] for j in range(CHURN_CYCLES))
    codes = log.close_codes() - closes_before
    opened = len(log.opened) - opened_before
    assert codes[1000] == per_kind["clean"] + per_kind["library"], codes
    assert per_kind["rst"] <= codes[1006] <= per_kind["rst"] + per_kind["rst-race"], codes
    assert set(codes) <= {1000, 1006}, codes
    assert opened == sum(codes.values())

    def back_to_baseline():
        kinds_now = thread_names()
        grown_flushers = kinds_now["ws_multipath-flusher"] - baseline_kinds["ws_multipath-flusher"]
        return (
            kinds_now["ws_multipath-connection"] == 0
            and kinds_now["ws_multipath-reader"] == 0
            and threading.active_count() <= baseline_threads + max(0, grown_flushers)
            and kinds_now["ws_multipath-flusher"] <= FLUSHERS
            and fd_count() <= baseline_fds
        )

    try:
        wait_until(back_to_baseline, 20, interval=0.05)
    except AssertionError:
        raise AssertionError(
            f"threads {threading.active_count()} (baseline {baseline_threads}) {dict(thread_names())}, "
            f"fds {fd_count()} (baseline {baseline_fds})"
        ) from None
    # The server still serves.
    with connect(url) as ws:
        ws.send("still here")
        assert ws.recv(timeout=5) == "still here"
    errors.assert_clean()


# -- 2. broken clients ------------------------------------------------------------


def _partial_frames():
    """(name, bytes) of a frame cut at various points."""
    payload = os.urandom(1000)
    whole = encode_frame(0x2, payload)
    text = encode_frame(0x1, "é".encode() * 300)
    yield "one header byte", whole[:1]
    yield "mid extended length", whole[:3]
    yield "mid mask key", whole[:6]
    yield "mid payload", whole[:200]
    yield "all but one byte", whole[:-1]
    yield "mid utf-8 sequence", text[: 8 + 301]
    yield "mid 64-bit length", encode_frame(0x2, b"", length=70_000)[:6]
    yield "continuation cut", encode_frame(0x1, b"abc", fin=False) + encode_frame(0x0, b"x" * 500)[:100]
    yield "ping cut", encode_frame(0x9, b"p" * 100)[:50]
    yield "close cut", close_frame(1000, b"bye")[:7]


@pytest.mark.timeout(60)
def test_reset_in_the_middle_of_a_frame(servers, errors):
    log = ConnectionLog()
    server = servers()
    handler = add_echo(server, "/echo", log)
    port = server.port
    cases = list(_partial_frames())
    rounds = scaled(5)
    for _ in range(rounds):
        for name, data in cases:
            sock, rest = raw_upgrade(port, "/echo")
            # A full round trip first, so the server is reading frames.
            sock.sendall(encode_frame(0x9, b"sync"))
            pong = read_server_frame(sock, bytearray(rest))
            assert pong.opcode == 0xA and pong.payload == b"sync", (name, pong)
            sock.sendall(data)
            reset(sock)
    total = rounds * len(cases)
    assert log.wait_closed(total, 15), f"{len(log.closes)} of {total} connections ended"
    assert log.close_codes() == {1006: total}
    wait_until(lambda: not handler.clients, 10, message="handler.clients to empty")
    with connect(f"ws://{HOST}:{port}/echo") as ws:
        ws.send("after resets")
        assert ws.recv(timeout=5) == "after resets"
    errors.assert_clean()


@pytest.mark.timeout(60)
def test_half_open_client_is_dropped_by_the_heartbeat(servers, errors, record_property):
    """Clients that complete the handshake and then never answer (nor read)
    are dropped within ping_interval + ping_timeout; a client that answers
    pings stays."""
    interval, timeout = 0.5, 0.5
    log = ConnectionLog()
    server = servers()
    handler = add_echo(server, "/hb", log, ping_interval=interval, ping_timeout=timeout)
    port = server.port
    healthy = connect(f"ws://{HOST}:{port}/hb", ping_interval=None)  # answers pings by itself
    assert log.wait_opened(1, 5)
    count = 10
    silent = []
    for _ in range(count):
        silent.append(raw_upgrade(port, "/hb")[0])
    assert log.wait_opened(count + 1, 5)
    try:
        assert log.wait_closed(count, interval + timeout + 10), f"only {len(log.closes)} of {count} half-open clients dropped"
        lifetimes = []
        for ws, code, _, closed_at in log.closes:
            assert code in (1011, 1006), code
            lifetimes.append(closed_at - log.opened_at[id(ws)])
        report(record_property, "half_open_lifetime_max", round(max(lifetimes), 3))
        assert min(lifetimes) >= 0.75 * interval + timeout - 0.05, lifetimes  # the first ping comes after 75-100% of the interval
        assert max(lifetimes) <= interval + timeout + 1.5, lifetimes  # generous: the timer thread is shared
        for sock in silent:
            data, how = read_until_eof(sock, 5)
            assert how in ("eof", "reset"), how
            frames, _ = parse_server_frames(data)
            assert frames and frames[0].opcode == 0x9, frames  # the ping nobody answered
        # The answering client survived several heartbeats and still echoes.
        assert healthy.protocol.state.name == "OPEN"
        healthy.send("alive")
        assert healthy.recv(timeout=5) == "alive"
        assert len(handler.clients) == 1
    finally:
        for sock in silent:
            sock.close()
        healthy.close()
    errors.assert_clean()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("size", [16 * 1024, 1024 * 1024], ids=["16KiB-frames", "1MiB-frames"])
def test_send_to_a_client_that_never_reads_is_released_by_write_timeout(servers, errors, size, record_property):
    write_timeout = 0.5
    log = ConnectionLog()
    server = servers()
    handler = server.create_handler("/stream", write_timeout=write_timeout)
    accepted: "queue.Queue" = queue.Queue()

    @handler.on("connection")
    def on_connection(ws, request):
        ws.on("close", lambda code, reason: log.on_close(ws, code, reason))
        accepted.put(ws)

    sock, _ = raw_upgrade(server.port, "/stream", rcvbuf=4096)
    try:
        ws = accepted.get(timeout=5)
        payload = os.urandom(size)
        limit = (256 * 1024 * 1024) // size  # never-blocking would be a failure, bounded
        outcome = {}

        def stream():
            sent = 0
            last_ok = time.monotonic()
            try:
                while sent < limit:
                    ws.send(payload)
                    sent += 1
                    last_ok = time.monotonic()
            except Exception as exc:  # noqa: BLE001 - examined below
                outcome["error"] = exc
            outcome["sent"] = sent
            outcome["blocked"] = time.monotonic() - last_ok

        sender = threading.Thread(target=stream, name="never-read-sender")
        sender.start()
        sender.join(write_timeout + 30)
        assert not sender.is_alive(), "ws.send() still blocked long after write_timeout"
        report(record_property, f"blocked_{size}", round(outcome["blocked"], 3))
        assert outcome["sent"] < limit, "the server never blocked: the client's buffers cannot hold that much"
        error = outcome.get("error")
        assert isinstance(error, ConnectionClosed), repr(error)
        assert error.code == 1011, error
        assert write_timeout - 0.05 <= outcome["blocked"] <= write_timeout + 2.0, outcome
        assert log.wait_closed(1, 10)
        dropped, code = log.closes[0][:2]
        assert (code, dropped.sent_close_code) == (1006, 1011)  # the event: no close frame came back (RFC 6455 7.1.5)
        wait_until(lambda: not handler.clients, 5, message="handler.clients to empty")
    finally:
        sock.close()
    errors.assert_clean()


@pytest.mark.timeout(90)
def test_broadcast_is_not_held_back_by_a_client_that_never_reads(servers, errors, record_property):
    log = ConnectionLog()
    server = servers()
    handler = server.create_handler("/bc", write_timeout=1.0)
    handler.on("connection", lambda ws, request: (log.on_open(ws), ws.on("close", lambda c, r: log.on_close(ws, c, r))))
    port = server.port
    stuck, _ = raw_upgrade(port, "/bc", rcvbuf=4096)
    readers = [connect(f"ws://{HOST}:{port}/bc", max_size=None, ping_interval=None) for _ in range(3)]
    assert log.wait_opened(4, 5)
    messages = scaled(100)
    size = 256 * 1024
    received = [Counter() for _ in readers]
    problems: list = []

    def consume(index, ws):
        try:
            for n in range(messages):
                data = ws.recv(timeout=30)
                if len(data) != size or data[:4] != struct.pack("!I", n):
                    problems.append(f"reader {index}: message {n} wrong")
                    return
                received[index].add()
        except Exception as exc:  # noqa: BLE001
            problems.append(f"reader {index}: {type(exc).__name__}: {exc}")

    consumers = [threading.Thread(target=consume, args=(i, ws)) for i, ws in enumerate(readers)]
    for thread in consumers:
        thread.start()
    try:
        slowest = 0.0
        body = os.urandom(size - 4)
        for n in range(messages):
            # keep the readers within 8 messages (2 MiB) of the broadcaster
            for counter in received:
                assert counter.wait_for(n - 8, 30) or problems, problems
            started = time.monotonic()
            handler.broadcast(struct.pack("!I", n) + body)
            slowest = max(slowest, time.monotonic() - started)
        for thread in consumers:
            thread.join(60)
        report(record_property, "broadcast_slowest_call", round(slowest, 3))
        assert not problems, problems
        assert all(counter.value == messages for counter in received)
        assert slowest < 2.0, slowest  # generous: broadcast never waits for a client
        # The client that never reads was dropped: write timeout (1011) or outbox full (1008).
        assert log.wait_closed(1, 15)
        stuck_closes = [(code, ws.sent_close_code) for ws, code, _, _ in log.closes]
        assert stuck_closes[0] in ((1006, 1008), (1006, 1011)), stuck_closes
        assert len(handler.clients) == 3
    finally:
        stuck.close()
        for ws in readers:
            ws.close()
    errors.assert_clean()


# -- 3. slowloris -----------------------------------------------------------------


@pytest.mark.timeout(120)
def test_slowloris_connections_do_not_starve_a_legitimate_client(servers, errors, record_property):
    count = scaled(500)
    open_timeout = 2.0
    raise_nofile(4096 + 4 * count)
    server = servers(open_timeout=open_timeout)
    log = ConnectionLog()
    handler = add_echo(server, "/echo", log)
    port = server.port
    url = f"ws://{HOST}:{port}/echo"
    head = b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Slow: "

    slow: dict = {}  # fileno -> [socket, connected_at]
    for _ in range(count):
        started = time.monotonic()
        sock = raw_connect(port)
        sock.sendall(head)
        sock.setblocking(False)
        slow[sock.fileno()] = [sock, started]
    dropped: dict = {}  # fileno -> seconds from connect to drop
    stop = threading.Event()
    trickle_errors: list = []

    def trickle():
        """Send one more byte on every live socket each 0.25 s, and notice drops."""
        try:
            deadline = time.monotonic() + open_timeout + 20
            while not stop.is_set() and len(dropped) < count and time.monotonic() < deadline:
                live = [entry[0] for fd, entry in slow.items() if fd not in dropped]
                for sock in readable(live, 0.25):
                    try:
                        data = sock.recv(4096)
                    except (ConnectionResetError, BlockingIOError):
                        data = b""
                    if not data:
                        dropped[sock.fileno()] = time.monotonic() - slow[sock.fileno()][1]
                for sock in live:
                    if sock.fileno() in dropped:
                        continue
                    try:
                        sock.send(b"a")
                    except (BlockingIOError, InterruptedError):
                        pass
                    except OSError:
                        dropped[sock.fileno()] = time.monotonic() - slow[sock.fileno()][1]
        except Exception as exc:  # noqa: BLE001
            trickle_errors.append(exc)

    trickler = threading.Thread(target=trickle, name="slowloris")
    trickler.start()
    try:
        # The legitimate client, while all of them hold a request thread.
        timings = []
        for attempt in range(3):
            started = time.monotonic()
            ws = connect(url, ping_interval=None)
            ws.send(f"hello {attempt}")
            assert ws.recv(timeout=10) == f"hello {attempt}"
            timings.append(time.monotonic() - started)
            if attempt:
                ws.close()
            else:
                kept = ws  # stays open past open_timeout
        report(record_property, "legit_connect_echo_seconds", [round(t, 3) for t in timings])
        assert len(dropped) < count, "the slow clients were dropped before the legitimate one even tried"
        assert max(timings) < 5.0, timings  # generous bound; ~0.01 s is usual

        trickler.join(open_timeout + 30)
        assert not trickle_errors, trickle_errors
        assert len(dropped) == count, f"only {len(dropped)} of {count} slow clients dropped"
        lifetimes = sorted(dropped.values())
        report(record_property, "slowloris_dropped_after_seconds", (round(lifetimes[0], 3), round(lifetimes[-1], 3)))
        assert lifetimes[0] >= open_timeout - 0.05, lifetimes[:5]
        assert lifetimes[-1] <= open_timeout + 5.0, lifetimes[-5:]
        # The open_timeout deadline of the legitimate connection was cancelled.
        kept.send("still open")
        assert kept.recv(timeout=5) == "still open"
        kept.close()
        assert not log.close_codes() - collections.Counter({1000: 3}), log.close_codes()
        wait_until(lambda: thread_names()["ws_multipath-connection"] == 0, 10, message="request threads to end")
        wait_until(lambda: not handler.clients, 10, message="the connections to end")
    finally:
        stop.set()
        trickler.join(10)
        for sock, _ in slow.values():
            sock.close()
    errors.assert_clean()


# -- 4. close under load ------------------------------------------------------------


class _RawStreamClient:
    """A raw client that counts the numbered text messages before the close frame."""

    def __init__(self, port):
        self.sock, rest = raw_upgrade(port, "/stream")
        self.local_port = self.sock.getsockname()[1]
        self.buffer = bytearray(rest)
        self.received = 0
        self.close_code = None
        self.error = None
        self.after_close = 0
        self.eof = False


    def on_readable(self):
        try:
            chunk = self.sock.recv(262144)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            chunk = b""
            if self.close_code is None:
                self.error = f"{type(exc).__name__}: {exc}"
        if not chunk:
            self.eof = True
            return
        self.buffer += chunk
        frames, rest = parse_server_frames(bytes(self.buffer))
        self.buffer = bytearray(rest)
        for frame in frames:
            if self.close_code is not None:
                self.after_close += 1
            elif frame.opcode == 0x1:
                if frame.payload != str(self.received).encode():
                    self.error = self.error or f"message {self.received} was {frame.payload[:20]!r}"
                self.received += 1
            elif frame.opcode == 0x8:
                self.close_code = frame.close_code
                self.sock.setblocking(True)
                try:
                    self.sock.sendall(close_frame(frame.close_code or 1000))
                except OSError:
                    pass
                self.sock.setblocking(False)
            elif frame.opcode != 0x9:
                self.error = self.error or f"unexpected frame {frame}"


@pytest.mark.timeout(120)
def test_server_close_while_clients_are_mid_stream(servers, errors, record_property):
    """server.close() with every client receiving a stream: each message whose
    send() returned reached its client before the 1001 close frame, and close()
    returns within the close timeout."""
    count = scaled(200)
    close_timeout = 5.0
    raise_nofile(4096 + 4 * count)
    server = servers()
    handler = server.create_handler("/stream", close_timeout=close_timeout, ping_interval=None)
    sent: dict = {}  # remote port -> messages whose send() returned
    outcomes: dict = {}
    streaming = Counter()
    senders: list = []
    per_sender_limit = 2_000_000
    go = threading.Event()  # all clients connected: start streaming
    pacing = threading.Event()  # never set: its wait() paces each sender
    burst, pause = 10, 0.02  # ~500 messages/s per connection

    @handler.on("connection")
    def on_connection(ws, request):
        remote_port = ws.remote_address[1]

        def stream():
            n = 0
            try:
                go.wait(60)
                while n < per_sender_limit:
                    ws.send(str(n))
                    n += 1
                    sent[remote_port] = n
                    if n == 10:
                        streaming.add()
                    if n % burst == 0:
                        pacing.wait(pause)  # a steady stream, not a flood the Python clients cannot parse
            except ConnectionClosed as exc:
                outcomes[remote_port] = exc.code
            except Exception as exc:  # noqa: BLE001
                outcomes[remote_port] = repr(exc)

        thread = threading.Thread(target=stream, name="stream-sender", daemon=True)
        senders.append(thread)
        thread.start()

    port = server.port
    raw_clients = [_RawStreamClient(port) for _ in range(count // 2)]
    lib_clients = [connect(f"ws://{HOST}:{port}/stream", max_queue=None, ping_interval=None) for _ in range(count - count // 2)]
    lib_ports = [ws.local_address[1] for ws in lib_clients]
    for client in raw_clients:
        client.sock.setblocking(False)
    reading = threading.Event()
    reading.set()
    poller_stop = threading.Event()

    def poll_raw():
        deadline = time.monotonic() + 90
        by_fd = {c.sock.fileno(): c for c in raw_clients}
        poller = select.poll()
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        live = set(by_fd)
        while live and not poller_stop.is_set() and time.monotonic() < deadline:
            for fd, _ in poller.poll(100):
                client = by_fd[fd]
                client.on_readable()
                if client.eof and fd in live:
                    live.discard(fd)
                    poller.unregister(fd)
                    client.sock.close()  # as any client does on the server's FIN, which the server waits for

    poller = threading.Thread(target=poll_raw, name="raw-stream-clients")
    poller.start()
    try:
        go.set()
        assert streaming.wait_for(count, 30), f"only {streaming.value} of {count} streams started"
        stream_started = time.monotonic()
        wait_until(lambda: time.monotonic() - stream_started > 0.5 or not poller.is_alive(), 5)  # let the streams run a while
        started = time.monotonic()
        server.close()
        close_seconds = time.monotonic() - started
        report(record_property, "close_seconds", round(close_seconds, 3))
        assert close_seconds <= close_timeout, close_seconds
        for thread in senders:
            thread.join(10)
        assert not any(t.is_alive() for t in senders), "a sender is still blocked after close()"
        poller.join(30)
        assert not poller.is_alive()

        shortfalls = []
        for client in raw_clients:
            assert client.error is None, client.error
            assert client.close_code == 1001, client.close_code
            assert client.after_close == 0
            delivered, confirmed = client.received, sent.get(client.local_port, 0)
            if delivered != confirmed:
                shortfalls.append(("raw", client.local_port, delivered, confirmed))
        for ws, local_port in zip(lib_clients, lib_ports):
            delivered = 0
            while True:
                try:
                    message = ws.recv(timeout=0)
                except WebSocketsClosed:
                    break
                assert message == str(delivered)
                delivered += 1
            assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 1001, ws.protocol.close_rcvd
            confirmed = sent.get(local_port, 0)
            if delivered != confirmed:
                shortfalls.append(("websockets", local_port, delivered, confirmed))
        total = sum(sent.values())
        report(record_property, "messages_confirmed_by_send", total)
        # A message is written whole or not at all, and never after the close frame, so each
        # client got exactly the messages whose send() returned (fewer: lost; more: send()
        # raised for a message it had written).
        assert not shortfalls, f"{len(shortfalls)} clients got a count other than send()'s (kind, port, got, sent): {shortfalls[:5]}"
        assert set(outcomes.values()) <= {1001}, collections.Counter(outcomes.values())
        assert not handler.clients
    finally:
        poller_stop.set()
        poller.join(10)
        for client in raw_clients:
            client.sock.close()
        for ws in lib_clients:
            ws.close()
    errors.assert_clean()


# -- 5. descriptor exhaustion ---------------------------------------------------------


_EMFILE_CHILD = textwrap.dedent(
    """
    import errno, logging, os, resource, sys, threading, time
    from ws_multipath import MultipathServer

    out = sys.stdout
    def say(*words):
        out.write(" ".join(str(w) for w in words) + "\\n"); out.flush()

    records = []
    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record)
            if record.levelno >= logging.ERROR:
                say("LOGGED", record.getMessage().replace("\\n", " ")[:200])
    logging.getLogger("ws_multipath").addHandler(Collect(level=logging.ERROR))

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    server = MultipathServer(0, "127.0.0.1")
    echo = server.create_handler("/echo")
    echo.on("connection", lambda ws, request: ws.on("message", lambda data, is_binary: ws.send(data)))
    say("PORT", server.port)

    assert sys.stdin.readline().strip() == "FILL"
    filler = []
    while True:
        try:
            filler.append(os.open("/dev/null", os.O_RDONLY))
        except OSError as exc:
            assert exc.errno == errno.EMFILE, exc
            break
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    wall_before = time.monotonic()
    say("FULL", len(filler))

    assert sys.stdin.readline().strip() == "FREE"
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    wall = time.monotonic() - wall_before
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    for fd in filler:
        os.close(fd)
    say("FREED", "listening=%s" % server.listening, "cpu=%.3f" % cpu, "wall=%.3f" % wall, "errors=%d" % len(records))

    assert sys.stdin.readline().strip() == "CLOSE"
    server.close()
    say("CLOSED", "errors=%d" % len(records))
    """
)


@pytest.mark.timeout(90)
def test_emfile_backs_off_logs_once_and_recovers(errors, record_property):
    child = subprocess.Popen(
        [sys.executable, "-c", _EMFILE_CHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    lines: "queue.Queue" = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line.strip()) for line in child.stdout], daemon=True).start()
    transcript = []

    def expect(prefix, timeout=15):
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {prefix!r} line from the child; got {transcript}") from None
            transcript.append(line)
            if line.startswith(prefix):
                return line.split()[1:]
            if time.monotonic() > deadline:
                raise AssertionError(f"no {prefix!r} line from the child; got {transcript}")

    def tell(word):
        child.stdin.write(word + "\n")
        child.stdin.flush()

    try:
        port = int(expect("PORT")[0])
        tell("FILL")
        expect("FULL")
        results: "queue.Queue" = queue.Queue()

        def client(text):
            try:
                with connect(f"ws://{HOST}:{port}/echo", open_timeout=30, ping_interval=None) as ws:
                    ws.send(text)
                    results.put(ws.recv(timeout=10))
            except Exception as exc:  # noqa: BLE001
                results.put(exc)

        first = threading.Thread(target=client, args=("first",))
        first.start()
        expect("LOGGED")  # accept() failed with EMFILE: logged once...
        # ...and not again while exhausted: a second client, and several
        # backed-off accept attempts (one each 0.1 s) during this wait.
        second = threading.Thread(target=client, args=("second",))
        second.start()
        hold = threading.Event()
        hold.wait(1.0)  # the exhaustion lasts this long (a scenario length, not a synchronisation)
        tell("FREE")
        freed = dict(word.split("=") for word in expect("FREED"))
        report(record_property, "emfile_child_cpu_while_exhausted", freed)
        assert freed["listening"] == "True"
        assert freed["errors"] == "1", transcript
        assert float(freed["cpu"]) < 0.5 * float(freed["wall"]), freed  # backed off, did not spin
        first.join(30)
        second.join(30)
        # while the table was full, the reserved descriptor answered each 503 at once
        answers = [results.get(timeout=1) for _ in range(2)]
        assert all(isinstance(answer, InvalidStatus) and answer.response.status_code == 503 for answer in answers), answers
        # and it goes on serving new clients
        client("third")
        assert results.get(timeout=1) == "third"
        tell("CLOSE")
        closed = dict(word.split("=") for word in expect("CLOSED"))
        assert closed["errors"] == "1", transcript
        assert child.wait(20) == 0, child.stderr.read()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        for stream in (child.stdin, child.stdout, child.stderr):
            try:
                stream.close()
            except OSError:
                pass
    errors.assert_clean()


# -- 6. limits: max_connections, origins, header limits, TLS ------------------------


@pytest.mark.timeout(60)
def test_max_connections_refuses_with_503_and_spares_existing_clients(servers, errors):
    server = servers(max_connections=3)
    log = ConnectionLog()
    add_echo(server, "/a", log)
    add_echo(server, "/b", log)
    port = server.port
    clients = [connect(f"ws://{HOST}:{port}/a"), connect(f"ws://{HOST}:{port}/a"), connect(f"ws://{HOST}:{port}/b")]
    try:
        for path in ("/a", "/b"):
            with pytest.raises(InvalidStatus) as refused:
                connect(f"ws://{HOST}:{port}{path}")
            assert refused.value.response.status_code == 503
            sock = raw_connect(port)
            with sock:
                sock.sendall(upgrade_request(path, port))
                status, _, _ = read_http_response(sock)
                assert status == 503
        for i, ws in enumerate(clients):
            ws.send(f"m{i}")
            assert ws.recv(timeout=5) == f"m{i}"
        assert len(log.opened) == 3 and not log.closes
        # A slot frees once a client has gone.
        clients.pop().close()
        assert log.wait_closed(1, 5)

        def try_connect():
            try:
                return connect(f"ws://{HOST}:{port}/b")
            except InvalidStatus as exc:
                assert exc.response.status_code == 503
                return None

        clients.append(wait_until(try_connect, 5, interval=0.05, message="a freed slot"))
        clients[-1].send("again")
        assert clients[-1].recv(timeout=5) == "again"
    finally:
        for ws in clients:
            ws.close()
    errors.assert_clean()


@pytest.mark.timeout(60)
def test_allowed_origins_refuses_other_origins_with_403(servers, errors):
    server = servers()
    add_echo(server, "/o", allowed_origins=["https://good.example"])
    port = server.port
    url = f"ws://{HOST}:{port}/o"
    for origin in ("https://evil.example", "https://good.example.evil", "http://good.example"):
        with pytest.raises(InvalidStatus) as refused:
            connect(url, origin=origin)
        assert refused.value.response.status_code == 403
    sock = raw_connect(port)  # no Origin header at all
    with sock:
        sock.sendall(upgrade_request("/o", port))
        assert read_http_response(sock)[0] == 403
    with connect(url, origin="https://good.example") as ws:
        ws.send("ok")
        assert ws.recv(timeout=5) == "ok"
    errors.assert_clean()


def _head_with(port, size=None, headers=0):
    """A valid upgrade request padded to ``size`` bytes or with extra header fields."""
    extra = [(f"X-Extra-{i}", "v") for i in range(headers)]
    head = upgrade_request("/h", port, headers=tuple(extra))
    if size is not None:
        pad = size - len(head) - len("X-Pad: \r\n")
        assert pad >= 0
        head = upgrade_request("/h", port, headers=tuple(extra) + (("X-Pad", "p" * pad),))
        assert len(head) == size
    return head


@pytest.mark.timeout(60)
def test_request_head_limits_answer_431(servers, errors):
    server = servers(max_header_size=2048, max_headers=12)
    add_echo(server, "/h")
    port = server.port

    def status_of(data, shut=False):
        sock = raw_connect(port)
        with sock:
            sock.sendall(data)
            if shut:
                sock.shutdown(socket.SHUT_WR)
            return read_http_response(sock)[0]

    base_fields = 5  # upgrade_request's own header fields
    assert status_of(_head_with(port, size=2048)) == 101
    assert status_of(_head_with(port, size=2049)) == 431
    assert status_of(_head_with(port, size=8000)) == 431
    assert status_of(_head_with(port, headers=12 - base_fields)) == 101
    assert status_of(_head_with(port, headers=13 - base_fields)) == 431
    assert status_of(_head_with(port, headers=200)) == 431
    # a head that never ends, larger than the limit
    assert status_of(b"GET /h HTTP/1.1\r\n" + b"X-Long: " + b"a" * 4000) == 431
    # and a much larger one than the server reads in one go (the answer must not be lost to an RST)
    for _ in range(scaled(20)):
        assert status_of(b"GET /h HTTP/1.1\r\n" + b"X-Long: " + b"a" * 100_000) == 431
    errors.assert_clean()


@pytest.mark.timeout(60)
def test_tls_serves_wss_and_drops_a_stalled_tls_handshake(servers, errors, certificate, record_property):
    server_context, client_context = tls_contexts(*certificate)
    open_timeout = 3.0  # the healthy client must finish its TLS handshake within it, even on a loaded machine
    log = ConnectionLog()
    server = servers(ssl_context=server_context, open_timeout=open_timeout)
    handler = add_echo(server, "/echo", log)
    port = server.port
    url = f"wss://{HOST}:{port}/echo"

    started = time.monotonic()
    stalled_silent = raw_connect(port)
    stalled_partial = raw_connect(port)
    stalled_partial.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello cut short
    plaintext = raw_connect(port)
    plaintext.sendall(upgrade_request("/echo", port))
    try:
        with tls_connect(url, client_context) as ws:  # served while the others stall
            for i in range(20):
                ws.send(f"secure {i}")
                assert ws.recv(timeout=5) == f"secure {i}"
            ws.send(b"\x00" * 200_000)
            assert ws.recv(timeout=5) == b"\x00" * 200_000
        # Plain HTTP on the TLS port is dropped at once (a TLS alert at most).
        data, how = read_until_eof(plaintext, open_timeout + 5)
        assert how in ("eof", "reset") and b"HTTP/1.1 101" not in data
        for sock in (stalled_silent, stalled_partial):
            data, how = read_until_eof(sock, open_timeout + 5)
            waited = time.monotonic() - started
            assert how in ("eof", "reset"), (how, waited)
            assert data == b""
            assert waited >= open_timeout - 0.05, waited
        report(record_property, "tls_stall_dropped_after", round(time.monotonic() - started, 3))
        assert log.wait_closed(1, 5)
        assert set(log.close_codes()) == {1000}
        wait_until(lambda: not handler.clients, 5, message="handler.clients to empty")
    finally:
        for sock in (stalled_silent, stalled_partial, plaintext):
            sock.close()
    errors.assert_clean()
