"""Attacks on three changes: the read hot path (``FrameReader.plain_messages``,
``Incoming._deliver_now``), the handler grace after listening
(``RoutingTable.lookup_or_wait``) and ``pause()`` holding back the frames
that came with the upgrade request (``SocketReader.feed_first``).

Real sockets on 127.0.0.1; raw clients send one frame per ``send`` and wait
until the server has read it (its ``bytes_in``) before the next, so that
each read holds exactly one whole frame: the hot path's case. Every wait is
bounded."""

from __future__ import annotations

import queue
import socket
import struct
import threading
import time
import zlib

import pytest

from .conftest import TIMEOUT, upgrade_head, url, wait_until
from .node_client import node_ws  # noqa: F401 - a fixture
from .faultkit import (
    close_frame, connect, encode_frame, read_http_response, read_server_frame, read_until_eof, upgrade_request,
)

#: What a request that needs no handler may take to be answered during the
#: grace (it is instant afterwards; the grace is 1 s).
PROMPT = 0.5


# -- helpers --------------------------------------------------------------------


def _handler_with(server, path="/h", **options):
    """A handler whose connections come on the returned queue."""
    handler = server.create_handler(path, **options)
    connections: queue.Queue = queue.Queue()
    handler.on("connection", lambda ws, request: connections.put(ws))
    return handler, connections


def _open(server, path, early=b"", extra_headers=()):
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
    sock.sendall(upgrade_request(path, server.port, headers=extra_headers) + early)
    status, head, rest = read_http_response(sock)
    assert status == 101, head
    return sock, bytearray(rest)


def _send_alone(sock, ws, frame):
    """Send ``frame`` and wait until the server has read it: the next send
    is a read of its own (the hot path's case: one whole frame per read)."""
    before = ws._incoming.bytes_in
    sock.sendall(frame)
    assert wait_until(lambda: ws._incoming.bytes_in >= before + len(frame), TIMEOUT), "the server did not read the frame"


def _text(payload: str) -> bytes:
    return encode_frame(0x1, payload.encode())


def _frames_until_close(sock, buffer, within=TIMEOUT):
    """Server frames until (and with) its close frame."""
    frames = []
    deadline = time.monotonic() + within
    while True:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        frame = read_server_frame(sock, buffer)
        frames.append(frame)
        if frame.opcode == 0x8:
            return frames


# -- 1. the hot path: equivalent to the general path in every state -------------


def test_one_frame_reads_are_delivered_once_in_order_and_counted(make_server):
    server = make_server()
    handler, connections = _handler_with(server)
    got = []
    done = threading.Event()
    count = 50

    def on_connection(ws, request):
        ws.on("message", lambda data, is_binary: (got.append((data, is_binary)), len(got) == count and done.set()))

    handler.on("connection", on_connection)
    sock, _ = _open(server, "/h")
    with sock:
        ws = connections.get(timeout=TIMEOUT)
        assert wait_until(lambda: ws._socket_reader._in_loop(), TIMEOUT)
        sent_bytes = 0
        for i in range(count):
            frame = encode_frame(0x2, bytes([i]) * i) if i % 2 else _text(f"m{i}")
            sent_bytes += len(frame)
            _send_alone(sock, ws, frame)
        assert done.wait(TIMEOUT)
        assert got == [((bytes([i]) * i, True) if i % 2 else (f"m{i}", False)) for i in range(count)]
        stats = handler.stats()
        assert stats["messages_in"] == count
        assert stats["bytes_in"] == sent_bytes


