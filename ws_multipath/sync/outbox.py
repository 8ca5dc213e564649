"""The frames waiting for one client's socket: ``Outbox``, a FIFO that counts
what its entries cost and refuses to grow past ``MAX_OUTBOX_BYTES``.

It has no lock of its own: its transport's ``_state_lock`` guards it (see
``transport.py``), except for the emptiness checks that the transport's
docstring explains.

While a fragmented message is being sent, the data frames posted meanwhile
are held apart (``append(entry, hold=True)``): they count like the others
but are not popped until ``release_held`` puts them last in line, so that
they never go between that message's fragments.
"""

from __future__ import annotations

import collections
from typing import Callable, Optional, Union

from ..protocol.closing import FrameKind
from ..protocol.writer import Payload

__all__ = ["Outbox", "Entry", "Pending", "MAX_OUTBOX_BYTES", "ENTRY_COST", "ENCODER_COST"]

#: Bytes that may wait for a client that reads slower than it is broadcast
#: to; past this the client is dropped (close code 1008). Each queued frame
#: counts its length (a compressed one its uncompressed length) plus what
#: its entry costs in memory, so that a flood of tiny or empty broadcasts
#: meets the same bound.
MAX_OUTBOX_BYTES = 16 * 1024 * 1024

#: What one entry holds besides its bytes: the tuple, the deque slot and the
#: bytes object (about 100 bytes, measured), or the encoder of a compressed
#: frame (a bound ``functools.partial``, about 200).
ENTRY_COST = 128
ENCODER_COST = 256

Pending = Union[bytes, bytearray, memoryview, Callable[[], bytes]]
#: An entry: the frame (or what encodes it under the write lock), its kind
#: (None: the rest of a frame already admitted and partly written), and the
#: bytes it counts against ``MAX_OUTBOX_BYTES``.
Entry = tuple[Pending, Optional[FrameKind], int]


class Outbox:
    """Entries in the order they go out, and the bytes they count."""

    __slots__ = ("entries", "_held", "counted", "frame_bytes")

    def __init__(self) -> None:
        #: Made by the first entry that waits (a deque costs about 600 bytes,
        #: and most connections never queue anything); dropped when emptied.
        #: Its writers test it for emptiness (``if outbox.entries``), which
        #: costs no call, unlike ``bool(outbox)``.
        self.entries: Optional[collections.deque[Entry]] = None
        #: Data frames posted during a fragmented message, in order (None: none).
        self._held: Optional[list[Entry]] = None
        #: What the entries count against ``MAX_OUTBOX_BYTES``.
        self.counted = 0
        #: The bytes of their frames (a compressed frame: its uncompressed length).
        self.frame_bytes = 0

    def __bool__(self) -> bool:
        """Whether an entry can be popped (held ones cannot)."""
        return bool(self.entries)

    def append(self, entry: Entry, hold: bool = False) -> bool:
        """Queue ``entry`` last (``hold``: among the held ones); True on
        overflow, when the outbox is emptied (the client must be dropped)."""
        if hold:
            if self._held is None:
                self._held = []
            self._held.append(entry)
        else:
            if self.entries is None:
                self.entries = collections.deque()
            self.entries.append(entry)
        self.counted += entry[2]
        self.frame_bytes += _frame_bytes(entry)
        if self.counted <= MAX_OUTBOX_BYTES:
            return False
        self.clear()
        return True

    def put_back(self, rest: Payload) -> None:
        """The unwritten rest of the frame just popped goes first again."""
        if self.entries is None:
            self.entries = collections.deque()
        self.entries.appendleft((rest, None, len(rest) + ENTRY_COST))
        self.counted += len(rest) + ENTRY_COST
        self.frame_bytes += len(rest)

    def pop(self) -> Optional[Entry]:
        if not self.entries:
            return None
        entry = self.entries.popleft()
        self.counted -= entry[2]
        self.frame_bytes -= _frame_bytes(entry)
        return entry

    def release_held(self) -> None:
        """The held entries go last in line, in the order they came."""
        held, self._held = self._held, None
        if held:
            if self.entries is None:
                self.entries = collections.deque()
            self.entries.extend(held)

    def drop_held(self) -> None:
        """Forget the held entries (they may never be written)."""
        held, self._held = self._held, None
        for entry in held or ():
            self.counted -= entry[2]
            self.frame_bytes -= _frame_bytes(entry)

    def clear(self) -> None:
        self.entries = None
        self._held = None
        self.counted = 0
        self.frame_bytes = 0


def _frame_bytes(entry: Entry) -> int:
    return entry[2] - (ENCODER_COST if callable(entry[0]) else ENTRY_COST)
