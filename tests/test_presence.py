"""Presence without Redis: one server alone (no broker), servers sharing a
``LocalBroker``, ``send_to``, the bounds of ``set_presence``, and the
``<int:>`` params fix (a broadcast with string params reaches local clients)."""

from __future__ import annotations

import queue
import threading

import pytest
from websockets.sync.client import connect

from ws_multipath import Publisher
from ws_multipath.cluster import LocalBroker

from .conftest import TIMEOUT, url, wait_until

pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used:DeprecationWarning")


class Events:
    """'join' and 'leave' of a handler, on a queue: ``(event, entry)``."""

    def __init__(self, handler) -> None:
        self.queue: queue.Queue = queue.Queue()
        handler.on("join", lambda entry: self.queue.put(("join", entry)))
        handler.on("leave", lambda entry: self.queue.put(("leave", entry)))

    def next(self, timeout: float = TIMEOUT):
        return self.queue.get(timeout=timeout)

    def names(self, count: int) -> list:
        got = [self.next() for _ in range(count)]
        return [(event, entry.info.get("name")) for event, entry in got]

    def nothing(self, wait: float = 0.3) -> bool:
        try:
            extra = self.queue.get(timeout=wait)
        except queue.Empty:
            return True
        pytest.fail(f"an unexpected event: {extra!r}")


def _rooms(server):
    rooms = server.create_handler("/rooms/<room>", presence=True)

    @rooms.on("connection")
    def named(ws, request):
        name = (request.query.get("name") or [None])[0]
        if name:
            ws.set_presence({"name": name})
        ws.on("message", lambda data, is_binary: ws.set_presence({"name": data}))
        ws.send(ws.id)

    return rooms, Events(rooms)


def test_presence_in_one_process(server) -> None:
    rooms, events = _rooms(server)
    assert rooms.presence() == [] and rooms.presence_count() == 0
    with connect(url(server, "/rooms/lobby?name=Ann")) as ann, connect(url(server, "/rooms/kitchen?name=Bob")) as bob:
        ann_id, bob_id = ann.recv(timeout=TIMEOUT), bob.recv(timeout=TIMEOUT)
        assert sorted(events.names(2)) == [("join", "Ann"), ("join", "Bob")]  # joined with the info set in 'connection': one event each
        entries = {entry.id: entry for entry in rooms.presence()}
        assert set(entries) == {ann_id, bob_id}
        assert (entries[ann_id].path, entries[ann_id].route, entries[ann_id].info, entries[ann_id].node) == ("/rooms/lobby", "/rooms/<room>", {"name": "Ann"}, None)
        assert [e.id for e in rooms.presence("/rooms/kitchen")] == [bob_id]
        assert rooms.presence_count() == 2 and rooms.presence_count("/rooms/lobby") == 1 and rooms.presence_count("/rooms/none") == 0
        ann.send("Anna")  # a new info: joins again, as an update
        event, entry = events.next()
        assert (event, entry.id, entry.info) == ("join", ann_id, {"name": "Anna"})
        assert rooms.presence("/rooms/lobby")[0].info == {"name": "Anna"}
    assert sorted(events.names(2)) == [("leave", "Anna"), ("leave", "Bob")]
    assert rooms.presence() == [] and events.nothing()


def test_set_presence_bounds_and_presence_off(server) -> None:
    rooms = server.create_handler("/rooms/<room>", presence=True)
    plain = server.create_handler("/plain")
    errors: queue.Queue = queue.Queue()

    def attempt(ws, info):
        try:
            ws.set_presence(info)
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            errors.put(exc)
        else:
            errors.put(None)

    rooms.on("connection", lambda ws, request: ws.on("message", lambda data, is_binary: attempt(ws, {"big": "x" * 1100} if data == "big" else {"set": {1}} if data == "set" else [1] if data == "list" else {"ok": "é" * 300})))
    plain.on("connection", lambda ws, request: attempt(ws, {}))
    with connect(url(server, "/rooms/a")) as client:
        for what, kind in (("big", ValueError), ("set", ValueError), ("list", TypeError)):
            client.send(what)
            assert isinstance(errors.get(timeout=TIMEOUT), kind), what
        client.send("fine")  # 600 bytes of UTF-8: within 1 KiB
        assert errors.get(timeout=TIMEOUT) is None
        assert wait_until(lambda: rooms.presence_count() == 1)
    with connect(url(server, "/plain")):
        assert isinstance(errors.get(timeout=TIMEOUT), RuntimeError)
    with pytest.raises(RuntimeError, match="presence=True"):
        plain.presence()
    with pytest.raises(TypeError):
        server.create_handler("/x", presence="yes")


