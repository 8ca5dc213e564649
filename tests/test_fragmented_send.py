"""``ws.send(iterable)``: one message in fragments (issue 19; ws's ``fin:
false``, in websockets' form), over real sockets: websockets' sync client
reassembling it, and a raw client reading the frames themselves (opcodes,
FIN, RSV1), with and without permessage-deflate."""

from __future__ import annotations

import hashlib
import queue
import socket
import threading
import time
import tracemalloc
import zlib

import pytest
from websockets.exceptions import ConnectionClosedError
from websockets.sync.client import connect

from ws_multipath import ConnectionClosed

from .conftest import TIMEOUT, serve_one, url, wait_until
from .faultkit import encode_frame, raw_connect, read_http_response, read_server_frame, tls_contexts, upgrade_request
from .tls_client import tls_connect

MiB = 1024 * 1024
_TAIL = b"\x00\x00\xff\xff"  # RFC 7692 section 7.2.2


def _raw_client(server, path="/ws", deflate=False):
    """A raw socket past the handshake (offering permessage-deflate when
    asked: the server's defaults then use 12-bit windows) and its buffer."""
    sock = raw_connect(server.port, TIMEOUT)
    headers = (("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits"),) if deflate else ()
    sock.sendall(upgrade_request(path, server.port, headers=headers))
    status, head, rest = read_http_response(sock)
    assert status == 101 and (b"permessage-deflate" in head) == deflate, head
    return sock, bytearray(rest)


def _read_message_frames(sock, buffer):
    """The frames of the next data message (control frames skipped)."""
    frames = []
    while True:
        frame = read_server_frame(sock, buffer)
        if frame.opcode >= 0x8:
            continue
        frames.append(frame)
        if frame.fin:
            return frames


def _payload(frames, inflater=None):
    joined = b"".join(frame.payload for frame in frames)
    return inflater.decompress(joined + _TAIL) if inflater is not None else joined


def _wait_for_close_event(ws):
    closed = threading.Event()
    ws.on("close", lambda code, reason: closed.set())
    if ws.ready_state is not ws.CLOSED:
        assert closed.wait(TIMEOUT)


# -- what the client gets ---------------------------------------------------------


@pytest.mark.parametrize("deflate", [False, True])
def test_websockets_client_receives_text_and_binary_fragments_whole(server, deflate):
    connections = serve_one(server, per_message_deflate=deflate)
    with connect(url(server, "/ws"), open_timeout=TIMEOUT) as client:  # offers permessage-deflate by default
        ws = connections.get(timeout=TIMEOUT)
        assert ("permessage-deflate" in ws.extensions) == deflate
        ws.send(part for part in ["héllo ", "wörld", "", "!" * 5000])
        assert client.recv(timeout=TIMEOUT) == "héllo wörld" + "!" * 5000
        ws.send([b"\x00\x01", bytearray(b"\x02"), memoryview(b"\x03\x04")])
        assert client.recv(timeout=TIMEOUT) == b"\x00\x01\x02\x03\x04"
        ws.send(iter(["é".encode()[:1], "é".encode()[1:]]), binary=False)  # a character split between fragments
        assert client.recv(timeout=TIMEOUT) == "é"
        ws.send(("abc", "def"), binary=True)
        assert client.recv(timeout=TIMEOUT) == b"abcdef"
        ws.send(["x" * 3000, "y" * 3000], compress=False)
        assert client.recv(timeout=TIMEOUT) == "x" * 3000 + "y" * 3000
        ws.send("and a whole one after " * 100)  # the compression context carried on correctly
        assert client.recv(timeout=TIMEOUT) == "and a whole one after " * 100


