"""Non-blocking writes to a socket, and the waits around them: the
primitives ``transport.py`` builds ordered, deadline-bound writes from.

Nothing here keeps state or takes a lock of its own; the caller holds the
transport's write lock (and, on TLS, passes its ``tls_lock``).
"""

from __future__ import annotations

import select
import socket
import ssl
import sys
import threading
import time
from typing import Callable, Optional, Union

from ..protocol.masking import SPEEDUPS
from ..protocol.writer import Payload

__all__ = ["send_nowait", "send_message", "recv_nowait", "send_small", "NOWAIT_LIMIT", "MSG_MORE", "WOULD_BLOCK", "send_some", "send_progressing", "unsent", "wait_writable", "readable", "peer_half_closed", "MIN_PROGRESS", "TLS_CHUNK", "advance", "as_bytes_view", "shutdown"]

#: ``send_nowait(sock, data, more=False) -> int`` of the C speedups (a
#: non-blocking send without ``socket.send``'s overhead, keeping the GIL
#: except in a thread that sends in a loop: _speedups.c says why; MSG_MORE
#: when ``more``), or None on the pure-Python path.
send_nowait: Optional[Callable[..., int]] = None
#: ``send_message(sock, data, more=False)`` of the C speedups: ``data`` (str:
#: text, bytes: binary) framed and sent as by ``send_nowait``, with no frame
#: object: the frame's length when all of it went, else (that length, the
#: bytes not taken). None on the pure-Python path.
send_message: Optional[Callable[..., Union[int, tuple[int, bytes]]]] = None
if SPEEDUPS:
    from .. import _speedups  # type: ignore[attr-defined,unused-ignore]

    send_nowait = getattr(_speedups, "send_nowait", None)
    send_message = getattr(_speedups, "send_message", None)

#: Frames up to this size are sent by ``send_nowait`` (a larger copy into the
#: kernel would keep the other threads from Python for longer).
NOWAIT_LIMIT = 16 * 1024

#: A write that waits makes progress when the client took at least this many
#: bytes since its deadline last started (``unsent``: what the kernel took,
#: less what it still holds unacknowledged); ``write_timeout`` then starts
#: again. A client must so take ``MIN_PROGRESS`` bytes per ``write_timeout``
#: (6.4 KiB/s with the defaults), or the rest of the frame when that is less:
#: one that reads a few bytes before each deadline cannot hold a large
#: message's writer for ever (docs/topics/limits.rst).
MIN_PROGRESS = 64 * 1024

#: ``ioctl`` request for the bytes a socket's peer has not taken (Linux).
_SIOCOUTQ: Optional[int] = None
if sys.platform.startswith("linux"):
    import fcntl
    import termios

    _SIOCOUTQ = termios.TIOCOUTQ  # SIOCOUTQ is TIOCOUTQ on Linux

#: On TLS, a non-blocking ``send`` reports nothing until all it was given is
#: written: large buffers go this much at a time, so that progress shows.
TLS_CHUNK = 64 * 1024

#: Linux's flag for "more follows: hold a partial segment" (0 elsewhere).
MSG_MORE: int = getattr(socket, "MSG_MORE", 0)

#: What a non-blocking send raises when the socket's buffer is full.
WOULD_BLOCK = (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError)


def _send_small_python(sock: socket.socket, data: Payload, more: bool = False) -> int:
    try:
        return sock.send(data, socket.MSG_DONTWAIT | (MSG_MORE if more else 0))
    except WOULD_BLOCK:
        return 0


#: ``send_small(sock, data, more=False) -> int``: one non-blocking send of a
#: frame of at most ``NOWAIT_LIMIT`` bytes (plain TCP), with MSG_MORE when
#: ``more``: the bytes sent, 0 when the socket is full. ``send_nowait`` when
#: the C speedups are there.
send_small: Callable[..., int] = send_nowait if send_nowait is not None else _send_small_python


def _recv_nowait_python(sock: socket.socket, size: int, flags: int = 0) -> Optional[bytes]:
    try:
        return sock.recv(size, socket.MSG_DONTWAIT | flags)
    except BlockingIOError:
        return None


#: ``recv_nowait(sock, size, flags=0) -> bytes or None``: one non-blocking
#: read of a plain socket (``flags``: MSG_PEEK...), None when nothing is
#: there, b"" at its end, ``OSError`` when it failed; the C speedups' keeps
#: the GIL (the read cannot block), which ``socket.recv`` lets go and takes
#: back around every read.
recv_nowait: Callable[..., Optional[bytes]] = _recv_nowait_python
#: ``shutdown_now(sock, how)``: the C speedups' ``shutdown(2)`` with the GIL
#: kept (it never blocks), or None on the pure-Python path.
_shutdown_now: Optional[Callable[[socket.socket, int], None]] = None
if SPEEDUPS:
    _shutdown_now = getattr(_speedups, "shutdown_now", None)
    recv_nowait = getattr(_speedups, "recv_nowait", _recv_nowait_python)


