"""A server's open connections by ``ws.id``, for ``send_to``: the handlers
add each connection as its 101 goes out and remove it when it ends.
``_lock`` guards ``_by_id``; nothing else is done under it."""

from __future__ import annotations

import threading
from typing import Any, Union

from ..protocol.frames import FrameWriter

__all__ = ["Directory"]


class Directory:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_id: dict[str, Any] = {}

    def add(self, ws: Any) -> None:
        with self._lock:
            self._by_id[ws.id] = ws

    def remove(self, ws: Any) -> None:
        with self._lock:
            found = self._by_id.pop(ws.id, None)
            if found is not None and found is not ws:
                self._by_id[ws.id] = found  # not this one's (ids are uuid4s: never, but keep the map right)

    def send(self, id: str, data: Union[str, bytes]) -> bool:
        """Queue ``data`` for the connection ``id`` if it is here and open
        (never blocks on it); False otherwise."""
        with self._lock:
            ws = self._by_id.get(id)
        if ws is None:
            return False
        header, payload = FrameWriter().message(data)
        return bool(ws._post(data, header + payload))
