"""The C extension ``ws_multipath._speedups`` against the pure-Python path,
and the switch between them (``WS_MULTIPATH_NO_SPEEDUPS``).

The comparisons need the extension (skipped without it: an install without
a compiler); ``.ci/run`` checks separately that it was built."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest

from ws_multipath.protocol import frames as protocol
from ws_multipath.protocol.events import Message
from ws_multipath.protocol.frames import FrameReader
from ws_multipath.protocol.masking import _unmask_joined_python, _unmask_python
from ws_multipath.protocol.writer import _header

OFFSETS = range(16)  # every alignment of the payload modulo 8, at every mask phase


@pytest.fixture(scope="module")
def speedups():
    return pytest.importorskip("ws_multipath._speedups")


def naive(payload: bytes, mask: bytes) -> bytes:
    return bytes(byte ^ mask[index & 3] for index, byte in enumerate(payload))


def sizes() -> list[int]:
    rng = random.Random(11)
    return [*range(70), 4095, 4096, 4097, 65536, 200_000, *(rng.randrange(200_001) for _ in range(24))]


@pytest.mark.parametrize("size", range(70))
def test_small_sizes_match_a_byte_by_byte_xor(speedups, size):
    payload, mask = os.urandom(size), os.urandom(4)
    for offset in OFFSETS:
        data = os.urandom(offset) + payload + os.urandom(5)
        assert speedups.unmask(data, offset, offset + size, mask) == naive(payload, mask)


@pytest.mark.parametrize("size", sizes())
@pytest.mark.parametrize("kind", [bytes, bytearray])
def test_c_and_python_give_the_same_bytes(speedups, size, kind):
    """``unmask`` returning new bytes: the same result, and the C path leaves ``data`` alone."""
    rng = random.Random(size)
    mask = rng.randbytes(4)
    for offset in OFFSETS:
        original = rng.randbytes(offset) + rng.randbytes(size) + rng.randbytes(rng.randrange(9))
        data = kind(original)
        result = speedups.unmask(data, offset, offset + size, mask)
        assert type(result) is bytes
        assert data == original
        assert result == _unmask_python(kind(original), offset, offset + size, mask)


@pytest.mark.parametrize("size", sizes())
def test_c_in_place_matches_python_in_place(speedups, size):
    """``mask_into`` XORs a bytearray in place, as the Python path does with
    large ones; the bytes around ``start:end`` stay as they were."""
    rng = random.Random(-size)
    mask = rng.randbytes(4)
    for offset in OFFSETS:
        head, payload, tail = rng.randbytes(offset), rng.randbytes(size), rng.randbytes(rng.randrange(9))
        buffer = bytearray(head + payload + tail)
        assert speedups.mask_into(buffer, offset, offset + size, mask) is None
        expected = _unmask_python(bytearray(head + payload + tail), offset, offset + size, mask)
        assert buffer == head + expected + tail
        speedups.mask_into(buffer, offset, offset + size, mask)  # XOR twice: back to the start
        assert buffer == head + payload + tail


def random_cuts(rng: random.Random, data: bytes, pieces: int) -> list:
    cuts = sorted(rng.sample(range(1, len(data)), min(pieces, len(data) - 1))) if len(data) > 1 else []
    kinds = (bytes, bytearray, memoryview)
    return [rng.choice(kinds)(data[a:b]) for a, b in zip([0, *cuts], [*cuts, len(data)])]


@pytest.mark.parametrize("size", sizes())
def test_unmask_joined_matches_joining_first(speedups, size):
    """A frame's payload spread over reads: any start and end inside any chunk."""
    rng = random.Random(size + 1)
    mask = rng.randbytes(4)
    for pieces in (1, 2, 3, 17):
        head, payload, tail = rng.randbytes(rng.randrange(20)), rng.randbytes(size), rng.randbytes(rng.randrange(20))
        stream = head + payload + tail
        chunks = random_cuts(rng, stream, pieces) if stream else [b""]
        start, end = len(head), len(head) + size
        expected = _unmask_joined_python([bytes(chunk) for chunk in chunks], start, end, mask)
        assert expected == naive(payload, mask) if size < 5000 else True
        assert speedups.unmask_joined(chunks, start, end, mask) == expected
        assert speedups.unmask_joined(tuple(chunks), start, end, mask) == expected
        assert b"".join(chunks) == stream  # the chunks are left alone


