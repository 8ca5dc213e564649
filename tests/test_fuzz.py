"""Fuzz tests (issue 4): random and mutated request heads, and random or
mutated frames after a valid upgrade, against one real server on 127.0.0.1.

For every input: no exception escapes any thread, nothing is logged at ERROR
on the ``ws_multipath`` logger, and the server answers as RFC 6455 and HTTP
allow: an HTTP 4xx (or a correct 101) to a request head; to frames, the
echoes, pongs and final close frame that an independent model of RFC 6455
(below, ``expected_outcome``) predicts, or a dropped TCP connection where the
input was cut short. Meanwhile a well-behaved client on another path keeps
echoing.

Examples: ``FUZZ_EXAMPLES`` (about 1,500 heads and 2,000 frame streams, well
under a minute here), times ``WS_MULTIPATH_FAULT_SCALE``.
"""

from __future__ import annotations

import base64
import codecs
import hashlib
import os
import socket
import struct
import sys
import threading
import time

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from faultkit import (  # noqa: E402
    HOST,
    ErrorCollector,
    add_echo,
    apply_mask,
    connect,
    encode_frame,
    make_server,
    parse_server_frames,
    read_server_frame,
    read_until_eof,
    receive_queue,
    scaled,
    upgrade_request,
    wait_until,
)

MAX_PAYLOAD = 4096
HEAD_EXAMPLES = scaled(1500)
FRAME_EXAMPLES = scaled(2000)
MAX_HEADER_SIZE = 4096
READ_TIMEOUT = 10.0

FUZZ_SETTINGS = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    print_blob=True,
)


# -- the server, the error collector and the healthy client: one per module ------


