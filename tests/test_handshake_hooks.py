"""The handshake's user hooks under one guard, and the request-head checks.

A hook (``verify_client``, a callable ``allowed_origins``, ``handle_protocols``,
a ``'headers'`` listener) that raises or returns garbage gets the client a
500, sends a ``HookError`` naming the hook to ``'error'``, and never keeps a
``max_connections`` slot. Each case here was broken before (no response, a
traceback, a leaked slot, or a refusal with a nonsense status).
"""

from __future__ import annotations

import logging
import queue
import socket
import time
from http import HTTPStatus

import pytest
from websockets.sync.client import connect

from ws_multipath import HandshakeError
from ws_multipath.errors import HookError
from ws_multipath.http.upgrade import read_request_head

from .conftest import TIMEOUT, UPGRADE, raw_request, upgrade_head, url, wait_until

pytestmark = pytest.mark.timeout(30)


def status_of(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:200]
    return int(response[9:12])


def response_head(server, head: bytes) -> bytes:
    """Send ``head``; return the response head (up to its blank line), even
    when the server keeps the connection open (a 101)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(head)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk
    return received.partition(b"\r\n\r\n")[0]


def error_queue(emitter) -> "queue.Queue[BaseException]":
    errors: queue.Queue = queue.Queue()
    emitter.on("error", errors.put)
    return errors


def assert_hook_error(errors: "queue.Queue[BaseException]", hook: str) -> HookError:
    error = errors.get(timeout=TIMEOUT)
    assert isinstance(error, HookError), repr(error)
    assert hook in str(error) and hook in error.hook
    assert errors.empty()
    return error


def assert_refused_with_500(server, handler, hook: str, head: bytes, library_log) -> HookError:
    errors = error_queue(handler)
    response = raw_request(server, head)
    assert status_of(response) == 500, response
    error = assert_hook_error(errors, hook)
    assert not library_log.errors()  # an 'error' listener exists: nothing logged at ERROR
    return error


# -- 'headers' listeners --------------------------------------------------------


def _bad_pair(headers, request):
    headers.append("x")


def _not_a_tuple(headers, request):
    headers.append(1)


def _raises(headers, request):
    raise RuntimeError("listener bug")


@pytest.mark.parametrize("listener", [_bad_pair, _not_a_tuple, _raises])
def test_a_broken_headers_listener_gets_500_and_never_keeps_a_slot(make_server, library_log, listener):
    server = make_server(max_connections=1)
    handler = server.create_handler(path="/h")
    handler.on("headers", lambda headers, request: listener(headers, request) if "X-Bad" in request.headers else None)
    errors = error_queue(handler)
    for _ in range(3):
        response = raw_request(server, upgrade_head("/h", "X-Bad: 1\r\n"))
        assert status_of(response) == 500, response
        assert_hook_error(errors, "'headers' listener")
    with connect(url(server, "/h"), open_timeout=TIMEOUT):  # the only slot is free
        assert wait_until(lambda: len(handler.clients) == 1)
    assert wait_until(lambda: handler.clients == frozenset())
    assert not library_log.errors()


def test_a_raising_headers_listener_stops_the_later_ones(server, library_log):
    handler = server.create_handler(path="/h")
    later = []
    handler.on("headers", _raises)
    handler.on("headers", lambda headers, request: later.append(1))
    error = assert_refused_with_500(server, handler, "'headers' listener _raises", upgrade_head("/h"), library_log)
    assert isinstance(error.__cause__, RuntimeError)
    assert later == []


@pytest.mark.parametrize(
    "header",
    [
        ("X-Nul\x00", "v"),
        ("X Space", "v"),
        ("", "v"),
        ("X-Cr", "a\rb"),
        ("X-Lf", "a\nInjected: yes"),
        ("X-Nul", "a\x00b"),
        ("X-Int", 5),
        (b"X-Bytes", "v"),
        ("X-Euro", "\u20ac"),
    ],
)
def test_a_headers_listener_adding_an_invalid_header_gets_500(server, library_log, header):
    handler = server.create_handler(path="/h")
    handler.on("headers", lambda headers, request: headers.append(header))
    assert_refused_with_500(server, handler, "'headers' listener", upgrade_head("/h"), library_log)


def test_a_headers_listener_error_goes_to_the_server_without_a_handler_listener(server, library_log):
    handler = server.create_handler(path="/h")
    handler.on("headers", _raises)
    errors = error_queue(server)
    assert status_of(raw_request(server, upgrade_head("/h"))) == 500
    assert_hook_error(errors, "'headers' listener")
    assert not library_log.errors()


def test_a_headers_listener_error_without_any_listener_is_logged_once(server, library_log):
    server.create_handler(path="/h").on("headers", _raises)
    assert status_of(raw_request(server, upgrade_head("/h"))) == 500
    assert wait_until(lambda: library_log.errors())
    (record,) = library_log.errors()
    assert record.exc_info[0] is HookError and "'headers' listener" in str(record.exc_info[1])


# -- allowed_origins, handle_protocols ----------------------------------------


def test_an_allowed_origins_callable_that_raises_gets_500(server, library_log):
    handler = server.create_handler(path="/o", allowed_origins=lambda origin: origin.endswith(".example"))
    error = assert_refused_with_500(server, handler, "allowed_origins", upgrade_head("/o"), library_log)  # no Origin: None
    assert isinstance(error.__cause__, AttributeError)


def test_a_handle_protocols_that_raises_gets_500(server, library_log):
    handler = server.create_handler(path="/p", handle_protocols=lambda protocols, request: {}["nope"])
    head = upgrade_head("/p", "Sec-WebSocket-Protocol: chat\r\n")
    error = assert_refused_with_500(server, handler, "handle_protocols", head, library_log)
    assert isinstance(error.__cause__, KeyError)


# -- verify_client results --------------------------------------------------------


@pytest.mark.parametrize(
    "verdict",
    [
        (False, "abc"),
        (),
        (False, 999, ""),
        (False, 101),
        (False, 200),
        (False, 302),
        (False, True),
        (False, 403.0),
        (False, 403, b"bytes"),
        (False, 403, "reason", "extra"),
        (True, 200),
    ],
    ids=repr,
)
def test_an_invalid_verify_client_result_gets_500(server, library_log, verdict):
    handler = server.create_handler(path="/v", verify_client=lambda request: verdict)
    error = assert_refused_with_500(server, handler, "verify_client", upgrade_head("/v"), library_log)
    assert repr(verdict) in str(error)


def test_a_verify_client_that_raises_gets_500_and_its_exception_as_cause(server, library_log):
    handler = server.create_handler(path="/v", verify_client=lambda request: 1 / 0)
    error = assert_refused_with_500(server, handler, "verify_client", upgrade_head("/v"), library_log)
    assert isinstance(error.__cause__, ZeroDivisionError)


@pytest.mark.parametrize("verdict, status", [((False, 429), 429), ((False, 503, "maintenance"), 503), ((False, HTTPStatus.FORBIDDEN), 403), ([], 401), (None, 401)])
def test_valid_verify_client_refusals_keep_their_status(server, library_log, verdict, status):
    handler = server.create_handler(path="/v", verify_client=lambda request: verdict)
    errors = error_queue(handler)
    response = raw_request(server, upgrade_head("/v"))
    assert status_of(response) == status, response
    assert errors.empty() and not library_log.errors()


def test_a_raised_handshake_error_is_sent_exactly(server, library_log):
    def verify(request):
        raise HandshakeError(401, "token expired", headers=[("WWW-Authenticate", 'Bearer realm="chat"')])

    handler = server.create_handler(path="/v", verify_client=verify)
    errors = error_queue(handler)
    response = raw_request(server, upgrade_head("/v"))
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 401 Unauthorized"
    assert b'WWW-Authenticate: Bearer realm="chat"' in lines[1:]
    assert body == b"token expired\n"
    assert errors.empty() and not library_log.errors()


def test_a_headers_listener_may_refuse_with_a_handshake_error_and_frees_its_slot(make_server):
    server = make_server(max_connections=1)
    handler = server.create_handler(path="/h")

    @handler.on("headers")
    def refuse(headers, request):
        if "X-Bad" in request.headers:
            raise HandshakeError(403, "not today")

    errors = error_queue(handler)
    for _ in range(2):
        assert status_of(raw_request(server, upgrade_head("/h", "X-Bad: 1\r\n"))) == 403
    assert status_of(response_head(server, upgrade_head("/h"))) == 101
    assert errors.empty()


def test_a_raised_redirect_is_sent_with_its_location(server):
    def verify(request):
        raise HandshakeError(302, "moved", headers=[("Location", "ws://127.0.0.1/elsewhere")])

    server.create_handler(path="/v", verify_client=verify)
    response = raw_request(server, upgrade_head("/v"))
    assert status_of(response) == 302
    assert b"\r\nLocation: ws://127.0.0.1/elsewhere\r\n" in response


@pytest.mark.parametrize(
    "error",
    [
        HandshakeError(101, "switch"),
        HandshakeError(200, "ok"),
        HandshakeError(700, "out of range"),
        HandshakeError("401", "a str status"),  # type: ignore[arg-type]
        HandshakeError(401, b"bytes reason"),  # type: ignore[arg-type]
        HandshakeError(401, "bad header", headers=[("X-Nul\x00", "v")]),
        HandshakeError(401, "bad value", headers=[("X-Lf", "a\r\nInjected: yes")]),
    ],
    ids=lambda e: f"{e.status!r}-{e.reason!r}",
)
def test_an_invalid_raised_handshake_error_gets_500(server, library_log, error):
    def verify(request):
        raise error

    handler = server.create_handler(path="/v", verify_client=verify)
    assert assert_refused_with_500(server, handler, "verify_client", upgrade_head("/v"), library_log).__cause__ is error


# -- request-head checks ------------------------------------------------------


@pytest.mark.parametrize("extra", ["Content-Length: 5\r\n", "Transfer-Encoding: chunked\r\n", "Content-Length: 1, 1\r\n"])
def test_an_upgrade_request_with_a_body_gets_400(server, library_log, extra):
    server.create_handler(path="/echo")
    body = b"5\r\nhello\r\n0\r\n\r\n" if "chunked" in extra else b"hello"
    response = raw_request(server, upgrade_head("/echo", extra) + body)
    assert status_of(response) == 400, response
    why = "Content-Length" if "1, 1" in extra else "body"  # a list is no Content-Length at all (RFC 9112 section 6.3)
    assert why.encode() in response.partition(b"\r\n\r\n")[2]
    refusals = [r for r in library_log.records if r.levelno == logging.INFO and "refused" in r.getMessage()]
    assert refusals and "127.0.0.1:" in refusals[0].getMessage() and why in refusals[0].getMessage()


def test_content_length_zero_is_no_body(server):
    server.create_handler(path="/echo")
    assert status_of(response_head(server, upgrade_head("/echo", "Content-Length: 0\r\n"))) == 101


@pytest.mark.parametrize(
    "head",
    [
        UPGRADE.format(path="/echo").replace("\r\n", "\n") + "\n",
        UPGRADE.format(path="/echo").replace("Host: 127.0.0.1\r\n", "Host: 127.0.0.1\n") + "\r\n",
    ],
    ids=["all-lf", "one-lf"],
)
def test_a_head_with_bare_lf_gets_400_at_once(make_server, library_log, head):
    server = make_server(open_timeout=5)
    server.create_handler(path="/echo")
    started = time.monotonic()
    response = raw_request(server, head.encode(), timeout=4)
    assert status_of(response) == 400, response
    assert time.monotonic() - started < 1.0
    refusals = [r.getMessage() for r in library_log.records if r.levelno == logging.INFO and "refused" in r.getMessage()]
    assert refusals and "127.0.0.1:" in refusals[0] and "bare LF" in refusals[0]


class Chunks:
    """A socket stand-in whose reads return the given chunks, then EOF."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = list(chunks)

    def recv(self, size: int) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""