def test_a_listener_blocked_past_the_hand_off_keeps_order_without_loss_or_duplicates(make_server):
    """m0 blocks its listener until the loop was handed off; m1..m9 come one
    per read while it is blocked (queued for its dispatcher), m10..m19 after
    it returned (the hot path again)."""
    server = make_server()
    handler, connections = _handler_with(server)
    got = []
    release = threading.Event()
    entered = threading.Event()
    done = threading.Event()

    def on_connection(ws, request):
        def on_message(data, is_binary):
            got.append(data)
            if data == "m0":
                entered.set()
                release.wait(TIMEOUT)
            if len(got) == 20:
                done.set()

        ws.on("message", on_message)

    handler.on("connection", on_connection)
    sock, _ = _open(server, "/h")
    with sock:
        ws = connections.get(timeout=TIMEOUT)
        assert wait_until(lambda: ws._socket_reader._in_loop(), TIMEOUT)
        _send_alone(sock, ws, _text("m0"))
        assert entered.wait(TIMEOUT)
        assert wait_until(lambda: ws._socket_reader.dispatcher is not None, TIMEOUT), "no hand-off"
        for i in range(1, 10):
            _send_alone(sock, ws, _text(f"m{i}"))
        release.set()
        assert wait_until(lambda: ws._socket_reader.dispatcher is None, TIMEOUT)
        for i in range(10, 20):
            _send_alone(sock, ws, _text(f"m{i}"))
        assert done.wait(TIMEOUT)
        assert got == [f"m{i}" for i in range(20)]
        assert handler.stats()["messages_in"] == 20


def test_a_listener_that_closes_stops_the_messages_after_it(make_server):
    server = make_server()
    handler, connections = _handler_with(server)
    got = []

    def on_connection(ws, request):
        ws.on("message", lambda data, is_binary: (got.append(data), ws.close(4000, "enough")))

    handler.on("connection", on_connection)
    sock, buffer = _open(server, "/h")
    with sock:
        ws = connections.get(timeout=TIMEOUT)
        assert wait_until(lambda: ws._socket_reader._in_loop(), TIMEOUT)
        _send_alone(sock, ws, _text("first"))
        _send_alone(sock, ws, _text("second"))  # after the server's close: discarded
        frames = _frames_until_close(sock, buffer)
        assert frames[-1].close_code == 4000
        sock.sendall(close_frame(4000))
        _, how = read_until_eof(sock, TIMEOUT)
        assert how in ("eof", "reset")
    assert got == ["first"]


def test_a_listener_that_raises_does_not_lose_or_repeat_messages(make_server):
    server = make_server()
    handler, connections = _handler_with(server)
    got = []
    errors = []
    done = threading.Event()

    def on_connection(ws, request):
        def on_message(data, is_binary):
            got.append(data)
            if len(got) == 6:
                done.set()
            if data.startswith("boom"):
                raise RuntimeError(data)

        ws.on("message", on_message)
        ws.on("error", lambda exc: errors.append(exc))

    handler.on("connection", on_connection)
    sock, _ = _open(server, "/h")
    with sock:
        ws = connections.get(timeout=TIMEOUT)
        assert wait_until(lambda: ws._socket_reader._in_loop(), TIMEOUT)
        for data in ("a", "boom1", "b", "boom2", "c", "d"):
            _send_alone(sock, ws, _text(data))
        assert done.wait(TIMEOUT)
    assert got == ["a", "boom1", "b", "boom2", "c", "d"]


@pytest.mark.parametrize(
    "frame, code",
    [
        (encode_frame(0x1, b"\xff\xfe ok"), 1007),  # invalid UTF-8
        (encode_frame(0x1, b"plain", mask=False), 1002),  # unmasked
        (encode_frame(0x1, b"rsv2", rsv=2), 1002),  # a reserved bit
        (encode_frame(0x1, b"rsv1", rsv=4), 1002),  # RSV1 with no extension negotiated
        (encode_frame(0x2, b"x" * 11), 1009),  # over max_payload
        (encode_frame(0x1, b"short", length_form=126), 1002),  # not the shortest length form
    ],
    ids=["utf8", "unmasked", "rsv2", "rsv1", "oversize", "long-form"],
)
def test_a_bad_frame_alone_in_a_read_is_refused_and_nothing_delivered(make_server, frame, code):
    server = make_server()
    handler, connections = _handler_with(server, max_payload=10)
    got = []
    handler.on("connection", lambda ws, request: ws.on("message", lambda data, is_binary: got.append(data)))
    sock, buffer = _open(server, "/h")
    with sock:
        ws = connections.get(timeout=TIMEOUT)
        assert wait_until(lambda: ws._socket_reader._in_loop(), TIMEOUT)
        _send_alone(sock, ws, _text("ok"))
        sock.sendall(frame)
        frames = _frames_until_close(sock, buffer)
        assert frames[-1].close_code == code
    assert got == ["ok"]
    assert handler.stats()["messages_in"] == 1


