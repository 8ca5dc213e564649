"""Issue 10: server.stats() / handler.stats() and the operator's log lines
(accepted, closed, refused, listener errors), over real sockets."""

from __future__ import annotations

import json
import logging
import threading

from tests.conftest import wait_until
from tests.faultkit import (
    close_frame,
    encode_frame,
    parse_server_frames,
    raw_connect,
    raw_upgrade,
    read_http_response,
    read_until_eof,
    upgrade_request,
)
from ws_multipath.log import JSONFormatter
from ws_multipath.sync import transport as transport_module

TIMEOUT = 10.0


def echo(ws, request):
    ws.on("message", lambda data, is_binary: ws.send(data))


def closed_codes(handler):
    codes: list[int] = []
    done = threading.Event()

    @handler.on("connection")
    def track(ws, request):
        ws.on("close", lambda code, reason: (codes.append(code), done.set()))

    return codes, done


def _read_frames(sock, count):
    buffer = b""
    frames = []
    while len(frames) < count:
        chunk = sock.recv(65536)
        assert chunk, "EOF before the echoes"
        buffer += chunk
        got, buffer = parse_server_frames(buffer)
        frames.extend(got)
    return frames


def test_counters_match_n_messages_of_known_sizes(make_server):
    server = make_server()
    handler = server.create_handler("/echo", ping_interval=None)
    handler.on("connection", echo)
    sizes = [0, 1, 125, 126, 1000, 70000]
    sock, rest = raw_upgrade(server.port, "/echo")
    assert rest == b""
    wire_in = 0
    with sock:
        for size in sizes:
            frame = encode_frame(0x2, b"x" * size)
            wire_in += len(frame)
            sock.sendall(frame)
        frames = _read_frames(sock, len(sizes))
        assert [len(f.payload) for f in frames] == sizes
        wire_out = sum(len(b"x" * s) + (2 if s < 126 else 4 if s < 65536 else 10) for s in sizes)
        # the writer adds its bytes once send() returned, which may be after the client read them
        assert wait_until(lambda: handler.stats()["bytes_out"] == wire_out), handler.stats()  # the 101 is not counted
        live = handler.stats()
        assert live["open"] == 1 and live["accepted"] == 1 and live["messages_out"] == len(sizes)
        assert live["messages_in"] == len(sizes) and live["bytes_in"] == wire_in
        bye = close_frame(1000, b"bye")
        sock.sendall(bye)
        read_until_eof(sock, TIMEOUT)
    assert wait_until(lambda: handler.stats()["open"] == 0)
    stats = handler.stats()
    assert stats["closes"] == {1000: 1} and stats["drops"] == {}
    assert stats["messages_in"] == len(sizes) and stats["bytes_in"] == wire_in + len(bye)
    assert stats["bytes_out"] == wire_out + 2 + 5  # and the echoed close frame
    total = server.stats()
    assert total["paths"]["/echo"] == stats
    assert total["messages_in"] == len(sizes) and total["accepted"] == 1 and total["open"] == 0
    json.dumps(total)  # plain data


def test_broadcasts_count_as_messages_out(make_server):
    server = make_server()
    handler = server.create_handler("/feed", ping_interval=None)
    sockets = [raw_upgrade(server.port, "/feed")[0] for _ in range(3)]
    try:
        assert wait_until(lambda: handler.stats()["open"] == 3)
        for _ in range(5):
            assert handler.broadcast(b"abcd") == 3
        for sock in sockets:
            _read_frames(sock, 5)
        assert wait_until(lambda: handler.stats()["bytes_out"] == 15 * 6), handler.stats()
        assert handler.stats()["messages_out"] == 15
    finally:
        for sock in sockets:
            sock.close()
    assert wait_until(lambda: handler.stats()["open"] == 0)
    assert handler.stats()["closes"] == {1006: 3}


