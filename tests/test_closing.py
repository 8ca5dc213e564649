"""closing.py: the close state machine without sockets (every order of
events up to a length), then on the wire: one close frame, nothing after it,
and memory bounded while the server waits for a client that will not close."""

from __future__ import annotations

import itertools
import os
import threading
import time

import pytest

from ws_multipath import ConnectionClosed
from ws_multipath.protocol.closing import Closing, FrameKind, Initiator, ReadyState

from .faultkit import (
    close_frame,
    collect_errors,
    encode_frame,
    make_server,
    parse_server_frames,
    raw_upgrade,
    read_server_frame,
    read_until_eof,
    readable,
    wait_until,
)

# -- the state machine, exhaustively -----------------------------------------

EVENTS = {
    "start": lambda c: c.start(4000, "server"),
    "received": lambda c: c.received(4001, "client"),
    "received_1005": lambda c: c.received(1005, ""),
    "failed": lambda c: c.failed(1002, "violation"),
    "fatal": lambda c: c.fatal(1011, "timeout"),
    "terminated": lambda c: c.terminated(),
    "write_data": lambda c: c.may_write(FrameKind.DATA),
    "write_ping": lambda c: c.may_write(FrameKind.PING),
    "write_close": lambda c: c.may_write(FrameKind.CLOSE),
}
FIRST_CODE = {"start": 4000, "received": 4001, "received_1005": 1005, "fatal": 1011}


def run(sequence: tuple) -> tuple[Closing, list]:
    closing = Closing()
    results = [(name, EVENTS[name](closing)) for name in sequence]
    return closing, results


@pytest.mark.parametrize("length", [1, 2, 3, 4, 5])
def test_every_order_of_events_keeps_the_closing_rules(length):
    order = {ReadyState.OPEN: 0, ReadyState.CLOSING: 1, ReadyState.CLOSED: 2}
    for sequence in itertools.product(sorted(EVENTS), repeat=length):
        closing = Closing()
        close_frames = 0
        after_close = []
        states = [closing.state]
        for name in sequence:
            result = EVENTS[name](closing)
            states.append(closing.state)
            if name.startswith("write_") and result:
                if close_frames:
                    after_close.append(name)
                close_frames += name == "write_close"
            if name == "start" and result:
                assert closing.initiator is Initiator.SERVER and not closing.delivers_messages
        assert close_frames <= 1, sequence
        assert not after_close, (sequence, after_close)  # nothing follows a close frame
        assert [order[s] for s in states] == sorted(order[s] for s in states), sequence  # never reopens
        lost = closing.ended()
        assert closing.state is ReadyState.CLOSED
        expected = _expected_code(sequence)
        assert closing.code == (1006 if expected is None else expected), (sequence, closing.code)
        assert lost == (expected is None), sequence


def _expected_code(sequence: tuple):
    """The first code decided (a violation's wins, unless a close frame with
    a decided code went out already: the code is the one on the wire); None:
    none was."""
    expected = None
    is_open = True
    close_written = False
    for name in sequence:
        if name == "write_close":
            close_written = True
        if name == "failed":
            if not (close_written and expected is not None):
                expected = 1002
        elif name in FIRST_CODE and expected is None and (name != "start" or is_open):
            expected = FIRST_CODE[name]
        if name in ("start", "received", "received_1005", "failed", "fatal", "terminated"):
            is_open = False
    return expected


def test_a_server_close_then_the_echo_sends_one_close_frame_and_lingers():
    closing = Closing()
    assert closing.start(1001, "going away") and not closing.start(1000, "again")
    assert closing.may_write(FrameKind.DATA)  # queued before the close frame: still goes out
    assert closing.may_write(FrameKind.CLOSE)
    assert closing.reads_frames  # waiting for the client's close frame
    assert closing.received(1001, "") == 1001
    assert not closing.may_write(FrameKind.CLOSE)  # the echo is dropped: ours went first
    assert not closing.reads_frames
    assert not closing.ended() and (closing.code, closing.initiator) == (1001, Initiator.SERVER)


def test_a_client_close_is_echoed_and_an_empty_one_gets_an_empty_echo():
    closing = Closing()
    assert closing.received(1005, "") is None and closing.code == 1005
    assert closing.initiator is Initiator.CLIENT and not closing.delivers_messages
    closing = Closing()
    assert closing.received(3000, "bye") == 3000


# -- on the wire ---------------------------------------------------------------


