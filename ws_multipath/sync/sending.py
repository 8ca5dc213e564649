"""The sending side of a ``WebSocket``: ``Sending``, the part of the
connection class that writes messages and control frames.

``send()`` writes a message (or, from an iterable, a fragmented one) and
returns once it is in the kernel: it blocks while the client does not read
(``write_timeout`` without progress drops the connection, 1011). What the
library owes the peer (pongs, close echoes) is posted instead, so that the
thread that reads a connection never waits on it (``_post_quietly``).
Broadcasts are posted too (``_post``). Ordering and the write lock live in
the transport (``transport.py``, ``fragmenting.py``).

The fields are ``WebSocket``'s (``connection.py``).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Optional, Union

from ..errors import ConnectionClosed, connection_closed
from ..log import logger
from ..protocol.closing import Closing, FrameKind, ReadyState
from ..protocol.frames import FrameWriter, Payload
from ..protocol.writer import FragmentPayloads, as_kind

from .hot_writes import SMALL_MESSAGE
from .sockets import NOWAIT_LIMIT

if TYPE_CHECKING:
    from .transport import Transport

__all__ = ["Sending"]

_OPEN = ReadyState.OPEN  # a global is read faster than an Enum's member (hot paths)


class Sending:
    """``send``, ``ping``, ``pong`` and the library's own writes (a mixin of ``WebSocket``)."""

    if TYPE_CHECKING:  # WebSocket's attributes and methods used here
        _transport: Transport
        _writer: FrameWriter
        _closing: Closing
        _lock: threading.Lock
        _small_sends: bool  # write_small may send an uncompressed str or bytes

        @property
        def sent_close_code(self) -> Optional[int]: ...
        @property
        def sent_close_reason(self) -> str: ...
        def _label(self) -> str: ...
        def _seal(self) -> None: ...
        def _linger(self) -> None: ...

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
        kind = type(data)
        if (kind is str or kind is bytes) and binary is None and self._small_sends and len(data) <= SMALL_MESSAGE:  # type: ignore[arg-type]
            if self._closing.state is not _OPEN:
                raise self._closed_error()
            try:
                written = self._transport.write_small(data)  # type: ignore[arg-type]
            except OSError:
                self._transport.abort()
                raise self._closed_error() from None
            if not written:
                raise self._closed_error()
            return
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
        if self._closing.state is not _OPEN:
            return False
        if self._small_sends and len(shared_frame) <= NOWAIT_LIMIT:  # the hot path: uncompressed, plain TCP
            self._transport.post_shared(shared_frame)
        elif self._writer.shares_frames:
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