def test_skip_utf8_validation_repairs_a_lone_frame(make_server):
    server = make_server()
    handler, connections = _handler_with(server, skip_utf8_validation=True)
    got: queue.Queue = queue.Queue()
    handler.on("connection", lambda ws, request: ws.on("message", lambda data, is_binary: got.put(data)))
    sock, _ = _open(server, "/h")
    with sock:
        ws = connections.get(timeout=TIMEOUT)
        assert wait_until(lambda: ws._socket_reader._in_loop(), TIMEOUT)
        _send_alone(sock, ws, encode_frame(0x1, b"a\xffb"))
        assert got.get(timeout=TIMEOUT) == "a\ufffdb"


def _deflate(payload: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-15)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert data.endswith(b"\x00\x00\xff\xff")
    return data[:-4]


def test_with_deflate_compressed_and_plain_frames_alone_in_reads(make_server):
    server = make_server()
    handler, connections = _handler_with(server, per_message_deflate=True)
    got = []
    done = threading.Event()

    def on_connection(ws, request):
        ws.on("message", lambda data, is_binary: (got.append(data), len(got) == 4 and done.set()))

    handler.on("connection", on_connection)
    headers = (("Sec-WebSocket-Extensions", "permessage-deflate; client_no_context_takeover; server_no_context_takeover"),)
    sock, _ = _open(server, "/h", extra_headers=headers)
    with sock:
        ws = connections.get(timeout=TIMEOUT)
        assert wait_until(lambda: ws._socket_reader._in_loop(), TIMEOUT)
        _send_alone(sock, ws, encode_frame(0x1, _deflate(b"compressed one"), rsv=4))
        _send_alone(sock, ws, encode_frame(0x1, b"plain two"))
        _send_alone(sock, ws, encode_frame(0x2, _deflate(b"\x00\x01\x02" * 50), rsv=4))
        _send_alone(sock, ws, encode_frame(0x2, b"\x07\x08"))
        assert done.wait(TIMEOUT)
    assert got == ["compressed one", "plain two", b"\x00\x01\x02" * 50, b"\x07\x08"]


def test_websockets_client_with_compression_echoes(make_server):
    server = make_server()
    handler = server.create_handler("/e", per_message_deflate=True)
    handler.on("connection", lambda ws, request: ws.on("message", lambda data, is_binary: ws.send(data)))
    with connect(url(server, "/e"), compression="deflate") as client:
        for i in range(20):
            message = f"hello {i} " * (i * 5)
            client.send(message)
            assert client.recv(timeout=TIMEOUT) == message


def test_a_ping_and_a_message_in_one_read_then_a_message_and_a_close(make_server):
    server = make_server()
    handler, connections = _handler_with(server)
    handler.on("connection", lambda ws, request: ws.on("message", lambda data, is_binary: ws.send("echo:" + data)))
    sock, buffer = _open(server, "/h")
    with sock:
        ws = connections.get(timeout=TIMEOUT)
        assert wait_until(lambda: ws._socket_reader._in_loop(), TIMEOUT)
        sock.sendall(encode_frame(0x9, b"p1") + _text("a"))
        sock.sendall(_text("b") + encode_frame(0x9, b"p2"))
        sock.sendall(_text("c") + close_frame(1000))
        frames = _frames_until_close(sock, buffer)
    seen = [(f.opcode, f.payload) for f in frames]
    assert seen == [(0xA, b"p1"), (0x1, b"echo:a"), (0x1, b"echo:b"), (0xA, b"p2"), (0x1, b"echo:c"), (0x8, struct.pack("!H", 1000))]


