"""The servers that benchmarks/run.py measures, one process per run.

    python benchmarks/servers.py --impl ws_multipath|websockets|raw_tcp|werkzeug
                                 --mode echo|iter|broadcast|burst|stream|http
                                 [--ping-interval S] [--ping-timeout S] [--compression] [--wsgi] [--control]

(Node's ``ws`` server is benchmarks/node_server.js; gunicorn runs
benchmarks/flask_app.py itself.)

Prints ``PORT <n> <path of the library's module>`` once it listens on 127.0.0.1, then serves until killed.
Compression is off on both; each library's keepalive is on with the given
interval (20 s, both libraries' default, unless told otherwise).

Modes:
- ``echo``: every message is sent back. ws_multipath: a ``'message'``
  listener (its documented style); websockets: ``for message in ws: ws.send(message)``.
- ``iter``: ``for message in ws: ws.send(message)`` inside ws_multipath's
  ``'connection'`` listener (the blocking style); websockets: as ``echo``
  (it has only that style).
- ``broadcast``: every message is sent to every client of the path.
  ws_multipath: ``handler.broadcast``; websockets: ``websockets.sync.server.broadcast``.
- ``burst`` (server push): a request ``"N SIZE"`` is answered with N text
  messages of SIZE bytes, sent back to back by the thread that read it
  (ws_multipath: its ``'message'`` listener).
- ``stream`` (server push): after a request ``"stream SIZE"`` the handler
  sends SIZE-byte text messages in a loop until the connection closes.
- ``http`` (werkzeug, ws_multipath): the tiny Flask app of ``flask_app.py``
  (ws_multipath: ``wsgi_app=``, with an echo handler on ``/ws``).
- ``--compression``: permessage-deflate on, each library's defaults
  (ws_multipath ``per_message_deflate=True``, websockets ``compression="deflate"``);
  ``--deflate-threshold N`` (ws_multipath): its ``threshold`` instead of 1024.
- ``--wsgi`` (ws_multipath): mount the Flask app beside the WebSocket handler.
- ``raw_tcp``: a threaded TCP echo with no framing at all (one thread per
  connection, ``recv``/``sendall``, TCP_NODELAY): the ceiling.
- ``--control`` (ws_multipath, websockets; the idle scenario): lines on stdin
  ask; answers are JSON lines on stdout. ``capacity``: ws_multipath's
  ``server.capacity()`` (the connection ceiling and what binds it; websockets:
  the descriptor limit only). ``close``: close the server, every connection
  with 1001 (``server.close()``; websockets: ``server.shutdown()``), and say how
  long that took, how long until every connection had ended (ws_multipath's
  ``close()`` returns at its deadline even if some have not), the CPU time it
  used, and how many were open.

``servers:cluster_echo`` is the factory that ``python -m ws_multipath serve
servers:cluster_echo --workers N`` calls in each worker (benchmarks/idle_cluster.py;
benchmarks/ on its ``PYTHONPATH``): the ``echo`` mode on ``/``, with the
heartbeat interval from ``BENCH_PING_INTERVAL`` (20 s unless set).

Memory investigations: with ``BENCH_TRACEMALLOC=<dir>`` in its environment
the server runs under ``tracemalloc`` (``BENCH_TRACEMALLOC_FRAMES`` frames
per trace, 16 by default) and writes a snapshot to
``<dir>/snapshot-<pid>-<n>.pickle`` on each SIGUSR1 and, with
``BENCH_TRACEMALLOC_EVERY=<seconds>``, periodically too
(``tracemalloc.Snapshot.load`` reads them; compare two with
``compare_to``). It slows the server down: never for measured runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import socket
import socketserver
import sys
import threading
import time
from typing import Any, Callable, Optional

MAX_SIZE = 16 * 1024 * 1024  # ws_multipath's default max_payload; websockets' default (1 MiB) is raised to match


def start_tracemalloc() -> None:
    """``BENCH_TRACEMALLOC=<dir>``: snapshots on SIGUSR1 and every
    ``BENCH_TRACEMALLOC_EVERY`` seconds (see the module docstring)."""
    directory = os.environ.get("BENCH_TRACEMALLOC")
    if not directory:
        return
    import itertools
    import signal
    import tracemalloc

    os.makedirs(directory, exist_ok=True)
    tracemalloc.start(int(os.environ.get("BENCH_TRACEMALLOC_FRAMES", "16")))
    numbers = itertools.count()
    lock = threading.Lock()

    def dump() -> None:
        with lock:
            path = os.path.join(directory, f"snapshot-{os.getpid()}-{next(numbers):04d}.pickle")
            tracemalloc.take_snapshot().dump(path)
            print(f"tracemalloc snapshot {path}", file=sys.stderr, flush=True)

    signal.signal(signal.SIGUSR1, lambda signum, frame: threading.Thread(target=dump, daemon=True).start())
    every = float(os.environ.get("BENCH_TRACEMALLOC_EVERY", "0"))
    if every > 0:

        def periodic() -> None:
            while True:
                time.sleep(every)
                dump()

        threading.Thread(target=periodic, name="tracemalloc-dumps", daemon=True).start()


def parse_request(message: "str | bytes") -> tuple[str, int, int]:
    """``"N SIZE"`` (burst) or ``"stream SIZE"``: (kind, count, size)."""
    text = message if isinstance(message, str) else message.decode()
    first, size = text.split()
    if first == "stream":
        return "stream", 0, int(size)
    return "burst", int(first), int(size)


class Control:
    """``--control``: answers ``capacity`` and ``close`` lines from stdin (see the module docstring)."""

    def __init__(self, capacity: Callable[[], dict], close: Callable[[], None], open_now: Callable[[], int],
                 finished: Optional[threading.Event] = None) -> None:
        """``close()`` closes the server; ``finished``, when given, is set once
        every connection has ended (close() may return before: at its deadline)."""
        self.capacity, self.close, self.open_now, self.finished = capacity, close, open_now, finished
        self.done = threading.Event()  # the close was reported: the main thread may exit
        threading.Thread(target=self._run, name="control", daemon=True).start()

    def _run(self) -> None:
        for line in sys.stdin:
            word = line.strip()
            if word == "capacity":
                say({"event": "capacity", **self.capacity()})
            elif word == "close":
                before, started, cpu0 = self.open_now(), time.monotonic(), time.process_time()
                self.close()
                returned, after = time.monotonic() - started, self.open_now()
                if self.finished is not None:
                    self.finished.wait(120)
                say({"event": "closed", "seconds": returned, "open_before": before, "open_after": after,
                     "all_closed_seconds": time.monotonic() - started if self.finished is None or self.finished.is_set() else None,
                     "cpu_seconds": time.process_time() - cpu0})
                self.done.set()
                return

    def wait(self) -> None:
        self.done.wait(120)


def say(obj: dict) -> None:
    print(json.dumps(obj, default=str), flush=True)


def nofile() -> dict:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {"nofile_soft": soft, "nofile_hard": hard}


def ws_multipath_capacity(server: Any) -> dict:
    if not hasattr(server, "capacity"):  # a commit from before server.capacity()
        return nofile()
    capacity = server.capacity()
    return {**nofile(), "connections": capacity.connections, "held": capacity.held, "fds": capacity.fds, "threads": capacity.threads,
            "memory": capacity.memory, "binding": capacity.binding.name if capacity.binding else None, "summary": str(capacity),
            "bounds": {b.name: b.connections for b in capacity.bounds}, "unknown": list(capacity.unknown)}


def deflate_option(compression: bool, threshold: Optional[int]) -> Any:
    """ws_multipath's ``per_message_deflate``: off, its defaults, or its defaults with ``threshold``."""
    if not compression:
        return False
    return True if threshold is None else {"threshold": threshold}


