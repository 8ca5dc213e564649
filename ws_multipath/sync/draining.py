"""Posted frames written as the socket drains: ``Draining``, the part of
``Transport`` that the flusher thread drives (``flusher.py``).

A frame posted without blocking (``Transport.post``) that the socket does
not take at once waits in the outbox; the transport then enrols with the
flusher, whose thread calls ``flush_ready`` when the socket is writable and
``write_overdue`` every quarter second: a client whose outbox makes no
progress (a whole frame, or ``sockets.MIN_PROGRESS`` bytes taken) for
``write_timeout`` seconds is dropped with 1011.

The fields are ``Transport``'s (its ``__slots__``); the locks are its
``_write_lock`` (the right to write) and ``_state_lock`` (the outbox, the
enrolment, the progress counters).
"""

from __future__ import annotations

import socket
import threading
import time
from typing import TYPE_CHECKING, Callable, Optional

from ..protocol.writer import Payload
from .outbox import Entry, Outbox
from .sockets import MIN_PROGRESS, send_some, unsent

if TYPE_CHECKING:
    from .flusher import Flusher

__all__ = ["Draining"]


class Draining:
    """The outbox's writing side (a mixin of ``Transport``)."""

    if TYPE_CHECKING:  # Transport's attributes and methods used here
        sock: socket.socket
        tls_lock: Optional[threading.Lock]
        bytes_out: int
        _flusher: Flusher
        _write_timeout: Optional[float]
        _write_lock: threading.Lock
        _state_lock: threading.Lock
        _outbox: Outbox
        _enrolled: bool
        _closed: bool
        _progress_at: float
        _progress: int
        _unsent: int
        _fin_pending: bool
        _on_fatal: Callable[[int, str], None]

        def _admit(self, entry: Entry) -> Optional[Payload]: ...
        def abort(self) -> None: ...
        def _on_write_timeout(self) -> None: ...
        def _fin_if_flushed(self) -> None: ...
    else:
        __slots__ = ()  # the state is in Transport's slots

    def _pop(self) -> Optional[Entry]:
        with self._state_lock:
            return self._outbox.pop()

    def _write_entry_now(self, entry: Entry) -> bool:
        """Write what the socket takes of one entry now (write lock held);
        the rest goes back to the head of the outbox. True if all went."""
        data = self._admit(entry)
        if data is None:
            return True
        sent = send_some(self.sock, [data], self.tls_lock)
        self.bytes_out += sent
        if sent == len(data):
            return True
        rest = data if sent == 0 else memoryview(data)[sent:]
        with self._state_lock:
            self._outbox.put_back(rest)
        return False

    def _enrol_if_waiting(self) -> None:
        with self._state_lock:
            enrol = bool(self._outbox) and not self._enrolled and not self._closed
            if enrol:
                self._enrolled = True
                self._progress, self._progress_at, self._unsent = 0, time.monotonic(), unsent(self.sock)
        if enrol:
            self._flusher.enrol(self)  # type: ignore[arg-type]  # a Transport's

    # -- called by the flusher thread ---------------------------------------

    def flush_ready(self) -> bool:
        """The socket is writable: write what it takes. False when the
        flusher should stop watching it (done, closed, or another thread
        holds the write lock and will hand the outbox back on release)."""
        with self._state_lock:
            if self._closed or not self._write_lock.acquire(blocking=False):
                self._enrolled = False
                return False
        written, completed = self.bytes_out, False
        try:
            while True:
                entry = self._pop()
                if entry is None:
                    break
                if not self._write_entry_now(entry):
                    break
                completed = True
        except OSError:
            with self._state_lock:
                self._outbox.clear()
            self.abort()  # the reader sees the failure and ends the connection
        finally:
            written = self.bytes_out - written
            self._write_lock.release()
        with self._state_lock:
            if self._outbox and not self._closed:
                self._progress += written
                if completed:  # a whole frame: the deadline starts again
                    self._progress_at = time.monotonic()
                return True
            self._enrolled = False
        if self._fin_pending:
            self._fin_if_flushed()
        return False

    def write_overdue(self, now: float) -> bool:
        """True (and the client dropped) when the outbox made no progress
        (a whole frame, or ``MIN_PROGRESS`` bytes taken by the client) for
        ``write_timeout`` seconds."""
        with self._state_lock:
            overdue = self._enrolled and self._write_timeout is not None and not self._closed
            if overdue:
                held = unsent(self.sock)
                if self._progress - (held - self._unsent) >= MIN_PROGRESS:
                    self._progress, self._progress_at, self._unsent = 0, now, held
                overdue = now - self._progress_at > self._write_timeout  # type: ignore[operator]
            if overdue:
                self._enrolled = False
        if overdue:
            self._on_write_timeout()
        return overdue
