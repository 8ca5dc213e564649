"""A WSGI app (PEP 3333) served beside the WebSocket handlers, on HTTP/1.1.

``handshake.py`` reads the first request head on the accepting thread and
decides; a plain HTTP request lands in ``WSGIServer.serve``, which queues
the connection for the server's pool of ``wsgi_threads`` threads
(``sync/pool.py``) and lets the accepting thread go. A pool thread feeds
that head (and the bytes read past it) into an ``h11.Connection`` and serves
requests (``wsgi_connection.py``): keep-alive and pipelining (answered in
order), chunked or close-delimited streaming, ``HEAD``, ``Expect:
100-continue`` (the 100 goes out when the app first reads ``wsgi.input``).
Between two requests a keep-alive connection holds no thread: it waits in
the parking lot (``keepalive.py``), whose one thread hands it back to the
pool when its next request comes, or closes it after
``http_keepalive_timeout``. So the app runs on at most ``wsgi_threads``
threads at once, and an idle connection costs a descriptor, not a thread.

A later request on the connection that is a WebSocket upgrade goes back to
the same decision as a first one, on a thread of its own (a WebSocket, or
an app that took its socket, keeps its thread: never a pool's), with the
bytes h11 holds past its head as ``Request.buffered``.

With ``wsgi_websockets=True`` an upgrade to a path no handler serves goes to
the app with the socket in ``environ["werkzeug.socket"]`` (what
simple-websocket and Flask-Sock look for), on the accepting thread, which
it keeps; see ``SocketHandover``.

Each connection's socket (``wsgi_socket.ClientSocket``) guards its idle and
closing flags with its ``_lock``; ``WSGIServer._lock`` guards the set of
connections and the closing flag (taken before the parking lot's lock, never
after). A connection is run by one thread at a time: the pool thread of its
turn, or the parking lot while parked.
"""

from __future__ import annotations

import dataclasses
import functools
import socket
import ssl
import threading
from typing import Any, Callable, Iterable

from ..log import format_address, logger
from ..sync.pool import WorkerPool
from ..sync.dispatch import listener_thread
from .head import head_bytes
from .keepalive import ParkingLot
from .proxies import TrustedProxies
from .request import Request
from .strictness import MAX_TARGET_SIZE
from .wsgi_body import BodyTimeout, BodyTooLarge, ClientDisconnected
from .wsgi_connection import HANDED, PARK, HTTPConnection
from .wsgi_socket import KiB

__all__ = ["WSGIOptions", "WSGIServer", "BodyTooLarge", "BodyTimeout", "ClientDisconnected", "DEFAULT_THREADS"]

#: ``wsgi_threads``' default, the pool's bound: docs/topics/threads.rst says why 32.
DEFAULT_THREADS = 32


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
    threads: int = DEFAULT_THREADS


