"""The handshake of one path's handler: ``Accepting``, the part of
``WebSocketHandler`` that answers an upgrade request the server routed to
it: the checks and hooks (origin, ``should_handle``, ``verify_client``,
subprotocol, permessage-deflate, the ``'headers'`` listeners), a
``max_connections`` slot, the 101 response sent with the connection already
counted, or the refusal (or the socket given to ``'client_error'``
listeners), and the ``WebSocket`` made for it (``websocket_class``).

The fields are the handler's (``handler.py``).
"""

from __future__ import annotations

import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Union, cast

from .errors import HandshakeError, HookError
from .http.hooks import call_hook, final_response
from .http.negotiation import negotiate
from .http.request import Request
from .http.upgrade import error_response
from .log import format_address, logger
from .protocol.frames import FrameReader, FrameWriter
from .sync.connection import WebSocket
from .sync.sockets import peer_half_closed
from .sync.transport import Transport

if TYPE_CHECKING:
    from .emitter import EventEmitter
    from .host import HandlerHost
    from .options import HandlerOptions
    from .stats import HandlerTotals, Refusals
    from .sync.loop import EventLoop

__all__ = ["Accepting"]


class Accepting:
    """The handshake side of ``WebSocketHandler`` (a mixin)."""

    if TYPE_CHECKING:  # the handler's fields and methods used here
        path: str
        options: HandlerOptions
        _server: HandlerHost
        _lock: threading.Lock
        _closing: bool
        _connections: set[WebSocket]
        _totals: HandlerTotals
        _refusals: Refusals
        _listeners: dict[str, tuple[Callable[..., Any], ...]]

        def _listener_failed(self, exc: BaseException, event: str = "", origin: Any = None) -> bool: ...
        def _remove(self, ws: WebSocket) -> None: ...
        def _next_loop(self) -> EventLoop: ...

    def _handshake(self, sock: socket.socket, request: Request, end_handshake: Callable[[], None]) -> Union[WebSocket, bool]:
        """Run the checks and hooks, then send the 101; returns the open
        connection, False once an error response was sent, or True when a
        ``'client_error'`` listener owns the socket.

        A ``max_connections`` slot is held from the checks' end; the
        connection takes it over, or it is released here, whatever happened.
        """
        reserved = handed_over = False
        stage = ["bad_upgrade"]  # the refusal's key (stats.REFUSAL_KEYS) if one comes
        try:
            headers, protocol, extensions, deflate = negotiate(request, self.options, stage, lambda: self._closing)
            stage[0] = "max_connections"
            reserved = self._server._reserve_connection()
            if not reserved:
                raise HandshakeError(503, "too many connections (max_connections)")
            stage[0] = "handshake_hook"
            response = final_response(self._listeners.get("headers", ()), headers, request)
            if not request.buffered and peer_half_closed(sock):
                logger.info("dropping %s on %s: it closed its side before the 101", format_address(request.remote_address), self.path)
                return False
            ws = call_hook("websocket_class", self._open, sock, request, protocol, extensions, deflate)
            handed_over = True
        except HookError as exc:
            self._listener_failed(exc, exc.hook)
            self._refuse(sock, request, HandshakeError(500), "hook_error")
            return False
        except HandshakeError as exc:
            if stage[0] == "bad_upgrade" and self._listeners.get("client_error"):
                end_handshake()
                return self._client_error(sock, request, exc)
            self._refuse(sock, request, exc, stage[0])
            return False
        finally:
            if reserved and not handed_over:
                self._server._release_connection()
        return ws if self._register_and_respond(ws, response) else False

    def _client_error(self, sock: socket.socket, request: Request, error: HandshakeError) -> bool:
        """ws's ``'wsClientError'``: an invalid upgrade (not a hook's
        refusal) goes to the ``'client_error'`` listeners, which own the
        socket and the answer from now on. True; False (the socket closed
        here) when one of them raised."""
        self._refusals.add(error.status, "bad_upgrade")
        logger.info("invalid upgrade from %s on %s: %s (to the 'client_error' listeners)", format_address(request.remote_address), self.path, str(error))
        failed: list[BaseException] = []
        for listener in self._listeners.get("client_error", ()):
            try:
                listener(error, sock, request)
            except Exception as exc:  # noqa: BLE001 - user code: reported, and the socket is not left open
                failed.append(exc)
                self._listener_failed(exc, "client_error")
        if failed:
            sock.close()
            return False
        return True

    def _refuse(self, sock: socket.socket, request: Request, error: HandshakeError, key: str) -> None:
        self._refusals.add(error.status, key)
        client = format_address(request.remote_address)
        logger.info(
            "refused %s on %s: %s (%s)", client, self.path, str(error), key,  # str: a record kept must not keep the handshake's frames
            extra={"event": "refused", "path": self.path, "client": client, "status": error.status, "reason": key},
        )
        _send_quietly(sock, error_response(error))

    def _register_and_respond(self, ws: WebSocket, response: bytes) -> bool:
        """Send the 101 while holding the connection's write lock, with the
        connection already in ``clients``: a broadcast that sees it is queued
        behind the 101, and a client that has its 101 is sure to be counted."""
        try:
            with ws._transport.writing() as write:
                with self._lock:
                    closing = self._closing
                    if not closing:
                        self._connections.add(ws)
                        self._server._directory.add(ws)
                    self._totals.accepted += 1
                write(response)
                ws._transport.bytes_out = 0  # the counters start after the 101
                ws._opened_at = time.monotonic()
        except OSError:
            self._remove(ws)
            return False
        if closing:  # the handler closed during the handshake
            ws._start_close(1001, "going away", b"going away", blocking=False)
        return True

    def _open(self, sock: socket.socket, request: Request, protocol: str, extensions: str, deflate: Any) -> WebSocket:
        options = self.options
        server = self._server
        transport = Transport(sock, server._flusher, options.write_timeout)
        threshold = options.per_message_deflate.threshold if options.per_message_deflate else 0
        websocket_class: type[WebSocket] = options.websocket_class or WebSocket
        ws = websocket_class(
            transport,
            request,
            options,
            FrameReader(options.payload_limit, deflate, options.skip_utf8_validation, options.max_fragments),
            FrameWriter(deflate, threshold),
            server._timers,
            protocol=protocol,
            extensions=extensions,
            parent=cast("EventEmitter", self),  # the handler: errors go up to it
            on_closed=self._remove,
            loop=self._next_loop(),
        )
        if options.presence:
            ws._presence = server._presence
        return ws


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError:
        pass
