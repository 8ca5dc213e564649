"""Frames out: messages and control frames as bytes (server to client,
unmasked), and the check of a close code an application passes."""

from __future__ import annotations

import codecs
import struct
from typing import Any, Optional, Union

from .deflate import BoundedDeflate
from .masking import frame as _frame

__all__ = ["FrameWriter", "FragmentPayloads", "check_close_code", "as_kind", "Payload"]

Payload = Union[bytes, bytearray, memoryview]

#: Messages up to this length (characters or bytes) are framed by ``_frame``
#: into one bytes object; larger ones keep header and payload apart, so that
#: the payload is never copied.
_WHOLE_FRAME_LIMIT = 16 * 1024


def check_close_code(code: int, reason: Union[str, bytes]) -> bytes:
    """Validate a close code and reason an application passes to ``close``
    (the reason a ``str``, or ``bytes`` of valid UTF-8, as ws takes a
    Buffer); return the reason encoded. Raises ``ValueError`` naming the
    argument."""
    if not isinstance(code, int) or isinstance(code, bool):
        raise TypeError(f"code must be an int, not {type(code).__name__}")
    if not (code in (1000, 1001, 1002, 1003) or 1007 <= code <= 1014 or 3000 <= code <= 4999):
        raise ValueError(f"code {code} may not be sent in a close frame (RFC 6455 section 7.4)")
    if isinstance(reason, (bytes, bytearray, memoryview)):
        encoded = bytes(reason)
        try:
            encoded.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("reason is not valid UTF-8 (RFC 6455 section 5.5.1)") from None
    elif isinstance(reason, str):
        encoded = reason.encode("utf-8")
    else:
        raise TypeError(f"reason must be a str or bytes, not {type(reason).__name__}")
    if len(encoded) > 123:
        raise ValueError(f"reason is {len(encoded)} bytes in UTF-8; at most 123 fit in a close frame")
    return encoded


class FrameWriter:
    """Messages and control frames out as bytes (unmasked: server to client).

    Owned by whoever holds the connection's write lock, since compression
    state carries from one message to the next (and from one fragment to
    the next: while a fragmented message is sent, the transport lets no
    other data frame be encoded, see ``Transport.begin_fragments``).
    """

    __slots__ = ("_deflate", "_threshold", "client")

    def __init__(self, deflate: Optional[BoundedDeflate] = None, compress_threshold: int = 0) -> None:
        self._deflate = deflate
        self._threshold = compress_threshold
        self.client = False  # read by wsproto's extension

    @property
    def shares_frames(self) -> bool:
        """True when every connection would encode a message identically
        (no compression context), so one encoding can be sent to many."""
        return self._deflate is None

    def message(self, data: Union[str, Payload]) -> tuple[bytes, Payload]:
        """Frame header and payload of one unfragmented data message (a
        small one as one bytes object, with an empty payload)."""
        return self._message(data, self._deflate)

    def message_uncompressed(self, data: Union[str, Payload]) -> tuple[bytes, Payload]:
        """``message`` without compression (``send(compress=False)``)."""
        return self._message(data, None)

    def _message(self, data: Union[str, Payload], deflate: Optional[BoundedDeflate]) -> tuple[bytes, Payload]:
        if _frame is not None and deflate is None and len(data) <= _WHOLE_FRAME_LIMIT:
            kind = type(data)
            if kind is str:
                return _frame(0x81, data), b""  # type: ignore[arg-type]
            if kind is bytes or kind is bytearray:
                return _frame(0x82, data), b""  # type: ignore[arg-type]
        payload: Payload
        if isinstance(data, str):
            opcode, payload = 0x81, data.encode("utf-8")
        else:
            opcode, payload = 0x82, data
        if deflate is not None and len(payload) >= self._threshold:
            payload = deflate.deflate_message(bytes(payload))
            opcode |= 0x40
        return _header(opcode, payload.nbytes if isinstance(payload, memoryview) else len(payload)), payload

    def compresses(self, compress: bool) -> bool:
        """Whether a fragmented message sent with ``compress`` is compressed:
        whenever permessage-deflate was agreed, whatever its fragments' sizes
        (the ``threshold`` needs a length, unknown when the first frame, whose
        RSV1 tells, goes out)."""
        return compress and self._deflate is not None

    def fragment(self, payload: Payload, opcode: int, fin: bool, compressed: bool) -> tuple[bytes, Payload]:
        """Frame header and payload of one frame of a fragmented message
        (RFC 6455 section 5.4): ``opcode`` 0x1 or 0x2 for the first frame,
        0x0 (continuation) for the others; ``fin`` on the last. A
        ``compressed`` message has RSV1 on its first frame only (RFC 7692
        section 6)."""
        first_byte = opcode | 0x80 if fin else opcode
        if compressed:
            assert self._deflate is not None
            payload = self._deflate.deflate_fragment(payload, fin)
            if opcode:
                first_byte |= 0x40
        return _header(first_byte, payload.nbytes if isinstance(payload, memoryview) else len(payload)), payload

    def ping(self, payload: bytes = b"") -> bytes:
        return _control(0x89, payload)

    def pong(self, payload: bytes = b"") -> bytes:
        return _control(0x8A, payload)

    def close(self, code: Optional[int], reason: bytes = b"") -> bytes:
        """A close frame; ``code=None`` sends an empty one (for a peer's 1005)."""
        if code is None:
            return _control(0x88, b"")
        return _control(0x88, struct.pack("!H", code) + reason)


