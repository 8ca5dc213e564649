"""The HTTP request that opened a connection: parsing the request head and
the immutable ``Request`` handed to handlers and listeners.

Parsing is done by h11 (which rejects malformed HTTP); this module only turns
its result into names a user reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Optional, Union
from urllib.parse import parse_qs, urlsplit

import h11

from ..errors import HandshakeError

__all__ = ["Headers", "Request", "parse_request_head", "HEAD_END"]

HEAD_END = b"\r\n\r\n"


class Headers(Mapping[str, str]):
    """Case-insensitive, read-only HTTP headers that keep repeated fields.

    ``headers["Sec-WebSocket-Key"]`` returns the value (repeated fields are
    joined with ``", "``, RFC 9110 section 5.3); ``get_all(name)`` returns
    each one; iterating yields the names as the client spelled them.
    """

    __slots__ = ("_items",)

    # Only the fields are kept, and lookups scan them: a request has a few
    # dozen at most, and every open connection keeps its request.

    def __init__(self, items: Union[list[tuple[str, str]], Mapping[str, str], None] = None) -> None:
        if items is None:
            items = []
        elif isinstance(items, Mapping):
            items = list(items.items())
        self._items: tuple[tuple[str, str], ...] = tuple((str(k), str(v)) for k, v in items)

    def __getitem__(self, name: str) -> str:
        values = self.get_all(name)
        if not values:
            raise KeyError(name)
        return ", ".join(values)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = name.lower()
        return any(field.lower() == key for field, _ in self._items)

    def __iter__(self) -> Iterator[str]:
        seen: set[str] = set()
        for name, _ in self._items:
            if name.lower() not in seen:
                seen.add(name.lower())
                yield name

    def __len__(self) -> int:
        return len({name.lower() for name, _ in self._items})

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, in order; ``[]`` when absent."""
        key = name.lower()
        return [value for field, value in self._items if field.lower() == key]

    def raw_items(self) -> list[tuple[str, str]]:
        """The fields as received, in order, with repeats."""
        return list(self._items)

    def __repr__(self) -> str:
        return f"Headers({list(self._items)!r})"


@dataclass(frozen=True)
class Request:
    """An HTTP request head, as received from the client.

    ``buffered`` holds bytes the client sent after the head that were read
    along with it (for a WebSocket, the start of its first frames); whoever
    takes over the socket must consume them before reading more.

    ``path_params`` holds the values of the route pattern's variables that
    matched ``path`` (``{"room": "lobby"}`` for ``/rooms/<room>``),
    percent-decoded and converted; ``{}`` for an exact path.
    """

    method: str
    target: str
    headers: Headers
    http_version: str = "1.1"
    remote_address: Optional[tuple] = None
    secure: bool = False
    buffered: bytes = field(default=b"", repr=False)
    path_params: dict[str, Any] = field(default_factory=dict, hash=False)

    @property
    def path(self) -> str:
        """The path of ``target`` without the query string (not percent-decoded)."""
        return _split_target(self.target)[0]

    @property
    def query(self) -> dict[str, list[str]]:
        """The query string, parsed: ``{"room": ["a"], ...}`` (blank values kept)."""
        return parse_qs(_split_target(self.target)[1], keep_blank_values=True)

    @property
    def origin(self) -> Optional[str]:
        """The ``Origin`` header, or None."""
        return self.headers.get("Origin")


def _split_target(target: str) -> tuple[str, str]:
    if target.startswith("/"):
        path, _, query = target.partition("?")
        return path, query
    if "://" in target:  # absolute-form, RFC 9112 section 3.2.2
        parts = urlsplit(target)
        return parts.path or "/", parts.query
    return target, ""


def parse_request_head(
    head: bytes, *, remote_address: Optional[tuple] = None, secure: bool = False, buffered: bytes = b""
) -> Request:
    """Parse ``head`` (ending with a blank line) into a ``Request``.

    Raises ``HandshakeError(400)`` for anything h11 rejects as malformed.
    """
    parser = h11.Connection(h11.SERVER, max_incomplete_event_size=len(head) + 1)
    try:
        parser.receive_data(head)
        event = parser.next_event()
    except h11.RemoteProtocolError as exc:
        raise HandshakeError(400, f"malformed HTTP request: {exc}") from None
    if not isinstance(event, h11.Request):
        raise HandshakeError(400, "malformed HTTP request")
    headers = Headers([(name.decode("latin-1"), value.decode("latin-1")) for name, value in event.headers.raw_items()])
    return Request(
        method=event.method.decode("ascii"),
        target=event.target.decode("latin-1"),
        headers=headers,
        http_version=event.http_version.decode("ascii"),
        remote_address=remote_address,
        secure=secure,
        buffered=buffered,
    )
