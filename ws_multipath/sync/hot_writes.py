"""The hot paths of writing: ``HotWrites``, the part of ``Transport`` that
sends a small message in one C call (``write_small``: an echo's answer),
writes a broadcast's shared frame with as few calls as it can
(``post_shared``), and holds frames with ``MSG_MORE`` for the ones that
follow (see "Coalescing" in ``transport.py``). Each does what the general
method it stands for does (``write_message``, ``post``), in the same order
and under the same locks; anything out of the ordinary goes the general way.

The fields are ``Transport``'s (its ``__slots__``); ``_corked`` and the
socket are written under its ``_write_lock``, the outbox under its
``_state_lock``.
"""

from __future__ import annotations

import socket
import threading
from typing import TYPE_CHECKING, Callable, Union

from ..protocol.closing import FrameKind
from ..protocol.writer import Payload
from .outbox import Outbox, Pending
from .sockets import NOWAIT_LIMIT, send_message, send_small

if TYPE_CHECKING:
    from .flusher import Flusher
    from .transport import Transport

__all__ = ["HotWrites", "SMALL_MESSAGE"]

#: ``write_small`` takes messages up to this many characters or bytes (a
#: str's UTF-8 is 4 times that at most: within ``NOWAIT_LIMIT``).
SMALL_MESSAGE = NOWAIT_LIMIT // 4

_DATA = FrameKind.DATA  # a global is read faster than an Enum's member


class HotWrites:
    """``write_small``, ``post_shared`` and ``MSG_MORE`` (a mixin of ``Transport``)."""

    if TYPE_CHECKING:  # Transport's attributes and methods used here
        sock: socket.socket
        more_coming: bool
        messages_out: int
        bytes_out: int
        _corked: bool
        _closed: bool
        _fragmenting: int
        _fin_pending: bool
        _flusher: Flusher
        _outbox: Outbox
        _write_lock: threading.Lock
        _state_lock: threading.Lock
        _may_write: Callable[[FrameKind], bool]

        def post(self, frame: Pending, kind: FrameKind, size: int = 0) -> None: ...
        def abort(self) -> None: ...
        def _release(self) -> None: ...

        def _may_write_data(self) -> bool: ...
        def _wait_and_send(self, buffers: list[Payload]) -> None: ...
        def _enrol_if_waiting(self) -> None: ...
        def _fin_if_flushed(self) -> None: ...
    else:
        __slots__ = ()  # the state is in Transport's slots

    def write_small(self, data: Union[str, bytes]) -> bool:
        """``write_message`` of an uncompressed message of at most
        ``SMALL_MESSAGE`` characters or bytes when ``sends_small`` (plain TCP,
        the C speedups): framed and sent by one C call (``sockets.send_message``),
        with no frame object, the hot path of an echo. Same rules: after what
        was posted before, not after a close frame, ``write_timeout``."""
        self._write_lock.acquire()
        try:
            if self._fragmenting or self._outbox.entries:
                if not self._may_write_data():
                    return False
            elif not self._may_write(_DATA):
                return False
            more = self.more_coming
            if more and not self._corked:
                self._cork()
            try:
                sent = send_message(self.sock, data, more)  # type: ignore[misc]  # sends_small: it is there
            except UnicodeEncodeError:  # not a message (a lone surrogate): not counted, as write_message
                raise
            except BaseException:
                self.messages_out += 1  # counted once it went for the socket, as write_message
                raise
            self.messages_out += 1
            if type(sent) is int:
                self.bytes_out += sent
                if not more:
                    self._corked = False  # this send pushed what was held
                return True
            total, rest = sent  # type: ignore[misc]
            self.bytes_out += total
            if len(rest) < total and not more:
                self._corked = False
            self._wait_and_send([rest])
            return True
        finally:
            self._release()

    def post_shared(self, frame: bytes) -> None:
        """``post(frame, FrameKind.DATA)`` of a broadcast's frame of at most
        ``NOWAIT_LIMIT`` bytes on plain TCP: written at once when nothing
        waits and no other thread writes, else queued by ``post``.

        Unlike ``post`` it looks at the outbox before taking ``_state_lock``
        (one lock less per client of a broadcast), and again once it holds
        the write lock, which every frame that waits must have been refused
        first (``post``): a frame found waiting then goes before this one."""
        if not (self._closed or self._outbox.entries) and self._write_lock.acquire(blocking=False):
            if self._fragmenting or self._outbox.entries:
                self._release()  # the general way below, after what waits
            else:
                try:
                    if self._may_write(_DATA):
                        self.messages_out += 1
                        sent = send_small(self.sock, frame)
                        self.bytes_out += sent
                        if sent != len(frame):  # the rest waits for the flusher
                            with self._state_lock:
                                self._outbox.put_back(memoryview(frame)[sent:] if sent else frame)
                except OSError:
                    self.abort()
                finally:
                    self._release()
                return
        self.post(frame, _DATA)

    def _cork(self) -> None:
        """Frames go out with MSG_MORE from now: the flusher pushes them
        within two of its ticks if nobody does (write lock held)."""
        self._corked = True
        self._flusher.watch_cork(self)  # type: ignore[arg-type]

    def push(self) -> bool:
        """Send the frames the kernel holds for this transport now (any
        thread; never waits). False if another thread writes at the moment:
        its frame, or the flusher's next tick, pushes them then."""
        if not self._corked:
            return True
        if not self._write_lock.acquire(blocking=False):
            return False
        try:
            if self._corked:
                self._corked = False
                if not self._closed:
                    self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # pushes what is queued
        except OSError:
            pass  # the reader sees the socket fail
        finally:
            self._write_lock.release()
        return True

    @property
    def corked(self) -> bool:
        return self._corked
