"""The forms of ws's API a porter reaches for (issue 19), each over a real
socket: send options, close reasons as bytes, max_payload 0, should_handle,
websocket_class, the handler's address and 'listening'."""

from __future__ import annotations

import queue
import socket
import threading

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from ws_multipath import MultipathServer, WebSocket

from .conftest import TIMEOUT, echo, raw_request, serve_one, upgrade_head, url

MiB = 1024 * 1024


def _read_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    return data


def _read_exactly(sock: socket.socket, count: int, data: bytes = b"") -> bytes:
    while len(data) < count:
        chunk = sock.recv(65536)
        assert chunk, "the server closed"
        data += chunk
    return data


# -- send(binary=..., compress=...) -------------------------------------------


def test_send_binary_true_sends_a_str_as_binary_and_false_bytes_as_text(server):
    connections = serve_one(server)
    with connect(url(server, "/ws"), open_timeout=TIMEOUT) as client:
        ws = connections.get(timeout=TIMEOUT)
        ws.send("héllo", binary=True)
        assert client.recv(timeout=TIMEOUT) == "héllo".encode()
        ws.send("héllo".encode(), binary=False)
        assert client.recv(timeout=TIMEOUT) == "héllo"
        ws.send(b"\x00\x01", binary=True)
        assert client.recv(timeout=TIMEOUT) == b"\x00\x01"
        with pytest.raises(ValueError, match="UTF-8"):
            ws.send(b"\xff", binary=False)
        ws.send("still open")
        assert client.recv(timeout=TIMEOUT) == "still open"


def test_send_compress_false_skips_permessage_deflate_for_one_message(server):
    connections = serve_one(server, per_message_deflate=True)
    message = "a" * 4000  # above the 1024-byte threshold: compressed by default
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(upgrade_head("/ws", "Sec-WebSocket-Extensions: permessage-deflate\r\n"))
        head = _read_head(sock)
        assert b"permessage-deflate" in head
        rest = head.split(b"\r\n\r\n", 1)[1]
        ws = connections.get(timeout=TIMEOUT)
        ws.send(message, compress=False)
        frame = _read_exactly(sock, 4 + len(message), rest)
        assert frame[0] == 0x81 and frame[4:] == message.encode()  # FIN, text, RSV1 clear: not compressed
        ws.send(message)
        frame = _read_exactly(sock, 2)
        assert frame[0] == 0xC1  # FIN, RSV1, text: compressed


# -- close(code, reason) with a bytes reason -----------------------------------


def test_close_takes_a_bytes_reason_of_valid_utf8(server):
    connections = serve_one(server)
    with connect(url(server, "/ws"), open_timeout=TIMEOUT) as client:
        ws = connections.get(timeout=TIMEOUT)
        with pytest.raises(ValueError, match="UTF-8"):
            ws.close(4000, b"\xff")
        with pytest.raises(ValueError, match="123"):
            ws.close(4000, b"x" * 124)
        ws.close(4000, "au revoir, café".encode())
        with pytest.raises(Exception):
            client.recv(timeout=TIMEOUT)
        assert (client.close_code, client.close_reason) == (4000, "au revoir, café")
    assert ws.sent_close_reason == "au revoir, café"


# -- max_payload=0 / None: no limit -------------------------------------------


@pytest.mark.parametrize("limit", [0, None])
def test_max_payload_0_or_none_means_no_limit(server, limit):
    server.create_handler(path="/big", max_payload=limit).on("connection", echo)
    message = b"x" * (16 * MiB + 1)  # one byte over the default limit
    with connect(url(server, "/big"), open_timeout=TIMEOUT, max_size=None) as client:
        client.send(message)
        assert client.recv(timeout=30) == message


def test_max_payload_keeps_refusing_negative_values(server):
    with pytest.raises(ValueError, match="max_payload"):
        server.create_handler(path="/x", max_payload=-1)


# -- should_handle ---------------------------------------------------------------