def run_ws_multipath(mode: str, ping_interval: float, ping_timeout: float, compression: bool, wsgi: bool, control: bool = False,
                     deflate_threshold: Optional[int] = None) -> None:
    from ws_multipath import ConnectionClosed, MultipathServer

    extra = {}
    if wsgi or mode == "http":
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from flask_app import app

        extra["wsgi_app"] = app
    server = MultipathServer(port=0, host="127.0.0.1", **extra)
    handler = server.create_handler(path="/ws" if mode == "http" else "/", ping_interval=ping_interval, ping_timeout=ping_timeout,
                                    max_payload=MAX_SIZE, per_message_deflate=deflate_option(compression, deflate_threshold))

    if mode in ("echo", "http"):

        @handler.on("connection")
        def on_connection(ws, request):  # type: ignore[no-untyped-def]
            ws.on("message", lambda data, is_binary: ws.send(data))

    elif mode == "iter":

        @handler.on("connection")
        def on_connection(ws, request):  # type: ignore[no-untyped-def]
            try:
                for message in ws:
                    ws.send(message)
            except ConnectionClosed:
                pass

    elif mode == "broadcast":

        @handler.on("connection")
        def on_connection(ws, request):  # type: ignore[no-untyped-def]
            ws.on("message", lambda data, is_binary: handler.broadcast(data))

    elif mode == "burst":

        @handler.on("connection")
        def on_connection(ws, request):  # type: ignore[no-untyped-def]
            def on_message(data, is_binary):  # type: ignore[no-untyped-def]
                _, count, size = parse_request(data)
                payload = "x" * size
                for _ in range(count):
                    ws.send(payload)

            ws.on("message", on_message)

    elif mode == "stream":

        @handler.on("connection")
        def on_connection(ws, request):  # type: ignore[no-untyped-def]
            try:
                _, _, size = parse_request(ws.receive())
                payload = "x" * size
                while True:
                    ws.send(payload)
            except ConnectionClosed:
                pass

    else:
        raise SystemExit(f"unknown mode {mode!r}")
    import ws_multipath

    print(f"PORT {server.port} {ws_multipath.__file__}", flush=True)
    finished = threading.Event()
    controller = Control(lambda: ws_multipath_capacity(server), lambda: server.close(callback=finished.set),
                         lambda: server.stats()["open"], finished) if control else None
    server.serve_forever()
    if controller is not None:
        controller.wait()


