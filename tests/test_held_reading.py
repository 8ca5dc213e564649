"""A connection whose reading is held back by the server (issue 17): its
listener blocked with ``max_queue`` messages waiting, ``ws.pause()``, or a
blocking-style ``'connection'`` listener busy between two ``receive()``
calls. Its pings must still be answered within a second or two, its close
frame answered, its heartbeat judged fairly, and the memory it can make
the server hold stays bounded. Real sockets on 127.0.0.1; every wait is
bounded."""

from __future__ import annotations

import socket
import threading
import time

from .conftest import LEGACY, TIMEOUT, url, wait_until
from .faultkit import (
    close_frame, collect_errors, connect, encode_frame, make_server, raw_upgrade, read_server_frame,
)

#: A held connection's ping must be answered within this (issue 17: "within a second or two").
PROMPT = 2.5
#: The read-ahead bound of a held connection (``sync/holding.py``).
READ_AHEAD_LIMIT = 64 * 1024


def _blocking_listener(handler, release: threading.Event, entered: threading.Event, opened: list) -> None:
    @handler.on("connection")
    def on_connection(ws, request):
        opened.append(ws)

        @ws.on("message")
        def on_message(data, is_binary):
            if data == "block":
                entered.set()
                release.wait(TIMEOUT)


def _next_frame_of(sock: socket.socket, buffer: bytearray, opcode: int, within: float):
    """The next frame with ``opcode`` that arrives within ``within`` seconds
    (others are skipped), or None."""
    deadline = time.monotonic() + within
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        sock.settimeout(remaining)
        try:
            frame = read_server_frame(sock, buffer)
        except (socket.timeout, ConnectionError):
            return None
        if frame.opcode == opcode:
            return frame


class _Flood:
    """Sends one frame over and over on a non-blocking socket, never
    cutting the stream mid-frame between calls."""

    def __init__(self, sock: socket.socket, frame: bytes) -> None:
        self.sock, self.frame, self.sent = sock, frame, 0

    def until_blocked(self, limit: int) -> int:
        """Send until the kernel takes no more (the server stopped reading)
        or ``limit`` bytes went; returns the bytes sent by this call."""
        self.sock.setblocking(False)
        sent = 0
        try:
            while sent < limit:
                offset = self.sent % len(self.frame)
                try:
                    count = self.sock.send(self.frame[offset:] + self.frame * 8)
                except BlockingIOError:
                    break
                self.sent += count
                sent += count
        finally:
            self.sock.setblocking(True)
        return sent


# -- gap 1: pings behind a full queue ---------------------------------------------


def test_a_ping_that_comes_after_the_queue_filled_is_answered_while_the_listener_blocks():
    """max_queue messages wait behind a blocked listener and reading stopped
    (held); the client's ping comes after that, in a read of its own. It
    must be answered within a second or two, not once the listener returns."""
    with collect_errors() as errors, make_server() as server:
        handler = server.create_handler("/h", ping_interval=None, max_queue=2)
        release, entered, opened = threading.Event(), threading.Event(), []
        _blocking_listener(handler, release, entered, opened)
        sock, rest = raw_upgrade(server.port, "/h")
        buffer = bytearray(rest)
        try:
            sock.sendall(encode_frame(0x1, b"block"))
            assert entered.wait(TIMEOUT)
            sock.sendall(b"".join(encode_frame(0x1, b"m%d" % index) for index in range(5)))
            assert wait_until(lambda: opened[0]._socket_reader._held)  # the queue is full: held
            sock.sendall(encode_frame(0x9, b"late"))
            frame = _next_frame_of(sock, buffer, 0xA, PROMPT)
            assert frame is not None and frame.payload == b"late", "the ping waited for the blocked listener"
        finally:
            release.set()
            sock.close()
        errors.assert_clean()


