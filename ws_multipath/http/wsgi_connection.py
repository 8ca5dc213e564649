"""One HTTP/1.1 connection served to the WSGI app: its life in turns on
the server's pool threads (``wsgi.py``), the request loop on h11
(keep-alive, pipelining, the head deadline of later requests), and what
ends a turn: the connection waits for its next request in the keep-alive
parking lot (``keepalive.py``), ends, or becomes a WebSocket (a later
upgrade, on a thread of its own) or the app's (``handover.py``). One
request and its response: ``wsgi_exchange.py``; the socket, with the
deadlines, lingering and the flags that ``close()`` from other threads uses:
``wsgi_socket.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import socket
import time
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

import h11

from ..errors import HandshakeError
from ..log import format_address, logger
from .chunked import ChunkedChecker, MalformedChunk
from .handover import HANDOVER_CLOSE_WAIT, SocketHandover
from .request import Request
from .upgrade import error_response, is_upgrade_request
from .wsgi_body import ClientGone
from .wsgi_exchange import HTTPExchange
from .wsgi_socket import HeadNotReceived

if TYPE_CHECKING:
    from .wsgi import WSGIServer

__all__ = ["HTTPConnection", "PARK", "CLOSE", "HANDED"]

# How a connection's turn on a thread ended (``WSGIServer`` acts on it):
PARK = "park"  # wait for the next request in the keep-alive parking lot
CLOSE = "close"  # done: close the socket
HANDED = "handed"  # the socket is a WebSocket's, on a thread of its own


class HTTPConnection(HTTPExchange):
    """One HTTP connection: served in turns on pool threads, parked
    (``keepalive.py``) between them; whoever runs a turn owns it."""

    def __init__(self, server: WSGIServer, sock: socket.socket, first: Request, upgrade: Optional[Callable[[socket.socket, Request], bool]]) -> None:
        super().__init__(server.options, sock, first)
        self.server = server
        self._upgrade = upgrade
        self._head_so_far = b""  # a later request's head, not whole yet (at most max_header_size)
        self._head_deadline = 0.0  # when it must be whole (monotonic)

    # -- closing (other threads) ---------------------------------------------

    def server_closing(self) -> None:
        self._socket.server_closing()
        if self._handover is not None and self._handover.taken:
            self._handover.send_going_away()

    def abort(self) -> None:
        self._socket.abort()

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        """Close the socket (its owner, once the connection ended)."""
        self.sock.close()

    # -- the request loop: one turn on a pool thread -----------------------------

    def first(self, head: bytes, rest: bytes) -> str:
        """Serve the first request, whose ``head`` ``handshake.py`` read and
        checked, with ``rest`` after it; then those that follow at once.
        Returns ``PARK``, ``CLOSE`` or ``HANDED``."""
        return self._turn(self._requests, head, rest)

    def resume(self) -> str:
        """The parked connection's socket became readable: read the next
        head and serve it, and those that follow at once. Returns ``PARK``
        (nothing to read after all, or a head not whole yet: park again,
        until ``park_deadline()``), ``CLOSE`` or ``HANDED``. A connection
        parked while lingering after its last response drops what came."""
        if self._socket.linger_deadline is not None:
            return CLOSE if self._socket.drain_now() else PARK
        return self._turn(self._resume)

    def _turn(self, step: Callable[..., str], *args: Any) -> str:
        """One turn on a pool thread: a linger started in it is parked
        (``PARK`` instead of ``CLOSE``; ``park_deadline()`` says until when)."""
        self._socket.parks = True
        try:
            outcome = step(*args)
        except ClientGone as exc:
            logger.debug("dropping %s: %s", format_address(self.address), exc)
            return CLOSE
        if outcome is CLOSE and self._socket.linger_deadline is not None:
            return PARK
        return outcome

    def _resume(self) -> str:
        data = self._socket.read_now()
        if data is None:
            return PARK
        if not data:
            if self._head_so_far:
                self._refuse(HandshakeError(400, "connection closed before the end of the request head"))
            return CLOSE
        return self._next_request(data)

    def _next_request(self, data: bytes) -> str:
        """Serve the request whose head starts with ``data`` (and those
        that follow at once); ``PARK`` while its head is not whole."""
        following = self._read_head(data)
        if following is None:
            return CLOSE
        if isinstance(following, bytes):
            return PARK
        return self._requests(*following)

    def _requests(self, head: bytes, rest: bytes) -> str:
        while True:
            started = self._start(head, rest)
            if started is None:
                return CLOSE
            event, request = started
            if is_upgrade_request(request):
                return self._later_upgrade(request)
            if not self._serve(event, request) or not self._next_cycle():
                self._socket.linger()
                return CLOSE
            # Bytes read past the request (pipelining), in the kernel or, on
            # TLS, decrypted already (which no selector sees): served now.
            data = self.h11.trailing_data[0] or self._socket.read_now()
            if data is None:
                return PARK
            if not data:
                return CLOSE
            following = self._read_head(data)
            if following is None:
                return CLOSE
            if isinstance(following, bytes):
                return PARK
            head, rest = following

    def _start(self, head: bytes, rest: bytes) -> Optional[tuple[h11.Request, Request]]:
        """A fresh h11 parser for a checked ``head`` and the bytes after it;
        None when the request was refused."""
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=self.options.max_header_size)
        self.h11.receive_data(head)
        try:
            event = self.h11.next_event()
            if not isinstance(event, h11.Request):
                raise HandshakeError(400, "malformed HTTP request")
            request = self._request(event)
            self._chunked = ChunkedChecker(self.options.max_header_size) if request.headers.get_all("Transfer-Encoding") else None
            if rest:  # b"" would tell h11 the client closed
                self._receive_body(rest)
        except h11.RemoteProtocolError as exc:
            self._refuse(HandshakeError(exc.error_status_hint, f"malformed HTTP request: {exc}"))
            return None
        except HandshakeError as exc:
            self._refuse(exc)
            return None
        except MalformedChunk as exc:
            self._refuse(HandshakeError(400, f"malformed chunked body: {exc}"))
            return None
        return event, request

    def _read_head(self, data: bytes) -> Union[tuple[bytes, bytes], bytes, None]:
        """A later request's head, from its first ``data`` on (after the
        bytes of it read before), by the first request's rules, and the
        bytes after it; the bytes so far (kept) when it is not whole yet;
        None when the connection ends."""
        options = self.options
        if not self._head_so_far:
            self._head_deadline = time.monotonic() + options.head_timeout
        try:
            result = self._socket.read_head_now(self._head_so_far + data, options.max_header_size, options.max_headers, options.max_target_size)
        except HandshakeError as exc:
            self._refuse(exc)
            return None
        except HeadNotReceived as exc:
            logger.info("dropping %s: %s", format_address(self.address), exc)
            return None
        self._head_so_far = result if isinstance(result, bytes) else b""
        return result

    @property
    def waiting_for_head(self) -> bool:
        """Parked with a later request's head not whole."""
        return bool(self._head_so_far)

    def park_deadline(self) -> Optional[float]:
        """When a parked connection is dropped: at the end of its linger;
        ``head_timeout`` after the first bytes of a head that is not whole;
        None for an idle one (the keep-alive timeout)."""
        lingering = self._socket.linger_deadline
        if lingering is not None:
            return lingering
        return self._head_deadline if self._head_so_far else None

    def _later_upgrade(self, request: Request) -> str:
        """A WebSocket upgrade after other requests: the server's decision, as
        for a first request, on a thread of its own (the WebSocket, or the
        app that took its socket, keeps it: never a pool thread), when h11
        stopped cleanly after its head; otherwise 400."""
        try:
            end = self.h11.next_event()
        except h11.RemoteProtocolError:
            end = None
        switching = self.h11.their_state is h11.MIGHT_SWITCH_PROTOCOL  # type: ignore[attr-defined]
        if self._upgrade is None or not isinstance(end, h11.EndOfMessage) or not switching:
            logger.info("refused %s: unclean WebSocket upgrade after other requests (400)", format_address(self.address))
            self._socket.send(error_response(HandshakeError(400, "a WebSocket upgrade request must not have a body")))
            self._socket.linger()
            return CLOSE
        buffered = self.h11.trailing_data[0]
        self.sock.settimeout(None)
        self.server._remove(self)  # a WebSocket now: the handler's close() covers it
        upgrade = functools.partial(self._upgrade, self.sock, dataclasses.replace(request, buffered=buffered))
        return HANDED if self.server.upgrade_apart(self.sock, upgrade) else CLOSE

    # -- an upgrade given to the app (wsgi_websockets) -----------------------------

    def run_handover(self, data: bytes) -> bool:
        self.h11.receive_data(data)
        event = self.h11.next_event()
        assert isinstance(event, h11.Request)
        request = self._request(event)
        try:
            end = self.h11.next_event()
        except h11.RemoteProtocolError:
            end = None
        if not isinstance(end, h11.EndOfMessage):  # what follows must be frames
            logger.info("refused %s: a WebSocket upgrade request with a body (400)", format_address(self.address))
            self._socket.send(error_response(HandshakeError(400, "a WebSocket upgrade request must not have a body")))
            self._socket.linger()
            return False
        handover = self._handover = SocketHandover(self.sock, self.h11.trailing_data[0])
        self.sock.settimeout(None)
        try:
            self._serve(event, request)
        except ClientGone:
            pass
        if not handover.taken:
            self._socket.linger()
            return False
        if self._socket.closing:
            handover.send_going_away()
        if not handover.closed.wait(HANDOVER_CLOSE_WAIT):
            self._socket.shutdown()  # wakes simple-websocket's reader, which then closes
            if not handover.closed.wait(HANDOVER_CLOSE_WAIT):
                logger.warning("%s: the app's WebSocket thread still uses its socket; leaving it open", format_address(self.address))
                return True
        return False