class HealthyClient:
    """Echoes on /healthy in a thread, paced, until stopped; records failures."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.echoes = 0
        self.failures: list[str] = []
        self.slowest = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="healthy-client", daemon=True)

    def start(self) -> "HealthyClient":
        self._thread.start()
        wait_until(lambda: self.echoes > 0 or self.failures, 10, message="the healthy client's first echo")
        return self

    def _run(self) -> None:
        try:
            with connect(f"ws://{HOST}:{self.port}/healthy", ping_interval=None) as ws:
                n = 0
                while not self._stop.is_set() and n < 1_000_000:
                    started = time.monotonic()
                    ws.send(f"healthy {n}")
                    answer = ws.recv(timeout=10)
                    if answer != f"healthy {n}":
                        self.failures.append(f"echo {n} came back as {answer!r}")
                        return
                    self.slowest = max(self.slowest, time.monotonic() - started)
                    self.echoes = n = n + 1
                    self._stop.wait(0.005)  # paced: a client, not a load generator
        except Exception as exc:  # noqa: BLE001 - reported by the tests
            self.failures.append(f"{type(exc).__name__}: {exc}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)


class FuzzTarget:
    def __init__(self) -> None:
        self.errors = ErrorCollector().install()
        self.server = make_server(open_timeout=5, max_header_size=MAX_HEADER_SIZE, max_headers=50)
        self.fuzz = add_echo(self.server, "/fuzz", max_payload=MAX_PAYLOAD, ping_interval=None, close_timeout=2)
        add_echo(self.server, "/healthy", ping_interval=None)
        self.port = self.server.port
        self.healthy = HealthyClient(self.port).start()

    def check(self) -> None:
        self.errors.assert_clean()
        assert not self.healthy.failures, self.healthy.failures

    def close(self) -> None:
        self.healthy.stop()
        self.server.close()
        self.errors.uninstall()


@pytest.fixture(scope="module")
def target():
    made = FuzzTarget()
    yield made
    made.close()


def exchange(port: int, data: bytes, half_close: bool = True) -> tuple[bytes, str]:
    """Send ``data``, half-close, and return all the server said and how it
    ended; without ``half_close``, what it said up to the end of its first
    response head (a 101 keeps the connection open)."""
    sock = socket.create_connection((HOST, port), timeout=READ_TIMEOUT)
    try:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server refused early and reset: what it sent may still be readable
        if not half_close:
            answer = b""
            while b"\r\n\r\n" not in answer:
                chunk = sock.recv(4096)
                if not chunk:
                    return answer, "eof"
                answer += chunk
            return answer, "head"
        return read_until_eof(sock, READ_TIMEOUT)
    finally:
        sock.close()


def run_checked(target: FuzzTarget, counter_before: int, examples: int, record_property, name: str) -> None:
    target.check()
    assert target.healthy.echoes > counter_before, "the healthy client made no progress"
    wait_until(lambda: not target.fuzz.clients, 10, message="every fuzzed connection to end")
    record_property(f"{name}_examples", examples)
    record_property(f"{name}_healthy_slowest_echo", round(target.healthy.slowest, 3))
    print(f"{name}: healthy client echoed {target.healthy.echoes} times, slowest {target.healthy.slowest:.3f}s")


# -- request heads ------------------------------------------------------------------

_TOKEN = st.text(alphabet="!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=12)
_LATIN1 = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255), max_size=40)
_VALUE = st.one_of(_LATIN1, _TOKEN, st.sampled_from(["", " ", "websocket", "Upgrade", "upgrade, keep-alive", "13", "8, 13", "\x00", "\t"]))


@st.composite
def structured_heads(draw):
    """A request head built field by field; returns (bytes, key or None, strictly_valid).
    About a third are valid upgrades with harmless variations."""
    sane = draw(st.integers(0, 2)) == 0

    def pick(good, bad):
        return draw(st.sampled_from(good) if sane else st.sampled_from(good + bad))

    method = pick(["GET"], ["GET", "GET", "POST", "HEAD", "OPTIONS", "get", "G\x00T"])
    target = pick(["/fuzz", "/fuzz?x=1", "/fuzz?", "http://h/fuzz"], ["/healthy2", "/", "*", "/fuzz#f", "/f%75zz", "fuzz", "/fuzz/"])
    version = pick(["HTTP/1.1"], ["HTTP/1.0", "HTTP/2.0", "HTTP/1.2", "http/1.1", "HTTP/11", "HTTP/1.1 "])
    key_kind = pick(["good"], ["short", "long", "not-base64", "missing", "twice"])
    key = base64.b64encode(os.urandom(16)).decode()
    fields = [
        ("Host", pick([HOST, "example.com", "h:1"], [""])),
        ("Upgrade", pick(["websocket", "WebSocket", "h2c, websocket", "websocket, h2c"], ["websock", "", "web socket"])),
        ("Connection", pick(["Upgrade", "upgrade", "keep-alive, Upgrade", "Upgrade,keep-alive"], ["keep-alive", "", "Upgrad"])),
        ("Sec-WebSocket-Version", pick(["13"], ["8", "13, 8", "", "14", " 13x"])),
    ]
    if key_kind in ("good", "twice"):
        fields.append(("Sec-WebSocket-Key", key))
    if key_kind == "twice":
        fields.append(("Sec-WebSocket-Key", base64.b64encode(os.urandom(16)).decode()))
    elif key_kind == "short":
        fields.append(("Sec-WebSocket-Key", base64.b64encode(os.urandom(draw(st.integers(0, 15)))).decode()))
    elif key_kind == "long":
        fields.append(("Sec-WebSocket-Key", base64.b64encode(os.urandom(draw(st.integers(17, 40)))).decode()))
    elif key_kind == "not-base64":
        fields.append(("Sec-WebSocket-Key", draw(_LATIN1)))
    drop = [] if sane else draw(st.lists(st.integers(0, len(fields) - 1), max_size=2, unique=True))
    fields = [f for i, f in enumerate(fields) if i not in drop]
    reserved = ("upgrade", "connection", "sec-websocket-version", "sec-websocket-key", "host", "content-length", "transfer-encoding")
    extra = draw(st.lists(st.tuples(_TOKEN, _VALUE), max_size=5))
    if sane:
        extra = [(name, value) for name, value in extra if name.lower() not in reserved and _plain_value(value)]
    optional = draw(st.lists(st.sampled_from([
        ("Origin", "https://o.example"), ("Sec-WebSocket-Protocol", "chat, superchat"),
        ("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits"),
        ("Sec-WebSocket-Extensions", "x-unknown; a=\"b\""), ("Content-Length", "0"), ("User-Agent", "fuzz/1.0"),
    ] + ([] if sane else [("Transfer-Encoding", "chunked"), ("Content-Length", "5"), ("Host", "second.example")])), max_size=3, unique=True))
    # unique: a repeated Content-Length, even "0" twice, is refused (RFC 9112 section 6.3 lets a server choose)
    fields = fields + extra + optional
    draw(st.randoms()).shuffle(fields)
    lines = [f"{method} {target} {version}"] + [f"{name}: {value}" for name, value in fields]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head, key if key_kind in ("good", "twice") else None, sane


def _plain_value(value: str) -> bool:
    return all(0x20 < ord(c) < 0x7F for c in value[:1] + value[-1:]) and all(c == "\t" or 0x20 <= ord(c) < 0x7F or ord(c) >= 0x80 for c in value) and value.strip() == value and value != ""


@st.composite
def mutated_heads(draw):
    """A valid upgrade request with a few byte-level mutations."""
    key = base64.b64encode(os.urandom(16)).decode()
    head = bytearray(upgrade_request("/fuzz", 0, key=key))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "delete", "insert", "dup-line", "drop-line", "lf-only", "truncate", "space", "nul"]))
        lines = bytes(head).split(b"\r\n")
        if kind == "flip" and head:
            head[draw(st.integers(0, len(head) - 1))] = draw(st.integers(0, 255))
        elif kind == "delete" and head:
            start = draw(st.integers(0, len(head) - 1))
            del head[start : start + draw(st.integers(1, 8))]
        elif kind == "insert":
            position = draw(st.integers(0, len(head)))
            head[position:position] = draw(st.binary(min_size=1, max_size=12))
        elif kind == "dup-line" and len(lines) > 2:
            i = draw(st.integers(0, len(lines) - 3))
            lines.insert(i, lines[i])
            head = bytearray(b"\r\n".join(lines))
        elif kind == "drop-line" and len(lines) > 2:
            del lines[draw(st.integers(0, len(lines) - 3))]
            head = bytearray(b"\r\n".join(lines))
        elif kind == "lf-only":
            head = bytearray(bytes(head).replace(b"\r\n", b"\n"))
        elif kind == "truncate" and head:
            del head[draw(st.integers(0, len(head) - 1)) :]
        elif kind == "space" and head:
            position = draw(st.integers(0, len(head)))
            head[position:position] = draw(st.sampled_from([b" ", b"\t", b"  ", b"\r", b"\n", b":"]))
        elif kind == "nul" and head:
            head[draw(st.integers(0, len(head) - 1))] = 0
    return bytes(head), key, False


@st.composite
def random_heads(draw):
    body = draw(st.binary(max_size=600))
    if draw(st.booleans()):
        body += b"\r\n\r\n"
    if draw(st.integers(0, 20)) == 0:
        body = b"GET /fuzz HTTP/1.1\r\n" + b"X-Big: " + b"b" * draw(st.integers(MAX_HEADER_SIZE - 100, 3 * MAX_HEADER_SIZE)) + b"\r\n\r\n"
    return body, None, False


def _accept_token(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()).decode()


def check_head_answer(sent: bytes, key, valid: bool, answer: bytes, how: str) -> None:
    assert how != "timeout", f"the server neither answered nor closed within {READ_TIMEOUT}s"
    complete = b"\r\n\r\n" in sent
    if not answer:
        event("no answer")
        assert not complete, f"a complete head got no answer at all ({how})"
        return  # a truncated request may be dropped
    assert answer.startswith(b"HTTP/1.1 "), answer[:100]
    head, separator, body = answer.partition(b"\r\n\r\n")
    assert separator, f"incomplete response head: {answer[:200]!r}"
    status = int(head[9:12])
    event(f"HTTP {status}")
    fields = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        fields.setdefault(name.strip().lower(), []).append(value.strip())
    if status == 101:
        assert complete
        request_line = sent.split(b"\n", 1)[0].rstrip(b"\r")  # h11 also takes bare LF line ends
        assert request_line.startswith(b"GET ") and request_line.endswith(b" HTTP/1.1"), request_line
        assert key is not None or b"sec-websocket-key" in sent.lower(), "101 to a request without a key"
        if key is not None and sent.count(key.encode()) == 1:
            assert fields[b"sec-websocket-accept"] == [_accept_token(key).encode()]
        # whatever followed is frames (none here: we sent none); the server closes on our FIN
        frames, rest = parse_server_frames(body)
        assert not rest and all(f.opcode == 0x8 for f in frames), (frames, rest)
        return
    assert not valid, f"a valid upgrade request was refused with {status}: {sent!r}"
    # 501 (CONNECT, a transfer coding) and 505 (a version other than 1.0/1.1) are refusals too
    assert 400 <= status < 500 or status in (501, 505), f"status {status} (not 4xx, 501, 505) for {sent[:300]!r}"
    assert fields.get(b"connection") == [b"close"]
    assert len(body) == int(fields[b"content-length"][0]), (fields, body)


@pytest.mark.timeout(600)
@settings(max_examples=HEAD_EXAMPLES, **FUZZ_SETTINGS)
@given(case=st.one_of(structured_heads(), mutated_heads(), random_heads()))
def test_fuzz_request_heads(target, case):
    head, key, valid = case
    answer, how = exchange(target.port, head)
    if not answer and head.endswith(b"\r\n\r\n"):
        # A client that half-closes right after its upgrade gets no 101 (as in
        # ws): the same head, the socket left open, must then be a valid upgrade.
        event("half-closed before its 101")
        answer, how = exchange(target.port, head, half_close=False)
        assert answer.startswith(b"HTTP/1.1 101 "), answer
    check_head_answer(head, key, valid, answer, how)
    target.errors.assert_clean()


def test_fuzz_request_heads_left_everything_clean(target, record_property):
    """Runs after the head fuzzing: the server is healthy and clean."""
    before = target.healthy.echoes
    wait_until(lambda: target.healthy.echoes > before, 10, message="the healthy client to go on")
    run_checked(target, before, HEAD_EXAMPLES, record_property, "heads")


# -- frames: an independent model of RFC 6455 (server side, no extensions) ----------

DROP = "drop"

_VALID_CODES = set(range(1000, 1004)) | set(range(1007, 1012)) | set(range(3000, 5000))
_REGISTERED_LATER = {1012, 1013, 1014}  # IANA registry, not RFC 6455: echo or refuse both fine


class Expected:
    """What the server must send back: ``outputs`` (opcode, payload) in order,
    then ``final``: a set of acceptable endings, each a close code (the server
    fails or echoes with it), ``None`` (an empty close frame) or ``DROP``."""

    def __init__(self) -> None:
        self.outputs: list[tuple[int, bytes]] = []
        self.final: set = set()
        self.note = ""
        # the client sent bytes after its close frame (which RFC 6455 5.5.1 forbids)
        self.sent_after_close = False

    def __repr__(self) -> str:
        outputs = [(op, p[:20]) for op, p in self.outputs]
        return f"Expected(outputs={outputs}, final={self.final}, {self.note})"


def expected_outcome(stream: bytes, max_payload: int) -> Expected:
    """Walk the client's bytes as RFC 6455 section 5 says a server must."""
    result = Expected()
    position = 0
    message_opcode = None
    message_parts: list[bytes] = []
    message_size = 0
    decoder = None
    while True:
        remaining = len(stream) - position
        if remaining == 0:
            result.final = {DROP}
            result.note = "ends between frames"
            return result
        b0 = stream[position]
        fin, rsv, opcode = bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0x0F
        violations = set()
        if opcode not in (0, 1, 2, 8, 9, 10):
            violations.add(1002)
        if rsv:
            violations.add(1002)
        control = opcode >= 8
        if control and not fin:
            violations.add(1002)
        out_of_order = (opcode == 0 and message_opcode is None) or (opcode in (1, 2) and message_opcode is not None)
        if remaining < 2:
            result.final = {DROP} | violations | ({1002} if out_of_order else set())
            result.note = "cut in the first header bytes"
            return result
        b1 = stream[position + 1]
        masked, length = bool(b1 & 0x80), b1 & 0x7F
        if not masked:
            violations.add(1002)
        if control and length > 125:
            violations.add(1002)
        header = 2
        if length == 126:
            if remaining < 4:
                result.final = {DROP} | violations | ({1002} if out_of_order else set())
                return result
            length = struct.unpack("!H", stream[position + 2 : position + 4])[0]
            header = 4
            if length < 126:
                violations.add(1002)
        elif length == 127:
            if remaining < 10:
                result.final = {DROP} | violations | ({1002} if out_of_order else set())
                return result
            length = struct.unpack("!Q", stream[position + 2 : position + 10])[0]
            header = 10
            if length < 65536 or length >> 63:
                violations.add(1002)
        if not control:
            size = (message_size if opcode == 0 else 0) + length
            if size > max_payload:
                violations.add(1009)
        if out_of_order and not violations and remaining < header + 4 + min(length, 1):
            # wsproto checks the message state (a stray continuation, a new message
            # inside a fragmented one) only once a payload byte of the frame is there:
            # truncated input, which may be dropped.
            result.final = {1002, DROP}
            result.note = f"out-of-order frame cut short at {position}"
            return result
        if out_of_order:
            violations.add(1002)
        if violations:
            result.final = violations | ({DROP} if remaining < header + 4 * masked else set())
            result.note = f"bad header at {position}"
            return result
        if remaining < header + 4:
            result.final = {DROP}
            return result
        key = stream[position + header : position + header + 4]
        start = position + header + 4
        available = stream[start : start + length]
        payload = apply_mask(available, key)
        complete = len(available) == length
        position = start + len(available)
        if control:
            if not complete:
                result.final = {DROP}
                return result
            if opcode == 0x9:
                result.outputs.append((0xA, payload))
            elif opcode == 0x8:
                result.final = _close_outcome(payload)
                result.note = "close frame"
                result.sent_after_close = position < len(stream)
                return result
            continue
        # a data frame (or part of one)
        if opcode != 0:
            message_opcode, message_parts, message_size = opcode, [], 0
            decoder = codecs.getincrementaldecoder("utf-8")() if opcode == 1 else None
        message_size += length
        message_parts.append(payload)
        if decoder is not None:
            try:
                decoder.decode(payload, fin and complete)
            except UnicodeDecodeError:
                result.final = {1007}
                result.note = f"invalid UTF-8 by {position}"
                return result
        if not complete:
            result.final = {DROP}
            result.note = "cut in a data frame's payload"
            return result
        if fin:
            result.outputs.append((message_opcode, b"".join(message_parts)))
            message_opcode, message_parts, message_size, decoder = None, [], 0, None


