"""Shared fixtures: servers on 127.0.0.1 port 0 that are always closed, and
small helpers for waiting on conditions without sleeping blindly."""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from typing import Callable, Iterator

import pytest

from ws_multipath import MultipathServer

TIMEOUT = 10.0

# websockets 17 (Python 3.11+) warns when connect() is used without ``with``
# unless legacy=True; earlier versions (15.0.1 is the last for 3.9, 16.1.1 for
# 3.10) have no such argument and always connect directly.
try:
    from websockets.version import version as _websockets_version
except ImportError:  # websockets is in the [test] extra
    _websockets_version = "0"
LEGACY: dict = {"legacy": True} if int(_websockets_version.split(".")[0]) >= 17 else {}


def wait_until(predicate: Callable[[], object], timeout: float = TIMEOUT, interval: float = 0.01) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes; returns the last result."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result or time.monotonic() >= deadline:
            return bool(result)
        time.sleep(interval)


@pytest.fixture(scope="session")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1: ``(certfile, keyfile)``."""
    from .faultkit import make_certificate

    made = make_certificate(str(tmp_path_factory.mktemp("tls")))
    if made is None:
        pytest.skip("neither the cryptography package nor the openssl CLI is available")
    return made


@pytest.fixture
def make_server() -> Iterator[Callable[..., MultipathServer]]:
    """Factory of servers on 127.0.0.1:0, closed at the end of the test."""
    servers: list[MultipathServer] = []

    def factory(**kwargs: object) -> MultipathServer:
        kwargs.setdefault("port", 0)
        kwargs.setdefault("host", "127.0.0.1")
        server = MultipathServer(**kwargs)  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.close()


@pytest.fixture
def server(make_server: Callable[..., MultipathServer]) -> MultipathServer:
    return make_server()


def echo(ws, request) -> None:  # type: ignore[no-untyped-def]
    ws.on("message", lambda data, is_binary: ws.send(data))


def url(server: MultipathServer, path: str) -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


def serve_one(server, path="/ws", **options):
    """A handler whose connections are put on the returned queue."""
    connections: queue.Queue = queue.Queue()
    server.create_handler(path=path, **options).on("connection", lambda ws, request: connections.put(ws))
    return connections


def raw_request(server: MultipathServer, head: bytes, timeout: float = TIMEOUT) -> bytes:
    """Send ``head`` on a raw socket; return everything the server sent until it closed."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(head)
        return read_until_eof(sock)


def read_until_eof(sock: socket.socket) -> bytes:
    """Everything the peer sends until it closes (or resets) the connection."""
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


UPGRADE = (
    "GET {path} HTTP/1.1\r\n"
    "Host: 127.0.0.1\r\n"
    "Upgrade: websocket\r\n"
    "Connection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n"
)


def upgrade_head(path: str = "/echo", extra: str = "") -> bytes:
    return (UPGRADE.format(path=path) + extra + "\r\n").encode("latin-1")


class LogCapture(logging.Handler):
    """Collects records of the ws_multipath logger."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.records_lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self.records_lock:
            self.records.append(record)

    def errors(self) -> list[logging.LogRecord]:
        with self.records_lock:
            return [r for r in self.records if r.levelno >= logging.ERROR]


@pytest.fixture
def library_log() -> Iterator[LogCapture]:
    capture = LogCapture()
    logger = logging.getLogger("ws_multipath")
    previous = logger.level
    logger.addHandler(capture)
    logger.setLevel(logging.DEBUG)
    yield capture
    logger.removeHandler(capture)
    logger.setLevel(previous)


@pytest.fixture(autouse=True)
def no_thread_exceptions() -> Iterator[list]:
    """Fail a test when an exception escapes any thread during it."""
    caught: list = []
    previous = threading.excepthook
    threading.excepthook = lambda args: caught.append(args)
    yield caught
    threading.excepthook = previous
    assert not caught, f"exception escaped a thread: {caught[0].exc_value!r}"


def response_head(sock: socket.socket) -> bytes:
    """What the server sent up to the end of its response head (less at EOF)."""
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(4096)
        if not chunk:
            break
        response += chunk
    return response


def library_threads() -> list[str]:
    """The names of the library's threads alive now."""
    return [t.name for t in threading.enumerate() if t.name.startswith("ws_multipath-")]
