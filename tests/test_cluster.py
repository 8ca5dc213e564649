"""The cluster without Redis: the message format, channel names, the
in-process broker between servers, reuse_port, and what needs no redis."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from websockets.sync.client import connect

from ws_multipath import MultipathServer, Publisher
from ws_multipath.cluster import LocalBroker
from ws_multipath.cluster.message import (
    FormatError,
    decode,
    encode,
    compile_glob,
    subscription_of,
    target_channel,
)

from .conftest import url, wait_until


def test_format_round_trip() -> None:
    raw = encode("héllo", "node1", ["a", "b"], {"room": "lobby"})
    header, _, payload = raw.partition(b"\n")
    assert json.loads(header) == {"v": 1, "origin": "node1", "exclude": ["a", "b"], "params": {"room": "lobby"}}
    assert payload == "héllo".encode()
    message = decode(raw)
    assert (message.data, message.origin, message.exclude, message.params) == ("héllo", "node1", {"a", "b"}, {"room": "lobby"})
    binary = decode(encode(b"\x00\n\xff", None))
    assert binary.data == b"\x00\n\xff" and binary.origin is None and not binary.exclude
    # what a publisher in another language writes: the minimum
    assert decode(b'{"v":1}\nhi').data == "hi"
    assert decode(b'{"binary":true,"v":1}\n\x01').data == b"\x01"


@pytest.mark.parametrize("raw", [b"no header", b'{"v":2}\nx', b'{"v":true}\nx', b"[1]\nx", b'{"v":1}\n\xff', b'{"v":1,"exclude":"a"}\nx', b"{\nx"])
def test_format_rejects(raw: bytes) -> None:
    with pytest.raises(FormatError):
        decode(raw)


def test_channels_and_globs() -> None:
    p = "ws_multipath:"
    assert subscription_of(p, "/chat") == ("ws_multipath:/chat", None)
    channel, glob = subscription_of(p, "/rooms/<room>/<int:n>")
    assert channel == "ws_multipath:/rooms/<room>/<int:n>"
    matcher = compile_glob(glob)
    assert matcher.matches("ws_multipath:/rooms/lobby/3")
    assert not matcher.matches(channel)  # the pattern's own channel is not a room
    assert compile_glob(subscription_of("a*[", "/x<y>")[1]).matches("a*[/x1")
    assert target_channel(p, "/rooms/<room>", {"room": "lobby"}) == ("ws_multipath:/rooms/lobby", None)
    assert target_channel(p, "/rooms/<room>", {"room": "a b/c"}) == ("ws_multipath:/rooms/a%20b%2Fc", None)
    assert target_channel(p, "/u/<int:id>", {"id": 7}) == ("ws_multipath:/u/7", None)
    assert target_channel(p, "/r/<a>/<b>", {"a": "x"}) == ("ws_multipath:/r/<a>/<b>", {"a": "x"})
    assert target_channel(p, "/r/<a>", None) == ("ws_multipath:/r/<a>", None)


@pytest.mark.parametrize(
    "glob, matching, not_matching",
    [
        ("h?llo", ["hello", "hallo"], ["hllo", "heello"]),
        ("h*llo", ["hllo", "heeeello"], ["hell"]),
        ("h[ae]llo", ["hello", "hallo"], ["hillo"]),
        ("h[^e]llo", ["hallo", "hbllo"], ["hello"]),
        ("h[a-b]llo", ["hallo", "hbllo"], ["hcllo"]),
        ("h\\*llo", ["h*llo"], ["hello"]),
        ("h[llo", ["h[llo"], ["hallo"]),
        ("caf\u00e9/*", ["caf\u00e9/x"], ["cafe/x"]),
    ],
)
def test_globs_match_as_redis_does(glob, matching, not_matching) -> None:
    # the examples of Redis's PSUBSCRIBE / KEYS documentation, and escapes
    matcher = compile_glob(glob)
    assert all(matcher.matches(text) for text in matching)
    assert not any(matcher.matches(text) for text in not_matching)


def _chat(server: MultipathServer):
    chat = server.create_handler("/chat")
    rooms = server.create_handler("/rooms/<room>")
    special = server.create_handler("/rooms/special")
    chat.on("connection", lambda ws, request: ws.on("message", lambda data, is_binary: chat.broadcast(data, exclude=ws)))
    rooms.on("connection", lambda ws, request: ws.on("message", lambda data, is_binary: rooms.broadcast(data, path_params=request.path_params)))
    return chat, rooms, special


def _nothing(client, wait: float = 0.3) -> bool:
    try:
        client.recv(timeout=wait)
    except TimeoutError:
        return True
    return False


def test_local_broker_between_servers(make_server) -> None:
    broker = LocalBroker()
    servers = [make_server(broker=broker) for _ in range(2)]
    handlers = [_chat(s) for s in servers]
    with connect(url(servers[0], "/chat")) as a, connect(url(servers[0], "/chat")) as b, connect(url(servers[1], "/chat")) as c:
        assert wait_until(lambda: all(len(h[0].clients) >= 1 for h in handlers) and len(handlers[0][0].clients) == 2)
        a.send("text")
        a.send(b"\x00binary")
        for client in (b, c):
            assert client.recv(timeout=5) == "text"
            assert client.recv(timeout=5) == b"\x00binary"
        assert _nothing(a)  # excluded, in its own process
        server_a = next(ws for ws in handlers[0][0].clients if ws.remote_address[1] == a.local_address[1])
        handlers[1][0].broadcast("from 1", exclude=[server_a])  # a is in the other process: excluded by id
        assert b.recv(timeout=5) == "from 1" and c.recv(timeout=5) == "from 1"
        assert _nothing(a) and _nothing(b, 0.1) and _nothing(c, 0.1)  # each got it once


def test_local_broker_rooms(make_server) -> None:
    broker = LocalBroker()
    servers = [make_server(broker=broker) for _ in range(2)]
    handlers = [_chat(s) for s in servers]
    with connect(url(servers[0], "/rooms/lobby")) as lobby0, connect(url(servers[1], "/rooms/lobby")) as lobby1, connect(url(servers[1], "/rooms/kitchen")) as kitchen1, connect(url(servers[1], "/rooms/special")) as special1:
        assert wait_until(lambda: len(handlers[1][1].clients) == 2 and len(handlers[1][2].clients) == 1 and len(handlers[0][1].clients) == 1)
        lobby0.send("hi lobby")
        assert lobby0.recv(timeout=5) == "hi lobby" and lobby1.recv(timeout=5) == "hi lobby"
        assert _nothing(kitchen1) and _nothing(special1, 0.1)
        handlers[0][1].broadcast("everyone in a room")  # the whole pattern, across servers
        for client in (lobby0, lobby1, kitchen1):
            assert client.recv(timeout=5) == "everyone in a room"
        assert _nothing(special1)  # an exact path is not a room of the pattern
        handlers[0][2].broadcast("special")
        assert special1.recv(timeout=5) == "special"
        assert _nothing(special1) and _nothing(lobby1, 0.1)  # once, through the exact subscription only
        Publisher(broker).broadcast("/rooms/<room>", b"kitchen", path_params={"room": "kitchen"})
        assert kitchen1.recv(timeout=5) == b"kitchen" and _nothing(lobby1)


def test_ws_id_and_no_broker(server) -> None:
    handler = server.create_handler("/chat")
    assert server.node_id is None and server.wait_cluster_ready(0)
    with connect(url(server, "/chat")), connect(url(server, "/chat")):
        assert wait_until(lambda: len(handler.clients) == 2)
        ids = [ws.id for ws in handler.clients]
        assert len(set(ids)) == 2 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_reuse_port(make_server) -> None:
    first = make_server(reuse_port=True)
    second = make_server(port=first.port, reuse_port=True)
    assert second.port == first.port
    with pytest.raises(OSError):
        make_server(port=first.port)


def test_reuse_port_elsewhere(monkeypatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    with pytest.raises(ValueError, match="SO_REUSEPORT"):
        MultipathServer(port=0, host="127.0.0.1", reuse_port=True)


def test_broker_argument_errors() -> None:
    with pytest.raises(ValueError, match="unknown broker URL"):
        MultipathServer(port=0, broker="amqp://x")
    with pytest.raises(TypeError):
        MultipathServer(port=0, broker=42)


def test_no_redis_needed_to_import() -> None:
    code = "import sys; sys.modules['redis'] = None; import ws_multipath, ws_multipath.cluster\n" "try:\n ws_multipath.MultipathServer(port=0, broker='redis://127.0.0.1:1')\nexcept ImportError as e: print(e)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert "pip install redis" in out.stdout and "[redis] extra" in out.stdout, out.stderr


def test_serve_bad_app() -> None:
    out = subprocess.run([sys.executable, "-m", "ws_multipath", "serve", "no_such_module:make", "--port", "0"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "cannot import 'no_such_module'" in out.stderr


def test_a_header_nested_past_the_parsers_depth_is_a_format_error():
    with pytest.raises(FormatError):
        decode(b"[" * 100_000 + b"\nx")
