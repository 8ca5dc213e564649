"""``MultipathServer``: one listening socket, many WebSocket paths.

The server owns the lifecycle (listening, closing) and the routing table;
its closing sequence and the ``max_connections`` count are the
``ServerClosing`` mixin (``server_closing.py``), its cluster side
(``send_to``, presence) the ``ServerCluster`` mixin (``server_cluster.py``).
Where it listens and the accept loop live in ``sync/acceptor.py``. The
accept loop gives each plain connection to the server's head loop
(``http/head_waiting.py``), which reads its request within
``open_timeout`` without a thread of its own and runs the rest of the
handshake as a task (a TLS connection gets a request thread instead); the
HTTP side (``http/handshake.py``) hands the socket to the path's handler,
which answers the handshake, runs the ``'connection'`` listeners and gives
the connection to its event loop (``sync/loop.py``). A plain HTTP request
goes to the ``wsgi_app``'s pool of ``wsgi_threads`` threads instead
(``http/wsgi.py``).
"""

from __future__ import annotations

import functools
import socket
import ssl
import sys
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, Union

from .arguments import NO_PORT, NoListen, check_arguments, check_listen_arguments, check_path, wsgi_options
from .cluster.directory import Directory
from .emitter import EventEmitter
from .handler import WebSocketHandler
from .http.handshake import HTTPSide
from .http.handshake_limits import HeadLimits
from .http.proxies import TrustedProxies
from .http.request import Request
from .http.strictness import MAX_TARGET_SIZE
from .http.routing import RoutingTable
from .http.wsgi import WSGIServer
from .options import HandlerOptions, HandlerOptionsDict
from .server_closing import ServerClosing
from .server_cluster import ServerCluster
from .serving import format_listen_address, wait_closed
from .stats import server_stats
from .sync.acceptor import Acceptor
from .sync.binding import check_reuse_port
from .sync.capacity import Capacity, measure_capacity, report_capacity
from .sync.flusher import Flusher
from .sync.handoff import Sysmon
from .sync.timers import Timers

if TYPE_CHECKING:
    if sys.version_info >= (3, 11):
        from typing import Unpack
    else:
        from typing_extensions import Unpack

    from .cluster.broker import Broker
    from .cluster.node import ClusterNode
    from .cluster.presence import Presence

__all__ = ["MultipathServer"]

#: Seconds after listening in which a request for a path without a handler
#: waits for one (``RoutingTable.lookup_or_wait``).
HANDLERS_GRACE = 1.0