def test_blocking_style_gets_lone_frames_in_order(make_server):
    server = make_server()
    handler = server.create_handler("/it")
    got: queue.Queue = queue.Queue()
    ready = threading.Event()
    holder = []

    def on_connection(ws, request):
        holder.append(ws)
        ready.set()
        for message in ws:
            got.put(message)
        got.put(None)

    handler.on("connection", on_connection)
    sock, buffer = _open(server, "/it")
    with sock:
        assert ready.wait(TIMEOUT)
        ws = holder[0]
        for i in range(20):
            _send_alone(sock, ws, _text(f"m{i}"))
        sock.sendall(close_frame(1000))
        assert _frames_until_close(sock, buffer)[-1].close_code == 1000
        sock.shutdown(socket.SHUT_WR)  # the connection is closed once the client ends its side too
        received = [got.get(timeout=TIMEOUT) for _ in range(21)]
    assert received == [f"m{i}" for i in range(20)] + [None]
    assert handler.stats()["messages_in"] == 20


def test_max_queue_full_then_lone_frames_keep_their_order(make_server):
    """No listener: the inbox (max_queue=2) fills, reading is held, more lone
    frames are read ahead; then the application reads them all in order."""
    server = make_server()
    handler = server.create_handler("/q", max_queue=2)
    holder = []
    go = threading.Event()
    got: queue.Queue = queue.Queue()

    def on_connection(ws, request):
        holder.append(ws)

    handler.on("connection", on_connection)
    sock, _ = _open(server, "/q")
    with sock:
        assert wait_until(lambda: holder and holder[0]._socket_reader._in_loop(), TIMEOUT)
        ws = holder[0]
        for i in range(6):
            _send_alone(sock, ws, _text(f"m{i}"))

        def consume():
            go.wait(TIMEOUT)
            for _ in range(6):
                got.put(ws.receive(timeout=TIMEOUT))

        thread = threading.Thread(target=consume, daemon=True)
        thread.start()
        go.set()
        received = [got.get(timeout=TIMEOUT) for _ in range(6)]
        thread.join(TIMEOUT)
    assert received == [f"m{i}" for i in range(6)]


# -- 3. pause() in 'connection' and the frames that came with the upgrade ---------


def _early(count, start=0):
    return b"".join(_text(f"e{i}") for i in range(start, start + count))


def test_pause_then_resume_inside_connection_delivers_early_frames_once_in_order(make_server):
    server = make_server()
    handler = server.create_handler("/p")
    got = []
    done = threading.Event()

    def on_connection(ws, request):
        ws.on("message", lambda data, is_binary: (got.append(data), len(got) == 5 and done.set()))
        ws.pause()
        ws.resume()

    handler.on("connection", on_connection)
    sock, _ = _open(server, "/p", early=_early(5))
    with sock:
        assert done.wait(TIMEOUT)
    assert got == [f"e{i}" for i in range(5)]


def test_pause_in_connection_holds_early_frames_until_resume(make_server):
    server = make_server()
    handler = server.create_handler("/p")
    got = []
    holder = []
    done = threading.Event()

    def on_connection(ws, request):
        holder.append(ws)
        ws.on("message", lambda data, is_binary: (got.append(data), len(got) == 8 and done.set()))
        ws.pause()

    handler.on("connection", on_connection)
    sock, _ = _open(server, "/p", early=_early(5))
    with sock:
        assert wait_until(lambda: holder and holder[0]._incoming.waiting(), TIMEOUT)
        ws = holder[0]
        assert got == []
        for i in range(5, 8):
            sock.sendall(_text(f"e{i}"))
        assert wait_until(lambda: ws._incoming.bytes_in >= len(_early(8)), TIMEOUT)
        assert got == []
        ws.resume()
        assert done.wait(TIMEOUT)
    assert got == [f"e{i}" for i in range(8)]


def test_pause_in_connection_with_the_blocking_style_still_receives_early_frames(make_server):
    server = make_server()
    handler = server.create_handler("/p")
    got: queue.Queue = queue.Queue()

    def on_connection(ws, request):
        ws.pause()
        for _ in range(3):
            got.put(ws.receive(timeout=TIMEOUT))
        ws.close()

    handler.on("connection", on_connection)
    sock, buffer = _open(server, "/p", early=_early(3))
    with sock:
        received = [got.get(timeout=TIMEOUT) for _ in range(3)]
        assert _frames_until_close(sock, buffer)[-1].close_code == 1000
    assert received == ["e0", "e1", "e2"]


