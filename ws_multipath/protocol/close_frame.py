"""A client's close frame, read without wsproto's frame machinery.

Every connection ends with one, nearly always alone in its read: a masked
``FIN`` close frame with a common code. wsproto parses it in about 25 us
(its buffer, a generator, a frame object, an enum lookup); ``whole_close``
takes about 2. It reads only that case, and accepts only what wsproto
accepts, with the same result: no payload (1005), or a code that is valid
for sure (those of RFC 6455 section 7.4.1 a peer may send, and 3000-4999)
with a UTF-8 reason. Anything else (other codes, a one-byte payload,
invalid UTF-8, more bytes after the frame, an unmasked frame) returns None
and goes to wsproto as before, which decides and says why.
"""

from __future__ import annotations

from typing import Optional, Union

from .masking import unmask

__all__ = ["whole_close"]

# RFC 6455 section 7.4.1 codes a peer may send, and RFC 6455 7.4.2's registered range.
_VALID_CODES = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011})


def whole_close(data: Union[bytes, bytearray]) -> Optional[tuple[int, str]]:
    """``(code, reason)`` when ``data`` is exactly one masked, final close
    frame that is valid for sure; None for wsproto to decide."""
    size = len(data)
    if size < 6 or data[0] != 0x88:
        return None
    length = data[1] ^ 0x80  # the mask bit set, a 7-bit length
    if length > 125 or size != 6 + length or length == 1:
        return None
    if length == 0:
        return 1005, ""
    payload = unmask(data, 6, size, bytes(data[2:6]))
    code = (payload[0] << 8) | payload[1]
    if code not in _VALID_CODES and not 3000 <= code <= 4999:
        return None
    try:
        return code, payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        return None
