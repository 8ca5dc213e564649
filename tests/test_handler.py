"""WebSocketHandler: options, the handshake hooks, clients, broadcast, close."""

from __future__ import annotations

import concurrent.futures
import queue
import socket
import struct
import threading
import zlib

import pytest
from websockets.exceptions import ConnectionClosed as ClientClosed
from websockets.exceptions import InvalidStatus
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.sync.client import connect

from ws_multipath import HandlerOptions, ReadyState
from ws_multipath.errors import HookError

from .conftest import LEGACY, TIMEOUT, echo, raw_request, upgrade_head, url, wait_until


def test_options_have_documented_defaults(server):
    handler = server.create_handler(path="/d")
    assert handler.options == HandlerOptions()
    assert handler.options.max_payload == 16 * 1024 * 1024
    assert handler.options.per_message_deflate is None and handler.options.auto_pong


@pytest.mark.parametrize(
    "options, name",
    [
        ({"max_payload": -1}, "max_payload"),
        ({"max_queue": -1}, "max_queue"),
        ({"close_timeout": 0}, "close_timeout"),
        ({"ping_interval": "x"}, "ping_interval"),
        ({"verify_client": 3}, "verify_client"),
        ({"per_message_deflate": {"server_max_window_bits": 20}}, "server_max_window_bits"),
        ({"per_message_deflate": {"nope": 1}}, "nope"),
        ({"allowed_origins": "https://a.example"}, "allowed_origins"),
    ],
)
def test_invalid_options_name_the_option(server, options, name):
    with pytest.raises((TypeError, ValueError), match=name):
        server.create_handler(path="/bad", **options)


# -- handshake hooks -------------------------------------------------------------


def test_handle_protocols_chooses_and_the_choice_is_echoed(server):
    calls = []

    def choose(protocols, request):
        calls.append((protocols, request.path))
        return "chat.v2"

    server.create_handler(path="/p", handle_protocols=choose)
    with connect(url(server, "/p"), open_timeout=TIMEOUT, subprotocols=["chat.v1", "chat.v2"]) as client:
        assert client.subprotocol == "chat.v2"
    assert calls == [(["chat.v1", "chat.v2"], "/p")]


def test_without_handle_protocols_the_first_offered_is_chosen(server):
    server.create_handler(path="/p")
    with connect(url(server, "/p"), open_timeout=TIMEOUT, subprotocols=["first", "second"]) as client:
        assert client.subprotocol == "first"


def test_handle_protocols_returning_an_unoffered_protocol_is_a_500(server):
    handler = server.create_handler(path="/p", handle_protocols=lambda protocols, request: "other")
    errors: queue.Queue = queue.Queue()
    handler.on("error", errors.put)
    with pytest.raises(InvalidStatus) as info:
        connect(url(server, "/p"), open_timeout=TIMEOUT, subprotocols=["mine"])
    assert info.value.response.status_code == 500
    assert "other" in str(errors.get(timeout=TIMEOUT))


@pytest.mark.parametrize(
    "verdict, status",
    [(False, 401), ((False, 403, "no entry"), 403), ((False, 429), 429), (True, 101), ((True,), 101)],
)
def test_verify_client_verdicts(server, verdict, status):
    seen = []
    server.create_handler(path="/v", verify_client=lambda request: (seen.append(request.headers["X-Token"]), verdict)[1])
    if status == 101:
        with connect(url(server, "/v"), open_timeout=TIMEOUT, additional_headers={"X-Token": "t"}):
            pass
    else:
        with pytest.raises(InvalidStatus) as info:
            connect(url(server, "/v"), open_timeout=TIMEOUT, additional_headers={"X-Token": "t"})
        assert info.value.response.status_code == status
    assert seen == ["t"]


def test_verify_client_that_raises_gives_500_and_an_error_event(server):
    handler = server.create_handler(path="/v", verify_client=lambda request: 1 / 0)
    errors: queue.Queue = queue.Queue()
    handler.on("error", errors.put)
    with pytest.raises(InvalidStatus) as info:
        connect(url(server, "/v"), open_timeout=TIMEOUT)
    assert info.value.response.status_code == 500
    error = errors.get(timeout=TIMEOUT)
    assert isinstance(error, HookError) and "verify_client" in str(error)
    assert isinstance(error.__cause__, ZeroDivisionError)