class MultipathServer(ServerClosing, ServerCluster, EventEmitter):
    """A WebSocket server that serves many paths on one port.

    ``MultipathServer(port, host=None, auto_listen=True, reject_unhandled=True,
    *, sock=None, unix_path=None, open_timeout=10, max_connections=None, ssl_context=None, backlog=511,
    max_header_size=16384, max_headers=100, max_target_size=8190, trusted_proxies=None, wsgi_app=None,
    wsgi_websockets=False, http_max_body_size=16 MiB, http_keepalive_timeout=5,
    http_body_timeout=60, http_write_timeout=10, http_graceful_timeout=10,
    wsgi_threads=32, broker=None, reuse_port=False)``

    - ``port``: 0-65535 (0 picks a free port; ``server.port`` tells which).
    - ``host``: None listens on all interfaces (IPv6 and IPv4 where the
      system allows both), or one address such as ``"127.0.0.1"``.
    - ``sock``: instead of ``port``/``host``, an already bound and listening
      stream socket (TCP or Unix) to accept on: one a supervisor or systemd
      handed over (``socket.socket(fileno=3)``). The server closes it.
    - ``unix_path``: instead of ``port``/``host``, listen on a Unix socket
      at this path (for ``proxy_pass http://unix:/run/app.sock:`` in
      nginx). A stale socket file there is removed; a live one raises
      ``OSError``; the file is removed again on ``close()``. Peers'
      addresses are ``("unix:/run/app.sock", 0)`` (``trusted_proxies=["unix"]``
      trusts them, so ``request.remote_address`` is the proxy's client).
    - ``auto_listen``: listen in the constructor. With False the server has
      a ``listen()`` method to call; with True it has none (as ws-multipath).
    - ``reject_unhandled``: answer 400 to paths without a handler; in the
      first ``HANDLERS_GRACE`` (1 s) after listening, or until
      ``serve_forever()``, such an upgrade first waits for the
      ``create_handler`` calls that follow the constructor.
    - ``open_timeout``: seconds from accept to the end of the upgrade request,
      TLS handshake included; slower clients are dropped.
    - ``max_connections``: open WebSocket connections on all paths together;
      upgrades past it get 503. None: no limit. Once listening, the server
      logs how many this process can hold (``capacity()``): a WARNING when
      ``max_connections`` is above that.
    - ``ssl_context``: a server-side ``ssl.SSLContext`` to serve ``wss://``.
    - ``backlog``: the listen queue (the stdlib's default of 5 refuses
      bursts; Node uses 511).
    - ``max_header_size`` / ``max_headers``: limits of the request head
      (431 beyond).
    - ``max_target_size``: the longest request target (path and query), in
      bytes (414 beyond, said as soon as the request line is that long);
      within ``max_header_size``. The same rules hold for every request of
      a connection (see ``http/strictness.py`` and the security page).
    - ``trusted_proxies``: addresses and networks (``"10.0.0.0/8"``,
      ``"::1"``), ``"unix"`` or ``"*"`` whose ``Forwarded`` /
      ``X-Forwarded-*`` headers say who the client is
      (``request.remote_address``, ``secure``, ``host``); see
      ``http/proxies.py``. None by default: the headers are ignored.
    - ``wsgi_app``: a WSGI app (PEP 3333) that serves plain HTTP requests on
      the same port (HTTP/1.1 with keep-alive); without one they get 426.
    - ``wsgi_websockets``: give upgrades to paths no handler serves to
      ``wsgi_app``, with the socket in ``environ["werkzeug.socket"]``
      (Flask-Sock and simple-websocket apps run unchanged).
    - ``http_max_body_size``: largest request body, in bytes (413 beyond).
    - ``http_keepalive_timeout``: seconds an idle HTTP connection waits for
      its next request before it is closed.
    - ``http_body_timeout``: seconds a client has to send a request body,
      counted from the app's first read.
    - ``http_write_timeout``: seconds a response write may wait without
      progress (the client taking 64 KiB, or the rest of the write) before
      the connection is dropped.
    - ``http_graceful_timeout``: seconds ``close()`` lets HTTP requests in
      flight finish before their connections are cut.
    - ``wsgi_threads``: most threads that run ``wsgi_app`` at once (as
      gunicorn's ``--threads``); more requests wait for a free one, first
      come first served. Idle keep-alive connections hold none (see
      docs/topics/threads.rst for sizing).
    - ``broker``: None (broadcasts reach this process's clients), a URL
      (``"redis://host:6379/0"``, needs the ``[redis]`` extra, i.e. the ``redis`` package)
      or a broker object (``RedisBroker(client=..., prefix=...)``,
      ``LocalBroker()``): broadcasts reach every server sharing it. The
      server closes a broker it made from a URL, not one it was given. See
      docs/scaling.rst.
    - ``reuse_port``: bind with ``SO_REUSEPORT`` so that several processes
      serve one port (Linux only; ``ValueError`` elsewhere).

    Events: ``'connection'`` ``(ws, request, path)``, ``'unhandled'``
    ``(socket)``, ``'close'`` ``()``, ``'error'`` ``(exc)``.

    Binding happens synchronously: ``OSError`` (port in use, ...) is raised by
    the constructor (or by ``listen()``).
    """

    EVENTS = frozenset({"connection", "unhandled", "close", "error", "listening"})

    listen = NoListen()

    def __init__(
        self,
        port: int = NO_PORT,
        host: Optional[str] = None,
        auto_listen: bool = True,
        reject_unhandled: bool = True,
        *,
        sock: Optional[socket.socket] = None,
        unix_path: Optional[str] = None,
        open_timeout: float = 10.0,
        max_connections: Optional[int] = None,
        ssl_context: Optional[ssl.SSLContext] = None,
        backlog: int = 511,
        max_header_size: int = 16384,
        max_headers: int = 100,
        max_target_size: int = MAX_TARGET_SIZE,
        trusted_proxies: Optional[Iterable[str]] = None,
        wsgi_app: Optional[Callable[..., Any]] = None,
        wsgi_websockets: bool = False,
        http_max_body_size: int = 16 * 1024 * 1024,
        http_keepalive_timeout: float = 5.0,
        http_body_timeout: float = 60.0,
        http_write_timeout: float = 10.0,
        http_graceful_timeout: float = 10.0,
        wsgi_threads: int = 32,
        broker: Union[str, "Broker", None] = None,
        reuse_port: bool = False,
    ) -> None:
        super().__init__()
        check_listen_arguments(port is not NO_PORT, host, sock, unix_path, reuse_port)
        if port is NO_PORT:
            port = 0
        check_arguments(port, host, open_timeout, max_connections, ssl_context, backlog, max_header_size, max_headers, max_target_size)
        proxies = TrustedProxies(trusted_proxies or ())
        wsgi = wsgi_options(
            wsgi_app, wsgi_websockets, http_max_body_size, http_keepalive_timeout, http_body_timeout,
            http_write_timeout, http_graceful_timeout, float(open_timeout), max_header_size, max_headers, proxies, max_target_size,
            wsgi_threads,
        )
        if reuse_port:
            check_reuse_port()
        self._cluster: Optional["ClusterNode"] = None
        if broker is not None:
            from .cluster.broker import make_broker
            from .cluster.node import ClusterNode

            made, owned = make_broker(broker)
            self._cluster = ClusterNode(self, made, owned)
        self._presence: Optional["Presence"] = None  # made with the first handler that has presence=True
        self._directory = Directory()  # ws.id -> open connection, for send_to
        self._max_connections = max_connections
        self._routes: RoutingTable[WebSocketHandler] = RoutingTable()
        self._handlers: list[WebSocketHandler] = []  # every handler made, closed ones too (their counts stay)
        self._timers = Timers()
        self._flusher = Flusher()
        self._sysmon = Sysmon()
        # _lock guards: the connection count, the loop count and the closing state
        self._lock = threading.Lock()
        self._open_connections = 0
        self._open_loops = 0  # event loops of the handlers not closed: LOOP_FDS descriptors each (capacity())
        self._init_closing()
        self._wsgi_graceful = None if wsgi is None else wsgi.graceful_timeout
        self._wsgi = None if wsgi is None else WSGIServer(wsgi, self._timers, self._maybe_finish_close)
        self._http = HTTPSide(
            self._routes,
            self._timers,
            HeadLimits(float(open_timeout), max_header_size, max_headers, proxies, max_target_size),
            ssl_context,
            bool(reject_unhandled),
            self,
            self._detach,
            self._wsgi,
            self._sysmon,
        )
        self._acceptor = Acceptor(
            host, port, sock, unix_path, backlog, bool(reuse_port), self._http.serve, self._closing_event, functools.partial(self.emit, "error"),
            self._http.take,
        )
        if auto_listen:
            try:
                self._listen()
            except BaseException:
                self._http.close()  # the head loop's descriptors, opened with it
                if self._cluster is not None:
                    self._cluster.close()
                if sock is not None:
                    sock.close()
                raise
        else:
            self.listen = self._listen

    # -- state --------------------------------------------------------------

    @property
    def port(self) -> Optional[int]:
        """The bound port (the real one when 0 was asked), or the requested
        one before listening; None on a Unix socket."""
        return self._acceptor.port

    @property
    def address(self) -> Any:
        """``(host, port)`` the server is bound to; a Unix socket's path."""
        return self._acceptor.address

    @property
    def listening(self) -> bool:
        """True exactly while the server accepts connections."""
        return self._acceptor.bound and not self._closing

    def stats(self) -> dict[str, Any]:
        """The server's counters: totals over its paths, what no handler
        saw (``refused``: ``no_handler``, ``not_websocket``, ``bad_request``)
        and ``paths``: each path's ``handler.stats()``; plain dicts, shape in
        ``ws_multipath/stats.py``."""
        with self._lock:
            handlers = list(self._handlers)
        return server_stats([handler.stats() for handler in handlers], self._http.refusals.snapshot())

    def capacity(self) -> Capacity:
        """How many connections this process can hold, counting the ones
        open now, and which limit sets that: file descriptors or memory
        (``ws_multipath.sync.capacity``; an open connection has no thread of
        its own, so the thread limits give ``Capacity.threads``, the room
        left for threads, instead). It reads ``/proc`` on each call; the
        handlers' event loops are counted as open (3 descriptors each), a
        broker's connections are kept free (``Broker.descriptors()``); a
        limit it cannot read is left out (``Capacity.unknown``), and
        ``connections`` is None when none could be read."""
        with self._lock:
            held, loops = self._open_connections, self._open_loops
        return measure_capacity(held, listening=self._acceptor.bound, loops=loops,
                                broker_fds=self._cluster.broker.descriptors() if self._cluster else 0)

    def __repr__(self) -> str:
        return f"<MultipathServer {self.address} listening={self.listening}>"

    def __enter__(self) -> "MultipathServer":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # -- listening ----------------------------------------------------------

    def _listen(self) -> None:
        """Bind and start accepting on a background thread."""
        with self._lock:
            if self._closing:
                raise RuntimeError("the server is closed")
            if self._acceptor.bound:
                raise RuntimeError("the server is already listening")
            try:
                self._acceptor.bind()
            except OSError as exc:  # name the address: "[Errno 98] cannot listen on 127.0.0.1:8000: Address already in use"
                raise OSError(exc.errno, f"cannot listen on {format_listen_address(self._acceptor.address)}: {exc.strerror or exc}") from exc
        self._flusher.open()  # its descriptors now, before connections can fill the table
        if self._wsgi is not None:
            self._wsgi.open()  # the same for the keep-alive parking lot
        self._routes.expect_handlers(HANDLERS_GRACE)
        self._acceptor.start()
        report_capacity(self._max_connections, self.capacity)  # one line: the connection ceiling, a WARNING if below max_connections
        with self._lock:
            handlers = list(self._handlers)
        self.emit("listening")
        for handler in handlers:  # ws's 'listening', on the handlers made before
            handler.emit("listening")

    def serve_forever(self) -> None:
        """Block until the server is closed: by ``close()`` from another
        thread, or by Ctrl-C or SIGTERM, which close it gracefully."""
        if not self._acceptor.bound and not self._closing:
            self._listen()
        self._routes.expect_handlers(0)  # the handlers are made: no path waits for one any more
        wait_closed(self._closed_event, self.close)

    # -- handlers -----------------------------------------------------------

    def create_handler(self, path: str, **options: Unpack[HandlerOptionsDict]) -> WebSocketHandler:
        """Serve WebSocket connections on ``path`` with the given options
        (see ``HandlerOptions``); returns the handler. ``path`` must start
        with ``/``; a second handler for one path raises ``ValueError``.

        ``path`` may be a route pattern, ``/rooms/<room>``, ``/u/<int:id>``
        (see ``RoutingTable`` for the converters and which handler wins):
        the values arrive in ``request.path_params``. An invalid pattern, or
        one matching the same paths as a registered one (``/rooms/<name>``
        beside ``/rooms/<room>``), raises ``ValueError``."""
        check_path(path)
        handler = WebSocketHandler(self, path, HandlerOptions.from_kwargs(**options))
        try:
            with self._lock:
                if self._closing:
                    raise RuntimeError("the server is closed")
                self._routes.add(path, handler)
                self._handlers.append(handler)
                self._open_loops += handler.options.loops
        except BaseException:
            handler._stop_loops()  # never served: its loops' descriptors go now
            raise
        if handler.options.presence:
            self._presence_for(handler)
        if self._cluster is not None:
            self._cluster.add(handler)
        return handler

    def unhandled_request(self, sock: socket.socket) -> Optional[Request]:
        """The request read from a socket given to ``'unhandled'`` listeners
        (with ``reject_unhandled=False``); its ``buffered`` holds any bytes
        read past the head."""
        return self._http.unhandled_request(sock)

    def _detach(self, sock: socket.socket) -> None:
        """An ``'unhandled'`` listener owns ``sock``: the accept loop leaves it open."""
        self._acceptor.detach(sock)
