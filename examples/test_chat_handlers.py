# examples/test_chat_handlers.py
"""Testing your handlers with ws_multipath.testing: pytest examples/test_chat_handlers.py
(the multipath_server fixture comes with the package's pytest plugin)."""
import pytest

from ws_multipath import ConnectionClosed
from ws_multipath.testing import HandshakeRefused, connect


def verify(request):  # a verify_client, as in examples/auth_query_token.py
    if request.query.get("token") != ["s3cr3t"]:
        return False, 401, "missing or wrong token"
    return True


def add_echo(server):
    echo = server.create_handler("/echo", max_payload=1024)
    echo.on("connection", lambda ws, request: ws.on("message", lambda data, is_binary: ws.send(data)))


def test_echo(multipath_server):
    add_echo(multipath_server)
    with connect(multipath_server, "/echo") as ws:
        ws.send("hi")
        assert ws.receive() == "hi"
        ws.send_json({"n": 1})
        assert ws.receive_json() == {"n": 1}


def test_too_big_is_closed_with_1009(multipath_server):
    add_echo(multipath_server)
    with connect(multipath_server, "/echo") as ws:
        ws.send("x" * 2000)
        with pytest.raises(ConnectionClosed) as closed:
            ws.receive()
    assert closed.value.code == 1009


def test_a_wrong_token_is_refused(multipath_server):
    multipath_server.create_handler("/feed", verify_client=verify)
    with pytest.raises(HandshakeRefused) as refused, connect(multipath_server, "/feed?token=nope"):
        pass
    assert refused.value.status == 401 and refused.value.body == b"missing or wrong token\n"
