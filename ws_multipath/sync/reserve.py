"""A descriptor kept back, so that a process whose descriptor table is full
can still tell new clients it is busy instead of leaving them unanswered in
the listen queue (the "reserve descriptor" of nginx and libuv).

When ``accept()`` fails with EMFILE or ENFILE, ``Reserve.refuse_waiting``
closes the reserve, which frees one slot, accepts one waiting client into
it, answers ``503 Service Unavailable`` with ``Connection: close``, closes
it and opens the reserve again; then the next waiting client, a bounded
number of times. The clients see a status they can act on (retry later, try
another process) and the listen queue does not fill.

Owned by the accept loop's thread: nothing here is shared.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Optional

from .sockets import readable

__all__ = ["Reserve", "BUSY_RESPONSE"]

BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 44\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n"
    b"\r\n"
    b"the server has no descriptor left; try again\n"
)

#: Clients answered per failed accept(), before the accept loop backs off.
REFUSALS_PER_ROUND = 16
#: Seconds a round may take: each client's request is awaited (answering
#: before it arrives would have the client's kernel reset the connection over
#: the answer), and one that sends nothing must not hold the accept loop.
ROUND_SECONDS = 0.5


class Reserve:
    """One descriptor of ``/dev/null`` held for answering 503 (see the module)."""

    __slots__ = ("_fd",)

    def __init__(self) -> None:
        self._fd: Optional[int] = _open()

    def refuse_waiting(self, listening: socket.socket) -> int:
        """Answer 503 to the clients waiting on ``listening`` (at most
        ``REFUSALS_PER_ROUND``); returns how many were answered."""
        answered = 0
        deadline = time.monotonic() + ROUND_SECONDS
        while answered < REFUSALS_PER_ROUND and time.monotonic() < deadline and self._fd is not None and readable(listening, 0):
            os.close(self._fd)
            self._fd = None
            try:
                sock, _ = listening.accept()
            except OSError:  # taken by another thread or process meanwhile
                self._fd = _open()
                break
            _answer_busy(sock, deadline)
            answered += 1
            self._fd = _open()
        if self._fd is None:
            self._fd = _open()
        return answered

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _open() -> Optional[int]:
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:  # the table is full again: the next refusal round retries
        return None


def _answer_busy(sock: socket.socket, deadline: float) -> None:
    """Read the client's request (until ``deadline`` at most), write the 503
    without waiting, end the sending side and read until the client closes
    too (again until ``deadline``), then close: closing with unread bytes
    would reset the connection over the answer."""
    with sock:
        sock.setblocking(False)
        try:
            if readable(sock, deadline - time.monotonic()):
                sock.recv(65536)
            sock.send(BUSY_RESPONSE)
            sock.shutdown(socket.SHUT_WR)
            while readable(sock, deadline - time.monotonic()) and sock.recv(65536):
                pass
        except OSError:
            pass
