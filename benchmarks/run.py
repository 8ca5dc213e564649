#!/usr/bin/env python3
"""ws_multipath vs websockets (sync), side by side. Needs only python3 and node.

    python3 benchmarks/run.py                 # full run (~10 min)
    python3 benchmarks/run.py --quick         # ~2 min
    python3 benchmarks/run.py --scenarios echo_16x1KiB,idle --reps 5
    python3 benchmarks/run.py --soak 120      # longer memory soak
    python3 benchmarks/run.py --profile 10    # py-spy profile of the 16-client 1 KiB echo, both servers
    python3 benchmarks/run.py --list          # scenario names

Setup (done by this script, idempotent): the repo's .venv (as dev.py makes
it) with ws_multipath, ``websockets>=17,<18`` and (for --profile) ``py-spy``;
``npm install ws@8 bufferutil@4`` into benchmarks/.work/ (git-ignored).

Each run starts a FRESH server process (benchmarks/servers.py) and one
Node.js load generator (benchmarks/load.js); the two libraries alternate
(A B A B ...) for --reps repetitions. The server's CPU time is read from
/proc/<pid>/stat at the start and end of the measurement window; the
generator reports its own. Results: a table on stdout and
benchmarks/results/<date>[-quick|-partial].md and .json.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import json
import os
import platform
import resource
import select
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import venv
from pathlib import Path
from typing import Any, Optional

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORK = BENCH / ".work"
RESULTS = BENCH / "results"
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"
IMPLS = ("ws_multipath", "websockets")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
NOFILE = 20000  # wanted soft limit of open files for servers and generators (capped at the hard limit)
KiB, MiB = 1024, 1024 * 1024
SOAK_OPS_PER_S = 200_000  # the soak's ops bound per second of --soak (well above any server's rate here)
GEN_BOUND = 0.85  # generator cores from which a figure is marked as possibly generator-bound

#: Every server a scenario can compare (see servers.py and node_server.js).
PEER_TITLES = {
    "ws_multipath": "ws_multipath",
    "websockets": "websockets 17 (sync)",
    "node_ws": "Node ws",
    "raw_tcp": "raw TCP echo (Python threads, no framing)",
    "ws_multipath+wsgi": "ws_multipath with a wsgi_app mounted",
    "werkzeug": "Werkzeug dev server (threaded; it closes the connection after every response)",
    "gunicorn": "gunicorn --threads 16",
}
WS_PEERS = ("ws_multipath", "websockets", "node_ws")
ECHO_PEERS = ("ws_multipath", "websockets", "node_ws", "raw_tcp")
IMPLS = ("ws_multipath", "websockets")  # the idle and soak scenarios (and --profile)


def _echo(name: str, clients: int, size: int, title: str, binary: bool = False, inflight: int = 1, server: str = "echo", **extra: Any) -> dict[str, Any]:
    return dict(name=name, server=server, load=dict(mode="echo", clients=clients, size=size, binary=binary, inflight=inflight),
                unit="msg/s", title=title, impls=ECHO_PEERS, **extra)


# name, server mode, load config, unit, title; impls: the servers compared
# (the first is the subject), baseline: the one the ratio divides by.
SCENARIOS: list[dict[str, Any]] = [
    _echo("echo_1x32B", 1, 32, "echo, 1 client, 32 B text"),
    _echo("echo_16x32B", 16, 32, "echo, 16 clients, 32 B text"),
    _echo("echo_16x1KiB", 16, KiB, "echo, 16 clients, 1 KiB text"),
    _echo("echo_256x32B", 256, 32, "echo, 256 clients, 32 B text"),
    _echo("echo_16x64KiB", 16, 64 * KiB, "echo, 16 clients, 64 KiB binary", binary=True),
    _echo("echo_16x1MiB", 16, MiB, "echo, 16 clients, 1 MiB binary", binary=True),
    _echo("echo_16x64KiB_text", 16, 64 * KiB, "echo, 16 clients, 64 KiB text"),
    _echo("pipelined_1x32_1KiB", 1, KiB, "pipelined echo, 1 client, 32 in flight, 1 KiB", inflight=32),
    _echo("iter_16x32B", 16, 32, "`for message in ws`, 16 clients, 32 B", server="iter"),
    _echo("iter_16x1KiB", 16, KiB, "`for message in ws`, 16 clients, 1 KiB", server="iter"),
    _echo("iter_256x32B", 256, 32, "`for message in ws`, 256 clients, 32 B", server="iter"),
    _echo("iter_pipelined_1x32_1KiB", 1, KiB, "`for message in ws`, pipelined, 1 client, 32 in flight, 1 KiB", server="iter", inflight=32),
    dict(name="push_burst_16x16x32B", server="burst", load=dict(mode="burst", clients=16, count=16, size=32), unit="msg/s", impls=WS_PEERS,
         title="server push: 16 clients, each request answered by 16 x 32 B"),
    dict(name="push_stream_1x32B", server="stream", load=dict(mode="stream", clients=1, size=32), unit="msg/s", impls=WS_PEERS,
         title="server push: stream of 32 B messages to 1 client"),
    # below the 1024-byte threshold of ws_multipath and ws (their default): their servers
    # send these uncompressed, websockets compresses every message; --deflate-threshold 0
    # makes them compress too. ws's client (the generator) sends them uncompressed either way.
    dict(name="deflate_16x256B", server="echo", compression=True, load=dict(mode="echo", clients=16, size=256, binary=False, inflight=1, words=True, compression=True),
         unit="msg/s", impls=WS_PEERS, title="deflate on: echo, 16 clients, 256 B text"),
    dict(name="deflate_16x1KiB", server="echo", compression=True, load=dict(mode="echo", clients=16, size=KiB, binary=False, inflight=1, words=True, compression=True),
         unit="msg/s", impls=WS_PEERS, title="deflate on: echo, 16 clients, 1 KiB text"),
    dict(name="deflate_16x64KiB", server="echo", compression=True, load=dict(mode="echo", clients=16, size=64 * KiB, binary=False, inflight=1, words=True, compression=True),
         unit="msg/s", impls=WS_PEERS, title="deflate on: echo, 16 clients, 64 KiB text"),
    dict(name="connect_close_32", server="echo", load=dict(mode="connect", concurrency=32), unit="conn/s", impls=WS_PEERS,
         title="connect+handshake+close, 32 at a time"),
    dict(name="broadcast_1000", server="broadcast", load=dict(mode="broadcast", clients=1000, size=32, window=8), unit="deliveries/s", impls=WS_PEERS,
         title="broadcast to 1000 clients, 32 B, 8 outstanding"),
    dict(name="wsgi_mounted_16x1KiB", server="echo", load=dict(mode="echo", clients=16, size=KiB, binary=False, inflight=1), unit="msg/s",
         impls=("ws_multipath+wsgi", "ws_multipath"), baseline="ws_multipath",
         title="echo, 16 clients, 1 KiB, with a wsgi_app mounted / without"),
    dict(name="http_keepalive_16", server="http", load=dict(mode="http", clients=16), unit="req/s",
         impls=("ws_multipath", "werkzeug", "gunicorn"), baseline="werkzeug",
         title="HTTP keep-alive, tiny Flask app, 16 connections"),
    dict(name="idle", kind="idle", title="idle connections held, heartbeat every 5 s", impls=IMPLS),
    dict(name="soak_256x32B", kind="soak", title="memory under a long 256-client 32 B echo", impls=IMPLS),
]
for _s in SCENARIOS:
    _s.setdefault("baseline", "websockets")
BY_NAME = {s["name"]: s for s in SCENARIOS}


# -- setup ------------------------------------------------------------------


def log(message: str) -> None:
    print(message, flush=True)


def pip_install(*requirements: str) -> None:
    subprocess.check_call([str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *requirements])


def venv_has(check: str) -> bool:
    return subprocess.call([str(PYTHON), "-c", check], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) == 0


def setup(profile: bool) -> None:
    if not PYTHON.exists():
        log(f"creating {VENV}")
        venv.EnvBuilder(with_pip=True).create(VENV)
    if not venv_has("import ws_multipath"):
        pip_install("-e", str(ROOT))
    elif (ROOT / "ws_multipath" / "_speedups.c").exists() and not venv_has(SPEEDUPS_CHECK):
        log("building the C speedups into the work tree (pip install -e)")
        pip_install("-e", str(ROOT))
    if not venv_has("import websockets, sys; sys.exit(websockets.__version__.split('.')[0] != '17')"):
        log("installing websockets 17 into .venv")
        pip_install("websockets>=17,<18")
    if not venv_has("import flask"):
        log("installing Flask into .venv (the HTTP scenario)")
        pip_install("flask")
    if not venv_has("import gunicorn"):
        log("installing gunicorn into .venv (the HTTP scenario)")
        pip_install("gunicorn")
    if not venv_has("import matplotlib"):
        log("installing matplotlib into .venv (the chart)")
        pip_install("matplotlib")
    if profile and shutil.which("py-spy", path=str(VENV / "bin")) is None:
        log("installing py-spy into .venv")
        pip_install("py-spy")
    if shutil.which("node") is None:
        raise SystemExit("node (Node.js >= 18) is needed for the load generator")
    if not (WORK / "node_modules" / "ws" / "package.json").exists():
        log(f"npm install ws into {WORK}")
        WORK.mkdir(parents=True, exist_ok=True)
        npm = ["npm", "install", "--no-audit", "--no-fund", "--silent", "--prefix", str(WORK)]
        if subprocess.call([*npm, "ws@8", "bufferutil@4"]) != 0:  # bufferutil (native masking) is optional
            subprocess.check_call([*npm, "ws@8"])


SPEEDUPS_CHECK = "import sys, ws_multipath.protocol as p; sys.exit(not p.SPEEDUPS)"

SERVER_ENV: dict[str, str] = {}  # environment of the server processes (PYTHONPATH of the snapshot)


def prepare_library(ref: str) -> dict[str, str]:
    """Benchmark ws_multipath as committed at `ref` (default HEAD): extract it
    into benchmarks/.work/snapshots/<commit>/ and put that first on the
    servers' PYTHONPATH, so edits made to the work tree during a run do not
    mix into it. `worktree` benchmarks the work tree as it is."""
    if ref == "worktree":
        commit = subprocess.check_output(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], text=True).strip()
        dirty = subprocess.check_output(["git", "-C", str(ROOT), "status", "--porcelain", "--", "ws_multipath"], text=True).strip()
        SERVER_ENV.pop("PYTHONPATH", None)
        return {"ws_multipath source": f"work tree at {commit}" + (" + uncommitted changes" if dirty else ""), "path": str(ROOT)}
    commit = subprocess.check_output(["git", "-C", str(ROOT), "rev-parse", "--short", ref + "^{commit}"], text=True).strip()
    target = WORK / "snapshots" / commit
    if not (target / "ws_multipath" / "__init__.py").exists():
        target.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "ws_multipath"], check=True, stdout=subprocess.PIPE).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    if (target / "ws_multipath" / "_speedups.c").exists() and not list((target / "ws_multipath").glob("_speedups*.so")):
        build_speedups(commit, target)
    subject = subprocess.check_output(["git", "-C", str(ROOT), "log", "-1", "--format=%s", commit], text=True).strip()
    SERVER_ENV["PYTHONPATH"] = str(target)
    return {"ws_multipath source": f"commit {commit} ({subject[:70]})", "path": str(target)}


def build_speedups(commit: str, target: Path) -> None:
    """Build the snapshot's optional C extension as an install would (a
    wheel of the commit's setup.py, by pip) and put it beside its sources;
    without it the snapshot runs the pure-Python path (the report says so)."""
    import tempfile
    import zipfile

    log(f"building the C speedups of {commit}")
    with tempfile.TemporaryDirectory(dir=str(WORK)) as scratch:
        source = Path(scratch) / "src"
        source.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "ws_multipath", "setup.py", "setup.cfg", "README.rst"], check=True, stdout=subprocess.PIPE).stdout
        subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
        wheels = Path(scratch) / "wheels"
        built = subprocess.call([str(PYTHON), "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--no-deps", "-w", str(wheels), str(source)])
        for wheel in wheels.glob("*.whl") if built == 0 else []:
            with zipfile.ZipFile(wheel) as archive_file:
                for name in archive_file.namelist():
                    if name.startswith("ws_multipath/_speedups") and name.endswith(".so"):
                        (target / name).write_bytes(archive_file.read(name))
    if not list((target / "ws_multipath").glob("_speedups*.so")):
        log(f"the C speedups of {commit} did not build: its snapshot runs the pure-Python path")


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.update(SERVER_ENV)
    return env


def versions() -> dict[str, str]:
    code = (
        "import json, platform, websockets, ws_multipath, ws_multipath.protocol, wsproto;"
        "print(json.dumps({'python': platform.python_version(), 'websockets': websockets.__version__,"
        " 'ws_multipath': ws_multipath.__version__, 'wsproto': wsproto.__version__ if hasattr(wsproto, '__version__') else '?',"
        " 'ws_multipath speedups': {True: 'C', False: 'pure Python'}.get(getattr(ws_multipath.protocol, 'SPEEDUPS', False))}))"
    )
    info = json.loads(subprocess.check_output([str(PYTHON), "-c", code], text=True, env=server_env(), cwd=str(WORK)))
    info["node"] = subprocess.check_output(["node", "--version"], text=True).strip()
    info["ws (node)"] = json.loads((WORK / "node_modules" / "ws" / "package.json").read_text())["version"]
    info["bufferutil"] = "yes" if (WORK / "node_modules" / "bufferutil").exists() else "no"
    return info


def machine() -> dict[str, Any]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    try:
        mem_kib = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
    except (OSError, IndexError, ValueError):
        pass
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": model,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "nofile_hard": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
    }


# -- processes --------------------------------------------------------------


def _raise_nofile() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = NOFILE if hard == resource.RLIM_INFINITY else min(NOFILE, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads) and of its live
    children (gunicorn's worker)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    total = (int(fields[11]) + int(fields[12])) / CLK_TCK
    for child in child_pids(pid):
        try:
            total += cpu_seconds(child)
        except OSError:
            pass
    return total


def child_pids(pid: int) -> list[int]:
    children: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            children += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    except OSError:
        pass
    return children


def proc_status(pid: int) -> dict[str, int]:
    """RSS (bytes), threads and open descriptors of a process."""
    status = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        status[key] = value.strip()
    return {
        "rss": int(status["VmRSS"].split()[0]) * 1024,
        "threads": int(status["Threads"]),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }


def machine_times() -> tuple[float, float]:
    """(idle, total) jiffies of all CPUs, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return fields[3] + fields[4], sum(fields[:8])


