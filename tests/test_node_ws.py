"""The server's ws behaviours (issue 19) as Node's ``ws`` 8 client sees
them: close codes both ways, subprotocols and refused handshakes, the
send options, permessage-deflate's threshold and ``compress=False`` (on
the wire), pings both ways, ``max_payload``, ``handle_upgrade`` and
``'client_error'``. The Python-client versions are in test_ws_api.py and
test_upgrade.py; the client is in tests/node/client.js (tests/node_client.py
runs it)."""

from __future__ import annotations

import queue

import pytest

from .conftest import TIMEOUT, echo, serve_one, url
from .node_client import NodeClient, WireTap, node_ws  # noqa: F401 - node_ws is a fixture
from .test_ws_api import OtherServer

BAD_PROTOCOL = {"Sec-WebSocket-Protocol": "chat, chat"}  # repeated: ws's client would refuse to send it as protocols


def closes_of(ws) -> queue.Queue:
    """The server side's ``'close'`` events ``(code, reason)``."""
    closes: queue.Queue = queue.Queue()
    ws.on("close", lambda code, reason: closes.put((code, reason)))
    return closes


# -- close codes ------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, seen",
    [
        ((4000, "au revoir, café"), (4000, "au revoir, café")),
        ((4000, "au revoir, café".encode()), (4000, "au revoir, café")),
        ((1001,), (1001, "")),
        ((), (1000, "")),  # ws's close() without a code sends none (1005); here the default is 1000
    ],
    ids=["str-reason", "bytes-reason", "no-reason", "defaults"],
)
def test_the_client_sees_the_servers_close_code_and_reason(server, node_ws, args, seen):
    connections = serve_one(server)
    with NodeClient(node_ws, url(server, "/ws")) as client:
        client.next("open")
        ws = connections.get(timeout=TIMEOUT)
        closes = closes_of(ws)
        ws.close(*args)
        close = client.next("close")
        assert (close["code"], close["reason"]) == seen
        assert closes.get(timeout=TIMEOUT) == seen  # ws echoes the code and reason
        assert "error" not in client.names()


@pytest.mark.parametrize(
    "command, seen",
    [
        (dict(op="close", code=4001, reason="bye"), (4001, "bye")),
        (dict(op="close"), (1005, "")),  # a close frame without a code (RFC 6455 section 7.1.5)
        (dict(op="terminate"), (1006, "")),  # no close frame at all
    ],
    ids=["code", "no-code", "terminate"],
)
def test_the_server_close_event_gets_the_clients_code(server, node_ws, command, seen):
    connections = serve_one(server)
    with NodeClient(node_ws, url(server, "/ws")) as client:
        client.next("open")
        closes = closes_of(connections.get(timeout=TIMEOUT))
        client.command(**command)
        assert closes.get(timeout=TIMEOUT) == seen
        assert client.next("close")["code"] == seen[0]


def test_server_terminate_is_1006_for_the_client(server, node_ws):
    connections = serve_one(server)
    with NodeClient(node_ws, url(server, "/ws")) as client:
        client.next("open")
        ws = connections.get(timeout=TIMEOUT)
        closes = closes_of(ws)
        ws.terminate()
        assert client.next("close")["code"] == 1006
        assert closes.get(timeout=TIMEOUT) == (1006, "")


# -- subprotocols and refused handshakes ---------------------------------------------


def test_the_first_offered_subprotocol_is_chosen_by_default(server, node_ws):
    connections = serve_one(server)
    with NodeClient(node_ws, url(server, "/ws"), protocols=["chat", "superchat"]) as client:
        assert client.next("open")["protocol"] == "chat"
        assert connections.get(timeout=TIMEOUT).protocol == "chat"


def test_handle_protocols_chooses_and_none_leaves_the_header_out(server, node_ws):
    offered = []

    def choose(protocols, request):
        offered.append(protocols)
        return "superchat" if "superchat" in protocols else None

    connections = serve_one(server, handle_protocols=choose)
    with NodeClient(node_ws, url(server, "/ws"), protocols=["chat", "superchat"]) as client:
        assert client.next("open")["protocol"] == "superchat"
        assert connections.get(timeout=TIMEOUT).protocol == "superchat"
    with NodeClient(node_ws, url(server, "/ws"), protocols=["chat"]) as client:
        # no Sec-WebSocket-Protocol in the 101: ws's client fails a connection
        # whose offer was not taken up (ws 8: 'Server sent no subprotocol')
        assert client.next("error")["message"] == "Server sent no subprotocol"
        assert client.next("close")["code"] == 1006
    assert offered == [["chat", "superchat"], ["chat"]]


