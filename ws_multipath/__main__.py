"""The demo server: ``python -m ws_multipath --port 8080``.

Serves ``/echo`` (sends every message back), ``/chat`` (sends every
message to every chat client; ``/chat?name=...`` joins with a name and gets
the roster) and, at ``/``, a page that uses both, until Ctrl-C or SIGTERM.

``python -m ws_multipath serve myapp:create_server --port 8000 --workers 4
--broker redis://localhost:6379/0`` serves an app in worker processes
(``cluster/workers.py``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from .demo import add_demo
from .demo import app as demo_page
from .log import configure_logging
from .server import MultipathServer


def build_demo(server: MultipathServer) -> None:
    """Add the demo's two paths to ``server`` (see ``ws_multipath/demo``)."""
    add_demo(server)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        from .cluster.workers import main as serve

        return serve(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m ws_multipath", description="ws_multipath demo: /echo, /chat and a page at / on one port")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (0 picks a free one; default 8080)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; '' for all)")
    parser.add_argument("--verbose", "-v", action="store_true", help="log connections, closes, refusals and drops (INFO)")
    parser.add_argument("--log-format", choices=("text", "json"), default="text", help="log lines as text (default) or JSON objects")
    args = parser.parse_args(argv)
    configure_logging(args.verbose, args.log_format)
    try:
        server = MultipathServer(port=args.port, host=args.host or None, wsgi_app=demo_page)
    except (OSError, ValueError) as exc:
        print(f"ws_multipath: {exc}", file=sys.stderr)
        return 1
    try:
        with server:
            build_demo(server)
            shown = args.host or "localhost"
            if ":" in shown:
                shown = f"[{shown}]"
            for path in ("/echo", "/chat"):
                print(f"ws://{shown}:{server.port}{path}", flush=True)
            print(f"http://{shown}:{server.port}/ (the demo page: open it in a browser)", flush=True)
            print("Ctrl-C to stop", flush=True)
            server.serve_forever()
    except KeyboardInterrupt:  # before serve_forever() took over Ctrl-C; leaving the block closed the server
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
