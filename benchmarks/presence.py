"""Presence across processes through Redis: what it costs.

    python3 benchmarks/presence.py [--connections 10000] [--samples 200]

Starts a redis-server of its own (no persistence, data in a temp dir) and
3 server processes (``/rooms/<room>`` with ``presence=True``, each
connection's info ``{"name": "user-<i>"}``), opens ``--connections`` raw
WebSocket connections spread over them (100 rooms), and a server in this
process joins the cluster. Measures:

1. ``handler.presence()``, ``presence(room)`` and ``presence_count()`` in
   this process (its replica holds every entry of the 3 others);
2. Redis memory per entry (``used_memory`` before and after, and
   ``MEMORY USAGE`` of one process's hash divided by its entries);
3. join and leave propagation: from a client's connect returning (its
   server in another process) to the 'join' event here, and from its close
   to the 'leave' event here (p50, p99 of ``--samples``);
4. the message path: echo round trips on a handler with ``presence=True``
   against one without (one process, no broker).

Run it from the repo root with the repo's .venv (websockets, redis).
"""

from __future__ import annotations

import argparse
import os
import queue
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

UPGRADE = "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_server(port: int, broker):
    from ws_multipath import MultipathServer

    server = MultipathServer(port=port, host="127.0.0.1", broker=broker, backlog=4096)
    rooms = server.create_handler("/rooms/<room>", presence=True, ping_interval=None)
    rooms.on("connection", lambda ws, request: ws.set_presence({"name": (request.query.get("name") or ["?"])[0]}))
    return server, rooms


def serve(url: str) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
    server, _ = make_server(0, url)
    server.wait_cluster_ready(10)
    print(f"ready {server.port}", flush=True)
    server.serve_forever()


def open_raw(port: int, path: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(UPGRADE.format(path=path).encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise OSError("closed during the handshake")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise OSError(head[:40])
    return sock


def percentile(values: list, p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--server", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.server:
        serve(args.server)
        return 0
    import redis

    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
    directory = tempfile.mkdtemp()
    redis_port = free_port()
    redis_proc = subprocess.Popen([shutil.which("redis-server"), "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", directory],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{redis_port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([sys.executable, __file__, "--server", url], stdout=subprocess.PIPE, text=True, env=env) for _ in range(3)]
    socks: list = []
    server = None
    try:
        ports = [int(p.stdout.readline().split()[1]) for p in procs]
        memory_before = client.info("memory")["used_memory"]
        started = time.monotonic()
        for i in range(args.connections):
            socks.append(open_raw(ports[i % 3], f"/rooms/r{i % 100}?name=user-{i}"))
        print(f"{args.connections} connections opened in {time.monotonic() - started:.1f} s")
        from ws_multipath.cluster import RedisBroker

        broker = RedisBroker(url)
        server, rooms = make_server(0, broker)
        events: queue.Queue = queue.Queue()
        rooms.on("join", lambda entry: events.put(("join", entry.info.get("name"), time.monotonic())))
        rooms.on("leave", lambda entry: events.put(("leave", entry.info.get("name"), time.monotonic())))
        server.wait_cluster_ready(10)
        deadline = time.monotonic() + 120
        while rooms.presence_count() < args.connections:
            assert time.monotonic() < deadline, rooms.presence_count()
            time.sleep(0.1)
        print(f"the replica here holds {rooms.presence_count()} entries after {time.monotonic() - started:.1f} s")
        while not events.empty():
            events.get()
        memory_after = client.info("memory")["used_memory"]
        node = client.smembers("ws_multipath:@presence:nodes").pop()
        key = b"ws_multipath:@presence:" + node
        usage = client.memory_usage(key)
        entries = client.hlen(key) - 1
        print(f"Redis memory per entry: {(memory_after - memory_before) / args.connections:.0f} B (used_memory), "
              f"{usage / entries:.0f} B (MEMORY USAGE of a hash of {entries} entries)")
        for name, call in (("presence()", lambda: rooms.presence()), ("presence('/rooms/r7')", lambda: rooms.presence("/rooms/r7")), ("presence_count()", lambda: rooms.presence_count())):
            times = []
            for _ in range(50):
                t0 = time.perf_counter()
                call()
                times.append(time.perf_counter() - t0)
            print(f"{name}: p50 {percentile(times, 0.5) * 1e3:.3f} ms, p99 {percentile(times, 0.99) * 1e3:.3f} ms")
        joins, leaves = [], []
        for i in range(args.samples):
            name = f"probe-{i}"
            t0 = time.monotonic()
            sock = open_raw(ports[i % 3], f"/rooms/probe?name={name}")
            t1 = time.monotonic()
            event = events.get(timeout=10)
            assert event[:2] == ("join", name), event
            joins.append(event[2] - t1)
            t2 = time.monotonic()
            sock.close()
            event = events.get(timeout=10)
            assert event[:2] == ("leave", name), event
            leaves.append(event[2] - t2)
        print(f"join propagation (connect returned -> 'join' in another process): p50 {percentile(joins, 0.5) * 1e3:.1f} ms, p99 {percentile(joins, 0.99) * 1e3:.1f} ms")
        print(f"leave propagation (close -> 'leave' in another process): p50 {percentile(leaves, 0.5) * 1e3:.1f} ms, p99 {percentile(leaves, 0.99) * 1e3:.1f} ms")
    finally:
        for sock in socks:
            sock.close()
        if server is not None:
            server.close()
        for proc in procs:
            proc.terminate()
        for proc in procs:  # 3,300 connection threads each ending at once on two cores: give them time
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                print(f"server {proc.pid} still closing after 120 s: killed")
                proc.kill()
                proc.wait(10)
        client.close()
        redis_proc.terminate()
        redis_proc.wait(10)
    message_path()
    return 0


def message_path(rounds: int = 3000) -> None:
    from websockets.sync.client import connect

    from ws_multipath import MultipathServer

    with MultipathServer(port=0, host="127.0.0.1") as server:
        for path, presence in (("/with", True), ("/without", False)):
            handler = server.create_handler(path, presence=presence)
            handler.on("connection", lambda ws, request: ws.on("message", lambda data, is_binary, ws=ws: ws.send(data)))
        for path in ("/without", "/with", "/without", "/with"):
            with connect(f"ws://127.0.0.1:{server.port}{path}") as ws:
                t0 = time.perf_counter()
                for _ in range(rounds):
                    ws.send("x" * 32)
                    ws.recv()
                elapsed = time.perf_counter() - t0
            print(f"echo round trip on {path} presence: {elapsed / rounds * 1e6:.0f} us")


if __name__ == "__main__":
    sys.exit(main())
