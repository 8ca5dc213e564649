"""The hot paths of writing (``sync/hot_writes.py``): a small ``send()`` framed
and sent in one C call, a broadcast's frame written at once, both falling
back to the outbox when the client's socket is full. Whatever path each
frame takes, the client gets every byte, in order, and the counters count
each message once."""

from __future__ import annotations

import threading

import pytest

from .faultkit import collect_errors, make_server, raw_connect, read_http_response, read_server_frame, upgrade_request

SIZE = 3000  # a small message (SMALL_MESSAGE), several per kernel buffer
ROUNDS = 600  # 3.6 MB in all: far more than the kernel holds for a client that reads 4 KiB at a time


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["text", "binary"])
def test_sends_and_broadcasts_to_a_slow_reader_arrive_whole_and_in_order(kind):
    with collect_errors() as errors, make_server() as server:
        handler = server.create_handler("/feed", ping_interval=None, write_timeout=30)
        joined = threading.Event()
        connections: list = []

        def on_connection(ws, request) -> None:  # type: ignore[no-untyped-def]
            connections.append(ws)
            joined.set()

        handler.on("connection", on_connection)
        sock = raw_connect(server.port, rcvbuf=4096)  # a small window: the server's writes fill it, then wait
        sock.sendall(upgrade_request("/feed", server.port))
        status, head, rest = read_http_response(sock)
        assert status == 101, head
        assert joined.wait(10)
        ws = connections[0]

        def message(tag: str, index: int) -> "str | bytes":
            text = f"{tag}{index:05d}".ljust(SIZE, ".")
            return text if kind == "text" else text.encode()

        def write() -> None:
            for index in range(ROUNDS):
                ws.send(message("s", index))  # blocks while the socket is full
                assert handler.broadcast(message("b", index)) == 1  # queued while it is

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        buffer = bytearray(rest)
        sock.settimeout(30)
        for index in range(ROUNDS):
            for tag in ("s", "b"):
                frame = read_server_frame(sock, buffer)
                expected = message(tag, index)
                assert frame.opcode == (0x1 if kind == "text" else 0x2) and frame.fin
                assert frame.payload == (expected.encode() if isinstance(expected, str) else expected), (tag, index, frame.payload[:12])
        writer.join(10)
        assert not writer.is_alive()
        stats = handler.stats()
        assert (stats["messages_out"], stats["bytes_out"]) == (2 * ROUNDS, 2 * ROUNDS * (SIZE + 4)), stats
        sock.close()
        errors.assert_clean()
