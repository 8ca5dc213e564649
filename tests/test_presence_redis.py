"""Presence over a real redis-server: server processes (``tests/presence_app.py``)
beside a server in this process, joins and leaves across them, a process
killed with SIGKILL (its entries leave everywhere, within 30 s with the
default timing), Redis killed and restarted empty, and ``send_to`` from a
server and from a ``Publisher``."""

from __future__ import annotations

import json
import os
import queue
import signal
import time

import pytest
from websockets.sync.client import connect

from ws_multipath import Publisher
from ws_multipath.cluster import RedisBroker

from .cluster_support import own_redis, redis_server, spawn, stop_process  # noqa: F401 - fixtures
from .conftest import TIMEOUT, wait_until
from .presence_app import create_server

pytestmark = [pytest.mark.filterwarnings("ignore:connect\\(\\) must be used:DeprecationWarning"), pytest.mark.timeout(90)]


def _start(redis_url: str, count: int, timing: tuple = ()) -> list:
    processes = [spawn(["tests/presence_app.py", "0", redis_url, *map(str, timing)]) for _ in range(count)]
    started = []
    for process in processes:
        line = process.stdout.readline().split()
        assert line[:1] == ["ready"], line
        started.append((process, int(line[2]), line[3]))
    return started


class Observer:
    """A server of this process in the cluster, with its events on a queue."""

    def __init__(self, redis_url: str, **timing) -> None:
        self.broker = RedisBroker(redis_url, **timing)
        self.server = create_server(port=0, host="127.0.0.1", broker=self.broker)
        self.rooms = self.server._routes.lookup("/rooms/x")[0]
        self.events: queue.Queue = queue.Queue()
        self.rooms.on("join", lambda entry: self.events.put(("join", entry, time.monotonic())))
        self.rooms.on("leave", lambda entry: self.events.put(("leave", entry, time.monotonic())))
        assert self.server.wait_cluster_ready(10)

    def take(self, count: int, timeout: float = TIMEOUT) -> list:
        deadline = time.monotonic() + timeout
        return [self.events.get(timeout=max(0.01, deadline - time.monotonic())) for _ in range(count)]

    def names(self) -> list:
        return sorted(entry.info["name"] for entry in self.rooms.presence())

    def close(self) -> None:
        self.server.close()
        self.broker.close()


def _member(port: int, name: str, room: str = "lobby"):
    client = connect(f"ws://127.0.0.1:{port}/rooms/{room}?name={name}")
    _, pid, ws_id = client.recv(timeout=TIMEOUT).split()
    return client, ws_id


def test_join_leave_across_processes_and_a_killed_one(redis_server) -> None:  # noqa: F811
    """Default timing (ttl 10 s, interval 2 s): a SIGKILLed process's
    entries leave, with 'leave' events, in this process and in the other
    child, within 30 s."""
    started = _start(redis_server.url, 2)
    observer = Observer(redis_server.url)
    clients = []
    try:
        (first, port1, node1), (second, port2, node2) = started
        watcher = connect(f"ws://127.0.0.1:{port2}/watch")
        clients.append(watcher)
        ann, ann_id = _member(port1, "Ann")
        bob, bob_id = _member(port1, "Bob", "kitchen")
        cid, cid_id = _member(port2, "Cid")
        local, local_id = _member(observer.server.port, "Dee")
        clients += [ann, bob, cid, local]
        joined = observer.take(4)
        assert sorted(entry.info["name"] for event, entry, _ in joined if event == "join") == ["Ann", "Bob", "Cid", "Dee"]
        assert {entry.id: entry.node for _, entry, _ in joined} == {ann_id: node1, bob_id: node1, cid_id: node2, local_id: observer.server.node_id}
        assert observer.rooms.presence_count() == 4 and observer.rooms.presence_count("/rooms/lobby") == 3
        assert {e.id for e in observer.rooms.presence("/rooms/kitchen")} == {bob_id}
        # the other child saw the same joins (its /watch relays its own events)
        seen = {}
        while len(seen) < 4:
            message = json.loads(watcher.recv(timeout=TIMEOUT))
            seen[message["id"]] = message["event"]
        assert seen == {ann_id: "join", bob_id: "join", cid_id: "join", local_id: "join"}
        # a clean close leaves within a second or two
        closed_at = time.monotonic()
        ann.close()
        (event, entry, at), = observer.take(1)
        assert (event, entry.id) == ("leave", ann_id) and at - closed_at < 2
        assert json.loads(watcher.recv(timeout=TIMEOUT))["id"] == ann_id
        # send_to reaches a connection in another process, from a server and from a Publisher
        assert observer.server.send_to(cid_id, "to Cid") and cid.recv(timeout=TIMEOUT) == "to Cid"
        with Publisher(redis_server.url) as publisher:
            assert publisher.send_to(bob_id, b"to Bob") and bob.recv(timeout=TIMEOUT) == b"to Bob"
        # the first child dies without a word: Bob leaves everywhere within 30 s
        killed_at = time.monotonic()
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
        (event, entry, at), = observer.take(1, timeout=30)
        assert (event, entry.id) == ("leave", bob_id)
        gone_after = at - killed_at
        assert gone_after < 30, gone_after
        message = json.loads(watcher.recv(timeout=30))
        assert (message["event"], message["id"]) == ("leave", bob_id)
        assert observer.names() == ["Cid", "Dee"]
        with pytest.raises(queue.Empty):
            observer.events.get(timeout=0.5)  # once
        print(f"SIGKILLed process's entries left after {gone_after:.1f} s")
    finally:
        for client in clients:
            client.close()
        observer.close()
        for process, _, _ in started:
            stop_process(process)


