#!/usr/bin/env python3
"""Idle connections held by several worker processes of one host.

    python3 benchmarks/idle_cluster.py                    # 57,000: 3 workers, 3 generators (a few minutes)
    python3 benchmarks/idle_cluster.py --connections 3000 --hold 5 --no-save   # a short try
    python3 benchmarks/idle_cluster.py --ref worktree

A one-off measurement, not a CI test. One run:

1. ``python -m ws_multipath serve servers:cluster_echo --workers N --host
   127.0.0.1 --port P --grace G`` (benchmarks/servers.py's echo on ``/``; the
   workers share the port with ``SO_REUSEPORT``), its RLIMIT_NOFILE raised to
   ``--server-nofile`` (soft and hard: the hard limit needs root or
   CAP_SYS_RESOURCE, else it stays; the report gives what the workers got).
2. M load.js generators in idle mode, generator i bound to its own source
   address 127.0.0.(2+i) (all of 127/8 is loopback on Linux; each source and
   destination address pair has its own ephemeral ports,
   ``net.ipv4.ip_local_port_range``), each opening ``connections / M`` with
   its soft RLIMIT_NOFILE at 20,000 (run.py's ``_raise_nofile``). With
   ``--sources-per-generator K`` each takes K addresses in turn: libuv binds
   with ``SO_REUSEADDR`` to port 0, and the kernel's search for a free port
   then scans one half of the range, one parity at a time, so a bind costs up
   to ~1.5 ms of CPU once an address holds more than ~7,000 ports.
3. Once every generator holds its share, a ``go`` line: all hold ``--hold`` s
   together with the heartbeat on (``--ping`` s), each sending a 32 B echo every
   ``--echo-every`` s to ``--echo-sample`` of its connections (round trips pooled).
4. Each worker's RSS, threads and descriptors from /proc before, once held and
   at the end of the hold; a worker's connections = its descriptors added.
5. SIGTERM to the supervisor (cluster/workers.py: each worker gets SIGTERM,
   ``server.close()`` closes every connection with 1001, the worker exits; one
   still alive after ``--grace`` s is killed): how long until each worker and
   the supervisor had exited, and the close codes the clients saw.

The machine's load average and busy share are sampled every second, and the
CPU of the servers and generators is subtracted to tell what others used.
Opening stops early (a ``stop`` line to every generator) if the machine's
threads near ``kernel.pid_max`` or ``kernel.threads-max`` (less ``--margin``),
or a worker nears ``vm.max_map_count``. Every wait has a deadline; only the
processes started here are ended, by pid. Results:
``benchmarks/results/<date>-<N>k.md`` and ``.json`` (``--name``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import queue
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402 - benchmarks/run.py: setup, snapshots, /proc readers, process handling

from run import BENCH, CLK_TCK, NOFILE, PYTHON, RESULTS, WORK, log  # noqa: E402
from idle_cluster_report import render  # noqa: E402


def server_preexec(nofile: int) -> Callable[[], None]:
    """Child side: RLIMIT_NOFILE to ``nofile`` (soft and hard), or as high as allowed."""

    def preexec() -> None:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, max(nofile, hard)))
        except (ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(nofile, hard), hard))

    return preexec


def can_raise_hard_limits() -> bool:
    """True if this process has CAP_SYS_RESOURCE (needed to raise a hard rlimit; root in a container may lack it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) & (1 << 24))  # CAP_SYS_RESOURCE is capability 24
    return False


