"""Listener calls handed from a reader thread to the thread that runs them,
and ``listener_thread``, the flag of the threads that run listeners.

Normally a connection's listeners run on the thread that reads it. When a
``'message'`` listener keeps that thread longer than ``reader.TAKEOVER_AFTER``
while data waits, a second thread takes over reading (``reader.py``) and the
first one becomes the dispatcher: it runs, in order and one at a time, the
listener calls the reader queues here, while the reader answers pings and
sees pongs and close frames at once. So a slow listener no longer gets its
connection dropped by the heartbeat.

The queue is an ``Inbox``, bounded in every state: while the connection is
open the reader waits while ``max_queue`` calls are pending (read-ahead
stays bounded); once it is closing (``seal``) the reader must reach the close
frame and never waits, so a call that finds the queue full is dropped (the
``'ping'``/``'pong'`` events of a client flooding pings after our close
frame: issue 18.3). The calls queued without ``wait`` (the ``'error'`` of a
violation and the final ``'close'``, one each) are never dropped.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from .inbox import Inbox

__all__ = ["Dispatcher", "listener_thread"]


class _ListenerThread:
    """``listener_thread.active``: a flag of the current thread, kept on its
    ``Thread`` object (a ``threading.local`` costs a dict and two weak
    references per thread, about 280 bytes per connection)."""

    __slots__ = ()

    @property
    def active(self) -> bool:
        return bool(getattr(threading.current_thread(), "_ws_multipath_listener", False))

    @active.setter
    def active(self, value: bool) -> None:
        setattr(threading.current_thread(), "_ws_multipath_listener", value)


#: ``listener_thread.active`` is True on threads that run a connection (and
#: so its listeners): the server's request threads and takeover readers.
#: ``server.close()`` must not wait on such a thread.
listener_thread = _ListenerThread()


class Dispatcher:
    """The calls queued for one connection's dispatcher thread (see above).
    ``thread`` is set once, before the reader thread starts."""

    def __init__(self, max_queue: int, thread: threading.Thread) -> None:
        self.thread = thread
        self._calls = Inbox(max_queue)

    def on_dispatcher(self) -> bool:
        return threading.current_thread() is self.thread

    def call(self, fn: Callable[..., Any], *args: Any, wait: bool = False) -> None:
        """Run ``fn(*args)`` now on the dispatcher thread, else queue it
        (with ``wait``, waiting while the queue is full; dropped when it is
        full once closing)."""
        if self.on_dispatcher():
            fn(*args)
        else:
            self._calls.put((fn, args), wait=wait)

    def run(self) -> None:
        """On the dispatcher thread: run queued calls until ``finish``."""
        while True:
            item: Any = self._calls.get()
            if item is None:
                return
            fn, args = item
            fn(*args)

    def seal(self) -> None:
        """The connection is closing: the reader must never wait here again."""
        self._calls.seal()

    def finish(self) -> None:
        """No more calls: ``run`` returns once the queued ones are done."""
        self._calls.close()
