"""The presence thread of a server with a broker (one per server, named
``ws_multipath-presence``): it is the only one to talk to the presence
store. Each round it

- writes this process's changed entries (``Presence.take_pending``) with
  the next version and publishes them on ``<prefix>@presence`` (one
  message per round, whatever the number of changes);
- applies the other processes' messages, in order: a message whose
  version follows the one known for its process is applied as is; an
  older one is ignored (already loaded); a gap (a message lost: pub/sub is
  at-most-once), a ``reset`` or an unknown process makes it reload that
  process's entries from the store and apply the difference;
- every ``store.interval`` seconds: refreshes this process's data (a
  failed refresh, its data gone, rewrites it all, with ``reset``) and
  compares every process's version in the store with the one known here,
  reloading the ones that differ; a process whose data is missing for
  ``2 * interval`` (its TTL expired: it died) is dropped, its entries leave.

So a dead process's entries leave within ``ttl + 3 * interval`` (10 + 6 s
by default), a clean close within a round trip, and a lost message costs
at most one interval of staleness. The waiting for this grace lets the
live processes rewrite their data after Redis restarted empty before
anyone concludes they died.

``_known``, ``_missing`` and ``_version`` belong to the thread; ``_inbox``
is a deque appended by the subscriber's thread (``offer``) and emptied
here; ``_wake`` is the thread's alarm.
"""

from __future__ import annotations

import collections
import json
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

from ..log import logger
from .message import ClusterMessage, encode_presence

if TYPE_CHECKING:
    from .presence import Presence, PresenceEntry
    from .presence_store import PresenceStore

__all__ = ["PresenceSync"]

INBOX_LIMIT = 10_000  # messages from other processes waiting; past it they are dropped and everything is compared at once


