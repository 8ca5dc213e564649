"""ws_multipath: many WebSocket paths on one port, for synchronous Python.

    from ws_multipath import MultipathServer

    with MultipathServer(port=8080) as server:
        echo = server.create_handler(path="/echo")

        @echo.on("connection")
        def on_connection(ws, request):
            ws.on("message", lambda data, is_binary: ws.send(data))

        server.serve_forever()
"""

from .cluster.presence import PresenceEntry
from .cluster.publisher import Publisher
from .errors import (
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    HandshakeError,
    HookError,
    PayloadTooBig,
    ProtocolError,
    WebSocketError,
)
from .handler import WebSocketHandler
from .http.request import Headers, Request
from .options import HandlerOptions
from .server import MultipathServer
from .sync.capacity import Capacity, measure_capacity
from .sync.connection import ReadyState, WebSocket

__all__ = [
    "PresenceEntry",
    "MultipathServer",
    "WebSocketHandler",
    "Publisher",
    "HandlerOptions",
    "WebSocket",
    "ReadyState",
    "Request",
    "Headers",
    "WebSocketError",
    "ConnectionClosed",
    "ConnectionClosedOK",
    "ConnectionClosedError",
    "ProtocolError",
    "PayloadTooBig",
    "HandshakeError",
    "HookError",
    "Capacity",
    "measure_capacity",
]

__version__ = "0.1.0"
