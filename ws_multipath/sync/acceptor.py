"""The listening socket and its accept loop.

A ``socketserver`` TCP server that starts one daemon thread per accepted
connection and hands it the socket (``handshake.HTTPSide.serve`` does the
rest); and where to bind.
"""

from __future__ import annotations

import errno
import os
import socket
import socketserver
import stat
import sys
import threading
import weakref
from typing import Any, Callable, Optional

from ..log import format_address, logger

__all__ = ["TCPServer", "bind_address", "check_reuse_port", "prepare_unix_path", "check_listening_socket", "unix_peer"]

_ACCEPT_BACKOFF = 0.1  # seconds to wait after accept() ran out of descriptors


class _RequestHandler(socketserver.BaseRequestHandler):
    """socketserver's per-connection object: hands the socket on."""

    def handle(self) -> None:
        self.server.serve_connection(self.request, self.client_address)  # type: ignore[attr-defined]


class TCPServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    """The accept loop. One daemon thread per accepted connection runs
    ``serve_connection(sock, address)``; sockets that were detached (unhandled
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
    ) -> None:
        """``sock``: an already bound and listening socket to accept on
        (``address`` and ``family`` are then its own; do not call
        ``server_bind``/``server_activate``)."""
        self.reuse_port = reuse_port
        self.address_family = family
        self.request_queue_size = backlog
        self.serve_connection = serve_connection
        self._stopping = stopping
        self.detached: "weakref.WeakSet[socket.socket]" = weakref.WeakSet()
        self._exhausted = False
        if sock is None:
            super().__init__(address, _RequestHandler, bind_and_activate=False)
        else:
            socketserver.BaseServer.__init__(self, address, _RequestHandler)
            self.socket = sock
        self._unix_peer = unix_peer(self.server_address) if family == socket.AF_UNIX else None

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6 and self.server_address[0] in ("::", ""):
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        if self.reuse_port:
            # several processes bind the port; the kernel spreads new connections among them
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, Any]:
        try:
            request = self.socket.accept()
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                self._back_off(f"accept() failed: {exc}")
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
        thread = threading.Thread(target=self.process_request_thread, args=(request, client_address), name="ws_multipath-connection", daemon=True)
        try:
            thread.start()
        except RuntimeError as exc:  # can't start new thread
            request.close()
            self._back_off(f"cannot start a connection thread: {exc}")

    def _back_off(self, message: str) -> None:
        if not self._exhausted:
            self._exhausted = True
            logger.error("%s; backing off (logged once until it recovers)", message)
        self._stopping.wait(_ACCEPT_BACKOFF)

    def shutdown_request(self, request: Any) -> None:
        if request not in self.detached:
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


def bind_address(host: Optional[str], port: int) -> tuple[int, tuple[Any, ...]]:
    if host is None:
        if socket.has_dualstack_ipv6():
            return socket.AF_INET6, ("::", port)
        return socket.AF_INET, ("0.0.0.0", port)
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = info[0]
    return family, address


def unix_peer(path: Any) -> tuple[str, int]:
    """The peer address given to connections accepted on the Unix socket
    ``path``: ``("unix:/run/app.sock", 0)``, a ``(host, port)`` tuple that
    logs as ``unix:/run/app.sock`` (``log.format_address``) and that
    ``trusted_proxies=["unix"]`` trusts."""
    if isinstance(path, bytes):
        path = path.decode("utf-8", "replace")
    return (f"unix:{path or '(unnamed)'}", 0)


def prepare_unix_path(path: str) -> None:
    """Make ``path`` bindable: remove a stale socket file (one nobody
    listens on any more, left by a server that died); ``OSError`` when a
    server still listens there, or the file is not a socket."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(errno.EEXIST, f"unix_path {path!r} exists and is not a socket; not removing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        try:
            os.unlink(path)  # stale
        except FileNotFoundError:
            pass
        return
    except OSError:
        return  # let bind() report what is wrong
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"unix_path {path!r}: another server is listening on it")


def check_listening_socket(sock: Any) -> None:
    """``sock=`` must be a bound, listening stream socket (TCP or Unix)."""
    if not isinstance(sock, socket.socket):
        raise TypeError(f"sock must be a socket.socket, not {type(sock).__name__}")
    if sock.type != socket.SOCK_STREAM:
        raise ValueError(f"sock must be a SOCK_STREAM socket, not {sock.type!r}")
    if sock.family not in (socket.AF_INET, socket.AF_INET6, getattr(socket, "AF_UNIX", None)):
        raise ValueError(f"sock must be an AF_INET, AF_INET6 or AF_UNIX socket, not {sock.family!r}")
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except (OSError, AttributeError):
        listening = 1  # not knowable here: accept() will tell
    if not listening:
        raise ValueError("sock must be bound and listening (call sock.listen() first)")


def check_reuse_port() -> None:
    """``reuse_port=True`` is Linux's ``SO_REUSEPORT`` (which balances
    connections among the sockets); elsewhere ``ValueError`` says so."""
    if not sys.platform.startswith("linux") or not hasattr(socket, "SO_REUSEPORT"):
        raise ValueError(f"reuse_port=True needs Linux's SO_REUSEPORT (this is {sys.platform}): run one process per port, or use Linux")