def _close_outcome(payload: bytes) -> set:
    if not payload:
        return {None}  # echo an empty close frame (1005 is never sent)
    if len(payload) == 1:
        return {1002}
    code = struct.unpack("!H", payload[:2])[0]
    try:
        payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        return {1007} | ({1002} if code not in _VALID_CODES else set())
    if code in _VALID_CODES:
        return {code}
    if code in _REGISTERED_LATER:
        return {code, 1002}
    return {1002}


# -- frames: strategies -----------------------------------------------------------

_CONTROL_PAYLOAD = st.binary(max_size=125)
_CLOSE_CODES = st.one_of(
    st.sampled_from(sorted(_VALID_CODES & set(range(1000, 1012))) + [3000, 3999, 4000, 4999]),
    st.sampled_from([0, 999, 1004, 1005, 1006, 1012, 1013, 1014, 1015, 1016, 1100, 2000, 2999, 5000, 65535]),
    st.integers(0, 65535),
)
_TEXTS = st.one_of(
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.binary(max_size=60),  # usually not UTF-8
    st.sampled_from([b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf", b"\xf0\x9f\x98", b"\xe2\x82"]),
)
_BINARIES = st.one_of(st.binary(max_size=300), st.integers(MAX_PAYLOAD - 10, MAX_PAYLOAD + 10).map(lambda n: b"\x00" * n))


@st.composite
def message_frames(draw):
    """The frames of a data message, maybe fragmented, maybe with control
    frames between its fragments."""
    opcode = draw(st.sampled_from([1, 2]))
    payload = draw(_TEXTS if opcode == 1 else _BINARIES)
    cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=3)))
    pieces, last = [], 0
    for cut in cuts + [len(payload)]:
        pieces.append(payload[last:cut])
        last = cut
    frames = []
    for index, piece in enumerate(pieces):
        final = index == len(pieces) - 1
        frames.append(encode_frame(opcode if index == 0 else 0, piece, fin=final, mask_key=draw(st.binary(min_size=4, max_size=4))))
        if not final and draw(st.integers(0, 3)) == 0:
            frames.append(draw(controls(allow_close=False)))
    return frames


