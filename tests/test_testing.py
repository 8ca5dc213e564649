"""ws_multipath.testing: the test client and the multipath_server fixture."""

from __future__ import annotations

import threading

import pytest

from ws_multipath import ConnectionClosed, HandshakeError
from ws_multipath.testing import HandshakeRefused, connect


def echo(ws, request):
    ws.on("message", lambda data, is_binary: ws.send(data))


def test_send_and_receive_text_binary_and_json(multipath_server):
    multipath_server.create_handler("/echo").on("connection", echo)
    with connect(multipath_server, "/echo") as ws:
        ws.send("hi")
        assert ws.receive() == "hi"
        ws.send(b"\x00\x01")
        assert ws.receive() == b"\x00\x01"
        ws.send_json({"n": 1})
        assert ws.receive_json() == {"n": 1}
        with pytest.raises(TimeoutError):
            ws.receive(timeout=0.05)


def test_subprotocol_and_response_headers(multipath_server):
    handler = multipath_server.create_handler("/p", handle_protocols=lambda offered, request: "b" if "b" in offered else None)
    handler.on("headers", lambda headers, request: headers.append(("X-Served-By", "tests")))
    with connect(multipath_server, "/p", subprotocols=["a", "b"], headers={"X-Token": "t"}) as ws:
        assert ws.protocol == "b"
        assert ws.response_headers["X-Served-By"] == "tests"


def test_a_refusal_raises_handshake_refused_with_status_headers_and_body(multipath_server):
    def verify(request):
        if request.headers.get("Authorization") != "Bearer good":
            raise HandshakeError(401, "token required", [("WWW-Authenticate", 'Bearer realm="chat"')])
        return True

    multipath_server.create_handler("/private", verify_client=verify).on("connection", echo)
    with pytest.raises(HandshakeRefused) as refused:
        with connect(multipath_server, "/private"):
            pass
    assert refused.value.status == 401
    assert refused.value.headers["WWW-Authenticate"] == 'Bearer realm="chat"'
    assert b"token required" in refused.value.body
    with connect(multipath_server, "/private", headers={"Authorization": "Bearer good"}) as ws:
        ws.send("in")
        assert ws.receive() == "in"
    with pytest.raises(HandshakeRefused) as missing:
        with connect(multipath_server, "/nowhere"):
            pass
    assert missing.value.status == 400


def test_a_server_close_raises_connection_closed_with_its_code_and_reason(multipath_server):
    handler = multipath_server.create_handler("/bye")
    handler.on("connection", lambda ws, request: ws.on("message", lambda data, is_binary: ws.close(4001, "done")))
    with connect(multipath_server, "/bye") as ws:
        ws.send("go")
        with pytest.raises(ConnectionClosed) as closed:
            ws.receive()
        assert (closed.value.code, closed.value.reason) == (4001, "done")
        assert (ws.close_code, ws.close_reason) == (4001, "done")


def test_a_client_close_reaches_the_server(multipath_server):
    handler = multipath_server.create_handler("/c")
    closes = []
    closed = threading.Event()

    @handler.on("connection")
    def on_connection(ws, request):
        ws.on("close", lambda code, reason: (closes.append((code, reason)), closed.set()))

    with connect(multipath_server, "/c") as ws:
        ws.close(4002, "leaving")
        assert ws.close_code == 4002
    assert closed.wait(10)
    assert closes == [(4002, "leaving")]
