"""The rules every request head and chunked body obeys (``http/head.py``,
``http/strictness.py``, ``http/chunked.py``): the same status for the first
request of a connection, for a later one on WSGI keep-alive, and (where it
applies) for a WebSocket upgrade; issue 18's cases, checked against the
kinds of request in gunicorn's corpus."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from ws_multipath.errors import HandshakeError
from ws_multipath.http.chunked import ChunkedChecker, MalformedChunk
from ws_multipath.http.environ import build_environ
from ws_multipath.http.proxies import TrustedProxies
from ws_multipath.http.request import Headers, Request
from ws_multipath.http.strictness import origin_form

from .conftest import TIMEOUT, read_until_eof

GOOD = b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n"
CHUNKED = b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"

#: (what is sent, the status it gets): each is refused before the app sees it
REFUSED = {
    "bare LF": (b"GET /a HTTP/1.1\r\nHost: x\nX: 1\r\n\r\n", 400),
    "target too long": (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    "malformed absolute-form": (b"PUT s://]ufd/: HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "absolute-form, bad port": (b"GET http://h:port/ HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "relative target": (b"GET foo/bar HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "asterisk, not OPTIONS": (b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "authority-form, not CONNECT": (b"GET example.com:443 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "CONNECT": (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 501),
    "HTTP/2.0": (b"GET /a HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    "HTTP/1.0 with Transfer-Encoding": (b"POST /a HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "unknown transfer coding": (b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    "chunked not last": (b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", 400),
    "Content-Length and Transfer-Encoding": (
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "Content-Length list": (b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 2, 2\r\n\r\nab", 400),
    "duplicate Content-Type": (b"GET /a HTTP/1.1\r\nHost: x\r\nContent-Type: a/b\r\nContent-Type: c/d\r\n\r\n", 400),
    "BEL in a value": (b"GET /a HTTP/1.1\r\nHost: x\r\nX-Value: plain\x07injected\r\n\r\n", 400),
    "DEL in a value": (b"GET /a HTTP/1.1\r\nHost: x\r\nX-Value: plain\x7finjected\r\n\r\n", 400),
    "obs-fold": (b"GET /a HTTP/1.1\r\nHost: x\r\nLong: one\r\n two\r\n\r\n", 400),
    "whitespace after a chunk size": (CHUNKED + b"5\r\nhello\r\n0 \r\n\r\n", 400),
    "bare CR in a chunk extension": (CHUNKED + b"5;ext=val\rue\r\nhello\r\n0\r\n\r\n", 400),
    "signed chunk size": (CHUNKED + b"-5\r\nhello\r\n0\r\n\r\n", 400),
    "chunk longer than its size": (CHUNKED + b"5\r\nhello!\r\n0\r\n\r\n", 400),
    "Content-Length in the trailer": (CHUNKED + b"5\r\nhello\r\n0\r\nContent-Length: 99\r\n\r\n", 400),
}


@pytest.fixture
def app_server(make_server):
    """A server whose app answers 200 with what it read, and records the
    path of every request it saw."""
    seen: list[str] = []

    def app(environ, start_response):
        seen.append(environ["PATH_INFO"])
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    server = make_server(wsgi_app=app)
    server.seen = seen  # type: ignore[attr-defined]
    return server


def exchange(server, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(data)
        return read_until_eof(sock)


def statuses(answer: bytes) -> list[int]:
    return [int(line.split()[1]) for line in answer.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_first_request_is_refused_with_its_status(app_server, case):
    data, status = REFUSED[case]
    assert statuses(exchange(app_server, data)) == [status]
    assert app_server.seen == []


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_later_request_on_keep_alive_is_refused_the_same_way(app_server, case):
    data, status = REFUSED[case]
    assert statuses(exchange(app_server, GOOD + data)) == [200, status]
    assert app_server.seen == ["/ok"]


UPGRADE_FIELDS = b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"

UPGRADES_REFUSED = {
    "bare LF": (b"GET /a HTTP/1.1\r\nHost: x\nX: 1\r\n", 400),
    "target too long": (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n", 414),
    "malformed absolute-form": (b"GET s://]ufd/: HTTP/1.1\r\nHost: x\r\n", 400),
    "HTTP/2.0": (b"GET /a HTTP/2.0\r\nHost: x\r\n", 505),
    "BEL in a value": (b"GET /a HTTP/1.1\r\nHost: x\r\nX-Value: a\x07b\r\n", 400),
    "obs-fold": (b"GET /a HTTP/1.1\r\nHost: x\r\nLong: one\r\n two\r\n", 400),
    "CONNECT": (b"CONNECT example.com:443 HTTP/1.1\r\nHost: x\r\n", 501),
}


@pytest.mark.parametrize("case", sorted(UPGRADES_REFUSED))
def test_an_upgrade_request_is_refused_the_same_way(make_server, case):
    server = make_server()
    server.create_handler(path="/a")
    start, status = UPGRADES_REFUSED[case]
    assert statuses(exchange(server, start + UPGRADE_FIELDS + b"\r\n")) == [status]


def test_an_absolute_form_upgrade_reaches_its_handler(make_server):
    server = make_server()
    server.create_handler(path="/a")
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET ws://example.com/a#f HTTP/1.1\r\nHost: x\r\n" + UPGRADE_FIELDS + b"\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 101 ")


@pytest.mark.parametrize("wsgi", [True, False])
def test_414_comes_as_soon_as_the_target_is_too_long(make_server, wsgi):
    server = make_server(wsgi_app=lambda e, s: [], max_target_size=1000) if wsgi else make_server(max_target_size=1000)
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET /" + b"a" * 1001)  # no end of line, no end of head: the client is still sending
        assert read_until_eof(sock).startswith(b"HTTP/1.1 414 ")


def test_414_on_a_later_request_comes_as_soon_as_the_target_is_too_long(app_server):
    with socket.create_connection(("127.0.0.1", app_server.port), timeout=TIMEOUT) as sock:
        sock.sendall(GOOD + b"GET /" + b"a" * 9000)
        assert statuses(read_until_eof(sock)) == [200, 414]


def test_max_target_size_is_an_option(make_server):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", "0")])
        return []

    server = make_server(wsgi_app=app, max_target_size=20)
    assert statuses(exchange(server, b"GET /" + b"a" * 19 + b" HTTP/1.1\r\nHost: x\r\n\r\n")) == [200]
    assert statuses(exchange(server, b"GET /" + b"a" * 20 + b" HTTP/1.1\r\nHost: x\r\n\r\n")) == [414]
    with pytest.raises(ValueError):
        make_server(max_target_size=0)


def test_a_refused_first_request_lingers_so_a_client_still_sending_reads_its_status(app_server):
    """The client sends its head and a body of 200 KiB the server never
    reads as a body: it must get the whole of it out and then read 505, not
    a reset."""
    data = b"POST /a HTTP/2.0\r\nHost: x\r\nContent-Length: 204800\r\n\r\n" + b"x" * 204800
    with socket.create_connection(("127.0.0.1", app_server.port), timeout=TIMEOUT) as sock:
        sock.sendall(data)
        answer = read_until_eof(sock)
    assert answer.startswith(b"HTTP/1.1 505 ")


def test_a_chunked_body_malformed_while_the_app_reads_it_gets_400(make_server):
    called = threading.Event()
    outcome: list[BaseException] = []

    def app(environ, start_response):
        called.set()
        try:
            environ["wsgi.input"].read()
        except Exception as exc:  # noqa: BLE001 - what wsgi.input raises, recorded
            outcome.append(exc)
            raise
        start_response("200 OK", [])
        return []

    server = make_server(wsgi_app=app)
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(CHUNKED + b"5\r\nhello\r\n")
        assert called.wait(TIMEOUT)
        sock.sendall(b"0 \r\n\r\n")
        assert statuses(read_until_eof(sock)) == [400]
    assert outcome and isinstance(outcome[0], ConnectionError)


def test_a_truncated_body_gets_400(app_server):
    with socket.create_connection(("127.0.0.1", app_server.port), timeout=TIMEOUT) as sock:
        sock.sendall(CHUNKED + b"5\r\nhello\r\n0\r\n")
        sock.shutdown(socket.SHUT_WR)  # the final CRLF never comes
        assert statuses(read_until_eof(sock)) == [400]


def test_the_app_sees_origin_form_only(make_server):
    seen: list[dict] = []

    def app(environ, start_response):
        seen.append({k: environ.get(k) for k in ("PATH_INFO", "QUERY_STRING", "REQUEST_URI", "RAW_URI", "HTTP_HOST", "SERVER_NAME", "SERVER_PORT")})
        start_response("200 OK", [("Content-Length", "0")])
        return []

    server = make_server(wsgi_app=app)
    answer = exchange(
        server,
        b"GET http://user:pw@example.com:8080/p%20q?x=1#frag HTTP/1.1\r\nHost: other\r\n\r\n"
        b"GET /f?y=2#frag HTTP/1.1\r\nHost: h\r\n\r\n"
        b"OPTIONS * HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    assert statuses(answer) == [200, 200, 200]
    assert seen[0] == {
        "PATH_INFO": "/p q", "QUERY_STRING": "x=1", "REQUEST_URI": "/p%20q?x=1", "RAW_URI": "/p%20q?x=1",
        "HTTP_HOST": "example.com:8080", "SERVER_NAME": "example.com", "SERVER_PORT": "8080",
    }
    assert (seen[1]["PATH_INFO"], seen[1]["QUERY_STRING"], seen[1]["REQUEST_URI"]) == ("/f", "y=2", "/f?y=2")
    assert seen[2]["PATH_INFO"] == "*"


def test_no_exception_escapes_the_target_parsing():
    for target in ("s://]ufd/:", "http://[::1/", "http://h:99999999/", "http://", "http:///p", "ftp://h/"):
        with pytest.raises(HandshakeError) as info:
            origin_form(target)
        assert info.value.status == 400
    request = Request("GET", "http://[::1/x", Headers([("Host", "h")]))  # made by hand: never raises either
    assert build_environ(request, None, None)["PATH_INFO"] == "http://[::1/x"


def test_the_chunked_grammar():
    ChunkedChecker(4096).feed(b'5;a=1;b="q\\"x" ; c\r\nhello\r\n0\r\nX-Trailer: ok\r\n\r\nNEXT REQUEST')
    checker = ChunkedChecker(4096)
    for byte in b"1A\r\n" + b"x" * 26 + b"\r\n0\r\n\r\n":  # a byte at a time
        checker.feed(bytes([byte]))
    assert checker.done
    for bad in (b"5 \r\n", b" 5\r\n", b"+5\r\n", b"5_0\r\n", b"\r\n", b"5\n", b"5;\r\n", b"5;a=\r\n", b"5;a\x00\r\n"):
        with pytest.raises(MalformedChunk):
            ChunkedChecker(4096).feed(bad)


def test_chunk_lines_are_bounded_and_checked_in_linear_time():
    with pytest.raises(MalformedChunk):
        ChunkedChecker(4096).feed(b"5" + b";a" * 4096)  # no line end: refused once longer than the bound
    hostile = b"5" + b' ;a="' + b"\\x" * 50_000 + b"\r\n"  # an unclosed quoted value, 100 KB
    started = time.perf_counter()
    with pytest.raises(MalformedChunk):
        ChunkedChecker(len(hostile)).feed(hostile)
    assert time.perf_counter() - started < 0.5


def test_forwarded_pairs_are_parsed_in_linear_time():
    """A long whitespace run before a stray quote cost the square of its
    length (16,000 spaces: 2.3 s with the GIL held)."""
    proxies = TrustedProxies(["127.0.0.1"])
    started = time.perf_counter()
    for tail in ('"', "x y", "x"):
        headers = Headers([("Forwarded", "for=" + " " * 16000 + tail)])
        assert proxies.resolve(("127.0.0.1", 1), headers) is None
    assert time.perf_counter() - started < 0.5
    headers = Headers([("Forwarded", ' for = "[2001:db8::1]:4711" ; proto=https ')])
    assert proxies.resolve(("127.0.0.1", 1), headers).remote_address == ("2001:db8::1", 4711)
