"""A new connection waiting for its request head: ``HeadWaiter``.

A plain (not TLS) connection costs no thread while its client sends the
request head. The accept loop gives it to the server's *head loop*, an
event loop of the server's own (``sync/loop.py``), which reads it without
blocking as it comes; once the head is whole, or the client broke a rule
or went, the rest of the handshake runs as a task of that loop
(``HTTPSide._head_ended``: routing, the handler's checks and hooks, the
101, the ``'connection'`` listeners, then the connection joins its
handler's loop). So the handshakes of a stream of new connections run one
after another on one thread, as gunicorn's ``gthread`` worker waits for a
keep-alive connection's next request in its selector and Jetty's selector
thread runs the task it found: no thread per connection to wake, and no
contention for the interpreter among such threads.

A hook or listener that blocks keeps the task, and the loop is handed to
another thread (``sync/handoff.py``) as for a ``'message'`` listener: the
whole task counts as user code for the sysmon, since the library's own part
of it (a few hundred microseconds) never blocks: the socket stays in
blocking mode (the reads here pass ``MSG_DONTWAIT``), and the 101 or an
error status fits in its send buffer. Once one has blocked, the loop is in
a burst (``handoff.py``) and the handshakes after it run off the loop from
their start (``EventLoop.run_off_loop``): any number of blocking ones hold
up the others by one sample, not by a sample each. A client that resets
before its head is whole is dropped, not refused (``lost``).

TLS connections are served on a request thread of their own, as before:
their handshake takes round trips that a loop would have to drive step by
step.
"""

from __future__ import annotations

import selectors
import socket
import threading
from typing import TYPE_CHECKING, Any, Callable, Optional

from ..errors import HandshakeError
from ..sync.request_threads import BUSY_NAME
from ..sync.sockets import recv_nowait
from .head import read_head

if TYPE_CHECKING:
    from ..sync.loop import EventLoop
    from .handshake_limits import Deadline, HeadLimits

__all__ = ["HeadWaiter"]

_READ_SIZE = 8192


class _NeedMore(Exception):
    """The head read so far is not whole yet."""


def _need_more() -> bytes:
    raise _NeedMore


class HeadWaiter:
    """One connection's wait for its request head, as a reader of the head
    loop (the part of ``LoopReading``'s interface that the loop and the
    sysmon use). ``_claim`` makes its tasks exclusive: a task run off the
    loop (a burst, ``handoff.py``) and the loop's next owner may both find
    its socket ready. The buffer and the flags belong to the task that
    holds the claim; ``_registered`` to the loop's owner."""

    __slots__ = ("sock", "address", "deadline", "lost", "_loop", "_limits", "_ended", "_buffer", "_fd", "_registered", "_claim", "_done")

    def __init__(
        self,
        sock: socket.socket,
        address: Any,
        deadline: "Deadline",
        loop: "EventLoop",
        limits: "HeadLimits",
        ended: Callable[["HeadWaiter"], None],
    ) -> None:
        """``ended(waiter)`` runs once, as a task of ``loop``, when the head
        is whole, broke a limit or will never come (``take_buffer()`` then
        gives what was read)."""
        self.sock = sock
        self.address = address
        self.deadline = deadline
        #: The error's text when the connection broke (a reset) before the
        #: head was whole: a drop, not a refusal (a later read would see EOF).
        self.lost: Optional[str] = None
        self._loop = loop
        self._limits = limits
        self._ended = ended
        self._buffer = bytearray()
        self._fd = sock.fileno()
        self._registered = False
        self._claim = threading.Lock()
        self._done = False

    def __repr__(self) -> str:
        return f"<HeadWaiter fd={self._fd} read={len(self._buffer)}>"

    @property
    def in_listener(self) -> bool:
        """For the sysmon: a task of a head that has ended is the rest of the
        handshake, where hooks and ``'connection'`` listeners run."""
        return self._done

    def take_buffer(self) -> bytes:
        """What was read (the head, perhaps the first frames after it)."""
        buffer, self._buffer = bytes(self._buffer), bytearray()
        return buffer

    # -- tasks of the head loop ---------------------------------------------

    def start(self) -> None:
        """The first task: a look at what came with the connection (often
        the whole head), then the selector watches the socket if needed."""
        self.on_ready(threading.current_thread())
        if not self._done:
            self._loop.sync(self)

    def on_ready(self, me: threading.Thread) -> None:
        if not self._claim.acquire(blocking=False):
            return
        try:
            ended = not self._done and self._read()
            if ended:
                self._done = True
        finally:
            self._claim.release()
        if ended:
            self._loop.release(self, self._end)

    def _end(self) -> None:
        """On the loop's owner: the rest of the handshake, off the loop while
        a burst of blocking handshakes lasts (``EventLoop.run_off_loop``),
        so that any number of them hold up the others by one sample at most."""
        self._loop.run_off_loop(self, self._end_here)

    def _end_here(self) -> None:
        self._ended(self)

    def _read(self) -> bool:
        """One read; True when the head can be acted on."""
        try:
            data = recv_nowait(self.sock, _READ_SIZE)
        except OSError as exc:
            self.lost = str(exc)  # reset: reported once, a later read sees only an end
            return True
        if data is None:
            return False
        if not data:
            return True  # the client went, or the deadline shut the socket down
        self._buffer += data
        limits = self._limits
        if b"\n" not in data and len(self._buffer) <= limits.max_target_size:
            return False  # no line ended, nothing too long: no rule can be broken yet
        try:
            read_head(_need_more, bytes(self._buffer), limits.max_header_size, limits.max_headers, limits.max_target_size)
        except _NeedMore:
            return False
        except HandshakeError:
            return True  # refused: the handshake's own read gives the status
        return True

    # -- the loop's interface ------------------------------------------------

    def sync_on_loop(self, selector: selectors.BaseSelector) -> None:
        """On the loop's owner: watch the socket while the head is awaited."""
        if self._done or self._registered:
            return
        try:
            selector.register(self._fd, selectors.EVENT_READ, self)
        except KeyError:  # a stale entry of this descriptor's: take it over
            selector.modify(self._fd, selectors.EVENT_READ, self)
        self._registered = True

    def unregister_on_loop(self, selector: selectors.BaseSelector) -> None:
        if self._registered:
            self._registered = False
            try:
                selector.unregister(self._fd)
            except (KeyError, ValueError, OSError):
                pass

    def hand_off(self, stuck: threading.Thread) -> Optional[Callable[[], None]]:
        """``stuck`` lost the loop in this connection's handshake (a hook or
        ``'connection'`` listener blocks): it serves the connection now, and
        is named so. Nothing of the connection moves."""
        stuck.name = BUSY_NAME
        return None

    def run_dispatcher(self, me: threading.Thread) -> None:
        """The handshake that lost the loop is over: ``me`` goes back to the loop's threads."""
        me.name = f"ws_multipath-loop {self._loop.name}"