def machine_busy(seconds: float = 0.5) -> float:
    """Share (%) of all CPUs busy over `seconds`."""
    idle0, total0 = machine_times()
    time.sleep(seconds)
    idle1, total1 = machine_times()
    return 100.0 * (1 - (idle1 - idle0) / max(1, total1 - total0))


def wait_quiet(opts: argparse.Namespace) -> float:
    """Wait (up to --quiet-wait s) until other processes leave the machine
    mostly idle; return the busy share seen last (recorded with each run)."""
    start = time.monotonic()
    deadline = start + min(opts.quiet_wait, opts.quiet_budget)
    told = False
    try:
        while True:
            busy = machine_busy()
            if busy <= opts.quiet_threshold or time.monotonic() >= deadline:
                return busy
            if not told:
                log(f"  machine {busy:.0f}% busy before the run (other processes); waiting up to "
                    f"{deadline - time.monotonic():.0f} s for < {opts.quiet_threshold:.0f}%")
                told = True
    finally:
        opts.quiet_budget = max(0.0, opts.quiet_budget - (time.monotonic() - start))


def system_tasks() -> int:
    """Threads on the whole machine (counts against kernel.pid_max)."""
    return int(Path("/proc/loadavg").read_text().split()[3].split("/")[1])


def nofile_limit(pid: int) -> Optional[int]:
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return int(line.split()[3])
    except (OSError, ValueError, IndexError):
        pass
    return None


