"""Reading a request head within its limits, with the same rules for every
request: the first of a connection (``read_request_head``, from the
socket) and each later one on a WSGI keep-alive connection (``read_head``,
from whatever bytes the connection holds and reads next).

The head ends at the first blank line; what was read past it is returned
with it. Refused, with the status said as soon as the bytes that break a
rule arrived (a client sending an endless line never gets to the end of
it): a line ending in a bare LF (400), a request target longer than
``max_target`` (414), a head larger than ``max_size`` or with more than
``max_headers`` fields (431); then, once whole, the rules of
``strictness.check_head``.
"""

from __future__ import annotations

import socket
from typing import Callable

from ..errors import HandshakeError
from .request import HEAD_END, Request
from .strictness import MAX_TARGET_SIZE, check_head, check_target_length

__all__ = ["read_head", "read_request_head", "head_bytes"]


def read_request_head(
    sock: socket.socket, max_size: int, max_headers: int, max_target: int = MAX_TARGET_SIZE, buffered: bytes = b""
) -> tuple[bytes, bytes]:
    """Read a connection's first request head from ``sock``, after the bytes
    of it already read (``buffered``): ``(head, rest)``. ``HandshakeError``
    for a refused head or when the client closes before its end, ``OSError``
    when the socket fails (for instance when the handshake deadline shut it
    down)."""
    return read_head(lambda: _receive(sock), buffered, max_size, max_headers, max_target)


def read_head(
    receive: Callable[[], bytes], buffered: bytes, max_size: int, max_headers: int, max_target: int = MAX_TARGET_SIZE
) -> tuple[bytes, bytes]:
    """Read a request head from ``buffered`` and then ``receive()`` (which
    returns more bytes, or raises). Empty lines before the request line are
    skipped (RFC 9112 section 2.2) but count towards ``max_size``."""
    buffer, skipped = _skip_empty_lines(receive, bytearray(buffered), max_size)
    checked = 0  # buffer[:checked] has no bare LF and no HEAD_END
    line_end = -1
    while True:
        end = buffer.find(HEAD_END, max(0, checked - 3))
        limit = len(buffer) if end < 0 else end + len(HEAD_END)
        _refuse_bare_lf(buffer, checked, limit)
        if line_end < 0:
            line_end = buffer.find(b"\r\n", max(0, checked - 1))
            if line_end >= 0 or len(buffer) > max_target:  # else it cannot be too long yet
                check_target_length(bytes(buffer[: line_end if line_end >= 0 else len(buffer)]), max_target)
        if skipped + limit > max_size:
            raise HandshakeError(431, f"request head larger than {max_size} bytes")
        if end >= 0:
            break
        checked = len(buffer)
        buffer += receive()
    head, rest = bytes(buffer[:limit]), bytes(buffer[limit:])
    if head.count(b"\n") - 2 > max_headers:
        raise HandshakeError(431, f"more than {max_headers} header fields")
    check_head(head, max_target)
    return head, rest


def _receive(sock: socket.socket) -> bytes:
    chunk = sock.recv(8192)
    if not chunk:
        raise HandshakeError(400, "connection closed before the end of the request head")
    return chunk


def _skip_empty_lines(receive: Callable[[], bytes], buffer: bytearray, max_size: int) -> tuple[bytearray, int]:
    """Drop the CRLFs a client may send before its request line; returns
    the bytes after them (at least the request line's first byte) and how
    many were skipped."""
    skipped = 0
    while True:
        start = 0
        while buffer.startswith(b"\r\n", start):
            start += 2
        del buffer[:start]
        skipped += start
        if skipped > max_size:
            raise HandshakeError(431, f"request head larger than {max_size} bytes")
        if buffer and buffer != b"\r":  # a lone CR may be the start of one more CRLF
            return buffer, skipped
        buffer += receive()


def _refuse_bare_lf(buffer: bytearray, start: int, end: int) -> None:
    """400 when an LF in ``buffer[start:end]`` has no CR before it."""
    crlf_from = max(0, start - 1)  # a CRLF split across two reads
    if buffer.count(b"\n", start, end) != buffer.count(b"\r\n", crlf_from, end):
        raise HandshakeError(400, "a line of the request head ends with a bare LF, not CRLF")


def head_bytes(request: Request) -> bytes:
    """A request head again, for a later request whose bytes h11 consumed."""
    lines = [f"{request.method} {request.target} HTTP/{request.http_version}"]
    lines.extend(f"{name}: {value}" for name, value in request.headers.raw_items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