def test_headers_event_can_change_the_response(server):
    handler = server.create_handler(path="/h")

    @handler.on("headers")
    def add_cookie(headers, request):
        assert ("Upgrade", "websocket") in headers
        headers.append(("Set-Cookie", f"path={request.path}"))

    with connect(url(server, "/h"), open_timeout=TIMEOUT) as client:
        assert client.response.headers["Set-Cookie"] == "path=/h"


def test_allowed_origins_list_and_callable(server):
    server.create_handler(path="/list", allowed_origins=["https://good.example"])
    server.create_handler(path="/fn", allowed_origins=lambda origin: origin is not None and origin.endswith(".good.example"))
    with connect(url(server, "/list"), open_timeout=TIMEOUT, origin="https://good.example"):
        pass
    with connect(url(server, "/fn"), open_timeout=TIMEOUT, origin="https://a.good.example"):
        pass
    for path, origin in (("/list", "https://evil.example"), ("/fn", "https://evil.example"), ("/list", None)):
        with pytest.raises(InvalidStatus) as info:
            connect(url(server, path), open_timeout=TIMEOUT, origin=origin)
        assert info.value.response.status_code == 403


# -- clients and broadcast -----------------------------------------------------


def test_clients_tracks_open_connections(server):
    handler = server.create_handler(path="/c")
    assert handler.clients == frozenset()
    with connect(url(server, "/c"), open_timeout=TIMEOUT):
        assert wait_until(lambda: len(handler.clients) == 1)
        (ws,) = handler.clients
        assert ws.ready_state is ReadyState.OPEN
    assert wait_until(lambda: handler.clients == frozenset())


def test_client_tracking_off_has_no_clients(server):
    handler = server.create_handler(path="/c", client_tracking=False)
    assert handler.clients is None


def test_broadcast_reaches_every_client_but_the_excluded(server):
    handler = server.create_handler(path="/b")
    clients = [connect(url(server, "/b"), open_timeout=TIMEOUT, **LEGACY) for _ in range(5)]
    try:
        assert wait_until(lambda: len(handler.clients) == 5)
        excluded = next(iter(handler.clients))
        assert handler.broadcast("hello", exclude=excluded) == 4
        assert handler.broadcast(b"\x01" * 100_000) == 5
        big = b"\x01" * 100_000
        first = [client.recv(timeout=TIMEOUT) for client in clients]
        assert first.count("hello") == 4 and first.count(big) == 1
        for client, message in zip(clients, first):
            if message == "hello":
                assert client.recv(timeout=TIMEOUT) == big
    finally:
        for client in clients:
            client.close()


def test_broadcast_is_not_delayed_by_a_client_that_does_not_read(server):
    handler = server.create_handler(path="/b", write_timeout=30)
    stuck = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.sendall(upgrade_head("/b"))
    with connect(url(server, "/b"), open_timeout=TIMEOUT, max_size=None) as reader:
        assert wait_until(lambda: len(handler.clients) == 2)
        big = b"x" * 1_000_000
        for i in range(10):  # far more than the stuck client's buffers hold
            handler.broadcast(big)
            assert reader.recv(timeout=TIMEOUT) == big
    stuck.close()


def test_broadcast_with_per_message_deflate_clients(server):
    handler = server.create_handler(path="/z", per_message_deflate={"threshold": 0})
    with connect(url(server, "/z"), open_timeout=TIMEOUT) as a, connect(url(server, "/z"), open_timeout=TIMEOUT, compression=None) as b:
        assert wait_until(lambda: len(handler.clients) == 2)
        assert handler.broadcast("same text " * 50) == 2
        assert a.recv(timeout=TIMEOUT) == b.recv(timeout=TIMEOUT) == "same text " * 50


def test_100_clients_on_two_paths_lose_and_misroute_nothing(server):
    for path in ("/left", "/right"):
        server.create_handler(path=path).on("connection", lambda ws, request, p=path: ws.on("message", lambda data, is_binary: ws.send(f"{p}:{data}")))

    def client(i: int) -> int:
        path = "/left" if i % 2 else "/right"
        with connect(url(server, path), open_timeout=TIMEOUT) as ws:
            for n in range(20):
                ws.send(f"{i}-{n}")
            for n in range(20):
                assert ws.recv(timeout=TIMEOUT) == f"{path}:{i}-{n}"
        return i

    with concurrent.futures.ThreadPoolExecutor(100) as pool:
        assert sorted(pool.map(client, range(100))) == list(range(100))