def map_count(pid: int) -> int:
    with open(f"/proc/{pid}/maps", "rb") as f:
        return sum(1 for _ in f)


def read_sysctl(name: str, default: int) -> int:
    try:
        return int(Path("/proc/sys/" + name.replace(".", "/")).read_text().split()[0])
    except (OSError, ValueError):
        return default


CHILDREN: set = set()  # processes this script started and has not ended yet


def _end_children() -> None:
    for proc in list(CHILDREN):
        stop_process(proc, grace=1.0)


def _on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


atexit.register(_end_children)


def stop_process(proc: subprocess.Popen, grace: float = 2.0) -> None:
    """End one process this script started, by its pid: SIGTERM, then SIGKILL."""
    CHILDREN.discard(proc)
    if proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
    except ProcessLookupError:
        pass


class LineReader:
    """Lines of a child's stdout, with a deadline."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.buffer = b""

    def readline(self, timeout: float) -> Optional[str]:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()  # type: ignore[union-attr]
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    return None
                self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()

    def event(self, timeout: float) -> Optional[dict]:
        deadline = time.monotonic() + timeout
        while True:
            line = self.readline(max(0.0, deadline - time.monotonic()))
            if line is None:
                return None
            line = line.strip()
            if line.startswith("{"):
                return json.loads(line)


class Sampler(threading.Thread):
    """Samples a process's RSS and threads every `interval` seconds."""

    def __init__(self, pid: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, int, int]] = []
        self._halt = threading.Event()
        self.t0 = time.monotonic()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                status = proc_status(self.pid)
            except (OSError, KeyError):
                return
            self.samples.append((time.monotonic() - self.t0, status["rss"], status["threads"]))
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(5)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(port: int, timeout: float) -> bool:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


def start_server(impl: str, mode: str, logs: Path, ping_interval: float = 20.0, ping_timeout: float = 20.0,
                 compression: bool = False, control: bool = False, deflate_threshold: Optional[int] = None) -> tuple[subprocess.Popen, int]:
    """Start a server; ``control``: it answers ``capacity`` and ``close`` on stdin (servers.py --control).
    ``deflate_threshold`` (with ``compression``; ws_multipath and node_ws): permessage-deflate's
    threshold instead of the library's default (1024 in both; websockets has none)."""
    stderr = open(logs / f"server-{impl}.log", "ab")
    port = 0
    threshold = deflate_threshold if compression else None
    if impl == "node_ws":
        command = ["node", str(BENCH / "node_server.js"), json.dumps({"mode": mode, "compression": compression, "threshold": threshold})]
    elif impl == "gunicorn":
        port = free_port()
        command = [str(PYTHON), "-m", "gunicorn", "--workers", "1", "--threads", "16", "--worker-class", "gthread",
                   "--bind", f"127.0.0.1:{port}", "--chdir", str(BENCH), "--log-level", "warning", "flask_app:app"]
    else:
        name = "ws_multipath" if impl == "ws_multipath+wsgi" else impl
        command = [str(PYTHON), str(BENCH / "servers.py"), "--impl", name, "--mode", mode,
                   "--ping-interval", str(ping_interval), "--ping-timeout", str(ping_timeout)]
        command += ["--compression"] if compression else []
        command += ["--deflate-threshold", str(threshold)] if threshold is not None and name == "ws_multipath" else []
        command += ["--wsgi"] if impl == "ws_multipath+wsgi" else []
        command += ["--control"] if control else []
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE if not port else subprocess.DEVNULL,
        stderr=stderr,
        stdin=subprocess.PIPE if control else subprocess.DEVNULL,
        preexec_fn=_raise_nofile,
        cwd=str(WORK),
        env=server_env(),
    )
    CHILDREN.add(proc)
    stderr.close()
    if port:
        if not wait_listening(port, 20):
            stop_process(proc)
            raise RuntimeError(f"{impl} server did not start (see {logs / f'server-{impl}.log'})")
        return proc, port
    line = LineReader(proc).readline(20)
    if not line or not line.startswith("PORT "):
        stop_process(proc)
        raise RuntimeError(f"{impl} server did not start (see {logs / f'server-{impl}.log'})")
    parts = line.split()
    wanted = SERVER_ENV.get("PYTHONPATH")
    if impl.startswith("ws_multipath") and wanted and not parts[2].startswith(wanted):
        stop_process(proc)
        raise RuntimeError(f"the server imported {parts[2]}, not the snapshot in {wanted}")
    return proc, int(parts[1])


def start_load(config: dict, logs: Path, name: str = "load") -> subprocess.Popen:
    """A load.js process (stdin and stdout piped), its stderr in ``logs/<name>.log``."""
    stderr = open(logs / f"{name}.log", "ab")
    proc = subprocess.Popen(
        ["node", str(BENCH / "load.js"), json.dumps(config)],
        stdout=subprocess.PIPE,
        stdin=subprocess.PIPE,
        stderr=stderr,
        preexec_fn=_raise_nofile,
    )
    CHILDREN.add(proc)
    stderr.close()
    return proc


# -- one run ------------------------------------------------------------------


def run_throughput(scenario: dict, impl: str, opts: argparse.Namespace, logs: Path, duration: Optional[float] = None, sample_every: float = 0.25,
                   max_ops: Optional[int] = None) -> dict:
    background = wait_quiet(opts)
    server, port = start_server(impl, scenario["server"], logs, compression=scenario.get("compression", False), deflate_threshold=opts.deflate_threshold)
    load = None
    sampler = None
    try:
        duration = duration or opts.duration
        config = dict(scenario["load"], url=f"ws://127.0.0.1:{port}/", raw=impl == "raw_tcp", warmup=opts.warmup, duration=duration, max_ops=max_ops or opts.max_ops, timeout=duration + opts.warmup + 60)
        baseline = proc_status(server.pid)
        load = start_load(config, logs)
        reader = LineReader(load)
        event = reader.event(45)
        if event is None or event["event"] != "connected":
            raise RuntimeError(f"generator did not connect: {event}")
        event = reader.event(opts.warmup + 20)
        if event is None or event["event"] != "start":
            raise RuntimeError(f"generator did not start: {event}")
        cpu0 = cpu_seconds(server.pid)
        idle0 = machine_times()
        sampler = Sampler(server.pid, sample_every)
        sampler.start()
        event = reader.event(duration + 30)
        cpu1 = cpu_seconds(server.pid)
        idle1 = machine_times()
        sampler.stop()
        if event is None or event["event"] != "result":
            raise RuntimeError(f"generator gave no result: {event}")
        alive = server.poll() is None
        ops, seconds = event["ops"], event["seconds"]
        gen_cpu = event["cpu_user_s"] + event["cpu_system_s"]
        server_cpu = cpu1 - cpu0
        rss = [s[1] for s in sampler.samples] or [baseline["rss"]]
        result = {
            "impl": impl,
            "rate": ops / seconds if seconds else 0.0,
            "ops": ops,
            "seconds": seconds,
            "server_cpu_s": server_cpu,
            "gen_cpu_s": gen_cpu,
            "server_cpu_per_op_us": server_cpu / ops * 1e6 if ops else None,
            "gen_cpu_per_op_us": gen_cpu / ops * 1e6 if ops else None,
            "server_cores": server_cpu / seconds if seconds else 0.0,
            "gen_cores": gen_cpu / seconds if seconds else 0.0,
            "machine_idle_pct": 100.0 * (idle1[0] - idle0[0]) / max(1, idle1[1] - idle0[1]),
            # cores busy on the machine beyond the server and the generator (other processes, unattributed kernel work)
            "other_cores": max(0.0, ((idle1[1] - idle0[1]) - (idle1[0] - idle0[0])) / CLK_TCK / seconds - server_cpu / seconds - gen_cpu / seconds) if seconds else None,
            "background_busy_pct": background,
            "server_rss_peak": max(rss),
            "server_threads_peak": max((s[2] for s in sampler.samples), default=baseline["threads"]),
            "server_alive": alive,
            "rss_samples": [(round(t, 2), r) for t, r, _ in sampler.samples] if scenario.get("keep_samples") else None,
            "generator": {k: v for k, v in event.items() if k not in ("event", "ops", "seconds", "cpu_user_s", "cpu_system_s")},
        }
        return result
    finally:
        try:
            if sampler is not None:
                sampler.stop()
            if load is not None:
                try:
                    load.wait(10)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            if load is not None:
                stop_process(load)
            stop_process(server)


