"""WebSocket (the server-side connection): sending, receiving, closing,
attributes, thread safety. What arrives and where it goes: test_incoming.py."""

from __future__ import annotations

import concurrent.futures
import queue
import socket
import struct
import threading
import time

import pytest
from websockets.exceptions import ConnectionClosed as ClientClosed
from websockets.sync.client import connect

from ws_multipath import ConnectionClosed, ReadyState, WebSocket

from .conftest import LEGACY, TIMEOUT, echo, read_until_eof, serve_one, upgrade_head, url, wait_until


# -- send ------------------------------------------------------------------------


def test_send_str_is_text_and_bytes_like_are_binary(server):
    connections = serve_one(server)
    with connect(url(server, "/ws"), open_timeout=TIMEOUT) as client:
        ws = connections.get(timeout=TIMEOUT)
        ws.send("text")
        ws.send(b"bytes")
        ws.send(bytearray(b"array"))
        ws.send(memoryview(b"view"))
        assert [client.recv(timeout=TIMEOUT) for _ in range(4)] == ["text", b"bytes", b"array", b"view"]


@pytest.mark.parametrize("bad", [1, None, [1], {"a": 1}])  # a list of str or bytes is a fragmented message (test_fragmented_send.py)
def test_send_refuses_other_types(server, bad):
    connections = serve_one(server)
    with connect(url(server, "/ws"), open_timeout=TIMEOUT):
        ws = connections.get(timeout=TIMEOUT)
        with pytest.raises(TypeError, match="data"):
            ws.send(bad)


def test_concurrent_sends_never_interleave(server):
    connections = serve_one(server)
    senders, per_sender = 8, 50
    with connect(url(server, "/ws"), open_timeout=TIMEOUT, max_size=None) as client:
        ws = connections.get(timeout=TIMEOUT)

        def send_many(n: int) -> None:
            for i in range(per_sender):
                ws.send(bytes([n]) * (70_000 + i))  # large frames: a torn one would corrupt the stream

        with concurrent.futures.ThreadPoolExecutor(senders) as pool:
            futures = [pool.submit(send_many, n) for n in range(senders)]
            received = [client.recv(timeout=TIMEOUT) for _ in range(senders * per_sender)]
            for future in futures:
                future.result(TIMEOUT)
    for message in received:
        assert message == message[:1] * len(message)
    assert sorted(len(m) for m in received) == sorted(70_000 + i for _ in range(senders) for i in range(per_sender))


def test_send_after_close_raises_connection_closed_with_code(server):
    connections = serve_one(server)
    with connect(url(server, "/ws"), open_timeout=TIMEOUT) as client:
        ws = connections.get(timeout=TIMEOUT)
        client.close(4000, "bye")
        assert wait_until(lambda: ws.ready_state is ReadyState.CLOSED)
        with pytest.raises(ConnectionClosed) as info:
            ws.send("late")
        assert (info.value.code, info.value.reason) == (4000, "bye")


