"""Presence: who is connected to the handlers made with ``presence=True``,
in this process and in every process sharing its broker.

``Presence`` is a server's view: an index of entries (its own connections'
and a replica of the other processes'), the ``'join'`` and ``'leave'``
events, and, with a broker that has a presence store, a ``PresenceSync``
(``presence_sync.py``) on a thread of its own that writes this process's
entries to the store, publishes their changes, applies the others' and
expires the processes that went silent.

A query (``handler.presence()``) reads the local index: no I/O, a lock and
a copy. Nothing here runs per message.

Threads: the connection threads change local entries (``enter``,
``update``, ``leave``); the presence thread changes remote ones; the
listeners of ``'join'`` and ``'leave'`` run on one dispatcher thread, in
the order the changes were made, never with a lock held, so a slow
listener delays other listeners, never the server or its heartbeat.
"""

from __future__ import annotations

import json
import queue
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

from ..log import logger

if TYPE_CHECKING:
    from ..handler import WebSocketHandler
    from ..sync.connection import WebSocket
    from .presence_store import PresenceStore

__all__ = ["PresenceEntry", "Presence", "INFO_LIMIT", "check_info"]

INFO_LIMIT = 1024  # bytes of an entry's info, as compact JSON
ENTRY_LIMIT = 100_000  # entries one process writes to the store (more stay local, with a warning)
EVENT_LIMIT = 200_000  # events waiting for the listeners; past it they are dropped (the index stays right)


@dataclass(frozen=True)
class PresenceEntry:
    """One connection in presence: ``id`` (its ``ws.id``), ``path`` (the
    path it connected to, ``/rooms/lobby``), ``route`` (its handler's path
    or pattern, ``/rooms/<room>``), ``info`` (what it gave
    ``ws.set_presence``, ``{}`` until then; do not mutate it) and ``node``
    (the ``server.node_id`` of the process holding it; None without a broker)."""

    id: str
    path: str
    route: str
    info: dict[str, Any]
    node: Optional[str] = None

    def __hash__(self) -> int:  # info is a dict: hash by identity of the connection
        return hash((self.id, self.node))

    def as_json(self) -> list[Any]:
        return [self.route, self.path, self.info]


def check_info(info: Any) -> bytes:
    """``info`` as compact JSON; ``TypeError``/``ValueError`` if it is not a
    dict of str keys that JSON can carry, or is over ``INFO_LIMIT`` bytes."""
    if not isinstance(info, dict):
        raise TypeError(f"presence info must be a dict, not {type(info).__name__}")
    try:
        encoded = json.dumps(info, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"presence info must be JSON-serialisable: {exc}") from None
    if not all(isinstance(key, str) for key in info):
        raise TypeError("presence info keys must be str")
    if len(encoded) > INFO_LIMIT:
        raise ValueError(f"presence info is {len(encoded)} bytes of JSON, more than {INFO_LIMIT}")
    return encoded


