"""reader.py: who reads a connection while its listeners are busy."""

from __future__ import annotations

import os
import select
import threading
import time

from .faultkit import (
    close_frame,
    collect_errors,
    encode_frame,
    make_server,
    raw_upgrade,
    read_server_frame,
)


def test_a_slow_message_listener_keeps_its_connection_alive():
    """Issue 8.6: while one 'message' listener runs long, pings are answered
    and pongs seen (the heartbeat does not drop the client), and the
    messages read meanwhile reach the listener afterwards, in order."""
    with collect_errors() as errors, make_server() as server:
        handler = server.create_handler("/slow", ping_interval=0.3, ping_timeout=2.5)
        release = threading.Event()
        got = []
        closes = []

        @handler.on("connection")
        def on_connection(ws, request):
            @ws.on("message")
            def on_message(data, is_binary):
                got.append(data)
                if data == "slow":
                    assert release.wait(30)  # the listener's own long work
                ws.send(data)

            ws.on("close", lambda code, reason: closes.append(code))

        sock, rest = raw_upgrade(server.port, "/slow")
        buffer = bytearray(rest)
        sock.sendall(b"".join(encode_frame(0x1, text.encode()) for text in ["slow", "a", "b", "c"]))
        # Sixteen heartbeat pings, each answered: several verdicts pass
        # while the listener works, and the server must have read our pongs.
        for _ in range(16):  # 4.8 s: past the first verdicts
            frame = read_server_frame(sock, buffer)
            assert frame.opcode == 0x9, f"expected a ping, got {frame}"
            sock.sendall(encode_frame(0xA, frame.payload))
        sock.sendall(encode_frame(0x9, b"are you there"))
        while (frame := read_server_frame(sock, buffer)).opcode == 0x9:
            sock.sendall(encode_frame(0xA, frame.payload))
        assert (frame.opcode, frame.payload) == (0xA, b"are you there")
        release.set()
        echoed = []
        while len(echoed) < 4:
            frame = read_server_frame(sock, buffer)
            if frame.opcode == 0x9:
                sock.sendall(encode_frame(0xA, frame.payload))
            else:
                echoed.append(frame.payload.decode())
        assert echoed == got == ["slow", "a", "b", "c"]
        sock.sendall(close_frame(1000))
        while (frame := read_server_frame(sock, buffer)).opcode != 0x8:
            pass
        assert frame.close_code == 1000
        sock.close()
        assert not closes or closes == [1000]
        errors.assert_clean()


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_control_frames_read_for_a_slow_listener_stay_bounded():
    """Found by the attack pass: once reading was handed over, every pong
    (or ping) event was queued for the busy listener thread, unbounded."""
    with collect_errors() as errors, make_server() as server:
        handler = server.create_handler("/slow", ping_interval=None, max_queue=4)
        busy = threading.Event()
        release = threading.Event()
        pongs = []

        @handler.on("connection")
        def on_connection(ws, request):
            @ws.on("message")
            def on_message(data, is_binary):
                busy.set()
                assert release.wait(30)

            ws.on("pong", pongs.append)

        sock, _ = raw_upgrade(server.port, "/slow")
        try:
            sock.sendall(encode_frame(0x1, b"slow"))
            assert busy.wait(10)
            pong = encode_frame(0xA, b"p" * 125)
            burst = pong * 512
            baseline = _rss()
            sent = 0
            deadline = time.monotonic() + 4  # the hand-over comes after 1-2 s
            sock.setblocking(False)
            while time.monotonic() < deadline and sent < 1_000_000:
                if not select.select([], [sock], [], 0.1)[1]:
                    continue
                try:
                    sent += sock.send(burst) // len(pong)
                except BlockingIOError:
                    continue
            grown = (_rss() - baseline) / 2**20
            print(f"pongs behind a slow listener: {sent} sent, RSS +{grown:.1f} MiB")
            assert grown < 32, f"RSS grew {grown:.0f} MiB for {sent} pongs"
            release.set()
        finally:
            release.set()
            sock.close()
        errors.assert_clean()
