"""The connection ceiling (ws_multipath/sync/capacity.py) and the server at it.

In-process: what ``measure_capacity()`` finds in this process (the
descriptors of the server and of its handlers' event loops counted once;
held connections counted against descriptors and memory, not threads), and
the start-up log line: the binding limit of the ceiling, and the room left
under the thread limits, which connections no longer count against (the
reading of made-up ``/proc`` trees is in test_oslimits.py). In a child process whose RLIMIT_NOFILE is
lowered to 64: the WARNING at start-up, upgrades accepted up to the ceiling
and the next one refused with 503, or, without ``max_connections``, accept()
running out of descriptors (one log line, existing connections echo on, the
waiting client served once one leaves), and ``close()`` of them all with 1001
in bounded time. Real sockets; every wait has a deadline.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import resource
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Optional

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from ws_multipath import measure_capacity
from ws_multipath.sync.capacity import (FD_MARGIN, LOOP_FDS, PER_CONNECTION_BYTES, SERVER_FDS, SERVER_THREADS, THREAD_MARGIN, Bound,
                                        exhaustion_hint, report_capacity)

from .conftest import LEGACY, LogCapture, echo, url
from .test_oslimits import measure_tree, tree

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
FD_RESERVE = SERVER_FDS + LOOP_FDS + FD_MARGIN  # no server listening, no loop open
THREAD_RESERVE = SERVER_THREADS + THREAD_MARGIN
SOFT, HARD = resource.getrlimit(resource.RLIMIT_NOFILE)
# the child tests lower the soft limit to 64 and quote the hard one
limited = pytest.mark.skipif(not sys.platform.startswith("linux") or HARD == resource.RLIM_INFINITY or HARD < 64,
                             reason="needs Linux and a finite hard RLIMIT_NOFILE of at least 64")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd")) - 1


# -- this process -------------------------------------------------------------------


@linux
def test_the_descriptor_bound_is_the_soft_limit_less_open_and_kept_descriptors():
    # other threads may open or close one meanwhile (an earlier test's event
    # loop closes its descriptors on its own thread once it stopped): measure
    # again until none did during the measurement
    for _ in range(50):
        before = open_fds()
        bound = measure_capacity().bound("RLIMIT_NOFILE")
        after = open_fds()
        if before == after:
            break
    assert bound is not None and (bound.limit, bound.hard, bound.kind) == (SOFT, HARD, "fds")
    assert before <= bound.in_use <= after
    assert bound.reserved == FD_RESERVE
    assert bound.connections == bound.limit - bound.in_use - bound.reserved


@linux
def test_held_connections_count_against_descriptors_and_memory_and_the_least_of_those_binds():
    capacity = measure_capacity(held=7)
    assert capacity.held == 7
    ceiling = [b for b in capacity.bounds if b.kind in ("fds", "memory")]
    for bound in ceiling:
        assert bound.held == 7
        assert bound.connections == max(0, 7 + (bound.limit - bound.in_use - bound.reserved) // bound.per_connection), bound
    assert capacity.binding is not None and capacity.connections == min(b.connections for b in ceiling)
    assert capacity.binding.connections == capacity.connections and capacity.binding.kind in ("fds", "memory")
    assert capacity.fds == min(b.connections for b in capacity.bounds if b.kind == "fds")
    assert {"RLIMIT_NOFILE", "kernel.threads-max", "kernel.pid_max", "vm.max_map_count", "MemAvailable"} <= {b.name for b in capacity.bounds}
    assert str(capacity).startswith(f"about {capacity.connections:,} connections, bound by {capacity.binding.name} (")


@linux
def test_the_thread_limits_give_the_room_for_threads_and_held_connections_take_none_of_it():
    capacity = measure_capacity(held=7)
    threads = [b for b in capacity.bounds if b.kind == "threads"]
    assert {"kernel.threads-max", "kernel.pid_max", "vm.max_map_count"} <= {b.name for b in threads}
    for bound in threads:  # an open connection has no thread of its own
        assert bound.held == 0
        assert bound.connections == max(0, (bound.limit - bound.in_use - bound.reserved) // bound.per_connection), bound
    pid_max = capacity.bound("kernel.pid_max")
    assert pid_max is not None and pid_max.reserved == 300 + THREAD_RESERVE
    assert capacity.threads == min(b.connections for b in threads) == capacity.thread_binding.connections  # type: ignore[union-attr]
    assert capacity.binding not in threads


@linux
def test_a_servers_capacity_counts_its_open_connections(make_server):
    server = make_server()
    server.create_handler("/echo").on("connection", echo)
    fds_before, idle = open_fds(), server.capacity()
    clients = [connect(url(server, "/echo"), open_timeout=10, ping_interval=None, **LEGACY) for _ in range(3)]
    try:
        for client in clients:
            client.send("hi")
            assert client.recv(timeout=10) == "hi"
        fds_after, holding = open_fds(), server.capacity()
        assert holding.held == 3
        # the server's 3 sockets are counted back in; what the clients opened (in this process too) is not
        assert abs((idle.fds - holding.fds) - (fds_after - fds_before - 3)) <= 1, (idle, holding)
    finally:
        for client in clients:
            client.close()


@linux
def test_the_event_loops_descriptors_are_counted_once_and_one_loop_is_kept_free_before_any(make_server):
    server = make_server()
    fds_before, bare = open_fds(), server.capacity()
    nofile = bare.bound("RLIMIT_NOFILE")
    assert nofile is not None and nofile.reserved == FD_MARGIN + LOOP_FDS  # listening: the server's own are in use
    handler = server.create_handler("/four", loops=4)
    fds_with, four = open_fds(), server.capacity()
    assert fds_with - fds_before == 4 * LOOP_FDS  # each loop's selector and wake-up socket pair, opened with the handler
    assert four.bound("RLIMIT_NOFILE").reserved == FD_MARGIN  # type: ignore[union-attr]
    # the 12 now open were counted once: 3 of them had been kept free
    assert abs((bare.fds - four.fds) - (4 * LOOP_FDS - LOOP_FDS)) <= 1, (bare, four)  # type: ignore[operator]
    closed = threading.Event()
    handler.close(callback=closed.set)
    assert closed.wait(10)
    assert wait_for(lambda: open_fds() == fds_before, 10)  # the loops had no thread: their descriptors close at once
    after = server.capacity()
    assert after.bound("RLIMIT_NOFILE").reserved == FD_MARGIN + LOOP_FDS  # type: ignore[union-attr]
    assert abs(after.fds - bare.fds) <= 1, (bare, after)  # type: ignore[operator]


# -- the start-up line ---------------------------------------------------------------------


GIB = 2**30


def fake_capacity(tmp_path: Path, threads_max: int, threads: int = 100, available: int = GIB):  # type: ignore[no-untyped-def]
    """A machine of 4 GiB with ``available`` bytes free, ``threads`` threads running of ``threads_max``."""
    kib = 1024
    return lambda: measure_tree(tree(tmp_path, {
        "proc/loadavg": f"0 0 0 1/{threads} 1\n",
        "proc/sys/kernel/threads-max": f"{threads_max}\n",
        "proc/meminfo": f"MemTotal: {4 * GIB // kib} kB\nMemAvailable: {available // kib} kB\n",
    }))


@pytest.fixture
def startup_log():  # type: ignore[no-untyped-def]
    capture = LogCapture()
    logger = logging.getLogger("ws_multipath")
    previous = logger.level
    logger.addHandler(capture)
    logger.setLevel(logging.INFO)
    yield capture
    logger.removeHandler(capture)
    logger.setLevel(previous)


def capacity_records(capture: LogCapture, event: str = "capacity") -> list[logging.LogRecord]:
    return [r for r in capture.records if getattr(r, "event", None) == event]


def test_one_warning_names_the_binding_limit_its_numbers_and_how_to_raise_it(tmp_path, startup_log):
    free = 1000 * PER_CONNECTION_BYTES + 100
    capacity = report_capacity(5000, fake_capacity(tmp_path, 10_000, available=free))
    [record] = capacity_records(startup_log)
    message = record.getMessage()
    assert record.levelno == logging.WARNING
    assert (record.capacity, record.binding, record.max_connections) == (1000, "MemAvailable", 5000)
    assert capacity.connections == 1000
    per = f"{PER_CONNECTION_BYTES / 1024:.1f} KiB"
    assert "max_connections=5,000 is more than this process can hold: about 1,000 connections" in message
    assert f"MemAvailable (memory free on the machine): limit 4,096 MiB, {(4 * GIB - free) // 2**20:,} MiB in use, {per} per connection" in message
    assert "the out-of-memory killer may end the process" in message
    assert f"more memory ({-(-(4 * GIB - free + 5000 * PER_CONNECTION_BYTES) // 2**20)} MiB in all)" in message
    assert capacity_records(startup_log, "thread_capacity") == []  # 10,000 - 100 threads leave room


def test_a_thread_limit_below_max_connections_does_not_bind(tmp_path, startup_log):
    # 1,000 threads on the machine, 100 running: it used to bind at 881 connections
    capacity = report_capacity(5000, fake_capacity(tmp_path, 1000))
    [record] = capacity_records(startup_log)
    assert record.levelno == logging.INFO and record.binding == "MemAvailable"
    assert capacity.connections == GIB // PER_CONNECTION_BYTES and capacity.threads == 1000 - 100 - THREAD_RESERVE
    assert capacity.thread_binding is capacity.bound("kernel.threads-max")
    assert record.getMessage().endswith(
        f"Open connections take no thread of their own; the thread limits leave room for {1000 - 100 - THREAD_RESERVE:,} more "
        "(by kernel.threads-max), one for each handshake in flight, listener blocked or connection served in the blocking style")
    assert [r for r in startup_log.records if r.levelno >= logging.WARNING] == []


def test_a_thread_limit_without_room_for_the_servers_threads_is_a_warning_of_its_own(tmp_path, startup_log):
    report_capacity(10, fake_capacity(tmp_path, 1000, threads=960))
    [warning] = capacity_records(startup_log, "thread_capacity")
    [line] = capacity_records(startup_log)
    message = warning.getMessage()
    assert warning.levelno == logging.WARNING and (warning.binding, warning.room) == ("kernel.threads-max", 0)
    assert message.startswith(f"the thread limits leave no room beyond this server's own threads and a margin of {THREAD_MARGIN}: "
                              f"kernel.threads-max (threads on the machine): limit 1,000, 960 in use, {THREAD_RESERVE} kept free, 1 per thread")
    assert "a new client's handshake thread cannot start" in message
    assert message.endswith(f"To make room for {THREAD_MARGIN} more: `sysctl -w kernel.threads-max={960 + THREAD_RESERVE + THREAD_MARGIN}` (as root)")
    assert line.levelno == logging.INFO and line.binding == "MemAvailable"  # the ceiling is told as usual


def test_info_only_when_max_connections_fits_or_is_not_set(tmp_path, startup_log):
    report_capacity(10, fake_capacity(tmp_path, 10_000))
    report_capacity(None, fake_capacity(tmp_path, 10_000))
    fits, unset = capacity_records(startup_log)
    assert fits.levelno == unset.levelno == logging.INFO
    assert fits.getMessage().startswith(f"max_connections=10 (upgrades past it get 503); this process can hold about {GIB // PER_CONNECTION_BYTES:,} "
                                        "connections, bound by MemAvailable")
    assert "max_connections is not set: past that, the out-of-memory killer may end the process" in unset.getMessage()


def test_nothing_is_said_when_no_limit_is_known(tmp_path, startup_log):
    report_capacity(10**9, lambda: measure_tree(tmp_path))
    assert [r for r in startup_log.records if r.levelno >= logging.INFO] == []


def test_a_failure_to_measure_is_a_warning_not_an_error(startup_log):
    def broken():  # type: ignore[no-untyped-def]
        raise RuntimeError("a /proc nobody expected")

    assert report_capacity(10, broken) is None
    [record] = [r for r in startup_log.records if r.levelno >= logging.WARNING]
    assert record.getMessage() == "could not measure how many connections this process can hold" and record.exc_info


def test_how_to_raise_the_descriptor_limit_below_and_above_the_hard_limit():
    bound = Bound("RLIMIT_NOFILE", "fds", "process", 1024, 10, FD_RESERVE, 1, 1024 - 10 - FD_RESERVE, hard=4096)
    assert f"`ulimit -n {2000 + 10 + FD_RESERVE}`" in bound.how_to_raise(2000) and "(the hard limit is 4,096)" in bound.how_to_raise(2000)
    above = bound.how_to_raise(10_000)
    assert above.startswith("the hard limit is 4096: raise both as root") and f"LimitNOFILE={10_000 + 10 + FD_RESERVE}" in above


@linux
def test_the_server_logs_its_ceiling_when_it_starts_listening(make_server, startup_log):
    server = make_server(max_connections=10)
    [record] = capacity_records(startup_log)
    assert record.levelno == logging.INFO and record.max_connections == 10 and record.capacity >= 1
    assert server.capacity().connections is not None


@linux
def test_the_hint_when_a_thread_cannot_start_names_the_thread_limit_with_the_least_room():
    thread_binding = measure_capacity().thread_binding
    assert thread_binding is not None
    hint = exhaustion_hint("threads")
    assert hint.startswith(f"{thread_binding.name} (") and f" per thread; to make room for {THREAD_MARGIN} more threads: " in hint
    assert hint.endswith("or have fewer at once: listeners that block, connections served in the blocking style (max_connections bounds those)")


# -- a child process with 64 descriptors -----------------------------------------------------

LIMIT = 64

_CHILD = textwrap.dedent(
    """
    import json, logging, os, resource, sys, time
    from ws_multipath import MultipathServer, measure_capacity

    def say(*words):
        sys.stdout.write(" ".join(str(w) for w in words) + "\\n"); sys.stdout.flush()

    class Say(logging.Handler):
        def emit(self, record):
            say(record.levelname, json.dumps(record.getMessage()))
    logging.getLogger("ws_multipath").addHandler(Say(logging.WARNING))

    limit, wanted = int(sys.argv[1]), sys.argv[2]
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    ceiling = measure_capacity().connections
    maximum = {"none": None, "ceiling": ceiling}[wanted] if wanted in ("none", "ceiling") else int(wanted)
    server = MultipathServer(0, "127.0.0.1", max_connections=maximum)
    handler = server.create_handler("/echo", ping_interval=None)
    handler.on("connection", lambda ws, request: ws.on("message", lambda data, is_binary: ws.send(data)))
    say("READY", server.port, ceiling, limit - (len(os.listdir("/proc/self/fd")) - 1))
    for line in sys.stdin:  # nothing here opens a descriptor: the table may be full
        if line.startswith("cpu"):
            usage = resource.getrusage(resource.RUSAGE_SELF)
            say("CPU", usage.ru_utime + usage.ru_stime, time.monotonic())
        elif line.startswith("close"):
            started = time.monotonic()
            server.close()
            say("CLOSED", round(time.monotonic() - started, 3), server.stats()["open"])
            break
    """
)


class Child:
    """The server in a child process, spoken to in lines."""

    def __init__(self, wanted: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(LIMIT), wanted], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        self.lines: "queue.Queue[str]" = queue.Queue()
        self.transcript: list[str] = []
        threading.Thread(target=lambda: [self.lines.put(line.strip()) for line in self.proc.stdout], daemon=True).start()  # type: ignore[union-attr]
        self.clients: list[ClientConnection] = []

    def expect(self, prefix: str, timeout: float = 20.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {prefix!r} line from the child within {timeout} s; got {self.transcript}") from None
            self.transcript.append(line)
            if line.startswith(prefix + " "):
                return line.split()[1:]

    def logged(self, level: str) -> list[str]:
        return [json.loads(line.split(" ", 1)[1]) for line in self.transcript if line.startswith(level + " ")]

    def tell(self, word: str) -> None:
        self.proc.stdin.write(word + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]

    def connect(self, port: int, timeout: float = 10.0) -> ClientConnection:
        client = connect(f"ws://127.0.0.1:{port}/echo", open_timeout=timeout, ping_interval=None, close_timeout=10, **LEGACY)
        self.clients.append(client)
        return client

    def close(self) -> None:
        for client in self.clients:
            client.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                stream.close()  # type: ignore[union-attr]
            except OSError:
                pass


def echoes(clients: list[ClientConnection]) -> bool:
    for index, client in enumerate(clients):
        client.send(f"still here {index}")
    return all(client.recv(timeout=10) == f"still here {index}" for index, client in enumerate(clients))


def closed_with_1001(client: ClientConnection) -> Optional[int]:
    try:
        client.recv(timeout=15)
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd is not None else None
    return None


def close_all(child: Child, clients: list[ClientConnection]) -> float:
    child.tell("close")
    seconds, still_open = child.expect("CLOSED", timeout=30)
    assert still_open == "0"
    assert [closed_with_1001(client) for client in clients] == [1001] * len(clients)
    assert child.proc.wait(15) == 0, child.proc.stderr.read()  # type: ignore[union-attr]
    return float(seconds)


@limited
@pytest.mark.timeout(60)
def test_start_up_warns_when_the_descriptor_limit_is_below_max_connections():
    child = Child("1000")
    try:
        _, ceiling, _ = child.expect("READY")
        [warning] = child.logged("WARNING")
        assert warning.startswith(f"max_connections=1,000 is more than this process can hold: about {int(ceiling):,} connections, "
                                  f"bound by RLIMIT_NOFILE (this process's open descriptors): limit {LIMIT} (hard limit {HARD:,})")
        assert f"`ulimit -n {1000 + LIMIT - int(ceiling)}`" in warning
        assert close_all(child, []) < 5
    finally:
        child.close()


@limited
@pytest.mark.timeout(90)
def test_at_max_connections_set_to_the_ceiling_the_next_upgrade_gets_503_and_the_others_echo_on(record_property):
    child = Child("ceiling")
    try:
        port, ceiling, _ = (int(word) for word in child.expect("READY"))
        assert child.logged("WARNING") == [] and 1 <= ceiling < LIMIT
        clients = [child.connect(port) for _ in range(ceiling)]
        assert echoes(clients)
        with pytest.raises(InvalidStatus) as refused:
            child.connect(port)
        assert refused.value.response.status_code == 503
        assert echoes(clients)
        seconds = close_all(child, clients)
        record_property("close_seconds", seconds)
        assert seconds < 5
        assert child.logged("ERROR") == []
    finally:
        child.close()


def accept_queue(port: int) -> Optional[int]:
    """Connections waiting in the accept queue of the socket listening on 127.0.0.1:``port`` (/proc/net/tcp)."""
    key = f" 0100007F:{port:04X} 00000000:0000 0A "  # 0A: LISTEN; rx_queue is then the accept queue
    text = Path("/proc/net/tcp").read_text()
    at = text.find(key)
    return None if at < 0 else int(text[at + len(key):].split(None, 1)[0].split(":")[1], 16)


def wait_for(predicate, timeout: float = 20.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        threading.Event().wait(0.02)
    return True


@limited
@pytest.mark.timeout(120)
def test_without_max_connections_a_full_descriptor_table_answers_503_and_the_others_are_served_on(record_property):
    # Issue 18: newcomers used to wait unanswered in the listen queue; a
    # reserved descriptor now accepts them and answers 503 at once.
    child = Child("none")
    try:
        port, ceiling, free = (int(word) for word in child.expect("READY"))
        assert ceiling < free  # the ceiling keeps a margin; here the whole table is used
        clients = [child.connect(port) for _ in range(free)]
        assert echoes(clients)
        child.tell("cpu")
        cpu0, wall0 = (float(word) for word in child.expect("CPU"))
        for _ in range(3):  # each newcomer is told at once, the table being full
            with pytest.raises(InvalidStatus) as refused:
                child.connect(port, timeout=10)
            assert refused.value.response.status_code == 503
            assert refused.value.response.headers["Retry-After"] == "1"
        child.expect("ERROR")  # accept() ran out of descriptors: logged once
        [error] = child.logged("ERROR")
        assert error.startswith("accept() failed: [Errno 24] Too many open files; backing off, open connections are served on, new clients get 503")
        assert f"RLIMIT_NOFILE (this process's open descriptors): all {LIMIT} in use; raise it up to the hard limit with `ulimit -n {HARD}`" in error
        assert echoes(clients)  # served on meanwhile
        child.tell("cpu")
        cpu1, wall1 = (float(word) for word in child.expect("CPU"))
        assert cpu1 - cpu0 < 0.5 * (wall1 - wall0) + 0.05, "the accept loop spun"
        assert accept_queue(port) == 0  # nobody left waiting
        clients.pop(0).close()  # one leaves: the next newcomer gets its descriptor
        assert wait_for(lambda: _connects(child, port, clients))
        assert echoes(clients)
        seconds = close_all(child, clients)
        record_property("close_seconds", seconds)
        assert seconds < 5
        assert len(child.logged("ERROR")) == 1, child.transcript
    finally:
        child.close()


def _connects(child: Child, port: int, clients: list) -> bool:
    """One connection attempt: True once it was let in (a 503 while the
    server has not yet seen the departure is False: try again)."""
    try:
        clients.append(child.connect(port, timeout=10))
    except InvalidStatus as exc:
        assert exc.response.status_code == 503
        return False
    return True
