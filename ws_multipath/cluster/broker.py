"""The broker interface, the in-process broker and ``make_broker``.

A broker carries the cluster's messages (``message.py``) between servers:
``publish(channel, payload)`` from any thread, and ``subscribe(deliver)``,
which returns a ``Subscription`` whose channels and glob patterns the server
keeps up to date and which calls ``deliver(channel, pattern, payload)`` on
one thread of its own (never one per connection). ``deliver`` must not
block: the server's only posts to its clients' queues.

Without a broker (``MultipathServer(broker=None)``, the default) a broadcast
goes straight to the local clients, as it always did: no broker object, no
encoding. ``LocalBroker`` is the same interface in one process (several
servers of one process sharing broadcasts, and the tests); ``RedisBroker``
(``redis_broker.py``) spans processes and hosts.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, Union

from ..log import logger
from .message import DEFAULT_PREFIX, compile_glob

if TYPE_CHECKING:
    from .presence_store import PresenceStore

__all__ = ["Broker", "Subscription", "LocalBroker", "make_broker"]

Deliver = Callable[[str, Optional[str], bytes], None]


class Subscription:
    """What a server listens to. ``update`` sets the whole desired set;
    ``wait_ready`` waits until the broker confirmed it; ``close`` stops the
    delivery (and its thread) within a bounded time."""

    def update(self, channels: Iterable[str], patterns: Iterable[str]) -> None:
        raise NotImplementedError

    def wait_ready(self, timeout: Optional[float] = None) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class Broker:
    """The interface. ``prefix`` starts every channel name."""

    prefix: str = DEFAULT_PREFIX

    def publish(self, channel: str, payload: bytes) -> bool:
        """Send ``payload`` to the subscribers of ``channel``; False if it
        was dropped (the broker is down, or too busy to take it in time).
        Never raises for an outage, never blocks for long."""
        raise NotImplementedError

    def subscribe(self, deliver: Deliver) -> Subscription:
        raise NotImplementedError

    def presence_store(self) -> Optional["PresenceStore"]:
        """Where the servers sharing this broker keep their presence entries
        (``presence_store.py``), one object per broker; None (this default):
        each server's presence is its own process's."""
        return None

    def descriptors(self) -> int:
        """The most file descriptors it may hold at once (its connections):
        the server's capacity estimate keeps them free. 0 by default."""
        return 0

    def close(self) -> None:
        """Release connections (the broker's creator calls it)."""


class LocalBroker(Broker):
    """The in-process broker: ``publish`` calls every subscriber's
    ``deliver`` on the publishing thread (deliveries only post to queues,
    so this does not block), in publish order. Its presence store is in
    memory, with the same expiry as Redis's (``presence_ttl``: seconds a
    server's entries outlive its last refresh, every ``presence_interval``)."""

    def __init__(self, prefix: str = DEFAULT_PREFIX, *, presence_ttl: float = 10.0, presence_interval: float = 2.0) -> None:
        from .presence_store import LocalPresenceStore

        self.prefix = prefix
        self._lock = threading.Lock()
        self._subscriptions: list["_LocalSubscription"] = []
        self._presence = LocalPresenceStore(presence_ttl, presence_interval)

    def presence_store(self) -> Optional["PresenceStore"]:
        return self._presence

    def publish(self, channel: str, payload: bytes) -> bool:
        with self._lock:
            subscriptions = list(self._subscriptions)
        for subscription in subscriptions:
            subscription._offer(channel, payload)
        return True

    def subscribe(self, deliver: Deliver) -> Subscription:
        subscription = _LocalSubscription(self, deliver)
        with self._lock:
            self._subscriptions.append(subscription)
        return subscription

    def _remove(self, subscription: "_LocalSubscription") -> None:
        with self._lock:
            if subscription in self._subscriptions:
                self._subscriptions.remove(subscription)


class _LocalSubscription(Subscription):
    def __init__(self, broker: LocalBroker, deliver: Deliver) -> None:
        self._broker = broker
        self._deliver = deliver
        self._channels: frozenset[str] = frozenset()
        self._patterns: tuple[tuple[str, Any], ...] = ()

    def update(self, channels: Iterable[str], patterns: Iterable[str]) -> None:
        self._channels = frozenset(channels)
        self._patterns = tuple((p, compile_glob(p)) for p in sorted(set(patterns)))

    def wait_ready(self, timeout: Optional[float] = None) -> bool:
        return True

    def close(self) -> None:
        self._broker._remove(self)

    def _offer(self, channel: str, payload: bytes) -> None:
        # as Redis: once per matching subscription (the server dedupes)
        try:
            if channel in self._channels:
                self._deliver(channel, None, payload)
            for pattern, glob in self._patterns:
                if glob.matches(channel):
                    self._deliver(channel, pattern, payload)
        except Exception:  # noqa: BLE001 - a subscriber's failure is not the publisher's
            logger.exception("cluster: delivering a message failed")


def make_broker(spec: Union[str, Broker]) -> tuple[Broker, bool]:
    """``(broker, owned)`` for a URL (``redis://``, ``rediss://``,
    ``unix://``: a ``RedisBroker`` the caller owns and closes) or a broker
    object (used as is, closed by whoever made it)."""
    if isinstance(spec, Broker):
        return spec, False
    if isinstance(spec, str):
        scheme = spec.split("://", 1)[0].lower() if "://" in spec else ""
        if scheme in ("redis", "rediss", "unix"):
            from .redis_broker import RedisBroker

            return RedisBroker(spec), True
        raise ValueError(f"unknown broker URL {spec!r}: use redis://, rediss:// or unix://, or pass a broker object")
    raise TypeError(f"broker must be a URL or a Broker, not {type(spec).__name__}")
