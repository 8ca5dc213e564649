"""``python -m ws_multipath serve myapp:create_server --port 8000 --workers 4 --broker redis://...``

``myapp:create_server`` names a module (imported with the current directory
on ``sys.path``) and a callable in it. Each worker calls it with keyword
arguments ``port``, ``host``, ``broker`` (the URL, or None) and
``reuse_port`` (True) and expects a ``MultipathServer`` back, made with
those (plus any options of the app's own) and with its handlers
registered::

    def create_server(**options):
        server = MultipathServer(**options, max_connections=10_000)
        chat = server.create_handler("/chat")
        ...
        return server

The supervisor (this process) binds nothing: it starts the workers as
child processes (``python -m ws_multipath serve ... --worker``), which bind
the one port with ``SO_REUSEPORT`` (the kernel spreads connections among
them) and share broadcasts through the broker. Ctrl-C or SIGTERM: every
worker gets SIGTERM, closes its clients with 1001 and exits; a worker still
alive after ``--grace`` seconds is killed. A worker that dies on its own is
logged with its exit status and restarted after a backoff (0.5 s, doubling
to 30 s; reset once a worker lived 30 s), so a crashing app does not spin.
On Linux the workers also get SIGTERM if the supervisor itself dies
(``PR_SET_PDEATHSIG``): no orphans.

Listening on a socket the deployment hands over: ``--fd 3`` (a listening
socket inherited as descriptor 3), or, without ``--fd``, systemd's socket
activation (``LISTEN_FDS`` and ``LISTEN_PID`` in the environment: its
first socket, descriptor 3). Every worker then accepts on that one socket
(inherited, no ``SO_REUSEPORT``), and the factory is called with ``sock``
(the socket) and ``broker`` instead of ``port``, ``host`` and
``reuse_port``; ``--port`` and ``--host`` may not be given with it.
"""

from __future__ import annotations

import importlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Optional

from ..log import configure_logging, logger

__all__ = ["load_factory", "run_worker", "supervise", "systemd_listen_fd"]

_SD_LISTEN_FDS_START = 3

_BACKOFF_START = 0.5
_BACKOFF_MAX = 30.0
_HEALTHY_AFTER = 30.0


#: Seconds a worker may take to close before it is killed: past its own
#: ``close()`` deadline (the default ``close_timeout``, 10 s, plus 2) with
#: room for a worker holding 19,000 connections (10.3-11.8 s measured on
#: 2 cores: benchmarks/results/2026-12-07-57k.md).
GRACE = 15.0


def load_factory(spec: str) -> Callable[..., Any]:
    """The callable named by ``module:attribute``; ``ValueError`` naming what is wrong."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"expected module:callable, not {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r}: {exc}") from exc
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ValueError(f"{module_name!r} has no attribute {attribute!r}") from None
    if not callable(target):
        raise ValueError(f"{spec} is not callable")
    return target  # type: ignore[no-any-return]


def systemd_listen_fd(environ: Optional[dict[str, str]] = None) -> Optional[int]:
    """The first socket systemd passed (socket activation: ``LISTEN_FDS``
    and ``LISTEN_PID``, which must be this process), or None. The variables
    are removed from ``environ`` (``os.environ`` by default) so that child
    processes do not take them for their own."""
    env: Any = os.environ if environ is None else environ
    fds, pid = env.get("LISTEN_FDS"), env.get("LISTEN_PID")
    if fds is None:
        return None
    for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        env.pop(name, None)
    if pid is not None and pid.strip() != str(os.getpid()):
        return None  # meant for another process (the variables were inherited)
    try:
        count = int(fds)
    except ValueError:
        raise ValueError(f"LISTEN_FDS={fds!r} is not a number") from None
    if count < 1:
        return None
    if count > 1:
        logger.warning("serve: systemd passed %d sockets; serving on the first (fd %d) only", count, _SD_LISTEN_FDS_START)
    return _SD_LISTEN_FDS_START


def _inherited_socket(fd: int) -> socket.socket:
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ValueError(f"--fd {fd}: not an open socket ({exc.strerror or exc})") from None
    sock.set_inheritable(False)
    return sock


def run_worker(spec: str, port: int, host: Optional[str], broker: Optional[str], reuse_port: bool, fd: Optional[int] = None) -> int:
    """One worker: build the server, say so on stdout, serve until SIGTERM / Ctrl-C."""
    from ..server import MultipathServer
    from ..sync.acceptor import accepting_held

    factory = load_factory(spec)
    with accepting_held():  # no connection reaches the server before the factory registered its handlers
        if fd is not None:
            server = factory(sock=_inherited_socket(fd), broker=broker)
        else:
            server = factory(port=port, host=host, broker=broker, reuse_port=reuse_port)
    if not isinstance(server, MultipathServer):
        raise TypeError(f"{spec} returned {type(server).__name__}, not a MultipathServer")
    # SIGTERM from the supervisor and SIGINT from a terminal's Ctrl-C often
    # both come: each only sets the flag, so the second cannot cut the
    # graceful close of the first short
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    server.wait_cluster_ready(5.0)
    where = f"port {server.port}" if server.port is not None else f"{server.address}"
    # One write of the whole line: the workers share stdout, and print() writes
    # the text and its newline apart, so two workers' lines could interleave.
    sys.stdout.write(f"worker {os.getpid()} listening on {where}" + (f" (fd {fd})" if fd is not None else "") + "\n")
    sys.stdout.flush()
    while not stop.wait(0.5):
        if server._closed_event.is_set():
            break
    server.close()
    return 0


def _die_with_parent() -> None:
    """Child side (Linux): SIGTERM when the supervisor dies."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort
        pass


