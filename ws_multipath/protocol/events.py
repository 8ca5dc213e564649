"""What the protocol layer reports after parsing bytes from a client.

Frozen dataclasses, in the style of wsproto and h11: ``FrameReader`` returns
them, ``WebSocket`` turns them into listener calls and queue entries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    from ..errors import ProtocolError

__all__ = ["Message", "Ping", "Pong", "CloseReceived", "Failure", "Event"]


@dataclass(frozen=True)
class Message:
    """A complete data message: ``str`` for text, ``bytes`` for binary."""

    data: Union[str, bytes]


@dataclass(frozen=True)
class Ping:
    payload: bytes


@dataclass(frozen=True)
class Pong:
    payload: bytes


@dataclass(frozen=True)
class CloseReceived:
    """The peer's close frame; ``code`` is 1005 when it carried no code."""

    code: int
    reason: str


@dataclass(frozen=True)
class Failure:
    """The peer broke the protocol; the connection must be failed with ``error.code``.

    Always the last event of a batch: the events before it are valid."""

    error: "ProtocolError"


Event = Union[Message, Ping, Pong, CloseReceived, Failure]