def test_nothing_follows_the_close_frame_under_concurrent_senders():
    """send, ping, broadcast and close from several threads while the client
    closes too: every connection gets exactly one close frame, last."""
    connections = 12
    with collect_errors() as errors, make_server() as server:
        handler = server.create_handler("/storm", ping_interval=None, close_timeout=5)
        opened = []
        opened_lock = threading.Condition()

        @handler.on("connection")
        def on_connection(ws, request):
            with opened_lock:
                opened.append(ws)
                opened_lock.notify_all()

        for index in range(connections):
            sock, rest = raw_upgrade(server.port, "/storm")
            with opened_lock:
                assert opened_lock.wait_for(lambda: len(opened) == index + 1, 5)
            ws = opened[-1]
            sent = threading.Semaphore(0)

            def hammer(kind: str) -> None:
                for _ in range(2000):
                    try:
                        if kind == "send":
                            ws.send("s" * 10)
                        elif kind == "ping":
                            ws.ping(b"p")
                        else:
                            handler.broadcast(b"b" * 10)
                    except ConnectionClosed:
                        return
                    sent.release()

            threads = [threading.Thread(target=hammer, args=(kind,)) for kind in ("send", "send", "ping", "broadcast")]
            for thread in threads:
                thread.start()
            for _ in range(50 + index * 20):  # close at a different point each time
                assert sent.acquire(timeout=5)
            closer = threading.Thread(target=ws.close, args=(4000 + index, "storm"))
            closer.start()
            if index % 2:  # the client closes too, at about the same time
                sock.sendall(close_frame(1000))
                data, how = read_until_eof(sock, 10)
            else:  # the client answers the server's close frame
                data = _read_until_close_frame(sock, rest)
                rest = b""
                sock.sendall(close_frame(1000))
                more, how = read_until_eof(sock, 10)
                data += more
            sock.close()
            closer.join(5)
            for thread in threads:
                thread.join(10)
                assert not thread.is_alive()
            frames, tail = parse_server_frames(rest + data)
            assert how == "eof", how
            assert tail == b"", (index, tail[:20])
            kinds = [frame.opcode for frame in frames]
            assert kinds.count(0x8) == 1, (index, kinds[-5:])
            assert kinds[-1] == 0x8, (index, kinds[-5:])
        errors.assert_clean()


def _read_until_close_frame(sock, data: bytes) -> bytes:
    buffer = bytearray(data)
    while True:
        frames, _ = parse_server_frames(bytes(buffer))
        if any(frame.opcode == 0x8 for frame in frames):
            return bytes(buffer)
        chunk = sock.recv(65536)
        assert chunk, "EOF before the server's close frame"
        buffer += chunk


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.timeout(60)
def test_a_client_that_ignores_our_close_cannot_make_the_server_buffer():
    """Issue 8.1: after ws.close(), a client that keeps sending 1 MiB
    frames is read and discarded; what was queued before stays receivable."""
    max_payload = 1 << 20
    with collect_errors() as errors, make_server() as server:
        handler = server.create_handler("/flood", max_queue=2, max_payload=max_payload, close_timeout=3, ping_interval=None)
        ready = threading.Event()
        connections = []

        @handler.on("connection")
        def on_connection(ws, request):
            connections.append(ws)
            ready.set()

        sock, _ = raw_upgrade(server.port, "/flood")
        assert ready.wait(5)
        ws = connections[0]
        sock.sendall(encode_frame(0x1, b"first") + encode_frame(0x1, b"second") + encode_frame(0x9, b"sync"))
        buffer = bytearray()
        assert read_server_frame(sock, buffer).opcode == 0xA  # the pong: both messages are queued
        ws.close(1000, "bye")
        assert read_server_frame(sock, buffer).opcode == 0x8

        frame = encode_frame(0x2, os.urandom(max_payload))
        baseline = _rss()
        peak = baseline
        sent = 0
        deadline = time.monotonic() + 2.5
        sock.settimeout(5)
        try:
            while time.monotonic() < deadline and sent < 5000:
                sock.sendall(frame)
                sent += 1
                if sent % 16 == 0:
                    peak = max(peak, _rss())
        except OSError:
            pass  # dropped at close_timeout: fine
        peak = max(peak, _rss())
        sock.close()
        assert sent >= 50, f"the server stopped reading after {sent} frames"
        grown = (peak - baseline) / 2**20
        print(f"flood after our close: {sent} MiB sent, RSS +{grown:.1f} MiB")
        assert grown < 48, f"RSS grew {grown:.0f} MiB while {sent} MiB were sent after the close"
        assert ws.receive(timeout=5) == "first" and ws.receive(timeout=5) == "second"
        with pytest.raises(ConnectionClosed):
            ws.receive(timeout=10)
        errors.assert_clean()


