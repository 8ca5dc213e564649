"""The servers that benchmarks/run.py measures, one process per run.

    python benchmarks/servers.py --impl ws_multipath|websockets --mode echo|iter|broadcast
                                 [--ping-interval S] [--ping-timeout S]

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
"""

from __future__ import annotations

import argparse
import logging
import sys

MAX_SIZE = 16 * 1024 * 1024  # ws_multipath's default max_payload; websockets' default (1 MiB) is raised to match


def run_ws_multipath(mode: str, ping_interval: float, ping_timeout: float) -> None:
    from ws_multipath import ConnectionClosed, MultipathServer

    server = MultipathServer(port=0, host="127.0.0.1")
    handler = server.create_handler(path="/", ping_interval=ping_interval, ping_timeout=ping_timeout, max_payload=MAX_SIZE)

    if mode == "echo":

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

    else:
        raise SystemExit(f"unknown mode {mode!r}")
    import ws_multipath

    print(f"PORT {server.port} {ws_multipath.__file__}", flush=True)
    server.serve_forever()


def run_websockets(mode: str, ping_interval: float, ping_timeout: float) -> None:
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

    if mode not in ("echo", "iter", "broadcast"):
        raise SystemExit(f"unknown mode {mode!r}")
    handler = fan_out if mode == "broadcast" else echo
    with serve(
        handler,
        "127.0.0.1",
        0,
        compression=None,
        max_size=MAX_SIZE,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
    ) as server:
        holder["server"] = server
        import websockets

        print(f"PORT {server.socket.getsockname()[1]} {websockets.__file__}", flush=True)
        server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--impl", required=True, choices=("ws_multipath", "websockets"))
    parser.add_argument("--mode", required=True, choices=("echo", "iter", "broadcast"))
    parser.add_argument("--ping-interval", type=float, default=20.0)
    parser.add_argument("--ping-timeout", type=float, default=20.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.impl == "ws_multipath":
        run_ws_multipath(args.mode, args.ping_interval, args.ping_timeout)
    else:
        run_websockets(args.mode, args.ping_interval, args.ping_timeout)


if __name__ == "__main__":
    main()