def test_unmask_joined_bad_arguments_raise(speedups):
    with pytest.raises(ValueError):
        speedups.unmask_joined([b"abc", b"def"], 2, 7, b"abcd")  # past the end
    with pytest.raises(ValueError):
        speedups.unmask_joined([b"abc"], 2, 1, b"abcd")
    with pytest.raises(ValueError):
        speedups.unmask_joined([b"abc"], 0, 1, b"abc")
    with pytest.raises(TypeError):
        speedups.unmask_joined([b"abc", "def"], 0, 5, b"abcd")
    with pytest.raises(TypeError):
        speedups.unmask_joined(5, 0, 5, b"abcd")
    assert speedups.unmask_joined([], 0, 0, b"abcd") == b""


def masked_frame(opcode: int, payload: bytes, rng: random.Random) -> bytes:
    mask = rng.randbytes(4)
    size = len(payload)
    if size < 126:
        head = bytes((0x80 | opcode, 0x80 | size))
    elif size < 65536:
        head = bytes((0x80 | opcode, 0xFE)) + size.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0xFF)) + size.to_bytes(8, "big")
    return head + mask + naive(payload, mask) if size < 2000 else head + mask + _unmask_python(payload, 0, size, mask)


@pytest.mark.parametrize("use_c", [True, False])
@pytest.mark.parametrize("seed", range(12))
def test_frames_split_over_reads_give_the_same_messages_on_both_paths(monkeypatch, speedups, use_c, seed):
    """The hot path of FrameReader, C or Python: large binary frames waiting
    for the rest of their payload (unmasked from the reads, not joined), next
    to small text and binary frames, cut anywhere."""
    if not use_c:
        monkeypatch.setattr(protocol, "unmask", _unmask_python)
        monkeypatch.setattr(protocol, "unmask_joined", _unmask_joined_python)
    rng = random.Random(seed)
    messages: list = []
    for _ in range(8):
        kind = rng.randrange(3)
        if kind == 0:
            messages.append("é" * rng.randrange(40))
        else:
            messages.append(rng.randbytes(rng.choice([0, 5, 125, 126, 4097, 65535, 65536, 200_000])))
    stream = b"".join(masked_frame(1, m.encode(), rng) if isinstance(m, str) else masked_frame(2, m, rng) for m in messages)
    reader = FrameReader(max_payload=1 << 20)
    events = []
    for chunk in random_cuts(rng, stream, rng.choice([1, 5, 40, 300])):
        events += reader.receive_data(bytes(chunk))
    assert events == [Message(m) for m in messages]


def test_memoryviews_and_views_with_an_offset(speedups):
    """Any bytes-like object; a memoryview slice moves the base address off alignment."""
    data, mask = os.urandom(1000), os.urandom(4)
    for shift in range(8):
        view = memoryview(data)[shift:]
        assert speedups.unmask(view, 3, 900, mask) == naive(data[shift + 3 : shift + 900], mask)
        buffer = bytearray(data)
        speedups.mask_into(memoryview(buffer)[shift:], 3, 900, bytearray(mask))
        assert bytes(buffer[shift + 3 : shift + 900]) == naive(data[shift + 3 : shift + 900], mask)


def test_bad_arguments_raise(speedups):
    data = bytearray(10)
    for args in [(data, 0, 11, b"abcd"), (data, 5, 4, b"abcd"), (data, -1, 4, b"abcd")]:
        with pytest.raises(ValueError):
            speedups.unmask(*args)
        with pytest.raises(ValueError):
            speedups.mask_into(*args)
    for mask in (b"abc", b"abcde", bytearray(3)):
        with pytest.raises(ValueError):
            speedups.unmask(data, 0, 4, mask)
    with pytest.raises(BufferError):
        speedups.mask_into(bytes(10), 0, 4, b"abcd")  # read-only
    with pytest.raises(TypeError):
        speedups.unmask("text", 0, 4, b"abcd")
    with pytest.raises(TypeError):
        speedups.unmask(data, 0, 4)
    assert data == bytearray(10)


