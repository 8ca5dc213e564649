"""Listener calls queued for the thread that lost the loop in a listener,
and ``listener_thread``, the flag of the threads that run listeners.

A connection's listeners run inline on the thread that reads it (its
loop's thread, ``loop.py``). When one of them keeps that thread so long
that the loop is handed off (``handoff.py``), the connection's reading goes
on on the loop, and the stuck thread becomes the connection's dispatcher:
the listener calls that the loop reads meanwhile are queued here, and the
dispatcher runs them, in order and one at a time, once its listener has
returned. When the queue is empty the dispatcher dissolves: later calls run
inline on the loop again, and the thread is free.

The queue is bounded in every state: the loop never waits, so while the
connection is open it stops reading the connection when ``max_queue`` calls
are pending (``full``; the client is held back by TCP) and reads again when
the dispatcher makes room (``on_room``); once it is closing (``seal``) the
loop must reach the close frame, so a bounded call that finds the queue
full is dropped (the ``'ping'``/``'pong'`` events of a client flooding pings
after our close frame: issue 18.3). Calls made with ``bounded=False`` (the
``'error'`` of a violation and the final ``'close'``, one each) are never
dropped.
"""

from __future__ import annotations

import collections
import threading
from typing import Any, Callable, Optional

from ..log import logger

__all__ = ["Dispatcher", "listener_thread"]


class _ListenerThread:
    """``listener_thread.active``: a flag of the current thread, kept on its
    ``Thread`` object (a ``threading.local`` costs a dict and two weak
    references per thread)."""

    __slots__ = ()

    @property
    def active(self) -> bool:
        return bool(getattr(threading.current_thread(), "_ws_multipath_listener", False))

    @active.setter
    def active(self, value: bool) -> None:
        setattr(threading.current_thread(), "_ws_multipath_listener", value)


#: ``listener_thread.active`` is True on threads that run listeners: the
#: server's request threads (``'connection'`` listeners) and the loops'
#: threads. ``server.close()`` must not wait on such a thread.
listener_thread = _ListenerThread()


class Dispatcher:
    """The calls queued for one connection's dispatcher ``thread`` (see
    above). ``_lock`` guards the deque and the flags; it is never held
    while a call runs. ``on_room`` is called (on the dispatcher thread,
    without the lock) when a call leaves a full queue."""

    __slots__ = ("thread", "_calls", "_lock", "_max", "_sealed", "_dissolved", "on_room")

    def __init__(self, max_queue: int, thread: threading.Thread, on_room: Callable[[], None]) -> None:
        self.thread = thread
        self._calls: collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]] = collections.deque()
        self._lock = threading.Lock()
        self._max = max_queue
        self._sealed = False
        self._dissolved = False
        self.on_room = on_room

    def full(self) -> bool:
        """True while the reader should stop (read by the one thread that
        queues: the count only falls meanwhile)."""
        return not self._sealed and not self._dissolved and len(self._calls) >= self._max

    def call(self, fn: Callable[..., Any], *args: Any, bounded: bool = True) -> bool:
        """Queue ``fn(*args)`` for the dispatcher; False when it has
        dissolved (the caller runs it itself). Once sealed, a bounded call
        that finds the queue full is dropped (True)."""
        with self._lock:
            if self._dissolved:
                return False
            if bounded and self._sealed and len(self._calls) >= self._max:
                return True
            self._calls.append((fn, args))
            return True

    def run(self) -> None:
        """On the dispatcher thread: run the queued calls until none is
        left, then dissolve."""
        while True:
            with self._lock:
                if not self._calls:
                    self._dissolved = True
                    return
                fn, args = self._calls.popleft()
                was_full = len(self._calls) + 1 >= self._max
            try:
                fn(*args)
            except BaseException:  # noqa: BLE001 - a bug, or SystemExit from a listener: the others still run
                logger.exception("a queued listener call failed")
            finally:
                if was_full:
                    self.on_room()

    def seal(self) -> None:
        """The connection is closing: the reader must never stop for this
        queue again."""
        with self._lock:
            self._sealed = True

    @property
    def dissolved(self) -> bool:
        return self._dissolved


def current_dispatcher(dispatcher: Optional[Dispatcher]) -> bool:
    """True on ``dispatcher``'s thread."""
    return dispatcher is not None and dispatcher.thread is threading.current_thread()
