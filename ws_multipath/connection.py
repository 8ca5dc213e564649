"""One open WebSocket connection on the server side: ``WebSocket``.

Threads: see ``reader.py``. In short, a connection costs one thread, the
server's request thread: it runs the ``'connection'`` listeners, reads for a
listener that waits in ``receive()``, and reads until the end once they
return. ``'message'``, ``'ping'``, ``'pong'`` and ``'close'`` listeners run on
the reading thread, in order, one at a time; there is no hand-off per
message.

Where messages go: to the ``'message'`` listeners when there are any at the
time the message is complete, otherwise to the inbox (at most ``max_queue``
messages) that ``receive()`` and iteration read. When the inbox is full the
connection stops reading the socket (backpressure) until the application
takes a message.

Closing: ``close()`` sends a close frame and waits (in the background) for
the peer's, up to ``close_timeout``; when the peer closes first, its code and
reason are echoed. A protocol violation fails the connection with the RFC
6455 close code. Either way the TCP connection is then closed, ``'close'`` is
emitted once with the final code and reason, and ``receive()`` raises
``ConnectionClosed`` once the inbox is empty.
"""

from __future__ import annotations

import enum
import threading
import time
from typing import TYPE_CHECKING, Any, Iterator, Optional, Union

from .emitter import EventEmitter, logger
from .errors import ConnectionClosed, ProtocolError, connection_closed
from .events import CloseReceived, Failure, Message, Ping, Pong
from .heartbeat import Heartbeat
from .inbox import Inbox
from .protocol import FrameReader, FrameWriter, Payload, check_close_code
from .reader import SocketReader
from .request import Request
from .timers import Timer, Timers
from .transport import Transport

if TYPE_CHECKING:
    from .options import HandlerOptions

__all__ = ["WebSocket", "ReadyState"]

class ReadyState(enum.IntEnum):
    """``ws.ready_state`` values, numbered as in the browser API and ``ws``."""

    CONNECTING = 0
    OPEN = 1
    CLOSING = 2
    CLOSED = 3


