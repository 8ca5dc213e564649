"""The HTTP request that opened a connection: parsing the request head and
the immutable ``Request`` handed to handlers and listeners.

Parsing is done by h11 (which rejects malformed HTTP), or for the common
head by ``direct_head.split_head``, which parses it as h11 would and leaves
every other head to h11; this module only turns the result into names a
user reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Optional, Union
from urllib.parse import parse_qs, urlsplit

import h11

from ..errors import HandshakeError
from .direct_head import split_head
from .strictness import origin_form

if TYPE_CHECKING:
    from .proxies import TrustedProxies

__all__ = ["Headers", "Request", "parse_request_head", "request_from_h11", "HEAD_END"]

HEAD_END = b"\r\n\r\n"


class Headers(Mapping[str, str]):
    """Case-insensitive, read-only HTTP headers that keep repeated fields.

    ``headers["Sec-WebSocket-Key"]`` returns the value (repeated fields are
    joined with ``", "``, RFC 9110 section 5.3); ``get_all(name)`` returns
    each one; iterating yields the names as the client spelled them.
    """

    __slots__ = ("_fields",)

    # Only the fields are kept, names and values in one flat tuple (no tuple
    # per field), and lookups scan them: a request has a few dozen at most,
    # and every open connection keeps its request.

    def __init__(self, items: Union[list[tuple[str, str]], Mapping[str, str], None] = None) -> None:
        if items is None:
            items = []
        elif isinstance(items, Mapping):
            items = list(items.items())
        self._fields: tuple[str, ...] = tuple(text for k, v in items for text in (str(k), str(v)))

    def _pairs(self) -> Iterator[tuple[str, str]]:
        fields = self._fields
        return zip(fields[::2], fields[1::2])

    def __getitem__(self, name: str) -> str:
        values = self.get_all(name)
        if not values:
            raise KeyError(name)
        return ", ".join(values)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = name.lower()
        return any(field.lower() == key for field in self._fields[::2])

    def __iter__(self) -> Iterator[str]:
        seen: set[str] = set()
        for name in self._fields[::2]:
            if name.lower() not in seen:
                seen.add(name.lower())
                yield name

    def __len__(self) -> int:
        return len({name.lower() for name in self._fields[::2]})

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, in order; ``[]`` when absent."""
        key = name.lower()
        size = len(key)
        fields = self._fields
        # lower() keeps an ASCII name's length: most names are ruled out without it
        return [fields[i + 1] for i in range(0, len(fields), 2)
                if (len(fields[i]) == size or not fields[i].isascii()) and fields[i].lower() == key]

    def raw_items(self) -> list[tuple[str, str]]:
        """The fields as received, in order, with repeats."""
        return list(self._pairs())

    def __repr__(self) -> str:
        return f"Headers({self.raw_items()!r})"


#: Header names and values that most upgrade requests carry, as received
#: (bytes) and decoded: each connection keeps its request, and shares these
#: strings instead of holding its own copies (about 50 bytes each).
_SHARED_TEXT = {
    text.encode("latin-1"): text
    for text in (
        "Host", "Upgrade", "Connection", "Origin", "User-Agent", "Cookie", "Pragma", "Cache-Control",
        "Accept-Encoding", "Accept-Language", "Sec-WebSocket-Key", "Sec-WebSocket-Version",
        "Sec-WebSocket-Extensions", "Sec-WebSocket-Protocol", "X-Forwarded-For", "X-Forwarded-Proto",
        "X-Real-IP", "Forwarded", "Authorization",
        "host", "upgrade", "connection", "origin", "user-agent", "cookie", "pragma", "cache-control",
        "accept-encoding", "accept-language", "sec-websocket-key", "sec-websocket-version",
        "sec-websocket-extensions", "sec-websocket-protocol", "x-forwarded-for", "x-forwarded-proto",
        "x-real-ip", "forwarded", "authorization",
        "websocket", "Upgrade", "upgrade", "keep-alive, Upgrade", "13", "no-cache",
        "permessage-deflate; client_max_window_bits", "gzip, deflate", "gzip, deflate, br", "gzip, deflate, br, zstd",
        "http", "https", "GET", "1.1",
    )
}


def _text(raw: bytes) -> str:
    return _SHARED_TEXT.get(raw) or raw.decode("latin-1")


