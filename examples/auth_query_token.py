# examples/auth_query_token.py
"""Auth recipe: a token in the query string (ws://host/feed?token=...),
checked by verify_client before the upgrade: python examples/auth_query_token.py"""
import argparse
import hmac

from ws_multipath import MultipathServer

TOKENS = {"s3cr3t-alice": "alice", "s3cr3t-bob": "bob"}  # yours: a database, a signed token, ...


def user_of(token):
    for known, user in TOKENS.items():
        if hmac.compare_digest(known, token):
            return user
    return None


def verify(request):
    token = request.query.get("token", [""])[0]
    user = user_of(token)
    if user is None:
        return False, 401, "missing or wrong token"
    request.state.user = user  # kept for the connection's life: ws.request.state.user
    return True


def build(port, host=None):
    server = MultipathServer(port=port, host=host)
    feed = server.create_handler("/feed", verify_client=verify)

    @feed.on("connection")
    def hello(ws, request):
        ws.send(f"hello {request.state.user}")

    return server


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1", help="'' or 0.0.0.0 to listen on every interface")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    server = build(args.port, args.host or None)
    where = f"{args.host or 'localhost'}:{server.port}"
    print(f"listening on ws://{where}/feed?token=s3cr3t-alice", flush=True)
    server.serve_forever()