def test_should_handle_false_gets_400_and_true_upgrades(server):
    seen = []
    handler = server.create_handler(path="/gate", should_handle=lambda request: seen.append(request.path) or request.query.get("ok") == ["1"])
    handler.on("connection", echo)
    with pytest.raises(InvalidStatus) as refused:
        connect(url(server, "/gate?ok=0"), open_timeout=TIMEOUT)
    assert refused.value.response.status_code == 400
    with connect(url(server, "/gate?ok=1"), open_timeout=TIMEOUT) as client:
        client.send("in")
        assert client.recv(timeout=TIMEOUT) == "in"
    assert seen == ["/gate", "/gate"]
    assert handler.stats()["refused"] == {400: {"should_handle": 1}}


def test_should_handle_that_raises_is_a_hook_failure(server):
    errors: queue.Queue = queue.Queue()
    handler = server.create_handler(path="/gate", should_handle=lambda request: 1 / 0)
    handler.on("error", errors.put)
    response = raw_request(server, upgrade_head("/gate"))
    assert response.startswith(b"HTTP/1.1 500 ")
    error = errors.get(timeout=TIMEOUT)
    assert "should_handle" in str(error) and isinstance(error.__cause__, ZeroDivisionError)


# -- websocket_class -------------------------------------------------------------


class Tagged(WebSocket):
    def greet(self) -> None:
        self.send(f"hello from {self.path}")


def test_websocket_class_makes_every_connection_of_the_handler(server):
    connections = serve_one(server, websocket_class=Tagged)
    with connect(url(server, "/ws"), open_timeout=TIMEOUT) as client:
        ws = connections.get(timeout=TIMEOUT)
        assert type(ws) is Tagged
        ws.greet()
        assert client.recv(timeout=TIMEOUT) == "hello from /ws"


@pytest.mark.parametrize("value", [dict, "WebSocket", object()])
def test_websocket_class_must_be_a_websocket_subclass(server, value):
    with pytest.raises(TypeError, match="websocket_class"):
        server.create_handler(path="/x", websocket_class=value)


# -- the handler's address and 'listening' ---------------------------------------


def test_listening_reaches_the_handlers_and_address_is_none_once_closed():
    # 'listening' comes when the server starts listening: with auto_listen=False,
    # from serve_forever() (with the default, the constructor already listens)
    server = MultipathServer(port=0, host="127.0.0.1", auto_listen=False)
    handler = server.create_handler(path="/a")
    heard, server_heard = threading.Event(), threading.Event()
    handler.on("listening", heard.set)
    server.on("listening", server_heard.set)
    serving = threading.Thread(target=server.serve_forever)
    serving.start()
    try:
        assert heard.wait(TIMEOUT) and server_heard.is_set()
        assert handler.address == server.address == ("127.0.0.1", server.port)
        closed = threading.Event()
        handler.close(closed.set)
        assert handler.address is None
        assert closed.wait(TIMEOUT)
    finally:
        server.close()
        serving.join(TIMEOUT)
    assert not serving.is_alive()


# -- a client that half-closes before its 101 ------------------------------------


@pytest.mark.parametrize("high_descriptors", [False, True], ids=["low-fd", "fd-past-1024"])
def test_a_client_that_half_closes_before_the_101_gets_none_and_no_connection_event(server, high_descriptors):
    import os
    import resource

    held = []
    if high_descriptors:  # the server's socket gets a descriptor past 1024, where select() cannot look
        if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 1200:
            pytest.skip("RLIMIT_NOFILE below 1200")
        held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        _half_close_before_the_101(server)
    finally:
        for fd in held:
            os.close(fd)


def _half_close_before_the_101(server):
    fin_sent = threading.Event()
    opened: queue.Queue = queue.Queue()

    def verify(request):  # the handshake waits here until the client's FIN has arrived
        return fin_sent.wait(TIMEOUT)

    handler = server.create_handler(path="/h", verify_client=verify)
    handler.on("connection", lambda ws, request: opened.put(ws))
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(upgrade_head("/h"))
        sock.shutdown(socket.SHUT_WR)
        fin_sent.set()
        assert sock.recv(4096) == b""  # no 101: the server closed
    with connect(url(server, "/h"), open_timeout=TIMEOUT):  # a client that stays is served
        assert opened.get(timeout=TIMEOUT) is not None
    assert opened.empty()