def test_blocking_style_a_ping_after_a_full_inbox_is_answered_while_the_code_works():
    """The 'connection' listener received once and works; the client sends
    max_queue messages and more (the loop takes over reading, fills the
    inbox, holds), then a ping: answered within a second or two."""
    with collect_errors() as errors, make_server() as server:
        handler = server.create_handler("/b", ping_interval=None, max_queue=2)
        release, got, opened = threading.Event(), [], []

        @handler.on("connection")
        def on_connection(ws, request):
            opened.append(ws)
            got.append(ws.receive(timeout=TIMEOUT))
            release.wait(TIMEOUT)

        sock, rest = raw_upgrade(server.port, "/b")
        buffer = bytearray(rest)
        try:
            sock.sendall(encode_frame(0x1, b"first"))
            assert wait_until(lambda: got == ["first"])
            sock.sendall(b"".join(encode_frame(0x1, b"m%d" % index) for index in range(5)))
            assert wait_until(lambda: opened[0]._socket_reader._held)
            sock.sendall(encode_frame(0x9, b"late"))
            frame = _next_frame_of(sock, buffer, 0xA, PROMPT)
            assert frame is not None and frame.payload == b"late", "the ping waited for the next receive()"
        finally:
            release.set()
            sock.close()
        errors.assert_clean()