def test_refusals_are_counted_by_status_and_reason(make_server, library_log):
    server = make_server()
    server.create_handler("/origin", allowed_origins=["https://good.example"])
    server.create_handler("/verify", verify_client=lambda request: (False, 401))
    for path, headers in (("/origin", (("Origin", "https://evil.example"),)), ("/verify", ()), ("/nowhere", ())):
        with raw_connect(server.port) as sock:
            sock.sendall(upgrade_request(path, server.port, headers=headers))
            read_http_response(sock)
    with raw_connect(server.port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_http_response(sock)[0] == 426
    stats = server.stats()
    assert stats["paths"]["/origin"]["refused"] == {403: {"origin": 1}}
    assert stats["paths"]["/verify"]["refused"] == {401: {"verify_client": 1}}
    assert stats["refused"] == {403: {"origin": 1}, 401: {"verify_client": 1}, 400: {"no_handler": 1}, 426: {"not_websocket": 1}}
    refusals = [r for r in library_log.records if getattr(r, "event", None) == "refused"]
    assert {(r.status, r.reason) for r in refusals} == {(403, "origin"), (401, "verify_client"), (400, "no_handler"), (426, "not_websocket")}
    assert all(r.levelno == logging.INFO and r.client.startswith("127.0.0.1:") for r in refusals)


def test_a_message_too_big_counts_as_1009(make_server):
    server = make_server()
    handler = server.create_handler("/small", max_payload=100, ping_interval=None)
    sock, _ = raw_upgrade(server.port, "/small")
    with sock:
        sock.sendall(encode_frame(0x2, b"x" * 101))
        read_until_eof(sock, TIMEOUT)
    assert wait_until(lambda: handler.stats()["closes"] == {1009: 1})
    assert handler.stats()["messages_in"] == 0


def test_a_slow_consumer_counts_as_1008_and_a_drop(make_server, monkeypatch):
    monkeypatch.setattr(transport_module, "MAX_OUTBOX_BYTES", 256 * 1024)
    server = make_server()
    handler = server.create_handler("/feed", ping_interval=None, close_timeout=1)
    sock = raw_connect(server.port, rcvbuf=4096)
    with sock:
        sock.sendall(upgrade_request("/feed", server.port))
        assert read_http_response(sock)[0] == 101
        assert wait_until(lambda: handler.stats()["open"] == 1)
        chunk = b"x" * 65536
        for _ in range(2000):
            if not handler.broadcast(chunk):
                break
        assert wait_until(lambda: handler.stats()["open"] == 0)
    stats = handler.stats()
    assert stats["closes"] == {1008: 1} and stats["drops"] == {"slow_consumer": 1}


def test_accept_and_close_are_logged_at_info_with_their_numbers(make_server, library_log):
    server = make_server()
    handler = server.create_handler("/echo", ping_interval=None)
    handler.on("connection", echo)
    sock, _ = raw_upgrade(server.port, "/echo")
    port = sock.getsockname()[1]
    with sock:
        sock.sendall(encode_frame(0x1, b"hello"))
        _read_frames(sock, 1)
        sock.sendall(close_frame(1000, b"done"))
        read_until_eof(sock, TIMEOUT)
    assert wait_until(lambda: any(getattr(r, "event", None) == "closed" for r in library_log.records))
    accepted = [r for r in library_log.records if getattr(r, "event", None) == "accepted"]
    closed = [r for r in library_log.records if getattr(r, "event", None) == "closed"]
    assert len(accepted) == 1 and len(closed) == 1
    a, c = accepted[0], closed[0]
    assert a.levelno == c.levelno == logging.INFO
    assert a.getMessage() == f"accepted 127.0.0.1:{port} on /echo (subprotocol -, extensions -)"
    assert (c.code, c.reason, c.messages_in, c.messages_out, c.path) == (1000, "done", 1, 1, "/echo")
    assert c.duration >= 0
    assert c.getMessage().startswith(f"closed 127.0.0.1:{port} on /echo: 1000 'done' after ")
    assert "1 messages in (" in c.getMessage()
    line = json.loads(JSONFormatter().format(c))
    assert line["event"] == "closed" and line["code"] == 1000 and line["level"] == "INFO" and line["message"] == c.getMessage()


def test_accept_log_names_client_via_proxy_subprotocol_and_extensions(make_server, library_log):
    server = make_server(trusted_proxies=["127.0.0.1"])
    server.create_handler("/chat", ping_interval=None, per_message_deflate=True)
    headers = (("X-Forwarded-For", "203.0.113.7"), ("Sec-WebSocket-Protocol", "chat.v1"), ("Sec-WebSocket-Extensions", "permessage-deflate"))
    with raw_connect(server.port) as sock:
        sock.sendall(upgrade_request("/chat", server.port, headers=headers))
        assert read_http_response(sock)[0] == 101
        assert wait_until(lambda: any(getattr(r, "event", None) == "accepted" for r in library_log.records))
    record = next(r for r in library_log.records if getattr(r, "event", None) == "accepted")
    message = record.getMessage()
    assert message.startswith("accepted 203.0.113.7:0 via 127.0.0.1:") and " on /chat (subprotocol chat.v1, extensions permessage-deflate" in message
    assert record.client == "203.0.113.7:0" and record.peer.startswith("127.0.0.1:")


def test_a_listener_error_names_the_event_and_the_connection(make_server, library_log):
    server = make_server()
    handler = server.create_handler("/boom", ping_interval=None)

    @handler.on("connection")
    def arm(ws, request):
        @ws.on("message")
        def fail(data, is_binary):
            raise RuntimeError("listener bug")

    sock, _ = raw_upgrade(server.port, "/boom")
    port = sock.getsockname()[1]
    with sock:
        sock.sendall(encode_frame(0x1, b"x"))
        assert wait_until(lambda: library_log.errors())
        record = library_log.errors()[0]
        # formatted while the connection is still open: the record holds the
        # connection itself, whose repr says CLOSED once the socket is gone
        message = record.getMessage()
    assert message == f"a 'message' listener of <WebSocket /boom 127.0.0.1:{port} OPEN> raised and no 'error' listener was set"
    assert record.exc_info[1].args == ("listener bug",)
    library_log.records.clear()


def test_the_demo_logs_json_lines_with_verbose(tmp_path):
    import subprocess
    import sys

    from websockets.sync.client import connect

    process = subprocess.Popen(
        [sys.executable, "-m", "ws_multipath", "--port", "0", "--verbose", "--log-format", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        echo_url = process.stdout.readline().strip().replace("localhost", "127.0.0.1")
        with connect(echo_url, open_timeout=TIMEOUT, proxy=None) as client:
            client.send("hi")
            assert client.recv(timeout=TIMEOUT) == "hi"
        process.terminate()
        assert process.wait(TIMEOUT) == 0
        lines = [json.loads(line) for line in process.stderr.read().splitlines()]
    finally:
        if process.poll() is None:
            process.kill()
        process.stdout.close()
        process.stderr.close()
    events = [line.get("event") for line in lines]
    assert "accepted" in events and "closed" in events
    closed = next(line for line in lines if line.get("event") == "closed")
    assert closed["code"] == 1000 and closed["messages_in"] == 1 and closed["messages_out"] == 1 and closed["path"] == "/echo"
