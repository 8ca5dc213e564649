"""Node's ``ws`` (8) as a real client of the server under test.

``node_ws`` (a session fixture) finds ``node`` (the tests using it skip,
saying why, when it is absent: CI installs it) and installs ``ws@8`` with
npm into ``tests/.node/`` (git-ignored) the first time; an ``flock`` on
``tests/.node/.lock`` makes parallel runs wait for one install instead of
racing. A failed install fails the tests: with ``node`` present they must
run.

``NodeClient`` runs one ``tests/node/client.js``: one ``ws`` client that
reports what it sees as JSON lines (``'open'``, ``'message'``, ``'close'``,
``'unexpected-response'``...) and takes commands (send, ping, close,
terminate). ``WireTap`` relays one TCP connection and keeps what the server
wrote, to read frame headers (RSV1) that the client does not expose.
"""

from __future__ import annotations

import base64
import fcntl
import json
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Optional, Union

import pytest

from .conftest import TIMEOUT

HERE = Path(__file__).resolve().parent
CLIENT_JS = HERE / "node" / "client.js"
NODE_DIR = HERE / ".node"  # npm's --prefix: node_modules/ws, package.json, the lock and the stamp
WS_SPEC = "ws@8"
STAMP = NODE_DIR / ".installed-ws8"  # written once npm succeeded: a half-done install is redone


