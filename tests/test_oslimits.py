"""Reading the limits (ws_multipath/sync/oslimits.py), through
``measure_capacity()`` on made-up ``/proc`` and ``/sys`` trees: the thread
bounds (room for threads, not part of the connection ceiling), cgroup v1
and v2 (ancestors, a cgroup namespace, v1's "no limit"), strict
overcommit, garbled and missing files (unknown, never an error)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from ws_multipath import measure_capacity
from ws_multipath.sync.capacity import FD_MARGIN, LOOP_FDS, PER_CONNECTION_BYTES, SERVER_FDS, SERVER_THREADS, THREAD_MARGIN
from ws_multipath.sync.oslimits import thread_stack_bytes

FD_RESERVE = SERVER_FDS + LOOP_FDS + FD_MARGIN
THREAD_RESERVE = SERVER_THREADS + THREAD_MARGIN
SOFT = resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def tree(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def measure_tree(root: Path, held: int = 0):  # type: ignore[no-untyped-def]
    return measure_capacity(held, proc=str(root / "proc"), sys=str(root / "sys"))


def test_nothing_readable_is_no_ceiling_and_no_error(tmp_path):
    capacity = measure_tree(tmp_path)
    assert capacity.connections is None and capacity.binding is None
    assert (capacity.fds, capacity.threads, capacity.memory) == (None, None, None)
    assert {"RLIMIT_NOFILE", "kernel.threads-max", "kernel.pid_max", "pids.max", "MemAvailable", "memory.max"} <= set(capacity.unknown)
    assert str(capacity) == "no connection limit could be read"


def test_garbled_files_are_unknown_and_the_others_still_count(tmp_path):
    capacity = measure_tree(tree(tmp_path, {
        "proc/loadavg": "0.00 0.01 0.05 1/100 4567\n",
        "proc/sys/kernel/threads-max": "lots\n",
        "proc/sys/kernel/pid_max": "\n",
        "proc/sys/vm/max_map_count": "65530\n",
        "proc/self/maps": "a\nb\nc\n",
        "proc/meminfo": "MemTotal: garbage\n",
        "proc/self/cgroup": "nonsense without colons\n",
    }))
    assert {"kernel.threads-max", "kernel.pid_max", "MemAvailable"} <= set(capacity.unknown)
    maps = capacity.bound("vm.max_map_count")
    assert maps is not None and (maps.in_use, maps.per_connection) == (3, 2)
    assert capacity.bound("pids.max") is None and "pids.max" not in capacity.unknown  # no cgroup limit: no bound


def test_the_thread_bounds_count_the_threads_of_the_whole_machine_and_leave_the_ceiling_to_descriptors(tmp_path):
    for index in range(5):
        (tmp_path / "proc" / "self" / "fd").mkdir(parents=True, exist_ok=True)
        (tmp_path / "proc" / "self" / "fd" / str(index)).write_text("")
    capacity = measure_tree(tree(tmp_path, {
        "proc/loadavg": "0.00 0.01 0.05 1/100 4567\n",
        "proc/sys/kernel/threads-max": "150\n",  # far below the descriptors: it bound the ceiling when connections had threads
        "proc/sys/kernel/pid_max": "4194304\n",
        "proc/sys/fs/file-nr": "1000\t0\t9223372036854775807\n",  # unlimited: no bound
    }), held=4)
    threads_max = capacity.bound("kernel.threads-max")
    assert threads_max is not None and (threads_max.limit, threads_max.in_use, threads_max.scope) == (150, 100, "machine")
    assert threads_max.connections == max(0, 150 - 100 - THREAD_RESERVE) and threads_max.held == 0  # held connections hold no thread
    assert capacity.threads == threads_max.connections and capacity.thread_binding == threads_max
    pid_max = capacity.bound("kernel.pid_max")
    assert pid_max is not None and pid_max.reserved == 300 + THREAD_RESERVE
    assert pid_max.connections == 4194304 - 100 - 300 - THREAD_RESERVE
    descriptors = capacity.bound("RLIMIT_NOFILE")
    assert descriptors is not None and descriptors.in_use == 5 and capacity.fds == 4 + SOFT - 5 - FD_RESERVE
    assert capacity.binding == descriptors and capacity.connections == capacity.fds
    assert capacity.bound("fs.file-max") is None
    assert "sysctl -w kernel.threads-max=" in threads_max.how_to_raise(1000)
    assert threads_max.needed(10) == 100 + THREAD_RESERVE + 10  # room for 10 more threads
    assert threads_max.describe() == f"kernel.threads-max (threads on the machine): limit 150, 100 in use, {THREAD_RESERVE} kept free, 1 per thread"


def test_loops_and_listening_count_the_servers_descriptors_once(tmp_path):
    def reserved(**server) -> int:  # type: ignore[no-untyped-def]
        (tmp_path / "proc" / "self" / "fd").mkdir(parents=True, exist_ok=True)
        bound = measure_capacity(proc=str(tmp_path / "proc"), sys=str(tmp_path / "sys"), **server).bound("RLIMIT_NOFILE")
        assert bound is not None
        return bound.reserved

    assert reserved() == SERVER_FDS + LOOP_FDS + FD_MARGIN  # nothing open yet: kept free
    assert reserved(listening=True) == LOOP_FDS + FD_MARGIN  # the first handler's loop is still to come
    assert reserved(listening=True, loops=3) == FD_MARGIN  # open, so in use
    assert reserved(listening=True, loops=1, broker_fds=17) == FD_MARGIN + 17


def test_cgroup_v2_limits_of_the_cgroup_and_its_ancestors(tmp_path):
    mib = 2**20
    capacity = measure_tree(tree(tmp_path, {
        "proc/self/cgroup": "0::/app.slice/web.service\n",
        "sys/fs/cgroup/cgroup.controllers": "pids memory\n",
        "sys/fs/cgroup/app.slice/pids.max": "1000\n",
        "sys/fs/cgroup/app.slice/pids.current": "700\n",
        "sys/fs/cgroup/app.slice/memory.max": "max\n",
        "sys/fs/cgroup/app.slice/memory.current": "0\n",
        "sys/fs/cgroup/app.slice/web.service/pids.max": "500\n",
        "sys/fs/cgroup/app.slice/web.service/pids.current": "100\n",
        "sys/fs/cgroup/app.slice/web.service/memory.max": f"{1000 * mib}\n",
        "sys/fs/cgroup/app.slice/web.service/memory.current": f"{500 * mib}\n",
        "sys/fs/cgroup/app.slice/web.service/memory.stat": f"anon 1\ninactive_file {100 * mib}\nactive_file 3\n",
    }))
    pids = capacity.bound("pids.max")
    assert pids is not None and (pids.limit, pids.in_use, pids.scope) == (1000, 700, "cgroup")  # the parent has less room
    assert pids.connections == 1000 - 700 - THREAD_RESERVE == capacity.threads
    memory = capacity.bound("memory.max")
    assert memory is not None and (memory.limit, memory.in_use) == (1000 * mib, 400 * mib)  # the inactive file cache can go
    assert memory.connections == (600 * mib) // PER_CONNECTION_BYTES
    assert capacity.binding == memory  # not pids.max, though it has room for far fewer threads than connections


def test_cgroup_v1_and_a_cgroup_namespace(tmp_path):
    capacity = measure_tree(tree(tmp_path, {
        # the cgroup path is not under the mounts (a namespace): their roots are ours
        "proc/self/cgroup": "11:pids:/docker/abc\n4:memory:/docker/abc\n0::/\n",
        "sys/fs/cgroup/pids/pids.max": "200\n",
        "sys/fs/cgroup/pids/pids.current": "40\n",
        "sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",  # v1's "no limit"
        "sys/fs/cgroup/memory/memory.usage_in_bytes": "123\n",
    }))
    pids = capacity.bound("pids.max")
    assert pids is not None and (pids.limit, pids.in_use, pids.connections) == (200, 40, 200 - 40 - THREAD_RESERVE)
    assert capacity.bound("memory.max") is None and "memory.max" not in capacity.unknown


def test_strict_overcommit_keeps_whole_thread_stacks_free_and_counts_no_stack_per_connection(tmp_path):
    gib = 2**30
    capacity = measure_tree(tree(tmp_path, {
        "proc/sys/vm/overcommit_memory": "2\n",
        "proc/meminfo": f"MemTotal: {64 * 2**20} kB\nMemAvailable: {60 * 2**20} kB\nCommitLimit: {2 * 2**20} kB\nCommitted_AS: {2**20} kB\n",
    }))
    commit = capacity.bound("CommitLimit")
    assert commit is not None and (commit.limit, commit.in_use) == (2 * gib, gib)
    assert commit.per_connection == PER_CONNECTION_BYTES  # a connection has no thread, so no stack
    assert commit.reserved == THREAD_RESERVE * thread_stack_bytes()
    assert commit.connections == (gib - THREAD_RESERVE * thread_stack_bytes()) // PER_CONNECTION_BYTES
    available = capacity.bound("MemAvailable")
    assert available is not None and available.in_use == 4 * gib and available.per_connection == PER_CONNECTION_BYTES
    assert capacity.binding == commit and capacity.memory == commit.connections


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.getuid() != 0, reason="needs root, to become another user")
def test_rlimit_nproc_counts_the_users_threads_when_it_is_enforced(tmp_path):
    """As root it does not apply (left out); as an ordinary user it counts
    the threads of that user's processes."""
    assert measure_capacity().bound("RLIMIT_NPROC") is None
    code = ("import json, threading; from ws_multipath import measure_capacity; "
            "hold = threading.Event(); [threading.Thread(target=hold.wait, daemon=True).start() for _ in range(5)]; "
            "b = measure_capacity().bound('RLIMIT_NPROC'); print(json.dumps(b and [b.limit, b.in_use, b.scope]))")

    def become_nobody() -> None:
        resource.setrlimit(resource.RLIMIT_NPROC, (4000, 4000))
        os.setgid(65534)
        os.setuid(65534)

    out = subprocess.run([sys.executable, "-c", code], preexec_fn=become_nobody, capture_output=True, text=True, timeout=30,
                         cwd=str(Path(__file__).resolve().parent.parent))
    assert out.returncode == 0, out.stderr
    limit, in_use, scope = json.loads(out.stdout)
    assert (limit, scope) == (4000, "user") and in_use >= 6  # its main thread and the 5 it started
