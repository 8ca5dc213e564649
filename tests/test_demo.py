"""The demo's parts in process: the page's WSGI app (under wsgiref's
validator) and the chat's names, roster and JSON for members, beside the
plain text for clients without a name."""

from __future__ import annotations

import http.client
import json
from wsgiref.validate import validator

import pytest
from websockets.sync.client import connect

from ws_multipath.demo import NAME_LIMIT, add_demo, app, member_name
from ws_multipath.http.request import parse_request_head

from .conftest import TIMEOUT, url, wait_until


@pytest.fixture
def demo(make_server):
    server = make_server(wsgi_app=validator(app))
    chat = add_demo(server)
    return server, chat


def get(server, path, method="GET"):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def test_the_page_and_its_files_are_served_with_their_types(demo):
    server, _ = demo
    for path, content_type, marker in [
        ("/", "text/html; charset=utf-8", b"<!doctype html>"),
        ("/demo.css", "text/css; charset=utf-8", b":root"),
        ("/demo.js", "text/javascript; charset=utf-8", b'"use strict"'),
    ]:
        status, headers, body = get(server, path)
        assert status == 200 and headers["Content-Type"] == content_type and marker in body
        assert headers["Content-Length"] == str(len(body)) and headers["X-Content-Type-Options"] == "nosniff"
    status, headers, body = get(server, "/", "HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0


def test_other_paths_get_404_and_other_methods_405(demo):
    server, _ = demo
    assert get(server, "/index.html")[0] == 404
    assert get(server, "/chat")[0] == 404  # plain HTTP to a WebSocket path goes to the app
    status, headers, _ = get(server, "/", "POST")
    assert status == 405 and headers["Allow"] == "GET, HEAD"


def recv_json(ws):
    return json.loads(ws.recv(timeout=TIMEOUT))


def test_members_get_the_roster_on_join_and_leave_and_named_messages(demo):
    server, chat = demo
    with connect(url(server, "/chat?name=Alice"), open_timeout=TIMEOUT) as alice:
        assert recv_json(alice) == {"type": "roster", "names": ["Alice"]}
        with connect(url(server, "/chat?name=Bob%20B."), open_timeout=TIMEOUT) as bob:
            assert recv_json(alice) == {"type": "roster", "names": ["Alice", "Bob B."]}
            assert recv_json(bob) == {"type": "roster", "names": ["Alice", "Bob B."]}
            assert chat.roster() == ["Alice", "Bob B."]
            bob.send("hi Alice")
            for ws in (alice, bob):
                assert recv_json(ws) == {"type": "message", "name": "Bob B.", "text": "hi Alice"}
        assert recv_json(alice) == {"type": "roster", "names": ["Alice"]}
    assert wait_until(lambda: chat.roster() == [])  # Alice's close is handled on her connection's thread

def test_clients_without_a_name_keep_plain_text_both_ways(demo):
    server, chat = demo
    with connect(url(server, "/chat"), open_timeout=TIMEOUT) as plain, connect(url(server, "/chat?name=Alice"), open_timeout=TIMEOUT) as alice:
        assert recv_json(alice) == {"type": "roster", "names": ["Alice"]}
        assert chat.roster() == ["Alice"]  # no name, not on the roster
        alice.send("hello")
        assert plain.recv(timeout=TIMEOUT) == "hello"  # no roster, no JSON
        assert recv_json(alice) == {"type": "message", "name": "Alice", "text": "hello"}
        plain.send('{"type": "roster", "names": ["Mallory"]}')
        assert plain.recv(timeout=TIMEOUT) == '{"type": "roster", "names": ["Mallory"]}'
        assert recv_json(alice) == {"type": "message", "name": None, "text": '{"type": "roster", "names": ["Mallory"]}'}
        plain.send(b"\x00\x01")
        assert plain.recv(timeout=TIMEOUT) == b"\x00\x01"  # binary: to clients without a name only
        plain.send("after")
        assert recv_json(alice) == {"type": "message", "name": None, "text": "after"}


@pytest.mark.parametrize(
    "target, name",
    [
        ("/chat", None),
        ("/chat?name=", None),
        ("/chat?name=%20%09", None),
        ("/chat?name=%20Ann%0A%0A%20Lee%20", "Ann Lee"),
        ("/chat?name=a%00b", "ab"),
        ("/chat?name=" + "x" * 100, "x" * NAME_LIMIT),
        ("/chat?name=Zo%C3%AB&name=other", "Zoë"),
    ],
)
def test_member_name(target, name):
    request = parse_request_head(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert member_name(request) == name
