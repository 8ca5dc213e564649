"""A server's side of the cluster: its id, its subscription, publishing its
handlers' broadcasts and delivering the others' to its local clients.

Subscriptions: an exact path's handler subscribes to ``<prefix><path>``; a
route pattern's handler subscribes to ``<prefix><pattern>`` (broadcasts to
the whole pattern, or to part of its params) and pattern-subscribes to a
glob matching every concrete path of it (``message.subscription_of``).
Redis delivers a message once per matching subscription, so a message that
arrives through a glob is delivered only when this server's routing table
sends its path to that glob's handler (``/rooms/lobby`` beside
``/rooms/<room>``: the exact path wins, as for a request): each local
client gets it once.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Collection
from typing import TYPE_CHECKING, Any, Optional, Union

from ..http.routing import compile_pattern
from ..log import logger
from .broker import Broker
from .message import FormatError, decode, encode, presence_channel, send_channel, subscription_of, target_channel

if TYPE_CHECKING:
    from ..handler import WebSocketHandler
    from ..host import HandlerHost
    from ..sync.connection import WebSocket
    from .presence import Presence

__all__ = ["ClusterNode"]


class ClusterNode:
    def __init__(self, server: "HandlerHost", broker: Broker, owned: bool) -> None:
        self.id = uuid.uuid4().hex
        self.broker = broker
        self.prefix = broker.prefix
        self._server = server
        self._owned = owned
        self._lock = threading.Lock()
        self._exact: dict[str, "WebSocketHandler"] = {}  # channel -> handler
        self._globs: dict["WebSocketHandler", str] = {}  # pattern handler -> its glob
        self._routes: dict[str, Any] = {}  # pattern -> compiled
        self._bad_formats: set[str] = set()
        self._closed = False
        self.presence: Optional["Presence"] = None  # set once, by the server, before any presence message matters
        self._presence_channel = presence_channel(self.prefix)
        self._send_channel = send_channel(self.prefix)
        self._subscription = broker.subscribe(self._deliver)

    # -- handlers ---------------------------------------------------------------

    def add(self, handler: "WebSocketHandler") -> None:
        channel, glob = subscription_of(self.prefix, handler.path)
        with self._lock:
            self._exact[channel] = handler
            if glob is not None:
                self._globs[handler] = glob
                self._routes[handler.path] = compile_pattern(handler.path)
            self._update()

    def remove(self, handler: "WebSocketHandler") -> None:
        channel, _ = subscription_of(self.prefix, handler.path)
        with self._lock:
            if self._exact.get(channel) is handler:
                del self._exact[channel]
            self._globs.pop(handler, None)
            if not self._closed:
                self._update()

    def _update(self) -> None:
        self._subscription.update(list(self._exact) + [self._send_channel] + ([self._presence_channel] if self.presence is not None else []), list(self._globs.values()))

    def wait_ready(self, timeout: Optional[float] = None) -> bool:
        return self._subscription.wait_ready(timeout)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._subscription.close()
        if self._owned:
            self.broker.close()

    # -- publishing ---------------------------------------------------------------

    def publish(self, handler: "WebSocketHandler", data: Union[str, bytes], exclude: Collection["WebSocket"], path_params: Optional[dict[str, Any]]) -> bool:
        channel, params = target_channel(self.prefix, handler.path, path_params, self._routes.get(handler.path))
        ids = [ws.id for ws in exclude if isinstance(getattr(ws, "id", None), str)]
        return self.broker.publish(channel, encode(data, self.id, ids, params))

    def publish_presence(self, payload: bytes) -> bool:
        return self.broker.publish(self._presence_channel, payload)

    def send_to(self, id: str, data: Union[str, bytes]) -> bool:
        return self.broker.publish(self._send_channel, encode(data, self.id, to=id))

    # -- delivering -----------------------------------------------------------------

    def _deliver(self, channel: str, pattern: Optional[str], payload: bytes) -> None:
        try:
            message = decode(payload)
        except FormatError as exc:
            key = str(exc).split(" (")[0]
            if key not in self._bad_formats and len(self._bad_formats) < 32:
                self._bad_formats.add(key)
                logger.warning("cluster: dropped a message on %s: %s (logged once per kind)", channel, exc)
            return
        if message.origin == self.id:
            return  # ours: delivered locally when it was broadcast
        if channel == self._presence_channel:
            presence = self.presence
            if presence is not None and presence.sync is not None and message.presence is not None:
                presence.sync.offer(message)
            return
        if channel == self._send_channel:
            if message.to is not None:
                self._server._directory.send(message.to, message.data)
            return
        path = channel[len(self.prefix) :]
        if pattern is None:
            handler = self._exact.get(channel)
            if handler is None:
                return
            wanted = _convert(self._routes.get(handler.path), message.params) if message.params else None
            if message.params and wanted is None:
                return
        else:
            found = self._server._routes.lookup(path)
            if found is None:
                return
            handler, from_path = found
            if self._globs.get(handler) != pattern:
                return  # another subscription of this server delivers it
            wanted = dict(from_path)
            if message.params:
                extra = _convert(self._routes.get(handler.path), message.params)
                if extra is None:
                    return
                wanted.update(extra)
        handler._broadcast_local(message.data, _Remote(message.exclude, wanted))


def _convert(route: Any, params: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The header's string params converted as the pattern converts them;
    None if one does not convert (then no client can match)."""
    conversions = dict(route.conversions) if route is not None else {}
    converted = {}
    for name, value in params.items():
        convert = conversions.get(name)
        try:
            converted[name] = convert(value) if convert is not None else value
        except ValueError:
            return None
    return converted


class _Remote:
    """Who skips a message from another process: the excluded ids, and the
    clients whose path params differ from ``params``."""

    __slots__ = ("exclude", "params")

    def __init__(self, exclude: frozenset[str], params: Optional[dict[str, Any]]) -> None:
        self.exclude = exclude
        self.params = params

    def __contains__(self, ws: Any) -> bool:
        if ws.id in self.exclude:
            return True
        if not self.params:
            return False
        got = ws.request.path_params
        return any(name not in got or got[name] != value for name, value in self.params.items())
