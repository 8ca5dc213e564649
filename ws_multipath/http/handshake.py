"""The HTTP side of every connection: from the accepted socket to a decision.

Within one deadline (``open_timeout``, TLS included), the request head is
read: for a plain connection, without a thread, in the server's head loop
(``HTTPSide.take``, ``head_waiting.py``), whose task then runs the rest; for
a TLS one, on a request thread of its own (``HTTPSide.serve``). Then it
decides what the connection becomes:

- an upgrade to a path a handler serves: the handler answers the handshake,
  its ``'connection'`` listeners run, and the connection joins the
  handler's event loop (``handler.py``);
- an upgrade to a path no handler serves: 400, or the socket handed to the
  server's ``'unhandled'`` listeners (``reject_unhandled=False``), or, with
  ``wsgi_websockets=True``, the socket given to the WSGI app;
- plain HTTP: the server's WSGI app (``wsgi.py``: the connection goes to
  its pool of threads and this thread ends; keep-alive, later requests, a
  later upgrade coming back here on a thread of its own), or 426 without one;
- a malformed or refused request: its error status (``upgrade.py``).

``_lock`` guards the handshakes in progress, the count of heads awaited
in the head loop and the closing flag. The head loop stops once the server
is closing and no head is awaited.
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
from ..sync.handoff import Sysmon
from ..sync.loop import EventLoop
from ..sync.timers import Timers
from .request import Request, parse_request_head
from .routing import RoutingTable
from .handshake_limits import Deadline, HeadLimits
from .head import read_request_head
from .head_waiting import HeadWaiter
from .upgrade import error_response, is_upgrade_request
from .wsgi import WSGIServer
from .wsgi_socket import linger

if TYPE_CHECKING:
    from ..sync.connection import WebSocket

__all__ = ["HTTPSide", "Deadline", "HeadLimits"]  # the last two from handshake_limits.py

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


class HTTPSide:
    """Serves the HTTP side of one server's connections (the head loop, request threads).

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
        sysmon: Optional[Sysmon] = None,
    ) -> None:
        """``sysmon``: the server's, which watches the head loop (a server
        without one serves every connection on a request thread)."""
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
        self._sysmon = sysmon
        self._head_loop: Optional[EventLoop] = None
        if sysmon is not None:
            self._head_loop = EventLoop("heads", sysmon)
            sysmon.watch(self._head_loop)
        self._waiting = 0  # heads awaited in the head loop
        #: what no handler saw: no_handler, not_websocket, bad_request (stats.py)
        self.refusals = Refusals()

    def close(self) -> None:
        """Stop serving: new connections are dropped, handshakes in progress aborted."""
        with self._lock:
            self._closing = True
            deadlines = list(self._deadlines)
            stop = not self._waiting
        for deadline in deadlines:
            deadline.abort()  # an awaited head ends at once: its socket reads its end
        if stop:
            self._stop_head_loop()
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
        deadline = self._begin(sock, address)
        if deadline is not None:
            self._run(deadline, address, lambda: self._first_request(self._start_tls(sock, deadline), address, deadline))

    def take(self, sock: socket.socket, address: tuple[Any, ...]) -> bool:
        """The accept loop offers a new connection: True when it is taken, a
        plain one whose head is awaited in the head loop (``head_waiting.py``;
        the accept loop must not close it); False for a TLS one, which
        ``serve`` serves on a request thread."""
        loop = self._head_loop
        if loop is None or self._ssl_context is not None:
            return False
        deadline = self._begin(sock, address, waiting=True)
        if deadline is None:
            sock.close()
            return True
        waiter = HeadWaiter(sock, address, deadline, loop, self._limits, self._head_ended)
        if not loop.call_soon(waiter, waiter.start):  # stopped by close() just now
            self._head_ended(waiter, closed=True)
        return True

    def _head_ended(self, waiter: HeadWaiter, closed: bool = False) -> None:
        """A waited head is whole (or the client went or broke a rule): the
        rest of the handshake, as a task of the head loop; the loop stops
        once the server is closing and no head is awaited."""
        with self._lock:
            self._waiting -= 1
            stop = self._closing and not self._waiting
        if stop:
            self._stop_head_loop()
        deadline, address = waiter.deadline, waiter.address
        if closed or waiter.lost is not None:
            if waiter.lost is not None and not deadline.expired:
                logger.debug("dropping %s: connection lost during the handshake (%s)", format_address(address), waiter.lost)
            self._end(deadline, detached=False)
            return
        buffered = waiter.take_buffer()
        listener_thread.active = True  # the loop's threads run listeners anyway
        self._run(deadline, address, lambda: self._first_request(deadline.sock, address, deadline, buffered), accepted=False)

    def _stop_head_loop(self) -> None:
        loop = self._head_loop
        if loop is not None and self._sysmon is not None:
            self._sysmon.forget(loop)
            loop.stop()

    def serve_upgrade(self, handler: "UpgradeHandler", sock: socket.socket, head: bytes, address: Any) -> None:
        """``handler.handle_upgrade``: ``serve`` for a socket whose request
        head (or its start) ``head`` someone else has read, for ``handler``;
        the same limits, checks, hooks and handshake deadline. The socket is
        the library's from here on (closed when done)."""
        deadline = self._begin(sock, address)
        if deadline is None:
            sock.close()
            return
        self._run(deadline, address, lambda: self._upgrade_for(handler, sock, head, address, deadline))

    def _begin(self, sock: socket.socket, address: Any, waiting: bool = False) -> Optional[Deadline]:
        """Start the handshake deadline of a new connection; None once the
        server is closing. ``waiting``: its head is awaited in the head loop."""
        deadline = Deadline(sock)
        with self._lock:
            if self._closing:
                return None
            self._deadlines.add(deadline)
            if waiting:
                self._waiting += 1
        timeout = self._limits.open_timeout
        deadline.timer = self._timers.call_later(timeout, functools.partial(deadline.expire, address, timeout))
        return deadline

    def _run(self, deadline: Deadline, address: Any, first: Callable[[], "_Outcome"], accepted: bool = True) -> None:
        """What the connection becomes (``first``: its request read and
        decided), within ``deadline``. ``accepted``: the accept loop closes
        the socket after this returns unless told it is owned elsewhere."""
        listener_thread.active = True
        detached = False
        try:
            outcome = first()
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
                logger.debug("dropping %s: connection lost during the handshake (%s)", format_address(address), str(exc))  # not exc: a record kept would keep its frames
        finally:
            self._end(deadline, detached, accepted)

    def _end(self, deadline: Deadline, detached: bool, accepted: bool = False) -> None:
        deadline.finish()
        with self._lock:
            self._deadlines.discard(deadline)
        if not detached:
            deadline.sock.close()  # the TLS socket once wrapped, even when its handshake failed
        elif accepted:
            self._detach(deadline.sock)  # a loop or a listener owns it: the accept loop must not close it

    def _start_tls(self, sock: socket.socket, deadline: Deadline) -> socket.socket:
        if self._ssl_context is None:
            return sock
        sock = deadline.sock = self._ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        sock.do_handshake()  # the deadline can cut it short now
        return sock

    def _first_request(self, sock: socket.socket, address: tuple[Any, ...], deadline: Deadline, buffered: bytes = b"") -> "_Outcome":
        limits = self._limits
        head, rest = read_request_head(sock, limits.max_header_size, limits.max_headers, limits.max_target_size, buffered=buffered)
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
            wsgi = self._wsgi
            if wsgi is not None and wsgi.options.websockets:
                deadline.finish()  # the app keeps a thread of its own as long as it uses the socket
                return wsgi.upgrade_apart(sock, lambda: wsgi.serve_websocket(sock, request, head))
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
        logger.info("refused %s: %s (%s)", client, str(error), key,  # str: a record kept must not keep its frames
                    extra={"event": "refused", "client": client, "status": error.status, "reason": key})

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
