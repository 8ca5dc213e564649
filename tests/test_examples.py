"""The examples the documentation shows (whole, inline: tests/test_docs_code.py
checks that each page's copy is the file), run against real sockets: each
does what its page says it does, and runs as a script as its page says.

examples/flask_chat.py and examples/flask_sock_app.py are run by
tests/test_flask.py."""

from __future__ import annotations

import base64
import configparser
import contextlib
import http.client
import importlib.util
import json
import os
import pathlib
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import threading

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from .conftest import TIMEOUT, upgrade_head, wait_until
from .faultkit import make_certificate
from .tls_client import tls_connect
from .test_docs_code import catches_sigterm

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
DOCS = ROOT / "docs"


def load(name):
    """Import examples/<name>.py as a module of its own (examples/ on sys.path
    meanwhile, as when it is run from there)."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(EXAMPLES))
    return module


@pytest.fixture
def serve():
    """``serve(server)``: remember to close it; returns its ws:// base URL."""
    servers = []

    def start(server):
        servers.append(server)
        return f"ws://127.0.0.1:{server.port}"

    yield start
    for server in servers:
        server.close()


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def recv(ws):
    return ws.recv(TIMEOUT)


def refused_status(url, **kwargs):
    with pytest.raises(InvalidStatus) as caught, connect(url, open_timeout=TIMEOUT, **kwargs):
        pass
    return caught.value.response.status_code


# -- the tutorial ------------------------------------------------------------------


