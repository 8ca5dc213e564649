"""Real Flask and Flask-Sock apps served by ws_multipath (``wsgi_websockets``)."""

from __future__ import annotations

import http.client
import socket
import time
from wsgiref.validate import validator

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from .conftest import TIMEOUT, echo, upgrade_head, url

flask = pytest.importorskip("flask")
flask_sock = pytest.importorskip("flask_sock")


def make_app():
    app = flask.Flask(__name__)
    sock = flask_sock.Sock(app)

    @app.route("/")
    def index():
        return "index page"

    @app.post("/upload")
    def upload():
        return flask.jsonify(size=len(flask.request.get_data()))

    @sock.route("/sock")
    def sock_echo(ws):
        while True:
            ws.send(ws.receive())

    return app


def test_flask_routes_and_flask_sock_and_a_handler_on_one_port(make_server, library_log):
    server = make_server(wsgi_app=make_app(), wsgi_websockets=True)
    server.create_handler("/echo").on("connection", echo)
    with connect(url(server, "/sock"), open_timeout=TIMEOUT) as ws:
        for text in ("one", "two"):
            ws.send(text)
            assert ws.recv(TIMEOUT) == text
    with connect(url(server, "/echo"), open_timeout=TIMEOUT) as ws:
        ws.send("handler")
        assert ws.recv(TIMEOUT) == "handler"
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    conn.request("GET", "/")
    assert conn.getresponse().read() == b"index page"
    conn.request("POST", "/upload", body=b"x" * 5000)
    assert conn.getresponse().read() == b'{"size":5000}\n'
    assert not library_log.errors()


def test_flask_app_under_the_validator(make_server):
    server = make_server(wsgi_app=validator(make_app().wsgi_app))
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    # (GET only: Werkzeug reads a terminated wsgi.input with read(), no size,
    # which the validator refuses)
    for _ in range(3):
        conn.request("GET", "/")
        assert conn.getresponse().read() == b"index page"


def test_frames_sent_with_the_upgrade_request_are_not_lost(make_server):
    server = make_server(wsgi_app=make_app(), wsgi_websockets=True)
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(upgrade_head("/sock") + b"\x81\x82\x00\x00\x00\x00hi")
        data = b""
        while b"\x81\x02hi" not in data:
            chunk = sock.recv(4096)
            assert chunk
            data += chunk
    assert data.startswith(b"HTTP/1.1 101 ")


def test_unknown_path_upgrade_gets_the_apps_404_and_a_close(make_server):
    server = make_server(wsgi_app=make_app(), wsgi_websockets=True)
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(upgrade_head("/nowhere"))
        data = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"HTTP/1.1 404 ") and b"Connection: close" in data


def test_close_sends_1001_to_flask_sock_clients(make_server):
    server = make_server(wsgi_app=make_app(), wsgi_websockets=True)
    with connect(url(server, "/sock"), open_timeout=TIMEOUT) as ws:
        ws.send("x")
        assert ws.recv(TIMEOUT) == "x"
        start = time.monotonic()
        server.close()
        assert time.monotonic() - start < 5  # not the graceful timeout: the app returned
        with pytest.raises(ConnectionClosed) as caught:
            ws.recv(TIMEOUT)
    assert caught.value.rcvd is not None and caught.value.rcvd.code == 1001