class WSGIServer:
    """Serves the app on the connections handed to it, on its pool.

    ``upgrade(sock, request)`` is the server's decision for a WebSocket
    upgrade (returns True when a listener now owns the socket);
    ``drained()`` is called when the last connection ended after ``close()``.
    """

    def __init__(self, options: WSGIOptions, timers: Any, drained: Callable[[], None], use_epoll: bool = True) -> None:
        self.options = options
        self._timers = timers
        self._drained = drained
        self._lock = threading.Lock()
        self._connections: set[HTTPConnection] = set()
        self._closing = False
        self._pool = WorkerPool(options.threads, "ws_multipath-http")
        self._parking = ParkingLot(options.keepalive_timeout, self._readable, self._idle_expired, use_epoll)

    def open(self) -> None:
        """The parking lot's descriptors, now (the server starts listening)."""
        try:
            self._parking.open()
        except OSError as exc:  # the first parking tries again
            logger.warning("cannot open the keep-alive poller yet: %s", exc)

    def busy(self) -> bool:
        with self._lock:
            return bool(self._connections)

    def serve(self, sock: socket.socket, request: Request, head: bytes, upgrade: Callable[[socket.socket, Request], bool]) -> bool:
        """Serve plain HTTP on ``sock``, whose first ``head`` was parsed into
        ``request``, on the pool (the caller's thread returns at once). True
        when the WSGI side took the socket (and closes it when done); False
        when it did not (closing, or no thread at all): the caller closes it."""
        connection = HTTPConnection(self, sock, request, upgrade)
        if not self._add(connection):
            return False
        try:
            self._pool.submit(functools.partial(self._turn, connection, connection.first, head or head_bytes(request), request.buffered))
        except RuntimeError as exc:
            logger.error("cannot serve HTTP from %s: no thread (%s)", format_address(request.remote_address), exc)
            self._remove(connection)
            return False
        return True

    def serve_websocket(self, sock: socket.socket, request: Request, head: bytes) -> bool:
        """Give an upgrade no handler serves to the app (``wsgi_websockets``),
        on the caller's thread, which the app then keeps as long as it uses
        the socket; True when the socket must stay open."""
        connection = HTTPConnection(self, sock, request, None)
        if not self._add(connection):
            return False
        try:
            return connection.run_handover((head or head_bytes(request)) + request.buffered)
        finally:
            self._remove(connection)

    def upgrade_apart(self, sock: socket.socket, upgrade: Callable[[], bool]) -> bool:
        """Run ``upgrade()`` (a later request's WebSocket upgrade) on a new
        thread, which closes ``sock`` after it unless it returned True;
        False when no thread could be started (the caller closes it)."""
        try:
            threading.Thread(target=_upgraded, args=(sock, upgrade), name="ws_multipath-connection", daemon=True).start()
        except RuntimeError as exc:
            logger.error("cannot serve a WebSocket upgrade: no thread (%s)", exc)
            return False
        return True

    # -- turns on the pool, and the parking lot ----------------------------------

    def _turn(self, connection: HTTPConnection, step: Callable[..., str], *args: Any) -> None:
        """One turn of ``connection`` on a pool thread, then what it ended with."""
        listener_thread.active = True  # close() from the app must not wait for the app
        try:
            outcome = step(*args)
        except BaseException:  # a bug (the pool logs it): the connection ends
            connection.close()
            self._remove(connection)
            raise
        if outcome is PARK and self._parking.park(connection, connection.fileno(), connection.park_deadline()):
            return  # the lot owns it now
        if outcome is not HANDED:
            connection.close()
        self._remove(connection)

    def _readable(self, connection: HTTPConnection) -> None:
        """A parked connection's next request came (the lot's thread)."""
        try:
            self._pool.submit(functools.partial(self._turn, connection, connection.resume))
        except RuntimeError as exc:
            logger.error("dropping %s: no thread to serve it (%s)", format_address(connection.address), exc)
            connection.close()
            self._remove(connection)

    def _idle_expired(self, connection: HTTPConnection) -> None:
        """``http_keepalive_timeout`` passed with no request, or the head
        deadline with a head not whole (the lot's thread)."""
        if connection.waiting_for_head:
            logger.info("dropping %s: request head not completed within %ss", format_address(connection.address), self.options.head_timeout)
        connection.close()
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
        """Close idle connections now (parked ones, and those waiting for
        their next head), let requests in flight finish (their connections
        close after the response), and cut whatever is left after
        ``graceful_timeout``."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            parked = self._parking.close()  # lock order: ours, then the lot's
            self._connections.difference_update(parked)
            connections = list(self._connections)
        for connection in parked:
            connection.close()
        self._pool.close()
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


def _upgraded(sock: socket.socket, upgrade: Callable[[], bool]) -> None:
    """The thread of a later request's WebSocket upgrade."""
    listener_thread.active = True
    kept = False
    try:
        kept = upgrade()
    except (OSError, ssl.SSLError) as exc:
        logger.debug("dropping a WebSocket upgraded after HTTP requests: %s", exc)
    except Exception:  # noqa: BLE001 - a bug: logged, as socketserver did for the first request's thread
        logger.exception("unexpected error serving a WebSocket upgraded after HTTP requests")
    finally:
        if not kept:
            sock.close()