@pytest.mark.parametrize("deflate", [False, True])
def test_the_frames_on_the_wire(server, deflate):
    connections = serve_one(server, per_message_deflate=deflate)
    sock, buffer = _raw_client(server, deflate=deflate)
    with sock:
        ws = connections.get(timeout=TIMEOUT)
        before = ws._transport.messages_out
        ws.send(iter(["ab" * 1000, "cd", "ef"]))
        frames = _read_message_frames(sock, buffer)
        assert [(frame.opcode, frame.fin) for frame in frames] == [(0x1, False), (0x0, False), (0x0, False), (0x0, True)]
        assert [frame.rsv for frame in frames] == [4 if deflate else 0, 0, 0, 0]  # RSV1 on the first frame only (RFC 7692 section 6)
        inflater = zlib.decompressobj(-12) if deflate else None
        if deflate:  # each fragment flushed whole, the tail removed from the last one only (RFC 7692 section 7.2.1)
            assert all(frame.payload.endswith(_TAIL) for frame in frames[:-1])
            assert frames[-1].payload == b"\x00"  # an empty sync flush, less its tail: as websockets sends it
        else:
            assert [frame.payload for frame in frames] == [b"ab" * 1000, b"cd", b"ef", b""]
        assert _payload(frames, inflater) == b"ab" * 1000 + b"cdef"
        assert ws._transport.messages_out == before + 1  # one message, four frames

        ws.send([b"\x01", b"\x02"], compress=False)
        frames = _read_message_frames(sock, buffer)
        assert [(frame.opcode, frame.fin, frame.rsv, frame.payload) for frame in frames] == [(0x2, False, 0, b"\x01"), (0x0, False, 0, b"\x02"), (0x0, True, 0, b"")]
        ws.send("w" * 2000)  # a whole message after, with the same compression context
        (frame,) = _read_message_frames(sock, buffer)
        assert (frame.opcode, frame.rsv) == (0x1, 4 if deflate else 0)
        assert _payload([frame], inflater) == b"w" * 2000


def test_over_tls(make_server, certificate):
    server_context, client_context = tls_contexts(*certificate)
    server = make_server(ssl_context=server_context)
    connections = serve_one(server, per_message_deflate=True)
    with tls_connect(f"wss://127.0.0.1:{server.port}/ws", client_context, open_timeout=TIMEOUT, max_size=None) as client:
        ws = connections.get(timeout=TIMEOUT)
        ws.send(_content(index, 200_000) for index in range(20))  # frames larger than a TLS record
        assert client.recv(timeout=TIMEOUT) == b"".join(_content(index, 200_000) for index in range(20))


# -- a large message, streamed ------------------------------------------------------


