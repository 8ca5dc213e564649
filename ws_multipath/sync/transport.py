"""The socket of one connection, on the writing side: ordered writes with a
deadline, writes that never block the caller (broadcasts, heartbeats, a
handler's close frames), and shutting the socket down from any thread.

Every write is non-blocking at the socket. A blocking ``write`` waits for
writability itself, up to ``write_timeout``; a ``post`` that does not fit in
the socket's buffer waits in the outbox, which the server's ``Flusher``
thread writes as the socket drains (``draining.py``). So no thread is ever stuck on a client
that stops reading, beyond that client's own ``send()`` callers.

Each frame is handed over with its ``FrameKind``, and the connection's
``may_write`` is asked, in wire order and under the write lock, whether it
may still go out: that is how nothing follows a close frame.

Locks, and what each guards:

- ``_write_lock``: the right to write to the socket; its holder writes whole
  frames, so frames never interleave. Never held while calling user code.
- ``_state_lock``: the outbox, its byte count, the enrolment with the
  flusher and the closed flag. Held only for list operations and the
  non-blocking ``shutdown``/``close`` calls, never while writing.
- ``_turn``: where data writers wait for a fragmented message to end, and
  ``_fragmenting``, written under both locks above: ``fragmenting.py``.
- ``tls_lock`` (TLS only): the SSL object, which OpenSSL does not allow two
  threads to use at once; the reader takes it for each non-blocking
  ``recv`` (``reader.py``), the writers for each non-blocking ``send``. Never
  held while waiting for the socket.

A fragmented message (``send(iterable)``) goes out in one turn of the write
lock per frame, while other data frames wait and control frames may go
between: ``fragmenting.py``.

The socket is closed only by its owner (the connection's reader thread, via
``close``); every other thread uses ``abort``, which shuts it down so that a
blocked ``recv`` or a wait for writability returns, without freeing the
descriptor.

Coalescing (plain TCP only; ``hot_writes.py``): while the reading thread knows that more of a
client's messages are already read and will be answered at once (the rest of
a batch that one ``recv`` brought, ``more_coming``), data frames go out with
``MSG_MORE``. They are in the kernel when ``send()`` returns, as always, but
the kernel holds them for the frames that follow and sends one segment for
the lot instead of one per message. The last frame of the batch goes without
``MSG_MORE``, which sends everything; ``push`` does it when the batch ended
without one; and the flusher pushes any transport left corked for more than
one of its ticks (``flusher.CORK_TICK``), so a listener that is slow in the
middle of a batch delays the answers before it by a few milliseconds at most.
"""

from __future__ import annotations

import socket
import ssl
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

from ..protocol.closing import FrameKind
from ..protocol.writer import Payload
from .hot_writes import HotWrites
from .flusher import Flusher
from .draining import Draining
from .fragmenting import Fragmenting
from .outbox import ENCODER_COST, ENTRY_COST, MAX_OUTBOX_BYTES, Entry, Outbox, Pending
from .sockets import MSG_MORE, NOWAIT_LIMIT, advance, as_bytes_view, send_message, send_progressing, send_small, send_some, shutdown

__all__ = ["Transport", "MAX_OUTBOX_BYTES"]

#: A compressed frame larger than this is encoded by the flusher thread when
#: its client's socket is writable, never by the broadcasting thread: a
#: client that does not read then costs no compression at all.
_ENCODE_INLINE_LIMIT = 16 * 1024

#: Below this size a payload is copied behind its header, so that one
#: ``send`` writes the whole frame; above it, ``sendmsg`` avoids the copy.
_COALESCE_LIMIT = 64 * 1024


