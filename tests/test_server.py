"""MultipathServer: arguments, listening, routing, events, closing."""

from __future__ import annotations

import concurrent.futures
import shutil
import socket
import subprocess
import threading

import pytest
import simple_websocket
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from ws_multipath import MultipathServer, WebSocketHandler

from .conftest import LEGACY, TIMEOUT, echo, raw_request, upgrade_head, url, wait_until

# -- arguments ---------------------------------------------------------------


def test_port_is_required():
    with pytest.raises(TypeError, match="port"):
        MultipathServer()  # type: ignore[call-arg]


@pytest.mark.parametrize("port", [-1, 65536, "80", 1.5, None, True])
def test_invalid_port_is_refused_with_its_name(port):
    with pytest.raises(ValueError, match="port"):
        MultipathServer(port=port)


def test_unknown_keyword_raises_type_error():
    with pytest.raises(TypeError, match="path"):
        MultipathServer(port=0, path="/x")  # type: ignore[call-arg]


@pytest.mark.parametrize(
    "kwargs, name",
    [({"open_timeout": 0}, "open_timeout"), ({"max_connections": 0}, "max_connections"), ({"backlog": 0}, "backlog"), ({"ssl_context": "x"}, "ssl_context")],
)
def test_invalid_server_options_name_the_argument(kwargs, name):
    with pytest.raises((TypeError, ValueError), match=name):
        MultipathServer(port=0, **kwargs)


def test_bind_error_is_raised_at_once(server):
    with pytest.raises(OSError):
        MultipathServer(port=server.port, host="127.0.0.1")


# -- listening ---------------------------------------------------------------


def test_port_zero_picks_a_free_port_and_address_tells_it(server):
    assert server.port > 0
    assert server.address == ("127.0.0.1", server.port)
    assert server.listening


def test_auto_listen_true_has_no_listen_method(server):
    assert not hasattr(server, "listen")


def test_auto_listen_false_listens_on_listen(make_server):
    server = make_server(auto_listen=False)
    assert not server.listening
    server.create_handler(path="/echo").on("connection", echo)
    server.listen()
    assert server.listening and server.port > 0
    with connect(url(server, "/echo"), open_timeout=TIMEOUT) as client:
        client.send("hi")
        assert client.recv(timeout=TIMEOUT) == "hi"
    with pytest.raises(RuntimeError, match="already listening"):
        server.listen()


def test_default_host_serves_ipv4_and_ipv6(make_server):
    server = make_server(host=None)
    server.create_handler(path="/echo").on("connection", echo)
    for host in ("127.0.0.1", "[::1]") if socket.has_dualstack_ipv6() else ("127.0.0.1",):
        with connect(f"ws://{host}:{server.port}/echo", open_timeout=TIMEOUT) as client:
            client.send(host)
            assert client.recv(timeout=TIMEOUT) == host


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6")
def test_ipv6_loopback_host(make_server):
    server = make_server(host="::1")
    server.create_handler(path="/echo").on("connection", echo)
    assert server.address[0] == "::1"
    with connect(f"ws://[::1]:{server.port}/echo", open_timeout=TIMEOUT) as client:
        client.send("v6")
        assert client.recv(timeout=TIMEOUT) == "v6"


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss(8)")
def test_listen_backlog_is_511_not_the_stdlib_5(server):
    out = subprocess.run(["ss", "-ltnH", f"sport = :{server.port}"], capture_output=True, text=True, check=True).stdout
    assert out.split()[2] == "511", out


def test_a_burst_of_connections_is_served(server):
    server.create_handler(path="/echo").on("connection", echo)

    def one(i: int) -> str:
        with connect(url(server, "/echo"), open_timeout=TIMEOUT) as client:
            client.send(str(i))
            return client.recv(timeout=TIMEOUT)

    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        assert sorted(pool.map(one, range(200)), key=int) == [str(i) for i in range(200)]


# -- context manager and closing -----------------------------------------------