def _content(index: int, size: int) -> bytes:
    return hashlib.sha256(str(index).encode()).digest() * (size // 32)  # compressible, but not trivially


@pytest.mark.parametrize("deflate", [False, True])
def test_16_mib_is_streamed_lazily_and_held_one_fragment_at_a_time(server, deflate):
    """The generator is asked for its next fragment only once the previous
    one is in the kernel, and the server holds about one fragment: peak
    traced memory (server and this raw client together) stays far below the
    message's 16 MiB."""
    connections = serve_one(server, per_message_deflate=deflate, ping_interval=None)
    fragment, count = 64 * 1024, 256
    sock, buffer = _raw_client(server, deflate=deflate)
    received: queue.Queue = queue.Queue()

    def read_all() -> None:  # the client keeps a digest, never the message
        digest, inflater, size, frames = hashlib.sha256(), zlib.decompressobj(-12), 0, 0
        try:
            while True:
                frame = read_server_frame(sock, buffer)
                frames += 1
                data = inflater.decompress(frame.payload + (_TAIL if frame.fin else b"")) if deflate else frame.payload
                digest.update(data)
                size += len(data)
                if frame.fin:
                    break
            received.put((size, frames, digest.hexdigest()))
        except Exception as exc:  # reported to the test thread
            received.put(exc)

    with sock:
        ws = connections.get(timeout=TIMEOUT)
        transport = ws._transport
        written_before: list[int] = []

        def fragments():
            for index in range(count):
                written_before.append(transport.bytes_out)
                yield _content(index, fragment)

        reader = threading.Thread(target=read_all)
        reader.start()
        tracemalloc.start()
        try:
            start_bytes = transport.bytes_out
            ws.send(fragments())
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        reader.join(TIMEOUT)
        result = received.get(timeout=TIMEOUT)
        assert not isinstance(result, Exception), result
    expected = hashlib.sha256()
    for index in range(count):
        expected.update(_content(index, fragment))
    assert result == (count * fragment, count + 1, expected.hexdigest())
    # fragment k was asked for once k frames had gone out (each at least its 64 KiB uncompressed; compressed, at least a header)
    least = 10 + fragment if not deflate else 2
    assert all(written - start_bytes >= index * least for index, written in enumerate(written_before))
    assert peak < 2 * MiB, f"peak traced memory {peak / MiB:.2f} MiB while sending 16 MiB"


def test_16_mib_generator_message_reaches_websockets_client_whole(server):
    connections = serve_one(server, per_message_deflate=True, ping_interval=None)
    fragment, count = 256 * 1024, 64
    with connect(url(server, "/ws"), open_timeout=TIMEOUT, max_size=None) as client:
        ws = connections.get(timeout=TIMEOUT)
        assert "permessage-deflate" in ws.extensions
        sender = threading.Thread(target=ws.send, args=((_content(index, fragment) for index in range(count)),))
        sender.start()
        message = client.recv(timeout=60)
        sender.join(TIMEOUT)
    assert len(message) == 16 * MiB
    assert message == b"".join(_content(index, fragment) for index in range(count))


# -- other data waits; control frames go between ---------------------------------------


def test_broadcasts_and_other_sends_wait_for_the_end_while_pings_and_pongs_go_between(server):
    handler = server.create_handler(path="/ws", ping_interval=0.05)  # heartbeat pings must come between the fragments
    connections: queue.Queue = queue.Queue()
    handler.on("connection", lambda ws, request: connections.put(ws))
    sock, buffer = _raw_client(server)
    started, go = threading.Event(), threading.Event()

    def slow():
        yield "one"
        started.set()
        assert go.wait(TIMEOUT)
        yield "two"
        yield "three"

    with sock:
        ws = connections.get(timeout=TIMEOUT)
        sending = threading.Thread(target=ws.send, args=(slow(),))
        sending.start()
        assert started.wait(TIMEOUT)
        handler.broadcast("broadcast")  # returns at once: held until the message ends, and counted
        assert ws.buffered_amount >= 2 + len("broadcast")  # (a heartbeat ping may be waiting too)
        other = threading.Thread(target=ws.send, args=("other thread",))
        other.start()
        assert wait_until(lambda: ws._transport._turn._waiters)  # the other send() waits for its turn
        sock.sendall(encode_frame(0x9, b"are you there"))  # a client's ping: answered between the fragments
        frames = []
        while not any(frame.opcode == 0xA for frame in frames) or not any(frame.opcode == 0x9 for frame in frames):
            frames.append(read_server_frame(sock, buffer))
        go.set()
        sending.join(TIMEOUT)
        other.join(TIMEOUT)
        assert not sending.is_alive() and not other.is_alive()
        while len([frame for frame in frames if frame.opcode < 0x8]) < 6:
            frames.append(read_server_frame(sock, buffer))
    data = [(frame.opcode, frame.fin, frame.payload) for frame in frames if frame.opcode < 0x8]
    assert data == [
        (0x1, False, b"one"), (0x0, False, b"two"), (0x0, False, b"three"), (0x0, True, b""),
        (0x1, True, b"broadcast"), (0x1, True, b"other thread"),
    ]
    first_data = next(index for index, frame in enumerate(frames) if frame.opcode < 0x8)
    pong = next(index for index, frame in enumerate(frames) if frame.opcode == 0xA)
    ping = next(index for index, frame in enumerate(frames) if frame.opcode == 0x9)
    second_data = next(index for index, frame in enumerate(frames) if frame.opcode < 0x8 and index > first_data)
    assert first_data < pong < second_data and first_data < ping < second_data
    assert frames[pong].payload == b"are you there"


def test_close_goes_between_the_fragments_and_the_send_raises(server):
    connections = serve_one(server)
    sock, buffer = _raw_client(server)
    started, go = threading.Event(), threading.Event()
    asked = []

    def slow():
        for part in ("one", "two", "three"):
            asked.append(part)
            yield part
            started.set()
            assert go.wait(TIMEOUT)

    errors: queue.Queue = queue.Queue()

    def send() -> None:
        try:
            ws.send(slow())
        except Exception as exc:
            errors.put(exc)

    with sock:
        ws = connections.get(timeout=TIMEOUT)
        sending = threading.Thread(target=send)
        sending.start()
        assert started.wait(TIMEOUT)
        ws.close(4000, "bye")  # does not wait for the message
        first, close = read_server_frame(sock, buffer), read_server_frame(sock, buffer)
        assert (first.opcode, first.fin, close.close_code) == (0x1, False, 4000)
        go.set()
        sending.join(TIMEOUT)
        assert isinstance(errors.get(timeout=TIMEOUT), ConnectionClosed)
        assert asked == ["one", "two"]  # nothing more was asked of the generator
        with pytest.raises(ConnectionClosed):
            ws.send("after")


def test_the_client_closing_midway_raises_connection_closed(server):
    connections = serve_one(server)
    started, go = threading.Event(), threading.Event()
    asked = []

    def slow():
        for part in ("one", "two", "three"):
            asked.append(part)
            yield part
            started.set()
            assert go.wait(TIMEOUT)

    errors: queue.Queue = queue.Queue()
    with connect(url(server, "/ws"), open_timeout=TIMEOUT) as client:
        ws = connections.get(timeout=TIMEOUT)

        def send() -> None:
            try:
                ws.send(slow())
            except Exception as exc:
                errors.put(exc)

        sending = threading.Thread(target=send)
        sending.start()
        assert started.wait(TIMEOUT)
        client.close()  # the server answers its close frame between the fragments
    _wait_for_close_event(ws)
    go.set()
    sending.join(TIMEOUT)
    assert isinstance(errors.get(timeout=TIMEOUT), ConnectionClosed)
    assert asked == ["one", "two"]
    assert ws.close_code == 1000


# -- errors --------------------------------------------------------------------------------


def test_nothing_begun_leaves_the_connection_as_it_was(server):
    connections = serve_one(server)
    with connect(url(server, "/ws"), open_timeout=TIMEOUT) as client:
        ws = connections.get(timeout=TIMEOUT)
        ws.send([])  # an empty iterable sends nothing, as in websockets
        ws.send(iter(()))
        with pytest.raises(TypeError, match="data"):
            ws.send({"a": 1})  # a dict is not an iterable of fragments (websockets refuses it too)
        with pytest.raises(TypeError, match="data"):
            ws.send(42)
        with pytest.raises(TypeError, match="data: fragments must be str or bytes-like, not int"):
            ws.send([1, 2])

        def fails_at_once():
            raise KeyError("no data")
            yield "never"  # pragma: no cover

        with pytest.raises(KeyError):
            ws.send(fails_at_once())
        with pytest.raises(ValueError, match="UTF-8"):
            ws.send([b"\xff"], binary=False)
        assert ws.ready_state is ws.OPEN
        ws.send("still open")
        assert client.recv(timeout=TIMEOUT) == "still open"  # the first message the client sees


def _a_send_that_fails_midway(server, fragments, error, match=None, **options):
    """Send ``fragments``; it must raise ``error`` and fail the connection
    as websockets does: close frame 1011, which websockets' client reports."""
    connections = serve_one(server)
    with connect(url(server, "/ws"), open_timeout=TIMEOUT) as client:
        ws = connections.get(timeout=TIMEOUT)
        with pytest.raises(error, match=match) as raised:
            ws.send(fragments(ws) if callable(fragments) else fragments, **options)
        with pytest.raises(ConnectionClosedError) as closed:
            client.recv(timeout=TIMEOUT)
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1011, "error in fragmented message")
    _wait_for_close_event(ws)
    assert (ws.sent_close_code, ws.close_code) == (1011, 1006)  # we failed it: no close frame was received for it
    with pytest.raises(ConnectionClosed):
        ws.send("after")
    return raised.value


