"""Publishing to a Redis that is healthy but a few milliseconds away, from
many threads at once: every broadcast is delivered, no outage is logged,
the broker opens no more connections than it says, and the capacity
estimate keeps those descriptors free. A real redis-server behind
``DelayProxy`` (loopback), real servers and a real client; every wait has a
deadline."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from typing import Callable

import pytest
from websockets.sync.client import connect

from ws_multipath import Publisher
from ws_multipath.cluster import RedisBroker
from ws_multipath.sync.capacity import FD_MARGIN

from .cluster_app import create_server
from .cluster_support import DelayProxy, own_redis, redis_server  # noqa: F401 - fixtures
from .conftest import LogCapture, wait_until

pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used:DeprecationWarning")

THREADS = 300  # each broadcasts twice: 600 in flight, six times redis-py's default pool of 100
DELAY = 0.005  # each way: Redis 5 ms away


def _burst(send: Callable[[str], object]) -> list:
    """``send`` called twice by each of THREADS threads started together;
    what each call returned."""
    start = threading.Barrier(THREADS)
    results: list = []
    lock = threading.Lock()

    def run(index: int) -> None:
        start.wait(30)
        for part in ("a", "b"):
            result = send(f"m {index} {part}")
            with lock:
                results.append(result)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    return results


def _received(client, expected: int, quiet: float = 3.0) -> set:  # type: ignore[no-untyped-def]
    """What ``client`` got, until ``expected`` messages or ``quiet`` seconds without one."""
    got: set = set()
    deadline = time.monotonic() + 30
    while len(got) < expected and time.monotonic() < deadline:
        try:
            got.add(client.recv(timeout=quiet))
        except TimeoutError:
            break
    return got


def _warnings(log: LogCapture) -> list[str]:
    with log.records_lock:
        return [r.getMessage() for r in log.records if r.levelno >= logging.WARNING]


@pytest.fixture
def receiver(redis_server):  # type: ignore[no-untyped-def]  # noqa: F811
    """A server on Redis directly and a client of its /chat."""
    server = create_server(port=0, host="127.0.0.1", broker=redis_server.url)
    client = connect(f"ws://127.0.0.1:{server.port}/chat")
    try:
        client.recv(timeout=10)  # hello
        assert server.wait_cluster_ready(10)
        yield client
    finally:
        client.close()
        server.close()


@pytest.fixture
def proxy(redis_server):  # type: ignore[no-untyped-def]  # noqa: F811
    with DelayProxy(redis_server.port, DELAY) as made:
        yield made


def test_a_burst_of_server_broadcasts_is_all_delivered(proxy, receiver, library_log) -> None:
    broker = RedisBroker(proxy.url)
    sender = create_server(port=0, host="127.0.0.1", broker=broker)
    try:
        assert sender.wait_cluster_ready(10)
        chat = sender._routes.lookup("/chat")[0]
        _burst(chat.broadcast)
        got = _received(receiver, 2 * THREADS)
        print(f"delivered {len(got)} of {2 * THREADS}; proxied connections {proxy.connections}; warnings {len(_warnings(library_log))}")
        assert got == {f"m {i} {part}" for i in range(THREADS) for part in ("a", "b")}
        assert _warnings(library_log) == []
        # what it opened: at most its pool and the subscription, as it tells the capacity estimate
        assert proxy.connections <= broker.descriptors() == broker.pool_size + 1
    finally:
        sender.close()
        broker.close()


def test_a_burst_of_publisher_broadcasts_is_all_delivered(proxy, receiver, library_log) -> None:
    with Publisher(proxy.url) as publisher:
        results = _burst(lambda text: publisher.broadcast("/chat", text))
        got = _received(receiver, 2 * THREADS)
        print(f"delivered {len(got)} of {2 * THREADS}; proxied connections {proxy.connections}; warnings {len(_warnings(library_log))}")
        assert results == [True] * 2 * THREADS
        assert len(got) == 2 * THREADS
        assert _warnings(library_log) == []
        assert proxy.connections <= publisher.broker.descriptors() == publisher.broker.pool_size


def test_a_clients_own_small_pool_is_not_taken_for_an_outage(proxy, receiver, library_log) -> None:
    """``RedisBroker(client=...)`` whose pool holds 4 connections: the broker
    publishes on at most 3 at once (one is the subscription's), the others wait."""
    import redis

    client = redis.Redis.from_url(proxy.url, max_connections=4, socket_timeout=5)
    broker = RedisBroker(client=client, pool_timeout=20)  # 600 publishes on 3 connections take about 2.5 s
    sender = create_server(port=0, host="127.0.0.1", broker=broker)
    try:
        assert broker.pool_size == 3
        assert sender.wait_cluster_ready(10)
        chat = sender._routes.lookup("/chat")[0]
        _burst(chat.broadcast)
        got = _received(receiver, 2 * THREADS)
        assert len(got) == 2 * THREADS
        assert _warnings(library_log) == []
    finally:
        sender.close()
        broker.close()
        client.close()


def test_a_busy_pool_is_told_apart_from_an_outage(redis_server, receiver, library_log) -> None:  # noqa: F811
    """Redis answers within ``pool_timeout`` (0.1 s a round trip), but a
    queue of 8 publishes on one connection lasts longer: the ones that waited
    past it are dropped with one 'busy' warning, no outage is opened, and the
    next publish goes straight through."""
    with DelayProxy(redis_server.port, 0.05) as slow:
        broker = RedisBroker(slow.url, pool_size=1, pool_timeout=0.25)
        try:
            assert broker.publish("ws_multipath:/chat", b'{"v":1}\nwarm')  # connected (the handshake's round trips)
            results = []
            threads = [threading.Thread(target=lambda i=i: results.append(broker.publish("ws_multipath:/chat", b'{"v":1}\n%d' % i))) for i in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            assert True in results and False in results, results
            messages = _warnings(library_log)
            assert len(messages) == 1 and "busy" in messages[0] and "cannot publish" not in messages[0], messages
            started = time.monotonic()
            assert broker.publish("ws_multipath:/chat", b'{"v":1}\nafter')  # no outage: no drop
            assert time.monotonic() - started < 2.0
        finally:
            broker.close()
    assert "after" in _received(receiver, 2 + results.count(True))


def test_a_redis_that_stops_answering_a_client_without_socket_timeout_is_an_outage(own_redis, library_log) -> None:  # noqa: F811
    """A given client without ``socket_timeout`` and Redis stopped (SIGSTOP):
    the publishes on the wire hang, but the others wait at most
    ``pool_timeout``, that is an outage (not 'busy'), and the rest are
    dropped at once; SIGCONT: publishing comes back."""
    import redis

    client = redis.Redis.from_url(own_redis.url, max_connections=8)
    broker = RedisBroker(client=client, pool_size=2, pool_timeout=0.3, retry_interval=0.2)
    hung: list = []
    waits: list = []
    try:
        assert broker.publish("ws_multipath:/chat", b'{"v":1}\nbefore')
        os.kill(own_redis.process.pid, signal.SIGSTOP)
        try:
            stuck = [threading.Thread(target=lambda: hung.append(broker.publish("ws_multipath:/chat", b'{"v":1}\nx'))) for _ in range(2)]
            for thread in stuck:
                thread.start()
            assert wait_until(lambda: broker._slots._value == 0)  # (the semaphore's count) both on the wire, unanswered
            for _ in range(20):
                started = time.monotonic()
                assert not broker.publish("ws_multipath:/chat", b'{"v":1}\ny')
                waits.append(time.monotonic() - started)
            assert max(waits) < 1.0 and sorted(waits)[-3] < 0.05, waits  # pool_timeout once (or twice: a probe), then at once
            messages = _warnings(library_log)
            assert any("cannot publish" in m and "pool_timeout" in m for m in messages), messages
            assert not any("busy" in m for m in messages), messages
            assert any("has no socket_timeout" in m for m in messages), messages  # said when the broker was made
        finally:
            os.kill(own_redis.process.pid, signal.SIGCONT)
        for thread in stuck:
            thread.join(10)
        assert hung == [True, True]
        assert wait_until(lambda: broker.publish("ws_multipath:/chat", b'{"v":1}\nafter'))
        assert any("publishing to Redis again" in m for m in _warnings(library_log))
    finally:
        broker.close()
        client.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_capacity_estimate_keeps_the_brokers_descriptors_free(redis_server, library_log) -> None:  # noqa: F811
    broker = RedisBroker(redis_server.url, pool_size=20)
    server = create_server(port=0, host="127.0.0.1", broker=broker)
    try:
        bound = server.capacity().bound("RLIMIT_NOFILE")
        assert bound is not None
        assert bound.reserved == FD_MARGIN + 20 + 1  # the pool and the subscription, besides the margin (its handlers' loops are in use)
        assert bound.broker == 21
        assert "(21 for the broker's connections)" in bound.describe()
        [line] = [r.getMessage() for r in library_log.records if getattr(r, "event", None) == "capacity"]
        assert "(21 for the broker's connections)" in line or bound.name not in line
    finally:
        server.close()
        broker.close()