def test_tutorial_chat_as_a_script():
    """``python examples/chat.py --port N``: the page, /chat and /presence."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "chat.py"), "--port", str(port)],
        env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert f"open http://127.0.0.1:{port}/" in process.stdout.readline()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        conn.request("GET", "/")
        response = conn.getresponse()
        assert response.status == 200 and b"new WebSocket(`ws://${location.host}/chat`)" in response.read()
        base = f"ws://127.0.0.1:{port}"
        with connect(base + "/presence", open_timeout=TIMEOUT) as presence:
            assert json.loads(recv(presence)) == {"online": 0}
            with connect(base + "/chat", open_timeout=TIMEOUT) as alice:
                assert json.loads(recv(presence)) == {"online": 1}
                with connect(base + "/chat", open_timeout=TIMEOUT) as bob:
                    assert json.loads(recv(presence)) == {"online": 2}
                    alice.send("hello bob")
                    assert recv(bob) == "hello bob" and recv(alice) == "hello bob"
                    assert load("chat_client").say_hello(base + "/chat") == "hello from Python"
                    assert recv(bob) == "hello from Python" and recv(alice) == "hello from Python"
                    assert json.loads(recv(presence)) == {"online": 3}
                    assert json.loads(recv(presence)) == {"online": 2}
                assert json.loads(recv(presence)) == {"online": 1}
                alice.send("x" * 5000)  # over max_payload=4096
                with pytest.raises(ConnectionClosed) as closed:
                    recv(alice)
                assert closed.value.rcvd.code == 1009
    finally:
        process.terminate()
        process.wait(TIMEOUT)
    assert process.returncode == 0  # SIGTERM closes it gracefully


# -- how-to guides ---------------------------------------------------------------


def test_routes(serve):
    base = serve(load("routes").build(0, "127.0.0.1"))
    with connect(base + "/rooms/kitchen", open_timeout=TIMEOUT) as a, connect(base + "/rooms/kitchen", open_timeout=TIMEOUT) as b, connect(
        base + "/rooms/garden", open_timeout=TIMEOUT
    ) as other:
        a.send("tea?")
        assert recv(b) == "tea?" and recv(a) == "tea?"
        other.send("roses")
        assert recv(other) == "roses"
        with pytest.raises(TimeoutError):
            b.recv(0.3)  # not the kitchen's
    with connect(base + "/rooms/lobby", open_timeout=TIMEOUT) as lobby:
        assert recv(lobby) == "welcome to the lobby"
    with connect(base + "/users/7/files/a/b%20c.txt", open_timeout=TIMEOUT) as ws:
        assert json.loads(recv(ws)) == {"user_id": 7, "name": "a/b c.txt", "pattern": "/users/<int:user_id>/files/<path:name>", "path": "/users/7/files/a/b%20c.txt"}
    assert refused_status(base + "/users/seven/files/x") == 400  # <int:> does not match: no handler


def test_auth_query_token(serve):
    base = serve(load("auth_query_token").build(0, "127.0.0.1"))
    with connect(base + "/feed?token=s3cr3t-bob", open_timeout=TIMEOUT) as ws:
        assert recv(ws) == "hello bob"
    assert refused_status(base + "/feed?token=wrong") == 401
    assert refused_status(base + "/feed") == 401


def test_auth_cookie_set_by_flask_on_the_same_port(serve):
    pytest.importorskip("flask")
    example = load("auth_cookie")
    server = example.build(0, "127.0.0.1", origins=["http://app.example"])
    base = serve(server)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    conn.request("POST", "/login", body="user=carol", headers={"Content-Type": "application/x-www-form-urlencoded"})
    response = conn.getresponse()
    assert response.read() == b"logged in as carol"
    cookie = response.getheader("Set-Cookie")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    session = cookie.split(";")[0]
    with connect(base + "/ws/inbox", additional_headers={"Cookie": session}, origin="http://app.example", open_timeout=TIMEOUT) as ws:
        assert recv(ws) == "hello carol"
    assert refused_status(base + "/ws/inbox", origin="http://app.example") == 401  # no cookie
    # another site's page, with the user's cookie: cross-site WebSocket hijacking, refused
    assert refused_status(base + "/ws/inbox", additional_headers={"Cookie": session}, origin="http://evil.example") == 403


def test_auth_basic(serve):
    base = serve(load("auth_basic").build(0, "127.0.0.1"))
    good = base64.b64encode(b"admin:correct horse battery staple").decode()
    with connect(base + "/admin", additional_headers={"Authorization": f"Basic {good}"}, open_timeout=TIMEOUT) as ws:
        assert recv(ws) == "hello admin"
    with pytest.raises(InvalidStatus) as caught:
        connect(base + "/admin", open_timeout=TIMEOUT)
    assert caught.value.response.status_code == 401
    assert caught.value.response.headers["WWW-Authenticate"].startswith('Basic realm="admin"')
    bad = base64.b64encode(b"admin:guess").decode()
    assert refused_status(base + "/admin", additional_headers={"Authorization": f"Basic {bad}"}) == 401
    assert refused_status(base + "/admin", additional_headers={"Authorization": "Basic !!!"}) == 400


def test_auth_first_message(serve):
    # login_timeout runs from the connection's listener to the first message:
    # 0.5 s left a loaded machine (handshakes seen taking seconds) no margin
    base = serve(load("auth_first_message").build(0, "127.0.0.1", login_timeout=2.0))
    with connect(base + "/room", open_timeout=TIMEOUT) as ws:
        ws.send(json.dumps({"token": "s3cr3t-alice"}))
        assert recv(ws) == "hello alice"
        ws.send("hi")
        assert recv(ws) == "alice, you said: hi"
    for first in (json.dumps({"token": "nope"}), "not json", None):
        with connect(base + "/room", open_timeout=TIMEOUT) as ws:
            if first is not None:  # None: say nothing, wait for the login timeout
                ws.send(first)
            with pytest.raises(ConnectionClosed) as closed:
                recv(ws)
        assert closed.value.rcvd.code == 1008


def test_tls_server(serve, tmp_path):
    files = make_certificate(str(tmp_path))
    if files is None:
        pytest.skip("neither cryptography nor openssl to make a certificate")
    base = serve(load("tls_server").build(0, *files, host="127.0.0.1")).replace("ws://", "wss://")
    client = ssl.create_default_context(cafile=files[0])
    client.check_hostname = False
    with tls_connect(base + "/echo", client, open_timeout=TIMEOUT) as ws:
        ws.send("over TLS")
        assert recv(ws) == "over TLS"


def test_behind_proxy_trusts_only_the_proxy(serve):
    server = load("behind_proxy").build(0)
    serve(server)
    # what nginx sends (examples/nginx.conf): X-Forwarded-For and -Proto, Origin kept
    forwarded = "X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\nOrigin: https://example.com\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(upgrade_head("/live", forwarded))
        data = b""
        while b"secure=True" not in data:
            chunk = sock.recv(4096)
            assert chunk, data
            data += chunk
    assert data.startswith(b"HTTP/1.1 101 ") and b"client 203.0.113.7 via 127.0.0.1, secure=True" in data
    # the same headers from a peer that is not a trusted proxy are ignored
    untrusted = load("behind_proxy").build(0, proxies=["10.0.0.1"])
    serve(untrusted)
    with connect(f"ws://127.0.0.1:{untrusted.port}/live", additional_headers={"X-Forwarded-For": "203.0.113.7"}, origin="https://example.com", open_timeout=TIMEOUT) as ws:
        assert recv(ws) == "client 127.0.0.1 via 127.0.0.1, secure=False"


def test_nginx_conf_outlasts_the_heartbeat():
    """The trap of docs/howto/nginx.rst: proxy_read_timeout must exceed ping_interval."""
    conf = (EXAMPLES / "nginx.conf").read_text()
    settings = dict(re.findall(r"^\s*(proxy_\w+)\s+([^;]+);", conf, re.MULTILINE))
    assert settings["proxy_http_version"] == "1.1"
    assert settings["proxy_read_timeout"].endswith("s")
    assert int(settings["proxy_read_timeout"][:-1]) > load("behind_proxy").PING_INTERVAL
    headers = re.findall(r"proxy_set_header\s+(\S+)\s+(\S+);", conf)
    assert ("Upgrade", "$http_upgrade") in headers and ("Connection", "$connection_upgrade") in headers
    assert "server 127.0.0.1:8000;" in conf


def test_ticker_broadcasts_from_another_thread(serve):
    server = load("ticker").build(0, "127.0.0.1", period=0.05)
    base = serve(server)
    with connect(base + "/clock", open_timeout=TIMEOUT) as ws:
        assert recv(ws) == "welcome"
        assert re.fullmatch(r"\d\d:\d\d:\d\d", recv(ws))
    server.close()
    assert wait_until(lambda: not any(t.name == "ticker" and t.is_alive() for t in threading.enumerate()))


def test_blocking_echo(serve):
    base = serve(load("blocking_echo").build(0, "127.0.0.1"))
    with connect(base + "/echo", open_timeout=TIMEOUT) as ws:
        for message in ("one", b"\x00two"):
            ws.send(message)
            assert recv(ws) == message


def test_cluster_chat_under_serve_and_the_systemd_unit_runs_it():
    """The unit's ExecStart, with this Python and examples/ as WorkingDirectory
    (and without --broker when no redis-server is there)."""
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.read_string((EXAMPLES / "ws_multipath.service").read_text())
    argv = shlex.split(unit["Service"]["ExecStart"])
    assert argv[1:4] == ["-m", "ws_multipath", "serve"] and argv[4] == "cluster_chat:create_server"
    port = free_port()
    argv = [sys.executable, *argv[1:]]
    argv[argv.index("--port") + 1] = str(port)
    argv[argv.index("--workers") + 1] = "2"
    redis = None
    if shutil.which("redis-server") and importlib.util.find_spec("redis"):
        redis_port = free_port()
        redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
        argv[argv.index("--broker") + 1] = f"redis://127.0.0.1:{redis_port}/0"
    else:
        del argv[argv.index("--broker") : argv.index("--broker") + 2]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    process = subprocess.Popen(argv, cwd=EXAMPLES, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Each worker says "listening" once its broker confirmed its
        # subscriptions (wait_cluster_ready): only then does a message
        # published by the other worker reach its clients.
        lines = _lines_until(process.stdout, lambda seen: sum("listening on" in line for line in seen) == 2, timeout=30)
        assert sum("listening on" in line for line in lines) == 2, (lines, process.poll() is None or process.stderr.read())
        # with Redis: a message reaches clients on either worker; without: those of one worker
        with contextlib.ExitStack() as stack:
            clients = [stack.enter_context(connect(f"ws://127.0.0.1:{port}/chat", open_timeout=TIMEOUT)) for _ in range(6)]
            clients[0].send("hello")
            got = 0
            for ws in clients[1:]:
                try:
                    got += ws.recv(TIMEOUT if redis else 0.5) == "hello"
                except TimeoutError:
                    pass
            assert got == 5 if redis else got >= 0
    finally:
        process.terminate()
        process.wait(TIMEOUT)
        if redis is not None:
            redis.terminate()
            redis.wait(TIMEOUT)
    assert process.returncode == 0


def _lines_until(stream, enough, timeout: float) -> list:
    """The lines read from ``stream`` until ``enough(lines)``, its end, or
    ``timeout`` seconds (read on a thread: readline() has no timeout)."""
    lines: list = []
    done = threading.Event()

    def read() -> None:
        for line in stream:
            lines.append(line)
            if enough(list(lines)):
                break
        done.set()

    threading.Thread(target=read, daemon=True).start()
    done.wait(timeout)
    return list(lines)


def test_testing_example_passes_under_pytest():
    """examples/test_chat_handlers.py, as the testing guide runs it."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLES / "test_chat_handlers.py")],
        check=False, cwd=EXAMPLES, env=dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{EXAMPLES}"), capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout


