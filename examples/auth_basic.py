# examples/auth_basic.py
"""Auth recipe: HTTP Basic on the upgrade request, compared in constant time,
with a WWW-Authenticate challenge on refusal: python examples/auth_basic.py
(only over wss:// or behind a TLS proxy: Basic sends the password in clear)"""
import argparse
import base64
import binascii
import hmac

from ws_multipath import HandshakeError, MultipathServer

USERS = {"admin": "correct horse battery staple"}  # yours: hashed, in a store
CHALLENGE = [("WWW-Authenticate", 'Basic realm="admin", charset="UTF-8"')]


def verify(request):
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        raise HandshakeError(401, "credentials needed", headers=CHALLENGE)
    try:
        user, _, password = base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise HandshakeError(400, "malformed Basic credentials") from None
    expected = USERS.get(user, "")
    # compare_digest takes as long whatever the password: no timing leak
    if not (hmac.compare_digest(password.encode(), expected.encode()) and user in USERS):
        raise HandshakeError(401, "wrong user or password", headers=CHALLENGE)
    request.state.user = user
    return True


def build(port, host=None):
    server = MultipathServer(port=port, host=host)
    admin = server.create_handler("/admin", verify_client=verify)

    @admin.on("connection")
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
    print(f"listening on ws://{where}/admin", flush=True)
    server.serve_forever()
