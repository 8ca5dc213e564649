"""The rules every request head obeys, on every path: the first request of a
connection, a WebSocket upgrade, and each later request on a WSGI
keep-alive connection (``head.read_head`` applies them before h11 parses
the head, so h11 never sees a head these rules refuse).

h11 checks the syntax; these are what it lets through and a server should
not (the statuses of RFC 9110 and RFC 9112, where they give one):

- the request target: at most ``max_target`` bytes (414), origin-form
  (``/path?query``), absolute-form (converted by ``origin_form``),
  ``*`` for OPTIONS only, CONNECT refused (501: this is no proxy), a
  ``#fragment`` dropped;
- the version: HTTP/1.0 or HTTP/1.1 (505 for any other);
- the fields: no obs-fold, no control character in a value, one
  ``Content-Type``, ``Content-Length`` a plain number given once;
- ``Transfer-Encoding``: ``chunked`` alone, on HTTP/1.1, without
  ``Content-Length`` (400), any other coding 501.
"""

from __future__ import annotations

import re
from typing import Optional
from urllib.parse import urlsplit

from ..errors import HandshakeError

__all__ = ["MAX_TARGET_SIZE", "check_head", "check_target_length", "origin_form"]

#: Bytes of a request target (414 beyond): nginx's 8 KiB header buffer less
#: its method and version; gunicorn's default is 4094 for the whole line.
MAX_TARGET_SIZE = 8190

_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]")
_ABSOLUTE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_SCHEMES = frozenset({"http", "https", "ws", "wss"})
# RFC 9110 section 5.5: a field value is visible characters, SP and HTAB
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def _refuse(reason: str, status: int = 400) -> HandshakeError:
    return HandshakeError(status, reason)


def check_target_length(line: bytes, max_target: int) -> None:
    """414 when the target in ``line`` (a request line, complete or not yet)
    is longer than ``max_target`` bytes: said as soon as it is known."""
    first = line.find(b" ")
    if first < 0:
        return
    second = line.find(b" ", first + 1)
    length = (len(line) if second < 0 else second) - first - 1
    if length > max_target:
        raise _refuse(f"request target longer than {max_target} bytes", 414)


def check_head(head: bytes, max_target: int = MAX_TARGET_SIZE) -> None:
    """Raise ``HandshakeError`` when a complete request head (CRLF line
    ends, checked by the reader) breaks the rules above."""
    lines = head[: -len(b"\r\n\r\n")].split(b"\r\n")
    version = _check_request_line(lines[0], max_target)
    _check_fields(lines[1:], version)


def _check_request_line(line: bytes, max_target: int) -> bytes:
    """The version (b"" when the line is malformed: h11 says 400 then)."""
    parts = line.split(b" ")
    if len(parts) != 3:
        return b""
    method, target, version = parts
    if _VERSION.fullmatch(version) and version not in (b"HTTP/1.0", b"HTTP/1.1"):
        raise _refuse(f"HTTP version {version.decode('ascii')} not supported", 505)  # RFC 9110 section 15.6.6
    check_target_length(line, max_target)
    if method == b"CONNECT":
        raise _refuse("CONNECT is not supported: this server is not a proxy", 501)
    if target == b"*" and method != b"OPTIONS":
        raise _refuse("the asterisk-form target is for OPTIONS only (RFC 9112 section 3.2.4)")
    origin_form(target.decode("latin-1"))
    return version


def origin_form(target: str) -> tuple[str, Optional[str]]:
    """The target as the app sees it, and the host an absolute-form target
    names (None for the others), which replaces ``Host`` (RFC 9112 section
    3.2.2). A fragment is dropped (RFC 9112 section 3.2: a target has none).
    ``HandshakeError(400)`` for a target in no form a server accepts."""
    target = target.partition("#")[0]
    if target.startswith("/") or target == "*":
        return target, None
    if not _ABSOLUTE.match(target):
        raise _refuse("the request target must be a path (origin-form) or an absolute URI")
    try:
        parts = urlsplit(target)
        parts.port  # noqa: B018 - raises ValueError for a port that is no number
    except ValueError:
        raise _refuse("malformed absolute-form request target") from None
    if parts.scheme.lower() not in _SCHEMES or not parts.hostname:
        raise _refuse("an absolute-form request target must be an http(s) or ws(s) URI with a host")
    path = parts.path or "/"
    if not path.startswith("/"):
        raise _refuse("malformed absolute-form request target")
    return path + ("?" + parts.query if parts.query else ""), parts.netloc.rpartition("@")[2]


# RFC 3986 section 3.2.2's reg-name, IPv4address and IP-literal characters
# (unreserved, pct-encoded, sub-delims, brackets), and ":" before a port
_HOST_BYTES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~%!$&'()*+,;=[]:"


def _check_fields(lines: list[bytes], version: bytes) -> None:
    content_types = 0
    lengths: list[bytes] = []
    codings: list[bytes] = []
    chunked_field = False
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            raise _refuse("obsolete line folding in a header field (RFC 9112 section 5.2)")
        if _CONTROL.search(line):
            raise _refuse("a control character in a header field (RFC 9110 section 5.5)")
        name, _, value = line.partition(b":")
        name = name.lower()
        if name == b"content-type":
            content_types += 1
        elif name == b"content-length":
            lengths.append(value.strip(b" \t"))
        elif name == b"transfer-encoding":
            chunked_field = True
            codings.extend(c.strip(b" \t").lower() for c in value.split(b",") if c.strip(b" \t"))
        elif name == b"host" and value.strip(b" \t").strip(_HOST_BYTES):
            raise _refuse("an invalid Host (RFC 9112 section 3.2: uri-host [ ':' port ])")
    if content_types > 1:
        raise _refuse("more than one Content-Type")
    if len(lengths) > 1 or (lengths and not lengths[0].isdigit()):
        raise _refuse("Content-Length must be one number (RFC 9112 section 6.3)")
    if chunked_field:
        _check_codings(codings, version, bool(lengths))


def _check_codings(codings: list[bytes], version: bytes, has_length: bool) -> None:
    """RFC 9112 sections 6.1 and 6.3."""
    if version == b"HTTP/1.0":
        raise _refuse("Transfer-Encoding in an HTTP/1.0 request (RFC 9112 section 6.1)")
    if has_length:  # section 6.3: a server may refuse; it closes after answering anyway
        raise _refuse("both Transfer-Encoding and Content-Length (RFC 9112 section 6.3)")
    if not codings or codings[-1] != b"chunked" or codings.count(b"chunked") > 1:
        raise _refuse("chunked must be the last transfer coding, once (RFC 9112 section 6.3)")
    if len(codings) > 1:
        raise _refuse("only the chunked transfer coding is supported", 501)