def start_supervisor(opts: argparse.Namespace, port: int, logs: Path) -> tuple[subprocess.Popen, list[int]]:
    """The ``serve --workers`` supervisor and its workers' pids (from their "listening" lines)."""
    env = bench.server_env()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(BENCH)) if p)
    env["BENCH_PING_INTERVAL"] = str(opts.ping)
    stderr = open(logs / "server-cluster.log", "ab")
    command = [str(PYTHON), "-m", "ws_multipath", "serve", "servers:cluster_echo", "--workers", str(opts.workers),
               "--host", "127.0.0.1", "--port", str(port), "--grace", str(opts.grace)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL,
                            preexec_fn=server_preexec(opts.server_nofile), cwd=str(WORK), env=env)
    bench.CHILDREN.add(proc)
    stderr.close()
    reader, pids = bench.LineReader(proc), []
    deadline = time.monotonic() + 60
    while len(pids) < opts.workers:
        line = reader.readline(max(0.0, deadline - time.monotonic()))
        if line is None:
            raise RuntimeError(f"the workers did not all start (see {logs / 'server-cluster.log'})")
        if line.startswith("worker ") and " listening on " in line:
            pids.append(int(line.split()[1]))
    return proc, pids


def read_events(index: int, proc: subprocess.Popen, events: "queue.Queue[tuple[int, dict]]") -> None:
    """Thread: generator ``index``'s JSON lines into ``events``; ends with an ``exit`` event."""
    reader = bench.LineReader(proc)
    while True:
        event = reader.event(2.0)
        if event is not None:
            events.put((index, event))
        elif proc.poll() is not None:
            events.put((index, {"event": "exit", "code": proc.returncode}))
            return


def wait_all(events: "queue.Queue[tuple[int, dict]]", kind: str, count: int, timeout: float,
             seen: dict[int, dict], tick: Optional[Callable[[], None]] = None) -> dict[int, dict]:
    """Each generator's first ``kind`` event, within ``timeout`` s; an ``error``
    or an exit before it raises. Other events are kept in ``seen`` (the last of each)."""
    got: dict[int, dict] = {}
    deadline = time.monotonic() + timeout
    next_tick = time.monotonic() + 1.0
    while len(got) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"no {kind!r} from generators {sorted(set(range(count)) - set(got))} within {timeout:.0f} s")
        try:
            index, event = events.get(timeout=min(left, 1.0))
        except queue.Empty:
            event = None
        if event is not None:
            name = event.get("event")
            if name == kind:
                got[index] = event
            elif name in ("error", "exit") and index not in got:
                raise RuntimeError(f"generator {index}: {event.get('message') or 'exited with ' + str(event.get('code'))}")
            seen[index] = event
        if tick is not None and time.monotonic() >= next_tick:
            next_tick = time.monotonic() + 1.0
            tick()
    return got


class Machine(threading.Thread):
    """Every second: the 1-minute load average, the machine's busy jiffies and
    its threads; ``mark(name)`` ends a phase, ``phases`` sums each one up."""

    def __init__(self, ours: Callable[[], float]) -> None:
        super().__init__(daemon=True)
        self.ours = ours  # CPU seconds of the servers and the generators, so far
        self.samples: list[tuple[float, float, int]] = []  # (time, load average, threads)
        self.marks: list[tuple[str, float, tuple[float, float], float]] = []
        self._halt = threading.Event()
        self.mark("start")

    def run(self) -> None:
        while not self._halt.wait(1.0):
            load = float(Path("/proc/loadavg").read_text().split()[0])
            self.samples.append((time.monotonic(), load, bench.system_tasks()))

    def mark(self, name: str) -> None:
        try:
            ours = self.ours()
        except OSError:
            ours = float("nan")  # a process ended meanwhile (the close phase)
        self.marks.append((name, time.monotonic(), bench.machine_times(), ours))

    def phases(self) -> list[dict]:
        out = []
        for (_, t0, (idle0, total0), ours0), (name, t1, (idle1, total1), ours1) in zip(self.marks, self.marks[1:]):
            seconds = t1 - t0
            busy = ((total1 - total0) - (idle1 - idle0)) / CLK_TCK / seconds if seconds else 0.0
            ours = (ours1 - ours0) / seconds if seconds and ours1 == ours1 and ours0 == ours0 else None
            loads = [load for t, load, _ in self.samples if t0 <= t <= t1]
            tasks = [n for t, _, n in self.samples if t0 <= t <= t1]
            out.append({"phase": name, "seconds": seconds, "busy_cores": busy, "our_cores": ours,
                        "other_cores": None if ours is None else max(0.0, busy - ours),
                        "loadavg_max": max(loads, default=None), "loadavg_mean": statistics.fmean(loads) if loads else None,
                        "machine_threads_max": max(tasks, default=None)})
        return out

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():  # not started when the workers failed to start
            self.join(5)


