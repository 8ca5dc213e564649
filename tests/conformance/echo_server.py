"""The echo server the Autobahn|Testsuite is pointed at, built on the public
API only: one MultipathServer with several paths, so routing is exercised.

    python tests/conformance/echo_server.py [--port 0] [--port-file FILE]

``/echo`` echoes from a ``'message'`` listener, ``/iter`` with
``for message in ws``; ``/deflate`` offers permessage-deflate (cases 12.*
and 13.*); ``/other`` is a decoy. Both echo paths accept 16 MiB messages.
A WSGI app is mounted on the same port (plain HTTP requests get a page), so
the suite also shows that serving HTTP beside the paths changes nothing.
The bound port is printed (and written to ``--port-file``).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ws_multipath import MultipathServer  # noqa: E402

MAX_PAYLOAD = 16 * 1024 * 1024


def echo(ws, request):
    ws.on("message", lambda data, is_binary: ws.send(data))


def echo_by_iteration(ws, request):
    for message in ws:
        ws.send(message)


def page(environ, start_response):
    body = b"ws_multipath conformance echo server\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file")
    args = parser.parse_args()
    with MultipathServer(port=args.port, host="127.0.0.1", wsgi_app=page) as server:
        server.create_handler(path="/other").on("connection", lambda ws, request: ws.close(1008, "decoy"))
        server.create_handler(path="/echo", max_payload=MAX_PAYLOAD).on("connection", echo)
        server.create_handler(path="/iter", max_payload=MAX_PAYLOAD).on("connection", echo_by_iteration)
        server.create_handler(path="/deflate", max_payload=MAX_PAYLOAD, per_message_deflate=True).on("connection", echo)
        if args.port_file:
            Path(args.port_file).write_text(str(server.port))
        print(server.port, flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()