# -- max_fragments -----------------------------------------------------------------


def _fragments(count: int) -> bytes:
    """A text message "x" * count in ``count`` masked frames (mask 0)."""
    frames = []
    for index in range(count):
        opcode = 0x1 if index == 0 else 0x0
        fin = 0x80 if index == count - 1 else 0
        frames.append(bytes([fin | opcode, 0x81]) + b"\x00" * 4 + b"x")
    return b"".join(frames)


@pytest.mark.parametrize("count, answer", [(3, b"\x81\x03xxx"), (4, b"\x88")])
def test_max_fragments_bounds_the_frames_of_one_message(server, count, answer):
    server.create_handler(path="/f", max_fragments=3).on("connection", echo)
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(upgrade_head("/f"))
        rest = _read_head(sock).split(b"\r\n\r\n", 1)[1]
        sock.sendall(_fragments(count))
        frame = _read_exactly(sock, 5, rest)
        assert frame.startswith(answer)
        if answer == b"\x88":  # a close frame: 1009, message too big
            assert frame[2:4] == (1009).to_bytes(2, "big")


def test_max_fragments_must_be_positive(server):
    with pytest.raises(ValueError, match="max_fragments"):
        server.create_handler(path="/x", max_fragments=0)


# -- handle_upgrade: a socket someone else accepted and read ---------------------


class OtherServer:
    """A plain listening socket of the test's own, standing for another server
    that reads the start of each request and hands the socket over."""

    def __init__(self, handler, peek: int) -> None:
        self.handler, self.peek = handler, peek
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._accept_one, daemon=True)

    def _accept_one(self) -> None:
        sock, address = self.listener.accept()
        sock.settimeout(TIMEOUT)
        head = b""
        while len(head) < self.peek:  # the other server read this much
            head += sock.recv(self.peek - len(head))
        self.handler.handle_upgrade(sock, head, address)

    def __enter__(self) -> "OtherServer":
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.thread.join(TIMEOUT)
        self.listener.close()


@pytest.mark.parametrize("peek", [1, 40, len(upgrade_head("/h"))])
def test_handle_upgrade_serves_a_socket_whose_head_someone_else_read(server, peek):
    handler = server.create_handler(path="/h")
    handler.on("connection", echo)
    with OtherServer(handler, peek) as other:
        with connect(f"ws://127.0.0.1:{other.port}/h", open_timeout=TIMEOUT) as client:
            client.send("through another server")
            assert client.recv(timeout=TIMEOUT) == "through another server"


def test_handle_upgrade_applies_the_handlers_checks(server):
    handler = server.create_handler(path="/h", verify_client=lambda request: (False, 403))
    with OtherServer(handler, 10) as other:
        with pytest.raises(InvalidStatus) as refused:
            connect(f"ws://127.0.0.1:{other.port}/h", open_timeout=TIMEOUT)
    assert refused.value.response.status_code == 403
    server.create_handler(path="/other")
    with OtherServer(handler, 10) as other:  # a path that is not this handler's
        with pytest.raises(InvalidStatus) as refused:
            connect(f"ws://127.0.0.1:{other.port}/other", open_timeout=TIMEOUT)
    assert refused.value.response.status_code == 400


# -- buffered_amount ---------------------------------------------------------------


def test_buffered_amount_counts_what_waits_for_a_client_that_does_not_read(server):
    handler = server.create_handler(path="/ws", ping_interval=None)
    connections: queue.Queue = queue.Queue()
    handler.on("connection", lambda ws, request: connections.put(ws))
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(upgrade_head("/ws"))
        rest = _read_head(sock).split(b"\r\n\r\n", 1)[1]
        ws = connections.get(timeout=TIMEOUT)
        assert ws.buffered_amount == 0
        message, count = b"x" * 65536, 240  # 15 MiB: more than the kernel holds, less than the 16 MiB cap
        frame_size = 10 + len(message)  # a 64 KiB binary frame's header is 10 bytes
        for _ in range(count):
            handler.broadcast(message)
        # every byte broadcast is either in the kernel already or counted as waiting
        # (a snapshot: the flusher writes under the write lock, so read both holding it)
        with ws._transport._write_lock:
            waiting, written = ws.buffered_amount, ws._transport.bytes_out
        assert waiting > 0 and waiting + written == count * frame_size
        received = len(rest)
        while received < count * frame_size:  # the client reads everything: nothing waits any more
            chunk = sock.recv(1 << 20)
            assert chunk
            received += len(chunk)
        assert ws.buffered_amount == 0


