"""Frames in: the bytes a client sent, parsed into events, without I/O.

``FrameReader`` is fed what the socket read and returns ``events``
(``events.py``). Whole, plain frames (what clients send nearly always) take a
hot path of its own, in C when the speedups are built (``masking.py``);
anything else goes to wsproto's frame parser (RFC 6455 framing, masking,
reserved bits, incremental UTF-8 validation, close-frame checks), with the
message size limits added (``limits.py``). ``FrameWriter`` (``writer.py``, re-exported here)
turns messages and control frames into bytes.

The two halves share no state but the negotiated extension, whose inbound
and outbound parts are separate objects inside it, so one thread may read
while another writes.
"""

from __future__ import annotations

from codecs import getincrementaldecoder
from io import BytesIO
from typing import Optional, Union, cast

from wsproto.extensions import Extension
from wsproto.frame_protocol import CloseReason, Frame, FrameProtocol, Opcode, ParseFailed

from ..errors import PayloadTooBig, ProtocolError
from .close_frame import whole_close
from .deflate import BoundedDeflate
from .events import CloseReceived, Event, Failure, Message, Ping, Pong
from .limits import FRAME_OVERHEAD, LenientMessageDecoder, PayloadLimit
from .masking import SPEEDUPS, unmask, unmask_joined
from .masking import parse_messages as _parse_messages
from .writer import FrameWriter, Payload, check_close_code

__all__ = ["FrameReader", "FrameWriter", "check_close_code", "unmask", "SPEEDUPS", "Payload", "FRAME_OVERHEAD"]


