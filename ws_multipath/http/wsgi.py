"""A WSGI app (PEP 3333) served beside the WebSocket handlers, on HTTP/1.1.

``handshake.py`` reads the first request head and decides; a plain HTTP
request lands in ``WSGIServer.serve``, which feeds that head (and the bytes
read past it) into an ``h11.Connection`` and serves requests on the same
thread until the connection ends: keep-alive and pipelining (answered in
order), chunked or close-delimited streaming, ``HEAD``, ``Expect:
100-continue`` (the 100 goes out when the app first reads ``wsgi.input``).

A later request on the connection that is a WebSocket upgrade goes back to
the same decision as a first one, with the bytes h11 holds past its head as
``Request.buffered``.

With ``wsgi_websockets=True`` an upgrade to a path no handler serves goes to
the app with the socket in ``environ["werkzeug.socket"]`` (what
simple-websocket and Flask-Sock look for); see ``SocketHandover``.

Each connection's socket (``wsgi_socket.ClientSocket``) guards its idle and
closing flags with its ``_lock``; ``WSGIServer._lock`` guards the set of
connections and the closing flag.
"""

from __future__ import annotations

import dataclasses
import socket
import threading
from typing import Any, Callable, Iterable

from ..log import logger
from .proxies import TrustedProxies
from .request import Request
from .strictness import MAX_TARGET_SIZE
from .wsgi_body import BodyTimeout, BodyTooLarge, ClientDisconnected
from .head import head_bytes
from .wsgi_connection import HTTPConnection
from .wsgi_socket import KiB

__all__ = ["WSGIOptions", "WSGIServer", "BodyTooLarge", "BodyTimeout", "ClientDisconnected"]


@dataclasses.dataclass(frozen=True)
class WSGIOptions:
    app: Callable[..., Iterable[bytes]]
    websockets: bool = False
    max_body_size: int = 16 * 1024 * KiB
    keepalive_timeout: float = 5.0
    body_timeout: float = 60.0
    write_timeout: float = 10.0
    graceful_timeout: float = 10.0
    head_timeout: float = 10.0  # open_timeout, for the heads of later requests
    max_header_size: int = 16384
    max_headers: int = 100
    proxies: TrustedProxies = dataclasses.field(default_factory=TrustedProxies)
    max_target_size: int = MAX_TARGET_SIZE


class WSGIServer:
    """Serves the app on the connections handed to it (their request threads).

    ``upgrade(sock, request)`` is the server's decision for a WebSocket
    upgrade (returns True when a listener now owns the socket);
    ``drained()`` is called when the last connection ended after ``close()``.
    """

    def __init__(self, options: WSGIOptions, timers: Any, drained: Callable[[], None]) -> None:
        self.options = options
        self._timers = timers
        self._drained = drained
        self._lock = threading.Lock()
        self._connections: set[HTTPConnection] = set()
        self._closing = False

    def busy(self) -> bool:
        with self._lock:
            return bool(self._connections)

    def serve(self, sock: socket.socket, request: Request, head: bytes, upgrade: Callable[[socket.socket, Request], bool]) -> bool:
        """Serve plain HTTP on ``sock``, whose first ``head`` was parsed into
        ``request``; True when the socket was handed on and must stay open."""
        connection = HTTPConnection(self, sock, request, upgrade)
        if not self._add(connection):
            return False
        try:
            return connection.run(head or head_bytes(request), request.buffered)
        finally:
            self._remove(connection)

    def serve_websocket(self, sock: socket.socket, request: Request, head: bytes) -> bool:
        """Give an upgrade no handler serves to the app (``wsgi_websockets``)."""
        connection = HTTPConnection(self, sock, request, None)
        if not self._add(connection):
            return False
        try:
            return connection.run_handover((head or head_bytes(request)) + request.buffered)
        finally:
            self._remove(connection)

    def _add(self, connection: "HTTPConnection") -> bool:
        with self._lock:
            if self._closing:
                return False
            self._connections.add(connection)
            return True

    def _remove(self, connection: "HTTPConnection") -> None:
        with self._lock:
            if connection not in self._connections:
                return
            self._connections.discard(connection)
            drained = self._closing and not self._connections
        if drained:
            self._drained()

    def close(self) -> None:
        """Drop idle connections now, let requests in flight finish (their
        connections close after the response), and cut whatever is left after
        ``graceful_timeout``."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            connections = list(self._connections)
        for connection in connections:
            connection.server_closing()
        if connections:
            self._timers.call_later(self.options.graceful_timeout, self._force)
        else:
            self._drained()

    def _force(self) -> None:
        """The graceful deadline passed (timer thread): shut the rest down."""
        with self._lock:
            connections = list(self._connections)
            self._connections.clear()
        if not connections:
            return
        logger.warning("close(): %d HTTP connection(s) still busy after %ss; dropping them", len(connections), self.options.graceful_timeout)
        for connection in connections:
            connection.abort()
        self._drained()