def test_mixing_str_and_bytes_fails_the_connection(server):
    _a_send_that_fails_midway(server, ["text", b"bytes"], TypeError, "data: the fragments of one message must all be str")


def test_bytes_then_a_wrong_type_fails_the_connection(server):
    _a_send_that_fails_midway(server, iter([b"a", bytearray(b"b"), None]), TypeError, "not NoneType")


def test_a_generator_that_raises_midway_fails_the_connection_and_its_exception_is_raised(server):
    failure = OSError("the file went away")  # an OSError of the generator's own is not taken for the socket's

    def reading():
        yield b"first part"
        raise failure

    assert _a_send_that_fails_midway(server, reading(), OSError) is failure


def test_invalid_utf8_at_the_end_of_a_text_message_fails_the_connection(server):
    _a_send_that_fails_midway(server, [b"ok", "é".encode()[:1]], ValueError, "UTF-8", binary=False)


def test_a_send_from_the_generator_itself_raises_instead_of_waiting_for_ever(server):
    def nested(ws):
        yield "one"
        ws.send("inside")

    _a_send_that_fails_midway(server, nested, RuntimeError, "would wait")


def test_a_send_waiting_for_an_abandoned_message_raises_connection_closed(server):
    connections = serve_one(server)
    started, go = threading.Event(), threading.Event()
    failure = LookupError("gone")

    def failing():
        yield b"one"
        started.set()
        assert go.wait(TIMEOUT)
        raise failure

    raised: dict = {}

    def send(name, data) -> None:
        try:
            ws.send(data)
        except Exception as exc:
            raised[name] = exc

    with connect(url(server, "/ws"), open_timeout=TIMEOUT):
        ws = connections.get(timeout=TIMEOUT)
        sending = threading.Thread(target=send, args=("fragments", failing()))
        sending.start()
        assert started.wait(TIMEOUT)
        waiting = threading.Thread(target=send, args=("whole", "waits"))
        waiting.start()
        assert wait_until(lambda: ws._transport._turn._waiters)
        go.set()
        sending.join(TIMEOUT)
        waiting.join(TIMEOUT)
    assert raised["fragments"] is failure
    assert isinstance(raised["whole"], ConnectionClosed)  # it never goes after half a message


