"""Where each process's presence entries are kept for the others to read:
the ``PresenceStore`` interface and the in-process ``LocalPresenceStore``
(``LocalBroker``'s). ``redis_presence.py`` is the Redis one.

A store holds, per process (``node``, its ``server.node_id``): a version
number (the process's own counter, never going back) and its entries
(connection id -> the entry as JSON bytes), alive for ``ttl`` seconds
after the process's last ``write`` or ``refresh``. A process that stops
refreshing (killed, its host lost, cut from the store longer than ``ttl``)
has its data expire: the others then drop its entries, with ``'leave'``.

Only the presence thread of each server (``presence_sync.py``) calls a
store, so a store may block for a bounded time (the Redis one: its socket
timeouts) and raises ``errors`` when it cannot answer.
"""

from __future__ import annotations

import threading
import time
from typing import Iterable, Mapping, Optional

__all__ = ["PresenceStore", "LocalPresenceStore"]


class PresenceStore:
    """The interface. ``ttl``: seconds a process's data outlives its last
    refresh; ``interval``: seconds between a process's refreshes (and its
    reconciliations with the store); ``errors``: what a failed call raises."""

    ttl: float = 10.0
    interval: float = 2.0
    errors: tuple[type[BaseException], ...] = (OSError,)

    def write(self, node: str, version: int, put: Mapping[str, bytes], delete: Iterable[str], replace: bool) -> bool:
        """Set ``put``, remove ``delete`` and the version; with ``replace``,
        the node's entries become exactly ``put``. False (nothing written)
        when not replacing and the node's data is gone (it expired, or the
        store lost it): the caller then rewrites everything."""
        raise NotImplementedError

    def refresh(self, node: str) -> bool:
        """Keep the node's data alive for another ``ttl``; False when it is gone."""
        raise NotImplementedError

    def versions(self) -> dict[str, Optional[int]]:
        """Every node the store lists, with its version; None for one whose
        data is gone (it is forgotten by the same call)."""
        raise NotImplementedError

    def load(self, node: str) -> Optional[tuple[int, dict[str, bytes]]]:
        """The node's version and entries, or None when it has none."""
        raise NotImplementedError

    def remove(self, node: str) -> None:
        """The node left cleanly: forget its data now."""
        raise NotImplementedError


class LocalPresenceStore(PresenceStore):
    """The store of one process (servers sharing a ``LocalBroker``), with the
    same expiry as Redis's, on the monotonic clock. ``_lock`` guards ``_nodes``."""

    def __init__(self, ttl: float = 10.0, interval: float = 2.0) -> None:
        self.ttl = float(ttl)
        self.interval = float(interval)
        self._lock = threading.Lock()
        self._nodes: dict[str, tuple[int, dict[str, bytes], float]] = {}  # node -> (version, entries, expires at)

    def _live(self, node: str, now: float) -> Optional[tuple[int, dict[str, bytes], float]]:
        found = self._nodes.get(node)
        if found is not None and found[2] <= now:
            del self._nodes[node]
            return None
        return found

    def write(self, node: str, version: int, put: Mapping[str, bytes], delete: Iterable[str], replace: bool) -> bool:
        now = time.monotonic()
        with self._lock:
            found = self._live(node, now)
            if found is None and not replace:
                return False
            entries = {} if replace or found is None else found[1]
            entries.update(put)
            for key in delete:
                entries.pop(key, None)
            self._nodes[node] = (version, entries, now + self.ttl)
            return True

    def refresh(self, node: str) -> bool:
        now = time.monotonic()
        with self._lock:
            found = self._live(node, now)
            if found is None:
                return False
            self._nodes[node] = (found[0], found[1], now + self.ttl)
            return True

    def versions(self) -> dict[str, Optional[int]]:
        now = time.monotonic()
        with self._lock:
            result: dict[str, Optional[int]] = {}
            for node in list(self._nodes):
                found = self._live(node, now)
                result[node] = None if found is None else found[0]
            return result

    def load(self, node: str) -> Optional[tuple[int, dict[str, bytes]]]:
        with self._lock:
            found = self._live(node, time.monotonic())
            return None if found is None else (found[0], dict(found[1]))

    def remove(self, node: str) -> None:
        with self._lock:
            self._nodes.pop(node, None)
