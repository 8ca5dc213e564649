"""One open WebSocket connection on the server side: ``WebSocket``.

Threads: see ``reader.py`` and ``loop.py``. In short, the server's request
thread runs the ``'connection'`` listeners and reads for one that waits in
``receive()``; once they return, the connection joins its handler's event
loop and costs no thread of its own. ``'message'``, ``'ping'``, ``'pong'``
and ``'close'`` listeners run on the thread that reads the connection, in
order, one at a time, with no hand-off per message; one that blocks keeps
its thread, and the loop goes on on another (``handoff.py``).

Where messages go, and how arriving frames are acted on: ``incoming.py``.

Closing (the rules live in ``protocol/closing.py``): ``close()`` sends a close frame
and waits (in the background) for the peer's, up to ``close_timeout``;
messages that arrive meanwhile are discarded, those already queued stay
receivable. When the peer closes first, its code and reason are echoed. A
protocol violation fails the connection with the RFC 6455 close code. Either
way the TCP connection is then closed, ``'close'`` is emitted once with the
final code and reason, and ``receive()`` raises ``ConnectionClosed`` once
the inbox is empty. Nothing is ever written after the close frame.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Iterator, Optional, Union

from ..emitter import EventEmitter
from ..errors import ConnectionClosed, ProtocolError
from ..http.request import Request
from ..log import format_address, logger
from ..protocol.closing import Closing, FrameKind, ReadyState
from ..protocol.frames import FrameReader, FrameWriter, check_close_code
from .heartbeat import Heartbeat
from .ids import new_id
from .inbox import Inbox
from .incoming import Incoming
from .loop import EventLoop
from .reader import SocketReader
from .sending import Sending
from .timers import Timer, Timers
from .transport import Transport

if TYPE_CHECKING:
    from ..options import HandlerOptions

__all__ = ["WebSocket", "ReadyState"]


class WebSocket(Sending, EventEmitter):
    """A server-side WebSocket connection, handed to ``'connection'`` listeners.

    ``id``: 32 hex digits (a uuid4), unique across a cluster of servers:
    ``broadcast(exclude=...)`` carries it to the other processes.

    Events: ``'message'`` ``(data, is_binary)``, ``'close'`` ``(code, reason)``,
    ``'error'`` ``(exc)`` (protocol errors, listener errors), ``'ping'``
    ``(payload)``, ``'pong'`` ``(payload)``.

    State: ``_lock`` guards ``_closing`` (the ready state, close code and
    reason), except its ``close_sent`` flag, which the transport's write
    lock guards; ``_lock`` is never held while writing or calling listeners.
    The inbox, the socket reader and the transport have their own locks.
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
        loop: Optional[EventLoop] = None,
    ) -> None:
        super().__init__(error_parent=parent)
        self.id = new_id()  # unique across the cluster: broadcast(exclude=...) travels by id
        self.request = request
        self.protocol = protocol
        self.extensions = extensions
        self._transport = transport
        self._small_sends = transport.sends_small and writer.shares_frames  # Sending.send's hot path
        self._options = options
        self._writer = writer
        self._timers = timers
        self._on_closed = on_closed
        # presence (cluster/presence.py; guarded by that Presence's lock): the handler's, or None when it has none
        self._presence: Any = None
        self._presence_info: Optional[dict[str, Any]] = None  # None: {} once it joins (no dict per connection before)
        self._presence_in = False
        self._presence_gone = False
        self._lock = threading.Lock()
        self._closing = Closing()
        if loop is None:
            raise TypeError("loop: a WebSocket is made by its handler, which gives it an event loop")
        self._inbox = Inbox(options.max_queue)
        self._incoming = Incoming(self, reader, self._inbox, self._closing, transport, options, writer)
        self._close_timer: Optional[Timer] = None
        # stats.py: the handler's accounting (messages and bytes in: Incoming)
        self._opened_at = 0.0
        self._dropped: Optional[str] = None  # why the server cut the connection
        self._socket_reader = SocketReader(
            transport.sock, timers, loop, self._incoming.feed, self._begin, self._incoming.resume, self._finish,
            self._incoming, options.max_queue, transport.tls_lock,
        )
        self._inbox.on_room = self._socket_reader.room
        transport.attach(self._closing.may_write, self._fail, self._socket_reader.aborted)
        self._heartbeat = Heartbeat(
            timers, options.ping_interval, options.ping_timeout, self._post_heartbeat_ping, self._on_pong_timeout, self._socket_reader.reading,
        )
        self._incoming.attach(self._socket_reader, self._heartbeat)

    # -- attributes ---------------------------------------------------------

    @property
    def ready_state(self) -> ReadyState:
        return self._closing.state

    @property
    def close_code(self) -> Optional[int]:
        """The connection's close code (RFC 6455 section 7.1.5), as the
        ``'close'`` event reports it: the code of the client's close frame
        (1005: it had none), or 1006 once closed without one (the server
        failed or dropped the connection, or it was lost); None before."""
        return self._closing.peer_code

    @property
    def close_reason(self) -> str:
        """The reason of the client's close frame; ``""`` without one."""
        return self._closing.received_reason

    @property
    def sent_close_code(self) -> Optional[int]:
        """The code this side closed with: the one its close frame carries,
        or, for a connection it dropped without one (write timeout, heartbeat,
        ``terminate()`` after ``close()``), the one that says why (1011...);
        1006 when it was lost before either side closed; None while open.
        ``stats()`` counts closes by this code."""
        return self._closing.code

    @property
    def sent_close_reason(self) -> str:
        return self._closing.reason

    @property
    def buffered_amount(self) -> int:
        """Bytes accepted for this client and not yet written to the kernel
        (ws's ``bufferedAmount``): the frames waiting in its outbox
        (broadcasts, heartbeat pings, a posted close frame; a compressed one
        at its uncompressed size). ``send()`` returns only once its frame is
        in the kernel, so it adds nothing once it has returned. At most
        about 16 MiB: past that the client is dropped with 1008."""
        return self._transport.buffered_amount

    @property
    def path(self) -> str:
        return self.request.path

    @property
    def remote_address(self) -> Optional[tuple[Any, ...]]:
        return self.request.remote_address

    def __repr__(self) -> str:
        return f"<WebSocket {self.path} {format_address(self.remote_address)} {self.ready_state.name}>"

    def _label(self) -> str:
        """Who this is, for log lines: ``host:port on /path`` (``client via
        proxy`` when a trusted proxy said who the client is)."""
        request = self.request
        via = f" via {format_address(request.peer_address)}" if request.peer_address != request.remote_address else ""
        return f"{format_address(request.remote_address)}{via} on {self.path}"

    # -- presence -----------------------------------------------------------

    def set_presence(self, info: dict[str, Any]) -> None:
        """What the others see of this connection in ``handler.presence()``
        and the ``'join'`` events, in every process: a dict that JSON can
        carry, at most 1 KiB as compact JSON (``ValueError`` past it,
        ``TypeError`` for a non-dict). Called in a ``'connection'``
        listener, the connection joins with it; called later, it joins
        again with the new info (an update). Needs a handler made with
        ``presence=True`` (``RuntimeError`` otherwise)."""
        if self._presence is None:
            raise RuntimeError(f"presence is off on {self.path}: create_handler(path, presence=True)")
        self._presence.update(self, info)

    # -- closing ------------------------------------------------------------

    def close(self, code: int = 1000, reason: Union[str, bytes] = "") -> None:
        """Start the closing handshake; return without waiting for it.

        ``reason`` is a ``str`` or UTF-8 ``bytes``. Invalid codes (1005,
        1006, 999, ...), reasons over 123 UTF-8 bytes and invalid UTF-8 raise
        ``ValueError``. Does nothing if the connection is already closing or
        closed. If the client does not answer within ``close_timeout``
        seconds, the TCP connection is dropped.
        """
        encoded = check_close_code(code, reason)
        self._start_close(code, encoded.decode("utf-8"), encoded)

    def _unhandled_listener_error(self, event: str) -> None:
        # a 'message' listener raised and no 'error' listener took it: tell the
        # client (1011, as websockets does) rather than leave it waiting
        if event == "message":
            self.close(1011, "internal error")

    def _start_close(self, code: int, reason: str, encoded: bytes, blocking: bool = True) -> bool:
        """Send a close frame (or post it, when ``blocking`` is False: used by
        the server and handler so that one stuck client delays nobody)."""
        with self._lock:
            if not self._closing.start(code, reason):
                return False
        self._seal()
        self._close_timer = self._timers.call_later(self._options.close_timeout, self._on_close_timeout)
        frame = self._writer.close(code, encoded)
        if blocking:
            self._write_quietly(frame, FrameKind.CLOSE)
        else:
            self._transport.post(frame, FrameKind.CLOSE)
        return True

    def _on_close_timeout(self) -> None:
        if self.ready_state is not ReadyState.CLOSED:
            logger.info("dropping %s: no close frame within %ss", self._label(), self._options.close_timeout)
            if self._dropped is None:
                self._dropped = "close timeout"
            self.terminate()

    def terminate(self) -> None:
        """Drop the TCP connection at once, without a closing handshake."""
        with self._lock:
            self._closing.terminated()
        self._seal()
        self._transport.abort()

    def _fail(self, code: int, reason: str) -> None:
        """The connection must be dropped (write deadline, outbox overflow,
        no pong): record why; the caller aborts the socket."""
        logger.info("dropping %s: %s (%d)", self._label(), reason, code)
        if self._dropped is None:
            self._dropped = reason
        with self._lock:
            self._closing.fatal(code, reason)
        self._seal()

    # -- flow control -------------------------------------------------------

    def pause(self) -> None:
        """Stop reading from the client (ws's ``pause()``): no ``'message'``
        (or other) event comes until ``resume()``, and the client is held
        back by TCP once the server read 64 KiB ahead and the kernel's
        buffers are full. Pings are not answered meanwhile; pongs read ahead
        still answer the heartbeat (a paused client that went away is
        dropped: ``holding.py``). Once closing, it holds nothing back. A
        thread waiting in ``receive()`` reads regardless. Does nothing on a
        closed connection."""
        self._socket_reader.pause()

    def resume(self) -> None:
        """Read again after ``pause()`` (ws's ``resume()``)."""
        self._socket_reader.resume_reading()

    @property
    def is_paused(self) -> bool:
        """True between ``pause()`` and ``resume()`` (ws's ``isPaused``)."""
        return self._socket_reader.paused

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
        message: Optional[Union[str, bytes]] = self._inbox.get_nowait()  # read ahead (pipelined clients): no reading
        if message is None:
            if self._socket_reader.claim_pull():
                try:
                    message = self._incoming.pull(timeout)
                finally:
                    self._socket_reader.release_pull()
            else:
                message = self._inbox.get(timeout)
            if message is None:
                raise self._closed_error()
        transport = self._transport
        if transport.can_cork:  # the answers to messages read ahead go out together (transport.py)
            transport.more_coming = len(self._inbox) > 0
        return message

    def __iter__(self) -> Iterator[Union[str, bytes]]:
        """Yield messages until the connection closes."""
        while True:
            try:
                yield self.receive()
            except ConnectionClosed:
                return

    # -- reading (on the thread that ``SocketReader`` picks; what it reads: ``incoming.py``)

    def _watch(self) -> None:
        """Before the ``'connection'`` listeners: have unread data taken over
        by a reader thread if they keep the request thread long."""
        self._socket_reader.watch(bool(self.request.buffered))

    def _serve(self) -> bool:
        """The request thread, after ``'connection'`` listeners: the
        connection goes on in its event loop (True: the loop owns the
        socket now; False: it ended here)."""
        return self._socket_reader.serve()

    def _begin(self) -> None:
        """Before the first read: start the heartbeat, parse what came with the handshake."""
        self._heartbeat.start()
        if self.request.buffered:
            self._socket_reader.feed_first(self.request.buffered)

    # -- the end: close frames, violations, the socket gone (reading thread, timers)

    def _seal(self) -> None:
        """Closing: the reader must never wait for the application again."""
        self._inbox.seal()
        self._socket_reader.seal()  # and a dispatcher made later (a takeover after close())

    def _on_close_frame(self, code: int, reason: str) -> None:
        with self._lock:
            echo = self._closing.received(code, reason)
        self._post_quietly(self._writer.close(echo, reason.encode("utf-8")), FrameKind.CLOSE)
        self._linger()

    def _linger(self) -> None:
        """End the TCP connection from this side (RFC 6455 section 7.1.1: the
        server closes first) by sending FIN after the close frame, then read
        and drop until the client's FIN, within ``close_timeout``. Closing
        with unread bytes would send a reset instead, which can destroy the
        last frames sent."""
        self._transport.shutdown_write()
        if self._close_timer is None:
            self._close_timer = self._timers.call_later(self._options.close_timeout, self._transport.abort)

    def _on_protocol_error(self, error: ProtocolError) -> bool:
        logger.info("failing %s: %s", self._label(), error)
        reason = error.reason[:120]
        with self._lock:
            self._closing.failed(error.code, reason)
        self._seal()
        self._post_quietly(self._writer.close(error.code, reason.encode("utf-8")[:123]), FrameKind.CLOSE)
        self._linger()
        if self._listeners.get("error"):
            return self._incoming.emit_in_order("error", error, bounded=False)  # once per connection
        return True

    def _finish(self) -> None:
        self._heartbeat.stop()
        if self._close_timer is not None:
            self._close_timer.cancel()
        with self._lock:
            lost = self._closing.ended()
        self._inbox.close()
        if lost:
            logger.info("connection from %s lost without a closing handshake (1006)", self._label())
        self._transport.close()
        if self._on_closed is not None:
            self._on_closed(self)
        self._incoming.emit_in_order("close", self.close_code, self.close_reason, bounded=False)

    def _post_heartbeat_ping(self, payload: bytes) -> None:
        """Heartbeat (timer thread): ping without blocking, while open."""
        if self._closing.is_open:
            self._transport.post(self._writer.ping(payload), FrameKind.PING)

    def _on_pong_timeout(self) -> None:
        """The heartbeat's verdict (timer thread): the client stopped answering."""
        if self._closing.is_open:
            self._fail(1011, "keepalive ping timeout")
            self._transport.abort()