# -- limits and extensions -----------------------------------------------------


def test_max_payload_refuses_larger_messages_with_1009(server):
    server.create_handler(path="/m", max_payload=1000).on("connection", echo)
    with connect(url(server, "/m"), open_timeout=TIMEOUT) as client:
        client.send("x" * 1000)
        assert client.recv(timeout=TIMEOUT) == "x" * 1000
        client.send("x" * 1001)
        with pytest.raises(ClientClosed):
            client.recv(timeout=TIMEOUT)
        assert client.close_code == 1009


def test_per_message_deflate_is_negotiated_and_echoes(server):
    server.create_handler(path="/z", per_message_deflate=True).on("connection", echo)
    with connect(url(server, "/z"), open_timeout=TIMEOUT) as client:
        assert "permessage-deflate" in client.response.headers["Sec-WebSocket-Extensions"]
        for message in ("short", "long text " * 1000, b"\x00" * 50_000):
            client.send(message)
            assert client.recv(timeout=TIMEOUT) == message


def test_per_message_deflate_off_by_default(server):
    server.create_handler(path="/plain")
    with connect(url(server, "/plain"), open_timeout=TIMEOUT) as client:
        assert "Sec-WebSocket-Extensions" not in client.response.headers


def test_a_compressed_bomb_is_refused_before_it_is_inflated(server):
    """64 KiB on the wire that would inflate to 64 MiB: refused with 1009."""
    server.create_handler(path="/z", per_message_deflate=True, max_payload=1024 * 1024).on("connection", echo)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = compressor.compress(b"\x00" * (64 * 1024 * 1024)) + compressor.flush(zlib.Z_SYNC_FLUSH)[:-4]
    head = upgrade_head("/z", "Sec-WebSocket-Extensions: permessage-deflate\r\n")
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(head)
        response = b""
        while b"\r\n\r\n" not in response:
            response += sock.recv(4096)
        assert b"permessage-deflate" in response
        length = struct.pack("!BQ", 0xFF, len(bomb)) if len(bomb) > 0xFFFF else struct.pack("!BH", 0xFE, len(bomb))
        frame = b"\xc2" + length + b"\x00" * 4 + bomb  # RSV1, masked with zeros
        try:
            sock.sendall(frame)
        except OSError:
            pass
        data = response.split(b"\r\n\r\n", 1)[1]
        while len(data) < 4:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    assert data[0] == 0x88 and struct.unpack("!H", data[2:4])[0] == 1009


def test_deflate_parameters_are_honoured(server):
    server.create_handler(path="/z", per_message_deflate={"server_no_context_takeover": True, "server_max_window_bits": 10}).on("connection", echo)
    factory = ClientPerMessageDeflateFactory(client_max_window_bits=True)
    with connect(url(server, "/z"), open_timeout=TIMEOUT, extensions=[factory], compression=None) as client:
        header = client.response.headers["Sec-WebSocket-Extensions"]
        assert "server_no_context_takeover" in header and "server_max_window_bits=10" in header
        for _ in range(3):
            client.send("repeat " * 300)
            assert client.recv(timeout=TIMEOUT) == "repeat " * 300


def test_skip_utf8_validation_replaces_instead_of_failing(server):
    got: queue.Queue = queue.Queue()
    server.create_handler(path="/u", skip_utf8_validation=True).on("connection", lambda ws, request: ws.on("message", lambda data, is_binary: got.put(data)))
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(upgrade_head("/u") + b"\x81\x83\x00\x00\x00\x00a\xc3\x28")
        assert got.get(timeout=TIMEOUT) == "a\ufffd("


# -- close -----------------------------------------------------------------------


def test_handler_close_unregisters_closes_clients_with_1001_and_emits_close(server):
    handler = server.create_handler(path="/gone")
    closed = threading.Event()
    handler.on("close", closed.set)
    called = threading.Event()
    with connect(url(server, "/gone"), open_timeout=TIMEOUT) as client:
        assert wait_until(lambda: len(handler.clients) == 1)
        handler.close(called.set)
        with pytest.raises(ClientClosed):
            client.recv(timeout=TIMEOUT)
        assert client.close_code == 1001
    assert closed.wait(TIMEOUT) and called.wait(TIMEOUT)
    assert raw_request(server, upgrade_head("/gone")).startswith(b"HTTP/1.1 400 ")
    server.create_handler(path="/gone")  # the path is free again
    handler.close()  # idempotent
