"""``direct_head.split_head`` parses the common request head as h11 does
and leaves every other head to h11: the same fields, the same refusals."""

from __future__ import annotations

from typing import Any, Optional

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ws_multipath.errors import HandshakeError
from ws_multipath.http import request as request_module
from ws_multipath.http.direct_head import split_head
from ws_multipath.http.request import parse_request_head

UPGRADE = (
    b"GET /chat?room=1 HTTP/1.1\r\nHost: example.com:8000\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def h11_parts(head: bytes) -> Optional[tuple[bytes, bytes, bytes, list[tuple[bytes, bytes]]]]:
    """What h11 makes of ``head``: the request's parts, or None when it refuses it."""
    parser = h11.Connection(h11.SERVER, max_incomplete_event_size=len(head) + 1)
    try:
        parser.receive_data(head)
        event = parser.next_event()
    except h11.RemoteProtocolError:
        return None
    if not isinstance(event, h11.Request):
        return None
    return event.method, event.target, event.http_version, list(event.headers.raw_items())


def by_h11_only(head: bytes) -> Any:
    """``parse_request_head`` without the direct parse: its request, or the refusal."""
    saved = request_module.split_head
    request_module.split_head = lambda head: None
    try:
        return outcome(head)
    finally:
        request_module.split_head = saved


def outcome(head: bytes) -> Any:
    try:
        request = parse_request_head(head, remote_address=("127.0.0.1", 5))
    except HandshakeError as exc:
        return ("refused", exc.status, exc.reason)
    return (request.method, request.target, request.http_version, request.headers.raw_items(), request.host)


@pytest.mark.parametrize(
    "head",
    [
        UPGRADE,
        UPGRADE.replace(b"HTTP/1.1", b"HTTP/1.0"),
        UPGRADE.replace(b"Upgrade: websocket", b"Upgrade:websocket  \t"),
        UPGRADE.replace(b"\r\n\r\n", b"\r\nX-Empty:\r\nX-Spaces:   \r\nX-Inner: a  b\t c\r\nX-Obs: caf\xe9\r\n\r\n"),
        b"GET ws://example.com/p?q=1 HTTP/1.1\r\nHost: other\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
    ],
)
def test_the_common_heads_are_parsed_as_h11_parses_them(head: bytes) -> None:
    parts = split_head(head)
    assert parts is not None
    assert parts == h11_parts(head)
    assert outcome(head) == by_h11_only(head)


@pytest.mark.parametrize(
    "head",
    [
        UPGRADE.replace(b"Host: example.com:8000\r\n", b""),  # no Host: h11 says 400
        UPGRADE.replace(b"\r\n\r\n", b"\r\nHost: again\r\n\r\n"),  # two
        UPGRADE.replace(b"\r\n\r\n", b"\r\nContent-Length: 0, 0\r\n\r\n"),  # h11 rewrites it
        UPGRADE.replace(b"\r\n\r\n", b"\r\nTransfer-Encoding: Chunked\r\n\r\n"),  # h11 lower-cases it
        UPGRADE.replace(b"HTTP/1.1", b"HTTP/2.0"),
        UPGRADE.replace(b"Upgrade: websocket", b"Upgrade : websocket"),
        UPGRADE.replace(b"Upgrade: websocket", b"Upgrade: web\x00socket"),
        UPGRADE.replace(b"Upgrade: websocket", b"Upgrade: web\x0bsocket"),
        UPGRADE.replace(b"Upgrade: websocket", b"Upgrade: websocket\r\n continued"),
        UPGRADE.replace(b"\r\nUpgrade", b"\nUpgrade"),
        UPGRADE.replace(b"/chat", b"/ch\xe9t"),
        UPGRADE.replace(b"GET /chat", b"GET  /chat"),
        UPGRADE.replace(b"GET", b"G(T"),
        UPGRADE[:-2],
    ],
)
def test_the_other_heads_go_to_h11(head: bytes) -> None:
    assert split_head(head) is None
    assert outcome(head) == by_h11_only(head)


_PIECES = [
    b"GET", b"POST", b"G@T", b" ", b"  ", b"/", b"/a?b=c", b"*", b"http://h:1/x", b"\xe9", b"\x00", b"\x7f", b"\x0b",
    b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"\r\n", b"\n", b"\r", b"Host", b"host", b"HOST", b": ", b":", b"\t",
    b"Upgrade", b"websocket", b"Content-Length", b"Transfer-Encoding", b"chunked", b"0", b"x y", b",", b"h:80",
]


@settings(max_examples=600, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=24), st.sampled_from([b"", b"Host: h\r\n", b"X: 1\r\nHost: h\r\n"]))
def test_any_head_gets_the_answer_h11_gives(pieces: list[bytes], fields: bytes) -> None:
    head = b"GET / HTTP/1.1\r\n" + fields + b"".join(pieces) + b"\r\n\r\n"
    parts = split_head(head)
    if parts is not None:
        assert parts == h11_parts(head)
    assert outcome(head) == by_h11_only(head)


@settings(max_examples=600, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=30))
def test_any_request_line_gets_the_answer_h11_gives(pieces: list[bytes]) -> None:
    head = b"".join(pieces) + b"\r\nHost: h\r\n\r\n"
    parts = split_head(head)
    if parts is not None:
        assert parts == h11_parts(head)
    assert outcome(head) == by_h11_only(head)