def test_redis_restarted_empty(own_redis, library_log) -> None:  # noqa: F811
    """Redis killed and restarted without its data: presence stays answered
    locally meanwhile, the processes rewrite their entries, and the replicas
    end as they were, without a 'leave' (the grace of 2 intervals lets
    the child rewrite its entries before the observer drops them)."""
    timing = dict(presence_ttl=2.0, presence_interval=0.5, health_interval=0.3, health_timeout=0.5, retry_interval=0.2, backoff_max=0.4, socket_timeout=0.5, connect_timeout=0.5)
    started = _start(own_redis.url, 1, (2.0, 0.5))
    observer = Observer(own_redis.url, **timing)
    clients = []
    try:
        (child, port, node) = started[0]
        for name in ("Ann", "Bob"):
            clients.append(_member(port, name)[0])
        clients.append(_member(observer.server.port, "Dee")[0])
        assert wait_until(lambda: observer.names() == ["Ann", "Bob", "Dee"])
        own_redis.kill()
        # local presence goes on while Redis is away
        clients.append(_member(observer.server.port, "Eve")[0])
        assert wait_until(lambda: "Eve" in observer.names())
        time.sleep(1.5)  # the outage lasts: the presence thread retries meanwhile
        assert observer.names() == ["Ann", "Bob", "Dee", "Eve"]  # the store is away: nothing expires
        own_redis.start()
        assert observer.server.wait_cluster_ready(10)
        # both processes rewrite what they hold; the replicas converge
        assert wait_until(lambda: observer.names() == ["Ann", "Bob", "Dee", "Eve"] and len(observer.rooms.presence()) == 4, timeout=15)
        # let a few rounds pass on both sides (nothing to wait on: the absence of a leave), then: no leave at all
        time.sleep(4 * 0.5)
        events = []
        while not observer.events.empty():
            events.append(observer.events.get())
        assert [(event, entry.info["name"]) for event, entry, _ in events if event == "leave"] == []
        import redis

        client = redis.Redis.from_url(own_redis.url)
        assert wait_until(lambda: client.scard("ws_multipath:@presence:nodes") == 2, timeout=10)
        assert client.hlen(f"ws_multipath:@presence:{node}") == 3  # @v and two entries
        assert 0 < client.pttl(f"ws_multipath:@presence:{node}") <= 2000
        watcher = connect(f"ws://127.0.0.1:{port}/watch")
        clients.append(watcher)
        clients[0].close()  # Ann leaves in the child: the observer sees it
        assert wait_until(lambda: observer.names() == ["Bob", "Dee", "Eve"], timeout=5)
        client.close()
        assert any("presence: the store does not answer" in r.getMessage() for r in library_log.records)
        assert not [r for r in library_log.records if r.exc_info], "a traceback was logged"
    finally:
        for client in clients:
            client.close()
        observer.close()
        stop_process(child)


def _holder(client, name):
    """The node whose presence hash in Redis holds the member ``name``, or None."""
    for node in client.smembers("ws_multipath:@presence:nodes"):
        for field, value in client.hgetall(b"ws_multipath:@presence:" + node).items():
            if field != b"@v" and json.loads(value)[2].get("name") == name:
                return node
    return None


def _until(client, wanted: dict, timeout: float = 2 * TIMEOUT) -> dict:
    """Read JSON messages until one has all of ``wanted``'s items."""
    deadline = time.monotonic() + timeout
    while True:
        message = json.loads(client.recv(timeout=max(0.01, deadline - time.monotonic())))
        if all(message.get(key) == value for key, value in wanted.items()):
            return message


def test_the_presence_roster_example_across_two_workers(own_redis) -> None:  # noqa: F811
    """examples/presence_roster.py as docs/howto/presence.rst runs it:
    ``serve --workers 2``, Ann and Bob on different workers. A Redis of its
    own: no node left over by another test counts as a ready worker."""
    import redis

    from .cluster_support import free_port

    port = free_port()
    supervisor = spawn(["-m", "ws_multipath", "serve", "examples.presence_roster:create_server", "--port", str(port), "--host", "127.0.0.1", "--workers", "2", "--broker", own_redis.url], start_new_session=True)
    store = redis.Redis.from_url(own_redis.url)
    clients = []
    try:
        for _ in range(2):
            assert supervisor.stdout.readline().split()[:1] == ["worker"]
        assert wait_until(lambda: store.scard("ws_multipath:@presence:nodes") == 2)
        ann = connect(f"ws://127.0.0.1:{port}/rooms/lobby?name=Ann")
        clients.append(ann)
        assert _until(ann, {"type": "roster"})["names"] == ["Ann"]
        assert wait_until(lambda: _holder(store, "Ann"))
        for attempt in range(30):
            bob = connect(f"ws://127.0.0.1:{port}/rooms/lobby?name=Bob")
            clients.append(bob)
            assert wait_until(lambda: _holder(store, "Bob"))
            if _holder(store, "Bob") != _holder(store, "Ann"):
                break
            bob.close()
        assert _holder(store, "Bob") != _holder(store, "Ann"), "30 connections all on Ann's worker"
        assert _until(bob, {"type": "roster", "names": ["Ann", "Bob"]})
        assert _until(ann, {"type": "roster", "names": ["Ann", "Bob"]})
        ann.send("@Bob psst")
        assert _until(bob, {"type": "private"}) == {"type": "private", "from": "Ann", "text": "psst"}
        bob.send("hello room")
        assert _until(ann, {"type": "message"}) == {"type": "message", "from": "Bob", "text": "hello room"}
        bob.close()
        assert _until(ann, {"type": "roster", "names": ["Ann"]})
    finally:
        for client in clients:
            client.close()
        store.close()
        stop_process(supervisor)
