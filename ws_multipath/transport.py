"""The socket of one connection: ordered writes with a deadline, writes that
never block the caller (for broadcasts and heartbeats), and shutting the
socket down safely from any thread.

Locks, and what each guards:

- ``_write_lock``: the right to write to the socket. Its holder writes whole
  frames, so frames never interleave; it may block in ``sendall`` for at most
  ``write_timeout`` (then the timer aborts the socket and the write fails).
  It can be handed from the thread that took it to a drain worker, so it is
  a plain ``Lock``.
- ``_state_lock``: the outbox and the closed flag. Held only for list
  operations and the non-blocking ``shutdown``/``close`` calls, never while
  writing.

The socket is closed only by its owner (the connection's reader thread, via
``close``); every other thread uses ``abort``, which shuts it down so that a
blocked ``recv`` or ``sendall`` returns, without freeing the descriptor.
"""

from __future__ import annotations

import collections
import socket
import ssl
import threading
from concurrent.futures import Executor
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional, Union

from .emitter import logger
from .protocol import Payload
from .timers import Timers

__all__ = ["Transport", "MAX_OUTBOX_BYTES"]

#: Bytes that may wait for a client that reads slower than it is broadcast
#: to; past this the client is dropped (close code 1008).
MAX_OUTBOX_BYTES = 16 * 1024 * 1024

#: Below this size a payload is copied behind its header, so that one
#: ``send`` writes the whole frame; above it, ``sendmsg`` avoids the copy.
_COALESCE_LIMIT = 64 * 1024

Pending = Union[bytes, Callable[[], bytes]]