def test_a_crlf_split_across_reads_is_not_a_bare_lf():
    head = upgrade_head("/echo")
    cut = head.index(b"\r\n") + 1  # between the request line's CR and LF
    assert read_request_head(Chunks(head[:cut], head[cut:] + b"frames"), 16384, 100) == (head, b"frames")


def test_leading_crlfs_split_across_reads_are_skipped():
    head = upgrade_head("/echo")
    assert read_request_head(Chunks(b"\r\n\r", b"\n\r", b"\n" + head), 16384, 100) == (head, b"")


def test_a_bare_lf_is_refused_before_the_head_ends():
    with pytest.raises(HandshakeError) as info:
        read_request_head(Chunks(b"GET / HTTP/1.1\nHost: x\n"), 16384, 100)  # no EOF needed: refused on the first read
    assert info.value.status == 400 and "LF" in info.value.reason


def test_empty_lines_before_the_request_line_are_ignored(server):
    server.create_handler(path="/echo")
    assert status_of(response_head(server, b"\r\n\r\n\r\n" + upgrade_head("/echo"))) == 101


def test_empty_lines_before_the_request_line_count_towards_the_head_limit(make_server):
    server = make_server(max_header_size=1024)
    server.create_handler(path="/echo")
    assert status_of(raw_request(server, b"\r\n" * 600 + upgrade_head("/echo"))) == 431
