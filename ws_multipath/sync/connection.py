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

import functools
import threading
import uuid
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Iterator, Optional, Union

from ..emitter import EventEmitter
from ..errors import ConnectionClosed, ProtocolError, connection_closed
from ..http.request import Request
from ..log import format_address, logger
from ..protocol.closing import Closing, FrameKind, ReadyState
from ..protocol.frames import FrameReader, FrameWriter, Payload, check_close_code
from ..protocol.writer import FragmentPayloads, as_kind
from .heartbeat import Heartbeat
from .inbox import Inbox
from .incoming import Incoming
from .loop import EventLoop
from .reader import SocketReader
from .timers import Timer, Timers
from .transport import Transport

if TYPE_CHECKING:
    from ..options import HandlerOptions

__all__ = ["WebSocket", "ReadyState"]


class WebSocket(EventEmitter):
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
        self.id = uuid.uuid4().hex  # unique across the cluster: broadcast(exclude=...) travels by id
        self.request = request
        self.protocol = protocol
        self.extensions = extensions
        self._transport = transport
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
            self._label(), options.max_queue, transport.tls_lock,
        )
        self._inbox.on_room = self._socket_reader.room
        transport.attach(self._closing.may_write, self._fail, self._socket_reader.aborted)
        self._heartbeat = Heartbeat(
            timers,
            options.ping_interval,
            options.ping_timeout,
            self._post_heartbeat_ping,
            self._on_pong_timeout,
            self._socket_reader.reading,
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

    # -- sending ------------------------------------------------------------

    def send(self, data: Union[str, Payload, Iterable[Union[str, Payload]]], *, binary: Optional[bool] = None, compress: bool = True) -> None:
        """Send one message: ``str`` as text, bytes-like as binary; an
        iterable of them as one message in fragments.

        ``binary=True`` sends a ``str`` as a binary message (its UTF-8
        bytes), ``binary=False`` bytes as a text message (they must be valid
        UTF-8: ``ValueError`` otherwise), as ws's ``binary`` option.
        ``compress=False`` sends this message uncompressed when
        permessage-deflate was agreed (ws's ``compress``).

        Thread-safe; returns once the whole frame is in the kernel's buffer.
        Blocks while the client does not read; when it takes nothing for
        ``write_timeout`` seconds the connection is dropped (code 1011).
        Raises ``ConnectionClosed`` once the connection is closing or closed.

        Fragments (RFC 6455 section 5.4; ws's ``fin: false``, in the form
        websockets' ``send`` takes): an iterable (a generator, a list...) of
        ``str`` (a text message) or of bytes-like objects (binary) is sent
        as one message, one frame per item, as the iterable yields them:
        only the fragment in hand is held, so a large message can be
        streamed. The first frame has the message's opcode, the others are
        continuation frames, and an empty continuation frame with FIN ends
        it once the iterable does (as websockets does: no item is read ahead). An empty
        iterable sends nothing (websockets too); a ``dict`` is refused
        (``TypeError``). With permessage-deflate agreed and ``compress``
        true, the message is compressed whatever its fragments' sizes.

        Meanwhile other data messages wait until the message ends (other
        threads' ``send()`` calls, broadcasts, which are held in the outbox),
        while control frames go between its frames: pongs, heartbeat pings,
        a close frame (``close()`` does not wait for the message, which is
        then never finished: this ``send()`` raises ``ConnectionClosed``).
        No lock is held while the iterable runs; ``write_timeout`` applies
        to each frame. It counts as one message in ``stats()``.

        An iterable whose first item is neither ``str`` nor bytes-like, or
        that fails before its first item, raises and sends nothing. Once the
        message has begun it cannot be taken back: an item of the other kind
        (``TypeError``), one that cannot be encoded, or an exception from
        the iterable fails the connection (close frame 1011 "error in
        fragmented message", as websockets does) and is raised. A ``send()``
        from the iterable itself, on the same connection, raises
        ``RuntimeError`` (it would wait for its own message).
        """
        if not isinstance(data, (str, bytes, bytearray, memoryview)):
            if isinstance(data, Mapping):  # a common mistake, refused as websockets does
                raise TypeError(f"data is a {type(data).__name__}, not a message: send(json.dumps(data)), or send(data.keys()) for its keys as fragments")
            if not isinstance(data, Iterable):
                raise TypeError(f"data must be str, bytes-like or an iterable of fragments, not {type(data).__name__}")
            self._send_fragments(data, binary, compress)
            return
        if binary is not None:
            data = as_kind(data, binary)
        if self._closing.state is not ReadyState.OPEN:
            raise self._closed_error()
        frame = self._writer.message if compress else self._writer.message_uncompressed
        try:
            written = self._transport.write_message(frame, data)
        except OSError:
            self._transport.abort()
            raise self._closed_error() from None
        if not written:
            raise self._closed_error()

    def _send_fragments(self, fragments: Iterable[Union[str, Payload]], binary: Optional[bool], compress: bool) -> None:
        """``send(iterable)``: one message, a frame per item (see ``send``)."""
        transport = self._transport
        if transport.fragmenting_here:
            raise RuntimeError("send() called from the iterable of a fragmented send() on the same connection: it would wait for its own message")
        if self._closing.state is not ReadyState.OPEN:
            raise self._closed_error()
        items = iter(fragments)
        try:
            first = next(items)
        except StopIteration:
            return
        payloads = FragmentPayloads(first, binary)  # TypeError for a first item of neither kind
        payload = payloads(first)
        frame = functools.partial(self._writer.fragment, compressed=self._writer.compresses(compress))
        finished = False
        try:
            if self._fragment_out(transport.begin_fragments, functools.partial(frame, opcode=payloads.opcode, fin=False), payload):
                continuation = functools.partial(frame, opcode=0x0, fin=False)
                for item in items:  # the sender's code: no lock is held here
                    if not self._fragment_out(transport.write_fragment, continuation, payloads(item)):
                        break
                else:
                    payloads.end()
                    finished = self._fragment_out(transport.finish_fragments, functools.partial(frame, opcode=0x0, fin=True), b"")
        except BaseException:
            if transport.fragmenting_here:  # begun, and can never be finished: nothing may follow it
                self._fail_fragmented()
            raise
        finally:
            transport.abandon_fragments()  # does nothing once finished
        if not finished:
            raise self._closed_error()

    def _fragment_out(self, write: Any, encode: Any, payload: Payload) -> bool:
        """One of the transport's fragment writes; False when it cannot go
        (the socket failed, or a close frame went first)."""
        try:
            return bool(write(encode, payload))
        except OSError:
            self._transport.abort()
            return False

    def _fail_fragmented(self) -> None:
        """A fragmented message cannot be finished (its iterable failed): fail
        the connection as websockets does (close frame 1011, then this side
        ends the TCP connection, RFC 6455 section 7.1.7)."""
        reason = "error in fragmented message"
        logger.info("failing %s: %s", self._label(), reason)
        with self._lock:
            self._closing.failed(1011, reason)
        self._seal()
        self._write_quietly(self._writer.close(1011, reason.encode("utf-8")), FrameKind.CLOSE)
        self._linger()

    def ping(self, data: Payload = b"") -> None:
        """Send a ping; its ``'pong'`` arrives as an event. At most 125 bytes."""
        self._send_control(self._writer.ping(bytes(data)), FrameKind.PING)

    def pong(self, data: Payload = b"") -> None:
        """Send an unsolicited pong. At most 125 bytes."""
        self._send_control(self._writer.pong(bytes(data)), FrameKind.PONG)

    def _send_control(self, frame: bytes, kind: FrameKind) -> None:
        self._check_open()
        try:
            written = self._transport.write(frame, kind)
        except OSError:
            self._transport.abort()
            raise self._closed_error() from None
        if not written:
            raise self._closed_error()

    def _post_quietly(self, frame: bytes, kind: FrameKind) -> None:
        """Write a frame the library owes the peer without ever waiting
        (the thread that reads must not block on a client that does not
        read): what the socket does not take waits in the outbox."""
        self._transport.post(frame, kind)

    def _write_quietly(self, frame: bytes, kind: FrameKind) -> None:
        """Write a frame the library owes the peer; a failure only aborts
        (the reader sees it and ends the connection)."""
        try:
            self._transport.write(frame, kind)
        except OSError:
            self._transport.abort()

    def _post(self, data: Union[str, bytes], shared_frame: bytes) -> bool:
        """Queue a message without blocking (``broadcast``; ``shared_frame`` is
        its uncompressed frame); False if not open."""
        if not self._closing.is_open:
            return False
        if self._writer.shares_frames:
            self._transport.post(shared_frame, FrameKind.DATA)
        else:  # compressed: encoded in order under the write lock, counted at its uncompressed size
            self._transport.post(functools.partial(self._encode_frame, data), FrameKind.DATA, len(shared_frame))
        return True

    def _encode_frame(self, data: Union[str, bytes]) -> bytes:
        return b"".join(self._writer.message(data))

    def _check_open(self) -> None:
        if not self._closing.is_open:
            raise self._closed_error()

    def _closed_error(self) -> ConnectionClosed:
        return connection_closed(self.sent_close_code or 1006, self.sent_close_reason)

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
        back by TCP once the kernel's buffers are full. Pings are not
        answered meanwhile, and the heartbeat does not count the pongs it
        cannot read against the client. Acts on the callback style: a
        thread waiting in ``receive()`` reads regardless. Does nothing on
        a closed connection."""
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
        self._socket_reader.watch()

    def _serve(self) -> bool:
        """The request thread, after ``'connection'`` listeners: the
        connection goes on in its event loop (True: the loop owns the
        socket now; False: it ended here)."""
        return self._socket_reader.serve()

    def _begin(self) -> None:
        """Before the first read: start the heartbeat, parse what came with the handshake."""
        self._heartbeat.start()
        if self.request.buffered:
            self._incoming.feed(self.request.buffered)

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