def cluster_echo(**options: Any) -> Any:
    """A worker's server for ``python -m ws_multipath serve servers:cluster_echo``:
    ``options`` are the supervisor's (port, host, reuse_port, broker); echo on ``/``
    as ``run_ws_multipath``'s ``echo`` mode, ``backlog`` 4096 (the kernel caps it at
    ``net.core.somaxconn``) for the generators' bursts of handshakes."""
    from ws_multipath import MultipathServer

    interval = float(os.environ.get("BENCH_PING_INTERVAL", "20"))
    server = MultipathServer(**options, backlog=4096)
    handler = server.create_handler(path="/", ping_interval=interval, ping_timeout=20.0, max_payload=MAX_SIZE)

    @handler.on("connection")
    def on_connection(ws, request):  # type: ignore[no-untyped-def]
        ws.on("message", lambda data, is_binary: ws.send(data))

    return server


def run_websockets(mode: str, ping_interval: float, ping_timeout: float, compression: bool, control: bool = False) -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.server import broadcast, serve

    holder: dict = {}

    def echo(ws):  # type: ignore[no-untyped-def]
        try:
            for message in ws:
                ws.send(message)
        except ConnectionClosed:
            pass

    def fan_out(ws):  # type: ignore[no-untyped-def]
        try:
            for message in ws:
                broadcast(holder["server"].connections, message)
        except ConnectionClosed:
            pass

    def push(ws):  # type: ignore[no-untyped-def]
        try:
            for message in ws:
                kind, count, size = parse_request(message)
                payload = "x" * size
                if kind == "stream":
                    while True:
                        ws.send(payload)
                for _ in range(count):
                    ws.send(payload)
        except ConnectionClosed:
            pass

    handlers = {"echo": echo, "iter": echo, "broadcast": fan_out, "burst": push, "stream": push}
    if mode not in handlers:
        raise SystemExit(f"unknown mode {mode!r}")
    handler = handlers[mode]
    with serve(
        handler,
        "127.0.0.1",
        0,
        compression="deflate" if compression else None,
        max_size=MAX_SIZE,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
    ) as server:
        holder["server"] = server
        import websockets

        print(f"PORT {server.socket.getsockname()[1]} {websockets.__file__}", flush=True)
        controller: Optional[Control] = None
        if control:
            controller = Control(nofile, server.shutdown, lambda: len(server.connections))
        server.serve_forever()
        if controller is not None:
            controller.wait()  # before leaving the block, whose shutdown() would run beside the control's


class _RawEcho(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        recv, sendall = sock.recv, sock.sendall
        try:
            while True:
                data = recv(65536)
                if not data:
                    return
                sendall(data)
        except OSError:
            pass


class _ThreadingServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024


def run_raw_tcp(mode: str) -> None:
    """The ceiling: a threaded TCP echo with no WebSocket framing."""
    if mode not in ("echo", "iter"):
        raise SystemExit(f"raw_tcp has no mode {mode!r}")
    server = _ThreadingServer(("127.0.0.1", 0), _RawEcho)
    print(f"PORT {server.server_address[1]} {socketserver.__file__}", flush=True)
    server.serve_forever()


def run_werkzeug(mode: str) -> None:
    """The tiny Flask app on Werkzeug's dev server, threaded (HTTP/1.1 keep-alive)."""
    if mode != "http":
        raise SystemExit(f"werkzeug has no mode {mode!r}")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import werkzeug
    from werkzeug.serving import make_server

    from flask_app import app

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log line per request
    server = make_server("127.0.0.1", 0, app, threaded=True)
    print(f"PORT {server.server_port} {werkzeug.__file__}", flush=True)
    server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--impl", required=True, choices=("ws_multipath", "websockets", "raw_tcp", "werkzeug"))
    parser.add_argument("--mode", required=True, choices=("echo", "iter", "broadcast", "burst", "stream", "http"))
    parser.add_argument("--ping-interval", type=float, default=20.0)
    parser.add_argument("--ping-timeout", type=float, default=20.0)
    parser.add_argument("--compression", action="store_true", help="permessage-deflate on (each library's defaults)")
    parser.add_argument("--deflate-threshold", type=int, help="ws_multipath: permessage-deflate's threshold (default: its own, 1024)")
    parser.add_argument("--wsgi", action="store_true", help="ws_multipath: mount the Flask app beside the WebSocket handler")
    parser.add_argument("--control", action="store_true", help="answer 'capacity' and 'close' lines on stdin (the idle scenario)")
    args = parser.parse_args()
    start_tracemalloc()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.impl == "ws_multipath":
        run_ws_multipath(args.mode, args.ping_interval, args.ping_timeout, args.compression, args.wsgi, args.control, args.deflate_threshold)
    elif args.impl == "websockets":
        run_websockets(args.mode, args.ping_interval, args.ping_timeout, args.compression, args.control)
    elif args.impl == "raw_tcp":
        run_raw_tcp(args.mode)
    else:
        run_werkzeug(args.mode)


if __name__ == "__main__":
    main()
