"""FrameReader and FrameWriter, fed bytes directly (no sockets)."""

from __future__ import annotations

import os
import struct

import pytest

from ws_multipath.errors import PayloadTooBig
from ws_multipath.protocol.events import CloseReceived, Failure, Message, Ping, Pong
from ws_multipath.protocol.frames import FrameReader, FrameWriter, check_close_code


def client_frame(opcode: int, payload: bytes, fin: bool = True, rsv: int = 0) -> bytes:
    """A masked client frame, as RFC 6455 section 5.2 lays it out."""
    first = (0x80 if fin else 0) | rsv | opcode
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    n = len(payload)
    if n < 126:
        header = bytes((first, 0x80 | n))
    elif n < 65536:
        header = struct.pack("!BBH", first, 0xFE, n)
    else:
        header = struct.pack("!BBQ", first, 0xFF, n)
    return header + mask + masked


def test_text_and_binary_messages():
    reader = FrameReader(max_payload=1000)
    events = reader.receive_data(client_frame(1, "héllo".encode()) + client_frame(2, b"\x00\xff"))
    assert events == [Message("héllo"), Message(b"\x00\xff")]


def test_fragments_are_joined_and_control_frames_pass_between_them():
    reader = FrameReader(max_payload=1000)
    data = client_frame(1, b"ab", fin=False) + client_frame(9, b"p") + client_frame(0, b"cd", fin=False) + client_frame(0, b"e")
    assert reader.receive_data(data) == [Ping(b"p"), Message("abcde")]


def test_bytes_fed_one_at_a_time_give_the_same_events():
    reader = FrameReader(max_payload=1000)
    data = client_frame(2, b"x" * 300) + client_frame(10, b"pong") + client_frame(8, struct.pack("!H", 1000) + b"bye")
    events = []
    for i in range(len(data)):
        events += reader.receive_data(data[i : i + 1])
    assert events == [Message(b"x" * 300), Pong(b"pong"), CloseReceived(1000, "bye")]


def test_empty_close_means_1005_and_nothing_is_parsed_after_close():
    reader = FrameReader(max_payload=1000)
    assert reader.receive_data(client_frame(8, b"") + client_frame(1, b"late")) == [CloseReceived(1005, "")]


def test_invalid_utf8_fails_at_the_first_bad_fragment():
    reader = FrameReader(max_payload=1000)
    events = reader.receive_data(client_frame(1, b"ok", fin=False) + client_frame(0, b"\xff", fin=False))
    assert len(events) == 1 and isinstance(events[0], Failure) and events[0].error.code == 1007


def test_events_before_a_violation_are_kept():
    reader = FrameReader(max_payload=1000)
    events = reader.receive_data(client_frame(1, b"fine") + client_frame(3, b""))
    assert events[0] == Message("fine") and isinstance(events[1], Failure) and events[1].error.code == 1002


def test_max_payload_counts_the_whole_message_and_fails_with_1009():
    reader = FrameReader(max_payload=10)
    assert reader.receive_data(client_frame(2, b"x" * 10)) == [Message(b"x" * 10)]
    events = reader.receive_data(client_frame(2, b"x" * 6, fin=False) + client_frame(0, b"x" * 5))
    assert isinstance(events[-1].error, PayloadTooBig) and events[-1].error.code == 1009


def test_writer_frames_are_unmasked_with_minimal_lengths():
    writer = FrameWriter()
    for size, header_size in ((0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)):
        for data in (b"x" * size, bytearray(b"x" * size), memoryview(b"x" * size)):
            frame = b"".join(writer.message(data))  # small ones come whole, large ones in two parts
            assert len(frame) == header_size + size and frame[0] == 0x82 and not frame[1] & 0x80
            assert frame[header_size:] == b"x" * size
    assert b"".join(writer.message("é")) == b"\x81\x02" + "é".encode()
    assert b"".join(writer.message("x" * 200)) == b"\x81\x7e\x00\xc8" + b"x" * 200
    with pytest.raises(UnicodeEncodeError):
        writer.message("\ud800")  # a lone surrogate: not UTF-8
    assert writer.ping(b"p") == b"\x89\x01p" and writer.pong(b"") == b"\x8a\x00"
    assert writer.close(1001, b"bye") == b"\x88\x05\x03\xe9bye" and writer.close(None) == b"\x88\x00"
    with pytest.raises(ValueError, match="125"):
        writer.ping(b"x" * 126)


@pytest.mark.parametrize("code", [1000, 1001, 1003, 1007, 1011, 1014, 3000, 4999])
def test_valid_close_codes(code):
    assert check_close_code(code, "r") == b"r"


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 5000])
def test_invalid_close_codes(code):
    with pytest.raises(ValueError, match=str(code)):
        check_close_code(code, "")


