"""One path's WebSocket endpoint: ``WebSocketHandler``, made by
``MultipathServer.create_handler``.

It finishes the handshake of the upgrade requests the server routes to it
(origin check, ``verify_client``, subprotocol, permessage-deflate, the
``'headers'`` event, the 101 response), keeps its open connections, sends
broadcasts and closes them all with 1001 when it closes. The handshake
itself lives in ``accepting.py``.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Collection, Container, Mapping
from typing import TYPE_CHECKING, Any, Callable, Optional, Union, cast

from .accepting import Accepting
from .broadcast_targets import Outside, checked_broadcast, converted
from .emitter import EventEmitter
from .http.request import Request
from .http.routing import compile_pattern, is_pattern
from .http.wsgi_socket import linger
from .log import format_address, logger
from .host import HandlerHost
from .options import HandlerOptions
from .protocol.frames import FrameWriter, Payload
from .stats import HandlerTotals, Refusals, drop_key
from .sync.connection import WebSocket
from .sync.loop import EventLoop

if TYPE_CHECKING:
    from .cluster.presence import Presence, PresenceEntry

__all__ = ["WebSocketHandler"]


class WebSocketHandler(Accepting, EventEmitter):
    """The WebSocket endpoint of one path.

    Events: ``'connection'`` ``(ws, request)`` after the 101 response is sent;
    ``'headers'`` ``(headers, request)`` with the response headers as a
    mutable list of ``(name, value)`` pairs, just before they are sent;
    ``'error'`` ``(exc)``; ``'close'`` ``()`` once the handler is closed and
    its last connection has ended; ``'listening'`` ``()`` when the server
    starts listening (a handler created later gets none: the server already
    listens); ``'client_error'`` ``(error, sock, request)`` for an invalid
    upgrade request (ws's ``'wsClientError'``: method, headers, key,
    version, subprotocols; not a hook's refusal): with a listener, it owns
    ``sock`` and answers (``error.status``, ``error.reason``) as it likes;
    without one the client gets ``error``'s status as before. With
    ``presence=True``, ``'join'`` ``(entry)`` when a connection of this
    path enters presence or changes its info, in this process or any other
    sharing the broker, and ``'leave'`` ``(entry)`` when it goes
    (``PresenceEntry``: ``.id``, ``.path``, ``.info``, ...), called on the
    server's presence thread, in order.

    The handshake's hooks (``verify_client``, a callable ``allowed_origins``,
    ``handle_protocols``, the ``'headers'`` listeners, run in order) may
    refuse the upgrade by raising ``HandshakeError``, which is sent as
    given. Any other exception, an invalid result, or a response header
    that is not an HTTP token name with a str value free of CR, LF and NUL
    stops the handshake: the client gets 500 and a ``HookError`` naming the
    hook (``__cause__``: the original exception) goes to ``'error'``, then
    to the server's, then to the log. Later ``'headers'`` listeners are not
    called, and the ``max_connections`` slot is released.

    ``_lock`` guards the set of open connections and the closing state.
    """

    EVENTS = frozenset({"connection", "headers", "error", "close", "listening", "client_error", "join", "leave"})

    def __init__(self, server: HandlerHost, path: str, options: HandlerOptions) -> None:
        super().__init__(error_parent=cast(EventEmitter, server))  # the server: errors go up to it
        self.path = path
        self.options = options
        self._server = server
        self._lock = threading.Lock()
        self._connections: set[WebSocket] = set()
        self._closing = False
        self._closed = False
        self._close_callbacks: list[Callable[[], Any]] = []
        self._totals = HandlerTotals()  # guarded by _lock
        self._refusals = Refusals()
        self._route = compile_pattern(path) if is_pattern(path) else None
        name = path if options.loops == 1 else path + "#{}"
        self._loops = [EventLoop(name.format(index), server._sysmon) for index in range(options.loops)]
        for loop in self._loops:
            server._sysmon.watch(loop)
        self._loop_turn = 0

    def __repr__(self) -> str:
        return f"<WebSocketHandler {self.path} clients={len(self._connections)}>"

    @property
    def address(self) -> Any:
        """The server's address while this handler serves (ws's
        ``server.address()``); None once ``close()`` was called."""
        return None if self._closing else self._server.address

    @property
    def clients(self) -> Optional[frozenset[WebSocket]]:
        """A snapshot of the open connections; None when ``client_tracking`` is off."""
        if not self.options.client_tracking:
            return None
        with self._lock:
            return frozenset(self._connections)

    def stats(self) -> dict[str, Any]:
        """This path's counters: open connections, accepted and refused
        upgrades, messages and bytes in and out, closes by code, drops by
        reason; a plain dict, shape in ``ws_multipath/stats.py``. Cheap
        (no lock on the message path); call it as often as you scrape."""
        with self._lock:
            live = [(ws._incoming.messages_in, ws._transport.messages_out, ws._incoming.bytes_in, ws._transport.bytes_out) for ws in self._connections]
            return self._totals.snapshot(self.path, live, self._refusals.snapshot())

    # -- presence -------------------------------------------------------------

    def presence(self, path: Optional[str] = None) -> "list[PresenceEntry]":
        """The connections of this path in presence, in every process that
        shares the server's broker (this process's only, without one): a
        list of ``PresenceEntry`` (``.id``, ``.path``, ``.route``,
        ``.info``, ``.node``), in no particular order. A route pattern's
        handler has one entry per connection of any of its paths; ``path``
        (``"/rooms/lobby"``) selects one. It reads this process's replica,
        kept by the presence thread: no I/O. Needs ``presence=True``."""
        return self._presence_of().entries(self.path, path)

    def presence_count(self, path: Optional[str] = None) -> int:
        """``len(presence(path))`` without building the list."""
        return self._presence_of().count(self.path, path)

    def _presence_of(self) -> "Presence":
        presence: Optional["Presence"] = self._server._presence if self.options.presence else None
        if presence is None:
            raise RuntimeError(f"presence is off on {self.path}: create_handler(path, presence=True)")
        return presence

    # -- broadcast ------------------------------------------------------------

    def broadcast(
        self,
        data: Union[str, Payload],
        exclude: Union[WebSocket, Collection[WebSocket], None] = None,
        *,
        path_params: Optional[Mapping[str, Any]] = None,
        local: bool = False,
    ) -> int:
        """Send ``data`` to every open client of this path except ``exclude``.

        With ``path_params`` (a route pattern's handler), only to the clients
        whose ``request.path_params`` have those items: one room of
        ``/rooms/<room>`` is ``path_params={"room": "lobby"}``. A value may
        be given as the pattern converts it or as a string (``7`` or ``"7"``
        for ``<int:id>``).

        Never blocks on a client: each message is queued per client and
        written as that client reads, so a slow or dead client delays nobody
        (a client that falls more than 16 MiB behind is dropped). Returns the
        number of clients the message was queued for.

        With a broker (``MultipathServer(broker=...)``) the message is also
        published for the other servers of the cluster, which deliver it to
        their clients of this path (and ``path_params``) except ``exclude``;
        the count is still this process's; ``local=True`` sends to this
        process's clients only. See docs/scaling.rst.
        """
        data, excluded, params = checked_broadcast(data, exclude, path_params)
        skipped = excluded if params is None else Outside(converted(self._route, params), excluded)
        sent = self._broadcast_local(data, skipped)
        cluster = self._server._cluster
        if cluster is not None and not local:
            cluster.publish(self, data, excluded, params)
        return sent

    def _broadcast_local(self, data: Union[str, bytes], skipped: Container[WebSocket]) -> int:
        """Deliver to this process's clients (``broadcast``, and the cluster's subscriber for other processes' messages)."""
        with self._lock:
            targets = [ws for ws in self._connections if ws not in skipped]
        header, payload = FrameWriter().message(data)
        shared = header + payload
        count = 0
        for ws in targets:
            if ws._post(data, shared):
                count += 1
        return count

    # -- closing --------------------------------------------------------------

    def close(self, callback: Optional[Callable[[], Any]] = None) -> None:
        """Stop serving this path and close its clients with 1001.

        Returns at once; ``'close'`` is emitted and ``callback()`` called once
        every client has gone (each within ``close_timeout``). Idempotent.
        """
        with self._lock:
            already_closed = self._closed
            if callback is not None and not already_closed:
                self._close_callbacks.append(callback)
            starting = not self._closing
            self._closing = True
            clients = list(self._connections)
        if already_closed:
            if callback is not None:
                callback()
            return
        if not starting:
            return
        self._server._routes.remove(self.path, self)
        if self._server._cluster is not None:
            self._server._cluster.remove(self)
        for ws in clients:
            ws._start_close(1001, "going away", b"going away", blocking=False)
        self._maybe_finish_close()

    def _maybe_finish_close(self) -> None:
        with self._lock:
            if not self._closing or self._closed or self._connections:
                return
            self._closed = True
            callbacks, self._close_callbacks = self._close_callbacks, []
        self._stop_loops()  # its connections are gone
        self.emit("close")
        for callback in callbacks:
            try:
                callback()
            except Exception as exc:  # noqa: BLE001 - user code
                self._listener_failed(exc, "close callback")
        self._server._handler_closed(self)

    # -- the handshake ----------------------------------------------------

    def _accept(self, sock: socket.socket, request: Request, end_handshake: Callable[[], None]) -> Union[WebSocket, bool]:
        """Answer the upgrade ``request`` on ``sock``: the open connection,
        for the caller to ``_serve`` once the frames that read and routed the
        request are gone; False once an error response was sent; True when a
        ``'client_error'`` listener took the socket over. ``end_handshake``
        cancels the server's handshake deadline."""
        ws = self._handshake(sock, request, end_handshake)
        if ws is False:  # refused (its max_connections slot released): a client still
            linger(sock)  # sending reads its status; on TLS, close_notify (the deadline bounds this)
        if isinstance(ws, bool):
            return ws
        end_handshake()
        if logger.isEnabledFor(logging.INFO):  # its fields cost more than the line when nobody logs it
            logger.info(
                "accepted %s (subprotocol %s, extensions %s)", ws._label(), ws.protocol or "-", ws.extensions or "-",
                extra={"event": "accepted", "path": self.path, "client": format_address(request.remote_address),
                       "peer": format_address(request.peer_address), "subprotocol": ws.protocol, "extensions": ws.extensions},
            )
        return ws

    def handle_upgrade(self, sock: socket.socket, head: bytes = b"", address: Any = None) -> None:
        """ws's ``handleUpgrade`` (its ``noServer`` mode): serve the upgrade
        request on ``sock``, a connected socket (plain or TLS) whose request
        head, or its start, ``head``, someone else has read (another server,
        a test); bytes after the head are the client's first frames. The
        path must be this handler's. The same limits, checks, hooks and
        handshake deadline apply as for the server's own connections, a
        refusal gets its status, and ``'connection'`` comes as usual.

        Returns at once: the handshake and the connection run on a thread of
        their own, which owns ``sock`` from now on and closes it at the end.
        """
        if address is None:
            try:
                address = sock.getpeername()
            except OSError:
                pass
        thread = threading.Thread(target=self._server._http.serve_upgrade, args=(self, sock, bytes(head), address), name="ws_multipath-connection", daemon=True)
        thread.start()

    def _serve(self, ws: WebSocket) -> bool:
        """The ``'connection'`` listeners, then the connection goes on in an
        event loop: True when the loop owns its socket from now on."""
        ws._watch()
        self.emit("connection", ws, ws.request)
        self._server.emit("connection", ws, ws.request, self.path)
        if ws._presence is not None:
            ws._presence.enter(ws, self.path)
        return ws._serve()

    def _stop_loops(self) -> None:
        for loop in self._loops:
            self._server._sysmon.forget(loop)
            loop.stop()

    def _next_loop(self) -> EventLoop:
        """The loop for a new connection: each in turn."""
        loops = self._loops
        self._loop_turn = turn = (self._loop_turn + 1) % len(loops)
        return loops[turn]

    def _remove(self, ws: WebSocket) -> None:
        """Forget a connection that ended (or whose 101 could not be sent):
        log it and add its counts to the totals."""
        transport, incoming = ws._transport, ws._incoming
        code = ws.sent_close_code or 1006
        drop = drop_key(ws._dropped)
        if ws._presence is not None:
            ws._presence.leave(ws)
        self._server._directory.remove(ws)
        with self._lock:
            self._connections.discard(ws)
            self._totals.ended(incoming.messages_in, transport.messages_out, incoming.bytes_in, transport.bytes_out, code, drop)
        if logger.isEnabledFor(logging.INFO):
            self._log_closed(ws, code, drop)
        self._server._release_connection()
        self._maybe_finish_close()

    def _log_closed(self, ws: WebSocket, code: int, drop: Optional[str]) -> None:
        transport, incoming = ws._transport, ws._incoming
        duration = time.monotonic() - ws._opened_at if ws._opened_at else 0.0
        logger.info(
            "closed %s: %d%s after %.2f s, %d messages in (%d bytes), %d out (%d bytes)%s",
            ws._label(), code, f" {ws.sent_close_reason!r}" if ws.sent_close_reason else "", duration,
            incoming.messages_in, incoming.bytes_in, transport.messages_out, transport.bytes_out, f", dropped: {drop}" if drop else "",
            extra={"event": "closed", "path": self.path, "client": format_address(ws.remote_address), "code": code,
                   "reason": ws.sent_close_reason, "duration": round(duration, 3), "messages_in": incoming.messages_in,
                   "messages_out": transport.messages_out, "bytes_in": incoming.bytes_in, "bytes_out": transport.bytes_out, "drop": drop},
        )
