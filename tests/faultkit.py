"""Shared helpers of the fault tests (tests/test_faults.py, tests/test_fuzz.py).

Everything here uses real sockets on 127.0.0.1 and the public API of
ws_multipath; nothing is mocked. Raw sockets play the hostile clients, since
no well-behaved client library can reset mid-frame or trickle a request head.

Scale: ``WS_MULTIPATH_FAULT_SCALE`` (a float, default 1) multiplies every
load count (connection cycles, slowloris connections, fuzz examples...).
CI runs with the default; ``WS_MULTIPATH_FAULT_SCALE=5`` gives the full
10,000-cycle churn of the issue, and more fuzz examples.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import inspect
import logging
import os
import resource
import select
import socket
import ssl
import struct
import threading
import time
from typing import Any, Callable, Iterator, Optional

from websockets.sync.client import connect as _ws_connect

from ws_multipath import MultipathServer

HOST = "127.0.0.1"
LOGGER = logging.getLogger("ws_multipath")

SCALE = float(os.environ.get("WS_MULTIPATH_FAULT_SCALE", "1") or "1")


def scaled(count: int, minimum: int = 1) -> int:
    """``count`` times ``WS_MULTIPATH_FAULT_SCALE``, at least ``minimum``."""
    return max(minimum, int(count * SCALE))


# -- waiting ------------------------------------------------------------------


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.01, message: str = "") -> Any:
    """Poll ``predicate`` until it is truthy (returned) or ``timeout`` passes
    (AssertionError). Polling a condition with a deadline, not a sleep."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message or predicate}")
        time.sleep(interval)


class Counter:
    """A thread-safe counter one can wait on."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.value = 0

    def add(self, n: int = 1) -> None:
        with self._cond:
            self.value += n
            self._cond.notify_all()

    def wait_for(self, target: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.value >= target, timeout)


# -- errors that must never happen ----------------------------------------------


class _ListHandler(logging.Handler):
    def __init__(self, sink: list) -> None:
        super().__init__(level=logging.ERROR)
        self._sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self._sink.append(record)


class ErrorCollector:
    """Collects exceptions that escape any thread (``threading.excepthook``)
    and records logged at ERROR or above on the ``ws_multipath`` logger."""

    def __init__(self) -> None:
        self.thread_errors: list[Any] = []
        self.error_records: list[logging.LogRecord] = []
        self._handler = _ListHandler(self.error_records)
        self._previous_hook: Any = None

    def install(self) -> "ErrorCollector":
        self._previous_hook = threading.excepthook
        threading.excepthook = self._hook
        LOGGER.addHandler(self._handler)
        return self

    def uninstall(self) -> None:
        LOGGER.removeHandler(self._handler)
        if self._previous_hook is not None:
            threading.excepthook = self._previous_hook

    def _hook(self, args: Any) -> None:
        self.thread_errors.append((getattr(args.thread, "name", "?"), args.exc_type, args.exc_value))
        if self._previous_hook is not None:
            self._previous_hook(args)

    def describe(self) -> str:
        lines = [f"thread {name}: {etype.__name__}: {value}" for name, etype, value in self.thread_errors]
        for record in self.error_records:
            text = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                text += f" ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
            lines.append(f"log {record.levelname}: {text}")
        return "\n".join(lines)

    def assert_clean(self) -> None:
        assert not self.thread_errors and not self.error_records, "errors escaped:\n" + self.describe()


@contextlib.contextmanager
def collect_errors() -> Iterator[ErrorCollector]:
    collector = ErrorCollector().install()
    try:
        yield collector
    finally:
        collector.uninstall()


# -- the server side ----------------------------------------------------------


class ConnectionLog:
    """What a handler saw: every connection and every ``'close'`` event."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.opened: list[Any] = []
        self.closes: list[tuple[Any, int, str, float]] = []  # (ws, code, reason, monotonic time)
        self.opened_at: dict[int, float] = {}

    def on_open(self, ws: Any) -> None:
        with self._cond:
            self.opened.append(ws)
            self.opened_at[id(ws)] = time.monotonic()
            self._cond.notify_all()

    def on_close(self, ws: Any, code: int, reason: str) -> None:
        with self._cond:
            self.closes.append((ws, code, reason, time.monotonic()))
            self._cond.notify_all()

    def wait_opened(self, count: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.opened) >= count, timeout)

    def wait_closed(self, count: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.closes) >= count, timeout)

    def close_codes(self) -> collections.Counter:
        with self._cond:
            return collections.Counter(code for _, code, _, _ in self.closes)


def make_server(**kwargs: Any) -> MultipathServer:
    return MultipathServer(0, HOST, **kwargs)


