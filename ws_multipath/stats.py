"""Counters an operator can watch: ``server.stats()`` and ``handler.stats()``.

Nothing here is on the per-message path. Each connection counts its own
traffic in plain int attributes, each incremented by the one thread that
may touch it at that moment, without a lock of its own:

- in: ``Incoming.messages_in`` / ``bytes_in``, by the thread that reads
  the connection (one at a time: ``reader.py``);
- out: ``Transport.messages_out`` / ``bytes_out``, under the transport's
  write lock, which every writer (``send()``, a broadcast's direct write,
  the flusher) already holds.

A handler adds a connection's counters to its totals when the connection
ends, and ``stats()`` adds the live connections' current values (read
without their locks: a value is at most one message stale). Bytes are
those on the wire after the handshake: frame headers, masks, control
frames and compression included, the 101 response excluded. Messages are
data messages (a fragmented one counts once).

Shape of ``handler.stats()`` (plain dicts, ints; json-serialisable)::

    {
        "path": "/chat",
        "open": 12,                     # open connections now
        "accepted": 340,                # upgrades answered with 101
        "refused": {403: {"origin": 2}, 401: {"verify_client": 5}},
        "messages_in": 1200, "messages_out": 56000,
        "bytes_in": 98000, "bytes_out": 4100000,
        "closes": {1000: 300, 1001: 20, 1006: 6, 1008: 1, 1009: 1},
        "drops": {"slow_consumer": 1, "ping_timeout": 0, ...},
    }

``refused`` maps the status sent to reason keys (``REFUSAL_KEYS``);
``closes`` maps final close codes (1006: the TCP connection ended without
a closing handshake) to counts; ``drops`` counts the connections the
server itself cut (``DROP_KEYS``), whatever their final code.

``server.stats()``: ``{"open": ..., "accepted": ..., "refused": {...},
"messages_in": ..., "messages_out": ..., "bytes_in": ..., "bytes_out": ...,
"closes": {...}, "drops": {...}, "paths": {path: handler.stats(), ...}}``,
where the totals are summed over the paths and the top level ``refused``
also holds what no handler saw (``no_handler``, ``not_websocket``,
``bad_request``). A closed handler's counts stay in its path's entry (a
counter never goes back), with ``open`` 0.
"""

from __future__ import annotations

import threading
from typing import Any, Iterable, Optional

__all__ = ["REFUSAL_KEYS", "DROP_KEYS", "drop_key", "Refusals", "HandlerTotals", "merge", "server_stats"]

#: Reason keys of refused upgrades and requests.
REFUSAL_KEYS = {
    "bad_upgrade": "the upgrade request is invalid (version, key, method...)",
    "closing": "the path or server is closing",
    "origin": "Origin not in allowed_origins",
    "verify_client": "verify_client refused it",
    "should_handle": "should_handle refused it (400)",
    "handshake_hook": "a handle_protocols or 'headers' hook refused it (HandshakeError)",
    "hook_error": "a hook failed (500)",
    "max_connections": "max_connections reached (503)",
    "no_handler": "no handler for the path (400)",
    "not_websocket": "plain HTTP without a wsgi_app (426)",
    "bad_request": "a malformed or oversized request head",
}

#: Why the server cut a connection itself.
DROP_KEYS = {
    "slow_consumer": "more than 16 MiB waiting for a client that does not read (1008)",
    "write_timeout": "a write blocked longer than write_timeout (1011)",
    "ping_timeout": "no pong within ping_timeout (1011)",
    "close_timeout": "no close frame within close_timeout after ours (1006)",
}

_COUNTERS = ("messages_in", "messages_out", "bytes_in", "bytes_out")


class Refusals:
    """Refusal counts by status and key; thread-safe (refusals are rare)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[int, dict[str, int]] = {}

    def add(self, status: int, key: str) -> None:
        with self._lock:
            by_key = self._counts.setdefault(status, {})
            by_key[key] = by_key.get(key, 0) + 1

    def snapshot(self) -> dict[int, dict[str, int]]:
        with self._lock:
            return {status: dict(keys) for status, keys in self._counts.items()}


class HandlerTotals:
    """The counts of one handler's ended connections (its ``_lock`` held)."""

    __slots__ = ("accepted", "messages_in", "messages_out", "bytes_in", "bytes_out", "closes", "drops")

    def __init__(self) -> None:
        self.accepted = 0
        self.messages_in = self.messages_out = self.bytes_in = self.bytes_out = 0
        self.closes: dict[int, int] = {}
        self.drops: dict[str, int] = {}

    def ended(self, messages_in: int, messages_out: int, bytes_in: int, bytes_out: int, code: int, drop: Any) -> None:
        self.messages_in += messages_in
        self.messages_out += messages_out
        self.bytes_in += bytes_in
        self.bytes_out += bytes_out
        self.closes[code] = self.closes.get(code, 0) + 1
        if drop is not None:
            self.drops[drop] = self.drops.get(drop, 0) + 1

    def snapshot(self, path: str, live: list[tuple[int, int, int, int]], refused: dict[int, dict[str, int]]) -> dict[str, Any]:
        out: dict[str, Any] = {"path": path, "open": len(live), "accepted": self.accepted, "refused": refused}
        for index, name in enumerate(_COUNTERS):
            out[name] = getattr(self, name) + sum(counts[index] for counts in live)
        out["closes"] = dict(self.closes)
        out["drops"] = dict(self.drops)
        return out


def merge(into: dict[str, Any], other: dict[str, Any]) -> None:
    """Add the counts of ``other`` (a ``stats()`` dict) to ``into``."""
    for name in ("open", "accepted", *_COUNTERS):
        into[name] = into.get(name, 0) + other[name]
    for name in ("closes", "drops"):
        target = into.setdefault(name, {})
        for key, count in other[name].items():
            target[key] = target.get(key, 0) + count
    refused = into.setdefault("refused", {})
    for status, keys in other["refused"].items():
        target = refused.setdefault(status, {})
        for key, count in keys.items():
            target[key] = target.get(key, 0) + count


def server_stats(handler_stats: Iterable[dict[str, Any]], refused: dict[int, dict[str, int]]) -> dict[str, Any]:
    """``server.stats()``: the handlers' ``stats()`` by path, their totals,
    and ``refused``, what no handler saw."""
    paths: dict[str, dict[str, Any]] = {}
    for one in handler_stats:
        if one["path"] in paths:  # a path served again after its handler closed
            merge(paths[one["path"]], one)
        else:
            paths[one["path"]] = one
    total: dict[str, Any] = {"open": 0, "accepted": 0, "refused": refused,
                             "messages_in": 0, "messages_out": 0, "bytes_in": 0, "bytes_out": 0, "closes": {}, "drops": {}}
    for one in paths.values():
        merge(total, one)
    total["paths"] = paths
    return total


#: ``WebSocket._dropped`` (the reason the server cut a connection) -> ``stats.DROP_KEYS``
_DROPS = {
    "write timeout": "write_timeout",
    "keepalive ping timeout": "ping_timeout",
    "close timeout": "close_timeout",
}


def drop_key(reason: Optional[str]) -> Optional[str]:
    if reason is None:
        return None
    if reason.startswith("send queue full"):
        return "slow_consumer"
    return _DROPS.get(reason, "other")
