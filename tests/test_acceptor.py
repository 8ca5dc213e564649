"""The accept loop: what every accepted socket is set up with."""

from __future__ import annotations

import statistics
import threading
import time

from websockets.sync.client import connect

from .conftest import url

BURST = 64


def test_a_burst_of_small_messages_is_not_held_back_by_nagle(server):
    """With Nagle's algorithm on, every frame after the first of a burst
    waits for the client's delayed ACK (about 40 ms on Linux)."""
    handler = server.create_handler(path="/burst")

    @handler.on("connection")
    def on_connection(ws, request):
        @ws.on("message")
        def on_message(data, is_binary):
            for _ in range(BURST):
                ws.send("x" * 1024)

    rounds = []
    with connect(url(server, "/burst"), open_timeout=5) as client:
        for _ in range(15):
            started = time.perf_counter()
            client.send("go")
            for _ in range(BURST):
                assert len(client.recv(timeout=5)) == 1024
            rounds.append(time.perf_counter() - started)
    # a stalled burst takes >= 40 ms; an unstalled one about 1 ms
    assert statistics.median(rounds) < 0.02, f"burst round trips (s): {rounds}"


def test_a_held_server_accepts_only_once_its_handlers_are_registered():
    """The serve command's workers make their server inside
    ``accepting_held()``: a connection that arrives before the factory
    registered its handlers waits in the backlog instead of getting 400."""
    import base64
    import os
    import socket

    from ws_multipath import MultipathServer
    from ws_multipath.sync.acceptor import accepting_held

    key = base64.b64encode(os.urandom(16)).decode()
    request = (f"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
    with accepting_held():
        server = MultipathServer(port=0, host="127.0.0.1")
        client = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        client.sendall(request)
        client.settimeout(0.5)  # without the hold, the 400 comes in about a millisecond
        try:
            early = client.recv(1024)
        except socket.timeout:
            early = None
        assert early is None, early
        server.create_handler("/chat")
    try:
        client.settimeout(5)
        assert client.recv(1024).startswith(b"HTTP/1.1 101")
    finally:
        client.close()
        server.close()


def test_a_server_made_inside_a_failed_hold_closes_without_accepting():
    from ws_multipath import MultipathServer
    from ws_multipath.sync.acceptor import accepting_held

    made = []
    try:
        with accepting_held():
            made.append(MultipathServer(port=0, host="127.0.0.1"))
            raise LookupError("the factory failed")
    except LookupError:
        pass
    closer = threading.Thread(target=made[0].close, daemon=True)
    closer.start()
    closer.join(5)  # returns: no accept loop to wait for
    assert not closer.is_alive()
    assert not made[0].listening


def _upgrade_request(path: str) -> bytes:
    import base64
    import os

    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


def test_a_client_between_listen_and_create_handler_gets_the_handler():
    """A script's ``create_handler`` calls come after the constructor has
    started listening: a client reconnecting as the server restarts can
    arrive in between. Its upgrade waits for the handler (within the first
    second) instead of getting 400 "no handler"."""
    import socket

    from ws_multipath import MultipathServer

    from .conftest import wait_until

    server = MultipathServer(port=0, host="127.0.0.1")
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as client:
            client.sendall(_upgrade_request("/chat"))
            assert wait_until(lambda: server._routes.waiting == 1, timeout=5), "the upgrade did not wait for a handler"
            server.create_handler("/other")  # not its path: it waits on
            server.create_handler("/chat")
            assert client.recv(1024).startswith(b"HTTP/1.1 101")
    finally:
        server.close()


def test_a_path_without_a_handler_still_gets_400_once_the_server_is_up():
    import socket

    from ws_multipath import MultipathServer

    server = MultipathServer(port=0, host="127.0.0.1")
    try:
        server._routes.expect_handlers(0)  # as HANDLERS_GRACE after listening
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as client:
            client.sendall(_upgrade_request("/nobody"))
            assert client.recv(1024).startswith(b"HTTP/1.1 400")
        assert time.monotonic() - started < 0.9  # not after the grace (1 s)
    finally:
        server.close()


def test_closing_the_server_answers_an_upgrade_waiting_for_a_handler():
    import socket

    from ws_multipath import MultipathServer

    from .conftest import wait_until

    server = MultipathServer(port=0, host="127.0.0.1")
    client = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    try:
        client.sendall(_upgrade_request("/chat"))
        assert wait_until(lambda: server._routes.waiting == 1, timeout=5)
        server.close()
        assert server._routes.waiting == 0
        assert not client.recv(1024).startswith(b"HTTP/1.1 101")
    finally:
        client.close()


def test_serve_forever_ends_the_wait_for_handlers():
    """``serve_forever()`` says the handlers are made: a path none serves
    gets its 400 at once from then on, not after the grace."""
    import socket

    from ws_multipath import MultipathServer

    from .conftest import wait_until

    server = MultipathServer(port=0, host="127.0.0.1")
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as client:
            client.sendall(_upgrade_request("/nobody"))
            assert wait_until(lambda: server._routes.waiting == 1, timeout=5)
            serving.start()
            client.settimeout(0.9)  # before the grace (1 s) ends by itself
            assert client.recv(1024).startswith(b"HTTP/1.1 400")
    finally:
        server.close()
        serving.join(5)
