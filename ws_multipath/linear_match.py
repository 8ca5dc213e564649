"""Sequence patterns matched in time linear in the text, whatever the pattern.

Route patterns (``/files/<name>.<ext>``) and the broker's channel globs
(``ws_multipath:/rooms/[^<]*``) are matched against text a client chooses: a
backtracking regular expression there costs up to the power of the number
of variables in the text's length (``/<a>.<b>.<c>`` against 2,000 dots took
seconds with the GIL held). These patterns are all of one simple shape, a
sequence of pieces with no alternation:

- ``Literal(b"...")``: exactly these bytes;
- ``One(byte_class)``: exactly one byte of the class;
- ``Many(byte_class)``: one or more bytes of the class;
- ``AnyCount(byte_class)``: zero or more bytes of the class.

Matching is bit-parallel (the Shift-And family, Baeza-Yates and Gonnet,
1992): the positions a prefix of the pattern can reach in the text are the
bits of one Python ``int``, and each piece turns them into the next set with
a few whole-integer operations (shift, and, add), each linear in the text's
length and done in C. A ``Many`` piece extends every reached position along
its run of class bytes by one addition: adding the start bits to the run's
mask carries through the run.

The text is matched as its UTF-8 bytes (as Redis matches its globs). Every
class holds all bytes >= 0x80 or none, and a literal is whole characters,
so a match found on the bytes is a match on the characters, with groups cut
at character boundaries, as long as no two classes that hold those bytes
stand side by side, or with only ``AnyCount`` pieces between them (a route
pattern refuses two variables next to each other). ``One`` of such a class
is one byte, as Redis's ``?``.

Groups: when a text matches, a group's text is what the matching of a
backtracking engine with greedy quantifiers gives (Python's ``re``): the
valid ways to cut the text into pieces are closed under taking the larger
of two cut positions, so there is one with every cut as late as possible;
a greedy engine finds that one, and so does taking each cut as late as
possible from the end (``_cuts``).

Everything here is immutable once built and holds no lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Sequence, Union

__all__ = ["ByteClass", "Literal", "One", "Many", "AnyCount", "SequencePattern", "Subject"]


class ByteClass:
    """A set of byte values, kept as a ``bytes.translate`` table that maps
    each member to ``b"1"`` and every other byte to ``b"0"``."""

    __slots__ = ("table",)

    def __init__(self, members: Iterable[int]) -> None:
        chosen = set(members)
        self.table = bytes(0x31 if value in chosen else 0x30 for value in range(256))

    @classmethod
    def of(cls, text: Union[str, bytes]) -> "ByteClass":
        """The class of the bytes of ``text`` (UTF-8 for a ``str``)."""
        return cls(text.encode() if isinstance(text, str) else text)

    @classmethod
    def excluding(cls, text: Union[str, bytes]) -> "ByteClass":
        """Every byte but those of ``text``."""
        excluded = set(text.encode() if isinstance(text, str) else text)
        return cls(value for value in range(256) if value not in excluded)


@dataclass(frozen=True)
class Literal:
    data: bytes


@dataclass(frozen=True)
class One:
    byte_class: ByteClass


@dataclass(frozen=True)
class Many:
    byte_class: ByteClass


@dataclass(frozen=True)
class AnyCount:
    byte_class: ByteClass


Piece = Union[Literal, One, Many, AnyCount]


class Subject:
    """A text being matched, with the masks of its bytes made once and shared
    by every pattern tried on it (a routing table tries several)."""

    __slots__ = ("data", "length", "_masks")

    def __init__(self, text: Union[str, bytes]) -> None:
        if isinstance(text, str):
            text = text.encode("ascii") if text.isascii() else text.encode("utf-8", "surrogatepass")
        self.data = text
        self.length = len(text)
        self._masks: dict[bytes, int] = {}

    def mask(self, byte_class: ByteClass) -> int:
        """Bit ``i`` is set when byte ``i`` of the text is in ``byte_class``."""
        found = self._masks.get(byte_class.table)
        if found is None:
            bits = self.data.translate(byte_class.table)[::-1]
            found = self._masks[byte_class.table] = int(bits, 2) if bits else 0
        return found

    def literal_mask(self, data: bytes) -> int:
        """Bit ``i`` is set when the text holds ``data`` at position ``i``."""
        found = -1
        for offset, value in enumerate(data):
            found &= self.mask(_single_byte(value)) >> offset
        return found

    def text(self, start: int, end: int) -> str:
        return self.data[start:end].decode("utf-8", "surrogatepass")


def _subject(text: Union[Subject, str, bytes]) -> Subject:
    return text if isinstance(text, Subject) else Subject(text)


_SINGLE_BYTES: dict[int, ByteClass] = {}


def _single_byte(value: int) -> ByteClass:
    found = _SINGLE_BYTES.get(value)
    if found is None:
        found = _SINGLE_BYTES[value] = ByteClass((value,))
    return found


def _run_reach(starts: int, members: int) -> int:
    """The bits of ``members`` reached by walking up from a bit of ``starts``
    (a subset of ``members``) without leaving its run of consecutive bits.

    ``members + starts`` carries from each start to just past its run,
    clearing the bits on the way; the xor with ``members`` shows them."""
    return members & (((members + starts) ^ members) | starts)


class SequencePattern:
    """A sequence of pieces, with named groups each spanning a run of them.

    ``groups`` holds ``(first_piece, last_piece)`` index pairs, inclusive, in
    order and not overlapping.
    """

    __slots__ = ("pieces", "groups")

    def __init__(self, pieces: Sequence[Piece], groups: Sequence[tuple[int, int]] = ()) -> None:
        self.pieces = tuple(pieces)
        self.groups = tuple(groups)

    def matches(self, subject: Union[Subject, str, bytes]) -> bool:
        """True when the whole text matches."""
        return self._reached(_subject(subject)) is not None

    def match(self, subject: Union[Subject, str, bytes]) -> Optional[list[str]]:
        """Each group's text when the whole text matches, else None."""
        subject = _subject(subject)
        reached = self._reached(subject)
        if reached is None:
            return None
        cuts = self._cuts(subject, reached)
        return [subject.text(cuts[first], cuts[last + 1]) for first, last in self.groups]

    def _reached(self, subject: Subject) -> Optional[list[int]]:
        """For each piece, the positions (bits) where it may start; None when
        the text does not match."""
        reached = []
        positions = 1  # the empty prefix reaches position 0
        for piece in self.pieces:
            reached.append(positions)
            if isinstance(piece, Literal):
                positions = (positions & subject.literal_mask(piece.data)) << len(piece.data)
            elif isinstance(piece, One):
                positions = (positions & subject.mask(piece.byte_class)) << 1
            else:
                members = subject.mask(piece.byte_class)
                walked = _run_reach(positions & members, members) << 1
                positions = walked if isinstance(piece, Many) else positions | walked
            if not positions:
                return None
        if not (positions >> subject.length) & 1:
            return None
        return reached

    def _cuts(self, subject: Subject, reached: list[int]) -> list[int]:
        """Where each piece starts (and the text's length last), every cut as
        late as possible: see the module's docstring."""
        cuts = [subject.length]
        end = subject.length
        for piece, starts in zip(reversed(self.pieces), reversed(reached)):
            if isinstance(piece, Literal):
                end -= len(piece.data)
            elif isinstance(piece, One):
                end -= 1
            else:
                # the earliest start from which this piece's class runs up to `end`
                outside = ~subject.mask(piece.byte_class) & ((1 << end) - 1)
                earliest = outside.bit_length()
                latest = end - 1 if isinstance(piece, Many) else end
                allowed = starts & ((1 << (latest + 1)) - 1) & ~((1 << earliest) - 1)
                end = allowed.bit_length() - 1
            cuts.append(end)
        cuts.reverse()
        return cuts
