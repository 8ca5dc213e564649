"""Request and Headers, parsed from raw request heads."""

from __future__ import annotations

import pytest

from ws_multipath import HandshakeError, Headers
from ws_multipath.http.request import parse_request_head


def test_fields_of_a_parsed_request():
    head = b"GET /chat/room?x=1&x=2&empty= HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nx-a: 2\r\n\r\n"
    request = parse_request_head(head, remote_address=("127.0.0.1", 5), buffered=b"rest")
    assert request.method == "GET" and request.http_version == "1.1"
    assert request.target == "/chat/room?x=1&x=2&empty="
    assert request.path == "/chat/room"
    assert request.query == {"x": ["1", "2"], "empty": [""]}
    assert request.headers["x-a"] == "1, 2" and request.headers.get_all("X-A") == ["1", "2"]
    assert request.remote_address == ("127.0.0.1", 5) and request.buffered == b"rest"
    assert request.origin is None


def test_absolute_form_target():
    request = parse_request_head(b"GET ws://h/p?q=1 HTTP/1.1\r\nHost: h\r\n\r\n")
    assert request.path == "/p" and request.query == {"q": ["1"]}


def test_malformed_heads_raise_handshake_error_400():
    for head in (b"GET\r\n\r\n", b"GET / HTTP/1.1\r\nNo-Colon\r\n\r\n", b"\x00\x01\r\n\r\n"):
        with pytest.raises(HandshakeError) as info:
            parse_request_head(head)
        assert info.value.status == 400


def test_headers_are_case_insensitive_and_keep_order():
    headers = Headers([("Content-Type", "a"), ("X", "1"), ("x", "2")])
    assert "content-type" in headers and headers["CONTENT-TYPE"] == "a"
    assert list(headers) == ["Content-Type", "X"] and len(headers) == 2
    assert headers.raw_items() == [("Content-Type", "a"), ("X", "1"), ("x", "2")]
    assert headers.get("missing") is None and headers.get_all("missing") == []
    with pytest.raises(KeyError):
        headers["missing"]
