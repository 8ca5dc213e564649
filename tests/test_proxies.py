"""http/proxies.py: who the client is behind trusted proxies; and the
request's state, kept from the handshake hooks into the connection."""

from __future__ import annotations

import threading

import pytest
from websockets.sync.client import connect

from ws_multipath.http.proxies import TrustedProxies
from ws_multipath.http.request import Headers

from .conftest import TIMEOUT, url

PEER = ("127.0.0.1", 50000)


def resolve(trusted, *headers, peer=PEER):
    found = TrustedProxies(trusted).resolve(peer, Headers(list(headers)))
    return None if found is None else (found.remote_address, found.secure, found.host)


def test_headers_from_an_untrusted_peer_change_nothing():
    assert resolve([], ("X-Forwarded-For", "203.0.113.9")) is None
    assert resolve(["10.0.0.0/8"], ("X-Forwarded-For", "203.0.113.9"), ("Forwarded", "for=203.0.113.9")) is None


def test_the_client_is_the_rightmost_hop_that_is_not_a_trusted_proxy():
    chain = ("X-Forwarded-For", "198.51.100.1, 203.0.113.9, 10.0.0.2, 10.0.0.3")
    assert resolve(["127.0.0.1", "10.0.0.0/8"], chain)[0] == ("203.0.113.9", 0)
    # every hop trusted: the leftmost is as far as anyone knows
    assert resolve(["*"], chain)[0] == ("198.51.100.1", 0)


def test_forwarded_proto_and_host_come_from_the_clients_hop():
    found = resolve(
        ["127.0.0.1", "10.0.0.0/8"],
        ("X-Forwarded-For", "203.0.113.9, 10.0.0.2"),
        ("X-Forwarded-Proto", "https, http"),
        ("X-Forwarded-Host", "chat.example, internal"),
    )
    assert found == (("203.0.113.9", 0), True, "chat.example")
    assert resolve(["127.0.0.1"], ("X-Forwarded-For", "203.0.113.9"), ("X-Forwarded-Proto", "gopher"))[1] is None


@pytest.mark.parametrize(
    "value, client",
    [
        ('for="[2001:db8:cafe::17]:4711";proto=wss', ("2001:db8:cafe::17", 4711)),
        ("for=192.0.2.60;proto=http;by=203.0.113.43", ("192.0.2.60", 0)),
        ('For="192.0.2.60:8080"', ("192.0.2.60", 8080)),
        ("for=unknown", ("unknown", 0)),
        ("for=_hidden, for=_SEVKISEK", ("_SEVKISEK", 0)),
        ("for=192.0.2.43, for=198.51.100.17", ("198.51.100.17", 0)),
    ],
)
def test_rfc_7239_forwarded(value, client):
    assert resolve(["127.0.0.1"], ("Forwarded", value))[0] == client


def test_x_forwarded_for_wins_over_a_forwarded_the_client_may_have_written():
    """Found by the attack pass: nginx appends to X-Forwarded-For and passes
    a client's own Forwarded header through."""
    found = resolve(["127.0.0.1"], ("X-Forwarded-For", "203.0.113.9"), ("Forwarded", "for=6.6.6.6;proto=https"))
    assert found == (("203.0.113.9", 0), None, None)
    alone = resolve(["127.0.0.1"], ("Forwarded", 'for=203.0.113.9;proto=https;host="a.example"'))
    assert alone == (("203.0.113.9", 0), True, "a.example")


@pytest.mark.parametrize(
    "headers",
    [
        [("X-Forwarded-For", "not an address")],
        [("X-Forwarded-For", "")],
        [("Forwarded", 'for="unterminated')],
        [("Forwarded", "for=300.1.1.1")],
        [("Forwarded", "=;;,,")],
        [("X-Forwarded-For", "1.2.3.4:99999999999")],
        [("X-Forwarded-For", "1.2.3.4:" + "9" * 5000)],
        [("Forwarded", 'for="1.2.3.4:' + "9" * 5000 + '"')],
        [("X-Forwarded-For", "1.2.3.4:\xb2")],
        [("Forwarded", 'for="[::1]:\xb2"')],
    ],
)
def test_malformed_headers_are_ignored(headers):
    found = resolve(["127.0.0.1"], *headers)  # never raises
    assert found is None or found[0][1] == 0  # at most the address survives, never a bad port


def test_bad_trusted_proxies_name_the_argument():
    with pytest.raises(ValueError, match="trusted_proxies"):
        TrustedProxies(["10.0.0.300"])
    with pytest.raises(TypeError, match="trusted_proxies"):
        TrustedProxies("127.0.0.1")


def test_unix_peers_are_trusted_with_unix():
    assert TrustedProxies(["unix"]).resolve("", Headers([("X-Forwarded-For", "203.0.113.9")])).remote_address == ("203.0.113.9", 0)
    assert TrustedProxies(["127.0.0.1"]).resolve("", Headers([("X-Forwarded-For", "203.0.113.9")])) is None


def _connected(make_server, headers, **server_options):
    server = make_server(**server_options)
    handler = server.create_handler(path="/who")
    seen = []
    ready = threading.Event()

    @handler.on("connection")
    def on_connection(ws, request):
        seen.append(ws.request)
        ready.set()

    with connect(url(server, "/who"), additional_headers=headers, open_timeout=TIMEOUT):
        assert ready.wait(TIMEOUT)
    return seen[0]


def test_behind_a_trusted_proxy_the_request_names_the_client_and_the_peer(make_server, library_log):
    headers = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "chat.example"}
    request = _connected(make_server, headers, trusted_proxies=["127.0.0.1"])
    assert request.remote_address == ("203.0.113.9", 0)
    assert request.peer_address[0] == "127.0.0.1"
    assert request.secure is True and request.host == "chat.example"
    spoofed = _connected(make_server, headers)
    assert spoofed.remote_address == spoofed.peer_address and spoofed.remote_address[0] == "127.0.0.1"
    assert spoofed.secure is False and spoofed.host.startswith("127.0.0.1")


def test_request_state_set_by_verify_client_stays_with_the_connection(server):
    def verify(request):
        request.state.user = request.query.get("user", [""])[0]
        return bool(request.state.user)

    handler = server.create_handler(path="/me", verify_client=verify)
    users = []
    done = threading.Event()

    @handler.on("connection")
    def on_connection(ws, request):
        @ws.on("message")
        def on_message(data, is_binary):
            users.append(ws.request.state.user)
            ws.send(f"hello {ws.request.state.user}")

        ws.on("close", lambda code, reason: done.set())

    with connect(url(server, "/me?user=ada"), open_timeout=TIMEOUT) as client:
        client.send("hi")
        assert client.recv(timeout=TIMEOUT) == "hello ada"
    assert done.wait(TIMEOUT) and users == ["ada"]
