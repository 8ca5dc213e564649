"""Events that wait while a connection's reading is held back by the
server: ``Holding``, the part of ``Incoming`` (``incoming.py``) that keeps
them, and ``READ_AHEAD_LIMIT``, the bound on what it reads meanwhile.

Reading is held back when the next message has no room (the inbox or a
blocked listener's dispatcher holds ``max_queue``: ``_hold``) and while the
application paused the connection (``ws.pause()``). Meanwhile the reader
does not stop at once: it reads on until the events waiting here hold
``READ_AHEAD_LIMIT`` bytes (each counted at its payload plus
``EVENT_COST``), checked after each read, so at most one read (64 KiB)
more. That is how the client's control frames that come behind its data
are still seen:

- held for room: pings are answered and pongs shown to the heartbeat as
  they are read; the rest waits, in order (issue 17: a blocked listener's
  client still gets its pongs within a second or two);
- paused: nothing is acted on (ws's semantics: no event, no pong until
  ``resume()``) except that pongs are shown to the heartbeat, so that a
  paused client that went away is still dropped, and a quiet one is kept.

A protocol violation read ahead (a ``Failure``, acted on in its turn)
stops reading at once: nothing the client sends after it is of use, and the
frame parser keeps nothing after it either (``FrameReader``).

Past the bound the socket is not read (TCP holds the client back) and the
heartbeat does not count a missing pong against the client
(``SocketReader.reading``): it is the server that does not read. Memory per
connection so stays bounded: the queue's ``max_queue`` messages, the
read-ahead (``READ_AHEAD_LIMIT`` plus one read and the one message the
frame parser may be assembling, at most ``max_payload``).

The end of the stream read ahead (``queue_end``) waits behind the events
too, so that they are still delivered before the connection ends.

``_pending`` and ``_pos`` are the runner's (``incoming.py``); ``ahead_room``
is also read by the loop's owner and the timer thread: a list swapped, never
changed in place, so they see a consistent, possibly older, list.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from ..protocol.closing import FrameKind
from ..protocol.events import Failure, Message, Ping, Pong

if TYPE_CHECKING:
    from ..options import HandlerOptions
    from ..protocol.frames import FrameReader, FrameWriter
    from .connection import WebSocket
    from .heartbeat import Heartbeat
    from .reader import SocketReader

__all__ = ["Holding", "READ_AHEAD_LIMIT", "EVENT_COST"]

#: Bytes of waiting events past which a held or paused connection is no longer read.
READ_AHEAD_LIMIT = 64 * 1024
#: What one waiting event counts besides its payload (its objects' size).
EVENT_COST = 64


class _Emit:
    """A ping or pong already acted on (answered, shown to the heartbeat)
    while messages before it waited for room: only its event is left to
    emit, in order."""

    __slots__ = ("event", "payload")

    def __init__(self, event: str, payload: bytes) -> None:
        self.event = event
        self.payload = payload


class _End:
    """The end of the stream, read ahead: the connection ends when the
    events before it have been acted on."""

    __slots__ = ()


END = _End()


class Holding:
    """``Incoming``'s waiting events (see above); the fields are ``Incoming``'s."""

    if TYPE_CHECKING:
        _ws: "WebSocket"
        _listeners: dict[str, Any]
        _frames: "FrameReader"
        _writer: "FrameWriter"
        _options: "HandlerOptions"
        _socket_reader: "SocketReader"
        _heartbeat: "Heartbeat"
        _closing: Any
        _pending: list[Any]
        _pos: int
        bytes_in: int
        _no_room: Callable[[], bool]
    else:
        __slots__ = ()

    def waiting(self) -> bool:
        """True while events wait to be acted on."""
        return self._pos < len(self._pending)

    def ahead_room(self) -> bool:
        """True while the waiting events hold less than ``READ_AHEAD_LIMIT``
        bytes: a held or paused reader may read on."""
        pending, pos = self._pending, self._pos
        size = 0
        for index in range(pos, len(pending)):
            event = pending[index]
            kind = type(event)
            if kind is Message:
                size += len(event.data)
            elif kind is Ping or kind is Pong or kind is _Emit:
                size += len(event.payload)
            elif kind is Failure:
                return False  # a protocol violation: nothing after it is of use, none is read
            size += EVENT_COST
            if size >= READ_AHEAD_LIMIT:
                return False
        return True

    def feed_paused(self, data: bytes) -> None:
        """Paused (``ws.pause()``): parse ``data`` and keep its events, in
        order, for ``resume()``; only pongs are shown to the heartbeat now."""
        self.bytes_in += len(data)
        if not self._closing.reads_frames:
            return
        events = self._frames.receive_data(data)
        if not events:
            return
        for event in events:
            if type(event) is Pong:
                self._heartbeat.pong(event.payload)
        self._pending, self._pos = self._pending[self._pos:] + events, 0
        if not self.ahead_room():
            self._socket_reader.resync()

    def queue_end(self) -> bool:
        """The end of the stream was read while events wait: it waits
        behind them (True); False when nothing waits."""
        if not self.waiting():
            return False
        self._pending, self._pos = self._pending[self._pos:] + [END], 0
        return True

    def _no_room_for_control(self, kind: type, event: Any) -> bool:
        """True when a ping's or pong's event would queue for a full dispatcher."""
        dispatcher = self._socket_reader.dispatcher
        if dispatcher is None or not dispatcher.full():
            return False
        if kind is Ping:
            return bool(self._listeners.get("ping"))
        if kind is Pong:
            return bool(self._listeners.get("pong"))
        return kind is _Emit

    def _hold(self, pos: int) -> None:
        """The event at ``pos`` waits for room: hold reading back. The pings
        read are answered and the pongs shown to the heartbeat now; their
        events wait in order with the rest. The reader reads on while
        ``ahead_room``."""
        reader = self._socket_reader
        waiting = self._answer_ahead(pos)
        if not waiting:  # a listener went away meanwhile: nothing waits after all
            return
        reader.hold()
        event = waiting[0]
        kind = type(event)
        if not (self._no_room() if kind is Message else self._no_room_for_control(kind, event)):
            reader.room()  # the consumer made room before the hold was seen

    def _answer_ahead(self, pos: int) -> list[Any]:
        """The events from ``pos`` on wait: answer their pings and show their
        pongs to the heartbeat now; what is left to do waits, in order
        (returned, and pending from now on)."""
        rest = self._pending[pos:]
        waiting: list[Any] = []
        for event in rest:
            kind = type(event)
            if kind is Ping:
                if self._options.auto_pong:
                    self._ws._post_quietly(self._writer.pong(event.payload), FrameKind.PONG)
                if self._listeners.get("ping"):
                    waiting.append(_Emit("ping", event.payload))
            elif kind is Pong:
                self._heartbeat.pong(event.payload)
                if self._listeners.get("pong"):
                    waiting.append(_Emit("pong", event.payload))
            else:
                waiting.append(event)
        self._pending, self._pos = waiting, 0
        return waiting
