"""The demo of ``python -m ws_multipath``: ``/echo``, ``/chat`` and a page at ``/``.

``add_demo(server)`` adds the two WebSocket paths; ``app`` is the WSGI app
that serves the page (plain HTML, CSS and JavaScript shipped as package data,
no build step) through ``MultipathServer(wsgi_app=app)``.

``/echo`` sends every message back. ``/chat`` sends every message to every
chat client, as it is. A client that connects to ``/chat?name=Alice`` is a
member: the server keeps its name for the connection and speaks JSON to it,
``{"type": "roster", "names": [...]}`` (every member's name, in joining
order) whenever a member joins or leaves, and ``{"type": "message", "name":
"Alice", "text": "hi"}`` for each text message (``"name": null`` for a client
without one). Clients without a name get the text only, as before.
With a broker, all of it spans the processes (``create_server``, for
``serve --workers``): the chat is in presence (``presence=True``), so the
roster is every process's members.
"""

from __future__ import annotations

import json
import threading
import time
from importlib import resources
from typing import Any, Callable, Collection, Iterable, Iterator, Optional, Union

from ..handler import WebSocketHandler
from ..http.request import Request
from ..server import MultipathServer
from ..sync.connection import WebSocket

__all__ = ["add_demo", "app", "create_server", "member_name", "NAME_LIMIT"]

NAME_LIMIT = 32  # characters of a chat name; longer ones are cut

# the page's files: URL path -> (file in this package, Content-Type)
PAGES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/demo.css": ("demo.css", "text/css; charset=utf-8"),
    "/demo.js": ("demo.js", "text/javascript; charset=utf-8"),
}
SECURITY_HEADERS = [
    ("Content-Security-Policy", "default-src 'self'; img-src 'self' data:"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
]


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The WSGI app of the demo page: ``GET /`` and its two files, else 404."""
    page = PAGES.get(environ.get("PATH_INFO") or "/")
    if page is None:
        return _plain(start_response, "404 Not Found", "not found\n")
    if environ["REQUEST_METHOD"] not in ("GET", "HEAD"):
        return _plain(start_response, "405 Method Not Allowed", "GET or HEAD\n", [("Allow", "GET, HEAD")])
    name, content_type = page
    body = resources.files(__name__).joinpath(name).read_bytes()
    headers = [("Content-Type", content_type), ("Content-Length", str(len(body))), ("Cache-Control", "no-cache")]
    start_response("200 OK", headers + SECURITY_HEADERS)
    return [body]


def _plain(start_response: Callable[..., Any], status: str, text: str, extra: Optional[list[tuple[str, str]]] = None) -> list[bytes]:
    body = text.encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))] + (extra or []))
    return [body]


def member_name(request: Request) -> Optional[str]:
    """The chat name in ``request``'s ``?name=`` (whitespace runs made one
    space, unprintable characters dropped, cut to ``NAME_LIMIT``), or None."""
    values = request.query.get("name") or [""]
    name = " ".join("".join(c for c in values[0] if c.isprintable() or c.isspace()).split())[:NAME_LIMIT].strip()
    return name or None


class _Clients(Collection[Any]):
    """The chat's clients with (``named=True``) or without a name, as an
    ``exclude=`` for ``broadcast``: asked per local client as the message is
    delivered (so a client that connects meanwhile is on the right side
    too), and listed, for the other processes, as the ids of presence."""

    def __init__(self, handler: WebSocketHandler, named: bool) -> None:
        self._handler = handler
        self._named = named

    def __contains__(self, ws: object) -> bool:
        return isinstance(ws, WebSocket) and (member_name(ws.request) is not None) == self._named

    def __iter__(self) -> Iterator[Any]:  # every process's, as entries (their .id is what travels)
        return (entry for entry in self._handler.presence() if ("name" in entry.info) == self._named)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __bool__(self) -> bool:  # it may gain clients before broadcast() asks
        return True


class Chat:
    """``/chat``: every message to every client; names and a roster for
    members, across every process sharing the server's broker: the chat is
    in presence, a member's name is its presence info, and each process
    sends its members the roster whenever a member joins or leaves
    anywhere (the 'join' and 'leave' events fire in every process)."""

    def __init__(self, handler: WebSocketHandler) -> None:
        self.handler = handler
        self._lock = threading.Lock()  # orders the rosters sent (the events come on one thread; this is for safety)
        self._members = _Clients(handler, named=True)
        self._others = _Clients(handler, named=False)
        handler.on("connection", self._connected)
        handler.on("join", self._changed)
        handler.on("leave", self._changed)

    def roster(self) -> list[str]:
        """Every member's name, in every process, in joining order."""
        members = [entry for entry in self.handler.presence() if "name" in entry.info]
        members.sort(key=lambda entry: (entry.info.get("since", 0), entry.id))
        return [entry.info["name"] for entry in members]

    def _connected(self, ws: WebSocket, request: Request) -> None:
        name = member_name(request)
        ws.on("message", lambda data, is_binary: self._relay(data, is_binary, name))
        if name is not None:
            ws.set_presence({"name": name, "since": time.time()})

    def _changed(self, entry: Any) -> None:
        if "name" not in entry.info:
            return  # a client without a name: not on the roster
        with self._lock:  # to this process's members: the others send theirs
            self.handler.broadcast(json.dumps({"type": "roster", "names": self.roster()}), exclude=self._others, local=True)

    def _relay(self, data: Union[str, bytes], is_binary: bool, name: Optional[str]) -> None:
        self.handler.broadcast(data, exclude=self._members)
        if not is_binary:
            self.handler.broadcast(json.dumps({"type": "message", "name": name, "text": data}), exclude=self._others)


def add_demo(server: MultipathServer) -> Chat:
    """Add ``/echo`` and ``/chat`` to ``server``; returns the chat."""
    echo = server.create_handler(path="/echo")

    @echo.on("connection")
    def echo_back(ws: WebSocket, request: Request) -> None:
        ws.on("message", lambda data, is_binary: ws.send(data))

    return Chat(server.create_handler(path="/chat", presence=True))


def create_server(**options: Any) -> MultipathServer:
    """The demo as an app for workers: ``python -m ws_multipath serve
    ws_multipath.demo:create_server --workers 2 --broker redis://...``
    (the page, ``/echo`` and ``/chat``, its roster across the workers)."""
    server = MultipathServer(**options, wsgi_app=app)
    add_demo(server)
    return server
