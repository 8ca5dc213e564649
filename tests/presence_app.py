"""The app the presence tests run in server processes
(``python tests/presence_app.py PORT BROKER [TTL INTERVAL]``).

/rooms/<room>?name=X: in presence with ``{"name": X}``; a client gets
``hello <pid> <ws.id>`` first. /watch: gets every 'join' and 'leave' this
process sees on /rooms/<room>, as JSON ``{"event", "id", "path", "info", "node"}``.
"""

import json
import os
import sys

from ws_multipath import MultipathServer
from ws_multipath.cluster import RedisBroker


def create_server(**options):
    server = MultipathServer(**options)
    rooms = server.create_handler("/rooms/<room>", presence=True)
    watch = server.create_handler("/watch")

    @rooms.on("connection")
    def on_room(ws, request):
        ws.send(f"hello {os.getpid()} {ws.id}")
        ws.set_presence({"name": (request.query.get("name") or ["?"])[0]})

    def tell(event):
        def listener(entry):
            watch.broadcast(json.dumps({"event": event, "id": entry.id, "path": entry.path, "info": entry.info, "node": entry.node}), local=True)
        return listener

    rooms.on("join", tell("join"))
    rooms.on("leave", tell("leave"))
    return server


if __name__ == "__main__":
    port, url = int(sys.argv[1]), sys.argv[2]
    timing = {"presence_ttl": float(sys.argv[3]), "presence_interval": float(sys.argv[4])} if len(sys.argv) > 4 else {}
    broker = RedisBroker(url, **timing)
    server = create_server(port=port, host="127.0.0.1", broker=broker)
    server.wait_cluster_ready(10)
    print(f"ready {os.getpid()} {server.port} {server.node_id}", flush=True)
    server.serve_forever()
    broker.close()