def test_a_close_frame_among_paused_early_frames_is_answered_after_them_on_resume(make_server):
    server = make_server()
    handler = server.create_handler("/p")
    got = []
    holder = []
    closed = threading.Event()

    def on_connection(ws, request):
        holder.append(ws)
        ws.on("message", lambda data, is_binary: (got.append(data), ws.send("echo:" + data)))
        ws.on("close", lambda code, reason: closed.set())
        ws.pause()

    handler.on("connection", on_connection)
    sock, buffer = _open(server, "/p", early=_early(3) + close_frame(4001))
    with sock:
        assert wait_until(lambda: holder and holder[0]._incoming.waiting(), TIMEOUT)
        assert not closed.is_set()
        holder[0].resume()
        frames = _frames_until_close(sock, buffer)
        sock.shutdown(socket.SHUT_WR)
        assert closed.wait(TIMEOUT)
    assert got == ["e0", "e1", "e2"]
    assert [(f.opcode, f.payload) for f in frames] == [(0x1, b"echo:e0"), (0x1, b"echo:e1"), (0x1, b"echo:e2"), (0x8, struct.pack("!H", 4001))]


def test_more_paused_early_frames_than_max_queue_all_come_in_order(make_server):
    server = make_server()
    handler = server.create_handler("/p", max_queue=2)
    holder = []

    def on_connection(ws, request):
        holder.append(ws)
        ws.pause()

    handler.on("connection", on_connection)
    sock, _ = _open(server, "/p", early=_early(10))
    with sock:
        assert wait_until(lambda: holder and holder[0]._incoming.waiting(), TIMEOUT)
        ws = holder[0]
        ws.resume()
        received = [ws.receive(timeout=TIMEOUT) for _ in range(10)]
    assert received == [f"e{i}" for i in range(10)]


# -- 2. the handler grace after listening ----------------------------------------


def test_unhandled_listener_gets_its_socket_at_once_during_the_grace(make_server):
    """reject_unhandled=False with an 'unhandled' listener that routes every
    upgrade itself (ws's noServer style): no handler will ever come, so
    waiting for one only delays every connection of the first second."""
    server = make_server(reject_unhandled=False)
    handed: queue.Queue = queue.Queue()

    def take_over(sock):
        handed.put(time.monotonic())
        sock.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        sock.close()

    server.on("unhandled", take_over)
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        start = time.monotonic()
        sock.sendall(upgrade_head("/mine"))
        at = handed.get(timeout=TIMEOUT)
    assert at - start < PROMPT, f"the 'unhandled' listener waited {at - start:.2f} s for a handler"


def test_wsgi_websockets_upgrade_is_served_at_once_during_the_grace(make_server):
    """wsgi_websockets=True: the WSGI app serves upgrades to paths no handler
    serves (flask-sock and the like); one that comes in the first second
    waits the whole grace for a handler that will never be made."""
    reached: queue.Queue = queue.Queue()

    def app(environ, start_response):
        reached.put(time.monotonic())
        start_response("404 Not Found", [("Content-Length", "0")])
        return [b""]

    server = make_server(wsgi_app=app, wsgi_websockets=True)
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        start = time.monotonic()
        sock.sendall(upgrade_head("/ws"))
        at = reached.get(timeout=TIMEOUT)
    assert at - start < PROMPT, f"the WSGI app got the upgrade after {at - start:.2f} s"


def test_close_during_the_grace_answers_the_waiting_upgrade_at_once(make_server):
    server = make_server()
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(upgrade_head("/later"))
        assert wait_until(lambda: server._routes.waiting == 1, TIMEOUT)
        start = time.monotonic()
        server.close()
        answer = read_until_eof(sock, TIMEOUT)[0]
        elapsed = time.monotonic() - start
    assert answer.startswith(b"HTTP/1.1 400 ") or answer == b""
    assert elapsed < PROMPT


