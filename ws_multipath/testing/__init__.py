"""Testing your handlers: a client for a server in the same process, over a
real loopback socket (no mocks)::

    from ws_multipath import MultipathServer
    from ws_multipath.testing import connect

    def test_echo():
        with MultipathServer(port=0, host="127.0.0.1") as server:
            server.create_handler("/echo").on("connection", lambda ws, request: ws.on("message", lambda data, binary: ws.send(data)))
            with connect(server, "/echo") as ws:
                ws.send("hi")
                assert ws.receive() == "hi"

With pytest installed, the ``multipath_server`` fixture (``testing/plugin.py``,
registered as a pytest plugin by the package) gives such a server, closed
after the test.

The client is ``simple_websocket.Client`` (which runs a reader thread), with
the handshake response kept: ``response_headers`` on success,
``HandshakeRefused`` with the status, headers and body on refusal (headers
as a case-insensitive ``Headers``).
``receive`` waits at most ``timeout`` seconds (10 by default: a test must not
hang) and raises ``ConnectionClosed`` with the server's code and reason once
the server has closed.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Optional, Sequence, Union

import simple_websocket  # type: ignore[import-untyped]
from wsproto.events import AcceptConnection, RejectConnection, RejectData
from wsproto.events import Request as HandshakeRequest

from ..errors import ConnectionClosed, connection_closed
from ..http.request import Headers

if TYPE_CHECKING:
    from ..server import MultipathServer

__all__ = ["connect", "TestClient", "HandshakeRefused"]

DEFAULT_TIMEOUT = 10.0


class HandshakeRefused(Exception):
    """The server answered the upgrade with ``status`` instead of 101."""

    def __init__(self, status: int, headers: Headers, body: bytes) -> None:
        super().__init__(f"the server refused the upgrade with {status}: {body[:200]!r}")
        self.status = status
        self.headers = headers
        self.body = body


class _Client(simple_websocket.Client):  # type: ignore[misc]
    """simple-websocket's client, keeping what the handshake answered."""

    response_headers: Headers

    def handshake(self) -> None:
        """Raises ``HandshakeRefused`` (the socket closed) on a refusal."""
        self.response_headers = Headers()
        status, refusal_headers = 0, Headers()
        request = HandshakeRequest(host=self.host, target=self.path, subprotocols=self.subprotocols, extra_headers=self.extra_headeers)
        self.sock.sendall(self.ws.send(request))
        body = bytearray()
        while True:
            data = self.sock.recv(self.receive_bytes)
            self.ws.receive_data(data or None)
            for event in self.ws.events():
                if isinstance(event, AcceptConnection):
                    self.response_headers = _decoded(event.extra_headers)
                    self.subprotocol = event.subprotocol
                    self.connected = True
                    return
                if isinstance(event, RejectConnection):
                    status, refusal_headers = event.status_code, _decoded(event.headers)
                    if not event.has_body:
                        self._refuse(status, refusal_headers, body)
                elif isinstance(event, RejectData):
                    body += event.data
                    if event.body_finished:
                        self._refuse(status, refusal_headers, body)
            if not data:
                self._refuse(status, refusal_headers, body)

    def _refuse(self, status: int, headers: Headers, body: bytearray) -> None:
        self.sock.close()
        raise HandshakeRefused(status, headers, bytes(body))


class TestClient:
    """One WebSocket connection to the server under test (see the module)."""

    __test__ = False  # not a pytest test class

    def __init__(self, client: _Client) -> None:
        self._client = client
        self.protocol: Optional[str] = client.subprotocol
        self.response_headers: Headers = client.response_headers
        self.close_code: Optional[int] = None
        self.close_reason: Optional[str] = None

    def send(self, data: Union[str, bytes]) -> None:
        """Send a text (``str``) or binary (bytes-like) message."""
        self._call(self._client.send, bytes(data) if isinstance(data, (bytearray, memoryview)) else data)

    def send_json(self, obj: Any) -> None:
        self.send(json.dumps(obj))

    def receive(self, timeout: Optional[float] = DEFAULT_TIMEOUT) -> Union[str, bytes]:
        """The next message; ``TimeoutError`` after ``timeout`` seconds,
        ``ConnectionClosed`` (with the server's code) once it closed."""
        message = self._call(self._client.receive, timeout)
        if message is None:
            if not self._client.connected:
                raise self._closed()
            raise TimeoutError(f"no message within {timeout} s")
        return message  # type: ignore[no-any-return]

    def receive_json(self, timeout: Optional[float] = DEFAULT_TIMEOUT) -> Any:
        return json.loads(self.receive(timeout))

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame and end the connection (idempotent)."""
        if self._client.connected:
            try:
                self._client.close(code, reason)
            except simple_websocket.ConnectionClosed:
                pass
            if self.close_code is None:
                self.close_code, self.close_reason = code, reason
        self._client.thread.join(DEFAULT_TIMEOUT)

    def _call(self, method: Any, *args: Any) -> Any:
        try:
            return method(*args)
        except simple_websocket.ConnectionClosed:
            raise self._closed() from None
        except OSError:
            raise self._closed() from None

    def _closed(self) -> ConnectionClosed:
        if self.close_code is None:
            code = int(self._client.close_reason or 1006)
            self.close_code, self.close_reason = code, self._client.close_message or ""
        return connection_closed(self.close_code, self.close_reason or "")


@contextmanager
def connect(
    server: "MultipathServer",
    path: str,
    headers: Optional[Mapping[str, str]] = None,
    subprotocols: Optional[Sequence[str]] = None,
) -> Iterator[TestClient]:
    """Open a WebSocket to ``path`` on ``server`` (listening on loopback or
    on all interfaces) and close it on the way out. Raises
    ``HandshakeRefused`` when the server refuses the upgrade."""
    host, port = server.address[:2]
    host = "::1" if host == "::" else "127.0.0.1" if host in ("0.0.0.0", "") else host
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    client = _Client(f"ws://{netloc}{path}", subprotocols=list(subprotocols or []), headers=dict(headers or {}))
    test_client = TestClient(client)
    try:
        yield test_client
    finally:
        test_client.close()


def _decoded(headers: Any) -> Headers:
    return Headers([(bytes(name).decode("latin-1"), bytes(value).decode("latin-1")) for name, value in headers])