@pytest.mark.parametrize("offer", ["chat, chat", "foo;bar"])
def test_an_invalid_subprotocol_offer_is_a_400_for_ws(server, node_ws, offer):
    connections = serve_one(server)
    with NodeClient(node_ws, url(server, "/ws"), headers={"Sec-WebSocket-Protocol": offer}) as client:
        response = client.next("unexpected-response")
        assert response["status"] == 400 and "Sec-WebSocket-Protocol" in response["body"]
        assert "open" not in client.names()
    assert connections.empty()


def test_a_refusing_hook_is_the_status_ws_reports(server, node_ws):
    server.create_handler(path="/gate", should_handle=lambda request: False)
    server.create_handler(path="/auth", verify_client=lambda request: (False, 403, "no"))
    for path, status in (("/gate", 400), ("/auth", 403)):
        with NodeClient(node_ws, url(server, path)) as client:
            assert client.next("unexpected-response")["status"] == status


# -- send options -----------------------------------------------------------------


def test_send_binary_option_sets_is_binary_as_ws_sees_it(server, node_ws):
    connections = serve_one(server)
    with NodeClient(node_ws, url(server, "/ws")) as client:
        client.next("open")
        ws = connections.get(timeout=TIMEOUT)
        sent = [("héllo", {"binary": True}), ("héllo".encode(), {"binary": False}), ("héllo", {}), (b"\x00\xff", {})]
        for data, options in sent:
            ws.send(data, **options)
        seen = [client.next("message") for _ in sent]
        assert [(m["isBinary"], m["data"]) for m in seen] == [
            (True, "héllo".encode()), (False, "héllo".encode()), (False, "héllo".encode()), (True, b"\x00\xff"),
        ]


def test_messages_from_ws_arrive_as_str_or_bytes(server, node_ws):
    messages: queue.Queue = queue.Queue()
    connections = serve_one(server)
    with NodeClient(node_ws, url(server, "/ws")) as client:
        client.next("open")
        connections.get(timeout=TIMEOUT).on("message", lambda data, is_binary: messages.put((data, is_binary)))
        client.command("send", "héllo", binary=False)
        client.command("send", b"\x00\xff", binary=True)
        assert messages.get(timeout=TIMEOUT) == ("héllo", False)
        assert messages.get(timeout=TIMEOUT) == (b"\x00\xff", True)


# -- permessage-deflate: compress=False and threshold, seen on the wire -----------------

RSV1 = 0x40  # the first byte's "compressed" bit (RFC 7692 section 6)


@pytest.mark.parametrize("threshold", [None, 0])
def test_deflate_with_ws_compress_false_and_the_threshold_on_the_wire(server, node_ws, threshold):
    settings = {} if threshold is None else {"threshold": threshold}
    connections = serve_one(server, per_message_deflate=settings or True)
    messages: queue.Queue = queue.Queue()
    big, small = "compress me " * 400, "tiny"  # 4800 and 4 bytes: either side of ws's default 1024
    with WireTap(server.port) as tap, NodeClient(node_ws, f"ws://127.0.0.1:{tap.port}/ws") as client:
        assert client.next("open")["extensions"].startswith("permessage-deflate")
        ws = connections.get(timeout=TIMEOUT)
        ws.on("message", lambda data, is_binary: messages.put(data))
        ws.send(big, compress=False)
        ws.send(big)
        ws.send(small)
        received = [client.next("message")["data"].decode() for _ in range(3)]
        assert received == [big, big, small]
        frames = tap.frames(3)
        assert [bool(first & RSV1) for first, _ in frames] == [False, True, threshold == 0]
        assert frames[0][1] == big.encode() and len(frames[1][1]) < len(big) // 10
        client.command("send", big, binary=False)  # ws compresses it (its threshold is 1024 too)
        assert messages.get(timeout=TIMEOUT) == big


# -- pings --------------------------------------------------------------------------


def test_pings_both_ways_carry_their_payload(server, node_ws):
    connections = serve_one(server)
    with NodeClient(node_ws, url(server, "/ws")) as client:
        client.next("open")
        ws = connections.get(timeout=TIMEOUT)
        pings, pongs = queue.Queue(), queue.Queue()
        ws.on("ping", pings.put)
        ws.on("pong", pongs.put)
        client.command("ping", b"from ws")
        assert pings.get(timeout=TIMEOUT) == b"from ws"
        assert client.next("pong")["data"] == b"from ws"  # answered with the same payload
        ws.ping(b"from python")
        assert client.next("ping")["data"] == b"from python"
        assert pongs.get(timeout=TIMEOUT) == b"from python"  # ws's automatic answer
        client.command("pong", b"unsolicited")
        assert pongs.get(timeout=TIMEOUT) == b"unsolicited"


