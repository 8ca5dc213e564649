"""The HTTP side of every connection: from the accepted socket to a decision.

On the connection's request thread, within one deadline (``open_timeout``,
TLS included), ``HTTPSide.serve`` reads and parses the request head, then
decides what the connection becomes:

- an upgrade to a path a handler serves: the handler answers the handshake
  and serves the WebSocket on this thread (``handler.py``);
- an upgrade to a path no handler serves: 400, or the socket handed to the
  server's ``'unhandled'`` listeners (``reject_unhandled=False``), or, with
  ``wsgi_websockets=True``, the socket given to the WSGI app;
- plain HTTP: the server's WSGI app (``wsgi.py``: the connection goes to
  its pool of threads and this thread ends; keep-alive, later requests, a
  later upgrade coming back here on a thread of its own), or 426 without one;
- a malformed or refused request: its error status (``upgrade.py``).

``_lock`` guards the handshakes in progress and the closing flag.
"""

from __future__ import annotations

import dataclasses
import functools
import socket
import ssl
import threading
import weakref
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol, Union

from ..emitter import EventEmitter
from ..errors import HandshakeError
from ..log import format_address, logger
from ..stats import Refusals
from ..sync.dispatch import listener_thread
from ..sync.timers import Timers
from .proxies import TrustedProxies
from .request import Request, parse_request_head
from .routing import RoutingTable
from .head import read_request_head
from .strictness import MAX_TARGET_SIZE
from .upgrade import error_response, is_upgrade_request
from .wsgi import WSGIServer
from .wsgi_socket import linger

if TYPE_CHECKING:
    from ..sync.connection import WebSocket

__all__ = ["HTTPSide", "Deadline", "HeadLimits"]

class UpgradeHandler(Protocol):
    """What the HTTP side needs of a path's handler (``handler.py``): accept
    an upgrade on a socket, then serve the open connection (True: its
    event loop owns the socket from then on)."""

    path: str

    def _accept(self, sock: socket.socket, request: Request, end_handshake: Callable[[], None]) -> Union["WebSocket", bool]: ...

    def _serve(self, ws: "WebSocket") -> bool: ...


#: What a request became: True when a listener owns the socket now, False
#: when it was answered, or an accepted WebSocket and its handler.
_Outcome = Union[bool, tuple["UpgradeHandler", "WebSocket"]]


@dataclasses.dataclass(frozen=True)
class HeadLimits:
    """What a request may take before it is answered (server options)."""

    open_timeout: float
    max_header_size: int
    max_headers: int
    proxies: TrustedProxies = dataclasses.field(default_factory=TrustedProxies)
    max_target_size: int = MAX_TARGET_SIZE


class Deadline:
    """The handshake deadline of one socket.

    ``_lock`` makes the deadline's ``shutdown`` and the owner's ``finish``
    exclusive, so the deadline never touches a descriptor that was reused.
    """

    __slots__ = ("sock", "_lock", "_done", "expired", "timer")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._lock = threading.Lock()
        self._done = False
        self.expired = False
        self.timer: Any = None

    def expire(self, address: tuple[Any, ...], timeout: float) -> None:
        """The deadline passed: drop the client (timer thread)."""
        with self._lock:
            if self._done:
                return
            self.expired = True
        logger.info("dropping %s: handshake not completed within %ss", format_address(address), timeout)
        self.abort()

    def abort(self) -> None:
        with self._lock:
            if not self._done:
                try:
                    socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
                except OSError:
                    pass

    def finish(self) -> None:
        with self._lock:
            self._done = True
        if self.timer is not None:
            self.timer.cancel()


