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
   2,000 messages/s (p50, p99);
4. fan-out (``--fanout``): broadcast deliveries/s to 1 x 1,000 clients on one
   process against 3 x 1,000 on three, one ``Publisher`` sending;
5. connections held (``--hold``) by 1 worker against 2 on one port, each
   worker limited to the same number of file descriptors.

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

    server = MultipathServer(port=port, host="127.0.0.1", broker=None if broker == "none" else broker, reuse_port=True, backlog=4096)
    server.create_handler("/chat", ping_interval=None)
    if broker != "none":
        server.wait_cluster_ready(10)
    print("ready", flush=True)
    server.serve_forever()


def count(port: int, clients: int, expected: int) -> None:
    """Child process: `clients` raw clients that read until each has
    `expected` bytes, then print the time it took from the first byte."""
    import selectors

    sel = selectors.DefaultSelector()
    received: dict[int, int] = {}
    for _ in range(clients):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        received[sock.fileno()] = len(head.partition(b"\r\n\r\n")[2])
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ)
    print("ready", flush=True)
    first = None
    unfinished = clients
    while unfinished:
        for key, _ in sel.select(30):
            try:
                data = key.fileobj.recv(1 << 20)
            except BlockingIOError:
                continue
            if first is None:
                first = time.perf_counter()
            fd = key.fileobj.fileno()
            before = received[fd]
            received[fd] = before + len(data)
            if before < expected <= received[fd]:
                unfinished -= 1
            if not data:
                print("lost", flush=True)
                return
    print(f"{time.perf_counter() - first:.6f}", flush=True)


def fanout(url: str, processes: int, per_process: int = 1000, messages: int = 200) -> float:
    """Deliveries per second: `messages` 32-byte broadcasts from a Publisher
    to `per_process` clients on each of `processes` servers."""
    from ws_multipath import Publisher

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    servers, counters = [], []
    try:
        for _ in range(processes):
            port = free_port()
            servers.append(subprocess.Popen([sys.executable, __file__, "--server", str(port), url], stdout=subprocess.PIPE, text=True, env=env))
            assert servers[-1].stdout.readline().strip() == "ready"
            frame = 2 + 32
            counters.append(subprocess.Popen([sys.executable, __file__, "--count", str(port), str(per_process), str(frame * messages)], stdout=subprocess.PIPE, text=True))
        for counter in counters:
            assert counter.stdout.readline().strip() == "ready"
        time.sleep(0.5)  # the last upgrades are registered
        publisher = Publisher(url)
        started = time.perf_counter()
        for i in range(messages):
            publisher.broadcast("/chat", "%032d" % i)
        results = [counter.stdout.readline().strip() for counter in counters]
        elapsed = time.perf_counter() - started
        publisher.close()
        assert all(r and r != "lost" for r in results), results
        return processes * per_process * messages / elapsed
    finally:
        for proc in counters + servers:
            proc.terminate()
            proc.wait(15)


def hold(workers: int, fd_limit: int = 1024) -> int:
    """Connections held on one port by `workers` processes (SO_REUSEPORT),
    each with `fd_limit` descriptors, before new ones are refused."""
    import resource

    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    limit = lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))  # noqa: E731
    servers = [subprocess.Popen([sys.executable, __file__, "--server", str(port), "none"], stdout=subprocess.PIPE, text=True, env=env, preexec_fn=limit) for _ in range(workers)]
    socks = []
    try:
        for proc in servers:
            assert proc.stdout.readline().strip() == "ready"
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the client side holds them all
        failures = 0  # in a row: with SO_REUSEPORT a full worker still gets its share of new connections
        while failures < 10 and len(socks) < workers * fd_limit * 2:
            sock = socket.create_connection(("127.0.0.1", port), timeout=1)
            try:
                sock.sendall(b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
                ok = sock.recv(12) == b"HTTP/1.1 101"
            except OSError:
                ok = False
            if ok:
                socks.append(sock)
                failures = 0
            else:
                failures += 1
                sock.close()
        return len(socks)
    finally:
        for sock in socks:
            sock.close()
        for proc in servers:
            proc.terminate()
            proc.wait(15)


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
    parser.add_argument("--count", nargs=3, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--fanout", action="store_true", help="only the fan-out comparison (1 x 1,000 against 3 x 1,000 clients)")
    parser.add_argument("--hold", action="store_true", help="only the connections held by 1 worker against 2")
    args = parser.parse_args()
    if args.drain:
        drain(*args.drain)
        return 0
    if args.count:
        count(*args.count)
        return 0
    if args.hold:
        one, two = hold(1), hold(2)
        print(f"connections held with 1,024 descriptors per worker: 1 worker {one}, 2 workers {two} ({two / one:.2f}x)")
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
        if args.fanout:
            for processes in (1, 3, 1, 3):
                print(f"fan-out: {processes} x 1,000 clients: {fanout(url, processes):,.0f} deliveries/s", flush=True)
            return 0
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
