# examples/behind_proxy.py
"""Behind nginx (or any reverse proxy / TLS terminator) on the same host:
python examples/behind_proxy.py --port 8000 (nginx config: examples/nginx.conf)"""
import argparse

from ws_multipath import MultipathServer

PING_INTERVAL = 20  # seconds; nginx's proxy_read_timeout must be longer (it is 3600s in nginx.conf)


def build(port, host="127.0.0.1", proxies=("127.0.0.1", "::1")):
    # Listen on loopback only, so that nothing but the proxy can reach us,
    # and believe X-Forwarded-For / -Proto / Forwarded from the proxy only.
    server = MultipathServer(port=port, host=host, trusted_proxies=list(proxies))
    live = server.create_handler("/live", ping_interval=PING_INTERVAL, allowed_origins=["https://example.com"])

    @live.on("connection")
    def connected(ws, request):
        # remote_address: the browser, as the proxy saw it; peer_address: the proxy.
        # secure: True when the browser used https/wss to reach the proxy.
        ws.send(f"client {request.remote_address[0]} via {request.peer_address[0]}, secure={request.secure}")

    return server


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1", help="'' or 0.0.0.0 to listen on every interface")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    server = build(args.port, args.host or None)
    where = f"{args.host or 'localhost'}:{server.port}"
    print(f"listening on ws://{where}/live", flush=True)
    server.serve_forever()
