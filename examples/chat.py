# examples/chat.py
"""The tutorial's chat: a page, /chat (every message to everyone) and
/presence (who is online), on one port: python examples/chat.py --port 8000"""
import argparse
import json

from ws_multipath import MultipathServer

PAGE = b"""<!doctype html>
<title>chat</title>
<p id=online></p>
<ul id=log></ul>
<input id=say placeholder="say something, then Enter">
<script>
const chat = new WebSocket(`ws://${location.host}/chat`);
chat.onmessage = (e) => log.append(Object.assign(document.createElement("li"), {textContent: e.data}));
say.onchange = () => { chat.send(say.value); say.value = ""; };
const presence = new WebSocket(`ws://${location.host}/presence`);
presence.onmessage = (e) => { online.textContent = `${JSON.parse(e.data).online} online`; };
</script>
"""


def page(environ, start_response):
    """A WSGI app: the page, for any plain HTTP request."""
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
    return [PAGE]


def build(port, host=None):
    server = MultipathServer(port=port, host=host, wsgi_app=page)
    chat = server.create_handler("/chat", max_payload=4096)
    presence = server.create_handler("/presence")

    def announce():
        presence.broadcast(json.dumps({"online": len(chat.clients)}))

    @chat.on("connection")
    def joined(ws, request):
        ws.on("message", lambda data, is_binary: chat.broadcast(data))
        ws.on("close", lambda code, reason: announce())
        announce()

    @presence.on("connection")
    def watching(ws, request):
        ws.send(json.dumps({"online": len(chat.clients)}))

    return server


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1", help="'' or 0.0.0.0 to listen on every interface")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    server = build(args.port, args.host or None)
    print(f"listening: open http://{args.host or 'localhost'}:{server.port}/ in two browser tabs", flush=True)
    server.serve_forever()