def install_ws() -> Path:
    """The path of the ``ws`` package, installed with npm the first time."""
    module = NODE_DIR / "node_modules" / "ws"
    NODE_DIR.mkdir(exist_ok=True)
    with open(NODE_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if STAMP.exists() and (module / "package.json").exists():
            return module
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("node is installed but npm is not: it is needed once, to install ws@8 into tests/.node/")
        command = [npm, "install", "--no-audit", "--no-fund", "--silent", "--prefix", str(NODE_DIR), WS_SPEC]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
        STAMP.write_text(json.loads((module / "package.json").read_text())["version"] + "\n")
    return module


@pytest.fixture(scope="session")
def node_ws() -> Path:
    """The installed ``ws`` package (skips when ``node`` is absent)."""
    if shutil.which("node") is None:
        pytest.skip("node (Node.js >= 18) is not installed: the tests with Node's ws as the client need it (.ci/run installs Debian's nodejs and npm)")
    return install_ws()


class NodeClient:
    """One ``ws`` client in a ``node`` process, as a context manager.

    Events arrive on a reader thread and are kept in order; ``next(name)``
    returns the next one of that name (each name has its own cursor), so a
    test waits for exactly what it expects, within ``timeout``. ``events``
    is everything seen so far. Leaving the block ends the process (stdin
    closed, then killed by pid if it lingers).
    """

    def __init__(self, module: Path, url: str, protocols: Optional[list[str]] = None, timeout: float = 3 * TIMEOUT, **options: Any) -> None:
        config = {"module": str(module), "url": url, "protocols": protocols or [], "options": options, "timeout": timeout}
        self.events: list[dict] = []
        self._changed = threading.Condition()  # guards events and _cursors
        self._cursors: dict[tuple[str, ...], int] = {}
        self._stderr: list[str] = []
        self._process = subprocess.Popen(
            ["node", str(CLIENT_JS), json.dumps(config)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
        )
        self._threads = [threading.Thread(target=self._read, daemon=True), threading.Thread(target=self._read_stderr, daemon=True)]
        for thread in self._threads:
            thread.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            event = json.loads(line)
            if "data" in event:
                event["data"] = base64.b64decode(event["data"])
            with self._changed:
                self.events.append(event)
                self._changed.notify_all()
        with self._changed:
            self.events.append({"event": "exit"})
            self._changed.notify_all()

    def _read_stderr(self) -> None:
        assert self._process.stderr is not None
        for line in self._process.stderr:
            self._stderr.append(line)

    def next(self, name: str, timeout: float = TIMEOUT) -> dict:
        """The next event called ``name`` (after the last one returned);
        AssertionError naming everything seen if none comes in time."""
        return self._next((name,), timeout)

    def _next(self, names: tuple[str, ...], timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for index in range(self._cursors.get(names, 0), len(self.events)):
                    if self.events[index]["event"] in names:
                        self._cursors[names] = index + 1
                        return self.events[index]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no {' or '.join(names)} event from the ws client within {timeout} s; "
                                         f"seen: {self.events}; stderr: {''.join(self._stderr)}")
                self._changed.wait(remaining)

    def names(self) -> list[str]:
        """The names of the events seen so far, in order."""
        with self._changed:
            return [event["event"] for event in self.events]

    def command(self, op: str, data: Union[str, bytes, None] = None, **fields: Any) -> None:
        """Run one command (send, ping, pong, close, terminate) and wait until
        the client says it was done (for send: written to its socket);
        AssertionError if ``ws`` raised."""
        message: dict[str, Any] = {"op": op, **fields}
        if data is not None:
            raw = data.encode() if isinstance(data, str) else data
            message["data"] = base64.b64encode(raw).decode()
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps(message) + "\n")
        self._process.stdin.flush()
        answer = self._next(("done", "command-error"), TIMEOUT)
        assert answer["event"] == "done" and answer["op"] == op, f"the ws client could not {op}: {answer}"

    def close(self) -> None:
        try:
            if self._process.stdin is not None:
                self._process.stdin.close()
        except OSError:
            pass
        try:
            self._process.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(TIMEOUT)
        for thread in self._threads:
            thread.join(TIMEOUT)

    def __enter__(self) -> "NodeClient":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class WireTap:
    """A TCP relay on 127.0.0.1 for one connection to ``port``: what the
    server writes is kept, so that a test reads its frames' headers.

    ``frames(count)`` waits for the first ``count`` frames after the
    handshake's head and returns ``(first_byte, payload)`` for each (server
    frames are never masked). The relay's threads own the sockets and end
    when either side closes.
    """

    def __init__(self, port: int) -> None:
        self._upstream_port = port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._from_server = bytearray()
        self._grew = threading.Condition()  # guards _from_server
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()
        self._pumps: list[threading.Thread] = []

    def _accept(self) -> None:
        self._listener.settimeout(TIMEOUT)
        try:
            client, _ = self._listener.accept()
        except OSError:
            return
        server = socket.create_connection(("127.0.0.1", self._upstream_port), timeout=TIMEOUT)
        for source, sink, keep in ((client, server, False), (server, client, True)):
            pump = threading.Thread(target=self._pump, args=(source, sink, keep), daemon=True)
            pump.start()
            self._pumps.append(pump)

    def _pump(self, source: socket.socket, sink: socket.socket, keep: bool) -> None:
        source.settimeout(3 * TIMEOUT)
        try:
            while True:
                chunk = source.recv(65536)
                if not chunk:
                    break
                if keep:
                    with self._grew:
                        self._from_server += chunk
                        self._grew.notify_all()
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def frames(self, count: int, timeout: float = TIMEOUT) -> list[tuple[int, bytes]]:
        deadline = time.monotonic() + timeout
        with self._grew:
            while True:
                found = _parse_frames(bytes(self._from_server))
                if len(found) >= count:
                    return found[:count]
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"{len(found)} of {count} frames from the server within {timeout} s"
                self._grew.wait(remaining)

    def close(self) -> None:
        self._listener.close()
        self._thread.join(TIMEOUT)
        for pump in self._pumps:
            pump.join(TIMEOUT)

    def __enter__(self) -> "WireTap":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def _parse_frames(data: bytes) -> list[tuple[int, bytes]]:
    """The whole unmasked frames after the HTTP head (RFC 6455 section 5.2)."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return []
    position, frames = end + 4, []
    while position + 2 <= len(data):
        first, length = data[position], data[position + 1] & 0x7F
        header = 2
        if length == 126:
            header, length = 4, int.from_bytes(data[position + 2 : position + 4], "big")
        elif length == 127:
            header, length = 10, int.from_bytes(data[position + 2 : position + 10], "big")
        if position + header + length > len(data):
            break
        frames.append((first, data[position + header : position + header + length]))
        position += header + length
    return frames
