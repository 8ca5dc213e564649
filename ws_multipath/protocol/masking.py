"""Masking (RFC 6455 section 5.3) and the optional C speedups, in one place:
which of the two paths runs, and the pure-Python one.

``ws_multipath._speedups`` (built by setup.py when a compiler is there)
gives ``unmask``, ``unmask_joined``, ``frame`` and ``parse_messages`` in C;
without it, or with ``WS_MULTIPATH_NO_SPEEDUPS`` set, the Python functions
here run instead (``frame`` and ``parse_messages`` are then None and their
callers take their Python loops).
"""

from __future__ import annotations

import os
from typing import Callable, Optional, Union

__all__ = ["SPEEDUPS", "unmask", "unmask_joined", "frame", "parse_messages"]


def _unmask_python(data: Union[bytes, bytearray], start: int, end: int, mask: bytes) -> bytes:
    """``data[start:end]`` XORed with the 4-byte ``mask`` (RFC 6455 section 5.3).

    The pure-Python path (see ``unmask``). Big integers are fastest for short
    payloads (measured 0.5 us against 1.5 us at 32 bytes); past a few KiB,
    translation tables over every fourth byte are (80 against 180 us at
    64 KiB). A ``bytearray`` is unmasked in place, which saves a copy of
    large frames."""
    size = end - start
    if size <= 4096:
        key = (mask * ((size + 3) >> 2))[:size]
        return (int.from_bytes(data[start:end], "little") ^ int.from_bytes(key, "little")).to_bytes(size, "little")
    if isinstance(data, bytearray):
        buffer, offset = data, start
    else:
        buffer, offset = bytearray(memoryview(data)[start:end]), 0
    for index in range(4):
        first = offset + index
        buffer[first : offset + size : 4] = buffer[first : offset + size : 4].translate(_XOR_TABLES[mask[index]])
    return bytes(memoryview(buffer)[offset : offset + size])


_XOR_TABLES = [bytes(byte ^ key for byte in range(256)) for key in range(256)]


def _unmask_joined_python(chunks: list[Union[bytes, bytearray]], start: int, end: int, mask: bytes) -> bytes:
    """``unmask(b"".join(chunks), start, end, mask)``; the C form unmasks
    from the chunks without joining them."""
    return _unmask_python(bytearray().join(chunks), start, end, mask)  # joined into a bytearray: unmasked in place

#: True when ``unmask`` is the C extension ``ws_multipath._speedups`` (about
#: 50 times faster on large frames); False on the pure-Python path: when the
#: extension was not built (no compiler at install time), or when the
#: environment variable ``WS_MULTIPATH_NO_SPEEDUPS`` is set to anything but
#: ``""`` or ``"0"`` when this module is imported.
SPEEDUPS = False

#: ``unmask(data, start, end, mask) -> bytes``: ``data[start:end]`` XORed
#: with the 4-byte ``mask`` (RFC 6455 section 5.3), for ``bytes`` or
#: ``bytearray`` data with ``0 <= start <= end <= len(data)``. What is left in
#: ``data[start:end]`` afterwards is unspecified: the pure-Python path
#: unmasks a large ``bytearray`` in place (one copy less), the C one leaves it
#: alone (it writes the result in one pass).
unmask = _unmask_python

#: ``unmask_joined(chunks, start, end, mask) -> bytes``: ``unmask`` of the
#: chunks joined (a frame that came in several reads).
unmask_joined = _unmask_joined_python

#: ``frame(first_byte, data) -> bytes`` of the C extension (a whole small
#: frame in one allocation), or None on the pure-Python path.
frame: Optional[Callable[[int, Union[str, bytes, bytearray]], bytes]] = None

#: ``parse_messages(data, max_payload, lenient) -> (messages, end)`` of the C
#: extension: the plain whole frames at the start of ``data``, or None.
parse_messages: Optional[Callable[[Union[bytes, bytearray], int, bool], tuple[list[Union[str, bytes]], int]]] = None

if os.environ.get("WS_MULTIPATH_NO_SPEEDUPS", "") in ("", "0"):
    try:
        from .._speedups import unmask, unmask_joined  # type: ignore[no-redef,import-not-found,unused-ignore]  # noqa: F811
    except ImportError:
        pass
    else:
        SPEEDUPS = True
        from .. import _speedups  # type: ignore[attr-defined,unused-ignore]

        frame = getattr(_speedups, "frame", None)
        parse_messages = getattr(_speedups, "parse_messages", None)