@dataclass(frozen=True)
class Request:
    """An HTTP request head, as received from the client.

    ``buffered`` holds bytes the client sent after the head that were read
    along with it (for a WebSocket, the start of its first frames); whoever
    takes over the socket must consume them before reading more.

    ``path_params`` holds the values of the route pattern's variables that
    matched ``path`` (``{"room": "lobby"}`` for ``/rooms/<room>``),
    percent-decoded and converted; ``{}`` for an exact path.

    ``remote_address`` is the client: the TCP peer, or what a trusted proxy
    says (``http/proxies.py``); ``peer_address`` is always the TCP peer.
    ``secure`` and ``host`` likewise follow a trusted proxy's
    ``X-Forwarded-Proto`` / ``X-Forwarded-Host`` (or ``Forwarded``).

    ``state`` is a namespace of the application's own: the handshake hooks
    (``verify_client``, ``allowed_origins``, ``handle_protocols``) may set
    attributes on it (``request.state.user = ...``), and the connection
    keeps the request, so ``ws.request.state.user`` is there in every
    listener for the connection's whole life. Not thread-safe by itself:
    it is written during the handshake, on the connection's thread.
    """

    method: str
    target: str
    headers: Headers
    http_version: str = "1.1"
    remote_address: Optional[tuple[Any, ...]] = None
    secure: bool = False
    buffered: bytes = field(default=b"", repr=False)
    path_params: dict[str, Any] = field(default_factory=dict, hash=False)
    peer_address: Optional[tuple[Any, ...]] = None
    forwarded_host: Optional[str] = field(default=None, repr=False)
    state: SimpleNamespace = field(default_factory=SimpleNamespace, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.peer_address is None:
            object.__setattr__(self, "peer_address", self.remote_address)

    @property
    def host(self) -> Optional[str]:
        """The host the client asked for: a trusted proxy's, else ``Host``."""
        return self.forwarded_host or self.headers.get("Host")

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
    """Path and query; never raises (a target from the wire is in origin-form
    already, ``strictness.origin_form``; this is for ``Request`` objects made
    by hand)."""
    if target.startswith("/"):
        path, _, query = target.partition("?")
        return path, query
    if "://" in target:  # absolute-form, RFC 9112 section 3.2.2
        try:
            parts = urlsplit(target)
        except ValueError:
            return target, ""
        return parts.path or "/", parts.query
    return target, ""


def parse_request_head(
    head: bytes,
    *,
    remote_address: Optional[tuple[Any, ...]] = None,
    secure: bool = False,
    buffered: bytes = b"",
    proxies: Optional["TrustedProxies"] = None,
) -> Request:
    """Parse ``head`` (ending with a blank line) into a ``Request``;
    ``remote_address`` is the TCP peer, and ``proxies`` may say who the
    client behind it is.

    Raises ``HandshakeError`` for anything h11 rejects as malformed (with
    the status h11 suggests: 400, or 501 for a transfer coding it does not
    support).
    """
    parts = split_head(head)  # the common head, as h11 would parse it; None: h11 decides
    if parts is not None:
        method, target, version, fields = parts
        return _request(method, target, version, fields, remote_address, secure, buffered, proxies)
    parser = h11.Connection(h11.SERVER, max_incomplete_event_size=len(head) + 1)
    try:
        parser.receive_data(head)
        event = parser.next_event()
    except h11.RemoteProtocolError as exc:
        raise HandshakeError(exc.error_status_hint, f"malformed HTTP request: {exc}") from None
    if not isinstance(event, h11.Request):
        raise HandshakeError(400, "malformed HTTP request")
    return request_from_h11(event, remote_address=remote_address, secure=secure, buffered=buffered, proxies=proxies)


def request_from_h11(
    event: h11.Request,
    *,
    remote_address: Optional[tuple[Any, ...]] = None,
    secure: bool = False,
    buffered: bytes = b"",
    proxies: Optional["TrustedProxies"] = None,
) -> Request:
    """The ``Request`` of an h11 request event (the first of a connection or
    a later one on keep-alive): names decoded, the target in origin-form
    (an absolute-form target's host replaces ``Host``, RFC 9112 section
    3.2.2), the client resolved through ``proxies``. ``HandshakeError(400)``
    for a target in no form a server accepts."""
    return _request(event.method, event.target, event.http_version, event.headers.raw_items(), remote_address, secure, buffered, proxies)


def _request(
    method: bytes,
    raw_target: bytes,
    version: bytes,
    raw_fields: list[tuple[bytes, bytes]],
    remote_address: Optional[tuple[Any, ...]],
    secure: bool,
    buffered: bytes,
    proxies: Optional["TrustedProxies"],
) -> Request:
    target, authority = origin_form(raw_target.decode("latin-1"))
    fields = [(_text(name), _text(value)) for name, value in raw_fields]
    if authority is not None:
        fields = [(name, value) for name, value in fields if name.lower() != "host"] + [("Host", authority)]
    headers = Headers(fields)
    forwarding = proxies.resolve(remote_address, headers) if proxies else None
    return Request(
        method=_text(method),  # an ASCII token (h11 and split_head check it)
        target=target,
        headers=headers,
        http_version=_text(version),
        remote_address=forwarding.remote_address if forwarding else remote_address,
        secure=secure if forwarding is None or forwarding.secure is None else forwarding.secure,
        buffered=buffered,
        peer_address=remote_address,
        forwarded_host=forwarding.host if forwarding else None,
    )