class FrameReader:
    """Bytes from the client in, ``Event`` objects out.

    Owned by the connection's reader thread. On the first violation
    ``receive_data`` ends its list with a ``Failure`` carrying the
    ``ProtocolError`` (and its RFC 6455 close code); the reader must not be
    fed after that. After a ``CloseReceived`` it ignores everything.

    A fragmented message is joined as its frames come, in one buffer (text
    as UTF-8, validated piece by piece so that invalid UTF-8 fails at once
    and decoded when the message ends), so it holds about its payload
    however small its fragments. Each of its frames counts
    ``FRAME_OVERHEAD`` (64) bytes against ``max_payload`` (apart from the
    payload, which ``max_payload`` bounds as before), so a message has at
    most ``max_payload // 64`` frames, which bounds the work of one message
    (see ``_PayloadLimit``); past either limit it fails with 1009.
    """

    __slots__ = (
        "_max_payload", "_frames", "_utf8_errors", "_deflate", "_fast", "_between_frames", "_message", "_closed",
        "_waiting", "_waiting_size", "_waiting_for", "_waiting_text", "_waiting_payload", "_waiting_tail", "_text",
    )

    def __init__(
        self,
        max_payload: int,
        deflate: Optional[BoundedDeflate] = None,
        skip_utf8_validation: bool = False,
        max_fragments: Optional[int] = None,
    ) -> None:
        self._max_payload = max_payload
        extensions: list[Extension] = [deflate] if deflate is not None else []
        extensions.append(PayloadLimit(max_payload, max_fragments))
        self._frames = FrameProtocol(client=False, extensions=extensions)
        if skip_utf8_validation:
            self._frames._message_decoder = LenientMessageDecoder()
        self._utf8_errors = "replace" if skip_utf8_validation else "strict"
        self._deflate = deflate  # whole compressed messages take the hot path too (deflate.inflate_message)
        self._fast = True  # the hot path for whole frames (tests turn it off to compare)
        #: True when wsproto holds no partial frame or message (so the next
        #: bytes start a frame, for the hot path); updated after each feed.
        self._between_frames = True
        self._message: Optional[BytesIO] = None  # the data message in progress, joined as it comes
        self._closed = False
        self._waiting: list[Union[bytes, bytearray]] = []  # the start of a frame for the hot path
        self._waiting_size = 0
        self._waiting_for = 0
        self._waiting_text = False  # parse again on every read: invalid UTF-8 must fail at once
        self._waiting_payload = 0  # > 0: where the waiting binary frame's payload starts in self._waiting
        self._waiting_tail: Optional[bytearray] = None  # the last of self._waiting, when small reads grow it
        self._text: Optional[_PartialText] = None  # a text frame whose payload is arriving

    def plain_messages(self, data: Union[bytes, bytearray]) -> Optional[list[Union[str, bytes]]]:
        """The hot path's own: when ``data`` is whole, plain (unfragmented,
        uncompressed) data frames and nothing is in progress here, their
        messages as ``str`` and ``bytes``, with no event objects; else None,
        with nothing consumed (``receive_data`` takes ``data`` then)."""
        if _parse_messages is None or not data or data[0] == 0x88 or self._waiting or not self._between_frames or self._text is not None or self._closed or not self._fast:
            return None
        messages, end = _parse_messages(data, self._max_payload, self._utf8_errors != "strict")
        return messages if end == len(data) and messages else None

    def receive_data(self, data: Union[bytes, bytearray]) -> list[Event]:
        """Parse ``data``; return the complete events it finished."""
        if data[:1] == b"\x88" and self._between_frames and self._fast and self._message is None and self._text is None and not self._waiting and not self._closed:
            close = whole_close(data)  # the client's close frame, alone: the end of nearly every connection
            if close is not None:
                self._closed = True
                return [CloseReceived(*close)]
        if _parse_messages is not None and self._between_frames and self._fast and not self._waiting and self._text is None and not self._closed:
            messages, end = _parse_messages(data, self._max_payload, self._utf8_errors != "strict")
            if end == len(data):  # the common case: whole plain frames only
                return [Message(message) for message in messages]
            events: list[Event] = [Message(message) for message in messages]
            if end:
                data = data[end:]  # the Python loop and wsproto go on from here
        else:
            events = []
        if self._closed:
            return events
        if self._text is not None:
            data = self._continue_text(data, 0, events)
            if not data:
                return events
        if self._waiting:
            self._keep_waiting(data)
            self._waiting_size += len(data)
            if self._waiting_size < self._waiting_for and not self._waiting_text:
                return events
            if self._waiting_payload:
                data = self._finish_waiting_frame(events)
                if not data:
                    return events
            else:
                data = bytearray().join(self._waiting)  # unmasked in place: one copy less
                self._waiting, self._waiting_size = [], 0
        if self._fast and self._between_frames:
            data = self._parse_whole_messages(data, events)
            if not data or (events and type(events[-1]) is Failure):
                return events
        self._frames.receive_bytes(data)  # type: ignore[arg-type]  # wsproto accepts any bytes-like
        try:
            for frame in self._frames.received_frames():
                event = self._on_frame(frame)
                if event is not None:
                    events.append(event)
        except ParseFailed as exc:
            self._closed = True  # wsproto's parser has ended: it would keep every later byte
            if exc.code == CloseReason.MESSAGE_TOO_BIG:
                events.append(Failure(PayloadTooBig(self._max_payload)))
            else:
                events.append(Failure(ProtocolError(int(exc.code), str(exc))))
        self._between_frames = self._wsproto_between_frames()
        return events

    def _wsproto_between_frames(self) -> bool:
        """True when wsproto holds no partial frame and no partial message,
        so the next bytes start a frame (reads wsproto's parser state)."""
        decoder = self._frames._frame_decoder
        return decoder.header is None and not decoder.buffer.buffer and self._frames._message_decoder.opcode is None

    def _parse_whole_messages(self, data: Union[bytes, bytearray], events: list[Event]) -> Union[bytes, bytearray]:
        """The hot path: parse the complete, unfragmented, masked text and
        binary frames at the start of ``data`` (what clients send nearly
        always) without wsproto's per-frame machinery. An incomplete one is
        kept until the rest arrives (text only until its payload starts, so
        that invalid UTF-8 still fails fast). Stops at the first frame that is
        anything else and returns the bytes from there on for wsproto, which
        then checks them as usual."""
        pos, end_of_data, limit = 0, len(data), self._max_payload
        if _parse_messages is not None:  # the C loop takes the plain frames; this one goes on from where it stops
            messages, pos = _parse_messages(data, limit, self._utf8_errors != "strict")
            if messages:
                events.extend(map(Message, messages))
            if pos == end_of_data:
                return b""
        deflate = self._deflate
        while end_of_data - pos >= 2:
            first, second = data[pos], data[pos + 1]
            if (first != 0x81 and first != 0x82 and (deflate is None or (first != 0xC1 and first != 0xC2))) or not second & 0x80:
                break  # fragmented, control, reserved bits or opcodes (RSV1 without deflate), unmasked
            length = second & 0x7F
            if length < 126:
                start = pos + 6
            elif length == 126:
                if end_of_data - pos < 4:
                    return self._wait(data, pos, 4)
                length = (data[pos + 2] << 8) | data[pos + 3]
                start = pos + 8
                if length < 126:
                    break  # not the minimal encoding: wsproto fails it
            else:
                if end_of_data - pos < 10:
                    return self._wait(data, pos, 10)
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                start = pos + 14
                if length < 65536 or length >> 63:
                    break
            if length > limit:
                break  # wsproto fails it with 1009
            end = start + length
            if end > end_of_data:
                if first & 0x40:  # compressed: inflated once whole
                    return self._wait(data, pos, end - pos)
                if first == 0x81 and end_of_data >= start:  # decoded as it comes: invalid UTF-8 fails at once
                    self._text = _PartialText(bytes(data[start - 4 : start]), length, self._utf8_errors)
                    return self._continue_text(data, start, events)
                if start <= end_of_data and first == 0x82:  # its head and mask are here: wait for the payload
                    return self._wait(data, 0, end, start)
                return self._wait(data, pos, end - pos)
            payload = unmask(data, start, end, bytes(data[start - 4 : start]))
            if first & 0x40:
                inflated = deflate.inflate_message(payload)  # type: ignore[union-attr]
                if isinstance(inflated, CloseReason):
                    error = PayloadTooBig(limit) if inflated == CloseReason.MESSAGE_TOO_BIG else ProtocolError(int(inflated), "error in extension")
                    events.append(Failure(error))
                    self._closed = True
                    return b""
                payload = inflated
                first &= 0xBF
            if first == 0x82:
                events.append(Message(payload))
            else:
                try:
                    events.append(Message(payload.decode("utf-8", self._utf8_errors)))
                except UnicodeDecodeError as exc:
                    events.append(Failure(ProtocolError(1007, f"invalid UTF-8 in a text message: {exc.reason}")))
                    self._closed = True
                    return b""
            pos = end
        return data[pos:] if pos else data

    def _wait(self, data: Union[bytes, bytearray], pos: int, needed: int, payload: int = 0) -> bytes:
        """Keep the start of a whole-message frame until ``needed`` bytes of it
        have arrived, so the hot path parses it in one piece. A text frame is
        parsed again as each read comes: once its payload has begun, wsproto
        takes it and checks the UTF-8 as it arrives.

        With ``payload`` (a binary frame whose head is complete; ``pos`` is
        0, ``data`` kept whole), the frame's payload is ``data[payload:needed]``
        of the reads joined, and ``_finish_waiting_frame`` unmasks it from the
        reads without joining them."""
        self._waiting_text = not payload and data[pos] == 0x81
        self._waiting_tail = None
        self._waiting = [data[pos:] if pos else data]
        self._waiting_size = len(data) - pos
        self._waiting_for = needed
        self._waiting_payload = payload
        return b""

    def _keep_waiting(self, data: Union[bytes, bytearray]) -> None:
        """Add a read to the waiting frame's. Small reads are copied into one
        growing bytearray, so that a client trickling a frame a byte at a
        time costs its bytes, not an object (about 40 bytes) per read."""
        if len(data) >= _SMALL_READ:
            self._waiting.append(data)
            self._waiting_tail = None
        elif self._waiting_tail is not None:
            self._waiting_tail += data
        else:
            self._waiting_tail = bytearray(data)
            self._waiting.append(self._waiting_tail)

    def _finish_waiting_frame(self, events: list[Event]) -> Union[bytes, bytearray]:
        """The waiting binary frame has all arrived: its message, and the
        bytes that came after it (all in the last read, which completed it)."""
        chunks, start, end = self._waiting, self._waiting_payload, self._waiting_for
        extra = self._waiting_size - end
        self._waiting, self._waiting_size, self._waiting_payload = [], 0, 0
        events.append(Message(unmask_joined(chunks, start, end, bytes(chunks[0][start - 4 : start]))))
        last = chunks[-1]
        return last[len(last) - extra :] if extra else b""

    def _continue_text(self, data: Union[bytes, bytearray], start: int, events: list[Event]) -> Union[bytes, bytearray]:
        """Unmask and decode the next part of the text frame in progress from
        ``data[start:]``; return the bytes after the frame (b"" if none)."""
        text = self._text
        assert text is not None
        take = min(len(data) - start, text.remaining)
        phase = text.received & 3
        mask = text.mask[phase:] + text.mask[:phase] if phase else text.mask
        chunk = unmask(data, start, start + take, mask)
        try:
            if text.decoder is not None:
                text.decoder.decode(chunk, take == text.remaining)  # validates; the text is decoded whole at the end
        except UnicodeDecodeError as exc:
            events.append(Failure(ProtocolError(1007, f"invalid UTF-8 in a text message: {exc.reason}")))
            self._closed = True
            self._text = None
            return b""
        text.payload += chunk
        text.received += take
        text.remaining -= take
        if text.remaining:
            return b""
        self._text = None
        events.append(Message(text.payload.decode("utf-8", self._utf8_errors)))
        end = start + take
        return data[end:] if end < len(data) else b""

    def _on_frame(self, frame: Frame) -> Optional[Event]:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            data = cast(Union[str, bytes], frame.payload)
            message = self._message
            if message is None:
                if frame.message_finished:
                    return Message(data)
                message = self._message = BytesIO()
            if data:  # text comes validated (or repaired) piece by piece: valid UTF-8 again
                message.write(cast(str, data).encode("utf-8") if opcode is Opcode.TEXT else cast(bytes, data))
            if not frame.message_finished:
                return None
            self._message = None
            joined = message.getvalue()  # no copy: the BytesIO gives up its buffer
            return Message(joined.decode("utf-8") if opcode is Opcode.TEXT else joined)
        if opcode is Opcode.PING:
            return Ping(bytes(cast(bytes, frame.payload)))
        if opcode is Opcode.PONG:
            return Pong(bytes(cast(bytes, frame.payload)))
        if opcode is Opcode.CLOSE:
            code, reason = cast(tuple[int, str], frame.payload)
            self._closed = True
            return CloseReceived(int(code), reason)
        return None


#: Reads shorter than this are copied into the waiting frame's bytearray
#: rather than kept as objects of their own (see ``_keep_waiting``).
_SMALL_READ = 4096


class _PartialText:
    """A text frame whose payload comes in several reads: unmasked into one
    bytearray (its size in memory, however small the reads) and checked as
    it comes, so that invalid UTF-8 fails at once (RFC 6455 section 8.1);
    decoded whole at the end. ``errors`` "replace" (no validation) skips the
    check."""

    __slots__ = ("mask", "remaining", "received", "decoder", "payload")

    def __init__(self, mask: bytes, size: int, errors: str) -> None:
        self.mask = mask
        self.remaining = size
        self.received = 0
        self.decoder = getincrementaldecoder("utf-8")("strict") if errors == "strict" else None
        self.payload = bytearray()
