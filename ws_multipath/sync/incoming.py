"""What arrives on one connection, acted on in order: ``Incoming``.

The socket reader (``reader.py``) hands each chunk it reads to ``feed``; the
frame parser turns it into events, and each is acted on, in order, on the
thread that read it: messages are delivered, pings answered, pongs given to
the heartbeat, and a close frame or a protocol violation handed to the
connection's closing side (``WebSocket._on_close_frame``,
``_on_protocol_error``).

Where messages go: to the ``'message'`` listeners when there are any at the
time the message is complete, otherwise to the inbox (at most ``max_queue``
messages) that ``receive()`` and iteration read. When the inbox is full the
connection stops reading the socket (backpressure) until the application
takes a message.

A ``receive()`` caller that finds the inbox empty reads on its own thread
(``pull``). Events read after a message it queued wait in ``_held_back``
until it has returned that message, so that the answer to a message goes
out before a close or a violation that followed it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from ..protocol.closing import Closing, FrameKind, ReadyState
from ..protocol.events import CloseReceived, Event, Failure, Message, Ping, Pong
from ..protocol.frames import FrameReader, FrameWriter
from .heartbeat import Heartbeat
from .inbox import Inbox
from .reader import SocketReader
from .transport import Transport

if TYPE_CHECKING:
    from ..options import HandlerOptions
    from .connection import WebSocket

__all__ = ["Incoming"]


class Incoming:
    """The reading side of one ``WebSocket``, which owns it.

    ``messages_in`` and ``bytes_in`` are counted here (``stats.py``); they
    and ``_held_back`` are touched only by the thread that reads the
    connection (one at a time: ``reader.py``). The connection's listener
    table and ``emit`` are used directly, so that a message costs no more
    calls than if this were the connection itself.

    ``attach`` hands over the socket reader and the heartbeat, which are
    made after this (the socket reader calls ``feed``).
    """

    __slots__ = (
        "_ws", "_listeners", "_emit", "_frames", "_inbox", "_closing", "_transport", "_options", "_writer",
        "_socket_reader", "_heartbeat", "_held_back", "messages_in", "bytes_in",
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
        self._held_back: list[Event] = []  # events after a message the puller returns first
        self.messages_in = 0
        self.bytes_in = 0

    def attach(self, socket_reader: SocketReader, heartbeat: Heartbeat) -> None:
        self._socket_reader = socket_reader
        self._heartbeat = heartbeat

    def resume(self) -> None:
        """A thread starts looping: act on events a puller held back."""
        if self._held_back:
            self.feed(b"")

    def pull(self, timeout: Optional[float]) -> Optional[Union[str, bytes]]:
        """Read on this thread until a message is in the inbox (None: closed)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            message = self._inbox.get_nowait()
            if message is not None or self._closing.state is ReadyState.CLOSED:
                return message
            if self._held_back:
                self.feed(b"")
                continue
            if self._transport.corked:
                self._transport.push()  # answers held for read-ahead that ended: out before waiting
            try:
                self._socket_reader.pull_once(deadline)
            except TimeoutError:
                raise TimeoutError(f"no message within {timeout} s") from None

    def feed(self, data: bytes) -> None:
        """Parse ``data`` and act on its events (``b""``: only the held-back ones)."""
        self.bytes_in += len(data)
        if not self._closing.reads_frames:
            return
        events = self._frames.receive_data(data) if data else []
        if self._held_back:
            events, self._held_back = self._held_back + events, []
        transport = self._transport
        if len(events) > 1 and transport.can_cork and not self._socket_reader.pulling:
            try:
                self._act_on(events, transport)
            finally:
                transport.more_coming = False
                if transport.corked:
                    transport.push()
        else:
            self._act_on(events)

    def _act_on(self, events: list[Event], corking: Optional[Transport] = None) -> None:
        """Act on parsed events in order; with ``corking``, the answers to all
        but the last go out with MSG_MORE (see ``transport.py``)."""
        last = len(events) - 1
        queued = False  # a message went to the inbox while pulling
        for index, event in enumerate(events):
            kind = type(event)
            if corking is not None:
                corking.more_coming = index < last
            if kind is Message:
                if queued and len(self._inbox) >= self._options.max_queue:
                    self._held_back = events[index:]
                    return
                self.messages_in += 1
                if self._deliver(event.data) and self._socket_reader.pulling:  # type: ignore[union-attr]
                    queued = True
            elif queued:
                # The puller returns the messages before this event to the application first,
                # so that their answers go out before a close or a violation that followed.
                self._held_back = events[index:]
                return
            elif kind is Ping:
                self._on_ping(event.payload)  # type: ignore[union-attr]
            elif kind is Pong:
                self._heartbeat.pong(event.payload)  # type: ignore[union-attr]
                self.emit_in_order("pong", event.payload)  # type: ignore[union-attr]
            elif kind is CloseReceived:
                self._ws._on_close_frame(event.code, event.reason)  # type: ignore[union-attr]
            elif kind is Failure:
                self._ws._on_protocol_error(event.error)  # type: ignore[union-attr]

    def _deliver(self, data: Union[str, bytes]) -> bool:
        """Give a message to the listeners, or else to the inbox (True).
        Once the server is closing, it is discarded."""
        if not self._closing.delivers_messages:
            return False
        if self._listeners.get("message"):
            dispatcher = self._socket_reader.dispatcher
            if dispatcher is None:
                self._emit_message(data)
            else:
                dispatcher.call(self._emit_message, data, wait=True)
            return False
        self._inbox.put(data, wait=not self._socket_reader.pulling)  # the puller is the consumer: never wait on itself
        return True

    def _emit_message(self, data: Union[str, bytes]) -> None:
        reader = self._socket_reader
        reader.enter_listener()
        try:
            self._emit("message", data, not isinstance(data, str))
        finally:
            reader.leave_listener()

    def emit_in_order(self, event: str, *args: Any, bounded: bool = True) -> None:
        """Emit on the thread that runs this connection's listeners, after
        the messages read before (see ``dispatch.py``). A ``bounded`` call
        counts against ``max_queue``, and is dropped when the queue is full
        once the connection is closing; the one ``'error'`` is not."""
        dispatcher = self._socket_reader.dispatcher
        if dispatcher is None:
            self._emit(event, *args)
        elif self._listeners.get(event):  # queued calls count against max_queue like messages
            dispatcher.call(self._emit, event, *args, wait=bounded)

    def _on_ping(self, payload: bytes) -> None:
        if self._options.auto_pong:
            self._ws._write_quietly(self._writer.pong(payload), FrameKind.PONG)
        self.emit_in_order("ping", payload)