def exited(pid: int) -> bool:
    """True once ``pid`` has exited (gone, or a zombie its parent has not reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


def peers_by_address(port: int) -> dict[str, int]:
    """Established connections to ``port``, counted by the client's address (``ss``)."""
    try:
        lines = subprocess.run(["ss", "-Htn", "state", "established", f"( sport = :{port} )"], capture_output=True, text=True,
                               timeout=60, check=True).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return {}
    counts: dict[str, int] = {}
    for line in lines:
        address = line.split()[-1].rsplit(":", 1)[0]
        counts[address] = counts.get(address, 0) + 1
    return counts


def measure(opts: argparse.Namespace, logs: Path) -> dict[str, Any]:
    per_generator = -(-opts.connections // opts.generators)
    pid_max = bench.read_sysctl("kernel.pid_max", 32768)
    task_limit = min(pid_max, bench.read_sysctl("kernel.threads-max", 1 << 30)) - opts.margin
    map_limit = bench.read_sysctl("vm.max_map_count", 65530) - 2000
    background = bench.wait_quiet(opts)
    port = bench.free_port()
    supervisor, pids = start_supervisor(opts, port, logs)
    generators: list[subprocess.Popen] = []
    events: "queue.Queue[tuple[int, dict]]" = queue.Queue()
    k = opts.sources_per_generator
    sources = [[f"127.0.0.{2 + i * k + j}" for j in range(k)] for i in range(opts.generators)]
    machine = Machine(lambda: bench.cpu_seconds(supervisor.pid) + sum(bench.cpu_seconds(g.pid) for g in generators))
    result: dict[str, Any] = {"port": port, "worker_pids": pids, "sources": sources, "background_busy_pct": background}
    try:
        time.sleep(0.5)
        result["before"] = {pid: bench.proc_status(pid) for pid in pids}
        result["worker_nofile"] = {pid: bench.nofile_limit(pid) for pid in pids}
        machine.start()
        for i, source in enumerate(sources):
            target = min(per_generator, opts.connections - i * per_generator)
            config = dict(mode="idle", url=f"ws://127.0.0.1:{port}/", target=target, concurrency=opts.concurrency, max_failures=200,
                          connect_limit=opts.connect_limit, hold=opts.hold, echo_every=opts.echo_every, echo_sample=opts.echo_sample,
                          echo_raw=True, local_address=source if k > 1 else source[0], wait_go=True, wait_close=True, close_wait=opts.grace + 30,
                          timeout=2 * opts.connect_limit + opts.hold + opts.grace + 120)
            generators.append(bench.start_load(config, logs, name=f"load-cluster-{i}"))
            threading.Thread(target=read_events, args=(i, generators[-1], events), daemon=True).start()
        seen: dict[int, dict] = {}
        guard: list[str] = []
        last_log = [time.monotonic()]

        def tick() -> None:
            if time.monotonic() - last_log[0] >= 10:
                last_log[0] = time.monotonic()
                log(f"  open: {sum(e.get('open', 0) for e in seen.values()):,} ({time.monotonic() - machine.marks[0][1]:.0f} s)")
            if guard:
                return
            tasks = bench.system_tasks()
            maps = max((bench.map_count(pid) for pid in pids if not exited(pid)), default=0)
            if tasks > task_limit:
                guard.append(f"machine at {tasks} threads (limit {task_limit} = pid/thread limit - margin)")
            elif maps > map_limit:
                guard.append(f"a worker at {maps} memory maps (vm.max_map_count {map_limit + 2000})")
            for g in generators if guard else []:
                g.stdin.write(b"stop\n")  # type: ignore[union-attr]
                g.stdin.flush()  # type: ignore[union-attr]

        held = wait_all(events, "held", len(generators), opts.connect_limit + 60, seen, tick)
        machine.mark("connect")
        time.sleep(1.0)
        result["held_status"] = {pid: bench.proc_status(pid) for pid in pids}
        result["generator_status"] = [bench.proc_status(g.pid) for g in generators]
        result["by_source"] = peers_by_address(port)
        for g in generators:
            g.stdin.write(b"go\n")  # type: ignore[union-attr]
            g.stdin.flush()  # type: ignore[union-attr]
        holding = wait_all(events, "holding", len(generators), 30, seen)
        machine.mark("settle")
        cpu0 = {pid: bench.cpu_seconds(pid) for pid in pids}
        results = wait_all(events, "result", len(generators), opts.hold + 60, seen)
        machine.mark("hold")
        result["end_status"] = {pid: bench.proc_status(pid) for pid in pids if not exited(pid)}
        result["hold_cores"] = {pid: (bench.cpu_seconds(pid) - cpu0[pid]) / opts.hold for pid in pids if not exited(pid)}
        result["machine_threads_at_hold"] = bench.system_tasks()
        result["sockstat"] = Path("/proc/net/sockstat").read_text()
        started = time.monotonic()
        os.kill(supervisor.pid, signal.SIGTERM)
        exits: dict[int, float] = {}
        while len(exits) < len(pids) and time.monotonic() - started < opts.grace + 30:
            for pid in pids:
                if pid not in exits and exited(pid):
                    exits[pid] = time.monotonic() - started
            time.sleep(0.02)
        try:
            supervisor.wait(max(1.0, opts.grace + 30 - (time.monotonic() - started)))
            result["supervisor_exit_seconds"] = time.monotonic() - started
            result["supervisor_exit_code"] = supervisor.returncode
        except subprocess.TimeoutExpired:
            result["supervisor_exit_seconds"] = None
        result["worker_exit_seconds"] = exits
        machine.mark("close")
        closed = wait_all(events, "closed", len(generators), opts.grace + 60, seen)
        result["generators"] = [dict(held=held[i], holding=holding[i], result=results[i], closed=closed[i]) for i in range(len(generators))]
        result["guard"] = guard[0] if guard else None
        server_log = (logs / "server-cluster.log").read_text(errors="replace").splitlines()[-200:]
        result["server_log_notes"] = [line for line in server_log if "killing" in line or "still open" in line or "exited with status" in line]
    finally:
        machine.stop()
        result["phases"] = machine.phases()
        result["loadavg"] = [(round(t - machine.marks[0][1], 1), load) for t, load, _ in machine.samples]
        for g in generators:
            try:
                g.wait(10)
            except subprocess.TimeoutExpired:
                pass
            bench.stop_process(g)
        bench.stop_process(supervisor, grace=opts.grace + 10)
        for pid in pids:  # orphans, if the supervisor had to be killed (its workers end with it: PR_SET_PDEATHSIG)
            if not exited(pid):
                os.kill(pid, signal.SIGKILL)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=57_000, help="connections to hold in all (default 57,000)")
    parser.add_argument("--workers", type=int, default=3, help="server worker processes (default 3)")
    parser.add_argument("--generators", type=int, default=3, help="load generator processes, one source address each (default 3)")
    parser.add_argument("--hold", type=float, default=30.0, help="seconds to hold them all (default 30)")
    parser.add_argument("--ping", type=float, default=20.0, help="heartbeat interval (default 20, the library's default)")
    parser.add_argument("--echo-sample", type=int, default=8, help="connections per generator that get a sample echo (default 8)")
    parser.add_argument("--echo-every", type=float, default=1.0, help="seconds between two sample echoes on each (default 1)")
    parser.add_argument("--sources-per-generator", type=int, default=1, help="loopback source addresses per generator, taken in turn (default 1)")
    parser.add_argument("--concurrency", type=int, default=100, help="handshakes in flight per generator (default 100)")
    parser.add_argument("--connect-limit", type=float, default=300.0, help="seconds allowed to open them (default 300)")
    parser.add_argument("--grace", type=float, default=60.0, help="the supervisor's --grace: seconds a worker may take to close (default 60)")
    parser.add_argument("--server-nofile", type=int, default=65536, help="RLIMIT_NOFILE of the server processes (default 65536)")
    parser.add_argument("--margin", type=int, default=2500, help="threads left free on the machine (pid_max guard)")
    parser.add_argument("--quiet-wait", type=float, default=60.0, help="seconds to wait at most for the machine to calm down first (default 60)")
    parser.add_argument("--quiet-threshold", type=float, default=15.0, help="machine busy %% counted as quiet (default 15)")
    parser.add_argument("--ref", default="HEAD", help="git commit of ws_multipath (default HEAD; 'worktree': the work tree)")
    parser.add_argument("--name", help="results file name after the date (default <connections/1000>k)")
    parser.add_argument("--no-save", action="store_true", help="print the report only")
    opts = parser.parse_args()
    per_generator = -(-opts.connections // opts.generators)
    low, high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    if per_generator > NOFILE - 100:
        parser.error(f"{per_generator:,} connections per generator: above {NOFILE - 100:,} (each has {NOFILE:,} fds); raise --generators")
    if opts.generators < 1 or opts.sources_per_generator < 1 or opts.workers < 1:
        parser.error("--generators, --sources-per-generator and --workers must be at least 1")
    if opts.generators * opts.sources_per_generator > 250:
        parser.error("--generators x --sources-per-generator: 250 source addresses at most (127.0.0.2 to 127.0.0.251)")
    if -(-per_generator // opts.sources_per_generator) > high - low + 1:
        parser.error(f"{per_generator:,} connections per generator: above the {high - low + 1:,} ephemeral ports of each of its "
                     "source addresses; raise --generators or --sources-per-generator")
    opts.quiet_budget = opts.quiet_wait
    signal.signal(signal.SIGTERM, bench._on_sigterm)
    bench.setup(profile=False)
    logs = WORK / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now()
    library = bench.prepare_library(opts.ref)
    log(f"ws_multipath under test: {library['ws_multipath source']}")
    meta = {
        "date": now.isoformat(timespec="seconds"), "command": "python3 benchmarks/idle_cluster.py " + " ".join(sys.argv[1:]),
        "machine": bench.machine(), "library": library, "versions": bench.versions(),
        "options": {k: v for k, v in vars(opts).items() if k not in ("quiet_budget",)},
        "sysctl": {name: Path("/proc/sys/" + name.replace(".", "/")).read_text().split() for name in
                   ("kernel.pid_max", "kernel.threads-max", "net.ipv4.ip_local_port_range", "fs.nr_open", "net.core.somaxconn", "vm.max_map_count")},
        "nofile_here": resource.getrlimit(resource.RLIMIT_NOFILE),
        "cap_sys_resource": can_raise_hard_limits(),
    }
    started = time.monotonic()
    result = measure(opts, logs)
    meta["elapsed_s"] = round(time.monotonic() - started, 1)
    text = render(meta, result)
    print()
    print(text)
    if not opts.no_save:
        RESULTS.mkdir(exist_ok=True)
        base = RESULTS / f"{now.strftime('%Y-%m-%d')}-{opts.name or f'{round(opts.connections / 1000)}k'}"
        base.with_suffix(".md").write_text(text)
        base.with_suffix(".json").write_text(json.dumps({"meta": meta, "result": result}, indent=1, default=str) + "\n")
        log(f"written: {base.with_suffix('.md')} and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