def add_echo(server: MultipathServer, path: str, log: Optional[ConnectionLog] = None, **options: Any) -> Any:
    """A handler on ``path`` that echoes every message (from its reader thread)."""
    handler = server.create_handler(path, **options)

    @handler.on("connection")
    def on_connection(ws: Any, request: Any) -> None:
        def echo(data: Any, is_binary: bool) -> None:
            try:
                ws.send(data)
            except Exception:  # noqa: BLE001 - the peer went away: fine here
                pass

        ws.on("message", echo)
        if log is not None:
            ws.on("close", lambda code, reason: log.on_close(ws, code, reason))
            log.on_open(ws)

    return handler


_CONNECT_PARAMETERS = inspect.signature(_ws_connect).parameters


def connect(url: str, **kwargs: Any) -> Any:
    """A websockets sync client, usable with or without ``with``."""
    if "legacy" in _CONNECT_PARAMETERS:  # websockets >= 16 warns when not used with ``with``
        kwargs.setdefault("legacy", True)
    if "proxy" in _CONNECT_PARAMETERS:  # no proxy from the environment, ever
        kwargs.setdefault("proxy", None)
    kwargs.setdefault("open_timeout", 10)
    kwargs.setdefault("close_timeout", 5)
    return _ws_connect(url, **kwargs)


# -- raw clients ----------------------------------------------------------------


def raw_connect(port: int, timeout: float = 10.0, rcvbuf: Optional[int] = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    try:
        sock.connect((HOST, port))
    except BaseException:
        sock.close()
        raise
    return sock


def new_key() -> str:
    return base64.b64encode(os.urandom(16)).decode("ascii")


def upgrade_request(path: str, port: int = 0, key: Optional[str] = None, headers: tuple = ()) -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {HOST}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key or new_key()}",
        "Sec-WebSocket-Version: 13",
    ]
    lines.extend(f"{name}: {value}" for name, value in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def read_http_response(sock: socket.socket) -> tuple[int, bytes, bytes]:
    """Read an HTTP response head; return ``(status, head, bytes after it)``."""
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"EOF before the end of the response head: {buffer[:200]!r}")
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    return parse_status(head), head, rest


def parse_status(head: bytes) -> int:
    parts = head.split(b"\r\n", 1)[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.1") or not parts[1].isdigit():
        raise AssertionError(f"not an HTTP/1.1 status line: {head[:200]!r}")
    return int(parts[1])


def raw_upgrade(port: int, path: str, timeout: float = 10.0, **connect: Any) -> tuple[socket.socket, bytes]:
    """A raw socket that completed the opening handshake; returns it and any
    bytes read past the 101 response."""
    sock = raw_connect(port, timeout, **connect)
    try:
        sock.sendall(upgrade_request(path, port))
        status, head, rest = read_http_response(sock)
        assert status == 101, head
    except BaseException:
        sock.close()
        raise
    return sock, rest


def reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0) instead of a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def read_until_eof(sock: socket.socket, timeout: float) -> tuple[bytes, str]:
    """Everything the peer sends until it closes; returns ``(data, how)``
    with ``how`` one of "eof", "reset", "timeout"."""
    deadline = time.monotonic() + timeout
    data = bytearray()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return bytes(data), "timeout"
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return bytes(data), "timeout"
        except ConnectionResetError:
            return bytes(data), "reset"
        if not chunk:
            return bytes(data), "eof"
        data += chunk


def encode_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bool = True,
    mask_key: Optional[bytes] = None,
    length: Optional[int] = None,
    length_form: Optional[int] = None,
) -> bytes:
    """One client frame. ``length`` overrides the declared payload length;
    ``length_form`` forces the 7-bit (0), 16-bit (126) or 64-bit (127) form."""
    declared = len(payload) if length is None else length
    if length_form is None:
        length_form = 0 if declared < 126 else 126 if declared < 65536 else 127
    first = (0x80 if fin else 0) | ((rsv & 7) << 4) | (opcode & 0x0F)
    mask_bit = 0x80 if mask else 0
    if length_form == 0:
        header = bytes((first, mask_bit | (declared & 0x7F)))
    elif length_form == 126:
        header = bytes((first, mask_bit | 126)) + struct.pack("!H", declared & 0xFFFF)
    else:
        header = bytes((first, mask_bit | 127)) + struct.pack("!Q", declared & 0xFFFFFFFFFFFFFFFF)
    if not mask:
        return header + payload
    key = mask_key if mask_key is not None else os.urandom(4)
    return header + key + apply_mask(payload, key)


