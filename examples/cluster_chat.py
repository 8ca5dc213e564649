# examples/cluster_chat.py
"""A chat served by several worker processes sharing one port and Redis:
python -m ws_multipath serve cluster_chat:create_server --port 8000 --workers 4 --broker redis://localhost:6379/0
(run from examples/, or with examples/ on PYTHONPATH; the systemd unit: examples/ws_multipath.service)"""
from ws_multipath import MultipathServer


def create_server(**options):  # port, host, broker, reuse_port: given by each worker
    server = MultipathServer(**options, max_connections=10_000)
    chat = server.create_handler("/chat", max_payload=64 * 1024)

    @chat.on("connection")
    def joined(ws, request):
        # broadcast reaches this path's clients in every worker (through the broker)
        ws.on("message", lambda data, is_binary: chat.broadcast(data, exclude=ws))

    return server
