"""The server's table of paths and their handlers.

Matching is exact on the request path (the query string is ignored). Route
patterns would be added here, behind ``lookup``.
"""

from __future__ import annotations

import threading
from typing import Generic, Optional, TypeVar

__all__ = ["RoutingTable"]

H = TypeVar("H")


class RoutingTable(Generic[H]):
    """Path -> handler. Every access holds ``_lock``; lookups return the
    handler, whose own lock then guards its state."""

    def __init__(self) -> None:
        self._handlers: dict[str, H] = {}
        self._lock = threading.Lock()

    def add(self, path: str, handler: H) -> None:
        """Register ``handler``; ``ValueError`` if ``path`` already has one."""
        with self._lock:
            if path in self._handlers:
                raise ValueError(f"a handler for path {path!r} already exists")
            self._handlers[path] = handler

    def remove(self, path: str, handler: H) -> bool:
        """Unregister ``handler`` if it is still the one for ``path``."""
        with self._lock:
            if self._handlers.get(path) is handler:
                del self._handlers[path]
                return True
            return False

    def lookup(self, path: str) -> Optional[H]:
        with self._lock:
            return self._handlers.get(path)

    def handlers(self) -> list[H]:
        """A snapshot of the registered handlers."""
        with self._lock:
            return list(self._handlers.values())
