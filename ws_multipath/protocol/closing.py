"""The closing of one connection as a state machine, without I/O.

``Closing`` holds everything about how a connection ends: its ready state,
the close code and reason, who closed first, which frames may still be
written, whether arriving messages are delivered, and when the server ends
the TCP connection. The connection feeds it what happens (``start``,
``received``, ``failed``, ``fatal``, ``terminated``, ``ended``) and does the
I/O its answers ask for.

The rules (RFC 6455 sections 5.5.1 and 7):

- Exactly one close frame is written and nothing follows it. The transport
  asks ``may_write`` for every frame, in the order frames reach the wire,
  under its write lock: that lock alone guards ``close_sent``.
- Once the server has started closing, data messages that arrive are
  discarded (section 5.5.1 allows it); what was queued before stays
  receivable. A client's close frame ends its messages anyway.
- After the peer's close frame (or a protocol violation), the server echoes
  or sends its close frame, then ends the TCP connection first (section
  7.1.1) and reads nothing more (``reads_frames`` is False): it lingers.
- The code decided (``code``, what the server's close frame carries) is the
  first one decided: the server's own when it closed first, the peer's when
  the peer did, the violation's or the fatal error's when the connection
  failed, 1006 when it was lost without any.
- The connection's close code as RFC 6455 section 7.1.5 defines it
  (``peer_code``, what the ``'close'`` event reports) is the code of the
  first close frame received, 1005 when it had none, and 1006 when the
  connection closed without receiving one (the server failed it, dropped
  it or lost it).

Every method but ``may_write`` is called under the connection's ``_lock``.
"""

from __future__ import annotations

import enum
from typing import Optional

__all__ = ["Closing", "ReadyState", "FrameKind", "Initiator"]


class ReadyState(enum.IntEnum):
    """``ws.ready_state`` values, numbered as in the browser API and ``ws``."""

    CONNECTING = 0
    OPEN = 1
    CLOSING = 2
    CLOSED = 3


class FrameKind(enum.Enum):
    """What a frame handed to the transport is, as far as closing cares."""

    DATA = "data"
    PING = "ping"
    PONG = "pong"
    CLOSE = "close"


_CLOSE = FrameKind.CLOSE  # a global is read faster than an Enum's member (may_write: every frame)


class Initiator(enum.Enum):
    """Who decided first that the connection ends."""

    SERVER = "server"  # close(), a handler or the server closing
    CLIENT = "client"  # the client's close frame
    FAILURE = "failure"  # a protocol violation, a timeout, a lost connection


class Closing:
    """The close state of one connection (see the module docstring)."""

    __slots__ = ("state", "code", "reason", "initiator", "close_sent", "close_received", "received_code", "received_reason", "_lingering")

    def __init__(self) -> None:
        self.state = ReadyState.OPEN
        self.code: Optional[int] = None
        self.reason = ""
        self.initiator: Optional[Initiator] = None
        self.close_sent = False
        self.close_received = False
        self.received_code: Optional[int] = None  # of the first close frame received
        self.received_reason = ""
        self._lingering = False

    def __repr__(self) -> str:
        return f"<Closing {self.state.name} code={self.code} by={self.initiator and self.initiator.value}>"

    # -- decisions ------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self.state is ReadyState.OPEN

    def may_write(self, kind: FrameKind) -> bool:
        """Whether a frame of ``kind`` may go on the wire now; a close frame
        that may is counted as sent. Called under the transport's write lock."""
        if self.close_sent:
            return False
        if kind is _CLOSE:
            self.close_sent = True
        return True

    @property
    def peer_code(self) -> Optional[int]:
        """RFC 6455 section 7.1.5: the code of the close frame received (1005:
        it had none), 1006 once closed without one, None before."""
        if self.received_code is not None:
            return self.received_code
        return 1006 if self.state is ReadyState.CLOSED else None

    @property
    def delivers_messages(self) -> bool:
        """Whether a data message that just arrived reaches the application."""
        return self.state is ReadyState.OPEN

    @property
    def reads_frames(self) -> bool:
        """Whether received bytes are still parsed (False while lingering)."""
        return not self._lingering and self.state is not ReadyState.CLOSED

    # -- events -----------------------------------------------------------------

    def start(self, code: int, reason: str) -> bool:
        """The server closes with ``code``; True when a close frame must now be
        sent and the close deadline armed (False: already closing or closed)."""
        if self.state is not ReadyState.OPEN:
            return False
        self._decide(Initiator.SERVER, code, reason)
        return True

    def received(self, code: int, reason: str) -> Optional[int]:
        """The peer's close frame; returns the code to echo (None: an empty
        close frame, for the peer's 1005). The caller then writes it (the
        transport drops it if ours went first) and lingers."""
        if not self.close_received:
            self.received_code, self.received_reason = code, reason
        self.close_received = True
        if self.state is ReadyState.OPEN:
            self._decide(Initiator.CLIENT, code, reason)
        elif self.code is None:
            self.code, self.reason = code, reason
        self._lingering = True
        return None if code == 1005 else code

    def failed(self, code: int, reason: str) -> None:
        """A protocol violation: its code wins; the caller sends a close
        frame with it and lingers."""
        if self.state is ReadyState.CLOSED:
            return
        self._lingering = True
        if self.close_sent and self.code is not None:  # ours went out (the peer broke the protocol in its reply): its code stays
            return
        self.state = ReadyState.CLOSING
        self.initiator = Initiator.FAILURE
        self.code, self.reason = code, reason

    def fatal(self, code: int, reason: str) -> None:
        """The connection must be dropped without a handshake (write
        timeout, slow consumer, no pong): records why, unless a close was
        already decided."""
        if self.state is ReadyState.CLOSED:
            return
        if self.state is ReadyState.OPEN or self.code is None:
            self._decide(Initiator.FAILURE, code, reason)

    def terminated(self) -> None:
        """``terminate()``: dropped at once; the code stays as decided (1006
        when nothing was)."""
        if self.state is ReadyState.OPEN:
            self.state = ReadyState.CLOSING
            self.initiator = Initiator.FAILURE

    def ended(self) -> bool:
        """The TCP connection is gone; True when it was lost without any close
        being decided (the code becomes 1006)."""
        self.state = ReadyState.CLOSED
        if self.code is not None:
            return False
        self.code, self.reason = 1006, ""
        if self.initiator is None:
            self.initiator = Initiator.FAILURE
        return True

    def _decide(self, initiator: Initiator, code: int, reason: str) -> None:
        self.state = ReadyState.CLOSING
        self.initiator = initiator
        self.code, self.reason = code, reason