class Transport:
    """Writes to and shuts down one client socket."""

    def __init__(
        self,
        sock: socket.socket,
        timers: Timers,
        write_timeout: Optional[float],
        executor: Executor,
        on_fatal: Callable[[int, str], None],
    ) -> None:
        self.sock = sock
        self._timers = timers
        self._write_timeout = write_timeout
        self._executor = executor
        self._on_fatal = on_fatal  # (close code, reason) when a write deadline or the outbox limit is hit
        self._tls = isinstance(sock, ssl.SSLSocket)
        self._write_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._outbox: collections.deque[Pending] = collections.deque()
        self._outbox_bytes = 0
        self._draining = False
        self._closed = False

    # -- blocking writes ------------------------------------------------

    def write(self, frame: bytes) -> None:
        """Write one complete frame, after everything posted before it.
        Raises ``OSError`` when the socket fails or the deadline passes."""
        with self._write_lock:
            if self._outbox:
                self._flush_outbox()
            self._send(frame)

    def write_message(self, encode: Callable[[Any], tuple[bytes, Payload]], data: Any) -> None:
        """Like ``write``, for a frame that ``encode(data)`` makes under the
        write lock (compression state and the closing state need it)."""
        with self._write_lock:
            if self._outbox:
                self._flush_outbox()
            header, payload = encode(data)
            self._send(header, payload)

    @contextmanager
    def writing(self) -> Iterator[Callable[..., None]]:
        """Hold the write lock; yields ``send(header, payload=b"")``.

        Frames posted earlier are written first, so a thread's own frames
        keep their order. ``send`` raises ``OSError`` when the socket fails or
        the write deadline passes.
        """
        with self._write_lock:
            self._flush_outbox()
            yield self._send

    def _send(self, header: bytes, payload: Payload = b"") -> None:
        if len(payload) <= _COALESCE_LIMIT or self._tls:
            data = header + payload if payload else header
            if self._tls:
                self._send_blocking([data])
                return
            try:
                sent = self.sock.send(data, socket.MSG_DONTWAIT)
            except BlockingIOError:
                sent = 0
            if sent < len(data):
                self._send_blocking([memoryview(data)[sent:]])
            return
        self._send_blocking([header, payload])

    def _send_blocking(self, buffers: list) -> None:
        """``sendall`` each buffer, aborting the socket at the write deadline."""
        timer = None
        if self._write_timeout is not None:
            timer = self._timers.call_later(self._write_timeout, self._on_write_timeout)
        try:
            for buffer in buffers:
                self.sock.sendall(buffer)
        finally:
            if timer is not None:
                timer.cancel()

    def _on_write_timeout(self) -> None:
        logger.info("dropping %s: write timed out after %ss", _peer(self.sock), self._write_timeout)
        self._on_fatal(1011, "write timeout")
        self.abort()

    # -- non-blocking writes ----------------------------------------------

    def post(self, frame: Pending) -> None:
        """Queue ``frame`` (bytes, or a callable that encodes it under the write
        lock) and return at once; it is written after everything posted
        before it. A client with more than ``MAX_OUTBOX_BYTES`` waiting is
        dropped. Errors are not raised: the reader thread sees the socket fail.
        """
        with self._state_lock:
            if self._closed:
                return
            queued = bool(self._outbox) or self._draining or self._tls
            if queued:
                action = self._enqueue(frame)
        if queued:
            self._after_enqueue(action)
            return
        if not self._write_lock.acquire(blocking=False):
            with self._state_lock:
                action = self._enqueue(frame)
            self._after_enqueue(action)
            return
        try:
            data = frame() if callable(frame) else frame
            try:
                sent = self.sock.send(data, socket.MSG_DONTWAIT)
            except BlockingIOError:
                sent = 0
        except Exception:  # noqa: BLE001 - a dead socket: the reader will see it
            self._write_lock.release()
            return
        if sent == len(data):
            self._write_lock.release()
            return
        with self._state_lock:
            self._outbox.appendleft(bytes(memoryview(data)[sent:]))
            self._outbox_bytes += len(data) - sent
            self._draining = True
        self._submit_drain(lock_held=True)

    def _enqueue(self, frame: Pending) -> str:
        """Append to the outbox (``_state_lock`` held); return what the caller
        must do once it released the lock: "", "drain" or "overflow"."""
        self._outbox.append(frame)
        if isinstance(frame, bytes):
            self._outbox_bytes += len(frame)
        if self._outbox_bytes > MAX_OUTBOX_BYTES:
            self._outbox.clear()
            self._outbox_bytes = 0
            return "overflow"
        if self._draining:
            return ""
        self._draining = True
        return "drain"

    def _after_enqueue(self, action: str) -> None:
        if action == "drain":
            self._submit_drain(lock_held=False)
        elif action == "overflow":
            logger.info("dropping %s: more than %d bytes waiting to be sent", _peer(self.sock), MAX_OUTBOX_BYTES)
            self._on_fatal(1008, "send queue full")
            self.abort()

    def _submit_drain(self, lock_held: bool) -> None:
        try:
            self._executor.submit(self._drain, lock_held)
        except RuntimeError:  # the executor is shut down: the server is closing
            if lock_held:
                self._write_lock.release()
            self.abort()

    def _drain(self, lock_held: bool) -> None:
        """Write the outbox on a worker thread (the write lock may be inherited)."""
        if not lock_held:
            self._write_lock.acquire()
        try:
            self._flush_outbox()
        except OSError:
            with self._state_lock:
                self._outbox.clear()
                self._outbox_bytes = 0
            self.abort()
        finally:
            with self._state_lock:
                self._draining = False
                restart = bool(self._outbox) and not self._closed
                if restart:
                    self._draining = True
            self._write_lock.release()
        if restart:
            self._submit_drain(lock_held=False)

    def _flush_outbox(self) -> None:
        """Write everything posted so far (``_write_lock`` held)."""
        while True:
            with self._state_lock:
                if not self._outbox:
                    return
                frame = self._outbox.popleft()
                if isinstance(frame, bytes):
                    self._outbox_bytes -= len(frame)
            data = frame() if callable(frame) else frame
            self._send(data)

    # -- ending -------------------------------------------------------------

    def abort(self) -> None:
        """Shut the socket down both ways (any thread): blocked reads and
        writes return at once. Does nothing once closed."""
        with self._state_lock:
            self._shutdown_locked()

    def _shutdown_locked(self) -> None:
        if self._closed:
            return
        try:
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
        except OSError:
            pass

    def shutdown_write(self) -> None:
        """Send FIN after the last frame (the peer reads EOF), keep reading."""
        with self._state_lock:
            if not self._closed:
                try:
                    socket.socket.shutdown(self.sock, socket.SHUT_WR)
                except OSError:
                    pass

    def close(self) -> None:
        """Release the socket (its owner only, once it stopped reading)."""
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
            self._outbox.clear()
            self._outbox_bytes = 0
        try:
            self.sock.close()
        except OSError:
            pass


def _peer(sock: socket.socket) -> str:
    try:
        address = sock.getpeername()
    except OSError:
        return "a client"
    return f"{address[0]}:{address[1]}"