def test_context_manager_closes_on_exit_and_on_exception():
    with MultipathServer(port=0, host="127.0.0.1") as server:
        assert server.listening
    assert not server.listening
    with pytest.raises(KeyError):
        with MultipathServer(port=0, host="127.0.0.1") as server:
            raise KeyError("boom")
    assert not server.listening
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)


def test_close_closes_clients_with_1001_emits_close_and_calls_back(server):
    server.create_handler(path="/a").on("connection", echo)
    server.create_handler(path="/b").on("connection", echo)
    clients = [connect(url(server, path), open_timeout=TIMEOUT, **LEGACY) for path in ("/a", "/b", "/a")]
    events: list[str] = []
    server.on("close", lambda: events.append("close"))
    server.close(lambda: events.append("callback"))
    assert events == ["close", "callback"]
    assert not server.listening
    for client in clients:
        with pytest.raises(Exception):
            client.recv(timeout=TIMEOUT)
        assert client.close_code == 1001
        client.close()
    server.close()  # idempotent
    called = threading.Event()
    server.close(called.set)  # a late callback is still called
    assert called.is_set() and events == ["close", "callback"]


def test_close_from_inside_a_listener_does_not_deadlock(server):
    handler = server.create_handler(path="/x")
    closed = threading.Event()
    server.on("close", closed.set)
    handler.on("connection", lambda ws, request: ws.on("message", lambda data, is_binary: server.close()))
    with connect(url(server, "/x"), open_timeout=TIMEOUT) as client:
        client.send("close please")
        assert closed.wait(TIMEOUT)
    assert not server.listening


def test_serve_forever_returns_when_closed_from_another_thread(server):
    threading.Timer(0.2, server.close).start()
    done = threading.Event()
    worker = threading.Thread(target=lambda: (server.serve_forever(), done.set()))
    worker.start()
    assert done.wait(TIMEOUT)
    worker.join(TIMEOUT)


def test_threads_are_released_after_close():
    baseline = threading.active_count()
    server = MultipathServer(port=0, host="127.0.0.1")
    server.create_handler(path="/echo").on("connection", echo)
    clients = [connect(url(server, "/echo"), open_timeout=TIMEOUT, **LEGACY) for _ in range(20)]
    for client in clients:
        client.send("x")
        assert client.recv(timeout=TIMEOUT) == "x"
    assert threading.active_count() >= baseline + 20
    server.close()
    for client in clients:
        client.close()
    assert wait_until(lambda: threading.active_count() <= baseline), threading.enumerate()


# -- routing -------------------------------------------------------------------


def test_each_path_reaches_its_own_handler_and_server_connection_event(server):
    seen: list[tuple] = []
    server.on("connection", lambda ws, request, pathname: seen.append((pathname, request.path, ws.path)))
    for path in ("/chat", "/notifications"):
        server.create_handler(path=path).on("connection", lambda ws, request, p=path: ws.send(p))
    for path in ("/chat", "/notifications"):
        with connect(url(server, path + "?token=1"), open_timeout=TIMEOUT) as client:
            assert client.recv(timeout=TIMEOUT) == path
    assert seen == [("/chat", "/chat", "/chat"), ("/notifications", "/notifications", "/notifications")]


def test_unhandled_path_gets_400_then_event(server):
    server.create_handler(path="/echo")
    got = threading.Event()
    sockets: list[socket.socket] = []
    server.on("unhandled", lambda sock: (sockets.append(sock), got.set()))
    response = raw_request(server, upgrade_head("/nope"))
    assert response.startswith(b"HTTP/1.1 400 ")
    assert got.wait(TIMEOUT)
    assert sockets[0].fileno() == -1  # closed before the event


def test_unhandled_socket_belongs_to_the_listener_when_not_rejecting(make_server):
    server = make_server(reject_unhandled=False)

    def take_over(sock):
        request = server.unhandled_request(sock)
        body = f"you asked for {request.path}".encode()
        sock.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        sock.close()

    server.on("unhandled", take_over)
    response = raw_request(server, upgrade_head("/elsewhere?x=1"))
    assert response.startswith(b"HTTP/1.1 404 ") and response.endswith(b"you asked for /elsewhere")


