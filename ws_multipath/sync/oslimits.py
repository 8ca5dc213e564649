"""Reading the operating system's limits for ``capacity.py``: rlimits from
``resource``, counts and sysctls from ``/proc``, cgroup limits (v1 and v2)
from ``/sys/fs/cgroup``. Facts only, in each limit's own unit; what to keep
free is the caller's. Missing, unreadable or garbled files give None (the
limit is then named in ``LimitReader.unknown``), never an exception.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Iterator, NamedTuple, Optional

try:
    import resource
except ImportError:  # Windows
    resource = None  # type: ignore[assignment]

__all__ = ["LimitReader", "Reading", "thread_stack_bytes", "UNLIMITED", "RESERVED_PIDS"]

UNLIMITED = 1 << 62  # a limit this large is none (cgroup v1 writes 2**63 - 4096)
RESERVED_PIDS = 300  # pids the kernel hands out only at boot
_CAPS_EXEMPT = 1 << 21 | 1 << 24  # CAP_SYS_ADMIN, CAP_SYS_RESOURCE: RLIMIT_NPROC does not apply


def thread_stack_bytes() -> int:
    """The stack a new thread reserves: ``threading.stack_size()`` when set,
    else glibc's default, the soft RLIMIT_STACK (8 MiB when that is
    unlimited or unknown; an estimate: other C libraries differ)."""
    size = threading.stack_size()
    if size:
        return size
    if resource is not None:
        soft = resource.getrlimit(resource.RLIMIT_STACK)[0]
        if soft != resource.RLIM_INFINITY and 0 < soft < UNLIMITED:
            return soft
    return 8 * 2**20


class Reading(NamedTuple):
    """One limit as read: ``limit`` and ``in_use`` in its unit, of which
    ``reserved`` is to be kept free and each connection (a thread limit:
    each thread) takes ``per``."""

    name: str
    kind: str  # "fds", "threads" or "memory"
    scope: str  # "process", "user", "cgroup" or "machine"
    limit: int
    in_use: int
    per: int
    reserved: int
    hard: Optional[int]  # an rlimit's hard limit, None when unlimited or not an rlimit


class LimitReader:
    """Reads limits into ``readings``, and the names of those it cannot read
    into ``unknown``; ``thread_reserve``: threads to keep free (each also
    keeps its whole stack free where that counts). Not thread-safe: one
    reader per measurement, on the caller's thread."""

    def __init__(self, proc: Path, sys: Path, thread_reserve: int = 0) -> None:
        self.proc, self.sys, self.thread_reserve = proc, sys, thread_reserve
        self.readings: list[Reading] = []
        self.unknown: list[str] = []

    def add(self, name: str, kind: str, scope: str, limit: Optional[int], in_use: Optional[int], per: int, reserved: int,
            hard: Optional[int] = None) -> None:
        """Record a limit; an unreadable one (None) goes into ``unknown``, an unlimited one nowhere."""
        if limit is None or in_use is None:
            self.unknown.append(name)
        elif limit < UNLIMITED:
            self.readings.append(Reading(name, kind, scope, limit, in_use, per, reserved, hard))

    def text(self, relative: str, root: Optional[Path] = None) -> Optional[str]:
        try:
            return ((root or self.proc) / relative).read_text()
        except (OSError, UnicodeDecodeError):
            return None

    def number(self, relative: str, root: Optional[Path] = None, field: int = 0) -> Optional[int]:
        words = (self.text(relative, root) or "").split()
        word = words[field] if field < len(words) else ""
        if word == "max":
            return UNLIMITED
        return int(word) if word.isdigit() else None

    def status(self, relative: str = "self/status") -> dict[str, str]:
        lines = (self.text(relative) or "").splitlines()
        return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}

    def rlimit(self, name: str) -> Optional[tuple[int, Optional[int]]]:
        """(soft, hard or None when unlimited); None when unlimited or unknown."""
        which = getattr(resource, name, None) if resource is not None else None
        if which is None:
            return None
        soft, hard = resource.getrlimit(which)
        return None if soft == resource.RLIM_INFINITY else (soft, None if hard == resource.RLIM_INFINITY else hard)

    def fds(self, reserved: int) -> None:
        """RLIMIT_NOFILE against this process's open descriptors."""
        limits = self.rlimit("RLIMIT_NOFILE")
        if resource is None:
            self.unknown.append("RLIMIT_NOFILE")
        elif limits is not None:
            self.add("RLIMIT_NOFILE", "fds", "process", limits[0], self.open_fds(), 1, reserved, limits[1])

    def open_fds(self) -> Optional[int]:
        real = self.proc == Path("/proc")
        for directory in [self.proc / "self" / "fd"] + ([Path("/dev/fd")] if real else []):
            try:
                return len(os.listdir(directory)) - (1 if real else 0)  # less the one listdir() opened to read it
            except OSError:
                pass
        return None

    def system_files(self) -> Optional[int]:
        allocated, free = self.number("sys/fs/file-nr"), self.number("sys/fs/file-nr", field=1)  # "allocated free max"
        return None if allocated is None or free is None else allocated - free

    def system_threads(self) -> Optional[int]:
        words = (self.text("loadavg") or "").split()  # "0.00 0.01 0.05 1/123 4567": 123 threads on the machine
        total = words[3].partition("/")[2] if len(words) > 3 else ""
        return int(total) if total.isdigit() else None

    def maps(self) -> Optional[int]:
        try:
            with open(self.proc / "self" / "maps", "rb") as maps:
                return sum(1 for _ in maps)
        except OSError:
            return None

    def nproc(self) -> None:
        limits = self.rlimit("RLIMIT_NPROC")
        if limits is None or os.getuid() == 0 or _hex(self.status().get("CapEff", "")) & _CAPS_EXEMPT:
            return  # unlimited, or not enforced
        uid, threads = os.getuid(), 0
        try:
            pids = [name for name in os.listdir(self.proc) if name.isdigit()]
        except OSError:
            pids = []
        for pid in pids:  # the kernel counts the threads of the real uid
            status = self.status(f"{pid}/status")
            count = status.get("Threads", "")
            if status.get("Uid", "").split()[:1] == [str(uid)] and count.isdigit():
                threads += int(count)
        self.add("RLIMIT_NPROC", "threads", "user", limits[0], threads if pids else None, 1, self.thread_reserve, limits[1])

    def cgroup_dirs(self, controller: str) -> Optional[list[Path]]:
        """This process's cgroup directories holding ``controller``'s limit
        files (v1 or v2), leaf first; [] when none does; None when unknown."""
        text = self.text("self/cgroup")
        if text is None:
            return None
        root = self.sys / "fs" / "cgroup"
        for line in text.splitlines():  # "4:memory:/path" (v1), "0::/path" (v2)
            _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
            if controllers and controller not in controllers.split(","):
                continue
            for mount in [root / controllers, root / controller] if controllers else [root, root / "unified"]:
                leaf = mount / path.strip().lstrip("/")
                dirs = list(_walk(leaf if leaf.is_dir() else mount, mount))  # not there: a cgroup namespace's root
                if any((d / f"{controller}.max").exists() or (d / f"{controller}.limit_in_bytes").exists() for d in dirs):
                    return dirs
        return []

    def cgroup(self, controller: str, name: str, kind: str, per: int) -> None:
        """The tightest level of the cgroup's limit (ancestors' limits apply too)."""
        dirs = self.cgroup_dirs(controller)
        if dirs is None:
            self.unknown.append(name)
            return
        levels = []
        for d in dirs:
            if controller == "pids":
                limit, used = self.number("pids.max", d), self.number("pids.current", d)
            else:
                v2 = (d / "memory.max").exists()
                limit = self.number("memory.max" if v2 else "memory.limit_in_bytes", d)
                usage = self.number("memory.current" if v2 else "memory.usage_in_bytes", d)
                stat = dict(line.partition(" ")[::2] for line in (self.text("memory.stat", d) or "").splitlines())
                cache = stat.get("inactive_file" if v2 else "total_inactive_file", "").strip()
                used = None if usage is None else usage - (int(cache) if cache.isdigit() else 0)
            if limit is not None and used is not None and limit < UNLIMITED:
                levels.append((limit - used, limit, used))
        if levels:
            _, limit, used = min(levels)
            self.add(name, kind, "cgroup", limit, used, per, self.thread_reserve if kind == "threads" else 0)

    def memory(self, per_connection: int, stack: int) -> None:
        """Memory free on the machine and in the cgroup, and, where whole
        thread stacks count (``RLIMIT_AS``, ``CommitLimit`` under strict
        overcommit), the address space: ``stack`` bytes for each thread of
        ``thread_reserve`` kept free, ``per_connection`` for each connection."""
        info = {key: int(value.split()[0]) * 1024 for key, value in self.status("meminfo").items() if value.split()[:1]
                and value.split()[0].isdigit()}
        total, available = info.get("MemTotal"), info.get("MemAvailable")
        self.add("MemAvailable", "memory", "machine", total, None if total is None or available is None else total - available,
                 per_connection, 0)
        self.cgroup("memory", "memory.max", "memory", per_connection)
        reserve = self.thread_reserve * stack  # a connection has no thread, so no stack, of its own
        address_space = self.rlimit("RLIMIT_AS")
        if address_space is not None:
            size = self.status().get("VmSize", "").split()[:1]
            self.add("RLIMIT_AS", "memory", "process", address_space[0], int(size[0]) * 1024 if size and size[0].isdigit() else None,
                     per_connection, reserve, address_space[1])
        if self.number("sys/vm/overcommit_memory") == 2:
            self.add("CommitLimit", "memory", "machine", info.get("CommitLimit"), info.get("Committed_AS"), per_connection, reserve)


def _hex(text: str) -> int:
    try:
        return int(text, 16)
    except ValueError:
        return 0


def _walk(directory: Path, mount: Path) -> Iterator[Path]:
    """``directory`` and its parents up to ``mount``."""
    while True:
        yield directory
        if directory == mount or directory.parent == directory:
            return
        directory = directory.parent
