"""One thread per server that writes queued frames as sockets become writable.

A frame that is posted without blocking (a broadcast, a heartbeat ping, a
close frame sent by ``handler.close()``) and does not fit in the socket's
buffer at once waits in its transport's outbox. The transport then enrols
with the ``Flusher``, whose thread waits in one selector for every enrolled
socket and writes what each can take without blocking. A client that stops
reading therefore holds no thread at all: its outbox waits, bounded by
``transport.MAX_OUTBOX_BYTES``, until it reads, its ``write_timeout`` passes
without progress, or it is dropped.

It also pushes the frames that a transport sent with ``MSG_MORE`` and then
left held in the kernel (``transport.py``, coalescing): every ``CORK_TICK``
while any transport is corked, it pushes those corked since before the
previous tick, so no frame waits for more than two ticks.

``_lock`` guards the list of changes that other threads ask for and the
corked transports to watch; the selector and the set of enrolled transports
belong to the flusher thread.
"""

from __future__ import annotations

import selectors
import socket
import threading
import time
from typing import TYPE_CHECKING, Optional

from ..log import logger

if TYPE_CHECKING:
    from .transport import Transport

__all__ = ["Flusher"]

_DEADLINE_CHECK = 0.25  # seconds between checks of the write deadlines

#: Seconds between two checks for frames held by MSG_MORE: a frame waits at
#: most two ticks when the thread that wrote it got busy with something else.
CORK_TICK = 0.002


class Flusher:
    """Writes the outboxes of enrolled transports on one daemon thread,
    started on the first enrolment."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changes: list[tuple[bool, "Transport"]] = []  # (enrol?, transport), in order
        self._stopped = False
        self._thread: Optional[threading.Thread] = None
        self._wake_r: Optional[socket.socket] = None
        self._wake_w: Optional[socket.socket] = None
        self._selector: Optional[selectors.BaseSelector] = None  # the thread's, once it runs

    def open(self) -> None:
        """Open the flusher's descriptors (a wake-up socket pair and the
        selector). The server calls this when it starts listening, so that
        they never have to be opened later, when the descriptor table may be
        full of connections; the first enrolment opens them otherwise."""
        with self._lock:
            if self._selector is None and not self._stopped:
                self._wake_r, self._wake_w = socket.socketpair()
                self._wake_r.setblocking(False)
                self._selector = selectors.DefaultSelector()
        self._corked: set["Transport"] = set()  # transports to push if they stay corked
        #: Ticks counted while transports were corked (written by the flusher thread).
        self.ticks = 0

    def watch_cork(self, transport: "Transport") -> None:
        """``transport`` began to hold frames (MSG_MORE): push them within
        two ticks unless it pushes them itself (any thread)."""
        transport.corked_at = self.ticks
        with self._lock:
            if self._stopped:
                return
            first = not self._corked
            self._corked.add(transport)
            if self._thread is None:
                self._start()
            wake = self._wake_w
        if first:
            try:
                wake.send(b"x", socket.MSG_DONTWAIT)  # type: ignore[union-attr]
            except OSError:
                pass

    def enrol(self, transport: "Transport") -> None:
        """Write ``transport``'s outbox as its socket allows (any thread)."""
        self._change(True, transport)

    def withdraw(self, transport: "Transport") -> None:
        """Stop watching ``transport`` (before its socket is closed)."""
        self._change(False, transport)

    def _change(self, enrol: bool, transport: "Transport") -> None:
        with self._lock:
            if self._stopped:
                if enrol:
                    transport.abort()  # the server is closing: nothing more will be written
                return
            self._changes.append((enrol, transport))
            if self._thread is None:
                self._start()
            wake = self._wake_w
        try:
            wake.send(b"x", socket.MSG_DONTWAIT)  # type: ignore[union-attr]
        except OSError:  # full: the thread is awake already
            pass

    def _start(self) -> None:
        """Start the thread (``_lock`` held), opening the descriptors first if
        the server did not."""
        if self._selector is None:
            self._wake_r, self._wake_w = socket.socketpair()
            self._wake_r.setblocking(False)
            self._selector = selectors.DefaultSelector()
        self._thread = threading.Thread(target=self._run, name="ws_multipath-flusher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the thread (the server closed; every connection has ended)."""
        with self._lock:
            self._stopped = True
            thread, wake = self._thread, self._wake_w
        if thread is None:
            self._close_descriptors()
            return
        try:
            wake.send(b"x", socket.MSG_DONTWAIT)  # type: ignore[union-attr]
        except OSError:
            pass
        if thread is not threading.current_thread():
            thread.join()

    # -- the flusher thread ---------------------------------------------------

    def _close_descriptors(self) -> None:
        for closable in (self._selector, self._wake_r, self._wake_w):
            if closable is not None:
                closable.close()

    def _run(self) -> None:
        selector, wake_r = self._selector, self._wake_r
        assert selector is not None and wake_r is not None
        selector.register(wake_r, selectors.EVENT_READ, None)
        enrolled: dict[int, "Transport"] = {}
        next_check = time.monotonic() + _DEADLINE_CHECK
        next_tick = 0.0
        try:
            while True:
                with self._lock:
                    changes, self._changes = self._changes, []
                    stopped = self._stopped
                if stopped:
                    return
                for enrol, transport in changes:
                    _apply(selector, enrolled, enrol, transport)
                timeout = CORK_TICK if self._corked else _DEADLINE_CHECK if enrolled else None
                for key, _ in selector.select(timeout):
                    if key.data is None:
                        _drain_wakeups(wake_r)
                    elif not key.data.flush_ready():
                        _apply(selector, enrolled, False, key.data)
                now = time.monotonic()
                if self._corked and now >= next_tick:
                    next_tick = now + CORK_TICK
                    self._push_held()
                if enrolled and now >= next_check:
                    next_check = now + _DEADLINE_CHECK
                    for transport in list(enrolled.values()):
                        if transport.write_overdue(now):
                            _apply(selector, enrolled, False, transport)
        except Exception:  # noqa: BLE001 - a bug: say so; transports fall back to their deadlines
            logger.exception("the flusher thread failed")
        finally:
            self._close_descriptors()


    def _push_held(self) -> None:
        """One tick: push the transports corked since before the last one."""
        self.ticks += 1
        with self._lock:
            corked = list(self._corked)
        done = []
        for transport in corked:
            if not transport.corked or transport.closed:
                done.append(transport)
            elif transport.corked_at < self.ticks - 1 and transport.push():
                done.append(transport)
        if done:
            with self._lock:
                for transport in done:
                    if transport.closed or not transport.corked:
                        self._corked.discard(transport)


def _apply(selector: selectors.BaseSelector, enrolled: dict[int, "Transport"], enrol: bool, transport: "Transport") -> None:
    """Mirror one enrolment change in the selector (keyed by descriptor: a
    closed socket's number may already belong to a newer connection)."""
    fd = transport.fd
    current = enrolled.get(fd)
    stale = current is not None and current is not transport  # its socket was closed
    if current is not None and (stale if enrol else current is transport):
        del enrolled[fd]
        try:
            selector.unregister(fd)
        except (KeyError, ValueError, OSError):
            pass
    if enrol and current is not transport and not transport.closed:
        try:
            selector.register(fd, selectors.EVENT_WRITE, transport)
        except (KeyError, ValueError, OSError):
            transport.abort()
            return
        enrolled[fd] = transport


def _drain_wakeups(sock: socket.socket) -> None:
    try:
        while sock.recv(4096):
            pass
    except OSError:
        pass