# 300 random streams through three parsers: 18-28 s on a loaded 2-core machine,
# and over the default 60 s once on Python 3.13 (test-pythons runs it on each)
@pytest.mark.timeout(300)
def test_the_whole_message_fast_path_gives_what_wsproto_gives(monkeypatch):
    """Random streams of frames, cut at random places, give the same events
    with the fast path (its C loop and its Python loop) and without it
    (wsproto alone); the fast path only handles whole frames."""
    import random

    from ws_multipath.protocol import frames as module

    parse_messages = module._parse_messages

    rng = random.Random(6455)
    for _ in range(300):
        frames = []
        for _ in range(rng.randint(1, 8)):
            kind = rng.choice(["text", "binary", "fragmented", "ping", "bad_utf8", "long", "long_text", "long_bad_text"])
            if kind == "text":
                frames.append(client_frame(1, "é€x".encode() * rng.randint(0, 60)))
            elif kind == "binary":
                frames.append(client_frame(2, rng.randbytes(rng.randint(0, 300))))
            elif kind == "long_text":
                frames.append(client_frame(1, "é€x".encode() * rng.choice([30, 22000, 30000])))
            elif kind == "long_bad_text":
                frames.append(client_frame(1, "é€x".encode() * 9000 + b"\xff" + b"x" * 40000))
            elif kind == "long":
                frames.append(client_frame(2, rng.randbytes(rng.choice([65535, 65536, 70000]))))
            elif kind == "fragmented":
                frames.append(client_frame(1, b"ab", fin=False) + client_frame(0, b"cd"))
            elif kind == "ping":
                frames.append(client_frame(9, b"p"))
            else:
                frames.append(client_frame(1, b"ok\xc3"))
        stream = b"".join(frames)
        cuts = sorted(rng.sample(range(1, len(stream)), min(rng.choice([3, 12]), len(stream) - 1)))
        chunks = [stream[a:b] for a, b in zip([0] + cuts, cuts + [len(stream)])]
        results = []
        for fast, c_loop in ((True, True), (True, False), (False, False)):
            monkeypatch.setattr(module, "_parse_messages", parse_messages if c_loop else None)
            reader = FrameReader(max_payload=1 << 20)
            reader._fast = fast
            events = []
            for chunk in chunks:
                events += reader.receive_data(chunk)
                if events and isinstance(events[-1], Failure):
                    break
            results.append([(type(e).__name__, getattr(e, "data", None) or getattr(e, "payload", None) or getattr(getattr(e, "error", None), "code", None)) for e in events])
        assert results[0] == results[1] == results[2]


@pytest.mark.parametrize("size", [0, 1, 5, 4096, 4097, 70_001])
@pytest.mark.parametrize("kind", [bytes, bytearray])
def test_unmask_matches_wsproto_for_bytes_and_in_place_bytearrays(size, kind):
    from wsproto.frame_protocol import XorMaskerSimple

    from ws_multipath.protocol.frames import unmask

    payload, mask = os.urandom(size), os.urandom(4)
    data = kind(b"head" + payload + b"tail")
    assert unmask(data, 4, 4 + size, mask) == bytes(XorMaskerSimple(mask).process(bytearray(payload)))


def test_invalid_utf8_fails_at_once_when_a_text_frame_arrives_in_pieces():
    """Found by the fuzz tests: the frame's head alone, then the start of
    its payload (an invalid lead byte) and nothing more."""
    reader = FrameReader(max_payload=1024)
    assert reader.receive_data(b"\x81\x82") == []
    events = reader.receive_data(b"\x00\x00\x00\x00\x80")
    assert len(events) == 1 and isinstance(events[0], Failure) and events[0].error.code == 1007


def test_invalid_utf8_fails_before_the_rest_of_a_large_text_frame_arrives():
    """RFC 6455 section 8.1: fail as soon as the text is known to be invalid."""
    frame = client_frame(1, "é".encode() * 1000 + b"\xc3\x28" + b"x" * 100_000)
    reader = FrameReader(max_payload=1 << 20)
    assert reader.receive_data(frame[:1000]) == []  # valid so far
    events = reader.receive_data(frame[1000:3000])  # the bad byte is in here
    assert len(events) == 1 and isinstance(events[0], Failure) and events[0].error.code == 1007
    assert reader.receive_data(frame[3000:]) == []  # nothing after a failure


def test_a_large_text_frame_in_many_reads_is_one_message():
    text = "é€x" * 40_000
    frame = client_frame(1, text.encode())
    reader = FrameReader(max_payload=1 << 20)
    events = []
    for start in range(0, len(frame), 777):  # cuts inside characters and the mask's phase
        events += reader.receive_data(frame[start : start + 777])
    assert [type(e) for e in events] == [Message] and events[0].data == text


@pytest.mark.parametrize("max_payload", [2**63 - 1, 2**63, 2**64, 10**30])
def test_a_huge_max_payload_means_no_limit(max_payload):
    reader = FrameReader(max_payload=max_payload)
    assert reader.receive_data(client_frame(1, b"hello") + client_frame(2, b"x" * 70_000)) == [Message("hello"), Message(b"x" * 70_000)]