# -- write_timeout, per fragment ---------------------------------------------------------------


def test_write_timeout_applies_to_each_fragment_not_to_the_generator(server):
    connections = serve_one(server, write_timeout=0.2, ping_interval=None)
    with connect(url(server, "/ws"), open_timeout=TIMEOUT) as client:
        ws = connections.get(timeout=TIMEOUT)

        def slow_producer():
            for part in ("a", "b", "c"):
                yield part
                threading.Event().wait(0.3)  # the producer itself is slow: longer than write_timeout

        ws.send(slow_producer())
        assert client.recv(timeout=TIMEOUT) == "abc"


def test_write_timeout_drops_a_client_that_stops_reading_midway(server):
    connections = serve_one(server, write_timeout=0.3, ping_interval=None)
    sock = raw_connect(server.port, TIMEOUT, rcvbuf=4096)
    with sock:
        sock.sendall(upgrade_request("/ws", server.port))
        assert read_http_response(sock)[0] == 101
        ws = connections.get(timeout=TIMEOUT)
        asked = []

        def endless():
            while True:
                asked.append(1)
                yield b"x" * MiB

        started = time.monotonic()
        with pytest.raises(ConnectionClosed):
            ws.send(endless())
        assert time.monotonic() - started < TIMEOUT
        assert ws.sent_close_code == 1011 and len(asked) < 64  # the kernel took a few MiB at most
