"""The threads that serve accepted connections: ``RequestThreads``.

Each accepted connection is served on a thread of its own (its handshake,
its ``'connection'`` listeners, however long they block), as before; but a
thread whose connection went on in its event loop (or ended) is kept for a
moment to serve the next one instead of ending. Starting a thread costs
about as much CPU as a whole WebSocket handshake (clone, a stack mapped and
unmapped, the interpreter's thread state, a wait for the thread to start),
so under a stream of new connections each thread now serves many.

Nothing else changes: every connection still gets a thread at once (an
idle one, else a new one), so a slow client never waits for another; an
idle thread is named ``ws_multipath-request-idle`` (a thread serving a
connection is ``ws_multipath-connection``), at most ``MAX_IDLE`` are kept,
each for ``IDLE_SECONDS`` at most, and ``close()`` ends them at once.

``_lock`` guards the idle list and the closed flag. A thread waits for its
next connection on a lock of its own (``_Idle.wake``), released by
``submit`` once it has put the connection in its slot.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Optional

__all__ = ["RequestThreads", "MAX_IDLE", "IDLE_SECONDS", "IDLE_NAME", "BUSY_NAME"]

#: Idle threads kept at most; a thread that finds this many idle ends.
MAX_IDLE = 32
#: Seconds an idle thread waits for a connection before it ends.
IDLE_SECONDS = 1.0
BUSY_NAME = "ws_multipath-connection"
IDLE_NAME = "ws_multipath-request-idle"

Job = tuple[Any, Any]  # (the accepted socket, the peer address)


class _Idle:
    """One idle thread's slot: the connection handed to it, and its wake-up."""

    __slots__ = ("job", "wake")

    def __init__(self) -> None:
        self.job: Optional[Job] = None
        self.wake = threading.Lock()
        self.wake.acquire()  # released by the submitter


class RequestThreads:
    """Runs ``serve(sock, address)`` for each submitted connection on a
    thread of its own, reusing threads that finished (see above)."""

    def __init__(self, serve: Callable[[Any, Any], None], max_idle: int = MAX_IDLE, idle_seconds: float = IDLE_SECONDS) -> None:
        self._serve = serve
        self._max_idle = max_idle
        self._idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._idle: list[_Idle] = []
        self._closed = False

    def submit(self, sock: Any, address: Any) -> None:
        """Serve the connection on an idle thread, else on a new one
        (``RuntimeError`` when none can be started)."""
        with self._lock:
            slot = self._idle.pop() if self._idle else None  # the latest idle: the others may end
        if slot is not None:
            slot.job = (sock, address)
            slot.wake.release()
            return
        thread = threading.Thread(target=self._run, args=((sock, address),), name=BUSY_NAME, daemon=True)
        thread.start()

    def close(self) -> None:
        """End the idle threads now, and every busy one once it is done."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for slot in idle:
            slot.wake.release()  # with no job: the thread ends

    def idle_count(self) -> int:
        with self._lock:
            return len(self._idle)

    def _run(self, job: Optional[Job]) -> None:
        me = threading.current_thread()
        while job is not None:
            self._serve(*job)
            job = None  # hold nothing of the connection while idle
            me.name = IDLE_NAME
            job = self._next_job()
            me.name = BUSY_NAME

    def _next_job(self) -> Optional[Job]:
        """Wait as an idle thread for a connection; None: end the thread."""
        slot = _Idle()
        with self._lock:
            if self._closed or len(self._idle) >= self._max_idle:
                return None
            self._idle.append(slot)
        if not slot.wake.acquire(timeout=self._idle_seconds):
            with self._lock:
                if slot in self._idle:  # nobody took it: end
                    self._idle.remove(slot)
                    return None
            slot.wake.acquire()  # a submitter took it just now: its release is coming
        return slot.job
