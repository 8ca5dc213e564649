"""``Publisher``: broadcast to a path's clients across the cluster from any
Python process (a web app, a worker, a cron job). It starts no thread: each
``broadcast`` is one ``publish`` on the caller's thread."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Any, Optional, Union

from ..http.routing import compile_pattern, is_pattern
from .broker import Broker, make_broker
from .message import checked_send_to, encode, send_channel, target_channel

__all__ = ["Publisher"]


class Publisher:
    """``Publisher(broker)``: ``broker`` is a URL (``"redis://host:6379/0"``)
    or a broker object (``RedisBroker(client=..., prefix=...)``).

    ``broadcast(path, data, exclude=None, *, path_params=None)`` sends
    ``data`` (str: text, bytes: binary) to every client of ``path`` in every
    server of the cluster; ``path`` is an exact path or a handler's route
    pattern (``"/rooms/<room>"`` with ``path_params={"room": "lobby"}``).
    ``exclude``: connection ids (``ws.id``) or connections. Returns False if
    the broker dropped it (Redis down: see docs/scaling.rst).

    ``send_to(id, data)``: to one connection (``ws.id``), wherever it is."""

    def __init__(self, broker: Union[str, Broker]) -> None:
        self.broker, self._owned = make_broker(broker)
        self.id = uuid.uuid4().hex
        self._routes: dict[str, Any] = {}

    def broadcast(
        self,
        path: str,
        data: Union[str, bytes, bytearray, memoryview],
        exclude: Optional[Iterable[Any]] = None,
        *,
        path_params: Optional[Mapping[str, Any]] = None,
    ) -> bool:
        if not isinstance(path, str) or not path.startswith("/"):
            raise ValueError(f"path must be a str starting with '/', not {path!r}")
        if not isinstance(data, (str, bytes, bytearray, memoryview)):
            raise TypeError(f"data must be str or bytes-like, not {type(data).__name__}")
        if not isinstance(data, str):
            data = bytes(data)
        route = None
        if is_pattern(path):
            route = self._routes.get(path)
            if route is None:
                route = self._routes[path] = compile_pattern(path)
        ids = [item if isinstance(item, str) else item.id for item in (exclude or ())]
        channel, params = target_channel(self.broker.prefix, path, dict(path_params) if path_params else None, route)
        return self.broker.publish(channel, encode(data, self.id, ids, params))

    def send_to(self, id: str, data: Union[str, bytes, bytearray, memoryview]) -> bool:
        """Send ``data`` to the one connection whose ``ws.id`` is ``id``,
        in whichever server holds it (at-most-once: nobody holds it, nothing
        happens). False if the broker dropped it."""
        id, message = checked_send_to(id, data)
        return self.broker.publish(send_channel(self.broker.prefix), encode(message, self.id, to=id))

    def close(self) -> None:
        if self._owned:
            self.broker.close()

    def __enter__(self) -> "Publisher":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
