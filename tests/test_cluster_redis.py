"""The cluster over a real redis-server: server processes on one port
(SO_REUSEPORT) and on three ports, a Publisher, Redis killed and restarted,
and ``serve --workers 3``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from ws_multipath import Publisher
from ws_multipath.cluster import RedisBroker

from .cluster_app import create_server
from .cluster_support import free_port, own_redis, redis_server, spawn, stop_process  # noqa: F401 - fixtures
from .conftest import wait_until

pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used:DeprecationWarning")


def _threads() -> int:
    """Threads but the event loops' (a listener slowed by the outage may have
    its loop handed to a spare, which ends within loop.SPARE_IDLE) and the
    idle request threads (kept for the next connection, they end within
    request_threads.IDLE_SECONDS)."""
    import threading

    from ws_multipath.sync.request_threads import IDLE_NAME

    return sum(1 for t in threading.enumerate() if not t.name.startswith("ws_multipath-loop") and t.name != IDLE_NAME)


def _start_processes(redis_url: str, reuse: bool) -> tuple[list, list[int]]:
    port = free_port()
    processes, ports = [], []
    for _ in range(3):
        # patient: Redis's default 1 s socket timeout made a publish delayed by
        # load an outage, and 1976 of the burst's messages were dropped for it
        argv = ["tests/cluster_app.py", str(port if reuse else 0), redis_url, "patient"] + (["reuse"] if reuse else [])
        processes.append(spawn(argv))
    for process in processes:
        line = process.stdout.readline().split()
        assert line[:1] == ["ready"], line
        ports.append(int(line[2]))
    return processes, ports


def _clients_on_each(ports: list[int], path: str = "/chat") -> dict[int, object]:
    """One client per server process (with one port, connect until the kernel put one on each)."""
    by_pid: dict[int, object] = {}
    spare = []
    for attempt in range(200):
        client = connect(f"ws://127.0.0.1:{ports[attempt % len(ports)]}{path}")
        _, pid, _ = client.recv(timeout=10).split()
        if int(pid) in by_pid:
            spare.append(client)
        else:
            by_pid[int(pid)] = client
        if len(by_pid) == 3:
            break
    for client in spare:
        client.close()
    assert len(by_pid) == 3, "SO_REUSEPORT did not spread 200 connections over 3 processes"
    return by_pid


def _receive(client, count: int) -> list:
    got = [client.recv(timeout=20) for _ in range(count)]
    try:
        extra = client.recv(timeout=0.3)
    except TimeoutError:
        return got
    pytest.fail(f"one more message than expected: {extra!r}")


@pytest.mark.parametrize("reuse", [True, False], ids=["one-port", "three-ports"])
def test_processes_share_broadcasts(redis_server, reuse: bool) -> None:  # noqa: F811
    processes, ports = _start_processes(redis_server.url, reuse)
    try:
        clients = _clients_on_each(ports)
        n = 1667 if reuse else 50  # one port: 3 x 1667 x 2 = 10,002 messages through Redis to every client
        for index, client in enumerate(clients.values()):
            client.send(f"burst {n} P{index}")
        with Publisher(redis_server.url) as publisher:
            for i in range(n):
                assert publisher.broadcast("/chat", f"pub {i}")
                assert publisher.broadcast("/chat", f"pub {i}".encode())
        expected_tags = [f"P{i}" for i in range(3)] + ["pub"]
        for client in clients.values():
            got = _receive(client, 4 * 2 * n)
            by_tag: dict[str, list] = {tag: [] for tag in expected_tags}
            for message in got:
                text = message.decode() if isinstance(message, bytes) else message
                by_tag[text.split()[0]].append(message)
            for tag, messages in by_tag.items():  # every one once, text as text, binary as binary, in publisher order
                assert messages == [m for i in range(n) for m in (f"{tag} {i}", f"{tag} {i}".encode())], tag
        # exclude, across processes: the sender's id travels in the message
        sender, *others = list(clients.values())
        sender.send("not to me")
        for client in others:
            assert client.recv(timeout=10) == "not to me"
        with pytest.raises(TimeoutError):
            sender.recv(timeout=0.3)
        if not reuse:  # one room across the processes
            lobby = [connect(f"ws://127.0.0.1:{port}/rooms/lobby") for port in ports]
            kitchen = connect(f"ws://127.0.0.1:{ports[1]}/rooms/kitchen")
            for client in lobby + [kitchen]:
                client.recv(timeout=10)  # hello
            lobby[0].send("lobby only")
            for client in lobby:
                assert client.recv(timeout=10) == "lobby only"
            with pytest.raises(TimeoutError):
                kitchen.recv(timeout=0.3)
            for client in lobby + [kitchen]:
                client.close()
        for client in clients.values():
            client.close()
    finally:
        for process in processes:
            stop_process(process)
    assert all(process.returncode == 0 for process in processes)  # SIGTERM: a graceful close


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts /proc/self/fd")
def test_redis_killed_and_restarted(own_redis, library_log) -> None:  # noqa: F811
    brokers = [RedisBroker(own_redis.url, health_interval=0.3, health_timeout=0.5, retry_interval=0.2, backoff_max=0.4, socket_timeout=0.5, connect_timeout=0.5) for _ in range(3)]
    servers = [create_server(port=0, host="127.0.0.1", broker=broker) for broker in brokers]
    chats = [server._routes.lookup("/chat")[0] for server in servers]
    clients = []
    try:
        assert all(server.wait_cluster_ready(10) for server in servers)
        pairs = []
        for server in servers:
            pair = [connect(f"ws://127.0.0.1:{server.port}/chat") for _ in range(2)]
            for client in pair:
                client.recv(timeout=10)  # hello
            pairs.append(pair)
            clients.extend(pair)
        assert wait_until(lambda: all(len(chat.clients) == 2 for chat in chats))

        def everyone_gets(tag: str) -> None:
            chats[0].broadcast(tag)
            for client in clients:
                assert client.recv(timeout=10) == tag

        everyone_gets("before")
        threads, fds = _threads(), _fds()

        own_redis.kill()
        # local delivery goes on; publishing fails fast, with one warning per outage
        started = time.monotonic()
        for i in range(200):
            for index, pair in enumerate(pairs):
                pair[0].send(f"local {index} {i}")
        for index, pair in enumerate(pairs):
            assert [pair[1].recv(timeout=10) for _ in range(200)] == [f"local {index} {i}" for i in range(200)]
        elapsed = time.monotonic() - started
        assert elapsed < 5, elapsed
        for pair in pairs:
            with pytest.raises(TimeoutError):
                pair[0].recv(timeout=0.05)
        time.sleep(1.5)  # the subscribers retry meanwhile
        assert _threads() <= threads and _fds() <= fds
        publish_warnings = [r for r in library_log.records if "cannot publish" in r.getMessage()]
        assert 1 <= len(publish_warnings) <= 3  # once per broker, not per message
        assert not [r for r in library_log.records if r.exc_info], "a traceback was logged"

        own_redis.start()
        assert all(server.wait_cluster_ready(10) for server in servers)
        deadline = time.monotonic() + 10
        while not chats[0]._server._cluster.broker.publish("ws_multipath:/nowhere", b'{"v":1}\n'):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        everyone_gets("after")
        assert wait_until(lambda: _threads() == threads and _fds() == fds, timeout=5), (_threads(), threads, _fds(), fds)
        messages = [r.getMessage() for r in library_log.records]
        assert any("subscription restored after" in m for m in messages)
        assert any("publishing to Redis again" in m for m in messages)
    finally:
        for client in clients:
            client.close()
        for server in servers:
            server.close()
        for broker in brokers:
            broker.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT")
@pytest.mark.parametrize("how", ["sigterm", "ctrl-c"])
def test_serve_workers(redis_server, how: str) -> None:  # noqa: F811
    port = free_port()
    supervisor = spawn(["-m", "ws_multipath", "serve", "tests.cluster_app:create_server", "--port", str(port), "--host", "127.0.0.1", "--workers", "3", "--broker", redis_server.url], stderr=subprocess.PIPE, start_new_session=True)
    try:
        pids = set()
        for _ in range(3):
            line = supervisor.stdout.readline().split()
            assert line[:1] == ["worker"], line
            pids.add(int(line[1]))
        clients = _clients_on_each([port])
        assert set(clients) == pids
        first, *rest = list(clients.values())
        first.send("across workers")
        for client in rest:
            assert client.recv(timeout=10) == "across workers"
        # a worker that dies is logged and replaced
        victim = next(pid for pid in pids if clients[pid] is not first)
        os.kill(victim, signal.SIGKILL)
        line = supervisor.stdout.readline().split()
        assert line[:1] == ["worker"], line
        pids.add(int(line[1]))
        clients.pop(victim).close()
        started = time.monotonic()
        if how == "sigterm":
            supervisor.send_signal(signal.SIGTERM)
        else:  # a terminal's Ctrl-C: SIGINT to the whole process group, workers included
            os.killpg(supervisor.pid, signal.SIGINT)
        for client in clients.values():
            with pytest.raises(ConnectionClosed) as closed:
                client.recv(timeout=15)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        assert supervisor.wait(15) == 0
        assert time.monotonic() - started < 15
        log = supervisor.stderr.read()
        assert f"(pid {victim}) exited with status signal SIGKILL" in log and "restarting in" in log, log
        for pid in pids:  # reaped by the supervisor: no orphan, no zombie
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        stop_process(supervisor)


def test_half_open_redis_noticed(own_redis, library_log) -> None:  # noqa: F811
    """Redis stops answering without closing (SIGSTOP): the subscriber's
    PING goes unanswered and it gives up within health_interval +
    health_timeout; publishing waits at most socket_timeout once, then drops
    at once; SIGCONT: both come back."""
    broker = RedisBroker(own_redis.url, health_interval=0.3, health_timeout=0.5, retry_interval=0.3, backoff_max=0.4, socket_timeout=0.5, connect_timeout=0.5)
    server = create_server(port=0, host="127.0.0.1", broker=broker)
    try:
        assert server.wait_cluster_ready(10)
        os.kill(own_redis.process.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            assert wait_until(lambda: not server.wait_cluster_ready(0), timeout=5)
            assert time.monotonic() - started < 2.5
            times = []
            for _ in range(20):
                t0 = time.monotonic()
                assert not broker.publish("ws_multipath:/chat", b'{"v":1}\nx')
                times.append(time.monotonic() - t0)
            assert max(times) < 1.0 and sorted(times)[-2] < 0.05, times
        finally:
            os.kill(own_redis.process.pid, signal.SIGCONT)
        assert server.wait_cluster_ready(10)
        assert wait_until(lambda: broker.publish("ws_multipath:/chat", b'{"v":1}\nx'), timeout=5)
        assert not [r for r in library_log.records if r.exc_info]
    finally:
        server.close()
        broker.close()
