"""Real Flask and Flask-Sock apps served by ws_multipath (``wsgi_websockets``)."""

from __future__ import annotations

import http.client
import importlib
import json
import os
import pathlib
import socket
import subprocess
import sys
import threading
import time
from wsgiref.validate import validator

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from .conftest import TIMEOUT, echo, read_until_eof, upgrade_head, url

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


def test_flask_gets_413_and_408_from_the_body_limits(make_server):
    server = make_server(wsgi_app=make_app(), http_max_body_size=1000, http_body_timeout=0.3)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    conn.request("POST", "/upload", body=iter([b"x" * 600, b"y" * 600]), encode_chunked=True)
    response = conn.getresponse()
    assert response.status == 413 and response.getheader("Connection") == "close"
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        data = read_until_eof(sock)
    assert data.startswith(b"HTTP/1.1 408 ")


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


# -- the examples ---------------------------------------------------------------

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def flask_chat():
    """examples/flask_chat.py run as a script, as its docstring says. Ready
    when it prints where it listens: its handlers are made after the socket
    listens, and a connection to /ws/chat in between gets 400."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(EXAMPLES.parent))
    process = subprocess.Popen([sys.executable, str(EXAMPLES / "flask_chat.py"), "--port", str(port)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        said = threading.Event()
        lines: list = []

        def read_first_line() -> None:
            lines.append(process.stdout.readline())
            said.set()

        threading.Thread(target=read_first_line, daemon=True).start()
        assert said.wait(TIMEOUT * 3) and lines[0].startswith("listening on"), (lines, process.poll() is None or process.stderr.read())
        yield port
    finally:
        process.terminate()
        process.wait(TIMEOUT)
        process.stdout.close()
        process.stderr.close()


def test_flask_chat_example(flask_chat):
    base = f"ws://127.0.0.1:{flask_chat}"
    conn = http.client.HTTPConnection("127.0.0.1", flask_chat, timeout=TIMEOUT)
    conn.request("GET", "/")
    assert b"/ws/chat" in conn.getresponse().read()
    with connect(base + "/ws/chat", open_timeout=TIMEOUT) as alice, connect(base + "/ws/chat", open_timeout=TIMEOUT) as bob, connect(
        base + "/ws/notify", open_timeout=TIMEOUT
    ) as watcher:
        conn.request("GET", "/api/clients")  # the same keep-alive connection
        response = conn.getresponse()
        assert json.loads(response.read()) == {"/ws/chat": 2, "/ws/notify": 1}
        alice.send("hi all")
        assert bob.recv(TIMEOUT) == "hi all" and alice.recv(TIMEOUT) == "hi all"
        conn.request("POST", "/notify", body=b"deploy done")
        assert json.loads(conn.getresponse().read()) == {"sent": 1}
        assert watcher.recv(TIMEOUT) == "deploy done"


def test_flask_sock_app_example(make_server):
    sys.path.insert(0, str(EXAMPLES))
    try:
        example = importlib.import_module("flask_sock_app")
    finally:
        sys.path.remove(str(EXAMPLES))
    server = example.build(0, "127.0.0.1")
    try:
        for path in ("/echo", "/fast-echo"):
            with connect(url(server, path), open_timeout=TIMEOUT) as ws:
                ws.send(path)
                assert ws.recv(TIMEOUT) == path
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
        conn.request("GET", "/")
        assert b"Flask-Sock echo" in conn.getresponse().read()
    finally:
        server.close()


def test_upgrade_with_a_body_to_the_app_gets_400(make_server):
    server = make_server(wsgi_app=make_app(), wsgi_websockets=True)
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(upgrade_head("/sock", "Content-Length: 3\r\n") + b"abc")
        assert read_until_eof(sock).startswith(b"HTTP/1.1 400 ")