def messages():
    return message_frames().map(b"".join)


@st.composite
def interleaved_messages(draw):
    """The frames of two messages shuffled together, each in its own order
    (a protocol error as soon as the second starts inside the first)."""
    first, second = draw(message_frames()), draw(message_frames())
    merged = []
    while first or second:
        source = first if (first and (not second or draw(st.booleans()))) else second
        merged.append(source.pop(0))
    return b"".join(merged)


@st.composite
def controls(draw, allow_close=True):
    opcode = draw(st.sampled_from([9, 10, 8] if allow_close else [9, 10]))
    if opcode == 8:
        kind = draw(st.sampled_from(["code", "code", "empty", "one-byte", "bad-reason"]))
        if kind == "empty":
            payload = b""
        elif kind == "one-byte":
            payload = b"\x03"
        else:
            reason = draw(st.text(max_size=30)).encode("utf-8", "surrogatepass")[:120] if kind == "code" else draw(st.sampled_from([b"\xff", b"ok\xc3", b"\xed\xa0\x80"]))
            payload = struct.pack("!H", draw(_CLOSE_CODES)) + reason
    else:
        payload = draw(_CONTROL_PAYLOAD)
    return encode_frame(opcode, payload, mask_key=draw(st.binary(min_size=4, max_size=4)))