# -- 'client_error' (ws's 'wsClientError') ---------------------------------------------


def test_client_error_listeners_own_the_socket_of_an_invalid_upgrade(server):
    seen: queue.Queue = queue.Queue()
    handler = server.create_handler(path="/c", verify_client=lambda request: request.query.get("ok") == ["1"])

    @handler.on("client_error")
    def answer(error, sock, request):
        seen.put((error.status, request.path))
        sock.sendall(b"HTTP/1.1 418 I'm a teapot\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        sock.close()

    bad_key = upgrade_head("/c?ok=1").replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"short")
    assert raw_request(server, bad_key).startswith(b"HTTP/1.1 418 ")
    assert seen.get(timeout=TIMEOUT) == (400, "/c")
    # a hook's refusal is not a client error: its status as before, no event
    assert raw_request(server, upgrade_head("/c?ok=0")).startswith(b"HTTP/1.1 401 ")
    assert seen.empty()
    assert handler.stats()["refused"] == {400: {"bad_upgrade": 1}, 401: {"verify_client": 1}}


def test_without_client_error_listeners_the_answer_is_unchanged_and_a_raising_one_closes(server):
    errors: queue.Queue = queue.Queue()
    handler = server.create_handler(path="/c")
    bad_key = upgrade_head("/c").replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"short")
    assert raw_request(server, bad_key).startswith(b"HTTP/1.1 400 ")
    handler.on("error", errors.put)
    handler.on("client_error", lambda error, sock, request: 1 / 0)
    assert raw_request(server, bad_key) == b""  # the socket closed, nothing sent
    assert isinstance(errors.get(timeout=TIMEOUT), ZeroDivisionError)


# -- per_message_deflate's concurrency_limit -------------------------------------


def test_concurrency_limit_is_one_semaphore_for_the_handlers_compressions(server):
    handler = server.create_handler(path="/z", per_message_deflate={"concurrency_limit": 2})
    handler.on("connection", echo)
    connections: queue.Queue = queue.Queue()
    handler.on("connection", lambda ws, request: connections.put(ws))
    text = "compress me " * 200  # above the threshold
    with connect(url(server, "/z"), open_timeout=TIMEOUT) as first, connect(url(server, "/z"), open_timeout=TIMEOUT) as second:
        for client in (first, second):
            client.send(text)
            assert client.recv(timeout=TIMEOUT) == text
        limiters = {connections.get(timeout=TIMEOUT)._writer._deflate._limiter for _ in range(2)}
    assert limiters == {handler.options.per_message_deflate.limiter}
    limiter = limiters.pop()
    assert limiter.acquire(blocking=False) and limiter.acquire(blocking=False) and not limiter.acquire(blocking=False)
    limiter.release()
    limiter.release()


@pytest.mark.parametrize("limit", [0, -1, 1.5, True])
def test_concurrency_limit_must_be_a_positive_int(server, limit):
    with pytest.raises(ValueError, match="concurrency_limit"):
        server.create_handler(path="/z", per_message_deflate={"concurrency_limit": limit})


def test_a_websocket_class_that_raises_is_a_hook_failure(server):
    class Broken(WebSocket):
        def __init__(self, *args, **kwargs):
            raise RuntimeError("no")

    errors: queue.Queue = queue.Queue()
    handler = server.create_handler(path="/b", websocket_class=Broken)
    handler.on("error", errors.put)
    assert raw_request(server, upgrade_head("/b")).startswith(b"HTTP/1.1 500 ")
    error = errors.get(timeout=TIMEOUT)
    assert "websocket_class" in str(error) and isinstance(error.__cause__, RuntimeError)
