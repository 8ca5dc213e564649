"""``RedisBroker``: the cluster over Redis pub/sub (the ``redis`` extra: ``pip install "/path/to/ws_multipath[redis]"``, or ``pip install redis``).

Publishing runs on the caller's thread, one ``PUBLISH`` per broadcast, with
short socket timeouts and no retry, on at most ``pool_size`` connections at
once (16 by default): a burst of publishes beyond that waits in line for a
free connection, up to ``pool_timeout``, instead of failing. A publish that
waited that long is dropped and logged as "busy" (Redis answers, but not
fast enough for this many publishers; at most one warning a minute), never
as an outage. When a publish itself fails, the broker counts an outage: one
warning, and the next ``retry_interval`` seconds of publishes are dropped at
once (no connect attempt, no wait), then one probe, and so on. The end of
the outage is logged with the number of messages dropped.

Subscribing runs on one thread per subscription (per server), which owns
its pub/sub connection outright (not one of the publishing pool's): it
applies the server's changes of channels, reads with a short poll, sends
``PING`` after ``health_interval`` seconds of silence and gives the
connection up when no reply came within ``health_timeout`` (a half-open
socket is noticed, not waited on forever), then reconnects with capped
exponential backoff, resubscribes everything and logs how long it was deaf.
Whatever happens to Redis, the thread survives (redis-py's ``run_in_thread``
dies on a failed reconnect), and an outage opens no new socket or thread.

So the broker holds at most ``pool_size`` + one per subscription
descriptors (``descriptors()``), which the server's capacity estimate keeps
free.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Optional

from ..log import logger
from .broker import Broker, Deliver, Subscription
from .message import DEFAULT_PREFIX
from .redis_subscription import RedisSubscription

__all__ = ["RedisBroker"]

_INSTALL_HINT = "the Redis broker needs the 'redis' package: pip install redis (or install ws_multipath with its [redis] extra)"


def _import_redis() -> Any:
    try:
        import redis
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    return redis


class RedisBroker(Broker):
    """``RedisBroker(url=None, *, client=None, prefix="ws_multipath:",
    socket_timeout=1.0, connect_timeout=1.0, health_interval=2.0,
    health_timeout=2.0, retry_interval=0.5, backoff_max=5.0, pool_size=16,
    pool_timeout=2.0, presence_ttl=10.0, presence_interval=2.0)``

    - ``url``: ``redis://[:password@]host:port/db``, ``rediss://`` (TLS),
      ``unix:///path``; or ``client``: a ``redis.Redis`` you configured
      (TLS options, ACL user, ...; ``decode_responses`` must be False).
      With ``client`` the broker does not close it.
    - ``prefix``: starts every channel name.
    - ``socket_timeout`` / ``connect_timeout``: how long one publish, or
      one read of the subscriber, may wait for Redis (URL only).
    - ``health_interval`` / ``health_timeout``: the subscriber pings after
      this much silence and gives a connection up when the reply takes
      longer.
    - ``retry_interval``: during an outage, publishes are dropped at once
      for this long between attempts.
    - ``backoff_max``: the subscriber's reconnect delay doubles from 0.1 s
      up to this.
    - ``pool_size``: publishes on the wire at once, so connections (and
      descriptors) for publishing. With ``client``, at most one less than
      its pool's ``max_connections`` (the subscription takes one of them).
    - ``pool_timeout``: how long a publish waits for a free connection when
      all are busy; past that it is dropped (a "busy" warning, not an
      outage). Keep it above ``socket_timeout``: a publish holds its
      connection at most ``connect_timeout`` + ``socket_timeout``.
    - ``presence_ttl`` / ``presence_interval``: a server refreshes its
      presence data every ``presence_interval`` seconds (2); data not
      refreshed for ``presence_ttl`` (10) expires, and the other servers
      drop its entries within ``2 * presence_interval`` more
      (``redis_presence.py``, docs/scaling.rst).

    ``_lock`` guards the outage and busy state and counters, and the making
    of the presence store (``presence_store()``); ``_slots`` (a
    semaphore of ``pool_size``) is held by each publish while on the wire,
    and by nothing else.
    """

    def __init__(
        self,
        url: Optional[str] = None,
        *,
        client: Any = None,
        prefix: str = DEFAULT_PREFIX,
        socket_timeout: float = 1.0,
        connect_timeout: float = 1.0,
        health_interval: float = 2.0,
        health_timeout: float = 2.0,
        retry_interval: float = 0.5,
        backoff_max: float = 5.0,
        pool_size: int = 16,
        pool_timeout: float = 2.0,
        presence_ttl: float = 10.0,
        presence_interval: float = 2.0,
    ) -> None:
        redis = _import_redis()
        if (url is None) == (client is None):
            raise TypeError("RedisBroker needs exactly one of url and client")
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
        if not isinstance(pool_size, int) or pool_size < 1:
            raise ValueError(f"pool_size must be a positive int, not {pool_size!r}")
        self.prefix = prefix
        self._redis = redis
        if client is None:
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            options = dict(socket_timeout=socket_timeout, socket_connect_timeout=connect_timeout, socket_keepalive=True,
                           health_check_interval=0, retry=Retry(NoBackoff(), 0))
            client = redis.Redis.from_url(url, max_connections=pool_size, **options)
            self._subscriber_client = redis.Redis.from_url(url, **options)  # its own pool: a burst cannot starve it
            self._owns_client = True
        else:
            self._owns_client = False
            if client.connection_pool.connection_kwargs.get("decode_responses"):
                raise ValueError("the Redis client must have decode_responses=False (binary messages are bytes)")
            pool_size = _fit_pool(pool_size, client)
            if client.connection_pool.connection_kwargs.get("socket_timeout") is None:
                logger.warning("cluster: the Redis client given has no socket_timeout: a publish to a Redis that stops answering "
                               "holds its connection until TCP gives up (pool_timeout bounds the others' wait)")
            self._subscriber_client = client
        self.client = client
        self.url = url
        self.pool_size = pool_size
        self.pool_timeout = float(pool_timeout)
        self.health_interval = float(health_interval)
        self.health_timeout = float(health_timeout)
        self.retry_interval = float(retry_interval)
        self.backoff_max = float(backoff_max)
        self._errors = (redis.RedisError, OSError)
        self._pool_full = getattr(redis.exceptions, "MaxConnectionsError", ())  # redis-py >= 5.1; an empty tuple catches nothing
        self._slots = threading.BoundedSemaphore(pool_size)
        self._lock = threading.Lock()
        self._down_since: Optional[float] = None
        self._retry_at = 0.0
        self._dropped = 0
        self._probing = False
        self._finished = 0  # publishes that ended: written without the lock, only compared for a change
        self._busy_dropped = 0
        self._busy_logged_at: Optional[float] = None
        self._subscriptions = 0
        if not presence_interval > 0 or not presence_ttl >= 2 * presence_interval:
            raise ValueError("presence_interval must be > 0 and presence_ttl at least twice presence_interval")
        self._presence_ttl = float(presence_ttl)
        self._presence_interval = float(presence_interval)
        self._presence: Any = None

    def __repr__(self) -> str:
        return f"<RedisBroker {self.url or self.client!r} prefix={self.prefix!r}>"

    # -- publishing -----------------------------------------------------------

    def publish(self, channel: str, payload: bytes) -> bool:
        probe = self._down_since is not None and self._may_probe()
        if self._down_since is not None and not probe:
            return False  # an outage: dropped at once, without waiting for a connection
        finished = self._finished
        if not self._slots.acquire(timeout=self.pool_timeout):
            self._timed_out(stalled=probe or self._finished == finished)
            return False
        try:
            if self._down_since is not None and not probe:
                self._drop()  # it went down while this one waited
                return False
            try:
                self.client.publish(channel, payload)
            except self._pool_full as exc:  # a given client's pool, shared with other code: busy, not down
                self._busy(exc)
                return False
            except self._errors as exc:
                self._failed(exc)
                return False
            finally:
                self._finished += 1
        finally:
            self._slots.release()
        if self._down_since is not None:
            self._recovered()
        return True

    def _may_probe(self) -> bool:
        """During an outage: True for one thread once ``retry_interval``
        passed (it probes; the others drop meanwhile), else one more dropped."""
        with self._lock:
            if self._down_since is None:
                return False
            if self._probing or time.monotonic() < self._retry_at:
                self._dropped += 1
                return False
            self._probing = True
            return True

    def _drop(self) -> None:
        with self._lock:
            self._dropped += 1

    def _timed_out(self, stalled: bool) -> None:
        """No connection came free within ``pool_timeout``. If no publish
        finished meanwhile, Redis does not answer (a client without
        ``socket_timeout``, a socket_timeout above pool_timeout): an outage.
        Else it answers, too slowly for this many publishers: busy."""
        if stalled:
            self._failed(self._redis.TimeoutError(f"no publish finished within pool_timeout={self.pool_timeout:g} s"))
        else:
            self._busy(None)

    def _busy(self, exc: Optional[BaseException]) -> None:
        """A publish dropped for want of a connection, Redis being up: one
        warning a minute, with the count since the last one."""
        now = time.monotonic()
        with self._lock:
            if self._down_since is not None:  # the connections were busy failing: the outage counts it
                self._dropped += 1
                self._probing = False
                return
            self._busy_dropped += 1
            if self._busy_logged_at is not None and now - self._busy_logged_at < 60:
                return
            self._busy_logged_at, count, self._busy_dropped = now, self._busy_dropped, 0
        why = (f"the Redis client's own pool is full ({type(exc).__name__}: {exc})" if exc is not None
               else f"all {self.pool_size} connections were busy for pool_timeout={self.pool_timeout:g} s")
        logger.warning("cluster: publishing to Redis is busy: %s; %d broadcast(s) dropped, Redis itself answers "
                       "(raise pool_size or pool_timeout, or publish less; logged at most once a minute)", why, count)

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            self._probing = False
            self._retry_at = time.monotonic() + self.retry_interval
            self._dropped += 1
            first = self._down_since is None
            if first:
                self._down_since = time.monotonic()
        if first:
            logger.warning("cluster: cannot publish to Redis (%s: %s); broadcasts reach local clients only until it is back (logged once per outage)", type(exc).__name__, exc)

    def _recovered(self) -> None:
        with self._lock:
            since, self._down_since = self._down_since, None
            dropped, self._dropped = self._dropped, 0
            self._probing = False
        if since is not None:
            logger.warning("cluster: publishing to Redis again after %.1f s; %d message(s) did not reach other processes", time.monotonic() - since, dropped)

    # -- subscribing ----------------------------------------------------------

    def subscribe(self, deliver: Deliver) -> Subscription:
        with self._lock:
            self._subscriptions += 1
        return RedisSubscription(self, deliver)

    def _unsubscribed(self) -> None:
        with self._lock:
            self._subscriptions -= 1

    def presence_store(self) -> Any:
        """The Redis presence store (``redis_presence.py``), made on first use."""
        with self._lock:
            if self._presence is None:
                from .redis_presence import RedisPresenceStore

                self._presence = RedisPresenceStore(self, self._presence_ttl, self._presence_interval)
            return self._presence

    def descriptors(self) -> int:
        """The most it holds: ``pool_size``, and one per open subscription."""
        with self._lock:
            return self.pool_size + self._subscriptions

    def close(self) -> None:
        if self._owns_client:
            for client in (self.client, self._subscriber_client):
                try:
                    client.close()
                except self._errors:
                    pass


def _fit_pool(pool_size: int, client: Any) -> int:
    """``pool_size`` within a given client's pool, less the subscription's
    connection (a pool without a bound, or of another kind, is trusted)."""
    most = getattr(client.connection_pool, "max_connections", None)
    return min(pool_size, max(1, most - 1)) if isinstance(most, int) and most > 0 else pool_size