def test_the_frame_reader_uses_the_active_path():
    assert protocol.SPEEDUPS is (protocol.unmask is not _unmask_python)
    if protocol.SPEEDUPS:
        from ws_multipath import _speedups

        assert protocol.unmask is _speedups.unmask


def active_path(value: str | None) -> str:
    env = dict(os.environ)
    env.pop("WS_MULTIPATH_NO_SPEEDUPS", None)
    if value is not None:
        env["WS_MULTIPATH_NO_SPEEDUPS"] = value
    code = "import ws_multipath.protocol.masking as p; print(p.SPEEDUPS, p.unmask is p._unmask_python)"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.parametrize("value", ["1", "yes"])
def test_the_environment_variable_forces_the_python_path(value):
    assert active_path(value) == "False True"


@pytest.mark.parametrize("value", [None, "", "0"])
def test_without_the_environment_variable_the_extension_is_used(speedups, value):
    assert active_path(value) == "True False"


@pytest.mark.skipif(not hasattr(__import__("socket"), "MSG_MORE"), reason="MSG_MORE is Linux's")
def test_send_nowait_sends_with_and_without_more(speedups):
    import socket

    server = socket.create_server(("127.0.0.1", 0))
    with server, socket.create_connection(server.getsockname()) as client:
        peer, _ = server.accept()
        with peer:
            assert speedups.send_nowait(client, b"held ", True) == 5  # in the kernel, held for more
            assert speedups.send_nowait(client, b"and pushed") == 10  # pushes both
            peer.settimeout(5)
            received = b""
            while len(received) < 15:
                received += peer.recv(64)
            assert received == b"held and pushed"
            with pytest.raises(TypeError):
                speedups.send_nowait(client)
            client.close()
            with pytest.raises(OSError):
                speedups.send_nowait(client, b"x")


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_frame_matches_the_python_framing(speedups, size):
    text = ("é" * size)[:size]
    for data, opcode in ((b"b" * size, 0x82), (bytearray(b"a" * size), 0x82), ("t" * size, 0x81), (text, 0x81)):
        payload = data.encode() if isinstance(data, str) else bytes(data)
        header = _header(opcode, len(payload))
        assert speedups.frame(opcode, data) == header + payload


def test_frame_bad_arguments_raise(speedups):
    with pytest.raises(TypeError):
        speedups.frame(0x81)
    with pytest.raises(TypeError, match="memoryview"):
        speedups.frame(0x82, memoryview(b"x"))
    with pytest.raises(ValueError, match="first_byte"):
        speedups.frame(256, b"x")
    with pytest.raises(UnicodeEncodeError):
        speedups.frame(0x81, "\ud800")


def _client_frame(first: int, payload: bytes, length_form: int = 0) -> bytes:
    mask = os.urandom(4)
    size = len(payload)
    if length_form == 126 or (not length_form and 126 <= size < 65536):
        head = bytes((first, 0xFE)) + size.to_bytes(2, "big")
    elif length_form == 127 or (not length_form and size >= 65536):
        head = bytes((first, 0xFF)) + size.to_bytes(8, "big")
    else:
        head = bytes((first, 0x80 | size))
    return head + mask + bytes(b ^ mask[i & 3] for i, b in enumerate(payload))


def test_parse_messages_takes_whole_plain_frames_and_stops_at_anything_else(speedups):
    text, binary = _client_frame(0x81, "é€".encode() * 50), _client_frame(0x82, bytes(range(200)))
    for kind in (bytes, bytearray):
        assert speedups.parse_messages(kind(text + binary), 1 << 20, False) == (["é€" * 50, bytes(range(200))], len(text + binary))
    stops = [
        _client_frame(0x01, b"fragment"),  # FIN clear
        _client_frame(0x89, b"ping"),  # control
        _client_frame(0xC1, b"x"),  # RSV1 (compressed): Python inflates it
        _client_frame(0x82, b"x" * 10, length_form=126),  # not the shortest length form
        _client_frame(0x82, b"x" * 300, length_form=127),
        _client_frame(0x81, b"ok\xc3"),  # not UTF-8: the Python loop fails it with 1007
        _client_frame(0x82, b"y" * 201),  # over max_payload (200)
        bytes((0x82, 0x05)) + b"hello",  # unmasked
        text[:-1],  # incomplete
    ]
    for stop in stops:
        assert speedups.parse_messages(binary + stop + binary, 200, False) == ([bytes(range(200))], len(binary)), stop[:4]
    assert speedups.parse_messages(_client_frame(0x81, b"ok\xc3"), 1 << 20, True) == (["ok\ufffd"], 9)
    with pytest.raises(TypeError):
        speedups.parse_messages(memoryview(text), 10, False)