class SlowListenerConnection:
    """One connection whose ``'message'`` listener blocks until ``release``,
    with a ``'ping'`` listener that counts its calls, and its ``'close'``."""

    def __init__(self, server, max_queue: int, close_timeout: float) -> None:
        self.handler = server.create_handler("/slow", max_queue=max_queue, close_timeout=close_timeout, ping_interval=None)
        self.release = threading.Event()
        self.busy = threading.Event()
        self.closed = threading.Event()
        self.opened = threading.Event()
        self.lock = threading.Lock()
        self.pings = 0
        self.ws = None
        self.handler.on("connection", self._on_connection)

    def _on_connection(self, ws, request):
        self.ws = ws
        ws.on("message", self._slow)
        ws.on("ping", self._ping)
        ws.on("close", lambda code, reason: self.closed.set())
        self.opened.set()

    def _slow(self, data, is_binary):
        self.busy.set()
        self.release.wait(30)

    def _ping(self, payload):
        with self.lock:
            self.pings += 1

    def ping_calls(self) -> int:
        with self.lock:
            return self.pings


def _flood_pings(sock, until: float) -> str:
    """Send pings and read (and drop) what comes, until the server ends the
    connection or ``until`` passes; returns how it ended."""
    burst = encode_frame(0x9, b"p") * 2000
    sock.setblocking(False)
    while time.monotonic() < until:
        try:
            sock.send(burst)
        except BlockingIOError:
            pass
        except OSError:
            return "reset"
        try:
            while True:
                if not sock.recv(65536):
                    return "eof"
        except BlockingIOError:
            readable([sock], 0.001)
        except OSError:
            return "reset"
    return "timeout"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("takeover", ["before-close", "after-close"])
def test_a_ping_flood_after_our_close_queues_no_more_than_max_queue_listener_calls(takeover):
    """Issue 18.3: a slow ``'message'`` listener (its reading was handed to a
    second thread), a ``'ping'`` listener, ``ws.close()``, and a client that
    ignores the close frame and floods pings. Before: every ping queued a
    listener call once closing (236,000-405,000 within 4 s with
    ``max_queue=4``), all run once the listener returned; "after-close"
    (the takeover after ``close()``): its queue was never sealed, the reader
    waited behind it and the client's close frame went unread."""
    # after-close: the takeover comes at the second busy check (2 x TAKEOVER_AFTER), before close_timeout
    max_queue, close_timeout = 4, 1.5 if takeover == "before-close" else 5.0
    with collect_errors() as errors, make_server() as server:
        conn = SlowListenerConnection(server, max_queue, close_timeout)
        sock, rest = raw_upgrade(server.port, "/slow")
        try:
            assert conn.opened.wait(5)
            sock.sendall(encode_frame(0x2, b"busy"))
            assert conn.busy.wait(5)
            buffer = bytearray(rest)
            if takeover == "before-close":
                sock.sendall(encode_frame(0x9, b"sync"))  # data waits: a second thread takes over reading
                assert read_server_frame(sock, buffer).opcode == 0xA  # ... and answers it
                assert conn.ping_calls() == 0  # its listener call waits behind the slow one
                closed_at = time.monotonic()
                conn.ws.close(1000, "bye")
                assert read_server_frame(sock, buffer).opcode == 0x8
                how = _flood_pings(sock, closed_at + close_timeout + 5)
                ended = time.monotonic() - closed_at
                print(f"ping flood after close ({takeover}): connection ended ({how}) {ended:.2f} s after close()")
                assert how in ("eof", "reset"), how
                assert ended < close_timeout + 1.5, ended  # dropped by close_timeout, not later
            else:
                closed_at = time.monotonic()
                conn.ws.close(1000, "bye")  # while the listener holds the only reading thread
                assert read_server_frame(sock, buffer).opcode == 0x8
                sock.sendall(encode_frame(0x9, b"p") * 1000 + close_frame(1000))  # then a takeover reads these
                sock.settimeout(10)
                data, how = read_until_eof(sock, close_timeout + 5)
                ended = time.monotonic() - closed_at
                print(f"pings then a close frame ({takeover}): connection ended ({how}) {ended:.2f} s after close()")
                assert how == "eof", how
                assert ended < close_timeout - 1, ended  # the close frame was read: no close_timeout
            # The reader has ended (the connection left handler.clients); the 'close' event waits
            # behind the slow listener with the calls queued.
            assert wait_until(lambda: not conn.handler.clients, 10)
            assert not conn.closed.is_set()
            before = conn.ping_calls()
            conn.release.set()
            assert conn.closed.wait(10)
            queued = conn.ping_calls() - before
            print(f"'ping' listener calls queued behind the slow listener: {queued} (max_queue={max_queue})")
            assert queued <= max_queue + 1, queued
        finally:
            conn.release.set()
            sock.close()
        errors.assert_clean()
