"""The request head of the common case, parsed without h11.

h11 costs about 60 us per request head (some 200 Python calls: a
connection object, a state machine, a regex and a dict per field); a new
WebSocket connection needs only the fields. ``split_head`` parses the heads
that h11 would turn into a request event as h11 does, with the same
grammar (RFC 9110 and 9112 as h11 spells them: a token method, a visible
target, ``HTTP/1.0`` or ``HTTP/1.1``, fields ``token ":" OWS value OWS``,
CRLF line ends) and the same result: each field's name as sent and its
value without the optional whitespace around it.

It takes no decision of its own: for any head outside that common case (one
h11 refuses, one whose fields h11 rewrites or checks further:
``Content-Length``, ``Transfer-Encoding``, not exactly one ``Host``) it
returns None and the caller asks h11, so every refusal stays h11's, with
its status. ``tests/test_direct_head.py`` holds the two to the same
answers.
"""

from __future__ import annotations

import re
from typing import Optional

__all__ = ["split_head"]

_TOKEN = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_VALUE = rb"(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?"  # h11's field_value (\s: ASCII whitespace in a bytes pattern)
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/(1\.[01])\r\n")
_FIELD = re.compile(rb"(" + _TOKEN + rb"):[ \t]*(" + _VALUE + rb")[ \t]*\r\n")
_FIELDS = re.compile(rb"(?:" + _TOKEN + rb":[ \t]*" + _VALUE + rb"[ \t]*\r\n)*\r\n")
#: Fields h11 rewrites (a list of lengths, a lower-cased coding) or checks
#: beyond the grammar: left to it.
_H11_CHECKS = frozenset({b"content-length", b"transfer-encoding"})


def split_head(head: bytes) -> Optional[tuple[bytes, bytes, bytes, list[tuple[bytes, bytes]]]]:
    """``(method, target, version, fields)`` of a request head (ending with
    a blank line) as h11 would parse it, or None when h11 must decide."""
    line = _REQUEST_LINE.match(head)
    if line is None:
        return None
    start = line.end()
    if _FIELDS.fullmatch(head, start) is None:
        return None
    fields: list[tuple[bytes, bytes]] = _FIELD.findall(head, start)
    hosts = 0
    for name, _ in fields:
        lowered = name.lower()
        if lowered == b"host":
            hosts += 1
        elif lowered in _H11_CHECKS:
            return None
    if hosts != 1:
        return None
    method, target, version = line.groups()
    return method, target, version, fields