class PresenceSync:
    def __init__(self, presence: "Presence", node: str, store: "PresenceStore", publish: Callable[[bytes], bool]) -> None:
        self._presence = presence
        self._node = node
        self._store = store
        self._publish = publish
        self._version = 0
        self._rewrite = True  # the first round writes everything (the store has nothing of ours)
        self._known: dict[str, int] = {}
        self._missing: dict[str, float] = {}
        self._inbox: "collections.deque[ClusterMessage]" = collections.deque()
        self._overflow = False
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._down_since: Optional[float] = None
        self._thread = threading.Thread(target=self._run, name="ws_multipath-presence", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def offer(self, message: ClusterMessage) -> None:
        """A presence message of another process (the subscriber's thread: no blocking)."""
        if len(self._inbox) >= INBOX_LIMIT:
            self._overflow = True
        else:
            self._inbox.append(message)
        self._wake.set()

    def close(self) -> None:
        """Stop the thread, then leave the store and tell the others (bounded
        by the store's timeouts); the others drop this process's entries."""
        self._stop.set()
        self._wake.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(10)
        try:
            self._store.remove(self._node)
            self._publish(encode_presence(self._node, self._version + 1, [], gone=True))
        except self._store.errors as exc:
            logger.info("presence: could not leave the store on close (%s); the others expire this process after its TTL", exc)

    # -- the thread -------------------------------------------------------------

    def _run(self) -> None:
        store = self._store
        next_round = 0.0
        while not self._stop.is_set():
            self._wake.wait(max(0.0, next_round - time.monotonic()))
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                if not self._rewrite:
                    self._flush()
                self._receive()
                if time.monotonic() >= next_round:
                    next_round = time.monotonic() + store.interval
                    self._round()
                if self._down_since is not None:
                    logger.warning("presence: the store answers again after %.1f s", time.monotonic() - self._down_since)
                    self._down_since = None
            except store.errors as exc:
                self._rewrite = True  # what we wrote meanwhile may be lost: all again, once it answers
                if self._down_since is None:
                    self._down_since = time.monotonic()
                    logger.warning("presence: the store does not answer (%s: %s); presence is this process's own until it does", type(exc).__name__, exc)
                next_round = min(next_round, time.monotonic() + store.interval)
            except Exception:  # noqa: BLE001 - the thread must not die
                logger.exception("presence: a round failed")
                self._rewrite = True

    def _flush(self) -> None:
        pending = self._presence.take_pending()
        if not pending:
            return
        put = {entry_id: _encoded(entry) for entry_id, entry in pending.items() if entry is not None}
        gone = [entry_id for entry_id, entry in pending.items() if entry is None]
        self._version += 1
        if not self._store.write(self._node, self._version, put, gone, replace=False):
            self._rewrite_all()
            return
        changes: list[Any] = [["j", entry_id, *json.loads(value)] for entry_id, value in put.items()]
        changes += [["l", entry_id] for entry_id in gone]
        self._publish(encode_presence(self._node, self._version, changes))

    def _rewrite_all(self) -> None:
        self._rewrite = True
        entries = self._presence.local_entries()
        self._version += 1
        self._store.write(self._node, self._version, {entry.id: _encoded(entry) for entry in entries}, (), replace=True)
        self._rewrite = False
        self._publish(encode_presence(self._node, self._version, [], reset=True))

    def _receive(self) -> None:
        reload: set[str] = set()
        if self._overflow:
            self._overflow = False
            self._inbox.clear()
            reload.update(self._presence.remote_nodes())
        while self._inbox:
            message = self._inbox.popleft()
            node = message.origin
            if node is None or node == self._node:
                continue
            if message.gone:
                self._forget(node)
                reload.discard(node)
                continue
            known = self._known.get(node)
            version = message.presence or 0
            if node in reload:
                continue
            if message.reset or known is None or version > known + 1:
                reload.add(node)
            elif version == known + 1:
                self._known[node] = version
                self._apply_changes(node, message.data)
        for node in reload:
            self._reload(node)

    def _apply_changes(self, node: str, data: Any) -> None:
        from .presence import PresenceEntry

        try:
            changes = json.loads(data)
            joined = [PresenceEntry(c[1], c[3], c[2], c[4], node) for c in changes if c[0] == "j"]
            left = [c[1] for c in changes if c[0] == "l"]
        except (ValueError, TypeError, IndexError, KeyError):
            logger.warning("presence: a malformed message from %s; reloading its entries", node)
            self._reload(node)
            return
        self._presence.apply(node, joined, left)

    def _reload(self, node: str) -> None:
        from .presence import PresenceEntry

        loaded = self._store.load(node)
        if loaded is None:
            return  # gone: the next round sees it missing
        version, raw = loaded
        entries = []
        for entry_id, value in raw.items():
            try:
                route, path, info = json.loads(value)
                entries.append(PresenceEntry(entry_id, path, route, info, node))
            except (ValueError, TypeError):
                continue
        have = self._presence.remote_ids(node)
        left = [entry_id for entry_id in have if entry_id not in raw]
        self._presence.apply(node, entries, left)
        self._known[node] = version
        self._missing.pop(node, None)

    def _round(self) -> None:
        store = self._store
        if self._rewrite or not store.refresh(self._node):
            self._rewrite_all()
        versions = store.versions()
        now = time.monotonic()
        for node, version in versions.items():
            if node == self._node or version is None:
                continue
            self._missing.pop(node, None)
            if self._known.get(node) != version:
                self._reload(node)
        for node in set(self._known) | set(self._presence.remote_nodes()):
            if versions.get(node) is None:
                since = self._missing.setdefault(node, now)
                if now - since >= 2 * store.interval:
                    logger.info("presence: process %s is gone (no data in the store for %.1f s); its entries leave", node, now - since)
                    self._forget(node)

    def _forget(self, node: str) -> None:
        self._known.pop(node, None)
        self._missing.pop(node, None)
        self._presence.drop_node(node)


def _encoded(entry: "PresenceEntry") -> bytes:
    return json.dumps(entry.as_json(), separators=(",", ":"), ensure_ascii=False).encode("utf-8")