class HTTPSide:
    """Serves the HTTP side of one server's connections (request threads).

    ``events`` is the emitter of the ``'unhandled'`` event (the server);
    ``detach(sock)`` tells the accept loop not to close a socket that an
    ``'unhandled'`` listener now owns.
    """

    def __init__(
        self,
        routes: "RoutingTable[Any]",  # of UpgradeHandler (the server's handlers)
        timers: Timers,
        limits: HeadLimits,
        ssl_context: Optional[ssl.SSLContext],
        reject_unhandled: bool,
        events: EventEmitter,
        detach: Callable[[socket.socket], None],
        wsgi: Optional[WSGIServer] = None,
    ) -> None:
        self._routes = routes
        self._timers = timers
        self._limits = limits
        self._ssl_context = ssl_context
        self._reject_unhandled = reject_unhandled
        self._events = events
        self._detach = detach
        self._wsgi = wsgi
        self._lock = threading.Lock()
        self._deadlines: set[Deadline] = set()
        self._closing = False
        self._unhandled_requests: "weakref.WeakKeyDictionary[socket.socket, Request]" = weakref.WeakKeyDictionary()
        #: what no handler saw: no_handler, not_websocket, bad_request (stats.py)
        self.refusals = Refusals()

    def close(self) -> None:
        """Stop serving: new connections are dropped, handshakes in progress aborted."""
        with self._lock:
            self._closing = True
            deadlines = list(self._deadlines)
        for deadline in deadlines:
            deadline.abort()
        if self._wsgi is not None:
            self._wsgi.close()

    def busy(self) -> bool:
        """True while HTTP connections (WSGI requests) are being served."""
        return self._wsgi is not None and self._wsgi.busy()

    def unhandled_request(self, sock: socket.socket) -> Optional[Request]:
        return self._unhandled_requests.get(sock)

    # -- one connection (its request thread) ----------------------------------

    def serve(self, sock: socket.socket, address: tuple[Any, ...]) -> None:
        """A new connection, on its request thread: TLS, the first request,
        then what it becomes (a WebSocket served here until it ends)."""
        self._serve(sock, address, lambda deadline: self._first_request(self._start_tls(sock, deadline), address, deadline))

    def serve_upgrade(self, handler: "UpgradeHandler", sock: socket.socket, head: bytes, address: Any) -> None:
        """``handler.handle_upgrade``: ``serve`` for a socket whose request
        head (or its start) ``head`` someone else has read, for ``handler``;
        the same limits, checks, hooks and handshake deadline. The socket is
        the library's from here on (closed when done)."""
        with self._lock:
            closing = self._closing
        if closing:
            sock.close()
            return
        self._serve(sock, address, lambda deadline: self._upgrade_for(handler, sock, head, address, deadline))

    def _serve(self, sock: socket.socket, address: Any, first: Callable[[Deadline], "_Outcome"]) -> None:
        listener_thread.active = True
        deadline = Deadline(sock)
        with self._lock:
            if self._closing:
                return
            self._deadlines.add(deadline)
        timeout = self._limits.open_timeout
        deadline.timer = self._timers.call_later(timeout, functools.partial(deadline.expire, address, timeout))
        detached = False
        try:
            outcome = first(deadline)
            if isinstance(outcome, bool):
                detached = outcome
            else:
                # A WebSocket: served from here, once the frames that read and
                # routed its request (and held the head, the route...) are gone.
                handler, ws = outcome
                del outcome
                detached = handler._serve(ws)  # True: its event loop owns the socket now
        except HandshakeError as exc:
            self._refused(address, exc)
            _send_quietly(deadline.sock, error_response(exc))
            linger(deadline.sock)  # a client still sending reads its status (the deadline bounds this)
        except (OSError, ssl.SSLError) as exc:
            if not deadline.expired:
                logger.debug("dropping %s: connection lost during the handshake (%s)", format_address(address), exc)
        finally:
            deadline.finish()
            with self._lock:
                self._deadlines.discard(deadline)
            if not detached:
                deadline.sock.close()  # the TLS socket once wrapped, even when its handshake failed
            else:
                self._detach(sock)  # a loop or a listener owns it: the accept loop must not close it

    def _start_tls(self, sock: socket.socket, deadline: Deadline) -> socket.socket:
        if self._ssl_context is None:
            return sock
        sock = deadline.sock = self._ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        sock.do_handshake()  # the deadline can cut it short now
        return sock

    def _first_request(self, sock: socket.socket, address: tuple[Any, ...], deadline: Deadline) -> "_Outcome":
        limits = self._limits
        head, rest = read_request_head(sock, limits.max_header_size, limits.max_headers, limits.max_target_size)
        request = parse_request_head(head, remote_address=address, secure=self._ssl_context is not None, buffered=rest, proxies=limits.proxies)
        return self._decide(sock, request, deadline, head)

    def _upgrade_for(self, handler: "UpgradeHandler", sock: socket.socket, head: bytes, address: Any, deadline: Deadline) -> "_Outcome":
        limits = self._limits
        head, rest = read_request_head(sock, limits.max_header_size, limits.max_headers, limits.max_target_size, buffered=head)
        request = parse_request_head(head, remote_address=address, secure=isinstance(sock, ssl.SSLSocket), buffered=rest, proxies=limits.proxies)
        if not is_upgrade_request(request):
            raise HandshakeError(400, "not a WebSocket upgrade request")
        route = self._routes.lookup(request.path)
        if route is None or route[0] is not handler:
            raise HandshakeError(400, f"path {request.path} is not this handler's ({handler.path})")
        if route[1]:
            request = dataclasses.replace(request, path_params=route[1])
        ws = handler._accept(sock, request, deadline.finish)
        if ws is True:  # a 'client_error' listener owns the socket
            self._detach(sock)
        return ws if isinstance(ws, bool) else (handler, ws)

    def _dispatch(self, sock: socket.socket, request: Request, deadline: Deadline, head: bytes = b"") -> bool:
        """``_decide``, then serve the WebSocket if it became one; True when a
        listener or an event loop now owns the socket."""
        outcome = self._decide(sock, request, deadline, head)
        if isinstance(outcome, bool):
            return outcome
        handler, ws = outcome
        return handler._serve(ws)

    def _decide(self, sock: socket.socket, request: Request, deadline: Deadline, head: bytes = b"") -> "_Outcome":
        """Decide what the connection becomes: True when a listener now owns
        the socket, False when it was answered, or, once a WebSocket's 101
        went out, its handler and connection, for the caller to serve
        (``handler._serve(ws)``). Raises ``HandshakeError`` to refuse.
        ``head`` is the request head as received (b"" for a later request
        on a keep-alive connection, whose head h11 already consumed)."""
        if not is_upgrade_request(request):  # plain HTTP: the WSGI app, if any
            if request.headers.get_all("Upgrade") and self._routes.lookup(request.path) is not None:
                raise HandshakeError(400, "a WebSocket path takes 'Upgrade: websocket' only")
            if self._wsgi is None:
                raise HandshakeError(426, "this server accepts WebSocket upgrades only", [("Upgrade", "websocket")])
            deadline.finish()  # from here on the HTTP connection has its own limits
            served = self._wsgi.serve(sock, request, head, self._later_upgrade)
            if served:  # the WSGI side's pool closes it: the accept loop must not
                self._detach(sock)
            return served
        route = self._routes.lookup(request.path)
        if route is None:
            if self._wsgi is not None and self._wsgi.options.websockets:
                deadline.finish()
                return self._wsgi.serve_websocket(sock, request, head)
            if self._refuses_unhandled():
                route = self._routes.lookup_or_wait(request.path)  # rather than 400: a handler still to come as the server starts
        if route is None:
            return self._unhandled(sock, request, deadline)
        handler, params = route
        if params:
            request = dataclasses.replace(request, path_params=params)
        ws = handler._accept(sock, request, deadline.finish)
        if ws is True:  # a 'client_error' listener owns the socket
            self._detach(sock)
        return ws if isinstance(ws, bool) else (handler, ws)

    def _later_upgrade(self, sock: socket.socket, request: Request) -> bool:
        """A WebSocket upgrade that came after other requests on a keep-alive
        connection: the same decision as for a first request."""
        deadline = Deadline(sock)
        deadline.finish()
        try:
            return self._dispatch(sock, request, deadline)
        except HandshakeError as exc:
            self._refused(request.remote_address, exc)
            _send_quietly(sock, error_response(exc))
            return False

    def _refused(self, address: Any, error: HandshakeError) -> None:
        key = "not_websocket" if error.status == 426 else "bad_request"
        self.refusals.add(error.status, key)
        client = format_address(address)
        logger.info("refused %s: %s (%s)", client, error, key, extra={"event": "refused", "client": client, "status": error.status, "reason": key})

    def _refuses_unhandled(self) -> bool:
        """True when a path no handler serves gets 400 (no ``'unhandled'`` listener takes it)."""
        return self._reject_unhandled or not self._events.listeners("unhandled")

    def _unhandled(self, sock: socket.socket, request: Request, deadline: Deadline) -> bool:
        """Reject or hand over a request for a path no handler serves."""
        if self._refuses_unhandled():
            self.refusals.add(400, "no_handler")
            client = format_address(request.remote_address)
            logger.info(
                "refused %s: no handler for path %s (400)", client, request.path,
                extra={"event": "refused", "path": request.path, "client": client, "status": 400, "reason": "no_handler"},
            )
            _send_quietly(sock, error_response(HandshakeError(400, f"no handler for path {request.path}")))
            sock.close()
            self._events.emit("unhandled", sock)
            return False
        deadline.finish()
        self._unhandled_requests[sock] = request
        self._detach(sock)
        self._events.emit("unhandled", sock)
        return True


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError:
        pass
