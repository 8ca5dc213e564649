"""The messages of one connection waiting for ``receive()``.

Bounded in every state: while the connection is open, the thread that
reads the socket waits when it is full, so a client cannot make the server
buffer more than ``max_queue`` messages for an application that does not
read them. Once it is closing, the connection discards new messages and
``seal`` lets a reader that waits append its one message, so the reader can
go on to the close frame; after that, a ``put`` that would wait is dropped
instead (the dispatcher's ``'ping'``/``'pong'`` calls, issue 18.3): at most
``max_queue + 1`` items, ever, besides those put with ``wait=False``.
"""

from __future__ import annotations

import collections
import threading
from typing import Any, Callable, Optional

__all__ = ["Inbox"]

Message = Any  # str or bytes for receive(); the dispatcher queues calls


class Inbox:
    """A bounded FIFO of messages (or of any items: see ``dispatch.py``);
    ``_lock`` guards the deque, the flags and ``_waiting``, the number of
    threads waiting on ``_cond`` (which uses ``_lock``): nobody is notified
    when nobody waits, the common case on the per-message path.

    The deque and the condition are made when first needed: a connection
    whose messages all go to ``'message'`` listeners never has either (a
    deque costs about 750 bytes, a condition another deque), and idle
    connections are most of a server's memory."""

    __slots__ = ("_messages", "_lock", "_cond", "_waiting", "_max_size", "_sealed", "_closed", "on_room")

    def __init__(self, max_size: int) -> None:
        self._messages: Optional[collections.deque[Message]] = None
        self._lock = threading.Lock()
        self._cond: Optional[threading.Condition] = None
        self._waiting = 0
        self._max_size = max_size
        self._sealed = False
        self._closed = False
        #: Called (without the lock) when a message leaves a full inbox: the
        #: connection's reader reads again (``SocketReader.room``).
        self.on_room: Optional[Callable[[], None]] = None

    def __len__(self) -> int:
        messages = self._messages
        return len(messages) if messages is not None else 0

    def _wait_for(self, predicate: Callable[[], Any], timeout: Optional[float] = None) -> bool:
        """``_cond.wait_for`` (``_lock`` held), counted in ``_waiting``."""
        cond = self._cond
        if cond is None:
            cond = self._cond = threading.Condition(self._lock)
        self._waiting += 1
        try:
            return bool(cond.wait_for(predicate, timeout))
        finally:
            self._waiting -= 1

    def _notify(self) -> None:
        """Wake the waiters, if any (``_lock`` held)."""
        if self._waiting and self._cond is not None:
            self._cond.notify_all()

    def put(self, message: Message, wait: bool = True) -> bool:
        """Append; with ``wait``, first wait while full. Once sealed, such a
        put finds no room past the bound: it is dropped (False). Without
        ``wait`` it always appends (the caller bounds those)."""
        with self._lock:
            messages = self._messages
            if messages is None:
                messages = self._messages = collections.deque()
            if wait and len(messages) >= self._max_size:
                if self._sealed:
                    return False
                self._wait_for(lambda: len(messages) < self._max_size or self._sealed)
            messages.append(message)
            if self._waiting:
                self._notify()
            return True

    def get(self, timeout: Optional[float] = None) -> Optional[Message]:
        """The oldest message; None once closed and empty. ``TimeoutError``
        after ``timeout`` seconds with neither."""
        with self._lock:
            if not self._messages and not self._closed:
                if not self._wait_for(lambda: self._messages or self._closed, timeout):
                    raise TimeoutError(f"no message within {timeout} s")
            message, was_full = self._pop()
        if was_full and self.on_room is not None:
            self.on_room()
        return message

    def get_nowait(self) -> Optional[Message]:
        if not self._messages:  # without the lock: an empty answer is as right as a moment later
            return None
        with self._lock:
            message, was_full = self._pop()
        if was_full and self.on_room is not None:
            self.on_room()
        return message

    def _pop(self) -> tuple[Optional[Message], bool]:
        """The oldest message, and whether the inbox was full before."""
        messages = self._messages
        if not messages:
            return None, False
        was_full = len(messages) >= self._max_size
        message = messages.popleft()
        if self._waiting:
            self._notify()
        return message, was_full

    def seal(self) -> None:
        """Stop making ``put`` wait: the connection is closing, its reader must
        reach the close frame, and it puts no new message after this one."""
        with self._lock:
            self._sealed = True
            self._notify()

    def close(self) -> None:
        """No more messages will come: ``get`` returns None once empty."""
        with self._lock:
            self._sealed = True
            self._closed = True
            self._notify()
