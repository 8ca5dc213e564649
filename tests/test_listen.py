"""Issue 10, "listen on what deployments hand you": sock=, unix_path=,
serve --fd and systemd socket activation, argument errors, listen()."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import wait_until
from tests.faultkit import encode_frame, read_http_response, upgrade_request
from ws_multipath import MultipathServer

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 10.0

pytestmark = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs Unix sockets")


def serve_echo(server):
    handler = server.create_handler("/echo", ping_interval=None)
    seen = []

    @handler.on("connection")
    def on_connection(ws, request):
        seen.append(request)
        ws.on("message", lambda data, is_binary: ws.send(data))

    return handler, seen


def upgrade_over(sock, headers=()):
    sock.settimeout(TIMEOUT)
    sock.sendall(upgrade_request("/echo", 0, headers=headers))
    status, head, rest = read_http_response(sock)
    assert status == 101, head
    sock.sendall(encode_frame(0x1, b"hi"))
    reply = rest
    while len(reply) < 4:
        reply += sock.recv(100)
    assert reply == b"\x81\x02hi"


def unix_client(path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(path))
    return sock


# -- sock= ----------------------------------------------------------------------


def test_sock_a_bound_listening_tcp_socket():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    with MultipathServer(sock=listener) as server:
        assert server.port == port and server.address == ("127.0.0.1", port) and server.listening
        serve_echo(server)
        with socket.create_connection(("127.0.0.1", port)) as client:
            upgrade_over(client)
    assert listener.fileno() == -1  # the server closed it


def test_sock_a_listening_unix_socket(tmp_path):
    path = tmp_path / "given.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()
    with MultipathServer(sock=listener) as server:
        assert server.port is None and server.address == str(path)
        _, seen = serve_echo(server)
        with unix_client(path) as client:
            upgrade_over(client)
        assert seen[0].remote_address == (f"unix:{path}", 0)


# -- unix_path= -------------------------------------------------------------------


def test_unix_path_serves_and_names_its_peers_sanely(tmp_path, library_log):
    path = tmp_path / "app.sock"
    with MultipathServer(unix_path=str(path)) as server:
        assert server.port is None and server.address == str(path) and path.is_socket()
        _, seen = serve_echo(server)
        with unix_client(path) as client:
            upgrade_over(client)
        request = seen[0]
        assert request.remote_address == request.peer_address == (f"unix:{path}", 0)
        assert wait_until(lambda: [r for r in library_log.records if getattr(r, "event", None) == "closed"])
        accepted = next(r for r in library_log.records if getattr(r, "event", None) == "accepted")
        assert accepted.getMessage() == f"accepted unix:{path} on /echo (subprotocol -, extensions -)"
    assert not path.exists()  # removed on close


def test_unix_path_behind_a_trusted_proxy_gives_the_real_client(tmp_path):
    path = tmp_path / "app.sock"
    with MultipathServer(unix_path=path, trusted_proxies=["unix"]) as server:
        _, seen = serve_echo(server)
        with unix_client(path) as client:
            upgrade_over(client, headers=(("X-Forwarded-For", "198.51.100.4"),))
        assert seen[0].remote_address == ("198.51.100.4", 0)
        assert seen[0].peer_address == (f"unix:{path}", 0)


def test_unix_path_serves_wsgi_too(tmp_path):
    path = tmp_path / "app.sock"

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"{environ['SERVER_NAME']} {environ['REMOTE_ADDR']}".encode()]

    with MultipathServer(unix_path=path, wsgi_app=app):
        with unix_client(path) as client:
            client.sendall(b"GET / HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := client.recv(65536):
                data += chunk
    assert data.startswith(b"HTTP/1.1 200") and f"example.com unix:{path}".encode() in data


def test_unix_path_removes_a_stale_socket_file(tmp_path):
    path = tmp_path / "app.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # a server that died: the file stays, nobody listens
    assert path.is_socket()
    with MultipathServer(unix_path=str(path)) as server:
        serve_echo(server)
        with unix_client(path) as client:
            upgrade_over(client)


def test_unix_path_in_use_or_not_a_socket_raises(tmp_path):
    path = tmp_path / "app.sock"
    with MultipathServer(unix_path=str(path)):
        with pytest.raises(OSError, match="another server is listening"):
            MultipathServer(unix_path=str(path))
        assert path.is_socket()
    plain = tmp_path / "notes.txt"
    plain.write_text("keep me")
    with pytest.raises(OSError, match="not a socket"):
        MultipathServer(unix_path=str(plain))
    assert plain.read_text() == "keep me"


def test_close_does_not_remove_another_servers_socket_file(tmp_path):
    path = tmp_path / "app.sock"
    first = MultipathServer(unix_path=str(path))
    os.unlink(path)  # someone removed it and a new server took the path
    with MultipathServer(unix_path=str(path)):
        first.close()
        assert path.is_socket()


# -- argument errors and listen() ---------------------------------------------------


def test_listening_arguments_are_exclusive(tmp_path):
    listener = socket.create_server(("127.0.0.1", 0))
    with listener:
        with pytest.raises(TypeError, match="port and sock"):
            MultipathServer(8080, sock=listener)
        with pytest.raises(TypeError, match="sock and unix_path"):
            MultipathServer(sock=listener, unix_path=str(tmp_path / "a.sock"))
        with pytest.raises(TypeError, match="host goes with port, not with sock"):
            MultipathServer(host="127.0.0.1", sock=listener)
        with pytest.raises(ValueError, match="reuse_port"):
            MultipathServer(sock=listener, reuse_port=True)
    with pytest.raises(TypeError, match="host goes with port, not with unix_path"):
        MultipathServer(host="::1", unix_path=str(tmp_path / "a.sock"))
    with pytest.raises(TypeError, match="needs a port"):
        MultipathServer()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="sock must be a socket.socket"):
        MultipathServer(sock=3)  # type: ignore[arg-type]
    with socket.socket() as unbound:
        with pytest.raises(ValueError, match="listening"):
            MultipathServer(sock=unbound)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as datagram:
        with pytest.raises(ValueError, match="SOCK_STREAM"):
            MultipathServer(sock=datagram)


def test_listen_on_an_auto_listening_server_says_why(server):
    assert not hasattr(server, "listen")
    with pytest.raises(AttributeError, match=r"auto_listen=True.*auto_listen=False"):
        server.listen()


def test_auto_listen_false_with_unix_path(tmp_path):
    path = tmp_path / "later.sock"
    server = MultipathServer(unix_path=str(path), auto_listen=False)
    try:
        assert not path.exists() and server.address == str(path)
        server.listen()
        assert path.is_socket() and server.listening
    finally:
        server.close()
    assert not path.exists()


# -- serve --fd and systemd socket activation -----------------------------------------


def _serve(argv, pass_fds, env_extra=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.update(env_extra or {})
    return subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, pass_fds=pass_fds)


def _hello_over(port):
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{port}/chat", open_timeout=TIMEOUT, proxy=None) as client:
        return client.recv(timeout=TIMEOUT)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["fd", "systemd"])
def test_serve_accepts_on_an_inherited_socket(how):
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    fd = listener.fileno()
    if how == "fd":
        argv = ["-m", "ws_multipath", "serve", "tests.cluster_app:create_server", "--fd", str(fd), "--workers", "2"]
    else:  # what systemd does: the socket as fd 3, LISTEN_PID the pid of the process it starts
        code = (
            "import os, sys; os.dup2(int(sys.argv[1]), 3); os.environ['LISTEN_FDS'] = '1'; "
            "os.environ['LISTEN_PID'] = str(os.getpid()); from ws_multipath.__main__ import main; "
            "sys.exit(main(['serve', 'tests.cluster_app:create_server']))"
        )
        argv = ["-c", code, str(fd)]
    process = _serve(argv, pass_fds=(fd,))
    listener.close()  # the children hold it now
    try:
        lines = [process.stdout.readline() for _ in range(2 if how == "fd" else 1)]
        assert all("listening on" in line for line in lines), lines
        assert "(fd " in lines[0]
        assert _hello_over(port).startswith("hello ")
        process.send_signal(signal.SIGTERM)
        assert process.wait(TIMEOUT) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()


def test_serve_fd_with_port_is_refused():
    listener = socket.create_server(("127.0.0.1", 0))
    with listener:
        process = _serve(["-m", "ws_multipath", "serve", "tests.cluster_app:create_server", "--fd", str(listener.fileno()), "--port", "9"], pass_fds=(listener.fileno(),))
        out, err = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 2 and "do not give --port" in err


def test_systemd_variables_for_another_process_are_ignored():
    from ws_multipath.cluster.workers import systemd_listen_fd

    env = {"LISTEN_FDS": "1", "LISTEN_PID": "1"}
    assert systemd_listen_fd(env) is None and env == {}
    env = {"LISTEN_FDS": "2", "LISTEN_PID": str(os.getpid()), "LISTEN_FDNAMES": "a:b"}
    assert systemd_listen_fd(env) == 3 and env == {}
    assert systemd_listen_fd({}) is None


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")
def test_a_server_that_cannot_listen_keeps_no_descriptor():
    """The constructor opens the head loop's descriptors (its selector and
    wake-up pair) before it listens: a port in use must not leave them open."""
    from ws_multipath import MultipathServer

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError):  # a first one: whatever is opened once (imports, caches) is open now
            MultipathServer(port=port, host="127.0.0.1")
        before = open_fds()
        for _ in range(5):
            with pytest.raises(OSError):
                MultipathServer(port=port, host="127.0.0.1")
        assert open_fds() == before
