# examples/routes.py
"""Route patterns: one handler per pattern, values in request.path_params,
a broadcast to one room: python examples/routes.py --port 8000"""
import argparse
import json

from ws_multipath import MultipathServer


def build(port, host=None):
    server = MultipathServer(port=port, host=host)
    rooms = server.create_handler("/rooms/<room>")
    lobby = server.create_handler("/rooms/lobby")  # an exact path wins over the pattern
    files = server.create_handler("/users/<int:user_id>/files/<path:name>")

    @rooms.on("connection")
    def joined(ws, request):
        room = request.path_params["room"]  # "/rooms/kitchen" -> "kitchen"
        ws.on("message", lambda data, is_binary: rooms.broadcast(data, path_params={"room": room}))

    @lobby.on("connection")
    def entered_lobby(ws, request):
        ws.send("welcome to the lobby")

    @files.on("connection")
    def watch_file(ws, request):
        params = request.path_params  # "/users/7/files/a/b.txt" -> {"user_id": 7, "name": "a/b.txt"}
        ws.send(json.dumps({"user_id": params["user_id"], "name": params["name"], "pattern": files.path, "path": ws.path}))

    return server


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1", help="'' or 0.0.0.0 to listen on every interface")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    server = build(args.port, args.host or None)
    where = f"{args.host or 'localhost'}:{server.port}"
    print(f"listening on ws://{where}/rooms/<room>", flush=True)
    server.serve_forever()