# -- max_payload ----------------------------------------------------------------------


def test_a_message_over_max_payload_is_1009_for_ws(server, node_ws):
    connections = serve_one(server, path="/small", max_payload=1000)
    with NodeClient(node_ws, url(server, "/small")) as client:
        client.next("open")
        ws = connections.get(timeout=TIMEOUT)
        ws.on("message", lambda data, is_binary: ws.send(data))
        closes = closes_of(ws)
        client.command("send", b"x" * 1000, binary=True)
        assert client.next("message")["data"] == b"x" * 1000
        client.command("send", b"x" * 1001, binary=True)
        assert client.next("close")["code"] == 1009
        # the server failed the connection: its 'close' event has 1006, no close frame
        # having been received (RFC 6455 section 7.1.5); what it sent is kept
        assert closes.get(timeout=TIMEOUT) == (1006, "")
        assert ws.sent_close_code == 1009


# -- handle_upgrade (ws's noServer mode) ---------------------------------------------------


def test_handle_upgrade_serves_a_ws_client(server, node_ws):
    handler = server.create_handler(path="/h", handle_protocols=lambda protocols, request: protocols[-1])
    handler.on("connection", echo)
    with OtherServer(handler, 16) as other, NodeClient(node_ws, f"ws://127.0.0.1:{other.port}/h", protocols=["a", "b"]) as client:
        assert client.next("open")["protocol"] == "b"
        client.command("send", "through another server")
        assert client.next("message")["data"] == b"through another server"
        client.command("close", code=4002)
        assert client.next("close")["code"] == 4002


# -- 'client_error' (ws's 'wsClientError') --------------------------------------------------


def test_client_error_listener_answers_a_ws_clients_bad_upgrade(server, node_ws):
    seen: queue.Queue = queue.Queue()
    handler = server.create_handler(path="/c")

    @handler.on("client_error")
    def answer(error, sock, request):
        seen.put((error.status, request.path))
        sock.sendall(b"HTTP/1.1 418 I'm a teapot\r\nContent-Length: 6\r\nConnection: close\r\n\r\nteapot")
        sock.close()

    with NodeClient(node_ws, url(server, "/c"), headers=BAD_PROTOCOL) as client:
        response = client.next("unexpected-response")
        assert (response["status"], response["body"]) == (418, "teapot")
    assert seen.get(timeout=TIMEOUT) == (400, "/c")


def test_a_raising_client_error_listener_closes_the_ws_clients_socket(server, node_ws):
    errors: queue.Queue = queue.Queue()
    handler = server.create_handler(path="/c")
    handler.on("error", errors.put)
    handler.on("client_error", lambda error, sock, request: 1 / 0)
    with NodeClient(node_ws, url(server, "/c"), headers=BAD_PROTOCOL) as client:
        assert client.next("error")["message"] == "socket hang up"  # no response at all
        assert client.next("close")["code"] == 1006
    assert isinstance(errors.get(timeout=TIMEOUT), ZeroDivisionError)


# -- pause and resume -------------------------------------------------------------------


def test_pause_holds_back_what_ws_sends_until_resume(server, node_ws):
    """ws's pause()/resume()/isPaused on the server's side of a ws client:
    nothing is read (no 'message', no pong) while paused; all of it, in
    order, after resume()."""
    connections = serve_one(server, ping_interval=None)
    with NodeClient(node_ws, url(server, "/ws")) as client:
        client.next("open")
        ws = connections.get(timeout=TIMEOUT)
        got: queue.Queue = queue.Queue()
        ws.on("message", lambda data, is_binary: got.put(data))
        client.command("send", "first")
        assert got.get(timeout=TIMEOUT) == "first"
        ws.pause()
        assert ws.is_paused
        for index in range(3):
            client.command("send", f"m{index}")
        client.command("ping", b"unread")
        with pytest.raises(queue.Empty):
            got.get(timeout=0.3)  # paused: nothing read (bounded wait for an absence)
        assert "pong" not in client.names()
        ws.resume()
        assert not ws.is_paused
        assert [got.get(timeout=TIMEOUT) for _ in range(3)] == ["m0", "m1", "m2"]
        assert client.next("pong")["data"] == b"unread"
