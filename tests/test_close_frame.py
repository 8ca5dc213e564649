"""close_frame.whole_close: a client's close frame read without wsproto,
with wsproto's answer for every frame (it decides whatever is unusual)."""

from __future__ import annotations

import struct

import pytest

from ws_multipath.protocol.close_frame import whole_close
from ws_multipath.protocol.events import CloseReceived, Failure
from ws_multipath.protocol.frames import FrameReader

from .test_protocol import client_frame


def answers(data: bytes, fast: bool) -> list:
    reader = FrameReader(max_payload=1 << 20)
    reader._fast = fast  # False: wsproto alone
    return [(type(e).__name__, getattr(e, "code", None), getattr(e, "reason", None), getattr(getattr(e, "error", None), "code", None))
            for e in reader.receive_data(data)]


CODES = [0, 999, 1000, 1001, 1002, 1003, 1004, 1005, 1006, 1007, 1011, 1012, 1014, 1015, 1016, 2999, 3000, 3999, 4000, 4999, 5000, 65535]
REASONS = [b"", b"bye", "au revoir, \u00e9t\u00e9 \u20ac".encode(), b"\xff", b"\xc3", b"x" * 123]


@pytest.mark.parametrize("code", CODES)
@pytest.mark.parametrize("reason", REASONS)
def test_every_close_frame_gets_wsprotos_answer(code: int, reason: bytes) -> None:
    frame = client_frame(8, struct.pack("!H", code) + reason)
    assert answers(frame, fast=True) == answers(frame, fast=False)


@pytest.mark.parametrize(
    "frame",
    [
        client_frame(8, b""),
        client_frame(8, b"\x03"),  # one byte: a protocol error
        client_frame(8, b"\x03\xe8", fin=False),
        client_frame(8, b"\x03\xe8", rsv=0x40),
        client_frame(8, b"\x03\xe8") + client_frame(1, b"after"),
        client_frame(8, b"\x03\xe8" + b"x" * 124),  # 126 bytes: too long for a control frame
        bytes((0x88, 0x02, 0x03, 0xE8)),  # unmasked
    ],
)
def test_unusual_close_frames_get_wsprotos_answer(frame: bytes) -> None:
    assert answers(frame, fast=True) == answers(frame, fast=False)


def test_the_common_close_frames_take_the_short_way() -> None:
    assert whole_close(client_frame(8, b"\x03\xe8")) == (1000, "")
    assert whole_close(client_frame(8, b"")) == (1005, "")
    assert whole_close(client_frame(8, b"\x0f\xa0" + "\u00e9".encode())) == (4000, "\u00e9")
    assert whole_close(client_frame(8, b"\x03\xe8") + b"\x81") is None  # more after it: wsproto reads on
    assert whole_close(client_frame(8, b"\x03\xed")) is None  # 1005 is not sent by a peer: wsproto says so


def test_a_close_frame_in_the_middle_of_a_text_frame_is_payload() -> None:
    reader = FrameReader(max_payload=1 << 20)
    frame = client_frame(2, client_frame(8, b"\x03\xe8") * 40)
    assert reader.receive_data(frame[:100]) == []
    events = reader.receive_data(frame[100:])
    assert len(events) == 1 and not isinstance(events[0], (CloseReceived, Failure))
