"""The socket of one HTTP connection served to the WSGI app: reads within
deadlines, writes that fail after ``http_write_timeout`` without progress
(``sync.sockets.MIN_PROGRESS``, as on the WebSocket side), lingering after
the last response, and being cut by ``close()`` from another thread.

``_lock`` guards the idle and closing flags: idle while the request thread
lingers after the last response (``close()`` may then cut the connection at
once), closing once ``close()`` was called. Between requests, and while a
later request's head is not whole, the connection waits in the keep-alive
parking lot (``keepalive.py``), with no thread.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from typing import Optional, Union

from ..errors import HandshakeError
from ..sync.sockets import MIN_PROGRESS, TLS_CHUNK, unsent
from .head import read_head
from .wsgi_body import ClientGone

__all__ = ["ClientSocket", "HeadNotReceived", "linger", "KiB", "DRAIN_LIMIT", "LINGER"]

KiB = 1024
DRAIN_LIMIT = 64 * KiB  # unread body bytes read and dropped to keep a connection alive
LINGER = 2.0  # seconds to read what a client still sends after our last response (Apache: 2 s)


class _NotYet(Exception):
    """Nothing more of a head is readable now."""


class HeadNotReceived(Exception):
    """A later request's head did not come (in time, or before ``close()``)."""