def apply_mask(payload: bytes, key: bytes) -> bytes:
    if not payload:
        return b""
    repeated = (key * (len(payload) // 4 + 1))[: len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(len(payload), "big")


def close_frame(code: Optional[int] = 1000, reason: bytes = b"", **kwargs: Any) -> bytes:
    payload = b"" if code is None else struct.pack("!H", code) + reason
    return encode_frame(0x8, payload, **kwargs)


class ServerFrame(collections.namedtuple("ServerFrame", "fin rsv opcode masked payload")):
    @property
    def close_code(self) -> Optional[int]:
        if self.opcode != 0x8 or len(self.payload) < 2:
            return None
        return struct.unpack("!H", self.payload[:2])[0]


def parse_one_frame(data: bytes, offset: int = 0) -> Optional[tuple[ServerFrame, int]]:
    """The frame starting at ``offset`` and the offset after it, or None if incomplete."""
    if len(data) - offset < 2:
        return None
    b0, b1 = data[offset], data[offset + 1]
    length = b1 & 0x7F
    position = offset + 2
    if length == 126:
        if len(data) - position < 2:
            return None
        length = struct.unpack("!H", data[position : position + 2])[0]
        position += 2
    elif length == 127:
        if len(data) - position < 8:
            return None
        length = struct.unpack("!Q", data[position : position + 8])[0]
        position += 8
    masked = bool(b1 & 0x80)
    if masked:
        position += 4
    if len(data) - position < length:
        return None
    frame = ServerFrame(bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0x0F, masked, bytes(data[position : position + length]))
    return frame, position + length


def parse_server_frames(data: bytes) -> tuple[list[ServerFrame], bytes]:
    """Split the server's bytes into frames; returns them and any incomplete tail."""
    frames = []
    offset = 0
    while True:
        parsed = parse_one_frame(data, offset)
        if parsed is None:
            return frames, bytes(data[offset:])
        frame, offset = parsed
        frames.append(frame)


def read_server_frame(sock: socket.socket, buffer: bytearray) -> ServerFrame:
    """Read exactly one server frame from a blocking socket (``buffer`` keeps leftovers)."""
    while True:
        parsed = parse_one_frame(buffer)
        if parsed is not None:
            frame, end = parsed
            del buffer[:end]
            return frame
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("EOF while reading a frame")
        buffer += chunk


# -- resources ---------------------------------------------------------------


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def thread_names() -> collections.Counter:
    return collections.Counter(_thread_kind(t.name) for t in threading.enumerate())


def _thread_kind(name: str) -> str:
    if name.startswith("ws_multipath-reader"):
        return "ws_multipath-reader"
    return name if name.startswith("ws_multipath") else "other"


def receive_queue(local_port: int, remote_port: int) -> Optional[int]:
    """Bytes waiting unread in the receive queue of the loopback TCP socket
    ``127.0.0.1:local_port`` connected to ``127.0.0.1:remote_port`` (from
    /proc/net/tcp); None when there is no such socket."""
    key = f" 0100007F:{local_port:04X} 0100007F:{remote_port:04X} 01 "  # 01: ESTABLISHED
    with open("/proc/net/tcp") as table:
        text = table.read()  # thousands of TIME_WAIT lines after the churn test: search, don't split
    at = text.find(key)
    if at < 0:
        return None
    queues = text[at + len(key) :].split(None, 1)[0]  # tx_queue:rx_queue
    return int(queues.split(":")[1], 16)


def raise_nofile(wanted: int) -> None:
    """Raise the soft RLIMIT_NOFILE to ``wanted`` (or the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def readable(socks: list[socket.socket], timeout: float) -> list[socket.socket]:
    """The sockets of ``socks`` that are readable (data, EOF or error) within ``timeout``."""
    poller = select.poll()
    by_fd = {}
    for sock in socks:
        poller.register(sock.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
        by_fd[sock.fileno()] = sock
    return [by_fd[fd] for fd, _ in poller.poll(max(0, int(timeout * 1000)))]


# -- TLS ------------------------------------------------------------------------


def make_certificate(directory: str) -> Optional[tuple[str, str]]:
    """A self-signed certificate for 127.0.0.1 / localhost; returns
    ``(certfile, keyfile)``, or None when neither ``cryptography`` nor the
    ``openssl`` CLI is available."""
    certfile = os.path.join(directory, "cert.pem")
    keyfile = os.path.join(directory, "key.pem")
    try:
        return _certificate_with_cryptography(certfile, keyfile)
    except ImportError:
        pass
    import shutil
    import subprocess

    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout", keyfile, "-out", certfile,
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return certfile, keyfile


def _certificate_with_cryptography(certfile: str, keyfile: str) -> tuple[str, str]:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST)), x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    with open(keyfile, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with open(certfile, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return certfile, keyfile


def tls_contexts(certfile: str, keyfile: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(certfile, keyfile)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(certfile)
    return server, client