def test_presence_across_servers_of_a_local_broker(make_server) -> None:
    broker = LocalBroker(presence_ttl=2, presence_interval=0.5)
    servers = [make_server(broker=broker) for _ in range(2)]
    (rooms0, events0), (rooms1, events1) = [_rooms(s) for s in servers]
    with connect(url(servers[0], "/rooms/lobby?name=Ann")) as ann, connect(url(servers[1], "/rooms/lobby?name=Bob")) as bob:
        ann_id, bob_id = ann.recv(timeout=TIMEOUT), bob.recv(timeout=TIMEOUT)
        assert sorted(events0.names(2)) == [("join", "Ann"), ("join", "Bob")]
        assert sorted(events1.names(2)) == [("join", "Ann"), ("join", "Bob")]
        for rooms in (rooms0, rooms1):
            assert {(e.id, e.node) for e in rooms.presence("/rooms/lobby")} == {(ann_id, servers[0].node_id), (bob_id, servers[1].node_id)}
        # one connection, wherever it is
        assert servers[0].send_to(bob_id, "to Bob") and bob.recv(timeout=TIMEOUT) == "to Bob"
        assert servers[0].send_to(ann_id, b"\x00local") and ann.recv(timeout=TIMEOUT) == b"\x00local"
        assert Publisher(broker).send_to(ann_id, "from outside") and ann.recv(timeout=TIMEOUT) == "from outside"
        assert servers[1].send_to("0" * 32, "nobody")  # published; nobody holds it
        with pytest.raises(TimeoutError):
            bob.recv(timeout=0.3)
        # a server that closes: the other one sees its entries leave at once
        servers[1].close()
        assert events0.names(1) == [("leave", "Bob")]
        assert [e.id for e in rooms0.presence()] == [ann_id]
    assert events0.names(1) == [("leave", "Ann")]


def test_no_broker_send_to(server) -> None:
    rooms, _ = _rooms(server)
    with connect(url(server, "/rooms/a")) as client:
        client_id = client.recv(timeout=TIMEOUT)
        assert server.send_to(client_id, "direct") and client.recv(timeout=TIMEOUT) == "direct"
    assert not server.send_to(client_id, "gone")  # no broker: False when not here
    with pytest.raises(TypeError):
        server.send_to(client_id, 3)  # type: ignore[arg-type]


def test_presence_threads_end_with_the_server(make_server) -> None:
    before = set(threading.enumerate())
    server = make_server(broker=LocalBroker(presence_interval=0.2, presence_ttl=1))
    _rooms(server)
    assert {t.name for t in set(threading.enumerate()) - before} >= {"ws_multipath-presence", "ws_multipath-presence-events"}
    server.close()
    assert wait_until(lambda: not [t for t in threading.enumerate() if t.name.startswith("ws_multipath-presence")], timeout=5)


def test_string_params_reach_local_clients_of_an_int_route(make_server) -> None:
    # also seen in issue 21: broadcast(path_params={"id": "7"}) to /u/<int:id> missed this process's clients
    broker = LocalBroker()
    servers = [make_server(broker=broker) for _ in range(2)]
    handlers = [s.create_handler("/u/<int:id>") for s in servers]
    with connect(url(servers[0], "/u/7")) as local, connect(url(servers[1], "/u/7")) as remote, connect(url(servers[0], "/u/8")) as other:
        assert wait_until(lambda: len(handlers[0].clients) == 2 and len(handlers[1].clients) == 1)
        assert handlers[0].broadcast("as a string", path_params={"id": "7"}) == 1
        assert handlers[0].broadcast("as an int", path_params={"id": 7}) == 1
        for client in (local, remote):
            assert [client.recv(timeout=TIMEOUT) for _ in range(2)] == ["as a string", "as an int"]
        assert handlers[0].broadcast("not a number", path_params={"id": "x"}) == 0
        assert handlers[0].broadcast("here only", local=True) == 2
        assert local.recv(timeout=TIMEOUT) == "here only" and other.recv(timeout=TIMEOUT) == "here only"
        with pytest.raises(TimeoutError):
            remote.recv(timeout=0.3)


class LossyBroker(LocalBroker):
    """A LocalBroker that drops presence messages while ``lossy`` is set:
    pub/sub's at-most-once, made to happen (a fault injected, not a mock)."""

    lossy = False

    def publish(self, channel: str, payload: bytes) -> bool:
        if self.lossy and channel.endswith("@presence"):
            return True  # "published", never delivered: as a subscriber that was reconnecting
        return super().publish(channel, payload)