class WebSocket(EventEmitter):
    """A server-side WebSocket connection, handed to ``'connection'`` listeners.

    Events: ``'message'`` ``(data, is_binary)``, ``'close'`` ``(code, reason)``,
    ``'error'`` ``(exc)`` (protocol errors, listener errors), ``'ping'``
    ``(payload)``, ``'pong'`` ``(payload)``.

    State: ``_lock`` guards the ready state and the close code and reason; it
    is never held while writing or calling listeners. The inbox, the socket
    reader and the transport have their own locks.
    """

    EVENTS = frozenset({"message", "close", "error", "ping", "pong"})

    CONNECTING = ReadyState.CONNECTING
    OPEN = ReadyState.OPEN
    CLOSING = ReadyState.CLOSING
    CLOSED = ReadyState.CLOSED

    def __init__(
        self,
        transport: Transport,
        request: Request,
        options: "HandlerOptions",
        reader: FrameReader,
        writer: FrameWriter,
        timers: Timers,
        protocol: str = "",
        extensions: str = "",
        parent: Optional[EventEmitter] = None,
        on_closed: Any = None,
    ) -> None:
        super().__init__(error_parent=parent)
        self.request = request
        self.protocol = protocol
        self.extensions = extensions
        self.close_code: Optional[int] = None
        self.close_reason: str = ""
        self._transport = transport
        self._options = options
        self._reader = reader
        self._writer = writer
        self._timers = timers
        self._on_closed = on_closed
        self._lock = threading.Lock()
        self._inbox = Inbox(options.max_queue)
        self._state = ReadyState.OPEN
        self._close_sent = False
        self._discarding = False  # closing: read and drop until EOF
        self._held_back: list = []  # events after a message the puller returns first
        self._close_timer: Optional[Timer] = None
        self._socket_reader = SocketReader(transport.sock, timers, self._feed, self._begin, self._resume, self._finish, request.path)
        self._heartbeat = Heartbeat(
            timers,
            options.ping_interval,
            options.ping_timeout,
            self._post_heartbeat_ping,
            self._on_pong_timeout,
            self._socket_reader.reading,
        )

    # -- attributes ---------------------------------------------------------

    @property
    def ready_state(self) -> ReadyState:
        return self._state

    @property
    def path(self) -> str:
        return self.request.path

    @property
    def remote_address(self) -> Optional[tuple]:
        return self.request.remote_address

    def __repr__(self) -> str:
        return f"<WebSocket {self.path} {self.remote_address} {self._state.name}>"

    # -- sending ------------------------------------------------------------

    def send(self, data: Union[str, Payload]) -> None:
        """Send one message: ``str`` as text, bytes-like as binary.

        Thread-safe; returns once the whole frame is in the kernel's buffer.
        Blocks while the client does not read, for at most ``write_timeout``,
        after which the connection is dropped (code 1011). Raises
        ``ConnectionClosed`` once the connection is closing or closed.
        """
        if not isinstance(data, (str, bytes, bytearray, memoryview)):
            raise TypeError(f"data must be str or bytes-like, not {type(data).__name__}")
        if self._state is not ReadyState.OPEN:
            raise self._closed_error()
        try:
            self._transport.write_message(self._encode_if_open, data)
        except OSError:
            self._transport.abort()
            raise self._closed_error() from None

    def _encode_if_open(self, data: Union[str, Payload]) -> tuple[bytes, Payload]:
        """Encode under the write lock, after a close frame nothing may follow."""
        if self._close_sent or self._state is not ReadyState.OPEN:
            raise self._closed_error()
        return self._writer.message(data)

    def ping(self, data: Payload = b"") -> None:
        """Send a ping; its ``'pong'`` arrives as an event. At most 125 bytes."""
        self._send_control(self._writer.ping(bytes(data)))

    def pong(self, data: Payload = b"") -> None:
        """Send an unsolicited pong. At most 125 bytes."""
        self._send_control(self._writer.pong(bytes(data)))

    def _send_control(self, frame: bytes) -> None:
        self._check_open()
        try:
            self._transport.write(frame)
        except OSError:
            self._transport.abort()
            raise self._closed_error() from None

    def _post(self, data: Union[str, bytes], shared_frame: Optional[bytes]) -> bool:
        """Queue a message without blocking (``broadcast``); False if not open."""
        if self._state is not ReadyState.OPEN:
            return False
        if shared_frame is not None and self._writer.shares_frames:
            self._transport.post(shared_frame)
        else:
            self._transport.post(lambda: b"".join(self._writer.message(data)))
        return True

    def _check_open(self) -> None:
        if self._state is not ReadyState.OPEN:
            raise self._closed_error()

    def _closed_error(self) -> ConnectionClosed:
        return connection_closed(self.close_code or 1006, self.close_reason)

    # -- closing ------------------------------------------------------------

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake; return without waiting for it.

        Invalid codes (1005, 1006, 999, ...) and reasons over 123 UTF-8 bytes
        raise ``ValueError``. Does nothing if the connection is already
        closing or closed. If the client does not answer within
        ``close_timeout`` seconds, the TCP connection is dropped.
        """
        encoded = check_close_code(code, reason)
        self._start_close(code, reason, encoded)

    def _start_close(self, code: int, reason: str, encoded: bytes, blocking: bool = True) -> bool:
        """Send a close frame (or post it, when ``blocking`` is False: used by
        the server and handler so that one stuck client delays nobody)."""
        with self._lock:
            if self._state is not ReadyState.OPEN:
                return False
            self._state = ReadyState.CLOSING
            self.close_code, self.close_reason = code, reason
        self._inbox.unbound()
        self._close_timer = self._timers.call_later(self._options.close_timeout, self._on_close_timeout)
        if blocking:
            self._send_close_frame(code, encoded)
        elif not self._close_sent:
            self._close_sent = True
            self._transport.post(self._writer.close(code, encoded))
        return True

    def _send_close_frame(self, code: Optional[int], encoded: bytes = b"") -> None:
        if self._close_sent:
            return
        self._close_sent = True
        try:
            self._transport.write(self._writer.close(code, encoded))
        except OSError:
            self._transport.abort()

    def _on_close_timeout(self) -> None:
        if self._state is not ReadyState.CLOSED:
            logger.info("dropping %s: no close frame within %ss", self.remote_address, self._options.close_timeout)
            self.terminate()

    def terminate(self) -> None:
        """Drop the TCP connection at once, without a closing handshake."""
        with self._lock:
            if self._state is ReadyState.OPEN:
                self._state = ReadyState.CLOSING
        self._inbox.unbound()
        self._transport.abort()

    def _fail(self, code: int, reason: str) -> None:
        """Record why the connection must end (from a timer or the transport)."""
        with self._lock:
            if self.close_code is None or self._state is ReadyState.OPEN:
                self.close_code, self.close_reason = code, reason
            if self._state is ReadyState.OPEN:
                self._state = ReadyState.CLOSING
        self._inbox.unbound()

    # -- receiving ----------------------------------------------------------

    def receive(self, timeout: Optional[float] = None) -> Union[str, bytes]:
        """The next message: ``str`` (text) or ``bytes`` (binary).

        Raises ``TimeoutError`` after ``timeout`` seconds without one, and
        ``ConnectionClosed`` once the connection is closed and no message is
        left. Only messages that found no ``'message'`` listener come here.
        Must not be called from a ``'message'`` listener (it would wait for
        itself): that raises ``RuntimeError``.
        """
        if self._socket_reader.on_reading_thread():
            raise RuntimeError("receive() called from a listener on the thread that reads this connection: it would never return")
        if self._socket_reader.claim_pull():
            try:
                message = self._pull(timeout)
            finally:
                self._socket_reader.release_pull()
        else:
            message = self._inbox.get(timeout)
        if message is None:
            raise self._closed_error()
        return message

    def _pull(self, timeout: Optional[float]) -> Optional[Union[str, bytes]]:
        """Read on this thread until a message is in the inbox (None: closed)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            message = self._inbox.get_nowait()
            if message is not None or self._state is ReadyState.CLOSED:
                return message
            if self._held_back:
                self._feed(b"")
                continue
            try:
                self._socket_reader.pull_once(deadline)
            except TimeoutError:
                raise TimeoutError(f"no message within {timeout} s") from None

    def __iter__(self) -> Iterator[Union[str, bytes]]:
        """Yield messages until the connection closes."""
        while True:
            try:
                yield self.receive()
            except ConnectionClosed:
                return

    # -- reading (on the thread that ``SocketReader`` picks) ----------------

    def _watch(self) -> None:
        """Before the ``'connection'`` listeners: have unread data taken over
        by a reader thread if they keep the request thread long."""
        self._socket_reader.watch()

    def _serve(self) -> None:
        """The request thread, after ``'connection'`` listeners: read to the end."""
        self._socket_reader.serve()

    def _begin(self) -> None:
        """Before the first read: start the heartbeat, parse what came with the handshake."""
        self._heartbeat.start()
        if self.request.buffered:
            self._feed(self.request.buffered)

    def _resume(self) -> None:
        """A thread starts looping: act on events a puller held back."""
        if self._held_back:
            self._feed(b"")

    def _feed(self, data: bytes) -> None:
        """Parse ``data`` and act on its events (``b""``: only the held-back ones)."""
        if self._discarding:
            return
        events = self._reader.receive_data(data) if data else []
        if self._held_back:
            events, self._held_back = self._held_back + events, []
        for index, event in enumerate(events):
            kind = type(event)
            if kind is Message:
                if self._deliver(event.data) and self._socket_reader.pulling:  # type: ignore[union-attr]
                    # The puller returns this message to the application first, so that
                    # its answer goes out before a close or a violation that followed.
                    self._held_back = events[index + 1 :]
                    return
            elif kind is Ping:
                self._on_ping(event.payload)  # type: ignore[union-attr]
            elif kind is Pong:
                self._heartbeat.pong()
                self.emit("pong", event.payload)  # type: ignore[union-attr]
            elif kind is CloseReceived:
                self._on_close_frame(event.code, event.reason)  # type: ignore[union-attr]
            elif kind is Failure:
                self._on_protocol_error(event.error)  # type: ignore[union-attr]

    def _deliver(self, data: Union[str, bytes]) -> bool:
        """Give a message to the listeners, or else to the inbox (True)."""
        if self._listeners.get("message"):
            self.emit("message", data, not isinstance(data, str))
            return False
        self._inbox.put(data, wait=not self._socket_reader.pulling)  # the puller is the consumer: never wait on itself
        return True

    def _on_ping(self, payload: bytes) -> None:
        if self._options.auto_pong and self._state is ReadyState.OPEN:
            try:
                self._transport.write(self._writer.pong(payload))
            except OSError:
                self._transport.abort()
        self.emit("ping", payload)

    def _on_close_frame(self, code: int, reason: str) -> None:
        with self._lock:
            if self._state is ReadyState.OPEN:
                self._state = ReadyState.CLOSING
                self.close_code, self.close_reason = code, reason
            elif self.close_code is None:
                self.close_code, self.close_reason = code, reason
        # RFC 6455 section 5.5.1: echo the status code; 1005 means "none sent".
        self._send_close_frame(None if code == 1005 else code, reason.encode("utf-8"))
        self._linger()

    def _linger(self) -> None:
        """End the TCP connection from this side (RFC 6455 section 7.1.1: the
        server closes first) by sending FIN, then read and drop until the
        client's FIN, within ``close_timeout``. Closing with unread bytes
        would send a reset instead, which can destroy the last frames sent."""
        self._discarding = True
        self._transport.shutdown_write()
        if self._close_timer is None:
            self._close_timer = self._timers.call_later(self._options.close_timeout, self._transport.abort)

    def _on_protocol_error(self, error: ProtocolError) -> None:
        logger.info("failing %s: %s", self.remote_address, error)
        with self._lock:
            self.close_code, self.close_reason = error.code, error.reason[:120]
            self._state = ReadyState.CLOSING
        self._inbox.unbound()
        self._send_close_frame(error.code, self.close_reason.encode("utf-8")[:123])
        self._linger()
        if self._listeners.get("error"):
            self.emit("error", error)

    def _finish(self) -> None:
        self._heartbeat.stop()
        if self._close_timer is not None:
            self._close_timer.cancel()
        with self._lock:
            self._state = ReadyState.CLOSED
            lost = self.close_code is None
            if lost:
                self.close_code, self.close_reason = 1006, ""
        self._inbox.close()
        if lost:
            logger.info("connection from %s on %s lost without a closing handshake (1006)", self.remote_address, self.path)
        self._transport.close()
        if self._on_closed is not None:
            self._on_closed(self)
        self.emit("close", self.close_code, self.close_reason)

    def _post_heartbeat_ping(self) -> None:
        """Heartbeat (timer thread): ping without blocking, while open."""
        if self._state is ReadyState.OPEN and not self._close_sent:
            self._transport.post(self._writer.ping(b""))

    def _on_pong_timeout(self) -> None:
        """The heartbeat's verdict (timer thread): the client stopped answering."""
        if self._state is ReadyState.OPEN:
            logger.info("dropping %s: no pong within %ss", self.remote_address, self._options.ping_timeout)
            self._fail(1011, "keepalive ping timeout")
            self._transport.abort()
