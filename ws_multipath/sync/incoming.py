"""What arrives on one connection, acted on in order: ``Incoming``.

The socket reader (``reader.py``) hands each chunk it reads to ``feed``; the
frame parser turns it into events, and each is acted on, in order, on the
thread that read it (the connection's runner): messages are delivered,
pings answered, pongs given to the heartbeat, and a close frame or a
protocol violation handed to the connection's closing side
(``WebSocket._on_close_frame``, ``_on_protocol_error``).

Where messages go: to the ``'message'`` listeners when there are any at the
time the message is complete (inline, or queued for the connection's
dispatcher after a hand-off: ``dispatch.py``), otherwise to the inbox (at
most ``max_queue`` messages) that ``receive()`` and iteration read. When
the inbox or the dispatcher's queue is full the events wait here, the
reader stops reading the socket (backpressure: ``SocketReader.hold``) and
goes on when the application made room; pings and pongs already read are
acted on meanwhile, ahead of the messages that wait, and a bounded amount
is read on to find more of them (``holding.py``).

A ``receive()`` caller that finds the inbox empty reads on its own thread
(``pull``). Events read after a message it queued wait until it has
returned that message, so that the answer to a message goes out before a
close or a violation that followed it.

Only the runner acts; a listener call during which the connection's
reading was handed off (``SocketReader.leave_listener`` says so) ends the
runner's turn, and the loop goes on from the next event.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from ..protocol.closing import Closing, FrameKind, ReadyState
from ..protocol.events import CloseReceived, Event, Failure, Message, Ping, Pong
from ..protocol.frames import FrameReader, FrameWriter
from .heartbeat import Heartbeat
from .holding import Holding, _Emit, _End
from .inbox import Inbox
from .reader import SocketReader
from .transport import Transport

if TYPE_CHECKING:
    from ..options import HandlerOptions
    from .connection import WebSocket

__all__ = ["Incoming"]


_NO_EVENTS: list[Any] = []
_OPEN = ReadyState.OPEN


class Incoming(Holding):
    """The reading side of one ``WebSocket``, which owns it.

    ``messages_in`` and ``bytes_in`` are counted here (``stats.py``); they,
    ``_pending`` and ``_pos`` are touched only by the connection's runner
    (one thread at a time: ``reader.py``). The connection's listener table
    and ``emit`` are used directly, so that a message costs no more calls
    than if this were the connection itself.

    ``attach`` hands over the socket reader and the heartbeat, which are
    made after this (the socket reader calls ``feed``).
    """

    __slots__ = (
        "_ws", "_listeners", "_emit", "_frames", "_inbox", "_closing", "_transport", "_options", "_writer",
        "_socket_reader", "_heartbeat", "_pending", "_pos", "messages_in", "bytes_in",
    )

    def __init__(
        self,
        ws: "WebSocket",
        frames: FrameReader,
        inbox: Inbox,
        closing: Closing,
        transport: Transport,
        options: "HandlerOptions",
        writer: FrameWriter,
    ) -> None:
        self._ws = ws
        self._listeners = ws._listeners  # the emitter's table: updated in place, never replaced
        self._emit: Callable[..., bool] = ws.emit
        self._frames = frames
        self._inbox = inbox
        self._closing = closing
        self._transport = transport
        self._options = options
        self._writer = writer
        self._pending = _NO_EVENTS  # parsed events not acted on yet, from _pos on
        self._pos = 0
        self.messages_in = 0
        self.bytes_in = 0

    def attach(self, socket_reader: SocketReader, heartbeat: Heartbeat) -> None:
        self._socket_reader = socket_reader
        self._heartbeat = heartbeat

    def resume(self) -> None:
        """Act on the events that waited (for room, or for a puller)."""
        if self._pos < len(self._pending):
            self._act()

    def pull(self, timeout: Optional[float]) -> Optional[Union[str, bytes]]:
        """Read on this thread until a message is in the inbox (None: closed)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            message = self._inbox.get_nowait()
            if message is not None or self._closing.state is ReadyState.CLOSED:
                return message
            if self._pos < len(self._pending):
                self._act()
                continue
            if self._transport.corked:
                self._transport.push()  # answers held for read-ahead that ended: out before waiting
            try:
                self._socket_reader.pull_once(deadline)
            except TimeoutError:
                raise TimeoutError(f"no message within {timeout} s") from None

    def feed(self, data: bytes) -> None:
        """Parse ``data`` and act on its events."""
        self.bytes_in += len(data)
        if self._closing.state is not _OPEN and not self._closing.reads_frames:  # open: it reads (not lingering)
            return
        messages = self._frames.plain_messages(data)
        if messages is None:
            events = self._frames.receive_data(data)
            if not events:
                return
        elif len(messages) == 1 and self._pos >= len(self._pending) and self._deliver_now(messages[0]):
            return
        else:
            events = [Message(message) for message in messages]
        if self._pos < len(self._pending):
            events = self._pending[self._pos:] + events
        self._pending, self._pos = events, 0
        self._act()

    def _deliver_now(self, data: Union[str, bytes]) -> bool:
        """The hot path (one message read alone, nothing waiting): what
        ``_act`` does with it, with no event object: to the listeners, or
        without any to the inbox (the blocking style); False when it cannot
        go at once (``_act`` decides then)."""
        reader = self._socket_reader
        if self._closing.state is not _OPEN or reader.dispatcher is not None:
            return False
        if not self._listeners.get("message"):
            if len(self._inbox) >= self._options.max_queue:
                return False
            self.messages_in += 1
            self._inbox.put(data, wait=False)
            return True
        self.messages_in += 1
        reader.enter_listener()
        try:
            self._emit("message", data, type(data) is not str)
        finally:
            reader.leave_listener()
        return True

    def _act(self) -> None:
        """Act on the pending events in order, until they are done, a
        message finds no room, or the runner's turn ends (a hand-off).
        With several events on plain TCP, the answers to all but the last
        go out with MSG_MORE (see ``transport.py``)."""
        pending = self._pending
        reader = self._socket_reader
        transport = self._transport
        pulling = reader.pulling
        cork = transport.can_cork and len(pending) - self._pos > 1 and not pulling
        last = len(pending) - 1
        queued = False  # a message went to the inbox while pulling
        still_runner = True
        try:
            while True:
                pos = self._pos
                if pos > last:
                    self._pending, self._pos = _NO_EVENTS, 0
                    return
                event = pending[pos]
                kind = type(event)
                if kind is Message and self._closing.state is _OPEN and self._listeners.get("message") and reader.dispatcher is None:
                    # The hot path: _deliver to the listeners inline, in fewer calls.
                    self._pos = pos + 1
                    if cork:
                        transport.more_coming = pos < last
                    self.messages_in += 1
                    data = event.data
                    reader.enter_listener()
                    try:
                        self._emit("message", data, type(data) is not str)
                    finally:
                        still_runner = reader.leave_listener()
                    if not still_runner:
                        return
                    continue
                if kind is Message:
                    if self._no_room():
                        self._hold(pos)
                        return
                elif self._no_room_for_control(kind, event):
                    self._hold(pos)
                    return
                elif queued:
                    # The puller returns the messages before this event to the application first,
                    # so that their answers go out before a close or a violation that followed;
                    # pings read meanwhile are answered now (the application may not read again soon).
                    self._answer_ahead(pos)
                    return
                self._pos = pos + 1
                if cork:
                    transport.more_coming = pos < last
                if kind is Message:
                    self.messages_in += 1
                    delivered = self._deliver(event.data)
                    if delivered is None:
                        still_runner = False
                        return
                    if delivered and pulling:
                        queued = True
                else:
                    still_runner = self._act_on_control(event, kind)
                    if not still_runner:
                        return
        finally:
            if cork and still_runner:
                transport.more_coming = False
                if transport.corked:
                    transport.push()

    def _act_on_control(self, event: Event, kind: type) -> bool:
        """Act on one event that is not a message; False when the runner's
        turn ended in a listener."""
        if kind is Ping:
            return self._on_ping(event.payload)  # type: ignore[union-attr]
        if kind is _Emit:
            return self.emit_in_order(event.event, event.payload)  # type: ignore[union-attr]
        if kind is Pong:
            self._heartbeat.pong(event.payload)  # type: ignore[union-attr]
            return self.emit_in_order("pong", event.payload)  # type: ignore[union-attr]
        if kind is _End:  # the end of the stream, read ahead while these events waited
            self._socket_reader.end_in_order()
            return True
        if kind is CloseReceived or kind is Failure:
            # While open, after the messages queued for the dispatcher, so that their answers go
            # out first; once closing, the messages are discarded and the close goes on at once.
            dispatcher = self._socket_reader.dispatcher
            if dispatcher is not None and dispatcher.thread is not threading.current_thread() and self._closing.is_open:
                if kind is CloseReceived:
                    queued = dispatcher.call(self._ws._on_close_frame, event.code, event.reason, bounded=False)  # type: ignore[union-attr]
                else:
                    queued = dispatcher.call(self._ws._on_protocol_error, event.error, bounded=False)  # type: ignore[union-attr]
                if queued:
                    return True
            if kind is CloseReceived:
                self._ws._on_close_frame(event.code, event.reason)  # type: ignore[union-attr]
                return True
            return self._ws._on_protocol_error(event.error)  # type: ignore[union-attr]
        return True

    def _no_room(self) -> bool:
        """True when the next message has nowhere to go yet (read by the
        one thread that fills the queues: room only grows meanwhile)."""
        if not self._closing.delivers_messages:
            return False  # discarded
        if self._listeners.get("message"):
            dispatcher = self._socket_reader.dispatcher
            return dispatcher is not None and dispatcher.full()
        return len(self._inbox) >= self._options.max_queue

    def _deliver(self, data: Union[str, bytes]) -> Optional[bool]:
        """Give a message to the listeners, or else to the inbox (True).
        Once the server is closing, it is discarded. None when the
        runner's turn ended in the listener (a hand-off)."""
        if not self._closing.delivers_messages:
            return False
        if self._listeners.get("message"):
            dispatcher = self._socket_reader.dispatcher
            is_binary = not isinstance(data, str)
            if dispatcher is not None and dispatcher.call(self._emit, "message", data, is_binary):
                return False
            return False if self._emit_inline("message", data, is_binary) else None
        self._inbox.put(data, wait=False)
        return True

    def _emit_inline(self, event: str, *args: Any) -> bool:
        """Call the listeners on this thread; False when the connection's
        reading was handed off meanwhile (this thread is its dispatcher now)."""
        reader = self._socket_reader
        reader.enter_listener()
        try:
            self._emit(event, *args)
        finally:
            still_runner = reader.leave_listener()
        return still_runner

    def emit_in_order(self, event: str, *args: Any, bounded: bool = True) -> bool:
        """Emit after the messages read before (on the runner, or queued for
        the dispatcher: see ``dispatch.py``). A ``bounded`` call counts
        against ``max_queue`` and is dropped when the queue is full once the
        connection is closing; the one ``'error'`` is not. False when the
        runner's turn ended in a listener."""
        if not self._listeners.get(event):
            return True
        dispatcher = self._socket_reader.dispatcher
        if dispatcher is not None and dispatcher.thread is not threading.current_thread():
            if dispatcher.call(self._emit, event, *args, bounded=bounded):
                return True
        return self._emit_inline(event, *args)

    def _on_ping(self, payload: bytes) -> bool:
        if self._options.auto_pong:
            self._ws._post_quietly(self._writer.pong(payload), FrameKind.PONG)
        return self.emit_in_order("ping", payload)