def ask(server: subprocess.Popen, reader: "LineReader", word: str, answer: str, timeout: float) -> Optional[dict]:
    """Send a --control line to the server; its JSON answer (event ``answer``), or None."""
    try:
        server.stdin.write(word.encode() + b"\n")  # type: ignore[union-attr]
        server.stdin.flush()  # type: ignore[union-attr]
    except OSError:
        return None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        event = reader.event(max(0.0, deadline - time.monotonic()))
        if event is None or event.get("event") == answer:
            return event
    return None


def run_idle(impl: str, opts: argparse.Namespace, logs: Path) -> dict:
    """Open up to --idle-target connections, hold them with the heartbeat on
    while sample echoes go to --idle-echo-sample of them every
    --idle-echo-every s (round trips timed), read the server's RSS, threads
    and descriptors from /proc, then ask the server to close them all (1001)
    and time it (the server reports its close() duration, the generator the
    close codes its clients got)."""
    background = wait_quiet(opts)
    server, port = start_server(impl, "echo", logs, ping_interval=opts.idle_ping, ping_timeout=20.0, control=True)
    control = LineReader(server)
    load = None
    pid_max = read_sysctl("kernel.pid_max", 32768)
    threads_max = read_sysctl("kernel.threads-max", 1 << 30)
    max_maps = read_sysctl("vm.max_map_count", 65530)
    task_limit = min(pid_max, threads_max) - opts.idle_margin
    map_limit = max_maps - 2000
    try:
        time.sleep(0.3)
        baseline = proc_status(server.pid)
        fd_limit = nofile_limit(server.pid)
        capacity_at_start = ask(server, control, "capacity", "capacity", 30)
        target = opts.idle_peer_target if opts.idle_peer_target and impl != "ws_multipath" else opts.idle_target
        config = dict(mode="idle", url=f"ws://127.0.0.1:{port}/", target=target, concurrency=100, max_failures=200,
                      connect_limit=opts.idle_connect_limit, hold=opts.idle_hold, echo_every=opts.idle_echo_every,
                      echo_sample=opts.idle_echo_sample, wait_close=True, close_wait=60,
                      timeout=opts.idle_connect_limit + opts.idle_hold + 60 + 90)
        load = start_load(config, logs)
        reader = LineReader(load)
        guard = ""
        last_map_check = 0.0
        max_fds = 0
        while True:
            event = reader.event(opts.idle_connect_limit + 30)
            if event is None:
                raise RuntimeError("generator stopped reporting")
            if event["event"] == "held":
                break
            if event["event"] == "error":
                raise RuntimeError(event["message"])
            if not guard:
                tasks = system_tasks()
                if tasks > task_limit:
                    guard = f"machine at {tasks} threads (limit {task_limit} = pid/thread limit - margin)"
                elif time.monotonic() - last_map_check > 1:
                    last_map_check = time.monotonic()
                    try:
                        max_fds = max(max_fds, len(os.listdir(f"/proc/{server.pid}/fd")))
                    except OSError:
                        pass
                    maps = map_count(server.pid) if server.poll() is None else 0
                    if maps > map_limit:
                        guard = f"server at {maps} memory maps (vm.max_map_count {max_maps})"
                if guard:
                    load.stdin.write(b"stop\n")  # type: ignore[union-attr]
                    load.stdin.flush()  # type: ignore[union-attr]
        held_event = event
        cpu0 = cpu_seconds(server.pid)
        time.sleep(1.0)
        at_held = proc_status(server.pid)
        capacity_held = ask(server, control, "capacity", "capacity", 30)
        event = reader.event(opts.idle_hold + 30)
        if event is None or event["event"] != "result":
            raise RuntimeError(f"generator gave no result: {event}")
        alive = server.poll() is None
        end = proc_status(server.pid) if alive else at_held
        cpu1 = cpu_seconds(server.pid) if alive else cpu0
        times0 = machine_times()
        closed = ask(server, control, "close", "closed", 150) if alive else None
        times1 = machine_times()
        busy_during_close = 100.0 * (1 - (times1[0] - times0[0]) / max(1, times1[1] - times0[1]))
        clients_closed = reader.event(90)
        held = event["open"]
        per = (lambda key: (end[key] - baseline[key]) / held if held else None)
        stop_reason = guard or held_event["stop_reason"]
        max_fds = max(max_fds, at_held["fds"])
        if fd_limit and max_fds >= fd_limit - 20:
            stop_reason += f"; the server reached its file descriptor limit ({max_fds} open, limit {fd_limit})"
        if not alive:
            stop_reason += f"; the server process exited during the test (exit code {server.returncode})"
        codes = (clients_closed or {}).get("close_codes") or {}
        return {
            "impl": impl,
            "target": target,
            "held": held,
            "opened": held_event["open"],
            "failed": held_event["failed"],
            "stop_reason": stop_reason,
            "server_fd_limit": fd_limit,
            "connect_seconds": held_event["connect_seconds"],
            "closed_during_hold": event["closed_during_hold"],
            "pings_during_hold": event["pings_during_hold"],
            "hold_seconds": event["hold_seconds"],
            "echo": {k: event.get(k) for k in ("echo_sample", "echo_every", "echo_sent", "echo_answered", "echo_skipped",
                                               "echo_rtt_p50_ms", "echo_rtt_p99_ms", "echo_rtt_max_ms")},
            "echo_answered": event.get("echo_answered"),
            "echo_sent": event.get("echo_sent"),
            "echo_rtt_p50_ms": event.get("echo_rtt_p50_ms"),
            "echo_rtt_max_ms": event.get("echo_rtt_max_ms"),
            "close": closed,
            "close_seconds": (closed or {}).get("seconds"),
            "all_closed_seconds": (closed or {}).get("all_closed_seconds"),
            "close_cpu_seconds": (closed or {}).get("cpu_seconds"),
            "busy_during_close_pct": busy_during_close,
            "clients_closed": clients_closed,
            "closed_1001": codes.get("1001", 0),
            "closed_other": sum(n for code, n in codes.items() if code != "1001"),
            "still_open_after_close": (clients_closed or {}).get("still_open"),
            "capacity_at_start": capacity_at_start,
            "capacity_while_holding": capacity_held,
            "baseline": baseline,
            "at_hold_start": at_held,
            "at_hold_end": end,
            "rss_per_conn_kib": per("rss") / 1024 if held else None,
            "threads_per_conn": per("threads"),
            "fds_per_conn": per("fds"),
            "hold_cpu_cores": (cpu1 - cpu0) / event["hold_seconds"] if event["hold_seconds"] else None,
            "server_alive": alive,
            "background_busy_pct": background,
        }
    finally:
        try:
            if load is not None:
                try:
                    load.wait(30)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            if load is not None:
                stop_process(load)
            stop_process(server, grace=5.0)


def soak_summary(result: dict) -> dict:
    samples = result.get("rss_samples") or []
    if len(samples) < 4:
        return {}
    ts = [t for t, _ in samples]
    rs = [r / MiB for _, r in samples]
    skip = len(samples) // 5  # the first fifth: connections and buffers settle
    tail_t, tail_r = ts[skip:], rs[skip:]
    mean_t, mean_r = statistics.fmean(tail_t), statistics.fmean(tail_r)
    var_t = sum((t - mean_t) ** 2 for t in tail_t)
    slope = sum((t - mean_t) * (r - mean_r) for t, r in zip(tail_t, tail_r)) / var_t if var_t else 0.0
    return {
        "rss_start_mib": rs[0],
        "rss_after_warm_mib": rs[skip],
        "rss_end_mib": rs[-1],
        "rss_peak_mib": max(rs),
        "slope_mib_per_min": slope * 60,
    }


# -- reporting ----------------------------------------------------------------