class Transport(Draining, Fragmenting, HotWrites):
    """Writes to and shuts down one client socket.

    The outbox deque (about 750 bytes with its first block) is made by the
    first frame that has to wait in it; most connections never have one."""

    __slots__ = (
        "sock", "fd", "_flusher", "_write_timeout", "_tls", "tls_lock", "_may_write", "_on_fatal",
        "_write_lock", "_state_lock", "_outbox", "_enrolled", "_progress_at", "_progress", "_unsent", "_closed",
        "messages_out", "bytes_out", "can_cork", "sends_small", "more_coming", "_corked", "corked_at", "_on_abort", "_fin_pending",
        "_fragmenting", "_turn",
    )

    def __init__(self, sock: socket.socket, flusher: Flusher, write_timeout: Optional[float]) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self._flusher = flusher
        self._write_timeout = write_timeout
        self._tls = isinstance(sock, ssl.SSLSocket)
        #: Serialises every use of the SSL object (see the module docstring).
        self.tls_lock: Optional[threading.Lock] = threading.Lock() if self._tls else None
        if self._tls:
            sock.setblocking(False)  # the reader waits for readability itself (reader.py)
        self._may_write: Callable[[FrameKind], bool] = lambda kind: True
        self._on_fatal: Callable[[int, str], None] = lambda code, reason: None
        self._on_abort: Callable[[], None] = lambda: None
        self._fin_pending = False  # shutdown_write once the frames before it are out (_state_lock)
        self._write_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._outbox = Outbox()
        self._enrolled = False
        self._progress_at = 0.0  # when the outbox last made progress while enrolled (monotonic)
        self._progress = 0  # bytes the kernel took since then (sockets.MIN_PROGRESS) ...
        self._unsent = 0  # ... and what it held unsent then
        self._closed = False
        # stats.py: data messages and bytes written, counted under the write lock
        self.messages_out = 0
        self.bytes_out = 0
        #: Whether data frames may be coalesced with MSG_MORE (plain TCP).
        self.can_cork = bool(MSG_MORE) and not self._tls and sock.family in (socket.AF_INET, socket.AF_INET6)
        #: Whether ``write_small`` may be used (plain TCP, the C speedups).
        self.sends_small = send_message is not None and not self._tls
        #: Written by the reading thread only (when ``can_cork``): the data
        #: frames written now are followed at once by more (see above).
        self.more_coming = False
        self._corked = False  # a frame went out with MSG_MORE since the last push (write lock)
        #: The flusher's tick when this transport last began to hold frames.
        self.corked_at = 0
        self._fragmenting = 0  # fragmenting.py
        self._turn: Optional[threading.Condition] = None

    def attach(self, may_write: Callable[[FrameKind], bool], on_fatal: Callable[[int, str], None], on_abort: Callable[[], None]) -> None:
        """Connect to the connection: ``may_write(kind)`` admits each frame
        (under the write lock), ``on_fatal(code, reason)`` hears of a write
        deadline or outbox overflow before the socket is aborted, and
        ``on_abort()`` of every abort (the reader reads on to the end)."""
        self._may_write = may_write
        self._on_fatal = on_fatal
        self._on_abort = on_abort

    @property
    def closed(self) -> bool:
        return self._closed

    # -- blocking writes --------------------------------------------------

    def write(self, frame: bytes, kind: FrameKind) -> bool:
        """Write one frame after everything posted before it; False when it
        may not go out any more (a close frame went first). Raises
        ``OSError`` when the socket fails or the write deadline passes."""
        self._write_lock.acquire()
        try:
            if self._outbox:
                self._flush_outbox()
            if not self._may_write(kind):
                return False
            self._send_all(frame)
            return True
        finally:
            self._release()

    def write_message(self, encode: Callable[[Any], tuple[bytes, Payload]], data: Any) -> bool:
        """Like ``write`` for a data frame that ``encode(data)`` makes under
        the write lock (compression state carries between messages)."""
        self._write_lock.acquire()
        try:
            if not self._may_write_data():
                return False
            header, payload = encode(data)
            self.messages_out += 1
            if payload:
                if self._tls or type(payload) is not bytes or len(payload) > NOWAIT_LIMIT:
                    self._send_all(header, payload)
                    return True
                header += payload  # the pure-Python path frames in two parts
            elif self._tls or len(header) > NOWAIT_LIMIT:
                self._send_all(header)
                return True
            # A small frame on plain TCP, whole in ``header``.
            more = self.more_coming
            if more and not self._corked:
                self._cork()
            sent = send_small(self.sock, header, more)
            self.bytes_out += len(header)
            if sent and not more:
                self._corked = False  # this send pushed what was held
            if sent != len(header):
                self._wait_and_send([memoryview(header)[sent:] if sent else header])
            return True
        finally:
            self._release()

    def _may_write_data(self) -> bool:
        """A data frame's turn, under the write lock: after a fragmented
        message and what was posted before it; False when it may not go out."""
        if self._fragmenting and not self._take_turn():
            return False
        if self._outbox.entries:  # read without _state_lock: see _release
            self._flush_outbox()
        return self._may_write(FrameKind.DATA)

    @contextmanager
    def writing(self) -> Iterator[Callable[..., None]]:
        """Hold the write lock; yields ``send(header, payload=b"")`` for bytes
        that are no frame (the 101 response). Frames posted meanwhile wait."""
        self._write_lock.acquire()
        try:
            if self._outbox:
                self._flush_outbox()
            yield self._send_all
        finally:
            self._release()

    def _send_all(self, header: Payload, payload: Payload = b"") -> None:
        """Write ``header`` and ``payload`` whole, waiting for writability at
        most ``write_timeout`` (then the connection is dropped: 1011)."""
        if isinstance(payload, memoryview):
            payload = as_bytes_view(payload)
        self.bytes_out += len(header) + len(payload)  # counted once per frame, however many sends it takes
        if self._tls or len(payload) <= _COALESCE_LIMIT:
            buffers: list[Payload] = [bytes(header) + bytes(payload) if payload else header]
        else:
            buffers = [header, payload]
        buffers = advance(buffers, send_some(self.sock, buffers, self.tls_lock))
        if buffers:
            self._wait_and_send(buffers)

    def _wait_and_send(self, buffers: list[Payload]) -> None:
        """The rest of ``_send_all`` once the socket is full: wait for
        writability and send the rest, within ``write_timeout`` of the last
        progress (``sockets.MIN_PROGRESS``)."""
        if not send_progressing(self.sock, buffers, self.tls_lock, self._write_timeout):
            self._on_write_timeout()
            raise TimeoutError("write timed out")

    def _on_write_timeout(self) -> None:
        self._on_fatal(1011, "write timeout")
        self.abort()

    @property
    def buffered_amount(self) -> int:
        """Bytes of frames waiting in the outbox (read without a lock: one int)."""
        return self._outbox.frame_bytes

    # -- non-blocking writes ----------------------------------------------

    def post(self, frame: Pending, kind: FrameKind, size: int = 0) -> None:
        """Queue ``frame`` (bytes, or a callable that encodes it under the
        write lock, counted as ``size`` bytes) and return at once; it is
        written after everything posted before it. A client with more than
        ``MAX_OUTBOX_BYTES`` waiting is dropped with 1008. Errors are not
        raised: the reader thread sees the socket fail."""
        if callable(frame):
            entry: Entry = (frame, kind, size + ENCODER_COST)
            inline = size <= _ENCODE_INLINE_LIMIT
        else:
            entry, inline = (frame, kind, len(frame) + ENTRY_COST), True
        hold = False
        with self._state_lock:
            if self._closed:
                return
            if self._fragmenting and kind is FrameKind.DATA:  # not between the fragments of a message
                if self._fragmenting < 0:
                    return  # left unfinished: no data frame may follow
                hold = True
            direct = inline and not hold and not self._outbox and self._write_lock.acquire(blocking=False)
            if not direct:
                overflow = self._outbox.append(entry, hold)
        if direct:
            try:
                self._write_entry_now(entry)
            except OSError:
                self.abort()
            finally:
                self._release()
        elif overflow:
            self._on_fatal(1008, f"send queue full (more than {MAX_OUTBOX_BYTES} bytes waiting)")
            self.abort()
        else:
            self._enrol_if_waiting()

    def _admit(self, entry: Entry) -> Optional[Payload]:
        """The bytes of ``entry`` if it may go on the wire (write lock held)."""
        frame, kind, _ = entry
        if kind is not None and not self._may_write(kind):
            return None
        if kind is FrameKind.DATA:
            self.messages_out += 1
        return frame() if callable(frame) else frame

    def _flush_outbox(self) -> None:
        """Write everything posted so far, blocking (``_write_lock`` held)."""
        while True:
            entry = self._pop()
            if entry is None:
                return
            data = self._admit(entry)
            if data is not None:
                self._send_all(data)

    def _release(self) -> None:
        """Give the write lock back; frames posted while it was held are
        then the flusher's to write.

        The outbox is looked at without ``_state_lock`` here (and before a
        blocking write): a poster appends under ``_state_lock`` after failing
        to take the write lock, so either its frame is in the outbox when
        this checks (and it is enrolled), or it found the write lock free
        (and wrote the frame itself), or it enrols the flusher itself, which
        then finds the write lock free."""
        self._write_lock.release()
        if self._outbox.entries:
            self._enrol_if_waiting()
        elif self._fin_pending:
            self._fin_if_flushed()

    # -- ending -------------------------------------------------------------

    def abort(self) -> None:
        """Shut the socket down both ways (any thread): blocked reads and
        waits return at once. Does nothing once closed."""
        with self._state_lock:
            if self._closed:
                return
            shutdown(self.sock, socket.SHUT_RDWR)
        self._on_abort()

    def shutdown_write(self) -> None:
        """Send FIN after the last frame (the peer reads EOF), keep reading.
        Frames still in the outbox, or being written, go first."""
        with self._state_lock:
            if self._closed:
                return
            if self._outbox or self._write_lock.locked():
                self._fin_pending = True
            else:
                shutdown(self.sock, socket.SHUT_WR)
                return
        # The writer checks _fin_pending after releasing the write lock; this
        # checks the lock after setting it: one of the two sees the other.
        if not self._write_lock.locked():
            self._fin_if_flushed()

    def _fin_if_flushed(self) -> None:
        with self._state_lock:
            if self._fin_pending and not self._outbox and not self._closed and not self._write_lock.locked():
                self._fin_pending = False
                shutdown(self.sock, socket.SHUT_WR)

    def close(self) -> None:
        """Release the socket (its owner only, once it stopped reading)."""
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
            self._outbox.clear()
            enrolled, self._enrolled = self._enrolled, False
        if enrolled:
            self._flusher.withdraw(self)
        self._wake_turn()  # data writers waiting for a fragmented message give up
        try:
            if self.tls_lock is not None:
                with self.tls_lock:
                    self.sock.close()
            else:
                self.sock.close()
        except OSError:
            pass

