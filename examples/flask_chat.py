# examples/flask_chat.py
"""A Flask app and two WebSocket paths on one port: python examples/flask_chat.py --port 8000"""
import argparse

from flask import Flask, jsonify, request

from ws_multipath import MultipathServer

app = Flask(__name__)
ws_paths = {}  # "/ws/chat", "/ws/notify" -> their handlers, once the server is built


@app.get("/")
def page():
    return """<!doctype html><ul id=log></ul><input id=say><script>ws = new WebSocket(`ws://${location.host}/ws/chat`);
ws.onmessage = e => log.append(e.data, document.createElement("br")); say.onchange = () => ws.send(say.value);</script>"""


@app.get("/api/clients")
def clients():
    return jsonify({path: len(handler.clients) for path, handler in ws_paths.items()})


@app.post("/notify")
def notify():
    return jsonify(sent=ws_paths["/ws/notify"].broadcast(request.get_data(as_text=True)))


def build(port, host=None):
    server = MultipathServer(port=port, host=host, wsgi_app=app)
    ws_paths.update((path, server.create_handler(path)) for path in ("/ws/chat", "/ws/notify"))
    chat = ws_paths["/ws/chat"]
    chat.on("connection", lambda ws, request: ws.on("message", lambda data, is_binary: chat.broadcast(data)))
    return server


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1", help="'' or 0.0.0.0 to listen on every interface")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    server = build(args.port, args.host or None)
    where = f"{args.host or 'localhost'}:{server.port}"
    print(f"listening on ws://{where}/ws/chat and http://{where}/", flush=True)
    server.serve_forever()
