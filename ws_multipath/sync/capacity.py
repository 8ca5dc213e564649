"""How many connections this process can hold, and which limit says so.

An idle connection costs one file descriptor and about
``PER_CONNECTION_BYTES`` of memory, and no thread: once its ``'connection'``
listeners have returned it is run by its handler's event loop
(``loop.py``). ``measure_capacity()`` reads every limit and returns a
``Capacity``: the ceiling (descriptors and memory), the bound that sets it,
the room left under the thread limits, and every bound it could read. The
server logs it once it listens (``report_capacity``): a WARNING when
``max_connections`` is above the ceiling or when the thread limits leave no
room beyond the server's own threads and their margin, INFO otherwise.
Nothing here raises a limit; the WARNING says how to.

The bounds (``Bound.name``: what counts against it):

- ``RLIMIT_NOFILE``: this process's open descriptors (the soft limit, ``ulimit -n``);
  ``fs.file-max``: open files on the machine. The server's own
  (``SERVER_FDS``, ``LOOP_FDS`` per event loop) and a cluster broker's
  connections (``broker_fds``: a ``RedisBroker``'s ``pool_size`` + 1 per
  subscription) are kept free besides the connections.
- ``MemAvailable`` on the machine; ``memory.max``: the cgroup's limit less its
  usage less the file cache it can drop; ``RLIMIT_AS`` when set and
  ``CommitLimit`` with ``vm.overcommit_memory=2``, where the whole stack of
  each thread kept free counts (``thread_stack_bytes()``), not just the
  pages it touched.
- Threads, which connections no longer count against: ``kernel.threads-max``
  (threads on the machine); ``kernel.pid_max`` (the same, as each thread
  takes a pid, less the 300 low pids the kernel hands out only at boot);
  ``RLIMIT_NPROC`` (threads of the user's processes; left out for root and
  with CAP_SYS_RESOURCE or CAP_SYS_ADMIN, which it does not bind);
  ``pids.max`` (threads in the cgroup and its ancestors);
  ``vm.max_map_count`` (this process's memory maps, 2 per thread: the stack
  and the guard page below it). Threads in a process are bounded by its
  loops, the handshakes in flight and the user code running (a listener
  that blocks, a connection served in the blocking style, ``for message in
  ws``), so these are checked against a fixed number (``SERVER_THREADS`` +
  ``THREAD_MARGIN``), not per connection: their ``Bound.connections`` is
  the threads they have room for beyond it, and ``Capacity.threads`` the
  least of those.

Machine, user and cgroup bounds are shared with every other process: the
figures are what was free when measured (each worker of ``serve`` sees the
same remainder). Linux first, from ``resource``, ``/proc`` and
``/sys/fs/cgroup`` (read by ``oslimits.py``): a limit that cannot be read (another system, a hidden
``/proc``) is named in ``Capacity.unknown`` and left out, and with none
known the ceiling is None. Missing, unreadable or garbled files never raise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

from ..log import logger
from .oslimits import RESERVED_PIDS, LimitReader, thread_stack_bytes

__all__ = ["Bound", "Capacity", "measure_capacity", "report_capacity", "exhaustion_hint", "PER_CONNECTION_BYTES",
           "SERVER_FDS", "LOOP_FDS", "FD_MARGIN", "SERVER_THREADS", "THREAD_MARGIN"]

#: Resident memory of one idle connection (its socket's objects, the
#: parser, its place in its loop's selector), as benchmarks/run.py's
#: ``idle`` scenario measures it: 6.8 KiB at 10,000 connections with the
#: heartbeat on, no thread among them (``run.py --ref worktree --scenarios
#: idle --idle-target 10000 --peers websockets``, 2026-12-07: at 830ba60 and
#: again at 4bbe7ef; 6.9 in a run that stopped at 7,675; 28 KiB with a
#: thread each before). Messages in flight cost their size on top (up to
#: ``max_queue`` x ``max_payload``), deflate more.
PER_CONNECTION_BYTES = 7 * 1024
#: Descriptors the server holds besides its connections and its handlers'
#: loops: the listening socket, the flusher's wake-up socket pair and its
#: epoll selector (the accept loop uses ``poll()``, which needs none), the
#: head loop's selector and wake-up pair (``http/head_waiting.py``), and
#: the reserve that answers 503 when the table is full (``reserve.py``).
#: Kept free until the server listens (``listening=True``: all eight are
#: open then, and counted once, as descriptors in use).
SERVER_FDS = 8
#: Descriptors of each event loop: its epoll selector and its wake-up
#: socket pair (``EventLoop.__init__``), opened when its handler is created
#: (``loops=N``: N of them). Once loops exist (``loops=``) they are counted
#: as in use, each once; before, one loop's are kept free for the first
#: handler, which a server serving anything has.
LOOP_FDS = 3
#: Descriptors kept free beyond those, for what needs one for a moment: an
#: upgrade past ``max_connections`` holds its socket until its 503 is
#: written (16 for a burst of them), and the application and the library
#: open others briefly (a log file rotating, a DNS lookup, a certificate, a
#: broker reconnecting, a module imported late): 16 more.
FD_MARGIN = 32
#: The server's own threads: the accept loop, the timers, the flusher, the
#: sysmon that hands a blocked loop to another thread (``handoff.py``) and
#: the head loop, where new connections' handshakes run.
SERVER_THREADS = 5
#: Threads kept free beyond those: each event loop's thread (one per loop,
#: started with its first connection, and up to ``MAX_SPARES`` spares after
#: a hand-off), a TLS handshake in flight (an accepted TLS connection has a
#: thread until its ``'connection'`` listeners return), a hook or listener
#: that blocks (its loop goes on on another thread). A connection served in the
#: blocking style keeps its thread; those come out of the room beyond this
#: (``Capacity.threads``).
THREAD_MARGIN = 64
_FD_RESERVE = SERVER_FDS + LOOP_FDS + FD_MARGIN
_THREAD_RESERVE = SERVER_THREADS + THREAD_MARGIN

#: name: (what it counts, how to raise it to {want} (or {mib} MiB))
_TEXT = {
    "RLIMIT_NOFILE": ("this process's open descriptors", ""),
    "fs.file-max": ("open files on the machine", "`sysctl -w fs.file-max={want}` (as root)"),
    "kernel.threads-max": ("threads on the machine", "`sysctl -w kernel.threads-max={want}` (as root)"),
    "kernel.pid_max": ("pids on the machine, one per thread", "`sysctl -w kernel.pid_max={want}` (as root; 4194304 at most)"),
    "RLIMIT_NPROC": ("threads of this user", "`ulimit -u {want}` (LimitNPROC= in a systemd unit)"),
    "pids.max": ("threads in this cgroup", "raise the cgroup's pids limit to {want} (TasksMax= in a systemd unit, docker --pids-limit)"),
    "vm.max_map_count": ("this process's memory maps, 2 per thread", "`sysctl -w vm.max_map_count={want}` (as root)"),
    "MemAvailable": ("memory free on the machine", "more memory ({mib} MiB in all), or fewer connections per process"),
    "memory.max": ("memory of this cgroup", "raise the cgroup's memory limit to {mib} MiB (MemoryMax= in a systemd unit, docker --memory)"),
    "RLIMIT_AS": ("this process's address space, a whole stack per thread", "`ulimit -v {kib}`, or smaller thread stacks (threading.stack_size())"),
    "CommitLimit": ("memory the kernel may commit, a whole stack per thread", "more swap or a higher vm.overcommit_ratio, or smaller thread stacks (threading.stack_size())"),
}
_PAST = {
    "fds": "accept() fails (EMFILE) and new clients get 503 (a reserved descriptor answers them) until a connection ends",
    "threads": ("a new client's handshake thread cannot start (the client is dropped at once), and a loop whose listener blocks "
                "cannot hand its other connections to another thread until that listener returns"),
    "memory": "the out-of-memory killer may end the process",
}
_CEILING = ("fds", "memory")  # the kinds connections count against


@dataclass(frozen=True)
class Bound:
    """One limit's bound on this process.

    ``limit`` and ``in_use`` are in the limit's unit (descriptors, threads,
    maps, bytes); ``reserved`` of it is kept free for the server and its
    margins. ``kind``: ``"fds"``, ``"threads"`` or ``"memory"``; ``scope``:
    ``"process"``, ``"user"``, ``"cgroup"`` or ``"machine"``; ``hard``: an
    rlimit's hard limit; ``broker``: of ``reserved``, the descriptors a
    cluster broker may hold (all of them: those it has open are also
    ``in_use``, so the figure errs low by those few, never high).

    Descriptor and memory bounds count connections: each takes
    ``per_connection``, and ``connections`` is how many the limit allows in
    all, the ``held`` ones open when measured (their share is in ``in_use``)
    and those the rest has room for. Thread bounds (``kind == "threads"``)
    do not: an open connection has no thread of its own. For them
    ``per_connection`` is what one thread takes (1; 2 memory maps) and
    ``connections`` the threads the limit has room for beyond ``reserved``:
    how many connections could each keep one at once (served in the
    blocking style, or with a listener blocked); ``held`` is 0."""

    name: str
    kind: str
    scope: str
    limit: int
    in_use: int
    reserved: int
    per_connection: int
    connections: int
    hard: Optional[int] = None
    broker: int = 0
    held: int = 0

    def needed(self, connections: int) -> int:
        """The ``limit`` that would let this process hold ``connections``
        (for a thread bound: have room for that many more threads)."""
        return self.in_use + self.reserved + (connections - self.held) * self.per_connection

    def describe(self) -> str:
        """The numbers in one phrase: ``RLIMIT_NOFILE (this process's open
        descriptors): limit 64 (hard limit 4,096), 5 in use, 40 kept free, 1
        per connection``; with a broker, ``57 kept free (17 for the broker's
        connections)``; a thread bound says ``1 per thread``."""
        unit = _bytes if self.kind == "memory" else _int
        hard = f" (hard limit {_int(self.hard)})" if self.hard is not None else ""
        kept = f", {unit(self.reserved)} kept free" if self.reserved else ""
        kept += f" ({_int(self.broker)} for the broker's connections)" if self.broker else ""
        per = "thread" if self.kind == "threads" else "connection"
        return (f"{self.name} ({_TEXT[self.name][0]}): limit {unit(self.limit)}{hard}, {unit(self.in_use)} in use"
                f"{kept}, {unit(self.per_connection)} per {per}")

    def how_to_raise(self, connections: int) -> str:
        """What to change so that this process can hold ``connections`` (a
        thread bound: start that many more threads)."""
        want = self.needed(connections)
        if self.name != "RLIMIT_NOFILE":
            return _TEXT[self.name][1].format(want=want, mib=-(-want // 2**20), kib=-(-want // 2**10))
        if self.hard is None or want <= self.hard:
            return (f"raise the soft limit to {want} (the hard limit is {_int(self.hard)}): `ulimit -n {want}` in the shell "
                    f"that starts the server, LimitNOFILE={want} in its systemd unit, or "
                    f"resource.setrlimit(resource.RLIMIT_NOFILE, ({want}, hard)) before the server starts")
        return (f"the hard limit is {self.hard}: raise both as root (LimitNOFILE={want} in a systemd unit, 'nofile' in "
                f"/etc/security/limits.conf, docker --ulimit nofile={want}), then `ulimit -n {want}`")


@dataclass(frozen=True)
class Capacity:
    """The connection ceiling of this process when measured.

    ``connections``: the least of the descriptor and memory bounds, None
    when none could be read; ``binding``: that bound; ``fds``, ``memory``:
    the least bound of that kind, None when unknown or unlimited;
    ``threads``: the threads this process has room for beyond the server's
    own and their margin (the least thread bound's ``connections``; None
    when unknown or unlimited): not part of the ceiling, as a connection
    takes a thread only while a listener of it blocks or when it is served
    in the blocking style; ``bounds``: all those read; ``unknown``: names of
    the limits that could not be read; ``held``: the connections open when
    measured (counted in)."""

    connections: Optional[int]
    binding: Optional[Bound]
    fds: Optional[int]
    threads: Optional[int]
    memory: Optional[int]
    bounds: tuple[Bound, ...]
    unknown: tuple[str, ...]
    held: int = 0

    def bound(self, name: str) -> Optional[Bound]:
        """The bound called ``name`` (``"RLIMIT_NOFILE"``, ...), or None."""
        return next((b for b in self.bounds if b.name == name), None)

    @property
    def thread_binding(self) -> Optional[Bound]:
        """The thread bound with the least room (``threads``), or None."""
        return _least(b for b in self.bounds if b.kind == "threads")

    def __str__(self) -> str:
        if self.binding is None:
            return "no connection limit could be read"
        return f"about {_int(self.connections)} connections, bound by {self.binding.describe()}"


def measure_capacity(held: int = 0, *, listening: bool = False, loops: int = 0, broker_fds: int = 0,
                     per_connection_bytes: int = PER_CONNECTION_BYTES, proc: str = "/proc", sys: str = "/sys") -> Capacity:
    """Read the limits now. ``held``: connections this process holds already
    (what they use is counted as theirs); ``listening``: the server's
    listening socket and the flusher's descriptors are open already (they
    are then counted once, not kept free as well), so ``MultipathServer(max_connections=measure_capacity().connections)``
    gets no warning; ``loops``: event loops open (``LOOP_FDS`` each, in
    use: counted once); with none, one loop's descriptors are kept free.
    ``broker_fds``: descriptors a cluster broker may hold
    (``broker.descriptors()``), kept free too. ``proc`` and ``sys``: where those file systems are
    (tests; a host's ``/proc`` mounted elsewhere). A limit that is missing
    or unreadable goes into ``unknown``; nothing raises."""
    read = LimitReader(Path(proc), Path(sys), _THREAD_RESERVE)
    threads = read.system_threads()
    broker_fds = max(0, broker_fds)
    kept_fds = _FD_RESERVE - (SERVER_FDS if listening else 0) - (LOOP_FDS if loops > 0 else 0) + broker_fds
    read.fds(kept_fds)
    read.add("fs.file-max", "fds", "machine", read.number("sys/fs/file-nr", field=2), read.system_files(), 1, kept_fds)
    read.add("kernel.threads-max", "threads", "machine", read.number("sys/kernel/threads-max"), threads, 1, _THREAD_RESERVE)
    read.add("kernel.pid_max", "threads", "machine", read.number("sys/kernel/pid_max"), threads, 1, RESERVED_PIDS + _THREAD_RESERVE)
    read.nproc()
    read.cgroup("pids", "pids.max", "threads", 1)
    read.add("vm.max_map_count", "threads", "process", read.number("sys/vm/max_map_count"), read.maps(), 2, 2 * _THREAD_RESERVE)
    read.memory(per_connection_bytes, thread_stack_bytes())
    held = max(0, held)
    bounds = []
    for r in read.readings:
        counted = held if r.kind in _CEILING else 0  # an open connection holds descriptors and memory, no thread
        bounds.append(Bound(r.name, r.kind, r.scope, r.limit, r.in_use, r.reserved, r.per,
                            max(0, counted + (r.limit - r.in_use - r.reserved) // r.per), r.hard,
                            broker_fds if r.kind == "fds" else 0, counted))

    def of(kind: str) -> Optional[int]:
        bound = _least(b for b in bounds if b.kind == kind)
        return bound.connections if bound is not None else None

    binding = _least(b for b in bounds if b.kind in _CEILING)
    return Capacity(binding.connections if binding else None, binding, of("fds"), of("threads"), of("memory"),
                    tuple(bounds), tuple(read.unknown), held)


def report_capacity(max_connections: Optional[int], measure: Optional[Callable[[], Capacity]] = None) -> Optional[Capacity]:
    """Log the ceiling once (the server calls it when it starts listening):
    one WARNING when ``max_connections`` is above it, naming the binding
    limit, its numbers, what happens past it and how to raise it (and the
    other limits below ``max_connections``); else one INFO line, which also
    tells the room under the thread limits. A thread limit with no room left
    beyond the server's own threads and their margin gets a WARNING of its
    own. Nothing when no limit could be read. Returns what ``measure()``
    found (by default ``measure_capacity(listening=True)``); None, after a
    WARNING with the traceback, if measuring failed: that never stops the
    server."""
    try:
        capacity = measure() if measure is not None else measure_capacity(listening=True)
    except Exception:  # noqa: BLE001 - a diagnostic must not stop the server from listening
        logger.warning("could not measure how many connections this process can hold", exc_info=True)
        return None
    _report_threads(capacity)
    binding, ceiling = capacity.binding, capacity.connections
    if binding is None or ceiling is None:
        logger.debug("connection capacity: no limit could be read (%s)", ", ".join(capacity.unknown))
        return capacity
    extra = {"event": "capacity", "capacity": ceiling, "binding": binding.name, "max_connections": max_connections}
    if max_connections is not None and max_connections > ceiling:
        also = "".join(f"; also below it: {b.name}, {_int(b.connections)} ({b.how_to_raise(max_connections)})"
                       for b in capacity.bounds if b is not binding and b.kind in _CEILING and b.connections < max_connections)
        logger.warning("max_connections=%s is more than this process can hold: %s. Past that, %s. To hold %s: %s%s",
                       _int(max_connections), capacity, _PAST[binding.kind], _int(max_connections),
                       binding.how_to_raise(max_connections), also, extra=extra)
    elif max_connections is None:
        logger.info("this process can hold %s; max_connections is not set: past that, %s%s", capacity, _PAST[binding.kind],
                    _thread_room(capacity), extra=extra)
    else:
        logger.info("max_connections=%s (upgrades past it get 503); this process can hold %s%s", _int(max_connections), capacity,
                    _thread_room(capacity), extra=extra)
    return capacity


def _thread_room(capacity: Capacity) -> str:
    """The INFO line's last clause: threads are not per connection, and how many more fit."""
    bound = capacity.thread_binding
    if bound is None:
        return ". Open connections take no thread of their own"
    return (f". Open connections take no thread of their own; the thread limits leave room for {_int(bound.connections)} more "
            f"(by {bound.name}), one for each handshake in flight, listener blocked or connection served in the blocking style")


def _report_threads(capacity: Capacity) -> None:
    """One WARNING when a thread limit has no room beyond the server's own threads and their margin."""
    bound = capacity.thread_binding
    if bound is None or bound.connections > 0:
        return
    logger.warning("the thread limits leave no room beyond this server's own threads and a margin of %s: %s. Past that, %s. "
                   "To make room for %s more: %s", THREAD_MARGIN, bound.describe(), _PAST["threads"], THREAD_MARGIN,
                   bound.how_to_raise(THREAD_MARGIN), extra={"event": "thread_capacity", "binding": bound.name, "room": bound.connections})


def exhaustion_hint(kind: str) -> str:
    """A clause for the accept loop's line when accept() or a thread failed,
    ``kind`` saying what ran out: ``"descriptors"`` (EMFILE: told from the
    rlimit alone, as nothing can be opened to count), ``"files"`` (ENFILE),
    ``"threads"`` or ``"memory"`` (measured, the tightest bound of that
    kind). Names the limit and how to raise it; ``""`` when unknown."""
    advice = "or set max_connections below what it allows, so that upgrades past that get a 503"
    if kind == "descriptors":
        limits = LimitReader(Path("/proc"), Path("/sys")).rlimit("RLIMIT_NOFILE")
        if limits is None:
            return ""
        soft, hard = limits
        if hard is None:
            how = "with `ulimit -n` (there is no hard limit)"
        elif hard > soft:
            how = f"up to the hard limit with `ulimit -n {hard}` or LimitNOFILE={hard} in a systemd unit"
        else:
            how = f"as root: the hard limit is {hard} too (LimitNOFILE= in a systemd unit, 'nofile' in /etc/security/limits.conf)"
        return f"RLIMIT_NOFILE (this process's open descriptors): all {_int(soft)} in use; raise it {how}, {advice}"
    if kind == "files":
        return f"fs.file-max (open files on the machine) is reached: raise it (`sysctl -w fs.file-max=...` as root), {advice}"
    bound = _least(b for b in measure_capacity().bounds if b.kind == kind)
    if bound is None:
        return ""
    if kind == "threads":
        return (f"{bound.describe()}; to make room for {THREAD_MARGIN} more threads: {bound.how_to_raise(THREAD_MARGIN)}; or have "
                f"fewer at once: listeners that block, connections served in the blocking style (max_connections bounds those)")
    return f"{bound.describe()}; to hold twice as many: {bound.how_to_raise(2 * max(1, bound.connections))}; {advice}"


def _least(bounds: Iterable[Bound]) -> Optional[Bound]:
    return min(bounds, key=lambda b: b.connections, default=None)


def _int(value: Optional[int]) -> str:
    return "?" if value is None else f"{value:,}"


def _bytes(value: int) -> str:
    return f"{value / 2**10:,.1f} KiB" if abs(value) < 2**20 else f"{value / 2**20:,.0f} MiB"