class Presence:
    """A server's presence. ``_lock`` guards ``_index``, ``_local``,
    ``_remote``, ``_pending``, the connections' presence state
    (``ws._presence_info``, ``_presence_in``, ``_presence_gone``) and
    ``_handlers``; events are queued under it (so in order) and dispatched
    without it."""

    def __init__(self, node: Optional[str], store: Optional["PresenceStore"], publish: Optional[Callable[[bytes], bool]]) -> None:
        self.node = node
        self._lock = threading.Lock()
        self._index: dict[str, dict[str, dict[str, PresenceEntry]]] = {}  # route -> path -> id -> entry
        self._local: dict[str, PresenceEntry] = {}
        self._remote: dict[str, dict[str, PresenceEntry]] = {}  # node -> id -> entry
        self._pending: dict[str, Optional[PresenceEntry]] = {}  # local changes not yet in the store
        self._handlers: dict[str, "WebSocketHandler"] = {}
        self._closed = False
        self._warned_full = False
        self._events: "queue.SimpleQueue[Optional[tuple[str, PresenceEntry]]]" = queue.SimpleQueue()
        self._queued = 0  # events queued, not yet dispatched (guarded by _lock)
        self._dispatcher = threading.Thread(target=self._dispatch, name="ws_multipath-presence-events", daemon=True)
        self._dispatcher.start()
        self.sync = None
        if store is not None and node is not None and publish is not None:
            from .presence_sync import PresenceSync

            self.sync = PresenceSync(self, node, store, publish)

    # -- handlers ---------------------------------------------------------------

    def add_handler(self, handler: "WebSocketHandler") -> None:
        with self._lock:
            self._handlers[handler.path] = handler

    def remove_handler(self, handler: "WebSocketHandler") -> None:
        with self._lock:
            if self._handlers.get(handler.path) is handler:
                del self._handlers[handler.path]

    # -- local connections (their threads) ----------------------------------------

    def enter(self, ws: "WebSocket", route: str) -> None:
        """``ws`` is present from now (its ``'connection'`` listeners ran)."""
        with self._lock:
            if ws._presence_gone or ws._presence_in or self._closed:
                return
            ws._presence_in = True
            self._set_local(PresenceEntry(ws.id, ws.path, route, ws._presence_info or {}, self.node))

    def update(self, ws: "WebSocket", info: dict[str, Any]) -> None:
        info = json.loads(check_info(info))  # checked, and a copy nobody else holds
        with self._lock:
            ws._presence_info = info
            if ws._presence_in and not ws._presence_gone and not self._closed:
                old = self._local[ws.id]
                self._set_local(PresenceEntry(old.id, old.path, old.route, info, self.node))

    def leave(self, ws: "WebSocket") -> None:
        with self._lock:
            ws._presence_gone = True
            if not ws._presence_in:
                return
            entry = self._local.pop(ws.id, None)
            if entry is None:
                return
            self._unindex(entry)
            self._queue("leave", entry)
            if not self._closed:
                self._pending[entry.id] = None
        if self.sync is not None:
            self.sync.wake()

    def _set_local(self, entry: PresenceEntry) -> None:  # with _lock held
        self._local[entry.id] = entry
        self._index_entry(entry)
        self._queue("join", entry)
        if self.sync is not None:
            if len(self._local) <= ENTRY_LIMIT:
                self._pending[entry.id] = entry
                self.sync.wake()
            elif not self._warned_full:
                self._warned_full = True
                logger.warning("presence: more than %d local entries; the others are not shared with other processes", ENTRY_LIMIT)

    def take_pending(self) -> dict[str, Optional[PresenceEntry]]:
        with self._lock:
            pending, self._pending = self._pending, {}
            return pending

    def local_entries(self) -> list[PresenceEntry]:
        with self._lock:
            self._pending.clear()  # all of them go now
            return list(self._local.values())[:ENTRY_LIMIT]

    # -- remote entries (the presence thread) -----------------------------------

    def remote_ids(self, node: str) -> dict[str, PresenceEntry]:
        with self._lock:
            return dict(self._remote.get(node, ()))

    def apply(self, node: str, joined: list[PresenceEntry], left: list[str]) -> None:
        """Another process's changes: ``joined`` entries set (a changed info
        joins again), ``left`` ids gone. Unknown ids leaving are ignored."""
        with self._lock:
            entries = self._remote.setdefault(node, {})
            for entry_id in left:
                entry = entries.pop(entry_id, None)
                if entry is not None:
                    self._unindex(entry)
                    self._queue("leave", entry)
            for entry in joined:
                old = entries.get(entry.id)
                if old == entry:
                    continue
                if old is not None:
                    self._unindex(old)
                entries[entry.id] = entry
                self._index_entry(entry)
                self._queue("join", entry)
            if not entries:
                del self._remote[node]

    def drop_node(self, node: str) -> None:
        """A process left or went silent: all its entries leave."""
        with self._lock:
            entries = self._remote.pop(node, {})
            for entry in entries.values():
                self._unindex(entry)
                self._queue("leave", entry)

    def remote_nodes(self) -> list[str]:
        with self._lock:
            return list(self._remote)

    # -- the index --------------------------------------------------------------

    def _index_entry(self, entry: PresenceEntry) -> None:
        self._index.setdefault(entry.route, {}).setdefault(entry.path, {})[entry.id] = entry

    def _unindex(self, entry: PresenceEntry) -> None:
        paths = self._index.get(entry.route)
        if paths is None:
            return
        ids = paths.get(entry.path)
        if ids is not None and ids.get(entry.id) is not None:
            del ids[entry.id]
            if not ids:
                del paths[entry.path]
                if not paths:
                    del self._index[entry.route]

    def entries(self, route: str, path: Optional[str]) -> list[PresenceEntry]:
        with self._lock:
            paths = self._index.get(route, {})
            if path is not None:
                return list(paths.get(path, {}).values())
            return [entry for ids in paths.values() for entry in ids.values()]

    def count(self, route: str, path: Optional[str]) -> int:
        with self._lock:
            paths = self._index.get(route, {})
            if path is not None:
                return len(paths.get(path, ()))
            return sum(len(ids) for ids in paths.values())

    # -- events -----------------------------------------------------------------

    def _queue(self, event: str, entry: PresenceEntry) -> None:  # with _lock held
        if entry.route not in self._handlers:
            return  # no handler of this route here: nobody listens
        if self._queued >= EVENT_LIMIT:
            logger.warning("presence: %d events wait for the 'join'/'leave' listeners; one dropped (a listener blocks?)", self._queued)
            return
        self._queued += 1
        self._events.put((event, entry))

    def _dispatch(self) -> None:
        while True:
            item = self._events.get()
            if item is None:
                return
            event, entry = item
            with self._lock:
                self._queued -= 1
                handler = self._handlers.get(entry.route)
            if handler is not None:
                handler.emit(event, entry)  # the emitter sends a listener's exception to 'error'

    # -- closing ----------------------------------------------------------------

    def close(self) -> None:
        """The server closes: leave the cluster (the others drop this
        process's entries at once); local leaves still fire as connections end."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._pending.clear()
        if self.sync is not None:
            self.sync.close()

    def stop(self) -> None:
        """The server closed: end the dispatcher once it emptied its queue."""
        self.close()
        self._events.put(None)
        if threading.current_thread() is not self._dispatcher:
            self._dispatcher.join(5)
