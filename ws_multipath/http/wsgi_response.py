"""One request's call of the WSGI app (PEP 3333): ``start_response`` and
``write`` checked as the PEP asks, the result iterated, ``result.close()``
always called. Where the bytes go is the connection's business
(``send_data``); what goes wrong is raised to it."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

from .upgrade import check_headers

__all__ = ["AppResponse", "HOP_BY_HOP"]

# PEP 3333: "WSGI servers must consider it a fatal error for an application
# to send" these (wsgiref.util.is_hop_by_hop).
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers", "transfer-encoding", "upgrade"}
)


class AppResponse:
    """What the app said (``status``, ``headers``) and whether the head went
    out (``sent``, set by the connection). ``send_data(data)`` writes a piece
    of the body (the head first); ``b""`` at the end sends the head alone if
    nothing was sent yet."""

    def __init__(self, send_data: Callable[[bytes], None]) -> None:
        self.status: Optional[str] = None
        self.headers: list[tuple[str, str]] = []
        self.sent = False
        self._send_data = send_data

    def run(self, app: Callable[..., Iterable[bytes]], environ: dict[str, Any]) -> None:
        """Call ``app`` and send everything it returns; raises what it
        raises, or ``TypeError``/``AssertionError`` when it breaks the PEP."""
        result: Any = app(environ, self.start_response)
        try:
            for data in result:
                if not isinstance(data, bytes):
                    raise TypeError(f"the app yielded {type(data).__name__}, not bytes")
                if data:
                    self.write(data)
            if self.status is None:
                raise AssertionError("the app returned without calling start_response()")
            self._send_data(b"")
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()

    def start_response(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self.sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError("start_response() called a second time without exc_info")
        _check_status(status)
        check_headers(headers)
        for name, _ in headers:
            if name.lower() in HOP_BY_HOP:
                raise ValueError(f"the app set the hop-by-hop header {name!r} (PEP 3333 forbids it)")
        self.status, self.headers = status, list(headers)
        return self.write

    def write(self, data: bytes) -> None:
        if self.status is None:
            raise AssertionError("write() called before start_response()")
        self._send_data(data)


def _check_status(status: object) -> None:
    """PEP 3333: "200 OK"; the reason phrase "must not contain control
    characters" (a CR or LF in it would split the response)."""
    if (
        not isinstance(status, str)
        or len(status) < 4
        or not (status[:3].isascii() and status[:3].isdigit())
        or status[3] != " "
        or not 200 <= int(status[:3]) <= 999
        or any(ord(char) < 32 or ord(char) == 127 for char in status)
    ):
        raise ValueError(f"invalid WSGI status {status!r} (expected '200 OK' and the like, 200-999, no control characters)")