def test_held_reading_buffers_a_bounded_amount_and_loses_nothing():
    """A client floods while its listener blocks: the server reads a bounded
    amount past the full queue (the rest stays in the kernel, the client is
    held back by TCP), then delivers everything in order once it returns."""
    with collect_errors() as errors, make_server() as server:
        handler = server.create_handler("/f", ping_interval=None, max_queue=4)
        release, entered = threading.Event(), threading.Event()
        opened: list = []
        got: list = []

        @handler.on("connection")
        def on_connection(ws, request):
            opened.append(ws)

            @ws.on("message")
            def on_message(data, is_binary):
                if data == b"block":
                    entered.set()
                    release.wait(TIMEOUT)
                else:
                    got.append(data)

        sock, _ = raw_upgrade(server.port, "/f", rcvbuf=4096)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
            sock.sendall(encode_frame(0x2, b"block"))
            assert entered.wait(TIMEOUT)
            payload = b"x" * 1000
            frame = encode_frame(0x2, payload)
            flood = _Flood(sock, frame)
            deadline = time.monotonic() + TIMEOUT
            held_back = False
            while not held_back and time.monotonic() < deadline:  # until the server stops reading, buffers full
                more = flood.until_blocked(64 * 1024 * 1024)
                held_back = more == 0 and opened[0]._socket_reader._held and not _readable_soon(opened[0])
            assert held_back, "the server never stopped reading"
            sent = flood.sent - flood.sent % len(frame)  # whole frames
            read = opened[0]._incoming.bytes_in
            assert read < 4 * 1006 + READ_AHEAD_LIMIT + 2 * 65536 + 4096, f"{read} bytes read while held"
            release.set()
            assert wait_until(lambda: len(got) == sent // len(frame)), f"{len(got)} of {sent // len(frame)} delivered"
            assert all(data == payload for data in got)
        finally:
            release.set()
            sock.close()
        errors.assert_clean()


def _readable_soon(ws) -> bool:
    """Whether the server still reads (its read count moves within 0.2 s)."""
    before = ws._incoming.bytes_in
    return wait_until(lambda: ws._incoming.bytes_in != before, timeout=0.2)


# -- gap 1, the other way: the server's heartbeat while it holds the client back ------


def test_the_heartbeat_does_not_drop_a_healthy_client_held_back_by_a_slow_listener():
    """Our own listener blocks with the queue full and the client's pongs
    behind its messages in TCP: the client is healthy, the server is slow;
    it must not be dropped for a missing pong."""
    with collect_errors() as errors, make_server() as server:
        handler = server.create_handler("/k", ping_interval=0.2, ping_timeout=1.0, max_queue=2)
        release, entered, opened = threading.Event(), threading.Event(), []
        _blocking_listener(handler, release, entered, opened)
        with connect(url(server, "/k"), open_timeout=TIMEOUT, ping_interval=None, **LEGACY) as client:
            client.send("block")
            assert entered.wait(TIMEOUT)
            for index in range(300):  # well past the queue and the read-ahead
                client.send("m%d" % index + "." * 1000)
            closed = threading.Event()
            opened[0].on("close", lambda code, reason: closed.set())
            assert not closed.wait(3.0), "a healthy client was dropped because our listener was slow"
            release.set()
        errors.assert_clean()


# -- gap 2: a close frame read ahead by receive() -----------------------------------


def test_blocking_style_a_close_read_with_a_message_is_answered_while_the_code_works():
    """receive() read a message and the client's close frame in one recv;
    the code then works for longer than the client waits for a close
    answer. The close must be answered within a second or two, not at the
    next receive()."""
    with collect_errors() as errors, make_server() as server:
        handler = server.create_handler("/c", ping_interval=None)
        release, got, closes = threading.Event(), [], []

        @handler.on("connection")
        def on_connection(ws, request):
            ws.on("close", lambda code, reason: closes.append(code))
            got.append(ws.receive(timeout=TIMEOUT))
            release.wait(TIMEOUT)  # the application's work

        sock, rest = raw_upgrade(server.port, "/c")
        buffer = bytearray(rest)
        try:
            sock.sendall(encode_frame(0x1, b"last") + close_frame(1000, b"bye"))
            assert wait_until(lambda: got == ["last"])
            frame = _next_frame_of(sock, buffer, 0x8, PROMPT)
            assert frame is not None and frame.close_code == 1000, "the close waited for the next receive()"
            sock.close()  # as a client does once its close is answered
            assert wait_until(lambda: closes == [1000])
        finally:
            release.set()
            sock.close()
        errors.assert_clean()


# -- gap 3: paused connections and the heartbeat -------------------------------------


def test_a_paused_connection_whose_client_answers_nothing_is_dropped_by_the_heartbeat():
    """pause() forever, and the client is gone without a FIN (here: a raw
    socket that never answers a ping). The heartbeat must still drop it:
    paused, the server reads a bounded amount ahead, enough to see pongs."""
    with collect_errors() as errors, make_server() as server:
        handler = server.create_handler("/p", ping_interval=0.2, ping_timeout=0.3)
        closes: list = []
        closed = threading.Event()

        @handler.on("connection")
        def on_connection(ws, request):
            ws.pause()

            @ws.on("close")
            def on_close(code, reason):
                closes.append(ws.sent_close_code)
                closed.set()

        sock, _ = raw_upgrade(server.port, "/p")
        try:
            assert closed.wait(5.0), "a paused connection with a dead client was never dropped"
            assert closes == [1011]
        finally:
            sock.close()
        errors.assert_clean()


def test_a_paused_connection_with_a_quiet_healthy_client_is_kept():
    """pause() and a client that only answers the heartbeat's pings: kept,
    and nothing is delivered or answered until resume()."""
    with collect_errors() as errors, make_server() as server:
        handler = server.create_handler("/q", ping_interval=0.2, ping_timeout=1.0)
        opened: list = []
        got: list = []

        @handler.on("connection")
        def on_connection(ws, request):
            opened.append(ws)
            ws.pause()
            ws.on("message", lambda data, is_binary: got.append(data))

        with connect(url(server, "/q"), open_timeout=TIMEOUT, ping_interval=None, **LEGACY) as client:
            assert wait_until(lambda: opened)
            ws = opened[0]
            closed = threading.Event()
            ws.on("close", lambda code, reason: closed.set())
            client.send("while paused")
            pong = client.ping(b"paused?")
            assert not closed.wait(3.0), "a healthy paused client was dropped"
            assert got == [] and not pong.is_set()
            ws.resume()
            assert wait_until(lambda: got == ["while paused"])
            assert pong.wait(TIMEOUT)
        errors.assert_clean()


# -- the end of the stream read ahead ------------------------------------------------


def test_messages_read_ahead_before_the_client_closed_are_delivered_before_the_end():
    """The client sends messages, its close frame and its FIN while the
    listener blocks: the read-ahead reaches the end of the stream, which
    must wait behind the messages (all delivered, in order, then 'close')."""
    with collect_errors() as errors, make_server() as server:
        handler = server.create_handler("/e", ping_interval=None, max_queue=2)
        release, entered = threading.Event(), threading.Event()
        opened: list = []
        events: list = []

        @handler.on("connection")
        def on_connection(ws, request):
            opened.append(ws)
            ws.on("close", lambda code, reason: events.append(("close", code)))

            @ws.on("message")
            def on_message(data, is_binary):
                if data == "block":
                    entered.set()
                    release.wait(TIMEOUT)
                else:
                    events.append(data)

        sock, _ = raw_upgrade(server.port, "/e")
        try:
            sock.sendall(encode_frame(0x1, b"block"))
            assert entered.wait(TIMEOUT)
            sock.sendall(b"".join(encode_frame(0x1, b"m%d" % index) for index in range(10)) + close_frame(1000))
            sock.shutdown(socket.SHUT_WR)
            assert wait_until(lambda: opened[0]._socket_reader._eof_queued)  # read ahead to the end
            assert events == []
            release.set()
            assert wait_until(lambda: len(events) == 11), (events, opened[0]._socket_reader._eof_queued, opened[0].ready_state, opened[0]._socket_reader.dispatcher)
            assert events == [f"m{index}" for index in range(10)] + [("close", 1000)]
        finally:
            release.set()
            sock.close()
        errors.assert_clean()


def test_a_paused_connection_keeps_what_came_before_the_client_closed_until_resume():
    """Paused, the client sends a message, closes and goes: the message is
    delivered on resume(), then the connection ends with the client's code.
    A paused connection whose client went with nothing left unread ends at
    once."""
    with collect_errors() as errors, make_server() as server:
        handler = server.create_handler("/pc", ping_interval=None)
        opened: dict = {}  # by the client's port
        events: list = []

        @handler.on("connection")
        def on_connection(ws, request):
            port = request.remote_address[1]
            opened[port] = ws
            ws.pause()
            ws.on("message", lambda data, is_binary: events.append((port, data)))
            ws.on("close", lambda code, reason: events.append((port, code)))

        sock, _ = raw_upgrade(server.port, "/pc")
        idle, _ = raw_upgrade(server.port, "/pc")
        try:
            assert wait_until(lambda: len(opened) == 2)
            port, idle_port = sock.getsockname()[1], idle.getsockname()[1]
            sock.sendall(encode_frame(0x1, b"kept") + close_frame(1000))
            sock.shutdown(socket.SHUT_WR)
            reader = opened[port]._socket_reader
            assert wait_until(lambda: reader._eof_queued)
            assert events == []
            idle.close()  # nothing unread: it ends while paused
            assert wait_until(lambda: events == [(idle_port, 1006)])
            opened[port].resume()
            assert wait_until(lambda: len(events) == 3)
            assert events[1:] == [(port, "kept"), (port, 1000)]
        finally:
            sock.close()
            idle.close()
        errors.assert_clean()


def test_closing_a_paused_connection_reads_the_close_answer_at_once():
    """The server closes a paused connection (``ws.close()``, or a server
    shutting down): the closing handshake must not wait for resume(), nor
    end in a drop at close_timeout; pause() no longer holds a connection
    that is closing."""
    with collect_errors() as errors, make_server() as server:
        handler = server.create_handler("/pz", ping_interval=None, close_timeout=6)
        opened: list = []
        closes: list = []

        @handler.on("connection")
        def on_connection(ws, request):
            opened.append(ws)
            ws.pause()
            ws.on("close", lambda code, reason: closes.append((code, ws.sent_close_code)))

        with connect(url(server, "/pz"), open_timeout=TIMEOUT, ping_interval=None, **LEGACY) as client:
            assert wait_until(lambda: opened)
            opened[0].close(1001, "going away")
            assert wait_until(lambda: closes, timeout=3.0), "the close answer waited for close_timeout"
            assert closes == [(1001, 1001)]
            assert opened[0].is_paused
            client.close()
        errors.assert_clean()


# -- a protocol violation read while held or paused ----------------------------------------


def _flood_after_violation(sock: socket.socket, ws) -> int:
    """Junk after an invalid frame, until the server stops reading (or 48
    MiB went): the bytes the server read meanwhile."""
    flood = _Flood(sock, b"\x00" * 65536)
    deadline = time.monotonic() + TIMEOUT
    held_back = False
    while not held_back and time.monotonic() < deadline and flood.sent < 48 * 1024 * 1024:
        more = flood.until_blocked(48 * 1024 * 1024 - flood.sent)
        held_back = more == 0 and not _readable_soon(ws)
    return int(ws._incoming.bytes_in)


def test_held_a_client_sending_past_an_invalid_frame_is_not_read_without_bound():
    """The listener blocks with max_queue messages waiting; the client sends
    a frame with a reserved bit set, then junk without end. The violation
    waits behind the messages (in order), and what comes after it is of no
    use: the server stops reading (it read on, and wsproto, whose parser had
    ended, kept every byte: 46 MB in 2 s). Once the listener returns the
    messages are delivered and the connection fails with 1002."""
    with collect_errors() as errors, make_server() as server:
        handler = server.create_handler("/v", ping_interval=None, max_queue=2)
        release, entered, opened = threading.Event(), threading.Event(), []
        _blocking_listener(handler, release, entered, opened)
        sock, rest = raw_upgrade(server.port, "/v")
        buffer = bytearray(rest)
        try:
            sock.sendall(encode_frame(0x1, b"block"))
            assert entered.wait(TIMEOUT)
            sock.sendall(b"".join(encode_frame(0x1, b"m%d" % index) for index in range(5)) + encode_frame(0x1, b"bad", rsv=4))
            assert wait_until(lambda: opened[0]._socket_reader._held)
            read = _flood_after_violation(sock, opened[0])
            assert read < READ_AHEAD_LIMIT + 8 * 1024 * 1024, f"{read} bytes read after the violation"
            release.set()
            frame = _next_frame_of(sock, buffer, 0x8, TIMEOUT)
            assert frame is not None and frame.payload[:2] == b"\x03\xea", frame  # 1002
        finally:
            release.set()
            sock.close()
        errors.assert_clean()


def test_paused_a_client_sending_past_an_invalid_frame_is_not_read_without_bound():
    """The same while paused: stopped reading, and the violation is acted
    on at resume() (1002)."""
    with collect_errors() as errors, make_server() as server:
        handler = server.create_handler("/vp", ping_interval=None)
        opened: list = []

        @handler.on("connection")
        def on_connection(ws, request):
            ws.pause()
            opened.append(ws)

        sock, rest = raw_upgrade(server.port, "/vp")
        buffer = bytearray(rest)
        try:
            assert wait_until(lambda: opened)
            sock.sendall(encode_frame(0x1, b"bad", rsv=4))
            read = _flood_after_violation(sock, opened[0])
            assert read < READ_AHEAD_LIMIT + 8 * 1024 * 1024, f"{read} bytes read after the violation"
            opened[0].resume()
            frame = _next_frame_of(sock, buffer, 0x8, TIMEOUT)
            assert frame is not None and frame.payload[:2] == b"\x03\xea", frame  # 1002
        finally:
            sock.close()
        errors.assert_clean()


def test_blocking_style_a_client_sending_past_an_invalid_frame_is_not_read_without_bound():
    """The same while a blocking-style 'connection' listener works between
    two receive() calls with a full inbox: the violation waits behind the
    messages, the junk after it is not read, and the next receive() calls
    return the messages, then raise (1002)."""
    with collect_errors() as errors, make_server() as server:
        handler = server.create_handler("/vb", ping_interval=None, max_queue=2, close_timeout=2)
        release, got, opened, ended = threading.Event(), [], [], []

        @handler.on("connection")
        def on_connection(ws, request):
            opened.append(ws)
            got.append(ws.receive(timeout=TIMEOUT))
            release.wait(TIMEOUT)
            try:
                while True:
                    got.append(ws.receive(timeout=TIMEOUT))
            except Exception as exc:  # noqa: BLE001 - the violation ends it
                ended.append(type(exc).__name__)

        sock, rest = raw_upgrade(server.port, "/vb")
        buffer = bytearray(rest)
        try:
            sock.sendall(encode_frame(0x1, b"first"))
            assert wait_until(lambda: got == ["first"])
            sock.sendall(b"".join(encode_frame(0x1, b"m%d" % index) for index in range(5)) + encode_frame(0x1, b"bad", rsv=4))
            assert wait_until(lambda: opened[0]._socket_reader._held)
            read = _flood_after_violation(sock, opened[0])
            assert read < READ_AHEAD_LIMIT + 8 * 1024 * 1024, f"{read} bytes read after the violation"
            release.set()
            frame = _next_frame_of(sock, buffer, 0x8, TIMEOUT)
            assert frame is not None and frame.payload[:2] == b"\x03\xea", frame  # 1002
            assert wait_until(lambda: ended)  # at close_timeout: this client does not answer the close
            assert ended == ["ConnectionClosedError"]
            assert got == ["first"] + [f"m{index}" for index in range(5)]
        finally:
            release.set()
            sock.close()
        errors.assert_clean()
