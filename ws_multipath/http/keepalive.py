"""The keep-alive parking lot: HTTP connections waiting for their next
request hold no thread.

After a response on a keep-alive connection, with nothing of the next
request at hand (``wsgi_connection.py`` serves pipelined bytes, and TLS bytes
already decrypted, at once), its thread *parks* the connection here and goes
back to the pool. One daemon thread per server waits for every parked
socket at once (``sync/readiness.py``: epoll on Linux) and for the oldest
idle deadline, ``http_keepalive_timeout`` after each parking:

- a socket that becomes readable is unparked and given to ``ready`` (the
  WSGI server queues it for its pool, whose thread reads the next head);
- a connection whose deadline passes first is unparked and given to
  ``expired`` (closed, as the blocking wait for it did before).

That thread never reads a socket, runs the app or waits on anything but the
poller: a ``ready`` or ``expired`` callback must not block. gunicorn's
``gthread`` worker keeps its keep-alive connections the same way, in its
main loop's selector (``gunicorn/workers/gthread.py``).

Two more kinds of waiting are parked, each with a deadline of its own: a
connection whose next request head came only in part (the server's
``open_timeout`` from the head's first bytes; the pool reads on when more
comes), and one lingering after its last response (2 s; the pool drops
what comes). Neither holds a pool thread while the client is slow.

Idle parkings all have the same timeout, so their order of parking is the
order of their deadlines: an ordered dict whose first entry is the next to
expire, and a socket parked while the thread waits never needs to wake it
(its deadline is later than the wait's end). Parkings with a deadline of
their own are kept apart, in a heap by deadline; the thread wakes for the
earlier of the two firsts (a parking with an earlier deadline than the
thread's wait wakes it).

``close()`` unparks every connection at once and returns them for the
caller to close (they are idle: no request is lost); later parkings fail
(the caller closes the connection), and the thread ends.

Thread safety: ``_lock`` guards the parked connections, the closing flag,
the thread and the poller's set (``add`` and ``remove`` happen under it);
the thread alone waits on the poller, and closes it when it ends.
"""

from __future__ import annotations

import collections
import heapq
import threading
import time
from typing import Any, Callable, Optional

from ..log import logger
from ..sync.readiness import ReadPoller

__all__ = ["ParkingLot"]