def test_a_pattern_handler_made_during_the_wait_serves_it(make_server):
    server = make_server()
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(upgrade_head("/rooms/blue"))
        assert wait_until(lambda: server._routes.waiting == 1, TIMEOUT)
        server.create_handler("/other")  # wakes the waiter, which waits on
        assert wait_until(lambda: server._routes.waiting == 1, TIMEOUT)
        params: queue.Queue = queue.Queue()
        server.create_handler("/rooms/<room>").on("connection", lambda ws, request: params.put(request.path_params))
        status, head, _ = read_http_response(sock)
        assert status == 101, head
        assert params.get(timeout=TIMEOUT) == {"room": "blue"}


def test_a_flood_of_unknown_paths_in_the_grace_is_answered_within_it(make_server):
    """Each waiter holds its connection's thread: at most until the grace
    ends, and then all get their 400."""
    server = make_server()
    server.create_handler("/known")
    socks = []
    try:
        for i in range(40):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
            socks.append(sock)
            sock.sendall(upgrade_head(f"/unknown/{i}"))
        for sock in socks:
            assert read_until_eof(sock, TIMEOUT)[0].startswith(b"HTTP/1.1 400 ")
        assert wait_until(lambda: server._routes.waiting == 0, TIMEOUT)
    finally:
        for sock in socks:
            sock.close()


def _scenario(server, skip_hot_path, monkeypatch):
    """One connection through every state a lone frame can meet: delivered,
    a ping beside, a listener blocked past the hand-off (frames queued for
    its dispatcher), a listener that raises, one that closes, frames after
    the server's close, the client's close. Returns what the application
    saw, what the client got and the handler's counters."""
    from ws_multipath.protocol.frames import FrameReader

    if skip_hot_path:
        monkeypatch.setattr(FrameReader, "plain_messages", lambda self, data: None)
    else:
        monkeypatch.undo()
    handler, connections = _handler_with(server, f"/s{int(skip_hot_path)}")
    seen = []
    release = threading.Event()
    entered = threading.Event()

    def on_connection(ws, request):
        def on_message(data, is_binary):
            seen.append(("message", data, is_binary))
            if data == "block":
                entered.set()
                release.wait(TIMEOUT)
            elif data == "raise":
                raise RuntimeError("listener failed")
            elif data == "bye":
                ws.close(4002, "bye")
            else:
                ws.send(data)

        ws.on("message", on_message)
        ws.on("ping", lambda payload: seen.append(("ping", payload)))
        ws.on("error", lambda exc: seen.append(("error", str(exc))))
        ws.on("close", lambda code, reason: seen.append(("close", code, reason)))

    handler.on("connection", on_connection)
    sock, buffer = _open(server, f"/s{int(skip_hot_path)}")
    with sock:
        ws = connections.get(timeout=TIMEOUT)
        assert wait_until(lambda: ws._socket_reader._in_loop(), TIMEOUT)
        for frame in (_text("a"), encode_frame(0x2, b"\x01\x02"), encode_frame(0x9, b"p"), _text("b")):
            _send_alone(sock, ws, frame)
        _send_alone(sock, ws, _text("block"))
        assert entered.wait(TIMEOUT)
        assert wait_until(lambda: ws._socket_reader.dispatcher is not None, TIMEOUT), "no hand-off"
        for frame in (_text("c"), encode_frame(0x9, b"q"), _text("d")):
            _send_alone(sock, ws, frame)
        release.set()
        assert wait_until(lambda: ws._socket_reader.dispatcher is None, TIMEOUT)
        for frame in (_text("raise"), _text("e"), _text("bye"), _text("after the close")):
            _send_alone(sock, ws, frame)
        frames = _frames_until_close(sock, buffer)
        sock.sendall(close_frame(4002))
        read_until_eof(sock, TIMEOUT)
        sock.shutdown(socket.SHUT_WR)
        assert wait_until(lambda: seen and seen[-1][0] == "close", TIMEOUT)
    stats = handler.stats()
    return seen, [(f.opcode, f.payload) for f in frames], stats["messages_in"], stats["bytes_in"]


