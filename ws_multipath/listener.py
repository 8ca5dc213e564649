"""The listening socket and its accept loop.

A ``socketserver`` TCP server that starts one daemon thread per accepted
connection and hands the socket to its owner, the ``MultipathServer``; the
deadline of each connection's handshake; and where to bind.
"""

from __future__ import annotations

import errno
import socket
import socketserver
import threading
import weakref
from typing import TYPE_CHECKING, Any, Optional

from .emitter import logger

if TYPE_CHECKING:
    from .server import MultipathServer

__all__ = ["Handshake", "TCPServer", "bind_address", "format_address"]

_ACCEPT_BACKOFF = 0.1  # seconds to wait after accept() ran out of descriptors


class Handshake:
    """A socket whose handshake is in progress, with its deadline.

    ``_lock`` makes the deadline's ``shutdown`` and the owner's ``finish``
    exclusive, so the deadline never touches a descriptor that was reused.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._lock = threading.Lock()
        self._done = False
        self.expired = False
        self.timer: Any = None

    def expire(self, address: tuple, timeout: float) -> None:
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


class _RequestHandler(socketserver.BaseRequestHandler):
    """socketserver's per-connection object: hands the socket to the server."""

    def handle(self) -> None:
        self.server.owner._handle_connection(self.request, self.client_address)  # type: ignore[attr-defined]


class TCPServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    """The accept loop. One daemon thread per accepted connection; sockets the
    owner detached (unhandled ones given to a listener) are left open."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple, family: int, backlog: int, owner: "MultipathServer") -> None:
        self.address_family = family
        self.request_queue_size = backlog
        self.owner = owner
        self.detached: "weakref.WeakSet[socket.socket]" = weakref.WeakSet()
        self._exhausted = False
        super().__init__(address, _RequestHandler, bind_and_activate=False)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6 and self.server_address[0] in ("::", ""):
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

    def get_request(self) -> tuple:
        try:
            request = self.socket.accept()
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                self._back_off(f"accept() failed: {exc}")
            raise
        self._exhausted = False
        _no_delay(request[0])
        return request

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
        self.owner._closing_event.wait(_ACCEPT_BACKOFF)

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


def format_address(address: Any) -> str:
    try:
        host, port = address[0], address[1]
    except (TypeError, IndexError):
        return str(address)
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def bind_address(host: Optional[str], port: int) -> tuple[int, tuple]:
    if host is None:
        if socket.has_dualstack_ipv6():
            return socket.AF_INET6, ("::", port)
        return socket.AF_INET, ("0.0.0.0", port)
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = info[0]
    return family, address
