"""The framing of a chunked request body, checked as its bytes arrive and
before h11 reads them (RFC 9112 section 7.1): h11 lets through whitespace
after a chunk size, any byte in a chunk extension (a bare CR too) and
framing fields in the trailer section, which other servers read
differently; a body that breaks the grammar is refused (400).
"""

from __future__ import annotations

import re

__all__ = ["ChunkedChecker", "MalformedChunk"]

_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
# chunk-size [ chunk-ext ], chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] ).
# Each repetition starts at a ";" and the alternatives share no first byte: no backtracking.
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:[ \t]*;[ \t]*" + _TOKEN + rb"(?:[ \t]*=[ \t]*(?:" + _TOKEN + rb"|" + _QUOTED + rb"))?)*")
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# RFC 9110 section 6.5.1: fields that frame or route the message have no place in a trailer
_NOT_IN_TRAILERS = frozenset({b"transfer-encoding", b"content-length", b"trailer", b"host"})

_SIZE, _DATA, _DATA_END, _TRAILER, _DONE = range(5)


class MalformedChunk(ValueError):
    """The chunked body breaks RFC 9112 section 7.1."""


class ChunkedChecker:
    """Fed every byte that follows a chunked request's head, in order; raises
    ``MalformedChunk`` as soon as they break the grammar, and ignores what
    follows the body's end (the next request). Lines are at most
    ``max_line`` bytes, the trailer section ``max_line`` in all."""

    __slots__ = ("_state", "_line", "_remaining", "_trailer_size", "_max_line")

    def __init__(self, max_line: int) -> None:
        self._state = _SIZE
        self._line = b""
        self._remaining = 0
        self._trailer_size = 0
        self._max_line = max_line

    @property
    def done(self) -> bool:
        return self._state == _DONE

    def feed(self, data: bytes) -> None:
        pos, size = 0, len(data)
        while pos < size and self._state != _DONE:
            if self._state == _DATA:
                taken = min(self._remaining, size - pos)
                pos += taken
                self._remaining -= taken
                if not self._remaining:
                    self._state = _DATA_END
                continue
            end = data.find(b"\n", pos)
            if end < 0:
                self._line += data[pos:]
                self._check_length(self._line)
                return
            line, self._line = self._line + data[pos : end + 1], b""
            pos = end + 1
            self._check_length(line)
            if not line.endswith(b"\r\n"):
                raise MalformedChunk("a line of the chunked body ends with a bare LF")
            self._end_of_line(line[:-2])

    def _check_length(self, line: bytes) -> None:
        if len(line) > self._max_line or self._trailer_size + len(line) > self._max_line:
            raise MalformedChunk(f"a chunk header or the trailer section is longer than {self._max_line} bytes")

    def _end_of_line(self, line: bytes) -> None:
        if self._state == _SIZE:
            match = _CHUNK_LINE.fullmatch(line)
            if match is None:
                raise MalformedChunk("malformed chunk size line")
            self._remaining = int(match.group(1), 16)
            self._state = _DATA if self._remaining else _TRAILER
        elif self._state == _DATA_END:
            if line:
                raise MalformedChunk("chunk data longer than its size")
            self._state = _SIZE
        elif not line:
            self._state = _DONE
        else:
            self._trailer_size += len(line) + 2
            self._check_trailer(line)

    def _check_trailer(self, line: bytes) -> None:
        if line[:1] in (b" ", b"\t") or _CONTROL.search(line):
            raise MalformedChunk("obsolete line folding or a control character in a trailer field")
        if line.partition(b":")[0].strip(b" \t").lower() in _NOT_IN_TRAILERS:
            raise MalformedChunk(f"{line.partition(b':')[0].decode('latin-1')} is not allowed in a trailer")
