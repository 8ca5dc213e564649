# examples/presence_roster.py
"""Rooms with a live roster across worker processes, and private messages:
python -m ws_multipath serve presence_roster:create_server --port 8000 --workers 2 --broker redis://localhost:6379/0
(run from examples/). A client of ws://localhost:8000/rooms/lobby?name=Ann gets
{"type": "roster", "room": "/rooms/lobby", "names": [...]} whenever someone joins or
leaves that room, in any worker; "@Bob hi" goes to Bob alone, wherever he is connected."""
import json
from urllib.parse import unquote

from ws_multipath import MultipathServer


def create_server(**options):  # port, host, broker, reuse_port: given by each worker
    server = MultipathServer(**options)
    rooms = server.create_handler("/rooms/<room>", presence=True)

    @rooms.on("connection")
    def joined(ws, request):
        name = (request.query.get("name") or ["anonymous"])[0][:32]
        ws.set_presence({"name": name})  # what every worker sees of this connection (1 KiB of JSON at most)

        def said(data, is_binary):
            if data.startswith("@"):  # "@Bob hi": to Bob only, in whichever worker holds him
                to, _, text = data[1:].partition(" ")
                for entry in rooms.presence(ws.path):
                    if entry.info["name"] == to:
                        server.send_to(entry.id, json.dumps({"type": "private", "from": name, "text": text}))
            else:
                rooms.broadcast(json.dumps({"type": "message", "from": name, "text": data}), path_params=request.path_params)

        ws.on("message", said)

    def roster_changed(entry):  # fired in every worker, for a connection in any of them
        names = sorted(other.info["name"] for other in rooms.presence(entry.path))
        room = unquote(entry.path.rsplit("/", 1)[1])
        # each worker tells its own clients of the room: local=True, no message through Redis
        rooms.broadcast(json.dumps({"type": "roster", "room": entry.path, "names": names}), path_params={"room": room}, local=True)

    rooms.on("join", roster_changed)
    rooms.on("leave", roster_changed)
    return server
