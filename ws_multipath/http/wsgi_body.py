"""``wsgi.input`` for a request of ``wsgi_exchange.HTTPExchange``: the
body, read on demand, never past its end, and the errors it raises (Werkzeug's
own classes when Werkzeug is installed, so that a Flask app answers them with
413, 408 or 400)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

try:  # so that a Flask app answers 413 / 408 / 400 when wsgi.input raises these
    from werkzeug.exceptions import ClientDisconnected as _GoneBase
    from werkzeug.exceptions import RequestEntityTooLarge as _TooLargeBase
    from werkzeug.exceptions import RequestTimeout as _TimeoutBase
except ImportError:  # werkzeug is optional: plain bases of our own (Exception itself would clash with TimeoutError's layout)

    class _TooLargeBase(Exception):  # type: ignore[no-redef]
        pass

    class _TimeoutBase(Exception):  # type: ignore[no-redef]
        pass

    class _GoneBase(Exception):  # type: ignore[no-redef]
        pass

if TYPE_CHECKING:
    from .wsgi_exchange import HTTPExchange

__all__ = ["WSGIInput", "BodyTooLarge", "BodyTimeout", "ClientDisconnected", "MalformedBody", "ClientGone"]


class BodyTooLarge(_TooLargeBase):  # type: ignore[misc,valid-type,unused-ignore]
    """Raised by ``wsgi.input`` when a body outgrows ``http_max_body_size``."""

    code = 413
    description = "request body too large"


class BodyTimeout(_TimeoutBase, TimeoutError):  # type: ignore[misc,valid-type,unused-ignore]
    """Raised by ``wsgi.input`` when the body is not in by ``http_body_timeout``."""


class ClientDisconnected(_GoneBase, ConnectionError):  # type: ignore[misc,valid-type,unused-ignore]
    """Raised by ``wsgi.input`` when the client goes away in the middle of the body."""


class MalformedBody(ClientDisconnected):
    """Raised by ``wsgi.input`` when the body breaks HTTP's framing, or ends
    before its end (the server answers 400)."""

    code = 400


class ClientGone(Exception):
    """A write or read of our own failed: the client is gone or too slow."""



class WSGIInput:
    """``wsgi.input``: the request body, never read past its end."""

    def __init__(self, connection: "HTTPExchange") -> None:
        self._connection = connection
        self._buffer = bytearray()
        self._eof = False

    def _fill(self) -> bool:
        if self._eof:
            return False
        chunk = self._connection._body_chunk()
        if chunk is None:
            self._eof = True
            return False
        self._buffer += chunk
        return True

    def read(self, size: Optional[int] = -1) -> bytes:
        if size is None or size < 0:
            while self._fill():
                pass
            size = len(self._buffer)
        while len(self._buffer) < size and self._fill():
            pass
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def readline(self, size: Optional[int] = -1) -> bytes:
        limit = None if size is None or size < 0 else size
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0 and (limit is None or end < limit):
                return self.read(end + 1)
            if limit is not None and len(self._buffer) >= limit:
                return self.read(limit)
            if not self._fill():
                return self.read(len(self._buffer) if limit is None else min(limit, len(self._buffer)))

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines: list[bytes] = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                return lines

    def __iter__(self) -> "WSGIInput":
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line