def test_16_mib_binary_message_is_echoed_intact(server):
    server.create_handler(path="/echo", max_payload=32 * 1024 * 1024).on("connection", echo)
    payload = bytes(range(256)) * (16 * 1024 * 1024 // 256)
    with connect(url(server, "/echo"), open_timeout=TIMEOUT, max_size=None) as client:
        client.send(payload)
        assert client.recv(timeout=30) == payload


# -- receive and iteration -----------------------------------------------------


def test_receive_returns_messages_in_order_and_times_out(server):
    connections = serve_one(server)
    with connect(url(server, "/ws"), open_timeout=TIMEOUT) as client:
        ws = connections.get(timeout=TIMEOUT)
        client.send("one")
        client.send(b"two")
        assert ws.receive(timeout=TIMEOUT) == "one"
        assert ws.receive(timeout=TIMEOUT) == b"two"
        with pytest.raises(TimeoutError):
            ws.receive(timeout=0.05)


def test_receive_raises_connection_closed_after_the_last_message(server):
    connections = serve_one(server)
    with connect(url(server, "/ws"), open_timeout=TIMEOUT) as client:
        ws = connections.get(timeout=TIMEOUT)
        client.send("last")
        client.close(1000, "done")
    assert ws.receive(timeout=TIMEOUT) == "last"
    with pytest.raises(ConnectionClosed) as info:
        ws.receive(timeout=TIMEOUT)
    assert info.value.code == 1000


def test_blocking_iteration_inside_the_connection_listener(server):
    handler = server.create_handler(path="/iter")
    ended = threading.Event()

    @handler.on("connection")
    def loop(ws, request):
        for message in ws:
            ws.send(message.upper() if isinstance(message, str) else message)
        ended.set()

    with connect(url(server, "/iter"), open_timeout=TIMEOUT) as client:
        for word in ("a", "b", "c"):
            client.send(word)
            assert client.recv(timeout=TIMEOUT) == word.upper()
    assert ended.wait(TIMEOUT)


def test_receive_inside_a_message_listener_raises_runtime_error(server):
    handler = server.create_handler(path="/x")
    errors: queue.Queue = queue.Queue()
    handler.on("error", errors.put)
    handler.on("connection", lambda ws, request: ws.on("message", lambda data, is_binary: ws.receive()))
    with connect(url(server, "/x"), open_timeout=TIMEOUT) as client:
        client.send("x")
        assert isinstance(errors.get(timeout=TIMEOUT), RuntimeError)


# -- closing -------------------------------------------------------------------


def test_server_echoes_the_peers_close_code_and_reason(server):
    serve_one(server)
    with connect(url(server, "/ws"), open_timeout=TIMEOUT) as client:
        client.close(4321, "why not")
        assert client.close_code == 4321 or client.protocol.close_rcvd.code == 4321
        assert client.protocol.close_rcvd.reason == "why not"


def test_close_starts_the_handshake_and_sets_state(server):
    connections = serve_one(server)
    closed: queue.Queue = queue.Queue()
    with connect(url(server, "/ws"), open_timeout=TIMEOUT) as client:
        ws = connections.get(timeout=TIMEOUT)
        ws.on("close", lambda code, reason: closed.put((code, reason)))
        assert ws.ready_state == WebSocket.OPEN == 1
        ws.close(4002, "server says bye")
        assert ws.ready_state in (ReadyState.CLOSING, ReadyState.CLOSED)
        with pytest.raises(ClientClosed):
            client.recv(timeout=TIMEOUT)
        assert client.close_code == 4002 and client.close_reason == "server says bye"
    assert closed.get(timeout=TIMEOUT) == (4002, "server says bye")
    assert ws.ready_state == ReadyState.CLOSED == 3
    assert (ws.close_code, ws.close_reason) == (4002, "server says bye")
    ws.close()  # idempotent


def _masked_close(payload: bytes) -> bytes:
    return bytes([0x88, 0x80 | len(payload)]) + b"\x00" * 4 + payload  # mask 0: payload as is


@pytest.mark.parametrize(
    "ending, event, sent",
    [
        (_masked_close(struct.pack("!H", 4000) + b"bye"), (4000, "bye"), (4000, "bye")),
        (_masked_close(b""), (1005, ""), (1005, "")),  # a close frame without a code (the echo has none either)
        (b"\x81\x02ab", (1006, ""), (1002, None)),  # an unmasked frame: failed by the server, no close frame came
        (b"", (1006, ""), (1006, "")),  # the client just goes away
    ],
    ids=["client-code", "no-code", "protocol-error", "lost"],
)
def test_the_close_event_reports_the_code_received_as_rfc6455_7_1_5_defines_it(server, ending, event, sent):
    connections = serve_one(server)
    closed: queue.Queue = queue.Queue()
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(upgrade_head("/ws"))
        _read_http_head(sock)
        ws = connections.get(timeout=TIMEOUT)
        ws.on("close", lambda code, reason: closed.put((code, reason)))
        sock.sendall(ending)
        if ending:
            read_until_eof(sock)
    assert closed.get(timeout=TIMEOUT) == event
    assert (ws.close_code, ws.close_reason) == event
    assert ws.sent_close_code == sent[0] and (sent[1] is None or ws.sent_close_reason == sent[1])


@pytest.mark.parametrize("code", [999, 1004, 1005, 1006, 1015, 2999, 5000])
def test_close_refuses_invalid_codes(server, code):
    connections = serve_one(server)
    with connect(url(server, "/ws"), open_timeout=TIMEOUT):
        ws = connections.get(timeout=TIMEOUT)
        with pytest.raises(ValueError, match=str(code)):
            ws.close(code)


def test_close_refuses_a_reason_over_123_bytes(server):
    connections = serve_one(server)
    with connect(url(server, "/ws"), open_timeout=TIMEOUT):
        ws = connections.get(timeout=TIMEOUT)
        with pytest.raises(ValueError, match="123"):
            ws.close(1000, "é" * 62)
        ws.close(1000, "é" * 61)


def test_close_timeout_drops_a_peer_that_never_answers(server):
    connections = serve_one(server, close_timeout=0.3)
    closed: queue.Queue = queue.Queue()
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(upgrade_head("/ws"))
        ws = connections.get(timeout=TIMEOUT)
        ws.on("close", lambda code, reason: closed.put(code))
        ws.close()
        assert closed.get(timeout=TIMEOUT) == 1006  # no close frame received (RFC 6455 section 7.1.5)
        assert ws.sent_close_code == 1000


def test_terminate_drops_at_once_with_1006(server):
    connections = serve_one(server)
    closed: queue.Queue = queue.Queue()
    with connect(url(server, "/ws"), open_timeout=TIMEOUT) as client:
        ws = connections.get(timeout=TIMEOUT)
        ws.on("close", lambda code, reason: closed.put(code))
        ws.terminate()
        assert closed.get(timeout=TIMEOUT) == 1006
        with pytest.raises(ClientClosed):
            client.recv(timeout=TIMEOUT)


def test_heartbeat_pings_and_keeps_an_answering_client(server):
    connections = serve_one(server, ping_interval=0.05, ping_timeout=1)
    with connect(url(server, "/ws"), open_timeout=TIMEOUT) as client:
        ws = connections.get(timeout=TIMEOUT)
        pongs: queue.Queue = queue.Queue()
        ws.on("pong", pongs.put)
        for _ in range(3):
            pongs.get(timeout=TIMEOUT)
        assert ws.ready_state is ReadyState.OPEN


def test_heartbeats_of_connections_opened_together_are_spread(server):
    """Issue 17.7: twenty connections opened at once do not ping in one
    burst: the first ping comes after 75% to 100% of ping_interval."""
    handler = server.create_handler(path="/beat", ping_interval=2.0, ping_timeout=5)
    first_pings: "queue.Queue[float]" = queue.Queue()

    @handler.on("connection")
    def on_connection(ws, request):
        opened = time.monotonic()
        ws.on("pong", lambda payload: first_pings.put(time.monotonic() - opened))

    clients = [connect(url(server, "/beat"), open_timeout=TIMEOUT, ping_interval=None, **LEGACY) for _ in range(20)]
    try:
        delays = sorted({round(first_pings.get(timeout=TIMEOUT), 3) for _ in range(20)})
        assert 1.45 <= delays[0] and delays[-1] <= 2.5, delays
        assert delays[-1] - delays[0] > 0.05, delays  # 20 uniform draws over 0.5 s: a spread of ~0.48 s
    finally:
        for client in clients:
            client.close()


def test_heartbeat_drops_a_silent_client_with_1011(server):
    connections = serve_one(server, ping_interval=0.1, ping_timeout=0.2)
    closed: queue.Queue = queue.Queue()
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(upgrade_head("/ws"))  # then never answers a ping
        ws = connections.get(timeout=TIMEOUT)
        ws.on("close", lambda code, reason: closed.put((code, reason)))
        assert closed.get(timeout=TIMEOUT) == (1006, "")  # failed: no close frame received
        assert (ws.sent_close_code, ws.sent_close_reason) == (1011, "keepalive ping timeout")


def test_unsolicited_pongs_do_not_answer_the_heartbeat(server):
    # A client that reads nothing and sends empty pongs: only a pong with the
    # heartbeat ping's payload answers it (hostile-client pass, issue 18).
    connections = serve_one(server, ping_interval=0.1, ping_timeout=0.2)
    closed: queue.Queue = queue.Queue()
    empty_pong = b"\x8a\x80" + b"\x00" * 4
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(upgrade_head("/ws"))
        _read_http_head(sock)
        ws = connections.get(timeout=TIMEOUT)
        ws.on("close", lambda code, reason: closed.put(code))
        for _ in range(200):  # at most 10 s of pongs; the verdict comes within 0.3 s
            try:
                sock.sendall(empty_pong)
            except OSError:
                break
            try:
                code = closed.get(timeout=0.05)
                break
            except queue.Empty:
                continue
        else:
            code = None
    assert code == 1006 and (ws.sent_close_code, ws.sent_close_reason) == (1011, "keepalive ping timeout")


def test_a_client_answering_the_heartbeat_pings_stays(server):
    connections = serve_one(server, ping_interval=0.05, ping_timeout=0.2)
    with connect(url(server, "/ws"), open_timeout=TIMEOUT, ping_interval=None) as client:  # answers pings itself
        ws = connections.get(timeout=TIMEOUT)
        pongs: queue.Queue = queue.Queue()
        ws.on("pong", pongs.put)
        payloads = {pongs.get(timeout=TIMEOUT) for _ in range(8)}
        assert len(payloads) > 1 and all(len(payload) == 4 for payload in payloads)  # random payloads
        assert ws.ready_state is ReadyState.OPEN


# -- protocol errors ---------------------------------------------------------


@pytest.mark.parametrize(
    "frame, code",
    [
        (b"\x83\x80" + b"\x00" * 4, 1002),  # reserved opcode 3
        (b"\x81\x02ab", 1002),  # unmasked client frame
        (b"\xc1\x80" + b"\x00" * 4, 1002),  # RSV1 without an extension
        (b"\x09\x80" + b"\x00" * 4, 1002),  # fragmented ping
        (b"\x89\xfe\x00\x7e" + b"\x00" * 4 + b"x" * 126, 1002),  # ping payload over 125
        (b"\x81\x82\x00\x00\x00\x00\xc3\x28", 1007),  # invalid UTF-8
        (b"\x82\xff" + struct.pack("!Q", 1 << 40) + b"\x00" * 4, 1009),  # too big
    ],
)
def test_protocol_violations_fail_the_connection_with_the_right_code(server, frame, code):
    server.create_handler(path="/echo").on("connection", echo)
    errors: queue.Queue = queue.Queue()
    server.on("error", errors.put)
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(upgrade_head("/echo"))
        _read_http_head(sock)
        sock.sendall(frame)
        data = read_until_eof(sock)
    assert data[0] == 0x88 and struct.unpack("!H", data[2:4])[0] == code
    with connect(url(server, "/echo"), open_timeout=TIMEOUT) as client:  # others still served
        client.send("ok")
        assert client.recv(timeout=TIMEOUT) == "ok"
    assert errors.empty()


def test_protocol_error_is_emitted_on_the_connection(server):
    connections = serve_one(server)
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(upgrade_head("/ws"))
        ws = connections.get(timeout=TIMEOUT)
        errors: queue.Queue = queue.Queue()
        ws.on("error", errors.put)
        _read_http_head(sock)
        sock.sendall(b"\x81\x02ab")
        error = errors.get(timeout=TIMEOUT)
        assert error.code == 1002


def test_attributes(server):
    connections = serve_one(server, handle_protocols=lambda protocols, request: "b")
    with connect(url(server, "/ws?x=1"), open_timeout=TIMEOUT, subprotocols=["a", "b"]):
        ws = connections.get(timeout=TIMEOUT)
        assert ws.protocol == "b" and ws.extensions == ""
        assert ws.path == "/ws" and ws.request.query == {"x": ["1"]}
        assert ws.remote_address[0] == "127.0.0.1"
        assert ws.close_code is None and ws.close_reason == ""
        assert ws.ready_state == ReadyState.OPEN


# -- helpers -------------------------------------------------------------------


def _read_http_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(1)
        assert chunk, "closed during handshake"
        data += chunk
    return data


# -- who reads: one thread per connection, in every style -----------------------


def test_blocking_iteration_costs_one_thread_per_connection(server):
    handler = server.create_handler(path="/iter")
    handler.on("connection", lambda ws, request: [ws.send(m) for m in ws])
    clients = [connect(url(server, "/iter"), open_timeout=TIMEOUT, **LEGACY) for _ in range(10)]
    try:
        for client in clients:
            client.send("x")
            assert client.recv(timeout=TIMEOUT) == "x"
        def names() -> list[str]:
            return [t.name for t in threading.enumerate() if t.name.startswith("ws_multipath-")]

        # each 'connection' listener keeps the thread it started on (a thread
        # that lost the head loop to another once it blocked: the sysmon, in 5-10 ms)
        assert wait_until(lambda: names().count("ws_multipath-connection") == 10, TIMEOUT), names()
        assert not [name for name in names() if name.startswith("ws_multipath-reader")]
    finally:
        for client in clients:
            client.close()


def test_receive_timeout_while_pulling_then_messages_still_arrive(server):
    handler = server.create_handler(path="/t")
    results: queue.Queue = queue.Queue()

    @handler.on("connection")
    def wait_then_receive(ws, request):
        try:
            ws.receive(timeout=0.05)
        except TimeoutError as exc:
            results.put(exc)
        results.put(ws.receive(timeout=TIMEOUT))

    with connect(url(server, "/t"), open_timeout=TIMEOUT) as client:
        assert isinstance(results.get(timeout=TIMEOUT), TimeoutError)
        client.send("after")
        assert results.get(timeout=TIMEOUT) == "after"


def test_a_busy_connection_listener_still_gets_pings_answered(server):
    """A 'connection' listener that blocks without receiving: the connection
    joins its event loop early, so the client's ping is answered and the
    message waits in the inbox."""
    handler = server.create_handler(path="/busy")
    release = threading.Event()
    got: queue.Queue = queue.Queue()

    @handler.on("connection")
    def busy(ws, request):
        release.wait(TIMEOUT)
        got.put(ws.receive(timeout=TIMEOUT))

    with connect(url(server, "/busy"), open_timeout=TIMEOUT) as client:
        client.send("queued meanwhile")
        assert client.ping(b"alive?").wait(TIMEOUT)
        assert [t for t in threading.enumerate() if t.name == "ws_multipath-loop /busy"]
        release.set()
        assert got.get(timeout=TIMEOUT) == "queued meanwhile"


def test_log_lines_about_a_connection_name_its_peer_as_host_port_and_its_path(server, library_log):
    handler = server.create_handler(path="/logged")
    closed = threading.Event()
    handler.on("connection", lambda ws, request: ws.on("close", lambda code, reason: closed.set()))
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(upgrade_head("/logged"))
        port = sock.getsockname()[1]
        sock.recv(4096)
        sock.sendall(b"\x81\x05hello")  # unmasked: a protocol error
        read_until_eof(sock)
    assert closed.wait(TIMEOUT)
    messages = [r.getMessage() for r in library_log.records]
    about = [m for m in messages if str(port) in m]
    assert any(m.startswith("failing ") for m in about), messages
    for message in about:
        assert f"127.0.0.1:{port} on /logged" in message, message
    assert not [m for m in messages if "('127.0.0.1'" in m], messages


def test_a_listeners_send_to_a_peer_who_left_is_logged_at_debug_not_error(server, library_log):
    """Churn is not a bug: the listener's send() raises ConnectionClosed
    because the client just left, and nobody listens for 'error'."""
    handler = server.create_handler(path="/gone")
    tried = threading.Event()

    @handler.on("connection")
    def on_connection(ws, request):
        @ws.on("message")
        def on_message(data, is_binary):
            ws.terminate()  # as if the client vanished right now
            try:
                ws.send("too late")
            finally:
                tried.set()

    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(upgrade_head("/gone"))
        sock.recv(4096)
        sock.sendall(b"\x81\x82abcd" + bytes(a ^ b for a, b in zip(b"hi", b"ab")))
        assert tried.wait(TIMEOUT)
    assert wait_until(lambda: any("met a closed connection" in r.getMessage() for r in library_log.records))
    assert not library_log.errors()
