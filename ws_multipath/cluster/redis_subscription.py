"""The Redis broker's subscription: one thread per server, owning its
pub/sub connection (from the broker's subscriber client, never one of the
publishing pool's). See ``redis_broker.py`` for what it does when Redis
fails."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Iterable, Optional

from ..log import logger
from .broker import Deliver, Subscription

if TYPE_CHECKING:
    from .redis_broker import RedisBroker

__all__ = ["RedisSubscription"]


class RedisSubscription(Subscription):
    POLL = 0.2  # seconds per read: how soon changes and close() are seen

    def __init__(self, broker: "RedisBroker", deliver: Deliver) -> None:
        self._broker = broker
        self._deliver = deliver
        self._lock = threading.Lock()
        self._channels: frozenset[str] = frozenset()
        self._patterns: frozenset[str] = frozenset()
        self._changed = threading.Event()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._ready.set()  # nothing to subscribe to yet
        self._confirmed: set[tuple[str, str]] = set()
        self._thread = threading.Thread(target=self._run, name="ws_multipath-cluster", daemon=True)
        self._thread.start()

    def update(self, channels: Iterable[str], patterns: Iterable[str]) -> None:
        with self._lock:
            self._channels = frozenset(channels)
            self._patterns = frozenset(patterns)
            if self._channels or self._patterns:
                self._ready.clear()
            else:
                self._ready.set()
        self._changed.set()

    def wait_ready(self, timeout: Optional[float] = None) -> bool:
        return self._ready.wait(timeout)

    def close(self) -> None:
        with self._lock:
            if self._stop.is_set():
                return
            self._stop.set()
        self._broker._unsubscribed()
        self._changed.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(self.POLL + self._broker.health_timeout + 1.0)

    # -- the thread -------------------------------------------------------------

    def _wanted(self) -> tuple[frozenset[str], frozenset[str]]:
        with self._lock:
            self._changed.clear()
            return self._channels, self._patterns

    def _run(self) -> None:
        broker = self._broker
        backoff = 0.1
        lost_at: Optional[float] = None
        while not self._stop.is_set():
            channels, patterns = self._wanted()
            if not channels and not patterns:
                self._changed.wait()
                continue
            pubsub = broker._subscriber_client.pubsub()
            try:
                self._subscribe(pubsub, set(), set(), channels, patterns)
                if lost_at is not None:
                    logger.warning("cluster: Redis subscription restored after %.1f s without it; messages published meanwhile were not delivered here", time.monotonic() - lost_at)
                    lost_at = None
                self._serve(pubsub, channels, patterns)
                backoff = 0.1
            except broker._errors as exc:
                self._ready.clear()
                if lost_at is None:
                    lost_at = time.monotonic()
                    logger.warning("cluster: Redis subscription lost (%s: %s); local delivery goes on, reconnecting", type(exc).__name__, exc)
                else:
                    logger.debug("cluster: reconnecting to Redis failed: %s", exc)
            except Exception:  # noqa: BLE001 - the thread must not die
                self._ready.clear()
                logger.exception("cluster: the subscriber failed; restarting it")
                if lost_at is None:
                    lost_at = time.monotonic()
            finally:
                self._confirmed.clear()
                _close_quietly(pubsub)
            if self._stop.wait(backoff):
                break
            backoff = min(backoff * 2, broker.backoff_max)

    def _subscribe(self, pubsub: Any, have_c: set[str], have_p: set[str], channels: frozenset[str], patterns: frozenset[str]) -> None:
        new_c, gone_c = channels - have_c, have_c - channels
        new_p, gone_p = patterns - have_p, have_p - patterns
        if new_c:
            pubsub.subscribe(*new_c)
        if new_p:
            pubsub.psubscribe(*new_p)
        if gone_c:
            pubsub.unsubscribe(*gone_c)
        if gone_p:
            pubsub.punsubscribe(*gone_p)

    def _serve(self, pubsub: Any, channels: frozenset[str], patterns: frozenset[str]) -> None:
        broker = self._broker
        wanted = {("subscribe", c) for c in channels} | {("psubscribe", p) for p in patterns}
        last_seen = time.monotonic()
        ping_sent: Optional[float] = None
        while not self._stop.is_set():
            if self._changed.is_set():
                new_channels, new_patterns = self._wanted()
                self._subscribe(pubsub, set(channels), set(patterns), new_channels, new_patterns)
                channels, patterns = new_channels, new_patterns
                wanted = {("subscribe", c) for c in channels} | {("psubscribe", p) for p in patterns}
                if not wanted:
                    return  # nothing left: the outer loop waits for a change
            message = pubsub.get_message(timeout=self.POLL)
            now = time.monotonic()
            if message is None:
                if ping_sent is not None:
                    if now - ping_sent > broker.health_timeout:
                        raise broker._redis.TimeoutError(f"no reply to PING within {broker.health_timeout:g} s")
                elif now - last_seen > broker.health_interval:
                    pubsub.ping()
                    ping_sent = now
                continue
            last_seen, ping_sent = now, None
            kind = message["type"]
            if kind in ("message", "pmessage"):
                pattern = message["pattern"]
                try:
                    self._deliver(_text(message["channel"]), None if pattern is None else _text(pattern), message["data"])
                except Exception:  # noqa: BLE001 - one bad message must not stop the others
                    logger.exception("cluster: delivering a message failed")
            elif kind in ("subscribe", "psubscribe"):
                self._confirmed.add((kind, _text(message["channel"])))
                if wanted <= self._confirmed:
                    with self._lock:
                        if not self._changed.is_set():
                            self._ready.set()
            elif kind in ("unsubscribe", "punsubscribe"):
                self._confirmed.discard(("p" * (kind[0] == "p") + "subscribe", _text(message["channel"])))


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _close_quietly(pubsub: Any) -> None:
    try:
        pubsub.close()  # disconnects its connection: no socket outlives it
    except Exception:  # noqa: BLE001
        pass