@pytest.mark.parametrize("size", [0, 1, 125, 126, 2046, 2047, 4096, 65535, 65536, 70000])
def test_send_message_sends_what_frame_makes(speedups, size):
    """send_message: frame() and send_nowait() in one call, the frame built
    on the stack (small) or the heap (large): the same bytes on the wire."""
    import socket
    import threading

    text = ("é" * size)[:size]
    messages = [b"b" * size, bytearray(b"a" * size), "t" * size, text]
    expected = b"".join(speedups.frame(0x81 if isinstance(data, str) else 0x82, data) for data in messages)
    received = bytearray()
    server = socket.create_server(("127.0.0.1", 0))
    with server, socket.create_connection(server.getsockname()) as client:
        peer, _ = server.accept()
        with peer:
            peer.settimeout(10)

            def read() -> None:
                while len(received) < len(expected):
                    chunk = peer.recv(1 << 16)
                    if not chunk:
                        return
                    received.extend(chunk)

            reader = threading.Thread(target=read)
            reader.start()
            for data in messages:
                result = speedups.send_message(client, data)
                if type(result) is tuple:  # the socket took part of it: the rest is given back
                    result, rest = result
                    client.sendall(rest)
                assert result == len(speedups.frame(0x81 if isinstance(data, str) else 0x82, data))
            reader.join(10)
    assert bytes(received) == expected


def test_send_message_gives_back_what_a_full_socket_did_not_take(speedups):
    import socket

    server = socket.create_server(("127.0.0.1", 0))
    with server, socket.create_connection(server.getsockname()) as client:
        peer, _ = server.accept()
        with peer:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            data = b"x" * 4000
            frame = speedups.frame(0x82, data)
            sent = 0
            for _ in range(100_000):  # bounded: the socket fills long before
                result = speedups.send_message(client, data)
                if type(result) is not int:
                    break
                assert result == len(frame)
                sent += result
            else:
                pytest.fail("the socket never filled")
            total, rest = result
            assert total == len(frame) and 0 < len(rest) <= len(frame) and frame.endswith(rest)
            taken = len(frame) - len(rest)
            client.setblocking(True)
            client.sendall(rest)
            peer.settimeout(5)
            received = bytearray()
            while len(received) < sent + len(frame):
                received += peer.recv(1 << 16)
            assert bytes(received) == frame * (sent // len(frame) + 1), f"{taken} bytes were taken of the last frame"


def test_send_message_bad_arguments_raise(speedups):
    import socket

    a, b = socket.socketpair()
    with a, b:
        with pytest.raises(TypeError):
            speedups.send_message(a)
        with pytest.raises(TypeError, match="memoryview"):
            speedups.send_message(a, memoryview(b"x"))
        with pytest.raises(UnicodeEncodeError):
            speedups.send_message(a, "\ud800")
        a.close()
        with pytest.raises(OSError):
            speedups.send_message(a, "x")


def test_recv_nowait_reads_what_is_there_without_waiting(speedups):
    import socket

    a, b = socket.socketpair()
    with a, b:
        assert speedups.recv_nowait(a, 100) is None  # nothing there: no wait
        b.sendall(b"hello")
        assert speedups.recv_nowait(a, 3) == b"hel"
        assert speedups.recv_nowait(a, 100) == b"lo"
        assert speedups.recv_nowait(a, 100) is None
        b.close()
        assert speedups.recv_nowait(a, 100) == b""  # the end of the stream
        with pytest.raises(ValueError):
            speedups.recv_nowait(a, -1)
        with pytest.raises(TypeError):
            speedups.recv_nowait(a)
        a.close()
        with pytest.raises(OSError):
            speedups.recv_nowait(a, 10)