def test_the_hot_path_does_what_the_general_path_does(make_server, monkeypatch):
    server = make_server()
    general = _scenario(server, True, monkeypatch)
    hot = _scenario(server, False, monkeypatch)
    assert hot == general
    seen = hot[0]
    assert [event[1] for event in seen if event[0] == "message"] == ["a", b"\x01\x02", "b", "block", "c", "d", "raise", "e", "bye"]


def test_pause_in_connection_then_receive_more_early_frames_than_max_queue(make_server):
    server = make_server()
    handler = server.create_handler("/p", max_queue=2)
    got: queue.Queue = queue.Queue()

    def on_connection(ws, request):
        ws.pause()
        for _ in range(10):
            got.put(ws.receive(timeout=TIMEOUT))

    handler.on("connection", on_connection)
    sock, _ = _open(server, "/p", early=_early(10))
    with sock:
        received = [got.get(timeout=TIMEOUT) for _ in range(10)]
    assert received == [f"e{i}" for i in range(10)]


def test_a_ping_that_came_with_the_upgrade_is_answered_while_connection_is_busy(make_server):
    """A 'connection' listener busy before its first receive(): the watchdog
    takes a connection whose data waits over to its loop within
    TAKEOVER_AFTER (1 s), so that pings and close frames are never left
    unread for long. Frames that came with the upgrade request are data that
    waits too, though no longer in the socket."""
    server = make_server()
    handler = server.create_handler("/busy")
    release = threading.Event()
    handler.on("connection", lambda ws, request: release.wait(TIMEOUT))
    sock, buffer = _open(server, "/busy", early=encode_frame(0x9, b"early"))
    try:
        with sock:
            sock.settimeout(3.0)
            frame = read_server_frame(sock, buffer)
            assert (frame.opcode, frame.payload) == (0xA, b"early")
    finally:
        release.set()


def test_a_close_that_came_with_the_upgrade_is_answered_while_connection_is_busy(make_server):
    server = make_server()
    handler = server.create_handler("/busy")
    release = threading.Event()
    handler.on("connection", lambda ws, request: release.wait(TIMEOUT))
    sock, buffer = _open(server, "/busy", early=_text("hi") + close_frame(4003))
    try:
        with sock:
            frames = _frames_until_close(sock, buffer, within=3.0)
            assert frames[-1].close_code == 4003
    finally:
        release.set()


def test_node_ws_mixes_plain_and_compressed_frames_on_a_deflate_connection(make_server, node_ws):
    """ws compresses messages over its 1024-byte threshold only: the small
    ones come as plain frames on a connection that negotiated
    permessage-deflate (the hot path's), the large ones with RSV1 (never
    the hot path's); the context is taken over between them."""
    from .conftest import serve_one
    from .node_client import NodeClient

    server = make_server()
    connections = serve_one(server, per_message_deflate=True)
    got: queue.Queue = queue.Queue()
    sent = [(f"small {i}" if i % 3 else f"large {i} " + "abc" * 600) for i in range(30)]
    with NodeClient(node_ws, url(server, "/ws")) as client:
        assert client.next("open")["extensions"].startswith("permessage-deflate")
        ws = connections.get(timeout=TIMEOUT)
        ws.on("message", lambda data, is_binary: got.put(data))
        for message in sent:
            client.command("send", message, binary=False)
        received = [got.get(timeout=TIMEOUT) for _ in sent]
    assert received == sent


def test_a_lone_frame_after_the_clients_close_is_not_delivered(make_server):
    server = make_server()
    handler, connections = _handler_with(server)
    got = []
    handler.on("connection", lambda ws, request: ws.on("message", lambda data, is_binary: got.append(data)))
    sock, buffer = _open(server, "/h")
    with sock:
        ws = connections.get(timeout=TIMEOUT)
        assert wait_until(lambda: ws._socket_reader._in_loop(), TIMEOUT)
        _send_alone(sock, ws, _text("before"))
        _send_alone(sock, ws, close_frame(1000))
        assert _frames_until_close(sock, buffer)[-1].close_code == 1000
        try:
            sock.sendall(_text("after"))  # lingering: read, never parsed
        except OSError:
            pass
        read_until_eof(sock, TIMEOUT)
    assert got == ["before"]
    assert handler.stats()["messages_in"] == 1