def readme_table(results: dict, path: Path) -> str:
    """README.rst's performance table (reStructuredText), from a results file:
    ``python3 benchmarks/run.py --readme-table benchmarks/results/<file>.json``."""
    summary, meta = results["summary"], results["meta"]

    def r(e: dict, impl: str) -> str:
        x = e.get("ratios", {}).get(impl)
        return f"{x['median']:.2f}x" if x and x.get("median") is not None else "-"

    def us(e: dict, impl: str) -> str:
        x = e.get(impl)
        return f"{x['server_cpu_per_op_us']:,.0f}" if x and x.get("server_cpu_per_op_us") is not None else "-"

    rows = [("scenario", "vs websockets", "vs Node ws", "server CPU µs/op: wm / websockets / raw TCP")]
    for e in summary.values():
        if e["kind"] != "throughput":
            continue
        title = e["title"].replace("`", "``")
        if e["baseline"] == "websockets":
            rows.append((title, r(e, "websockets"), r(e, "node_ws"), f"{us(e, 'ws_multipath')} / {us(e, 'websockets')} / {us(e, 'raw_tcp')}"))
        elif e["baseline"] == "werkzeug":
            rows.append((title, f"{r(e, 'werkzeug')} vs Werkzeug", f"{r(e, 'gunicorn')} vs gunicorn",
                         f"{us(e, 'ws_multipath')} / Werkzeug {us(e, 'werkzeug')} / gunicorn {us(e, 'gunicorn')}"))
        else:
            rows.append((title, f"{r(e, e['baseline'])} vs without", "-", f"{us(e, e['impls'][0])} / without {us(e, e['baseline'])}"))
    idle = summary.get("idle")
    if idle and "held" in idle.get("ws_multipath", {}):
        a, b = idle["ws_multipath"], idle["websockets"]
        rows.append((f"idle connections held ({meta.get('idle_target'):,} tried)", f"{a['held']:,} (websockets: {b.get('held', 0):,})", "-",
                     f"{a['threads_per_conn']:.2f} threads, {a['fds_per_conn']:.2f} fds, {a['rss_per_conn_kib']:.0f} KiB per connection"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    rule = "  ".join("=" * w for w in widths)
    out = [rule, "  ".join(c.ljust(w) for c, w in zip(rows[0], widths)).rstrip(), rule]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows[1:]]
    out.append(rule)
    q = meta.get("quiet") or {}
    out += ["", f"(`{path.name}`: {meta['command']}; {meta['reps']} interleaved pairs; machine busy before the runs "
            f"{q.get('busy_before_median', 0):.0f}% median / {q.get('busy_before_max', 0):.0f}% max, others used "
            f"{q.get('other_cores_median', 0):.2f} cores median during the windows)"]
    return "\n".join(out)


def fmt_rate(value: Optional[float]) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:,.1f}"


