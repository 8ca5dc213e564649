"""The opening handshake: what bad requests get, and the accept token."""

from __future__ import annotations

import gc
import socket
import threading

import pytest

from ws_multipath.http.upgrade import accept_token

from .conftest import TIMEOUT, UPGRADE, raw_request, upgrade_head, wait_until


@pytest.fixture
def echo_server(server):
    server.create_handler(path="/echo")
    return server


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def test_accept_token_matches_rfc_6455_example():
    assert accept_token("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 section 1.3


def test_a_valid_upgrade_gets_101_with_the_accept_token(echo_server):
    with socket.create_connection(("127.0.0.1", echo_server.port), timeout=TIMEOUT) as sock:
        sock.sendall(upgrade_head("/echo"))
        response = sock.recv(4096)
    assert response.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in response


def test_plain_http_gets_426_upgrade_required(echo_server):
    response = raw_request(echo_server, b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(response) == 426
    assert b"\r\nUpgrade: websocket\r\n" in response


@pytest.mark.parametrize(
    "head, status, header",
    [
        (UPGRADE.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""), 400, None),
        (UPGRADE.replace("dGhlIHNhbXBsZSBub25jZQ==", "too-short"), 400, None),
        (UPGRADE.replace("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA=="), 400, None),
        (UPGRADE.replace("Version: 13", "Version: 8"), 426, b"Sec-WebSocket-Version: 13"),
        (UPGRADE.replace("Sec-WebSocket-Version: 13\r\n", ""), 426, b"Sec-WebSocket-Version: 13"),
        (UPGRADE.replace("GET ", "POST "), 405, b"Allow: GET"),
        (UPGRADE.replace("Connection: Upgrade", "Connection: keep-alive"), 400, None),
        (UPGRADE.replace("HTTP/1.1", "HTTP/1.0"), 400, None),
        (UPGRADE.replace("Host: 127.0.0.1\r\n", ""), 400, None),
        ("GET /echo HTTP/1.1\r\nHost: x\r\nBad Header\r\n", 400, None),
        ("NOT HTTP AT ALL\r\n", 400, None),
    ],
)
def test_bad_upgrade_requests_get_4xx_and_a_closed_socket(echo_server, library_log, head, status, header):
    response = raw_request(echo_server, (head.format(path="/echo") + "\r\n").encode())
    assert status_of(response) == status, response
    if header:
        assert header in response
    assert not library_log.errors()


def test_an_oversized_head_gets_431(make_server):
    server = make_server(max_header_size=1024)
    server.create_handler(path="/echo")
    response = raw_request(server, upgrade_head("/echo", "X-Big: " + "a" * 2000 + "\r\n"))
    assert status_of(response) == 431


def test_too_many_headers_get_431(make_server):
    server = make_server(max_headers=10)
    server.create_handler(path="/echo")
    extra = "".join(f"X-{i}: {i}\r\n" for i in range(10))
    assert status_of(raw_request(server, upgrade_head("/echo", extra))) == 431


def test_a_client_that_vanishes_mid_head_costs_no_thread_and_leaves_nothing(echo_server, library_log):
    from ws_multipath.http.head_waiting import HeadWaiter

    raw_request(echo_server, b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")  # starts the shared timer thread and the head loop
    assert wait_until(lambda: threading.active_count() <= 5)  # main, accept loop, timers, head loop, sysmon
    baseline = threading.active_count()
    ours = set()
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", echo_server.port), timeout=TIMEOUT) as sock:
            ours.add(sock.getsockname())
            sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n")
    assert threading.active_count() <= baseline
    assert wait_until(lambda: not [o for o in gc.get_objects() if type(o) is HeadWaiter and o.address in ours])
    assert not library_log.errors()


def test_an_unfinished_handshake_is_dropped_after_open_timeout(make_server):
    server = make_server(open_timeout=0.3)
    server.create_handler(path="/echo")
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\n")
        assert sock.recv(100) == b""  # closed by the server, no answer


# -- validation in ws's order (issue 19) ----------------------------------------

_BARE = "GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"


@pytest.mark.parametrize(
    "fields",
    [
        "",  # neither key nor version
        "Sec-WebSocket-Key: short\r\n",  # an invalid key, no version
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        "Sec-WebSocket-Key: short\r\nSec-WebSocket-Version: 12\r\n",  # the key first, as ws checks
    ],
    ids=["no-key-no-version", "bad-key-no-version", "two-keys", "bad-key-bad-version"],
)
def test_a_missing_or_invalid_key_gets_400_whatever_the_version(echo_server, fields):
    response = raw_request(echo_server, (_BARE + fields + "\r\n").encode())
    assert status_of(response) == 400 and b"Sec-WebSocket-Key" in response


def test_an_unsupported_version_with_a_valid_key_still_gets_426(echo_server):
    response = raw_request(echo_server, upgrade_head("/echo").replace(b"Version: 13", b"Version: 12"))
    assert status_of(response) == 426 and b"\r\nSec-WebSocket-Version: 13\r\n" in response


def test_another_upgrade_on_a_websocket_path_gets_400(echo_server):
    response = raw_request(echo_server, upgrade_head("/echo").replace(b"Upgrade: websocket", b"Upgrade: foo"))
    assert status_of(response) == 400
    # a path no handler serves keeps its answer (426: this server speaks WebSocket only)
    response = raw_request(echo_server, upgrade_head("/nowhere").replace(b"Upgrade: websocket", b"Upgrade: foo"))
    assert status_of(response) == 426


@pytest.mark.parametrize("offer", ["foo;bar", "foo, foo", "a,,b", "chat, sp ace"])
def test_an_invalid_or_repeated_subprotocol_gets_400_and_is_never_chosen(server, offer):
    chosen = []
    server.create_handler(path="/echo").on("connection", lambda ws, request: chosen.append(ws.protocol))
    response = raw_request(server, upgrade_head("/echo", f"Sec-WebSocket-Protocol: {offer}\r\n"))
    assert status_of(response) == 400 and b"Sec-WebSocket-Protocol" in response
    assert chosen == []


def test_a_valid_subprotocol_list_is_still_negotiated(echo_server):
    with socket.create_connection(("127.0.0.1", echo_server.port), timeout=TIMEOUT) as sock:
        sock.sendall(upgrade_head("/echo", "Sec-WebSocket-Protocol: chat ,\tsuperchat\r\n"))
        response = sock.recv(4096)
    assert response.startswith(b"HTTP/1.1 101 ") and b"\r\nSec-WebSocket-Protocol: chat\r\n" in response


@pytest.mark.parametrize("space", ["\xa0", "\x85"])
def test_a_key_is_stripped_of_optional_whitespace_only(echo_server, space):
    # str.strip() also drops NBSP and NEL: such a key got a 101 (hostile-client pass)
    head = upgrade_head("/echo").decode("latin-1").replace("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZQ==" + space)
    assert status_of(raw_request(echo_server, head.encode("latin-1"))) == 400


@pytest.mark.parametrize("host", ["a b@c/d", "x/y", "a@b"])
def test_an_invalid_host_gets_400(echo_server, host):
    response = raw_request(echo_server, upgrade_head("/echo").replace(b"Host: 127.0.0.1", f"Host: {host}".encode()))
    assert status_of(response) == 400 and b"Host" in response


@pytest.mark.parametrize("host", ["example.com", "example.com:8080", "[::1]:80", "127.0.0.1", "xn--caf-dma.example"])
def test_valid_hosts_are_accepted(echo_server, host):
    with socket.create_connection(("127.0.0.1", echo_server.port), timeout=TIMEOUT) as sock:
        sock.sendall(upgrade_head("/echo").replace(b"Host: 127.0.0.1", f"Host: {host}".encode()))
        assert sock.recv(4096).startswith(b"HTTP/1.1 101 ")
