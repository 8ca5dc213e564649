"""The listening socket and its accept loop.

``Acceptor``: where a server listens (a host and port, a Unix socket path,
or a socket handed over), the thread that accepts there, and stopping it. A
``socketserver`` TCP server that hands each accepted connection to a
thread of its own (``request_threads.py``: a thread that finished one
serves the next; ``handshake.HTTPSide.serve`` does the rest). Where to
bind, and the checks of a listening address: ``binding.py``.
"""

from __future__ import annotations

import errno
import os
import socket
import socketserver
import threading
import time
import weakref
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

from ..log import format_address, logger
from .binding import bind_address, prepare_unix_path, unix_peer
from .capacity import exhaustion_hint
from .request_threads import RequestThreads
from .reserve import Reserve

__all__ = ["Acceptor", "TCPServer", "accepting_held"]

_ACCEPT_BACKOFF = 0.1  # seconds to wait after accept() ran out of descriptors
_LOG_EVERY = 60.0  # seconds between two lines about running out (a limit reached again and again)
_TABLE_FULL = (errno.EMFILE, errno.ENFILE)  # a descriptor is what is missing: the reserve answers 503
_EXHAUSTED_KIND = {errno.EMFILE: "descriptors", errno.ENFILE: "files", errno.ENOBUFS: "memory", errno.ENOMEM: "memory"}

_AF_UNIX: int = getattr(socket, "AF_UNIX", -1)

# Per thread: while accepting_held() runs, the acceptors started on this
# thread wait in this list instead of starting their accept loops.
_held = threading.local()


@contextmanager
def accepting_held() -> Iterator[None]:
    """Servers made on this thread inside the block listen at once (the port
    is bound, ``OSError`` is raised as usual, connections queue in the
    backlog) but accept only when the block ends without an exception.

    The serve command's workers call the app's factory inside it: a worker
    sharing the port (``SO_REUSEPORT``, or an inherited socket with
    connections already queued) would otherwise take a connection before
    the factory registered its handlers and answer 400 "no handler"."""
    outer = getattr(_held, "acceptors", None)
    held: list[Acceptor] = []
    _held.acceptors = held
    try:
        yield
    finally:
        _held.acceptors = outer
    for acceptor in held:
        acceptor.start()


