"""The messages of one connection waiting for ``receive()``.

Bounded in every state: while the connection is open, the thread that
reads the socket waits when it is full, so a client cannot make the server
buffer more than ``max_queue`` messages for an application that does not
read them. Once it is closing, the connection discards new messages and
``seal`` lets a reader that waits append its one message, so the reader can
go on to the close frame: at most ``max_queue + 1`` messages, ever.
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
    when nobody waits, the common case on the per-message path."""

    def __init__(self, max_size: int) -> None:
        self._messages: collections.deque[Message] = collections.deque()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._waiting = 0
        self._max_size = max_size
        self._sealed = False
        self._closed = False

    def __len__(self) -> int:
        return len(self._messages)

    def _wait_for(self, predicate: Callable[[], Any], timeout: Optional[float] = None) -> bool:
        """``_cond.wait_for`` (``_lock`` held), counted in ``_waiting``."""
        self._waiting += 1
        try:
            return bool(self._cond.wait_for(predicate, timeout))
        finally:
            self._waiting -= 1

    def put(self, message: Message, wait: bool = True) -> None:
        """Append; with ``wait``, first wait while full (unless sealed)."""
        with self._lock:
            if wait and len(self._messages) >= self._max_size and not self._sealed:
                self._wait_for(lambda: len(self._messages) < self._max_size or self._sealed)
            self._messages.append(message)
            if self._waiting:
                self._cond.notify_all()

    def get(self, timeout: Optional[float] = None) -> Optional[Message]:
        """The oldest message; None once closed and empty. ``TimeoutError``
        after ``timeout`` seconds with neither."""
        with self._lock:
            if not self._messages and not self._closed:
                if not self._wait_for(lambda: self._messages or self._closed, timeout):
                    raise TimeoutError(f"no message within {timeout} s")
            return self._pop()

    def get_nowait(self) -> Optional[Message]:
        if not self._messages:  # without the lock: an empty answer is as right as a moment later
            return None
        with self._lock:
            return self._pop()

    def _pop(self) -> Optional[Message]:
        if not self._messages:
            return None
        message = self._messages.popleft()
        if self._waiting:
            self._cond.notify_all()
        return message

    def seal(self) -> None:
        """Stop making ``put`` wait: the connection is closing, its reader must
        reach the close frame, and it puts no new message after this one."""
        with self._lock:
            self._sealed = True
            self._cond.notify_all()

    def close(self) -> None:
        """No more messages will come: ``get`` returns None once empty."""
        with self._lock:
            self._sealed = True
            self._closed = True
            self._cond.notify_all()
