"""What the reader adds to wsproto's frame parser: the size limits of a
message (``PayloadLimit``: ``max_payload`` and ``max_fragments``, checked
frame by frame through wsproto's extension hooks) and the decoder of
``skip_utf8_validation`` (``LenientMessageDecoder``). ``frames.py`` plugs
both into the parser it falls back to for what its hot path does not take.
"""

from __future__ import annotations

from codecs import getincrementaldecoder
from typing import Optional, cast

from wsproto.extensions import Extension
from wsproto.frame_protocol import CloseReason, Frame, MessageDecoder, Opcode, ParseFailed, RsvBits

__all__ = ["FRAME_OVERHEAD", "PayloadLimit", "LenientMessageDecoder"]

_NO_RSV = RsvBits(False, False, False)


#: What each frame of a fragmented data message counts against ``max_payload``,
#: apart from its payload: a fragmented message may have at most
#: ``max_payload // FRAME_OVERHEAD`` frames (262,144 at the 16 MiB default, 16
#: at 1 KiB). A frame costs wsproto microseconds however small it is, so
#: without a cap a client could make the reader parse empty frames forever.
#: With 64, a message in fragments of 64 bytes or more can reach
#: ``max_payload``; Autobahn's 9.3.x/9.4.x cases send 4 MiB in 64-byte ones
#: (65,536 frames, a quarter of the cap at 16 MiB).
FRAME_OVERHEAD = 64


class PayloadLimit(Extension):
    """Refuses a message as soon as its frame headers add up to more than
    ``max_payload``: its payload (uncompressed messages; ``BoundedDeflate``
    caps the inflated size of compressed ones), and, separately, its frames
    at ``FRAME_OVERHEAD`` (64) bytes each (compressed messages too), so a
    fragmented message has at most ``max_payload // 64`` frames however
    small. Either fails with 1009 (``PayloadTooBig``). Not negotiated: it
    only hooks wsproto's per-frame checks.

    wsproto may call ``frame_inbound_header`` twice for one frame (when the
    mask key arrives in a later read it parses the header again), so the
    header hook only checks; sizes and counts are added when the frame is
    complete.
    """

    name = "ws_multipath-payload-limit"

    def __init__(self, max_payload: int, max_fragments: Optional[int] = None) -> None:
        self._max_payload = max_payload
        self._max_fragments = max_payload // FRAME_OVERHEAD if max_fragments is None else max_fragments
        self._earlier_frames = 0  # bytes in the current message's completed frames
        self._earlier_count = 0  # and how many there are
        self._compressed = False

    def enabled(self) -> bool:
        return True

    def offer(self) -> bool:
        return False

    def frame_inbound_header(self, proto, opcode, rsv, payload_length):  # type: ignore[no-untyped-def]
        if opcode.iscontrol():
            return _NO_RSV
        if opcode is not Opcode.CONTINUATION:
            self._earlier_frames = self._earlier_count = 0
            self._compressed = rsv.rsv1
        elif self._earlier_count + 1 > self._max_fragments:
            return CloseReason.MESSAGE_TOO_BIG  # too many frames
        if not self._compressed and self._earlier_frames + payload_length > self._max_payload:
            return CloseReason.MESSAGE_TOO_BIG
        return _NO_RSV

    def frame_inbound_complete(self, proto, fin):  # type: ignore[no-untyped-def]
        header = proto.header
        if header.opcode.iscontrol():
            return None
        if fin:
            self._earlier_frames = self._earlier_count = 0
        else:
            self._earlier_frames += header.payload_len
            self._earlier_count += 1
        return None


class LenientMessageDecoder(MessageDecoder):
    """wsproto's message decoder with invalid UTF-8 replaced, not refused
    (the ``skip_utf8_validation`` option)."""

    def process_frame(self, frame: Frame) -> Frame:
        if self.opcode is None:
            if frame.opcode is Opcode.CONTINUATION:
                raise ParseFailed("unexpected CONTINUATION")
            self.opcode = frame.opcode
            if frame.opcode is Opcode.TEXT:
                self.decoder = getincrementaldecoder("utf-8")(errors="replace")
        elif frame.opcode is not Opcode.CONTINUATION:
            raise ParseFailed(f"expected CONTINUATION, got {frame.opcode!r}")
        finished = frame.frame_finished and frame.message_finished
        payload = cast(bytes, frame.payload)
        data = payload if self.decoder is None else self.decoder.decode(payload, finished)
        result = Frame(self.opcode, data, frame.frame_finished, finished)
        if finished:
            self.opcode = self.decoder = None
        return result