@st.composite
def odd_frames(draw):
    """A frame with one thing wrong (or several): opcode, reserved bits, mask,
    length form, declared length, fragmented control frame."""
    opcode = draw(st.integers(0, 15))
    payload = draw(st.binary(max_size=200))
    fin = draw(st.booleans())
    rsv = draw(st.sampled_from([0, 0, 1, 2, 4, 7]))
    mask = draw(st.sampled_from([True, True, True, False]))
    length = draw(st.one_of(st.none(), st.integers(0, 300), st.sampled_from([126, 65535, 65536, 2**63, 2**64 - 1])))
    form = draw(st.sampled_from([None, None, 0, 126, 127]))
    if form == 0 and (length if length is not None else len(payload)) > 125:
        form = None
    return encode_frame(opcode, payload, fin=fin, rsv=rsv, mask=mask, length=length, length_form=form)


@st.composite
def frame_streams(draw):
    """(bytes after the upgrade, send them with the request head in one write?)"""
    items = draw(st.lists(st.one_of(messages(), controls(allow_close=False), odd_frames(), controls(), interleaved_messages()), max_size=6))
    stream = b"".join(items)
    ending = draw(st.sampled_from(["close", "close", "close", "none", "cut"]))
    if ending == "close":
        stream += encode_frame(8, struct.pack("!H", 1000) + b"bye", mask_key=draw(st.binary(min_size=4, max_size=4)))
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
        if stream:
            index = draw(st.integers(0, len(stream) - 1))
            stream = stream[:index] + bytes([draw(st.integers(0, 255))]) + stream[index + 1 :]
    if ending == "cut" and stream:
        stream = stream[: draw(st.integers(0, len(stream) - 1))]
    how = draw(st.sampled_from(["together", "after-101", "after-101", "split"]))
    split = draw(st.integers(0, len(stream))) if how == "split" else None
    return stream, how, split


