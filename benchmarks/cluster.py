"""Broadcast across processes through Redis: what the broker costs.

    python3 benchmarks/cluster.py [--redis redis://127.0.0.1:6379/0]

Without --redis it starts a redis-server of its own (the binary must be on
PATH; no persistence, data in a temp dir). Measures, on this machine:

1. the cost of one ``handler.broadcast`` call to 100 local clients (read by
   another process) without a broker, and with a Redis broker (the same, plus one PUBLISH round trip);
2. throughput: one Publisher sends 20,000 messages of 32 bytes to /chat,
   served by 3 processes with 2 clients each; time until every client has
   all of them;
3. latency from ``Publisher.broadcast`` to a client of another process, at
   2,000 messages/s (p50, p99).

Run it from the repo root with the repo's .venv (websockets, redis).
"""

from __future__ import annotations

import argparse
import os
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(port: int, broker: str) -> None:
    from ws_multipath import MultipathServer

    server = MultipathServer(port=port, host="127.0.0.1", broker=broker, reuse_port=True)
    server.create_handler("/chat")
    server.wait_cluster_ready(10)
    print("ready", flush=True)
    server.serve_forever()


def drain(port: int, clients: int) -> None:
    """Child process: `clients` raw WebSocket clients that read and discard."""
    import selectors

    sel = selectors.DefaultSelector()
    for _ in range(clients):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        sock.recv(4096)
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ)
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            try:
                if not key.fileobj.recv(1 << 20):
                    return
            except BlockingIOError:
                pass
            except OSError:
                return


def call_cost(broker: "str | None", clients: int = 100, calls: int = 2000) -> float:
    """Microseconds per broadcast() call to `clients` local clients (drained by another process)."""
    from ws_multipath import MultipathServer

    with MultipathServer(port=0, host="127.0.0.1", broker=broker) as server:
        chat = server.create_handler("/chat")
        server.wait_cluster_ready(10)
        child = subprocess.Popen([sys.executable, __file__, "--drain", str(server.port), str(clients)], stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        while len(chat.clients) < clients:
            time.sleep(0.01)
        for _ in range(200):
            chat.broadcast("x" * 32)
        started = time.perf_counter()
        for _ in range(calls):
            chat.broadcast("x" * 32)
        elapsed = time.perf_counter() - started
    child.wait(10)
    return elapsed / calls * 1e6


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis", default=None)
    parser.add_argument("--server", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--drain", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drain:
        drain(*args.drain)
        return 0
    if args.server:
        serve(int(args.server[0]), args.server[1])
        return 0
    from websockets.sync.client import connect

    from ws_multipath import Publisher

    redis_proc = None
    url = args.redis
    if url is None:
        binary = shutil.which("redis-server")
        if binary is None:
            print("redis-server not found: pass --redis URL", file=sys.stderr)
            return 2
        rport = free_port()
        redis_proc = subprocess.Popen([binary, "--port", str(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", tempfile.mkdtemp()], stdout=subprocess.DEVNULL)
        time.sleep(0.5)
        url = f"redis://127.0.0.1:{rport}/0"
    servers = []
    try:
        local = call_cost(None)
        remote = call_cost(url)
        print(f"broadcast() back to back, 100 local clients: {local:.0f} us per call without a broker, {remote:.0f} us with Redis")

        port = free_port()
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        for _ in range(3):
            servers.append(subprocess.Popen([sys.executable, __file__, "--server", str(port), url], stdout=subprocess.PIPE, text=True, env=env))
        for proc in servers:
            assert proc.stdout.readline().strip() == "ready"
        clients = [connect(f"ws://127.0.0.1:{port}/chat", max_size=None) for _ in range(6)]
        time.sleep(0.3)
        n = 20000
        done = []

        def reader(client, count: int, sink: list) -> None:
            for _ in range(count):
                sink.append(client.recv())
            done.append(time.perf_counter())

        sinks = [[] for _ in clients]
        threads = [threading.Thread(target=reader, args=(c, n, s)) for c, s in zip(clients, sinks)]
        for t in threads:
            t.start()
        publisher = Publisher(url)
        started = time.perf_counter()
        for i in range(n):
            publisher.broadcast("/chat", "%032d" % i)
        published = time.perf_counter() - started
        for t in threads:
            t.join(120)
        total = max(done) - started
        print(f"throughput: {n} messages x 6 clients on 3 processes in {total:.2f} s ({n / total:,.0f} msg/s per client, {6 * n / total:,.0f} deliveries/s; publishing alone {n / published:,.0f} msg/s)")

        latencies: list[float] = []
        lat_threads = []

        def lat_reader(client, count: int) -> None:
            for _ in range(count):
                sent = float(client.recv())
                latencies.append(time.time() - sent)

        m = 4000
        for c in clients:
            lat_threads.append(threading.Thread(target=lat_reader, args=(c, m)))
            lat_threads[-1].start()
        next_at = time.perf_counter()
        for _ in range(m):
            next_at += 1 / 2000
            while time.perf_counter() < next_at:
                pass
            publisher.broadcast("/chat", repr(time.time()))
        for t in lat_threads:
            t.join(60)
        latencies.sort()
        p50 = statistics.median(latencies) * 1e3
        p99 = latencies[int(len(latencies) * 0.99)] * 1e3
        print(f"latency Publisher -> client in another process at 2,000 msg/s: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
        for c in clients:
            c.close()
        publisher.close()
    finally:
        for proc in servers:
            proc.terminate()
            proc.wait(15)
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
