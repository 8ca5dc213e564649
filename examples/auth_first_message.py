# examples/auth_first_message.py
"""Auth recipe: the upgrade is open to all, and the first message must carry
the token (browsers cannot set headers on a WebSocket; this keeps the token
out of URLs and logs): python examples/auth_first_message.py"""
import argparse
import hmac
import json

from ws_multipath import ConnectionClosed, MultipathServer

TOKENS = {"s3cr3t-alice": "alice"}


def user_of(token):
    for known, user in TOKENS.items():
        if isinstance(token, str) and hmac.compare_digest(known, token):
            return user
    return None


def build(port, host=None, login_timeout=5.0):
    server = MultipathServer(port=port, host=host)
    room = server.create_handler("/room", max_payload=4096)

    @room.on("connection")
    def serve(ws, request):
        # The blocking style: this listener runs on the connection's own thread.
        try:
            first = json.loads(ws.receive(timeout=login_timeout))
        except (TimeoutError, ValueError):
            ws.close(1008, "first message: {\"token\": ...}")
            return
        except ConnectionClosed:
            return
        user = user_of(first.get("token")) if isinstance(first, dict) else None
        if user is None:
            ws.close(1008, "wrong token")
            return
        ws.request.state.user = user
        ws.send(f"hello {user}")
        for message in ws:  # until the client closes
            ws.send(f"{user}, you said: {message}")

    return server


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1", help="'' or 0.0.0.0 to listen on every interface")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    server = build(args.port, args.host or None)
    where = f"{args.host or 'localhost'}:{server.port}"
    print(f"listening on ws://{where}/room", flush=True)
    server.serve_forever()