# -- every example runs as a script, as its page says ------------------------------

SCRIPTS = {  # examples/<name>.py -> (extra arguments, a path it serves)
    "auth_basic": ([], "/admin"),
    "auth_cookie": ([], "/ws/inbox"),
    "auth_first_message": ([], "/room"),
    "auth_query_token": ([], "/feed?token=s3cr3t-alice"),
    "behind_proxy": ([], "/live"),
    "blocking_echo": ([], "/echo"),
    "chat": ([], "/"),
    "flask_chat": ([], "/ws/chat"),
    "flask_sock_app": ([], "/fast-echo"),
    "routes": ([], "/rooms/<room>"),
    "ticker": ([], "/clock"),
}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_example_as_a_script_listens_on_127_0_0_1_and_says_where(name):
    """``python examples/<name>.py --port N``: 127.0.0.1 by default (as Flask's
    development server), the first line says where, SIGTERM ends it cleanly."""
    if name.startswith("flask") or name == "auth_cookie":
        pytest.importorskip("flask")
    if name == "flask_sock_app":
        pytest.importorskip("flask_sock")
    args, path = SCRIPTS[name]
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLES / f"{name}.py"), "--port", str(port), *args],
        env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("listening") and f"127.0.0.1:{port}" in line and path.split("?")[0] in line, (line, process.stderr.read() if process.poll() is not None else "")
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT):
            pass
        assert wait_until(lambda: catches_sigterm(process.pid))  # serve_forever() has taken SIGTERM over
        with pytest.raises(OSError):  # not on another address of this machine: bound to 127.0.0.1 only
            with socket.create_connection(("127.0.0.2", port), timeout=TIMEOUT):
                pass
    finally:
        process.terminate()
        process.wait(TIMEOUT)
    assert process.returncode == 0