def test_a_lost_presence_message_is_made_up_by_the_next_round(make_server) -> None:
    broker = LossyBroker(presence_ttl=2, presence_interval=0.2)
    servers = [make_server(broker=broker) for _ in range(2)]
    (rooms0, events0), (rooms1, events1) = [_rooms(s) for s in servers]
    with connect(url(servers[0], "/rooms/a?name=Ann")) as ann:
        ann_id = ann.recv(timeout=TIMEOUT)
        assert events0.names(1) == [("join", "Ann")] and events1.names(1) == [("join", "Ann")]
        broker.lossy = True
        with connect(url(servers[0], "/rooms/a?name=Bob")) as bob:
            bob.recv(timeout=TIMEOUT)
            assert events0.names(1) == [("join", "Bob")]
            # server 1 never got that message: its round sees server 0's version move and reloads
            assert events1.names(1) == [("join", "Bob")]
            broker.lossy = False
            ann.send("Anna")  # the next message follows the reloaded version: applied as is
            assert events1.names(1) == [("join", "Anna")]
        assert events1.names(1) == [("leave", "Bob")]
        assert [(e.id, e.info) for e in rooms1.presence()] == [(ann_id, {"name": "Anna"})]


def test_many_joins_and_leaves_at_once_end_consistent(make_server) -> None:
    broker = LocalBroker(presence_ttl=2, presence_interval=0.2)
    servers = [make_server(broker=broker) for _ in range(2)]
    handlers = [_rooms(s) for s in servers]
    counts = [{"join": 0, "leave": 0} for _ in servers]
    lock = threading.Lock()

    def count(index, event):
        with lock:
            counts[index][event] += 1

    for index, (rooms, _) in enumerate(handlers):
        rooms.on("join", lambda entry, i=index: count(i, "join"))
        rooms.on("leave", lambda entry, i=index: count(i, "leave"))

    def churn(worker: int) -> None:
        for round_ in range(5):
            with connect(url(servers[(worker + round_) % 2], f"/rooms/r{worker % 3}?name=w{worker}-{round_}")) as client:
                client.recv(timeout=TIMEOUT)

    keep = [connect(url(servers[i % 2], f"/rooms/r{i % 3}?name=keep{i}")) for i in range(6)]
    try:
        threads = [threading.Thread(target=churn, args=(worker,)) for worker in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        # 6 stay: every process ends with the same 6, and as many joins as leaves plus them
        # (a name is set in 'connection': at most one join per connection, no update; a
        # connection that came and went between two writes of its process's presence thread
        # is seen by the other process not at all: neither join nor leave)
        assert wait_until(lambda: all(rooms.presence_count() == 6 for rooms, _ in handlers))
        assert wait_until(lambda: all(c["join"] - c["leave"] == 6 for c in counts))
        names = [sorted(e.info["name"] for e in rooms.presence()) for rooms, _ in handlers]
        assert names[0] == names[1] == sorted(f"keep{i}" for i in range(6))
        assert all(26 <= c["join"] <= 46 for c in counts), counts  # 23 of its own, 3 kept of the other at least
        assert {rooms.presence_count("/rooms/r0") for rooms, _ in handlers} == {2}
    finally:
        for client in keep:
            client.close()


def test_a_blocking_listener_delays_events_not_the_heartbeat(make_server, library_log) -> None:
    """The 'join' listeners run on their own thread: one that blocks holds
    up later events, never the presence thread's refreshes, so the other
    server keeps this one's entries past several TTLs; a listener that
    raises goes to 'error' (then the log), and the next events still come."""
    broker = LocalBroker(presence_ttl=0.6, presence_interval=0.2)
    servers = [make_server(broker=broker) for _ in range(2)]
    (rooms0, _), (rooms1, events1) = [_rooms(s) for s in servers]
    release = threading.Event()
    entered = threading.Event()
    failures: queue.Queue = queue.Queue()

    def blocking(entry):
        if entry.info.get("name") == "Ann":
            entered.set()
            release.wait(10)
            raise RuntimeError("a listener that fails")

    rooms0.on("join", blocking)
    rooms0.on("error", failures.put)
    try:
        with connect(url(servers[0], "/rooms/a?name=Ann")) as ann:
            ann.recv(timeout=TIMEOUT)
            assert entered.wait(TIMEOUT)
            assert events1.names(1) == [("join", "Ann")]
            with connect(url(servers[1], "/rooms/a?name=Bob")) as bob:
                bob.recv(timeout=TIMEOUT)
                assert events1.names(1) == [("join", "Bob")]
                # server 0's listener still blocks; 3 TTLs later (the absence of an expiry: nothing
                # to wait on) its entry is still alive at server 1, which saw no leave
                assert events1.nothing(3 * 0.6)
                assert sorted(e.info["name"] for e in rooms1.presence()) == ["Ann", "Bob"]
                assert rooms0.presence_count() == 2  # the replica is right while its events wait
                release.set()
                assert isinstance(failures.get(timeout=TIMEOUT), RuntimeError)
                assert wait_until(lambda: rooms1.presence_count() == 2)
    finally:
        release.set()