class ParkingLot:
    """Connections waiting for their next request, by descriptor, with
    their deadlines; see the module's docstring. ``ready(connection)`` and
    ``expired(connection)`` run on the lot's thread."""

    def __init__(self, timeout: float, ready: Callable[[Any], None], expired: Callable[[Any], None], use_epoll: bool = True) -> None:
        self._timeout = timeout
        self._ready = ready
        self._expired = expired
        self._use_epoll = use_epoll
        self._lock = threading.Lock()
        #: descriptor -> (connection, monotonic deadline): idle ones, oldest first
        self._parked: collections.OrderedDict[int, tuple[Any, float]] = collections.OrderedDict()
        #: descriptor -> (connection, deadline): those parked with a deadline of their own
        self._timed: dict[int, tuple[Any, float]] = {}
        #: (deadline, descriptor) of _timed, and stale ones left by unparking (dropped once due);
        #: a parking again with the same deadline adds none (_in_heap)
        self._deadlines: list[tuple[float, int]] = []
        self._in_heap: dict[int, float] = {}
        self._closing = False
        self._poller: Optional[ReadPoller] = None
        self._thread: Optional[threading.Thread] = None

    def __len__(self) -> int:
        with self._lock:
            return len(self._parked) + len(self._timed)

    def open(self) -> None:
        """Open the poller's descriptors now (when the server starts
        listening, before connections may fill the table); the first
        parking opens them otherwise. ``OSError`` when it cannot."""
        with self._lock:
            if self._poller is None and not self._closing:
                self._poller = ReadPoller(self._use_epoll)

    def park(self, connection: Any, fd: int, deadline: Optional[float] = None) -> bool:
        """Wait for ``fd`` (``connection``'s socket) to be readable, for at
        most the timeout (or until ``deadline``, monotonic); any thread.
        False when it cannot (the lot is closing, or out of descriptors or
        threads): the caller keeps the connection, and closes it."""
        with self._lock:
            if self._closing or fd in self._parked or fd in self._timed:
                return False
            try:
                if self._poller is None:
                    self._poller = ReadPoller(self._use_epoll)
                if self._thread is None:
                    thread = threading.Thread(target=self._run, name="ws_multipath-keepalive", daemon=True)
                    thread.start()  # it waits for _lock before anything else
                    self._thread = thread
                if deadline is None:
                    self._parked[fd] = (connection, time.monotonic() + self._timeout)
                else:
                    self._park_timed(connection, fd, deadline)
                self._poller.add(fd)
            except (OSError, RuntimeError, ValueError) as exc:
                self._parked.pop(fd, None)
                self._timed.pop(fd, None)
                logger.warning("cannot keep an idle HTTP connection open (%s); closing it", exc)
                return False
        return True

    def _park_timed(self, connection: Any, fd: int, deadline: float) -> None:
        self._timed[fd] = (connection, deadline)
        if self._in_heap.get(fd) != deadline:
            self._in_heap[fd] = deadline
            first = self._deadlines[0][0] if self._deadlines else None
            heapq.heappush(self._deadlines, (deadline, fd))
            if first is None or deadline < first:
                assert self._poller is not None
                self._poller.wake()  # the thread may wait past this deadline

    def close(self) -> list[Any]:
        """Stop: returns the parked connections, unparked, for the caller to
        close (their sockets are no longer watched); the thread ends."""
        with self._lock:
            self._closing = True
            parked = self._take_all()
            poller = self._poller
            if poller is not None:
                if self._thread is None:
                    poller.close()
                    self._poller = None
                else:
                    poller.wake()
        return parked

    # -- the lot's thread -------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    poller = self._poller
                    if self._closing or poller is None:
                        return
                    queued = [] if poller.epoll else poller.take_queued()
                    first = next(iter(self._parked.values()), None)
                    # without a parked connection, wait one timeout: any parked meanwhile expires later
                    # (or, with a deadline of its own, wakes the wait)
                    due = time.monotonic() + self._timeout if first is None else first[1]
                    if self._deadlines:
                        due = min(due, self._deadlines[0][0])
                    timeout = max(0.0, due - time.monotonic())
                if queued:
                    poller.register_queued(queued)
                try:
                    readable = poller.wait(timeout)
                except OSError:  # a descriptor closed by close() under select(): closing
                    readable = []
                ready, expired = self._unpark(poller, readable)
                for connection in ready:
                    self._call(self._ready, connection)
                for connection in expired:
                    self._call(self._expired, connection)
        except Exception:  # noqa: BLE001 - a bug: say so, and let no connection wait forever
            logger.exception("the keep-alive thread failed")
        finally:
            self._end()

    def _unpark(self, poller: ReadPoller, readable: list[int]) -> tuple[list[Any], list[Any]]:
        """Take the readable connections and those past their deadline out of the lot."""
        ready: list[Any] = []
        expired: list[Any] = []
        with self._lock:
            if self._closing:
                return ready, expired
            for fd in readable:
                entry = self._parked.pop(fd, None) or self._timed.pop(fd, None)
                poller.remove(fd)  # level-triggered: never leave a readable one in the set
                if entry is not None:
                    ready.append(entry[0])
            now = time.monotonic()
            while self._parked:
                fd, (connection, deadline) = next(iter(self._parked.items()))
                if deadline > now:
                    break
                del self._parked[fd]
                poller.remove(fd)
                expired.append(connection)
            while self._deadlines and self._deadlines[0][0] <= now:
                deadline, fd = heapq.heappop(self._deadlines)
                if self._in_heap.get(fd) == deadline:
                    del self._in_heap[fd]
                entry = self._timed.get(fd)
                if entry is not None and entry[1] == deadline:
                    del self._timed[fd]
                    poller.remove(fd)
                    expired.append(entry[0])
        return ready, expired

    def _take_all(self) -> list[Any]:
        """Every parked connection, taken out of the lot (under ``_lock``)."""
        taken = [connection for connection, _ in self._parked.values()]
        taken += [connection for connection, _ in self._timed.values()]
        self._parked.clear()
        self._timed.clear()
        self._deadlines.clear()
        self._in_heap.clear()
        return taken

    def _call(self, callback: Callable[[Any], None], connection: Any) -> None:
        try:
            callback(connection)
        except Exception:  # noqa: BLE001 - a bug of the callback: the others go on
            logger.exception("the keep-alive thread's %s callback failed", getattr(callback, "__name__", "?"))

    def _end(self) -> None:
        """The thread ends: close the poller; connections still parked (after a
        bug) are expired, so none waits forever."""
        with self._lock:
            self._closing = True
            left = self._take_all()
            if self._poller is not None:
                self._poller.close()
                self._poller = None
        for connection in left:
            self._call(self._expired, connection)
