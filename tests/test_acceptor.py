"""The accept loop: what every accepted socket is set up with."""

from __future__ import annotations

import statistics
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
