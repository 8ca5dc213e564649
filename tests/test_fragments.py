"""Fragmented messages: empty and tiny fragments cost bounded memory and work.

FrameReader is fed bytes directly (no sockets), except in the last test,
which plays a hostile raw client against a real server. Memory is measured
with tracemalloc while the reader is fed (the input is built beforehand).
"""

from __future__ import annotations

import struct
import tracemalloc
import zlib

import pytest

from ws_multipath.errors import PayloadTooBig
from ws_multipath.protocol.deflate import DeflateSettings, negotiate_deflate
from ws_multipath.protocol.events import Failure, Message, Ping
from ws_multipath.protocol.frames import FRAME_OVERHEAD, FrameReader

from .faultkit import SCALE, add_echo, encode_frame, raw_upgrade, read_server_frame

KiB = 1024
_KEY = b"\x5a\xa5\x3c\xc3"


def frame(opcode: int, payload: bytes = b"", fin: bool = True, rsv1: bool = False) -> bytes:
    """A masked client frame (one fixed mask key: these tests build many)."""
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    if n < 126:
        header = bytes((first, 0x80 | n))
    elif n < 65536:
        header = struct.pack("!BBH", first, 0xFE, n)
    else:
        header = struct.pack("!BBQ", first, 0xFF, n)
    key = (_KEY * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big") if n else b""
    return header + _KEY + masked


def fragments(opcode: int, payload: bytes, size: int) -> list[bytes]:
    """``payload`` as one message in frames of ``size`` bytes."""
    pieces = [payload[i : i + size] for i in range(0, len(payload), size)] or [b""]
    return [frame(opcode if i == 0 else 0, piece, fin=i == len(pieces) - 1) for i, piece in enumerate(pieces)]


def failure_code(events: list) -> int:
    assert events and isinstance(events[-1], Failure), events
    return events[-1].error.code


def test_a_million_empty_continuations_fail_with_1009_within_the_frame_budget():
    """(a) The old reader kept every empty fragment (a list entry each) and
    never failed: 4 M entries in 20 s with max_payload 1 KiB."""
    max_payload = 1 * KiB
    budget = max_payload // FRAME_OVERHEAD  # frames a message may have
    reader = FrameReader(max_payload=max_payload)
    empty = frame(0, b"", fin=False)
    tracemalloc.start()
    try:
        events = reader.receive_data(frame(1, b"", fin=False))
        fed = 1
        while not events and fed < 1_000_000:
            events = reader.receive_data(empty)
            fed += 1
            assert tracemalloc.get_traced_memory()[1] < 64 * KiB, f"{tracemalloc.get_traced_memory()[1]} bytes after {fed} frames"
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert failure_code(events) == 1009 and isinstance(events[-1].error, PayloadTooBig)
    assert fed == budget + 1, f"failed at frame {fed}"
    assert peak < 64 * KiB


def test_empty_fragments_are_not_stored():
    """(d) 20,000 empty fragments within the limit: the message in progress
    stays the size of its payload (the old reader held a list of 20,000)."""
    reader = FrameReader(max_payload=16 * 1024 * KiB)
    start, empty = frame(2, b"a", fin=False), frame(0, b"", fin=False) * 100
    tracemalloc.start()
    try:
        assert reader.receive_data(start) == []
        for _ in range(200):
            assert reader.receive_data(empty) == []
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * KiB, peak
    assert reader.receive_data(frame(0, b"b")) == [Message(b"ab")]


# 131,072 frames read under tracemalloc: 30 s with the C speedups and 55 s on
# the pure-Python path on a loaded 2-core machine (the default is 60 s)
@pytest.mark.timeout(300)
def test_a_message_in_2_byte_fragments_is_delivered_and_costs_about_its_payload():
    """(b) 256 KiB (1 MiB with WS_MULTIPATH_FAULT_SCALE=4) in 2-byte
    fragments. The old reader peaked at about 63 times the payload."""
    size = int(256 * KiB * max(1.0, SCALE)) // 2 * 2
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    frames = fragments(2, payload, 2)
    wire = b"".join(frames)
    chunks = [wire[i : i + 64 * KiB] for i in range(0, len(wire), 64 * KiB)]
    del frames, wire
    reader = FrameReader(max_payload=(size // 2) * FRAME_OVERHEAD)  # just enough frames
    events: list = []
    tracemalloc.start()
    try:
        for chunk in chunks:
            events += reader.receive_data(chunk)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(events) == 1 and events[0] == Message(payload)
    assert peak < 3 * size, f"peak {peak / size:.2f} x the payload"


def test_each_frame_of_a_fragmented_message_counts_64_bytes():
    """(d) At most max_payload // FRAME_OVERHEAD frames: one more fails with
    1009 (the old reader let any number through); the payload is bounded by
    max_payload as before, whatever the frame count."""
    max_payload = 10 * FRAME_OVERHEAD
    assert FrameReader(max_payload=max_payload).receive_data(b"".join(fragments(2, b"x" * 100, 10))) == [Message(b"x" * 100)]
    assert failure_code(FrameReader(max_payload=max_payload).receive_data(b"".join(fragments(2, b"x" * 110, 10)))) == 1009
    at_limit = b"x" * max_payload
    assert FrameReader(max_payload=max_payload).receive_data(b"".join(fragments(2, at_limit, max_payload // 2))) == [Message(at_limit)]
    assert failure_code(FrameReader(max_payload=max_payload).receive_data(b"".join(fragments(2, at_limit + b"x", max_payload // 2)))) == 1009


def test_text_in_tiny_fragments_with_characters_split_across_them():
    """(c) Multi-byte characters cut between 1- and 2-byte fragments, with
    a ping between two halves of one."""
    text = "aé€𝄞ü" * 50
    encoded = text.encode("utf-8")
    for size in (1, 2, 3):
        frames = fragments(1, encoded, size)
        data = b"".join(frames[:3]) + frame(9, b"p") + b"".join(frames[3:])
        reader = FrameReader(max_payload=len(encoded) * FRAME_OVERHEAD)
        assert reader.receive_data(data) == [Ping(b"p"), Message(text)]


def test_invalid_utf8_in_a_middle_fragment_fails_at_once_with_1007():
    """(c) The message has not ended (its last frame never comes): the
    invalid byte after a valid lead byte fails it as soon as it arrives."""
    reader = FrameReader(max_payload=64 * KiB)
    assert reader.receive_data(frame(1, b"ok", fin=False)) == []
    assert reader.receive_data(frame(0, b"\xc3", fin=False)) == []  # the start of a character
    assert failure_code(reader.receive_data(frame(0, b"(", fin=False))) == 1007


def test_skip_utf8_validation_repairs_fragmented_text_piece_by_piece():
    reader = FrameReader(max_payload=64 * KiB, skip_utf8_validation=True)
    data = b"".join(fragments(1, "é".encode() + b"\xff" + "€".encode(), 1))
    assert reader.receive_data(data) == [Message("é\ufffd€")]


def _compressed(text: bytes) -> bytes:
    compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
    data = compressor.compress(text) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert data.endswith(b"\x00\x00\xff\xff")
    return data[:-4]


def test_the_frames_of_compressed_messages_count_too():
    """(d) The inflated size was capped, the frame count was not: empty
    continuations of a compressed message went on forever."""
    max_payload = 4 * KiB
    extension = negotiate_deflate(["permessage-deflate"], DeflateSettings(), max_payload)[1]
    reader = FrameReader(max_payload=max_payload, deflate=extension)
    start = frame(1, _compressed(b"hello" * 10), fin=False, rsv1=True)
    assert reader.receive_data(start + frame(0, b"", fin=False) + frame(0, b"")) == [Message("hello" * 10)]
    events = reader.receive_data(start)
    empty, fed = frame(0, b"", fin=False), 1
    while not events and fed <= 10_000:
        events = reader.receive_data(empty)
        fed += 1
    assert failure_code(events) == 1009
    assert fed == max_payload // FRAME_OVERHEAD + 1, fed  # 64 frames fit in 4 KiB


def test_a_client_sending_empty_fragments_is_closed_with_1009(make_server):
    """End to end: tiny fragments are echoed intact, and an endless run of
    empty continuations ends in a 1009 close frame after a few frames."""
    server = make_server()
    add_echo(server, "/frag", max_payload=1 * KiB, ping_interval=None, close_timeout=2)
    sock, rest = raw_upgrade(server.port, "/frag", timeout=5)
    buffer = bytearray(rest)
    with sock:
        text = "é€𝄞"
        pieces = text.encode("utf-8")
        sock.sendall(b"".join(encode_frame(1 if i == 0 else 0, pieces[i : i + 1], fin=i == len(pieces) - 1) for i in range(len(pieces))))
        echoed = read_server_frame(sock, buffer)
        assert (echoed.opcode, echoed.payload.decode("utf-8")) == (1, text)
        sock.sendall(encode_frame(1, b"x", fin=False) + encode_frame(0, b"", fin=False) * 200)
        reply = read_server_frame(sock, buffer)
        assert (reply.opcode, reply.close_code) == (8, 1009), reply


@pytest.mark.parametrize("opcode", [1, 2])
def test_one_frame_trickled_a_byte_a_read_costs_about_its_payload(opcode):
    """A client can make every read a single byte. Kept as one object per
    read, a 64 KiB frame cost 9 to 18 times its size."""
    size = 64 * KiB
    payload = b"ab\xc3\xa9" * (size // 4)  # valid UTF-8 too
    wire = frame(opcode, payload)
    reader = FrameReader(max_payload=1 << 20)
    events: list = reader.receive_data(wire[:64])  # the head, the mask and a little payload
    tracemalloc.start()
    try:
        for index in range(64, len(wire)):
            events += reader.receive_data(wire[index : index + 1])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert events == [Message(payload.decode() if opcode == 1 else payload)]
    # the bytes (twice while the bytearray grows by a copy) and, for text, the decoded str
    assert peak < 3.5 * size, f"peak {peak / size:.2f} x the payload (it was 17.6 x for binary, 9.3 x for text)"