def _apart(outputs: list) -> tuple[list, list]:
    """The data frames and the pongs, each in its order."""
    return [o for o in outputs if o[0] != 0xA], [o for o in outputs if o[0] == 0xA]


def check_frame_answer(stream: bytes, answer: bytes, how: str) -> None:
    expected = expected_outcome(stream, MAX_PAYLOAD)
    assert how != "timeout", f"the server neither closed nor finished within {READ_TIMEOUT}s; {expected}"
    head, separator, rest = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head[:100]
    frames, tail = parse_server_frames(rest)
    assert not tail or how == "reset", f"a partial frame before the connection ended: {tail[:40]!r}"
    for frame in frames:
        assert not frame.masked and frame.rsv == 0 and frame.fin, frame
        assert frame.opcode in (0x1, 0x2, 0x8, 0xA), frame  # the server never pings here (ping_interval=None)
    close_frames = [i for i, frame in enumerate(frames) if frame.opcode == 0x8]
    assert len(close_frames) <= 1 and (not close_frames or close_frames[0] == len(frames) - 1), frames
    got = [(frame.opcode, frame.payload) for frame in frames if frame.opcode != 0x8]
    event(f"model: {sorted(map(str, expected.final))}")
    if close_frames:
        close = frames[-1]
        if len(close.payload) == 0:
            ending = None
        else:
            assert len(close.payload) >= 2, close
            ending = close.close_code
            close.payload[2:].decode("utf-8")  # the reason is valid UTF-8
    else:
        ending = DROP
    if got == expected.outputs and ending in expected.final:
        return
    if _apart(got) == _apart(expected.outputs) and ending in expected.final:
        # Each kind in order, pongs ahead of an echo: a listener that lost its loop (a
        # hand-off, on a loaded machine) sends its echo later, while the loop answers the
        # pings read after its message at once (what a blocked listener must not hold up).
        event("pongs ahead of an echo (a hand-off)")
        return
    if ending == DROP and how == "reset" and expected.sent_after_close and got == expected.outputs[: len(got)]:
        # The server echoed the close frame and closed its socket with the bytes the
        # client sent after its close frame unread: the kernel then sends an RST and
        # discards what it had not transmitted yet, the echo included (rare: loopback
        # usually transmits at once). The client broke RFC 6455 5.5.1 first.
        event("close echo lost to an RST: the client sent after its close frame")
        return
    assert got == expected.outputs, f"outputs differ: got {[(o, p[:20]) for o, p in got]}, ending {ending}; {expected}"
    assert ending in expected.final, f"ended with {ending}; {expected}"


