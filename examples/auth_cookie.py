# examples/auth_cookie.py
"""Auth recipe: the Flask app on the same port logs the user in and sets a
cookie; the browser sends it with the upgrade, verify_client checks it and
allowed_origins stops other sites' pages: python examples/auth_cookie.py"""
import argparse
import secrets
from http.cookies import SimpleCookie

from flask import Flask, make_response, request

from ws_multipath import MultipathServer

app = Flask(__name__)
sessions = {}  # session id -> user name (yours: Redis, a database, ...)


@app.post("/login")
def login():
    user = request.form["user"]  # check a password here
    session_id = secrets.token_urlsafe(32)
    sessions[session_id] = user
    response = make_response(f"logged in as {user}")
    response.set_cookie("session", session_id, httponly=True, samesite="Lax")
    return response


def verify(ws_request):
    cookie = SimpleCookie(ws_request.headers.get("Cookie", ""))
    user = sessions.get(cookie["session"].value) if "session" in cookie else None
    if user is None:
        return False, 401, "log in first"
    ws_request.state.user = user
    return True


def build(port, host=None, origins=None):
    server = MultipathServer(port=port, host=host, wsgi_app=app)
    if origins is None:  # where your pages are served from; here, this server's own port
        origins = [f"http://localhost:{server.port}", f"http://127.0.0.1:{server.port}"]
    inbox = server.create_handler("/ws/inbox", verify_client=verify, allowed_origins=origins)

    @inbox.on("connection")
    def hello(ws, ws_request):
        ws.send(f"hello {ws_request.state.user}")

    return server


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1", help="'' or 0.0.0.0 to listen on every interface")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--origin", action="append", help="an allowed page origin, e.g. https://app.example (repeatable)")
    args = parser.parse_args()
    server = build(args.port, args.host or None, args.origin)
    where = f"{args.host or 'localhost'}:{server.port}"
    print(f"listening on ws://{where}/ws/inbox and http://{where}/", flush=True)
    server.serve_forever()