def test_auth_cookie_allows_its_own_origin_on_any_port(serve):
    pytest.importorskip("flask")
    server = load("auth_cookie").build(0, "127.0.0.1")  # default origins: this server's own port
    base = serve(server)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    conn.request("POST", "/login", body="user=dan", headers={"Content-Type": "application/x-www-form-urlencoded"})
    response = conn.getresponse()
    session = response.getheader("Set-Cookie").split(";")[0]
    response.read()
    with connect(base + "/ws/inbox", additional_headers={"Cookie": session}, origin=f"http://127.0.0.1:{server.port}", open_timeout=TIMEOUT) as ws:
        assert recv(ws) == "hello dan"
    if server.port != 8000:  # the port the recipe once hard-coded is not allowed for its own sake
        assert refused_status(base + "/ws/inbox", additional_headers={"Cookie": session}, origin="http://127.0.0.1:8000") == 403


def test_a_second_example_on_a_port_in_use_names_the_address():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, str(EXAMPLES / "blocking_echo.py"), "--port", str(port)],
            env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=60,
        )
    assert result.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in result.stderr.splitlines()[-1]


# -- every file the pages show exists and is tested ---------------------------------


def test_every_example_a_page_shows_is_run_here():
    shown = set()
    for page in [ROOT / "README.rst", *DOCS.rglob("*.rst")]:
        shown.update(re.findall(r"^\s+#\s*examples/(\S+)\s*$", page.read_text(), re.MULTILINE))
    assert len(shown) >= 15, shown
    tested = set(re.findall(r'load\("(\w+)"\)', pathlib.Path(__file__).read_text()))
    tested = {f"{name}.py" for name in tested} | {f"{name}.py" for name in SCRIPTS}
    tested |= {"nginx.conf", "ws_multipath.service", "cluster_chat.py", "test_chat_handlers.py"}
    tested |= {"flask_chat.py", "flask_sock_app.py"}  # tests/test_flask.py
    tested |= {"presence_roster.py"}  # tests/test_presence_redis.py, under serve --workers 2
    assert sorted(shown - tested) == []
    assert sorted({p.name for p in EXAMPLES.iterdir()} - shown) == [], "an example no page shows"