def _header(first_byte: int, length: int) -> bytes:
    if length < 126:
        return bytes((first_byte, length))
    if length < 65536:
        return struct.pack("!BBH", first_byte, 126, length)
    return struct.pack("!BBQ", first_byte, 127, length)


def _control(first_byte: int, payload: bytes) -> bytes:
    if len(payload) > 125:
        raise ValueError(f"a control frame's payload is at most 125 bytes, not {len(payload)}")
    return bytes((first_byte, len(payload))) + payload

def as_kind(data: Union[str, Payload], binary: bool) -> Union[str, Payload]:
    """``data`` as the message kind ``send(binary=...)`` asks for."""
    if binary:
        return data.encode("utf-8") if isinstance(data, str) else data
    if isinstance(data, str):
        return data
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("send(binary=False) needs valid UTF-8 bytes (a text message)") from None


class FragmentPayloads:
    """The payloads of the items of ``send(iterable)``, one at a time: all
    ``str`` or all bytes-like, as the first item is (``TypeError`` naming
    ``data`` otherwise); the message is text or binary as that kind says, or
    as ``binary`` asks (``str`` items as UTF-8; bytes items of a text message
    checked as UTF-8 across fragments, ``ValueError`` as ``send`` raises)."""

    __slots__ = ("_str_items", "_utf8", "_count", "opcode")

    def __init__(self, first: Any, binary: Optional[bool]) -> None:
        self._str_items = isinstance(first, str)
        if not self._str_items and not isinstance(first, (bytes, bytearray, memoryview)):
            raise TypeError(f"data: fragments must be str or bytes-like, not {type(first).__name__}")
        text = self._str_items if binary is None else not binary
        #: The first frame's opcode (RFC 6455 section 5.6).
        self.opcode = 0x1 if text else 0x2
        self._utf8 = codecs.getincrementaldecoder("utf-8")() if text and not self._str_items else None
        self._count = 0

    def __call__(self, item: Any) -> Payload:
        self._count += 1
        if self._str_items:
            if isinstance(item, str):
                return item.encode("utf-8")
        elif isinstance(item, (bytes, bytearray, memoryview)):
            if self._utf8 is not None:
                self._check(item)
            return item
        kind = "str" if self._str_items else "bytes-like"
        raise TypeError(f"data: the fragments of one message must all be {kind} as the first one, not {type(item).__name__} (fragment {self._count})")

    def end(self) -> None:
        """The last item came: a text message must not end inside a character."""
        if self._utf8 is not None:
            self._check(b"", True)

    def _check(self, data: Payload, final: bool = False) -> None:
        try:
            self._utf8.decode(data, final)  # type: ignore[union-attr]
        except UnicodeDecodeError:
            raise ValueError("send(binary=False) needs valid UTF-8 bytes (a text message)") from None