def send_some(sock: socket.socket, buffers: list[Payload], tls_lock: Optional[threading.Lock]) -> int:
    """Bytes of ``buffers`` the socket takes without blocking (0 or all of
    one buffer on TLS, which must retry with the same bytes)."""
    try:
        if tls_lock is not None:
            first = buffers[0]
            with tls_lock:  # the retry after SSLWantWrite has the same bytes: the same slice
                return sock.send(first if len(first) <= TLS_CHUNK else memoryview(first)[:TLS_CHUNK])
        if len(buffers) == 1:
            if len(buffers[0]) <= NOWAIT_LIMIT:
                return send_small(sock, buffers[0])
            return sock.send(buffers[0], socket.MSG_DONTWAIT)
        return sock.sendmsg(buffers, (), socket.MSG_DONTWAIT)
    except WOULD_BLOCK:
        return 0


def send_progressing(sock: socket.socket, buffers: list[Payload], tls_lock: Optional[threading.Lock], timeout: Optional[float]) -> bool:
    """Write ``buffers`` whole, waiting for writability first (the socket
    was found full); False when ``timeout`` seconds pass in which the client
    took less than ``MIN_PROGRESS`` bytes (``unsent``). ``OSError`` when the
    socket fails."""
    if timeout is None:
        while True:
            wait_writable(sock, float("inf"))
            buffers = advance(buffers, send_some(sock, buffers, tls_lock))
            if not buffers:
                return True
    now = time.monotonic()
    since, check = now, timeout / 4
    taken = 0  # bytes the kernel took so far
    mark = -unsent(sock)  # bytes delivered (taken, less what the kernel still holds) at ``since``
    while True:
        if wait_writable(sock, min(since + timeout, now + check)):
            while True:  # on TLS, a whole chunk may be followed by more at once
                sent = send_some(sock, buffers, tls_lock)
                buffers = advance(buffers, sent)
                if not buffers:
                    return True
                taken += sent
                if tls_lock is None or not sent:
                    break
        now = time.monotonic()
        delivered = taken - unsent(sock)
        if delivered - mark >= MIN_PROGRESS:
            since, mark = now, delivered
        elif now - since >= timeout:
            return False


def unsent(sock: socket.socket) -> int:
    """Bytes in ``sock``'s send queue that the peer did not take yet
    (``SIOCOUTQ``; on TCP, not acknowledged). 0 where that cannot be read
    (not Linux): progress is then what the kernel takes."""
    if _SIOCOUTQ is None:
        return 0
    try:
        return int.from_bytes(fcntl.ioctl(sock.fileno(), _SIOCOUTQ, bytes(4)), sys.byteorder, signed=True)
    except (OSError, ValueError):
        return 0


def wait_writable(sock: socket.socket, deadline: float) -> bool:
    """Wait until ``sock`` is writable; False if ``deadline`` (monotonic,
    ``inf`` for none) passes first. A shut down socket counts as writable:
    the next send reports it."""
    poller = select.poll()
    try:
        poller.register(sock, select.POLLOUT)
    except (OSError, ValueError):
        return True
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        if poller.poll(None if remaining == float("inf") else remaining * 1000):
            return True


def readable(sock: socket.socket, timeout: float) -> bool:
    """Wait at most ``timeout`` seconds (0: not at all) until ``sock`` has
    something to read (data, a FIN or a reset). ``poll``, not ``select``:
    descriptors past 1024 are the rule in a process holding thousands of
    connections. False for a closed socket."""
    poller = select.poll()
    try:
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(max(0.0, timeout) * 1000))
    except (OSError, ValueError):
        return False


def advance(buffers: list[Payload], sent: int) -> list[Payload]:
    """What is left of ``buffers`` after ``sent`` bytes went out."""
    while sent and buffers:
        first = len(buffers[0])
        if sent < first:
            return [memoryview(buffers[0])[sent:], *buffers[1:]]
        sent -= first
        buffers = buffers[1:]
    return buffers


def as_bytes_view(view: memoryview) -> Payload:
    """A view of bytes (``len`` counts bytes), whatever the caller's format."""
    if view.format == "B" and view.ndim == 1:
        return view
    try:
        return view.cast("B")
    except TypeError:  # not contiguous
        return view.tobytes()


def shutdown(sock: socket.socket, how: int) -> None:
    """``shutdown(2)``, ignoring a socket that is gone already."""
    try:
        if _shutdown_now is not None:
            _shutdown_now(sock, how)
        else:
            socket.socket.shutdown(sock, how)
    except OSError:
        pass


def peer_half_closed(sock: socket.socket) -> bool:
    """True when the client has sent its FIN and nothing else is waiting:
    it can never read a 101 and use the connection (ws destroys such a
    socket before its 101 too). Not knowable here for TLS (its records).
    Never waits, whatever the socket's timeout."""
    if isinstance(sock, ssl.SSLSocket) or sock.fileno() < 0:
        return False
    try:
        return recv_nowait(sock, 1, socket.MSG_PEEK) == b""  # None: nothing there
    except (InterruptedError, TimeoutError, ValueError):
        return False
    except OSError:  # reset: gone too
        return True