class Acceptor:
    """Where one server listens, and the thread that accepts there.

    ``bind()`` makes the listening socket (a given one is used as it is);
    ``start()`` accepts on a background thread, each connection handed to
    ``serve_connection`` on a thread of its own; an exception that ends the
    loop goes to ``on_error``, and is logged when that returns False.
    ``stop()`` wakes and ends the loop, closes the socket and removes the
    Unix socket file that ``bind()`` made. The server calls ``bind()`` and
    ``stop()`` under its own lock or once; nothing here locks.
    """

    def __init__(
        self,
        host: Optional[str],
        port: int,
        sock: Optional[socket.socket],
        unix_path: Optional[str],
        backlog: int,
        reuse_port: bool,
        serve_connection: Callable[[socket.socket, tuple[Any, ...]], None],
        stopping: threading.Event,
        on_error: Callable[[Exception], bool],
        take_connection: Optional[Callable[[socket.socket, tuple[Any, ...]], bool]] = None,
    ) -> None:
        self._requested = (host, port)
        self._given_socket = sock
        self._unix_path = os.fspath(unix_path) if unix_path is not None else None
        self._unix_inode: Optional[tuple[int, int]] = None  # (st_dev, st_ino) of the socket file we made
        self._backlog = backlog
        self._reuse_port = reuse_port
        self._serve_connection = serve_connection
        self._take_connection = take_connection
        self._stopping = stopping
        self._on_error = on_error
        self._tcp: Optional[TCPServer] = None
        self._accept_thread: Optional[threading.Thread] = None

    @property
    def bound(self) -> bool:
        return self._tcp is not None

    @property
    def port(self) -> Optional[int]:
        """The bound port (the real one when 0 was asked), or the requested
        one before listening; None on a Unix socket."""
        if self._tcp is not None:
            address = self._tcp.server_address
            return address[1] if isinstance(address, tuple) else None
        if self._unix_path is not None:
            return None
        if self._given_socket is not None:
            return self._given_socket.getsockname()[1] if self._given_socket.family != _AF_UNIX else None
        return self._requested[1]

    @property
    def address(self) -> Any:
        """``(host, port)`` the server is bound to; a Unix socket's path."""
        if self._tcp is None:
            return self._unix_path if self._unix_path is not None else self._requested
        address = self._tcp.server_address
        return tuple(address[:2]) if isinstance(address, tuple) else address

    def bind(self) -> None:
        """Make the listening socket (``OSError``: port in use, ...)."""
        given = self._given_socket
        if given is not None:
            tcp = TCPServer(given.getsockname(), given.family, self._backlog, self._serve_connection, self._stopping, sock=given,
                            take_connection=self._take_connection)
        else:
            address: Any
            if self._unix_path is not None:
                prepare_unix_path(self._unix_path)
                family, address = _AF_UNIX, self._unix_path
            else:
                host, port = self._requested
                family, address = bind_address(host, port)
            tcp = TCPServer(address, family, self._backlog, self._serve_connection, self._stopping, self._reuse_port,
                            take_connection=self._take_connection)
            try:
                tcp.server_bind()
                tcp.server_activate()
            except BaseException:
                tcp.server_close()
                raise
            if self._unix_path is not None:
                made = os.stat(self._unix_path)
                self._unix_inode = (made.st_dev, made.st_ino)
        self._tcp = tcp

    def start(self) -> None:
        """Accept on a background thread (after ``bind()``); inside
        ``accepting_held()``, when that block ends."""
        held = getattr(_held, "acceptors", None)
        if held is not None:
            held.append(self)
            return
        if self._tcp is None or self._stopping.is_set():
            return
        self._accept_thread = threading.Thread(target=self._accept_loop, name="ws_multipath-accept", daemon=True)
        self._accept_thread.start()

    def _accept_loop(self) -> None:
        assert self._tcp is not None
        try:
            self._tcp.serve_forever(poll_interval=0.5)
        except Exception as exc:  # noqa: BLE001 - report; the loop cannot go on
            if not self._on_error(exc):
                logger.exception("the accept loop failed")

    def detach(self, sock: socket.socket) -> None:
        """An ``'unhandled'`` listener owns ``sock``: the accept loop leaves it open."""
        assert self._tcp is not None
        self._tcp.detached.add(sock)

    def stop(self) -> None:
        """Stop accepting and close the listening socket; nothing before ``bind()``."""
        tcp = self._tcp
        if tcp is None:
            return
        try:
            tcp.socket.shutdown(socket.SHUT_RDWR)  # wakes the accept loop's select()
        except OSError:
            pass
        if self._accept_thread is None:
            pass  # never started (held, then closed): no loop to wait for
        elif threading.current_thread() is self._accept_thread:
            threading.Thread(target=tcp.shutdown, daemon=True).start()
        else:
            tcp.shutdown()
        tcp.server_close()
        self._remove_unix_socket()

    def _remove_unix_socket(self) -> None:
        """Remove the socket file we made, unless another server made its own there since."""
        if self._unix_path is None or self._unix_inode is None:
            return
        try:
            now = os.stat(self._unix_path)
            if (now.st_dev, now.st_ino) == self._unix_inode:
                os.unlink(self._unix_path)
        except OSError:
            pass


class _RequestHandler(socketserver.BaseRequestHandler):
    """socketserver's per-connection object: hands the socket on."""

    def handle(self) -> None:
        self.server.serve_connection(self.request, self.client_address)  # type: ignore[attr-defined]


class TCPServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    """The accept loop. A thread of its own (``RequestThreads``) runs
    ``serve_connection(sock, address)`` for each accepted connection; sockets that were detached (unhandled
    ones given to a listener) are left open. ``stopping`` is set when the
    server closes (it cuts a back-off short)."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(
        self,
        address: Any,
        family: int,
        backlog: int,
        serve_connection: Callable[[socket.socket, tuple[Any, ...]], None],
        stopping: threading.Event,
        reuse_port: bool = False,
        sock: Optional[socket.socket] = None,
        take_connection: Optional[Callable[[socket.socket, tuple[Any, ...]], bool]] = None,
    ) -> None:
        """``sock``: an already bound and listening socket to accept on
        (``address`` and ``family`` are then its own; do not call
        ``server_bind``/``server_activate``). ``take_connection(sock,
        address)`` is offered each accepted connection first: True when it
        took the socket (an event loop awaits its request), False to serve
        it on a thread of its own."""
        self.reuse_port = reuse_port
        self.address_family = family
        self.request_queue_size = backlog
        self.serve_connection = serve_connection
        self.take_connection = take_connection
        self._stopping = stopping
        self.detached: "weakref.WeakSet[socket.socket]" = weakref.WeakSet()
        self._exhausted = False
        self._quiet_until = 0.0  # monotonic time before which running out is not logged again
        self._unlogged = 0  # times it ran out since the last line
        self._request_threads = RequestThreads(self.process_request_thread)
        if sock is None:
            super().__init__(address, _RequestHandler, bind_and_activate=False)
        else:
            socketserver.BaseServer.__init__(self, address, _RequestHandler)
            self.socket = sock
        self._unix_peer = unix_peer(self.server_address) if family == socket.AF_UNIX else None
        self._reserve: Optional[Reserve] = Reserve() if sock is not None else None  # else made by server_activate

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6 and self.server_address[0] in ("::", ""):
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        if self.reuse_port:
            # several processes bind the port; the kernel spreads new connections among them
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def server_activate(self) -> None:
        super().server_activate()
        self._reserve = Reserve()

    def server_close(self) -> None:
        super().server_close()
        self._request_threads.close()
        if self._reserve is not None:
            self._reserve.close()

    def get_request(self) -> tuple[socket.socket, Any]:
        try:
            request = self.socket.accept()
        except OSError as exc:
            if exc.errno in _EXHAUSTED_KIND:
                if exc.errno in _TABLE_FULL and self._reserve is not None:
                    self._reserve.refuse_waiting(self.socket)  # 503 rather than a wait in the listen queue
                self._back_off(f"accept() failed: {exc}", _EXHAUSTED_KIND[exc.errno])
            raise
        self._exhausted = False
        if self._unix_peer is not None:  # AF_UNIX peers are '' (unnamed): name the socket they came through
            return request[0], self._unix_peer
        _no_delay(request[0])
        return request

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Serve the connection on this thread, without socketserver's
        per-connection handler object (which would live as long as the
        connection, one more object and one more C-level call on its thread)."""
        self.serve_connection(request, client_address)

    def process_request(self, request: Any, client_address: Any) -> None:
        if self.take_connection is not None and self.take_connection(request, client_address):
            return
        try:
            self._request_threads.submit(request, client_address)
        except RuntimeError as exc:  # can't start new thread
            request.close()
            self._back_off(f"cannot start a connection thread: {exc}", "threads")

    def _back_off(self, message: str, kind: str) -> None:
        """Wait a moment before the next accept(); the open connections are
        served on meanwhile. Logged at ERROR when it starts, at most once a
        minute (a process at its limit runs out each time a client comes
        while none has left), with the limit that ran out and how to raise it."""
        if not self._exhausted:
            self._exhausted = True
            now = time.monotonic()
            if now < self._quiet_until:
                self._unlogged += 1
            else:
                again = f"; it ran out {self._unlogged} more times since the last such line" if self._unlogged else ""
                hint = exhaustion_hint(kind)
                logger.error("%s; backing off, open connections are served on, new clients get 503 "
                             "(logged at most once a minute%s)%s", message, again, f". {hint}" if hint else "")
                self._quiet_until, self._unlogged = now + _LOG_EVERY, 0
        self._stopping.wait(_ACCEPT_BACKOFF)

    def shutdown_request(self, request: Any) -> None:
        if request in self.detached:
            self.detached.discard(request)  # its new owner closes it; forget it now (an entry per connection)
        else:
            request.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.exception("unexpected error serving %s", format_address(client_address))


def _no_delay(sock: socket.socket) -> None:
    """Turn Nagle's algorithm off: a frame is written whole by one ``send``,
    so holding it back only waits for the client's delayed ACK (about 40 ms
    on Linux) behind every burst of small messages. ``ws`` and
    ``websockets`` set it too."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # the client is already gone: the handshake read will say so
