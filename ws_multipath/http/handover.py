"""The socket of a WebSocket that the WSGI app serves itself
(``wsgi_websockets=True``: Flask-Sock, simple-websocket)."""

from __future__ import annotations

import errno
import socket
import threading
from typing import Any, Optional

__all__ = ["SocketHandover", "HANDOVER_CLOSE_WAIT"]

HANDOVER_CLOSE_WAIT = 5.0  # seconds for simple-websocket to close a socket after the app returned


class SocketHandover:
    """The socket as ``environ["werkzeug.socket"]``: what simple-websocket's
    ``Server`` reads, writes and closes.

    Its first reads return the bytes the server read past the request head,
    so nothing the client sent early is lost (with simple-websocket's
    ``ping_interval``, which waits on ``select()`` first, they come with the
    next readable event). ``send`` writes all of its data under a lock, so a
    close frame of the server's (on ``server.close()``) never lands inside
    one of the app's frames; after it nothing more is written. ``close()``
    only marks it closed: the server closes the real socket once the app
    returned, so its descriptor is never reused under a thread still using
    this object.
    """

    def __init__(self, sock: socket.socket, buffered: bytes) -> None:
        self._sock = sock
        self._buffered = buffered
        self._send_lock = threading.Lock()
        self._final_sent = False
        self.taken = False
        self.closed = threading.Event()

    def recv(self, size: int, flags: int = 0) -> bytes:
        self.taken = True
        self._check()
        if self._buffered:
            data, self._buffered = self._buffered[:size], self._buffered[size:]
            return data
        return self._sock.recv(size, flags)

    def send(self, data: bytes, flags: int = 0) -> int:
        self.taken = True
        self._check()
        with self._send_lock:
            if not self._final_sent:
                self._sock.sendall(data, flags)
        return len(data)

    sendall = send

    def fileno(self) -> int:
        self.taken = True
        return self._sock.fileno()

    def settimeout(self, timeout: Optional[float]) -> None:
        self._sock.settimeout(timeout)

    def gettimeout(self) -> Optional[float]:
        return self._sock.gettimeout()

    def setblocking(self, flag: bool) -> None:
        self._sock.setblocking(flag)

    def getpeername(self) -> Any:
        return self._sock.getpeername()

    def getsockname(self) -> Any:
        return self._sock.getsockname()

    def shutdown(self, how: int) -> None:
        self._sock.shutdown(how)

    def close(self) -> None:
        self.closed.set()

    def send_going_away(self) -> None:
        """Send a close frame with 1001 and nothing after it (server closing)."""
        with self._send_lock:
            if self._final_sent or self.closed.is_set():
                return
            self._final_sent = True
            try:
                self._sock.sendall(b"\x88\x02\x03\xe9")  # FIN + close, 2 bytes, 1001
            except OSError:
                pass

    def _check(self) -> None:
        if self.closed.is_set():
            raise OSError(errno.EBADF, "socket is closed")