class ClientSocket:
    """One HTTP connection's socket, as its request thread uses it."""

    def __init__(self, sock: socket.socket, write_timeout: float) -> None:
        self.sock = sock
        self._write_timeout = write_timeout
        self._tls = isinstance(sock, ssl.SSLSocket)
        self._lock = threading.Lock()
        self._idle = False
        self._closing = False
        self._lingered = False
        #: set by a turn on the pool: linger() only starts, and the owner parks the connection
        self.parks = False
        self._linger_until: Optional[float] = None  # monotonic, while a parked linger goes on
        self._drained = 0

    @property
    def closing(self) -> bool:
        with self._lock:
            return self._closing

    # -- closing (other threads) ---------------------------------------------

    def server_closing(self) -> None:
        """``close()``: an idle connection is shut down at once; a busy one
        finishes its request first."""
        with self._lock:
            self._closing = True
            idle = self._idle
        if idle:
            self.shutdown()

    def abort(self) -> None:
        with self._lock:
            self._closing = True
        self.shutdown()

    def shutdown(self) -> None:
        try:
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
        except OSError:
            pass

    # -- reading and writing (the request thread) ------------------------------

    def read_now(self) -> Optional[bytes]:
        """The first bytes of the next request if they are here, without
        waiting: bytes; b"" when the connection ended (the client closed or
        broke it, or ``close()`` was called); None when nothing is readable
        yet (a TLS record not whole, a wake-up with nothing to read). TLS
        bytes already decrypted (``pending()``, which a selector cannot see)
        are returned too."""
        with self._lock:
            if self._closing:
                return b""
        try:
            self.sock.settimeout(0.0)
            return self.sock.recv(65536)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return None
        except OSError:  # reset, or shut down by close()
            return b""

    def read_head_now(self, buffered: bytes, max_size: int, max_headers: int, max_target: int) -> Union[tuple[bytes, bytes], bytes]:
        """A later request's head (``buffered`` and what is readable now),
        read by the first request's rules (``head.read_head``), and the bytes
        after it; or, when the head is not whole and nothing more is
        readable now, every byte of it so far, for the next try once the
        socket is readable again (the caller parks it: no thread waits for
        a slow head). ``HandshakeError`` to refuse it (a client that closed
        midway gets 400), ``HeadNotReceived`` when the server is closing."""
        received = [buffered]

        def receive() -> bytes:
            more = self.read_now()
            if more is None:
                raise _NotYet
            if not more:
                if self.closing:
                    raise HeadNotReceived("the server is closing")
                raise HandshakeError(400, "connection closed before the end of the request head")
            received.append(more)
            return more

        try:
            return read_head(receive, buffered, max_size, max_headers, max_target)
        except _NotYet:
            return b"".join(received)

    def recv_until(self, deadline: float, what: str) -> Optional[bytes]:
        """Bytes from the socket before ``deadline`` (b"" at EOF), None when it
        passed; ``ClientGone`` when the connection broke."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        try:
            self.sock.settimeout(remaining)
            return self.sock.recv(65536)
        except socket.timeout:
            return None
        except OSError as exc:
            raise ClientGone(f"connection lost reading the {what} ({exc})") from None

    def send(self, data: bytes, required: bool = False) -> None:
        """Write ``data`` whole; a failure raises ``ClientGone`` when
        ``required``, and is ignored otherwise."""
        try:
            self._send_all(data)
        except OSError as exc:
            if required:
                raise ClientGone(f"connection lost writing the response ({exc})") from None

    def _send_all(self, data: bytes) -> None:
        """``sendall`` that raises ``TimeoutError`` only after
        ``write_timeout`` seconds in which the client took less than
        ``MIN_PROGRESS`` bytes (``socket.sendall`` bounds the whole call)."""
        sock, timeout = self.sock, self._write_timeout
        view = memoryview(data)
        chunk = TLS_CHUNK if self._tls else len(view)  # TLS reports nothing until its whole buffer went
        since = time.monotonic()
        taken, mark = 0, None  # bytes the kernel took; what the client had taken at ``since``
        sock.settimeout(timeout / 4)
        while True:
            try:
                sent = sock.send(view[:chunk])  # waits for room, at most the socket's timeout
            except socket.timeout:
                sent = 0
            view = view[sent:]
            if not view:
                return
            taken += sent
            now = time.monotonic()
            delivered = taken - unsent(sock)
            if mark is None:  # the first wait (the deadline runs from the call)
                mark = delivered
            elif delivered - mark >= MIN_PROGRESS:
                since, mark = now, delivered
            elif now - since >= timeout:
                raise TimeoutError(f"no progress writing the response for {timeout} s")
            sock.settimeout(max(0.001, min(timeout / 4, since + timeout - now)))

    def linger(self) -> None:
        """``linger(sock)``, once; ``close()`` need not wait for it. With
        ``parks`` it only starts: ``close_notify`` (TLS) and the FIN go out
        now, without waiting, and the owner parks the connection until
        ``linger_deadline``, calling ``drain_now()`` when it is readable, so
        a client that keeps its side open holds no thread."""
        if self._lingered:
            return
        self._lingered = True
        with self._lock:
            if self._closing:
                return
        if self.parks and self._start_linger():
            return
        with self._lock:  # nothing left to answer: close() need not wait for it
            self._idle = True
        try:
            linger(self.sock)
        finally:
            with self._lock:
                self._idle = False

    @property
    def linger_deadline(self) -> Optional[float]:
        """When a parked linger ends (monotonic); None when none goes on."""
        return self._linger_until

    def _start_linger(self) -> bool:
        """Send close_notify (TLS) and the FIN without waiting; False when
        the alert did not fit in the kernel's buffer (the caller lingers
        blocking, as without ``parks``)."""
        sock = self.sock
        try:
            sock.settimeout(0.0)
            if isinstance(sock, ssl.SSLSocket):
                try:
                    sock.unwrap()  # sends close_notify; the client's answer is drained later, unread
                except ssl.SSLWantReadError:
                    pass  # sent; the client's has not come yet
                except ssl.SSLWantWriteError:
                    return False
                except (ssl.SSLError, ValueError):
                    pass  # the client sent data or closed: the FIN still goes
            socket.socket.shutdown(sock, socket.SHUT_WR)
        except OSError:
            return True  # the client is gone: nothing to wait for
        self._linger_until = time.monotonic() + LINGER
        return True

    def drain_now(self) -> bool:
        """Read and drop what the client sent while lingering, without
        waiting (bytes on the wire: TLS records are not decrypted); True
        once the linger is over: the client closed, the connection broke,
        or it sent more than ``4 * DRAIN_LIMIT``."""
        while True:
            try:
                data = socket.socket.recv(self.sock, 65536)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError:
                return True
            self._drained += len(data)
            if not data or self._drained >= DRAIN_LIMIT * 4:
                return True


def linger(sock: socket.socket) -> None:
    """Close the sending side, then read (and drop) what the client still
    sends for a moment: closing with unread data would reset the connection
    and could destroy the response before the client read it. On TLS the
    sending side ends with a ``close_notify`` alert first (RFC 8446 section
    6.1), so that the client can tell the end of the response from a cut."""
    deadline = time.monotonic() + LINGER
    if isinstance(sock, ssl.SSLSocket):
        sock = _close_notify(sock, deadline)
    try:
        sock.shutdown(socket.SHUT_WR)
        received = 0
        while received < DRAIN_LIMIT * 4:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            sock.settimeout(remaining)
            data = sock.recv(65536)
            if not data:
                return
            received += len(data)
    except OSError:
        pass


def _close_notify(sock: ssl.SSLSocket, deadline: float) -> socket.socket:
    """Send ``close_notify``; returns the socket to go on with (the plain
    one once the client answered with its own, within ``deadline``)."""
    try:
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        return sock.unwrap()
    except (OSError, ValueError):  # the client closed, sent more data, or did not answer in time
        return sock