def fmt(value: Optional[float], digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a is not None and b else None


def median(values: list) -> Optional[float]:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def spread(values: list) -> str:
    values = [v for v in values if v is not None]
    if len(values) < 2:
        return ""
    mid = statistics.median(values)
    return f" ±{(max(values) - min(values)) / 2 / mid * 100:.0f}%" if mid else ""


def summarize(runs: dict[str, dict[str, list]]) -> dict[str, dict]:
    summary = {}
    for name, by_impl in runs.items():
        scenario = BY_NAME[name]
        kind = scenario.get("kind", "throughput")
        entry: dict[str, Any] = {"title": scenario["title"], "kind": kind}
        impls = [impl for impl in scenario["impls"] if impl in by_impl]
        entry["impls"] = impls
        entry["baseline"] = scenario["baseline"]
        if kind == "throughput":
            entry["unit"] = scenario["unit"]
            for impl in impls:
                rs = [r for r in by_impl.get(impl, []) if "error" not in r]
                entry[impl] = {
                    "rate": median([r["rate"] for r in rs]),
                    "rate_spread": spread([r["rate"] for r in rs]),
                    "server_cpu_per_op_us": median([r["server_cpu_per_op_us"] for r in rs]),
                    "gen_cpu_per_op_us": median([r["gen_cpu_per_op_us"] for r in rs]),
                    "server_cores": median([r["server_cores"] for r in rs]),
                    "gen_cores": median([r["gen_cores"] for r in rs]),
                    "machine_idle_pct": median([r["machine_idle_pct"] for r in rs]),
                    "other_cores": median([r["other_cores"] for r in rs]),
                    "background_busy_pct": median([r["background_busy_pct"] for r in rs]),
                    "server_rss_peak_mib": median([r["server_rss_peak"] / MiB for r in rs]),
                    "server_threads_peak": median([r["server_threads_peak"] for r in rs]),
                    "runs": len(rs),
                    "errors": [r["error"] for r in by_impl.get(impl, []) if "error" in r],
                }
            # Paired ratios: run i of the subject over run i of each peer (they ran
            # next to each other, A B A B), then the median of those.
            subject = impls[0]
            entry["ratios"] = {}
            for impl in impls[1:]:
                pairs = [ratio(a.get("rate"), b.get("rate")) for a, b in zip(by_impl[subject], by_impl[impl])
                         if "error" not in a and "error" not in b]
                pairs = [x for x in pairs if x is not None]
                entry["ratios"][impl] = {"median": median(pairs), "spread": spread(pairs), "pairs": pairs,
                                         "of_medians": ratio(entry[subject]["rate"], entry[impl]["rate"])}
            entry["ratio"] = entry["ratios"].get(entry["baseline"], {}).get("median")
        elif kind == "idle":
            for impl in IMPLS:
                rs = [r for r in by_impl.get(impl, []) if "error" not in r]
                best = max(rs, key=lambda r: r["held"]) if rs else None
                entry[impl] = best or {"errors": [r["error"] for r in by_impl.get(impl, [])]}
        elif kind == "soak":
            for impl in IMPLS:
                rs = [r for r in by_impl.get(impl, []) if "error" not in r]
                entry[impl] = dict(soak_summary(rs[0]), rate=rs[0]["rate"], server_cpu_per_op_us=rs[0]["server_cpu_per_op_us"]) if rs else {
                    "errors": [r["error"] for r in by_impl.get(impl, [])]}
        summary[name] = entry
    return summary


def render(summary: dict, meta: dict) -> str:
    lines = [f"# ws_multipath vs websockets {meta['versions']['websockets']} (sync) — {meta['date']}", ""]
    m = meta["machine"]
    v = meta["versions"]
    lines += [
        f"- machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory_gib']} GiB, Linux {m['kernel']}",
        f"- Python {v['python']}, ws_multipath {v['ws_multipath']} ({meta['library']['ws_multipath source']}; masking: {v.get('ws_multipath speedups', '?')}), websockets {v['websockets']}, "
        f"generator: Node {v['node']} + ws {v['ws (node)']} (bufferutil: {v['bufferutil']})",
        f"- command: `{meta['command']}`; {meta['reps']} interleaved repetitions (A B A B ...), fresh server per run, "
        f"{meta['warmup']} s warm-up + {meta['duration']} s measured; figures are medians (± half the range)",
        "- compression off on both (`deflate_*`: permessage-deflate on, each library's defaults"
        + (f", but a threshold of {meta['deflate_threshold']} B for ws_multipath and Node ws" if meta.get("deflate_threshold") is not None else "")
        + "); keepalive on (20 s default, both); ratio = ws_multipath / websockets (> 1: ws_multipath is faster)",
        "- CPU µs/op: CPU time (user+sys) of the server process (/proc/pid/stat) or of the generator, per message (or connection, or delivery)",
    ]
    busy = meta.get("max_background_busy_pct")
    if busy is not None and busy > meta.get("quiet_threshold", 15):
        lines.append(f"- **WARNING**: other processes kept the machine up to {busy:.0f}% busy just before some runs "
                     "(see 'busy % before the run'); those figures are disturbed")
    quiet = meta.get("quiet")
    if quiet:
        lines.append(f"- how quiet the machine was: busy {quiet['busy_before_median']:.0f}% (median; max {quiet['busy_before_max']:.0f}%) of its "
                     f"{m['nproc']} CPUs just before the runs; during the windows, other processes and the kernel used "
                     f"{quiet['other_cores_median']:.2f} cores (median; max {quiet['other_cores_max']:.2f}) beyond the server and the generator")
    lines += [
        "- peers: " + "; ".join(f"`{k}` = {v}" for k, v in PEER_TITLES.items()),
        "- ratio: run i of ws_multipath over run i of the peer (interleaved pairs), median of the pairs (± half their range)",
        "",
        "## WebSocket throughput",
        "",
        "| scenario | unit | ws_multipath | websockets | ratio | Node ws | wm / node | raw TCP | server CPU µs/op (wm / websockets / node / raw) | generator cores (max) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def cell(e: dict, impl: str) -> str:
        if impl not in e:
            return ""
        x = e[impl]
        return f"{fmt_rate(x['rate'])}{x['rate_spread']}{' †' if (x['gen_cores'] or 0) >= GEN_BOUND else ''}"

    def rcell(e: dict, impl: str, bold: bool = False) -> str:
        r = e.get("ratios", {}).get(impl)
        if not r or r["median"] is None:
            return ""
        text = fmt(r["median"], 2)
        return (f"**{text}**" if bold else text) + r["spread"]

    def cpu(e: dict, impls: list) -> str:
        return " / ".join(fmt(e[i]["server_cpu_per_op_us"]) if i in e else "-" for i in impls)

    others = []
    for name, e in summary.items():
        if e["kind"] != "throughput":
            continue
        if e["baseline"] != "websockets":
            others.append((name, e))
            continue
        gen = max((e[i]["gen_cores"] or 0) for i in e["impls"])
        lines.append(
            f"| {e['title']} | {e['unit']} | {cell(e, 'ws_multipath')} | {cell(e, 'websockets')} | {rcell(e, 'websockets', True)} | "
            f"{cell(e, 'node_ws')} | {rcell(e, 'node_ws')} | {cell(e, 'raw_tcp')} | "
            f"{cpu(e, [i for i in ('ws_multipath', 'websockets', 'node_ws', 'raw_tcp') if i in e['impls']])} | {gen:.2f} |")
    if others:
        lines += ["", "## HTTP, and WebSockets beside HTTP", "",
                  "| scenario | unit | servers (rate) | ratio (first / others) | server CPU µs/op | generator cores (max) |", "|---|---|---|---:|---:|---:|"]
        for name, e in others:
            gen = max((e[i]["gen_cores"] or 0) for i in e["impls"])
            lines.append(f"| {e['title']} | {e['unit']} | " + "; ".join(f"{i}: {cell(e, i)}" for i in e["impls"]) + " | "
                         + "; ".join(f"/ {i}: {rcell(e, i, i == e['baseline'])}" for i in e["impls"][1:]) + f" | {cpu(e, e['impls'])} | {gen:.2f} |")
    lines.append(f"\n† the generator used >= {GEN_BOUND} of a core: it may have been the limit, so that figure is a lower bound.")
    errors = [(n, impl, err) for n, e in summary.items() if e["kind"] == "throughput" for impl in e["impls"] for err in e[impl]["errors"]]
    for n, impl, err in errors:
        lines.append(f"\n- error in {n} / {impl}: {err}")
    lines += ["", "During the window (medians): cores used by the server process; "
              f"other load = cores of the {meta['machine']['nproc']} busy beyond the server and the generator (other processes, kernel); "
              "machine share busy just before the run; server peak RSS and threads. One column per server, in the order named.", "",
              "| scenario | servers | server cores | other load, cores | busy % before the run | peak RSS MiB | threads |", "|---|---|---:|---:|---:|---:|---:|"]
    for name, e in summary.items():
        if e["kind"] != "throughput":
            continue
        ims = e["impls"]

        def col(key: str, digits: int) -> str:
            return " / ".join(fmt(e[i][key], digits) for i in ims)

        lines.append(f"| {e['title']} | {' / '.join(ims)} | {col('server_cores', 2)} | {col('other_cores', 2)} | {col('background_busy_pct', 0)} | "
                     f"{col('server_rss_peak_mib', 1)} | {col('server_threads_peak', 0)} |")
    if "idle" in summary:
        e = summary["idle"]
        peers = f"; websockets: {meta['idle_peer_target']}" if meta.get("idle_peer_target") else ""
        lines += ["", f"## Idle connections (target {meta.get('idle_target')}{peers}, heartbeat every {meta.get('idle_ping')} s, held {meta.get('idle_hold')} s)", "",
                  "| | ws_multipath | websockets | ratio |", "|---|---:|---:|---:|"]
        a, b = e["ws_multipath"], e["websockets"]

        def row(label: str, key: str, digits: int = 1) -> None:
            lines.append(f"| {label} | {fmt(a.get(key), digits)} | {fmt(b.get(key), digits)} | {fmt(ratio(a.get(key), b.get(key)), 2)} |")

        row("connections held at the end", "held", 0)
        row("RSS per connection (KiB)", "rss_per_conn_kib")
        row("threads per connection", "threads_per_conn", 2)
        row("fds per connection", "fds_per_conn", 2)
        row("seconds to open them", "connect_seconds")
        row("server cores while holding", "hold_cpu_cores", 3)
        row("pings seen by clients during the hold", "pings_during_hold", 0)
        row("connections dropped during the hold", "closed_during_hold", 0)
        if "echo_sent" in a or "echo_sent" in b:
            row("sample echoes sent during the hold", "echo_sent", 0)
            row("sample echoes answered", "echo_answered", 0)
            row("echo round trip p50 (ms)", "echo_rtt_p50_ms", 2)
            row("echo round trip max (ms)", "echo_rtt_max_ms", 1)
            row("seconds for close() to return", "close_seconds", 2)
            row("seconds until every connection had ended", "all_closed_seconds", 2)
            row("server CPU seconds during the close", "close_cpu_seconds", 2)
            row("clients closed with 1001", "closed_1001", 0)
            row("clients closed otherwise", "closed_other", 0)
        for impl, x in (("ws_multipath", a), ("websockets", b)):
            if "stop_reason" in x:
                s = x["at_hold_end"]
                lines.append(f"\n- {impl}: stopped opening because: {x['stop_reason']}; {x['failed']} failed; "
                             f"server at the end: RSS {s['rss'] / MiB:.0f} MiB, {s['threads']} threads, {s['fds']} fds (limit {x.get('server_fd_limit')})")
                e = x.get("echo") or {}
                if e.get("echo_sent") is not None:
                    lines.append(f"  - sample echoes: {e['echo_sample']} connections, one each every {e['echo_every']} s: {e['echo_answered']} of "
                                 f"{e['echo_sent']} answered ({e['echo_skipped']} rounds skipped while one was unanswered); round trip p50 "
                                 f"{fmt(e['echo_rtt_p50_ms'], 2)} ms, p99 {fmt(e['echo_rtt_p99_ms'], 2)} ms, max {fmt(e['echo_rtt_max_ms'], 1)} ms")
                c, cc = x.get("close") or {}, x.get("clients_closed") or {}
                if c or cc:
                    lines.append(f"  - close(): returned after {fmt(c.get('seconds'), 2)} s for {c.get('open_before', '?')} open connections "
                                 f"({c.get('open_after', '?')} still open then), all ended after {fmt(c.get('all_closed_seconds'), 2)} s, "
                                 f"{fmt(c.get('cpu_seconds'), 2)} s of server CPU, machine {fmt(x.get('busy_during_close_pct'), 0)}% busy meanwhile; "
                                 f"the clients saw close codes {cc.get('close_codes')} "
                                 f"(spread over {fmt(cc.get('close_spread_seconds'), 2)} s), {cc.get('still_open', '?')} still open ({cc.get('reason', 'no report')})")
                for when, cap in (("at start", x.get("capacity_at_start")), ("while holding", x.get("capacity_while_holding"))):
                    if cap and cap.get("summary"):
                        lines.append(f"  - ceiling {when} (server.capacity()): {cap['summary']}; by kind: fds {fmt(cap.get('fds'), 0)}, "
                                     f"threads {fmt(cap.get('threads'), 0)}, memory {fmt(cap.get('memory'), 0)}")
                    elif cap:
                        lines.append(f"  - {when}: RLIMIT_NOFILE soft {cap.get('nofile_soft')}, hard {cap.get('nofile_hard')}")
            for err in x.get("errors", []):
                lines.append(f"\n- {impl}: error: {err}")
    if "soak_256x32B" in summary:
        e = summary["soak_256x32B"]
        lines += ["", f"## Memory under load ({meta.get('soak')} s echo, 256 clients, {meta.get('soak_size', 32)} B; RSS sampled every 0.5 s)", "",
                  "| | ws_multipath | websockets |", "|---|---:|---:|"]
        a, b = e["ws_multipath"], e["websockets"]
        for label, key, digits in (("msg/s", "rate", 0), ("RSS at start of window (MiB)", "rss_start_mib", 1),
                                   ("RSS after the first fifth (MiB)", "rss_after_warm_mib", 1), ("RSS at the end (MiB)", "rss_end_mib", 1),
                                   ("peak RSS (MiB)", "rss_peak_mib", 1), ("RSS trend after the first fifth (MiB/min)", "slope_mib_per_min", 2)):
            lines.append(f"| {label} | {fmt(a.get(key), digits)} | {fmt(b.get(key), digits)} |")
        for impl, x in (("ws_multipath", a), ("websockets", b)):
            for err in x.get("errors", []):
                lines.append(f"\n- {impl}: error: {err}")
    lines.append("")
    return "\n".join(lines)


# -- profile ----------------------------------------------------------------


def run_profile(opts: argparse.Namespace, logs: Path, stamp: str, library: dict) -> None:
    """py-spy the server under the 16-client 1 KiB echo: a GIL-holder profile
    (where the Python time goes) and an all-threads one (incl. native frames)."""
    pyspy = str(VENV / "bin" / "py-spy")
    scenario = BY_NAME[opts.profile_scenario]
    if scenario.get("kind", "throughput") != "throughput" or scenario["load"]["mode"] != "echo":
        raise SystemExit("--profile-scenario takes an echo scenario")
    RESULTS.mkdir(exist_ok=True)
    tag = "" if opts.profile_scenario == "echo_16x1KiB" else "-" + opts.profile_scenario
    report = [f"# py-spy profile, {scenario['title']} — {stamp}", "", f"ws_multipath: {library['ws_multipath source']}", ""]
    for impl in IMPLS:
        for label, flags in (("gil", ["--gil"]), ("gil-native", ["--gil", "--native"])):
            server, port = start_server(impl, scenario["server"], logs)
            load = None
            try:
                config = dict(scenario["load"], url=f"ws://127.0.0.1:{port}/", warmup=1.0, duration=opts.profile + 3, max_ops=10**9, timeout=opts.profile + 60)
                load = start_load(config, logs)
                reader = LineReader(load)
                for expected in ("connected", "start"):
                    event = reader.event(30)
                    if event is None or event["event"] != expected:
                        raise RuntimeError(f"generator: {event}")
                raw = RESULTS / f"{stamp}-profile{tag}-{impl}-{label}.txt"
                cpu0 = cpu_seconds(server.pid)
                subprocess.run([pyspy, "record", "--pid", str(server.pid), "--duration", str(int(opts.profile)), "--rate", "250",
                                "--format", "raw", "--output", str(raw), *flags],
                               check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                cpu1 = cpu_seconds(server.pid)
                event = reader.event(30)
                rate = event["ops"] / event["seconds"] if event and event.get("event") == "result" else None
            finally:
                try:
                    if load is not None:
                        try:
                            load.wait(15)
                        except subprocess.TimeoutExpired:
                            pass
                finally:
                    if load is not None:
                        stop_process(load)
                    stop_process(server)
            report += [f"## {impl}, {label} (samples of the thread holding the GIL{', with native frames' if 'native' in label else ''})", "",
                       f"{fmt_rate(rate)} msg/s while profiled (sampling slows it), server CPU {cpu1 - cpu0:.2f} s in {opts.profile} s; raw stacks: `{raw.name}`", ""]
            report += profile_tables(raw)
    out = RESULTS / f"{stamp}-profile{tag}.md"
    out.write_text("\n".join(report) + "\n")
    log(f"profile written to {out}")


def profile_tables(raw: Path, top: int = 25) -> list[str]:
    self_counts: dict[str, int] = {}
    incl_counts: dict[str, int] = {}
    line_counts: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_short_frame(f) for f in stack.split(";")]
        frames = [f for f in frames if f]
        if not frames:
            continue
        self_counts[frames[-1]] = self_counts.get(frames[-1], 0) + n
        python_frames = [f for f in stack.split(";") if ".py:" in f]
        if python_frames:
            leaf = python_frames[-1].strip()
            name, _, where = leaf.partition(" (")
            key = f"{'/'.join(where.rstrip(')').split('/')[-2:])} {name}"
            line_counts[key] = line_counts.get(key, 0) + n
        for f in set(frames):
            incl_counts[f] = incl_counts.get(f, 0) + n
    if not total:
        return ["(no samples)", ""]
    lines = [f"{total} samples.", "", "| self % | function | | inclusive % | function |", "|---:|---|---|---:|---|"]
    by_self = sorted(self_counts.items(), key=lambda kv: -kv[1])[:top]
    by_incl = sorted(incl_counts.items(), key=lambda kv: -kv[1])[:top]
    for i in range(max(len(by_self), len(by_incl))):
        s = by_self[i] if i < len(by_self) else ("", 0)
        c = by_incl[i] if i < len(by_incl) else ("", 0)
        lines.append(f"| {s[1] / total * 100:.1f} | `{s[0]}` | | {c[1] / total * 100:.1f} | `{c[0]}` |")
    lines += ["", "Innermost Python line of each sample (where the time is spent, native calls included):", "", "| % | line |", "|---:|---|"]
    for key, n in sorted(line_counts.items(), key=lambda kv: -kv[1])[:12]:
        lines.append(f"| {n / total * 100:.1f} | `{key}` |")
    lines.append("")
    return lines


def _short_frame(frame: str) -> str:
    """'func (path/to/file.py:123)' -> 'file.py:func' (lines merged); thread names dropped."""
    frame = frame.strip()
    if frame.startswith("process ") or frame.startswith("thread "):
        return ""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file = where.rsplit(":", 1)[0]
    parts = file.split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 and parts[-2] in ("ws_multipath", "websockets", "sync", "wsproto", "concurrent", "futures") else parts[-1]
    return f"{short}:{name}" if short else name


# -- main -------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short runs (~2 min in all)")
    parser.add_argument("--scenarios", help="comma-separated names (see --list); default all")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--reps", type=int, help="interleaved repetitions per library (default 3, quick 2)")
    parser.add_argument("--duration", type=float, help="measured seconds per run (default 4, quick 1)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds per run (default 1, quick 0.5)")
    parser.add_argument("--max-ops", type=int, default=5_000_000,
                        help="ops per run at most (a bound on every load loop; the soak's is at least 200,000 per second of --soak)")
    parser.add_argument("--soak", type=float, help="seconds of the memory soak (default 30, quick 6)")
    parser.add_argument("--soak-size", type=int, default=32, help="message size of the soak's 256-client echo, bytes (default 32)")
    parser.add_argument("--idle-target", type=int, help="idle connections to try (default 10000, quick 2000)")
    parser.add_argument("--idle-hold", type=float, help="seconds to hold them (default 25, quick 6)")
    parser.add_argument("--idle-ping", type=float, help="heartbeat interval during the idle test (default 20, both libraries' default; quick 5)")
    parser.add_argument("--idle-connect-limit", type=float, default=120.0, help="seconds allowed to open them")
    parser.add_argument("--idle-margin", type=int, default=2500, help="threads left free on the machine (pid_max guard)")
    parser.add_argument("--idle-peer-target", type=int, help="idle connections to try for the peers (default: --idle-target; "
                        "websockets takes 4 descriptors and 3 threads per connection, so its ceiling is lower)")
    parser.add_argument("--idle-echo-sample", type=int, default=8, help="connections that get a sample echo during the hold (default 8)")
    parser.add_argument("--idle-echo-every", type=float, default=1.0, help="seconds between two sample echoes on each (default 1)")
    parser.add_argument("--quiet-wait", type=float, default=30.0, help="seconds to wait at most before each run for other processes to calm down (default 30)")
    parser.add_argument("--quiet-budget", type=float, help="seconds of such waiting in all (default 180, quick 45)")
    parser.add_argument("--quiet-threshold", type=float, default=15.0, help="machine busy %% counted as quiet (default 15)")
    parser.add_argument("--profile", type=float, metavar="SECONDS", help="only profile both servers with py-spy (16-client 1 KiB echo)")
    parser.add_argument("--ref", default="HEAD", help="git commit of ws_multipath to benchmark (default HEAD; 'worktree' for the work tree as it is)")
    parser.add_argument("--profile-scenario", default="echo_16x1KiB", help="echo scenario that --profile runs (default echo_16x1KiB)")
    parser.add_argument("--no-save", action="store_true", help="print the table only")
    parser.add_argument("--deflate-threshold", type=int, metavar="BYTES",
                        help="permessage-deflate's threshold of ws_multipath's and Node ws's servers in the deflate scenarios "
                        "(default: theirs, 1024: smaller messages go uncompressed; websockets has none: it compresses all)")
    parser.add_argument("--peers", help="comma-separated peers to run besides each scenario's subject and baseline "
                        "(default all: " + ", ".join(PEER_TITLES) + ")")
    parser.add_argument("--readme-table", metavar="RESULTS_JSON", help="print README.rst's performance table from a results file and exit")
    opts = parser.parse_args()
    if opts.readme_table:
        print(readme_table(json.loads(Path(opts.readme_table).read_text()), Path(opts.readme_table)))
        return 0
    opts.peers = set(p.strip() for p in opts.peers.split(",")) if opts.peers else set()
    if opts.list:
        for s in SCENARIOS:
            print(f"{s['name']:22} {s['title']}")
        return 0
    q = opts.quick
    opts.reps = opts.reps or (2 if q else 3)
    opts.duration = opts.duration or (1.0 if q else 4.0)
    opts.warmup = opts.warmup if opts.warmup is not None else (0.5 if q else 1.0)
    opts.soak = opts.soak or (6.0 if q else 30.0)
    opts.idle_target = opts.idle_target or (2000 if q else 10000)
    opts.idle_hold = opts.idle_hold or (6.0 if q else 25.0)
    opts.idle_ping = opts.idle_ping or (5.0 if q else 20.0)
    opts.quiet_budget = opts.quiet_budget if opts.quiet_budget is not None else (45.0 if q else 180.0)
    names = [s["name"] for s in SCENARIOS]
    if opts.scenarios:
        wanted = [n.strip() for n in opts.scenarios.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in BY_NAME]
        if unknown:
            parser.error(f"unknown scenario(s) {', '.join(unknown)}; see --list")
        names = [n for n in names if n in wanted]

    signal.signal(signal.SIGTERM, _on_sigterm)
    setup(profile=opts.profile is not None)
    logs = WORK / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now()
    stamp = now.strftime("%Y-%m-%d")
    library = prepare_library(opts.ref)
    log(f"ws_multipath under test: {library['ws_multipath source']}")
    if opts.profile is not None:
        run_profile(opts, logs, stamp, library)
        return 0

    meta = {
        "date": now.isoformat(timespec="seconds"),
        "command": "python3 benchmarks/run.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "library": library,
        "versions": versions(),
        "reps": opts.reps,
        "duration": opts.duration,
        "warmup": opts.warmup,
        "soak": opts.soak,
        "soak_size": opts.soak_size,
        "idle_target": opts.idle_target,
        "idle_hold": opts.idle_hold,
        "idle_ping": opts.idle_ping,
        "idle_peer_target": opts.idle_peer_target,
        "idle_echo_sample": opts.idle_echo_sample,
        "idle_echo_every": opts.idle_echo_every,
        "deflate_threshold": opts.deflate_threshold,
    }
    log(f"machine: {meta['machine']}\nversions: {meta['versions']}")
    started = time.monotonic()
    runs: dict[str, dict[str, list]] = {}
    for name in names:
        scenario = BY_NAME[name]
        kind = scenario.get("kind", "throughput")
        impls = [i for i in scenario["impls"] if not opts.peers or i in opts.peers or i in (scenario["impls"][0], scenario["baseline"])]
        runs[name] = {impl: [] for impl in impls}
        reps = 1 if kind in ("idle", "soak") else opts.reps
        for rep in range(reps):
            for impl in impls:  # interleaved: A B A B ...
                t = time.monotonic()
                try:
                    if kind == "idle":
                        result = run_idle(impl, opts, logs)
                        desc = f"held {result['held']}, {fmt(result['rss_per_conn_kib'])} KiB/conn, {fmt(result['threads_per_conn'], 2)} threads/conn ({result['stop_reason']})"
                    elif kind == "soak":
                        soak = dict(server="echo", load=dict(BY_NAME["echo_256x32B"]["load"], size=opts.soak_size), keep_samples=True)
                        # bounded by its duration: the default --max-ops would end a 600 s soak after about 200 s
                        result = run_throughput(soak, impl, opts, logs, duration=opts.soak, sample_every=0.5, max_ops=max(opts.max_ops, int(opts.soak * SOAK_OPS_PER_S)))
                        s = soak_summary(result)
                        desc = f"{fmt_rate(result['rate'])} msg/s, RSS {s.get('rss_start_mib', 0):.1f} -> {s.get('rss_end_mib', 0):.1f} MiB"
                    else:
                        result = run_throughput(scenario, impl, opts, logs)
                        desc = (f"{fmt_rate(result['rate'])} {scenario['unit']}, server {fmt(result['server_cpu_per_op_us'])} µs/op "
                                f"({result['server_cores']:.2f} cores, others {result['other_cores']:.2f}), generator {fmt(result['gen_cpu_per_op_us'])} µs/op ({result['gen_cores']:.2f} cores)")
                        if not result["server_alive"]:
                            desc += " SERVER DIED"
                except Exception as exc:  # noqa: BLE001 - record and go on with the other runs
                    result = {"impl": impl, "error": f"{type(exc).__name__}: {exc}"}
                    desc = "ERROR " + result["error"]
                runs[name][impl].append(result)
                log(f"[{time.monotonic() - started:6.0f}s] {name:22} {impl:12} rep {rep + 1}: {desc} ({time.monotonic() - t:.1f}s)")
    summary = summarize(runs)
    meta["max_background_busy_pct"] = max((r.get("background_busy_pct", 0.0) for by in runs.values() for rs in by.values() for r in rs), default=0.0)
    busy = [r["background_busy_pct"] for by in runs.values() for rs in by.values() for r in rs if r.get("background_busy_pct") is not None]
    other = [r["other_cores"] for by in runs.values() for rs in by.values() for r in rs if r.get("other_cores") is not None]
    meta["quiet"] = {"busy_before_median": median(busy) or 0.0, "busy_before_max": max(busy, default=0.0),
                     "other_cores_median": median(other) or 0.0, "other_cores_max": max(other, default=0.0)}
    meta["quiet_threshold"] = opts.quiet_threshold
    meta["elapsed_s"] = round(time.monotonic() - started, 1)
    text = render(summary, meta)
    print()
    print(text)
    if not opts.no_save:
        RESULTS.mkdir(exist_ok=True)
        suffix = f"-idle-{opts.idle_target}" if names == ["idle"] else "-partial" if opts.scenarios else ("-quick" if q else "")
        base = RESULTS / f"{stamp}{suffix}"
        base.with_suffix(".md").write_text(text + f"\nTotal time: {meta['elapsed_s']} s.\n")
        base.with_suffix(".json").write_text(json.dumps({"meta": meta, "summary": summary, "runs": runs}, indent=1, default=str) + "\n")
        log(f"written: {base.with_suffix('.md')} and .json")
        chart = subprocess.call([str(PYTHON), str(BENCH / "chart.py"), str(base.with_suffix(".json"))])
        if chart != 0:
            log("the chart was not drawn (benchmarks/chart.py failed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