def test_unhandled_socket_stays_open_after_the_listener_returns(make_server):
    server = make_server(reject_unhandled=False)
    kept: list[socket.socket] = []
    handed = threading.Event()
    server.on("unhandled", lambda sock: (kept.append(sock), handed.set()))
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as client:
        client.sendall(upgrade_head("/later"))
        assert handed.wait(TIMEOUT)
        kept[0].sendall(b"still mine")
        assert client.recv(100) == b"still mine"
        kept[0].close()


# -- create_handler ------------------------------------------------------------


def test_create_handler_checks_its_arguments(server):
    with pytest.raises(TypeError):
        server.create_handler()  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="start with '/'"):
        server.create_handler(path="chat")
    with pytest.raises(TypeError, match="path"):
        server.create_handler(path=5)  # type: ignore[arg-type]
    for name in ("port", "host", "server"):
        with pytest.raises(TypeError, match=name):
            server.create_handler(path="/x", **{name: 1})
    with pytest.raises(TypeError, match="no_such_option"):
        server.create_handler(path="/x", no_such_option=1)
    handler = server.create_handler(path="/x")
    assert isinstance(handler, WebSocketHandler) and handler.path == "/x"
    with pytest.raises(ValueError, match="already exists"):
        server.create_handler(path="/x")


def test_handlers_can_be_created_from_other_threads_after_listening(server):
    def add(i: int) -> WebSocketHandler:
        handler = server.create_handler(path=f"/p{i}")
        handler.on("connection", lambda ws, request, i=i: ws.send(str(i)))
        return handler

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(add, range(16)))
    for i in (0, 15):
        with connect(url(server, f"/p{i}"), open_timeout=TIMEOUT) as client:
            assert client.recv(timeout=TIMEOUT) == str(i)


def test_create_handler_after_close_raises(server):
    server.close()
    with pytest.raises(RuntimeError, match="closed"):
        server.create_handler(path="/late")


# -- errors ----------------------------------------------------------------------


def test_a_raising_listener_goes_to_server_error_and_the_server_goes_on(server):
    errors: list[BaseException] = []
    got = threading.Event()
    server.on("error", lambda exc: (errors.append(exc), got.set()))
    handler = server.create_handler(path="/boom")

    @handler.on("connection")
    def explode(ws, request):
        ws.on("message", lambda data, is_binary: 1 / 0)
        ws.send("ready")

    with connect(url(server, "/boom"), open_timeout=TIMEOUT) as client:
        assert client.recv(timeout=TIMEOUT) == "ready"
        client.send("x")
        assert got.wait(TIMEOUT)
        client.send("y")  # the reader survived
        assert wait_until(lambda: len(errors) == 2)
    assert all(isinstance(e, ZeroDivisionError) for e in errors)


def test_a_raising_listener_without_error_listener_is_logged(server, library_log):
    server.create_handler(path="/boom").on("connection", lambda ws, request: {}["missing"])
    with connect(url(server, "/boom"), open_timeout=TIMEOUT) as client:
        client.send("still served")
    assert wait_until(lambda: library_log.errors())
    record = library_log.errors()[0]
    assert record.exc_info and record.exc_info[0] is KeyError


def test_simple_websocket_client_is_served(server):
    server.create_handler(path="/echo").on("connection", echo)
    client = simple_websocket.Client.connect(url(server, "/echo"))
    try:
        client.send("simple")
        assert client.receive(timeout=TIMEOUT) == "simple"
        client.send(b"\x00\x01")
        assert client.receive(timeout=TIMEOUT) == b"\x00\x01"
    finally:
        client.close()


def test_refused_upgrade_is_reported_to_websockets_client(server):
    server.create_handler(path="/private", verify_client=lambda request: False)
    with pytest.raises(InvalidStatus) as info:
        connect(url(server, "/private"), open_timeout=TIMEOUT)
    assert info.value.response.status_code == 401
