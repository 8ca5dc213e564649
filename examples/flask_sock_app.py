# examples/flask_sock_app.py
"""An unchanged Flask-Sock app, served by ws_multipath beside a handler of its own:
python examples/flask_sock_app.py --port 8000"""
import argparse

from flask import Flask
from flask_sock import Sock

from ws_multipath import MultipathServer

# -- the Flask-Sock app, as it was under Werkzeug's or gunicorn's server ------
app = Flask(__name__)
sock = Sock(app)


@app.route("/")
def index():
    return "Flask-Sock echo at /echo, ws_multipath echo at /fast-echo"


@sock.route("/echo")
def echo(ws):
    while True:
        ws.send(ws.receive())


# -- the migration: serve it with ws_multipath, move paths to handlers at will --
def build(port, host=None):
    server = MultipathServer(port=port, host=host, wsgi_app=app, wsgi_websockets=True)
    fast = server.create_handler("/fast-echo")
    fast.on("connection", lambda ws, req: ws.on("message", lambda data, binary: ws.send(data)))
    return server


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1", help="'' or 0.0.0.0 to listen on every interface")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    server = build(args.port, args.host or None)
    where = f"{args.host or 'localhost'}:{server.port}"
    print(f"listening on ws://{where}/fast-echo and http://{where}/", flush=True)
    server.serve_forever()
