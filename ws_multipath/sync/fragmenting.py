"""A fragmented message on the writing side (``ws.send(iterable)``): the
part of ``Transport`` that lets one thread send a message frame by frame
while every other data frame waits.

The message is written in several turns of the transport's write lock, one
per frame, so that the lock is never held while the sender's iterable
runs (user code, which may take its time). Between the turns:

- control frames go out as usual (a pong, a heartbeat ping, a close frame:
  RFC 6455 section 5.4 lets them go between fragments);
- other data frames wait until the message ends: a ``send()`` caller on the
  ``_turn`` condition, a posted frame (broadcasts) held apart in the outbox
  (``Outbox.append(hold=True)``, counted as usual), then put last in line.

A message left unfinished (its iterable failed, or the socket did) leaves
the transport unable to write data frames for good (``BROKEN``): no message
may begin before the last one ends (RFC 6455 section 5.4). The connection
is failed or closing by then (``WebSocket._send_fragments``).

State (declared in ``Transport``): ``_fragmenting`` is 0, the ident of the
thread whose message is open, or ``BROKEN``; it is written under both the
write lock and ``_state_lock`` and read under either (only its own thread
reads its ident unlocked, and only that thread clears it). ``_turn`` is a
condition with a lock of its own, made by the first fragmented message.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Callable, Optional

from ..protocol.closing import FrameKind
from ..protocol.writer import Payload

if TYPE_CHECKING:
    from .outbox import Outbox

__all__ = ["Fragmenting", "BROKEN"]

#: ``_fragmenting`` once a fragmented message was left unfinished.
BROKEN = -1

Encode = Callable[[Any], "tuple[bytes, Payload]"]


class Fragmenting:
    """The fragmented-message methods of ``Transport`` (a mixin)."""

    if TYPE_CHECKING:  # Transport's attributes and methods used here
        _write_lock: threading.Lock
        _state_lock: threading.Lock
        _outbox: Outbox
        _closed: bool
        _fragmenting: int
        _turn: Optional[threading.Condition]
        _may_write: Callable[[FrameKind], bool]
        messages_out: int

        def _flush_outbox(self) -> None: ...
        def _send_all(self, header: Payload, payload: Payload = b"") -> None: ...
        def _release(self) -> None: ...
    else:
        __slots__ = ()  # the state is in Transport's slots

    @property
    def fragmenting_here(self) -> bool:
        """Whether the calling thread has a fragmented message open."""
        return self._fragmenting == threading.get_ident()

    def begin_fragments(self, encode: Encode, data: Any) -> bool:
        """Open a fragmented message: wait for any other to end, write what
        was posted before, then its first frame, ``encode(data)``. From now
        on other data frames wait for ``finish_fragments``. False when it
        may not go out (a close frame went first). Whatever happens, the
        caller then ends with ``finish_fragments`` or ``abandon_fragments``.
        ``OSError`` as ``Transport.write``."""
        self._write_lock.acquire()
        try:
            if self._fragmenting and not self._take_turn():
                return False
            if self._turn is None:
                self._turn = threading.Condition(threading.Lock())
            with self._state_lock:
                self._fragmenting = threading.get_ident()  # before the flush: data posted from now on is held
            if self._outbox:
                self._flush_outbox()
            if not self._may_write(FrameKind.DATA):
                return False
            header, payload = encode(data)
            self.messages_out += 1  # one message, however many frames
            self._send_all(header, payload)
            return True
        finally:
            self._release()

    def write_fragment(self, encode: Encode, data: Any) -> bool:
        """The next frame of this thread's message, after the control frames
        posted meanwhile, within its own ``write_timeout``. False when it
        may not go out any more."""
        return self._fragment_frame(encode, data, last=False)

    def finish_fragments(self, encode: Encode, data: Any) -> bool:
        """Write the last frame (FIN) and let the other data frames go: the
        held ones next, then the waiting ``send()`` callers. False (the
        message still open) when it may not go out."""
        return self._fragment_frame(encode, data, last=True)

    def _fragment_frame(self, encode: Encode, data: Any, last: bool) -> bool:
        self._write_lock.acquire()
        try:
            if self._outbox:
                self._flush_outbox()
            if not self._may_write(FrameKind.DATA):
                return False
            header, payload = encode(data)
            self._send_all(header, payload)
            if last:
                self._end_fragments(0)
            return True
        finally:
            self._release()

    def abandon_fragments(self) -> None:
        """Leave this thread's message unfinished, if it has one open: no
        data frame may follow, ever (the held ones are dropped, the waiting
        ``send()`` callers get False). The caller fails the connection."""
        if self._fragmenting != threading.get_ident():
            return
        self._write_lock.acquire()
        try:
            self._end_fragments(BROKEN)
        finally:
            self._release()  # control frames posted meanwhile go to the flusher

    def _end_fragments(self, then: int) -> None:
        """``_fragmenting`` becomes ``then`` (write lock held); wake the waiters."""
        with self._state_lock:
            self._fragmenting = then
            if then == 0:
                self._outbox.release_held()
            else:
                self._outbox.drop_held()
        self._wake_turn()

    def _wake_turn(self) -> None:
        turn = self._turn
        if turn is not None:
            with turn:
                turn.notify_all()

    def _take_turn(self) -> bool:
        """Wait until no other thread's message is open (called with the
        write lock held, which is given back meanwhile and held again on
        return). False when one was left unfinished, or the transport
        closed meanwhile. ``RuntimeError`` when this thread has one open:
        a ``send()`` from its own iterable would wait for itself."""
        if self._fragmenting == threading.get_ident():
            raise RuntimeError("send() called while this thread sends a fragmented message on the same connection (from its iterable?): it would wait for itself")
        turn = self._turn
        while self._fragmenting > 0 and not self._closed:
            assert turn is not None  # made before _fragmenting was first set
            self._release()  # frames posted meanwhile go to the flusher
            try:
                with turn:
                    if self._fragmenting > 0 and not self._closed:  # both change before the notify, which needs turn: no lost wake-up
                        turn.wait()
            finally:
                self._write_lock.acquire()
        return self._fragmenting == 0
