"""incoming.py: what arrives on a connection, acted on in order: 'message'
listeners or the inbox (and its backpressure), handshake leftovers, pings and
pongs, and a message answered before the close that followed it."""

from __future__ import annotations

import queue
import socket
import struct
import threading

from websockets.sync.client import connect

from .conftest import TIMEOUT, read_until_eof, serve_one, upgrade_head, url, wait_until


def test_message_listener_gets_data_and_is_binary(server):
    handler = server.create_handler(path="/l")
    got: queue.Queue = queue.Queue()
    handler.on("connection", lambda ws, request: ws.on("message", lambda data, is_binary: got.put((data, is_binary))))
    with connect(url(server, "/l"), open_timeout=TIMEOUT) as client:
        client.send("t")
        client.send(b"b")
        assert got.get(timeout=TIMEOUT) == ("t", False)
        assert got.get(timeout=TIMEOUT) == (b"b", True)


def test_no_message_is_lost_when_the_client_sends_with_its_handshake(server):
    """Frames that arrive in the same packet as the upgrade request reach a
    listener attached in the 'connection' listener."""
    handler = server.create_handler(path="/early")
    got: queue.Queue = queue.Queue()
    handler.on("connection", lambda ws, request: ws.on("message", lambda data, is_binary: got.put(data)))
    frames = b"".join(_masked_text(f"m{i}") for i in range(5))
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(upgrade_head("/early") + frames)
        assert [got.get(timeout=TIMEOUT) for _ in range(5)] == [f"m{i}" for i in range(5)]


def test_listeners_of_one_connection_run_one_at_a_time_in_order(server):
    handler = server.create_handler(path="/order")
    seen: list[int] = []
    active = [0]
    overlap = []
    done = threading.Event()

    def on_message(data, is_binary):
        active[0] += 1
        overlap.append(active[0])
        seen.append(int(data))
        active[0] -= 1
        if len(seen) == 300:
            done.set()

    handler.on("connection", lambda ws, request: ws.on("message", on_message))
    with connect(url(server, "/order"), open_timeout=TIMEOUT) as client:
        for i in range(300):
            client.send(str(i))
        assert done.wait(TIMEOUT)
    assert seen == list(range(300)) and max(overlap) == 1


def test_ping_pong_and_close_events(server):
    handler = server.create_handler(path="/events")
    events: queue.Queue = queue.Queue()

    @handler.on("connection")
    def attach(ws, request):
        ws.on("ping", lambda payload: events.put(("ping", payload)))
        ws.on("pong", lambda payload: events.put(("pong", payload)))
        ws.on("close", lambda code, reason: events.put(("close", code, reason)))
        ws.ping(b"srv")

    with connect(url(server, "/events"), open_timeout=TIMEOUT) as client:
        assert events.get(timeout=TIMEOUT) == ("pong", b"srv")
        client.ping(b"cli").wait(TIMEOUT)  # auto_pong answered
        assert events.get(timeout=TIMEOUT) == ("ping", b"cli")
        client.close(4001, "see you")
    assert events.get(timeout=TIMEOUT) == ("close", 4001, "see you")


def test_auto_pong_off_does_not_answer(server):
    connections = serve_one(server, auto_pong=False)
    with connect(url(server, "/ws"), open_timeout=TIMEOUT) as client:
        connections.get(timeout=TIMEOUT)
        assert not client.ping(b"x").wait(0.3)


def test_full_queue_stops_reading_and_loses_nothing(server):
    connections = serve_one(server, max_queue=2)
    count = 200
    with connect(url(server, "/ws"), open_timeout=TIMEOUT) as client:
        ws = connections.get(timeout=TIMEOUT)
        sender = threading.Thread(target=lambda: [client.send(str(i)) for i in range(count)])
        sender.start()
        assert wait_until(lambda: len(ws._inbox) == 2)
        assert len(ws._inbox) <= 2
        assert [ws.receive(timeout=TIMEOUT) for _ in range(count)] == [str(i) for i in range(count)]
        sender.join(TIMEOUT)


def test_iteration_answers_a_message_before_the_close_that_followed_it(server):
    handler = server.create_handler(path="/iter")
    handler.on("connection", lambda ws, request: [ws.send(m) for m in ws])
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        close = bytes((0x88, 0x82)) + b"\x00" * 4 + struct.pack("!H", 1000)
        sock.sendall(upgrade_head("/iter") + _masked_text("last words") + close)
        data = read_until_eof(sock)
    body = data.split(b"\r\n\r\n", 1)[1]
    assert body.startswith(b"\x81\x0alast words\x88\x02\x03\xe8")


# -- helpers -------------------------------------------------------------------


def _masked_text(text: str) -> bytes:
    payload = text.encode()
    mask = b"\x01\x02\x03\x04"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes((0x81, 0x80 | len(payload))) + mask + masked