@pytest.mark.timeout(600)
@settings(max_examples=FRAME_EXAMPLES, **FUZZ_SETTINGS)
@given(case=frame_streams())
def test_fuzz_frames_after_upgrade(target, case):
    stream, how, split = case
    head = upgrade_request("/fuzz", target.port)
    if how == "together":
        answer, ending = exchange(target.port, head + stream)
        if not stream and not answer:  # half-closed right after the head: no 101, as in ws (a race: or a 101)
            target.errors.assert_clean()
            return
    else:
        answer, ending = exchange_after_101(target.port, head, stream, split)
    check_frame_answer(stream, answer, ending)
    target.errors.assert_clean()


def exchange_after_101(port: int, head: bytes, stream: bytes, split=None) -> tuple[bytes, str]:
    """Upgrade, then send ``stream`` (in two reads of the server's when
    ``split`` is given), half-close, and return all the server said."""
    sock = socket.create_connection((HOST, port), timeout=READ_TIMEOUT)
    try:
        sock.sendall(head)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(4096)
            assert chunk, "no 101 response"
            answer += chunk
        try:
            if split is not None:
                sock.sendall(stream[:split])
                wait_for_server_read(sock, port)
                stream = stream[split:]
            sock.sendall(stream)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server failed the connection and reset
        more, ending = read_until_eof(sock, READ_TIMEOUT)
        return answer + more, ending
    finally:
        sock.close()


def wait_for_server_read(sock: socket.socket, port: int) -> None:
    """Wait until the server's side of ``sock`` has read everything sent so
    far (loopback delivers during ``send``), so the rest comes in another read."""
    client_port = sock.getsockname()[1]
    wait_until(lambda: not receive_queue(port, client_port), 5, interval=0.001, message="the server to read")