def supervise(
    spec: str, workers: int, port: int, host: Optional[str], broker: Optional[str], grace: float = GRACE,
    fd: Optional[int] = None, worker_args: tuple[str, ...] = (),
) -> int:
    """Run ``workers`` worker processes until SIGTERM or Ctrl-C; with
    ``fd``, they all accept on that inherited listening socket."""
    load_factory(spec)  # a typo fails here, once, not in a restart loop
    if broker is None and workers > 1:
        logger.warning("serve: no --broker: a broadcast reaches only the clients of the worker that made it")
    pass_fds: tuple[int, ...] = ()
    if fd is not None:
        _inherited_socket(os.dup(fd)).close()  # fails here, once, when fd is no socket
        argv = [sys.executable, "-m", "ws_multipath", "serve", spec, "--worker", "--fd", str(fd), *worker_args]
        pass_fds = (fd,)
    else:
        argv = [sys.executable, "-m", "ws_multipath", "serve", spec, "--worker", "--port", str(port), *worker_args]
    if host is not None:
        argv += ["--host", host]
    if broker is not None:
        argv += ["--broker", broker]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.getcwd(), env.get("PYTHONPATH")) if p)
    preexec = _die_with_parent if sys.platform.startswith("linux") else None

    def start() -> "subprocess.Popen[bytes]":
        return subprocess.Popen(argv, env=env, preexec_fn=preexec, pass_fds=pass_fds)  # noqa: PLW1509 - the supervisor has one thread

    stopping = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        # only a flag: an exception raised from here could land inside
        # subprocess.Popen while a worker is being restarted
        stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    procs: dict[int, "subprocess.Popen[bytes]"] = {}  # slot -> process
    started: dict[int, float] = {}
    backoff: dict[int, float] = {}
    restart_at: dict[int, float] = {}
    try:
        for slot in range(workers):
            procs[slot] = start()
            started[slot] = time.monotonic()
        while not stopping.wait(0.2):
            now = time.monotonic()
            for slot in range(workers):
                proc = procs.get(slot)
                if proc is not None:
                    status = proc.poll()
                    if status is None:
                        continue
                    lived = now - started[slot]
                    delay = _BACKOFF_START if lived >= _HEALTHY_AFTER else min(backoff.get(slot, _BACKOFF_START / 2) * 2, _BACKOFF_MAX)
                    backoff[slot] = delay
                    logger.error("serve: worker %d (pid %d) exited with status %s after %.1f s; restarting in %.1f s", slot, proc.pid, _status(status), lived, delay)
                    del procs[slot]
                    restart_at[slot] = now + delay
                elif now >= restart_at.get(slot, 0.0):
                    procs[slot] = start()
                    started[slot] = now
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not abandon the workers
        for proc in procs.values():
            _signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in procs.values():
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.error("serve: worker pid %d still running after %.0f s; killing it", proc.pid, grace)
                _signal(proc, signal.SIGKILL)
                proc.wait()
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _signal(proc: "subprocess.Popen[bytes]", sig: int) -> None:
    try:
        proc.send_signal(sig)
    except ProcessLookupError:
        pass


def _status(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return str(code)


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m ws_multipath serve", description="serve an app's MultipathServer in worker processes sharing one port")
    parser.add_argument("app", help="module:callable returning a MultipathServer made with the keyword arguments it is given")
    parser.add_argument("--port", type=int, default=None, help="port to listen on (default 8000)")
    parser.add_argument("--host", default=None, help="address to listen on (default: all interfaces)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--broker", default=None, help="broker URL shared by the workers, e.g. redis://localhost:6379/0")
    parser.add_argument("--grace", type=float, default=GRACE, help=f"seconds a worker may take to close before it is killed (default {GRACE:.0f})")
    parser.add_argument("--verbose", "-v", action="store_true", help="log connections, closes, refusals and drops (INFO)")
    parser.add_argument("--log-format", choices=("text", "json"), default="text", help="log lines as text (default) or JSON objects")
    parser.add_argument("--fd", type=int, default=None, help="accept on this inherited listening socket instead of a port (default: systemd's LISTEN_FDS, if set)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    configure_logging(args.verbose, args.log_format, "%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    worker_args = (["--verbose"] if args.verbose else []) + ["--log-format", args.log_format]
    try:
        fd = args.fd
        if fd is None and not args.worker:
            fd = systemd_listen_fd()
        if fd is not None and (args.port is not None or args.host is not None):
            raise ValueError(f"--fd {fd} (or LISTEN_FDS) is the listening socket: do not give --port or --host with it")
        port = 8000 if args.port is None else args.port
        if args.worker:
            return run_worker(args.app, port, args.host, args.broker, reuse_port=fd is None, fd=fd)
        return supervise(args.app, args.workers, port, args.host, args.broker, args.grace, fd, tuple(worker_args))
    except (ValueError, TypeError, OSError) as exc:
        print(f"serve: {exc}", file=sys.stderr)
        return 2
