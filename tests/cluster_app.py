"""The app the cluster tests run in server processes (``serve
tests.cluster_app:create_server`` and ``python tests/cluster_app.py``).

/chat: a client gets ``hello <pid> <ws.id>`` on connecting; a message
``burst <n> <tag>`` makes the server broadcast ``<tag> <i>`` (text, then the
same as binary) for i < n; any other message is broadcast to all but its
sender. /rooms/<room>: a message goes to the sender's room.
"""

import os
import sys

from ws_multipath import MultipathServer


def create_server(**options):
    server = MultipathServer(**options)
    chat = server.create_handler("/chat")
    rooms = server.create_handler("/rooms/<room>")

    @chat.on("connection")
    def on_chat(ws, request):
        ws.send(f"hello {os.getpid()} {ws.id}")

        def on_message(data, is_binary):
            if isinstance(data, str) and data.startswith("burst "):
                _, n, tag = data.split(" ")
                for i in range(int(n)):
                    chat.broadcast(f"{tag} {i}")
                    chat.broadcast(f"{tag} {i}".encode())
            else:
                chat.broadcast(data, exclude=ws)

        ws.on("message", on_message)

    @rooms.on("connection")
    def on_room(ws, request):
        ws.send(f"hello {os.getpid()} {ws.id}")
        ws.on("message", lambda data, is_binary: rooms.broadcast(data, path_params=request.path_params))

    return server


if __name__ == "__main__":  # python tests/cluster_app.py PORT BROKER [reuse] [patient]
    port, broker, flags = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    if "patient" in flags:  # a stall of a loaded machine is no outage: no broadcast is dropped for it
        from ws_multipath.cluster import RedisBroker

        broker = RedisBroker(broker, socket_timeout=10, health_timeout=10, pool_timeout=20)
    server = create_server(port=port, host="127.0.0.1", broker=broker, reuse_port="reuse" in flags)
    server.wait_cluster_ready(10)
    print(f"ready {os.getpid()} {server.port}", flush=True)
    server.serve_forever()