def test_fuzz_frames_left_everything_clean(target, record_property):
    before = target.healthy.echoes
    wait_until(lambda: target.healthy.echoes > before, 10, message="the healthy client to go on")
    run_checked(target, before, FRAME_EXAMPLES, record_property, "frames")


# -- the model itself, on hand-made cases (so a wrong model fails loudly) -------------


@pytest.mark.parametrize(
    "stream, outputs, final",
    [
        (encode_frame(1, b"hi") + encode_frame(8, b"\x03\xe8"), [(1, b"hi")], {1000}),
        (encode_frame(9, b"p"), [(10, b"p")], {DROP}),
        (encode_frame(1, b"a", fin=False) + encode_frame(9, b"") + encode_frame(0, b"b"), [(10, b""), (1, b"ab")], {DROP}),
        (encode_frame(0, b"x"), [], {1002}),
        (encode_frame(1, b"\xff"), [], {1007}),
        (encode_frame(3, b""), [], {1002}),
        (encode_frame(9, b"", fin=False), [], {1002}),
        (encode_frame(2, b"x", mask=False), [], {1002}),
        (encode_frame(2, b"x", rsv=4), [], {1002}),
        (encode_frame(2, b"x" * 10, length_form=126), [], {1002}),
        (encode_frame(2, b"", length=MAX_PAYLOAD + 1)[:8], [], {1009}),
        (encode_frame(8, b""), [], {None}),
        (encode_frame(8, b"\x03"), [], {1002}),
        (encode_frame(8, b"\x03\xed"), [], {1002}),
        (encode_frame(8, b"\x03\xe8\xff"), [], {1007}),
        (encode_frame(8, b"\x03\xf6\xff"), [], {1002, 1007}),
        (encode_frame(8, b"\x03\xf6"), [], {1002, 1014}),
        (encode_frame(2, b"abc")[:5], [], {DROP}),
        (encode_frame(1, b"", fin=False) + encode_frame(1, b"x")[:6], [], {1002, DROP}),
        (encode_frame(1, b"", fin=False) + encode_frame(1, b"x"), [], {1002}),
    ],
)
def test_the_model_of_rfc6455(stream, outputs, final):
    expected = expected_outcome(stream, MAX_PAYLOAD)
    assert expected.outputs == outputs and expected.final == final, expected


# -- regressions: library bugs the fuzzing found ---------


def _upgraded(target):
    sock = socket.create_connection((HOST, target.port), timeout=READ_TIMEOUT)
    sock.sendall(upgrade_request("/fuzz", target.port))
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(4096)
        assert chunk
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    return sock, bytearray(rest)


def test_continuation_whose_mask_key_spans_two_reads_is_accepted(target):
    sock, buffer = _upgraded(target)
    with sock:
        first = encode_frame(0x2, b"a" * 10, fin=False)
        rest = encode_frame(0x0, b"b" * 3000)  # 3,010 bytes in all: within max_payload (4,096)
        sock.sendall(encode_frame(0x9, b"sync") + first + rest[:6])  # header, length, half the mask key
        assert read_server_frame(sock, buffer).opcode == 0xA
        wait_for_server_read(sock, target.port)
        sock.sendall(rest[6:])
        frame = read_server_frame(sock, buffer)
        got = (frame.opcode, frame.close_code, len(frame.payload))
        assert got == (0x2, None, 3010), f"(opcode, close code, length) = {got}"
    target.errors.assert_clean()


def test_unexpected_continuation_after_a_large_message_is_a_protocol_error(target):
    sock, buffer = _upgraded(target)
    with sock:
        # fragmented, so that wsproto (not the whole-frame hot path) parses it
        sock.sendall(encode_frame(0x2, b"x" * 2000, fin=False) + encode_frame(0x0, b"x" * 2000))
        assert len(read_server_frame(sock, buffer).payload) == 4000
        sock.sendall(encode_frame(0x0, b"y" * 200))
        frame = read_server_frame(sock, buffer)
        assert frame.opcode == 0x8 and frame.close_code == 1002, frame.close_code
    target.errors.assert_clean()
