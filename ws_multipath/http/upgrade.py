"""The opening handshake of RFC 6455 section 4.2: checking an upgrade
request, and the HTTP responses the server sends (101, or an error status
with a short text body). The request head is read by ``head.py``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from http import HTTPStatus
from typing import Iterable, Optional

from ..errors import HandshakeError
from .head import read_request_head
from .request import Request

__all__ = [
    "read_request_head",
    "is_upgrade_request",
    "check_upgrade",
    "accept_token",
    "switching_protocols",
    "error_response",
    "check_headers",
]

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3


def _tokens(values: Iterable[str]) -> set[str]:
    return {token.strip().lower() for value in values for token in value.split(",")}


def is_upgrade_request(request: Request) -> bool:
    """True when the request asks for ``Upgrade: websocket`` (in any form)."""
    return "websocket" in _tokens(request.headers.get_all("Upgrade"))


def check_upgrade(request: Request) -> str:
    """Check a WebSocket upgrade request; return its ``Sec-WebSocket-Key``.

    Raises ``HandshakeError`` with the status RFC 6455 section 4.2.2 asks for.
    """
    if request.method != "GET":
        raise HandshakeError(405, f"method {request.method} not allowed for a WebSocket upgrade", [("Allow", "GET")])
    if request.http_version not in ("1.1",):
        raise HandshakeError(400, "a WebSocket upgrade needs HTTP/1.1")
    if _has_body(request):  # what follows the head must be frames
        raise HandshakeError(400, "a WebSocket upgrade request must not have a body")
    if "upgrade" not in _tokens(request.headers.get_all("Connection")):
        raise HandshakeError(400, "missing 'Connection: Upgrade'")
    key = _key(request)  # before the version, as ws checks them: a bad key is 400 whatever the version
    versions = request.headers.get_all("Sec-WebSocket-Version")
    if versions != ["13"]:
        raise HandshakeError(426, "unsupported Sec-WebSocket-Version", [("Sec-WebSocket-Version", "13")])
    offered_protocols(request)  # refuses an invalid or repeated subprotocol
    return key


def _key(request: Request) -> str:
    keys = request.headers.get_all("Sec-WebSocket-Key")
    if len(keys) != 1:
        raise HandshakeError(400, "missing or repeated Sec-WebSocket-Key")
    key = keys[0].strip(" \t")  # optional whitespace only (RFC 9110 section 5.6.3), not str.strip()'s NBSP and NEL
    try:
        raw = base64.b64decode(key.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raw = b""
    if len(raw) != 16:
        raise HandshakeError(400, "invalid Sec-WebSocket-Key")
    return key


def _has_body(request: Request) -> bool:
    """True for any ``Transfer-Encoding``, or a ``Content-Length`` other than 0."""
    if request.headers.get_all("Transfer-Encoding"):
        return True
    lengths = _tokens(request.headers.get_all("Content-Length"))
    return any(not length.isdigit() or int(length) != 0 for length in lengths)


def accept_token(key: str) -> str:
    """``Sec-WebSocket-Accept`` for ``key`` (RFC 6455 section 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest()).decode("ascii")


def offered_protocols(request: Request) -> list[str]:
    """The subprotocols the client offers, in its order. ``HandshakeError(400)``
    when one is not a token (RFC 6455 section 4.1: a comma-separated list of
    tokens) or is offered twice, as ws refuses them."""
    offered: list[str] = []
    for value in request.headers.get_all("Sec-WebSocket-Protocol"):
        for token in value.split(","):
            token = token.strip(" \t")
            if not token or not _TCHAR.issuperset(token):
                raise HandshakeError(400, "invalid Sec-WebSocket-Protocol header")
            if token in offered:
                raise HandshakeError(400, f"subprotocol {token!r} offered twice in Sec-WebSocket-Protocol")
            offered.append(token)
    return offered


# RFC 9110 section 5.6.2
_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def check_headers(headers: Iterable[object]) -> None:
    """Raise ``ValueError`` unless every item is a ``(name, value)`` pair that
    can be sent: a token name (RFC 9110 section 5.6.2) and a latin-1 str
    value without CR, LF or NUL."""
    for item in headers:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise ValueError(f"response header {item!r} is not a (name, value) pair")
        name, value = item
        if not isinstance(name, str) or not name or not _TCHAR.issuperset(name):
            raise ValueError(f"response header name {name!r} is not an HTTP token")
        if not isinstance(value, str) or any(c in value for c in "\r\n\0") or not _latin1(value):
            raise ValueError(f"response header {name} has an invalid value {value!r}")


def _latin1(value: str) -> bool:
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def phrase(status: int) -> str:
    """The reason phrase of ``status`` ("Error" for one Python does not know)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _response(status: int, headers: list[tuple[str, str]], body: bytes = b"", checked: bool = False) -> bytes:
    if not checked:
        check_headers(headers)
    lines = [f"HTTP/1.1 {status} {phrase(status)}"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def switching_protocols(headers: list[tuple[str, str]], checked: bool = False) -> bytes:
    """The ``101 Switching Protocols`` response with ``headers``; ``ValueError``
    if one of them cannot be sent (see ``check_headers``), unless ``checked``
    says they are known to be valid (the library's own)."""
    return _response(101, headers, checked=checked)


def error_response(error: HandshakeError, extra_headers: Optional[list[tuple[str, str]]] = None) -> bytes:
    """A complete HTTP error response that closes the connection;
    ``ValueError`` if one of ``error.headers`` cannot be sent."""
    body = ((error.reason or phrase(error.status)) + "\n").encode("utf-8", "replace")
    headers = [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(body))),
        ("Connection", "close"),
    ]
    headers.extend(error.headers)
    headers.extend(extra_headers or [])
    return _response(error.status, headers, body)
