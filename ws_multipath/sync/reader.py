"""Who reads a connection's socket, and on which thread.

One thread at a time reads a connection, in one of three modes:

- LOOPING: a thread reads until the connection ends. Normally this is the
  server's request thread once the ``'connection'`` listeners have returned,
  so a connection costs one thread and messages reach ``'message'``
  listeners with no hand-off.
- PULLING: a ``'connection'`` listener that calls ``receive()`` (the
  ``for message in ws`` style) reads on its own thread, the request thread,
  for as long as it waits: still one thread, no hand-off.
- IDLE: nobody reads. While a ``'connection'`` listener is busy between two
  ``receive()`` calls, or has not called it yet, a watchdog on the timer
  thread checks the socket; when data has waited for ``TAKEOVER_AFTER``
  seconds it starts a thread that reads from then on (LOOPING), so pings,
  close frames and messages are never left unread for long.

And while LOOPING, when one ``'message'`` listener call keeps the reading
thread for ``TAKEOVER_AFTER`` seconds or more while data waits, a busy check
on the timer thread starts a second thread that reads from then on; the
first becomes the connection's dispatcher and runs the listener calls the
reader queues for it (``dispatch.py``), in order. Two threads, from then on,
for that connection only.

``_lock`` guards the mode, the hand-over, the sealed flag and the busy
check's timer; it is never held while reading or calling back.
"""

from __future__ import annotations

import contextlib
import enum
import select
import ssl
import threading
import time
from typing import Callable, Optional

from ..log import logger
from .dispatch import Dispatcher, listener_thread
from .timers import Timer, Timers

__all__ = ["SocketReader", "listener_thread", "TAKEOVER_AFTER"]

_NO_LOCK = contextlib.nullcontext()

#: Seconds that received data may wait unread before a reader thread takes over.
TAKEOVER_AFTER = 1.0

# recv() sizes: CPython allocates the full size for every call, so a large
# fixed size costs an allocation (and page faults) per small message and pins
# memory in every idle connection. Start small, grow while reads fill the
# buffer (bulk transfers), shrink back when they stop.
#
# The smallest size keeps the buffer (a bytes object: 33 bytes of header) in
# pymalloc, which serves requests up to 512 bytes: a 1 KiB buffer came from
# glibc's malloc, and shrinking it to the bytes read (realloc, every small
# read) left its remainder in the thread's tcache. With hundreds of threads
# doing that, glibc's heaps grew without end: +0.75 MiB/min at 256 clients
# echoing 32 B messages (flat with GLIBC_TUNABLES=glibc.malloc.tcache_count=0
# or with this size; MALLOC_ARENA_MAX=1 does not help). An idle connection's
# pending recv() holds 512 bytes instead of about 1.1 KiB, too.
_RECV_MIN = 512 - 33
_RECV_MAX = 64 * 1024  # larger reads are over glibc's mmap threshold: 16 us each instead of 2.5 (strace)


class Mode(enum.Enum):
    IDLE = "idle"
    PULLING = "pulling"
    LOOPING = "looping"


class SocketReader:
    """Reads one socket and hands each chunk to ``feed``.

    ``begin`` runs once, before the first read; ``resume`` when a thread
    starts looping; ``finish`` runs once, when reading ends (EOF, error, or
    the socket shut down by another thread).
    """

    __slots__ = (
        "_sock", "_tls_lock", "_recv", "_timers", "_feed", "_begin", "_resume", "_finish", "_name", "_recv_size",
        "_lock", "_mode", "_home", "_looping_thread", "_began", "_done", "_idle_since", "_watchdog", "_max_queue",
        "dispatcher", "_sealed", "_listener_calls", "_checked_calls", "_in_listener", "_busy_timer",
    )

    def __init__(
        self,
        sock: object,
        timers: Timers,
        feed: Callable[[bytes], None],
        begin: Callable[[], None],
        resume: Callable[[], None],
        finish: Callable[[], None],
        name: str,
        max_queue: int = 16,
        tls_lock: Optional[threading.Lock] = None,
    ) -> None:
        self._sock = sock
        self._tls_lock = tls_lock  # the transport's: one thread at a time in the SSL object
        self._recv = self._recv_tls if isinstance(sock, ssl.SSLSocket) else sock.recv  # type: ignore[attr-defined]
        self._timers = timers
        self._feed = feed
        self._begin = begin
        self._resume = resume
        self._finish = finish
        self._name = name
        self._recv_size = _RECV_MIN
        self._lock = threading.Lock()
        self._mode = Mode.IDLE
        self._home = threading.current_thread()
        self._looping_thread: Optional[threading.Thread] = None
        self._began = False
        self._done = False
        self._idle_since = time.monotonic()
        self._watchdog: Optional[Timer] = None
        self._max_queue = max_queue
        #: Set once a second thread took over reading from a busy listener.
        self.dispatcher: Optional[Dispatcher] = None
        self._sealed = False  # the connection is closing: a dispatcher made from now on starts sealed
        self._listener_calls = 0  # 'message' listener calls so far
        self._checked_calls = -1  # ... as the last busy check saw them
        self._in_listener = False
        self._busy_timer: Optional[Timer] = None

    @property
    def pulling(self) -> bool:
        return self._mode is Mode.PULLING

    def reading(self) -> bool:
        """True while some thread reads (so an unanswered ping means something)."""
        return self._mode is not Mode.IDLE or self._done

    def on_reading_thread(self) -> bool:
        """True on the thread that reads now (a listener called from a read)."""
        current = threading.current_thread()
        if self.dispatcher is not None and self.dispatcher.on_dispatcher():
            return True
        if self._mode is Mode.PULLING:
            return current is self._home
        return self._mode is Mode.LOOPING and current is self._looping_thread

    # -- LOOPING --------------------------------------------------------------

    def serve(self) -> None:
        """On the home thread once its listeners returned: read to the end,
        or wait for the takeover thread that already does."""
        with self._lock:
            takeover = self._looping_thread
            self._mode = Mode.LOOPING
            self._cancel_watchdog()
        if takeover is not None:
            takeover.join()
        else:
            self._loop()

    def _loop(self) -> None:
        listener_thread.active = True
        self._looping_thread = threading.current_thread()
        try:
            self._begin_once()
            self._resume()
            while self.dispatcher is None and self._read_once():
                pass
        except Exception:  # noqa: BLE001 - a bug: log it, never leak the socket
            logger.exception("reader of %s failed", self._name)
        finally:
            if self.dispatcher is not None and self.dispatcher.on_dispatcher():
                self.dispatcher.run()  # the new reader thread ends the connection
            else:
                self._end()

    def _loop_after_hand_over(self) -> None:
        """The second thread, once a busy listener handed reading over."""
        listener_thread.active = True
        try:
            while self._read_once():
                pass
        except Exception:  # noqa: BLE001 - a bug: log it, never leak the socket
            logger.exception("reader of %s failed", self._name)
        finally:
            self._end()

    def _read_once(self) -> bool:
        """One ``recv`` and its processing; False when reading is over."""
        size = self._recv_size
        try:
            data = self._recv(size)
        except OSError:
            return False
        if not data:
            return False
        if len(data) == size:
            self._recv_size = min(size * 4, _RECV_MAX)
        elif size > _RECV_MIN and len(data) < size >> 3:
            self._recv_size = size >> 1
        self._feed(data)
        return True

    def _recv_tls(self, size: int) -> bytes:
        """``recv`` on a TLS socket, which the transport keeps non-blocking
        so that writes never block: wait for readability here instead."""
        sock: ssl.SSLSocket = self._sock  # type: ignore[assignment]
        lock = self._tls_lock or _NO_LOCK
        while True:
            try:
                with lock:
                    return sock.recv(size)
            except ssl.SSLWantReadError:
                self._readable(None)
            except ssl.SSLWantWriteError:
                select.select([], [sock], [], 1.0)

    def _begin_once(self) -> None:
        if not self._began:
            self._began = True
            self._begin()

    def _end(self) -> None:
        if not self._done:
            self._done = True
            self._cancel_busy_check()
            self._finish()

    # -- PULLING --------------------------------------------------------------

    def claim_pull(self) -> bool:
        """Become the reader on the home thread, if nobody reads; True if so."""
        if threading.current_thread() is not self._home:
            return False
        with self._lock:
            if self._mode is not Mode.IDLE or self._done:
                return False
            self._mode = Mode.PULLING
            return True

    def pull_once(self, deadline: Optional[float]) -> None:
        """Read once, waiting for data at most until ``deadline``
        (``TimeoutError`` then). Ends the connection on EOF. The first call
        only begins (which may already deliver what came with the handshake)."""
        if not self._began:
            self._begin_once()
            return
        if deadline is not None and not self._readable(deadline - time.monotonic()):
            raise TimeoutError("no message in time")
        try:
            more = self._read_once()
        except BaseException:
            self._end()
            raise
        if not more:
            self._end()

    def release_pull(self) -> None:
        """Stop pulling; the watchdog watches the socket meanwhile."""
        with self._lock:
            if self._mode is Mode.PULLING:
                self._mode = Mode.IDLE
                self._idle_since = time.monotonic()
                self._arm_watchdog(TAKEOVER_AFTER)

    # -- LOOPING: a busy listener (reading thread, then timer thread) ----------

    def enter_listener(self) -> None:
        """A ``'message'`` listener is about to run on the reading thread."""
        self._listener_calls += 1
        self._in_listener = True
        if self._busy_timer is None and self.dispatcher is None and self._mode is Mode.LOOPING:
            with self._lock:
                if self._busy_timer is None and not self._done:
                    self._busy_timer = self._timers.call_later(TAKEOVER_AFTER, self._on_busy_check)

    def leave_listener(self) -> None:
        with self._lock:  # exclusive with a hand-over, so that two threads never read
            self._in_listener = False

    def _on_busy_check(self) -> None:
        """Timer thread: hand reading over if one listener call has lasted
        since the last check while data waits; check again while busy."""
        with self._lock:
            self._busy_timer = None
            if self._done or self.dispatcher is not None or self._mode is not Mode.LOOPING:
                return
            calls, previous = self._listener_calls, self._checked_calls
            self._checked_calls = calls
            stuck = self._in_listener and calls == previous
            if not stuck and not self._in_listener and calls == previous:
                return  # idle: the next listener call arms the check again
        if stuck and self._readable(0):
            with self._lock:
                if self._in_listener and not self._done and self._listener_calls == calls:
                    self._hand_over()
                    return
        with self._lock:
            if self._busy_timer is None and not self._done and self.dispatcher is None:
                self._busy_timer = self._timers.call_later(TAKEOVER_AFTER, self._on_busy_check)

    def _hand_over(self) -> None:
        """Start the second reader (``_lock`` held, the listener still running)."""
        busy = self._looping_thread
        assert busy is not None
        thread = threading.Thread(target=self._loop_after_hand_over, name=f"ws_multipath-reader {self._name}", daemon=True)
        self.dispatcher = Dispatcher(self._max_queue, busy)
        if self._sealed:
            self.dispatcher.seal()
        self._looping_thread = thread
        try:
            thread.start()
        except RuntimeError as exc:  # out of threads: the busy thread keeps reading
            logger.error("cannot start a reader thread for %s: %s", self._name, exc)
            self.dispatcher, self._looping_thread = None, busy

    def seal(self) -> None:
        """The connection is closing: its dispatcher, now or made later, must
        never make the reader wait (``dispatch.py``)."""
        with self._lock:
            self._sealed = True
            dispatcher = self.dispatcher
        if dispatcher is not None:
            dispatcher.seal()

    def _cancel_busy_check(self) -> None:
        with self._lock:
            if self._busy_timer is not None:
                self._busy_timer.cancel()
                self._busy_timer = None

    # -- IDLE: the watchdog (timer thread) ------------------------------------

    def watch(self) -> None:
        """Start watching the socket while the ``'connection'`` listeners run."""
        with self._lock:
            if self._mode is Mode.IDLE:
                self._arm_watchdog(TAKEOVER_AFTER)

    def _arm_watchdog(self, delay: float) -> None:
        if self._watchdog is None:
            self._watchdog = self._timers.call_later(delay, self._on_watchdog)

    def _cancel_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def _on_watchdog(self) -> None:
        with self._lock:
            self._watchdog = None
            if self._mode is not Mode.IDLE or self._done:
                return
            waited = time.monotonic() - self._idle_since
            if waited < TAKEOVER_AFTER:
                self._arm_watchdog(TAKEOVER_AFTER - waited)
                return
        if not self._readable(0):
            with self._lock:
                if self._mode is Mode.IDLE:
                    self._arm_watchdog(TAKEOVER_AFTER)
            return
        with self._lock:  # started under the lock, so that serve() never joins an unstarted thread
            if self._mode is not Mode.IDLE or self._done:
                return
            thread = threading.Thread(target=self._loop, name=f"ws_multipath-reader {self._name}", daemon=True)
            self._mode, self._looping_thread = Mode.LOOPING, thread
            try:
                thread.start()
            except RuntimeError as exc:  # out of threads: try again later
                logger.error("cannot start a reader thread for %s: %s", self._name, exc)
                self._mode, self._looping_thread = Mode.IDLE, None
                self._arm_watchdog(TAKEOVER_AFTER)

    def _readable(self, timeout: Optional[float]) -> bool:
        """Wait until the socket has data (or failed), at most ``timeout``
        seconds (None: no limit)."""
        if isinstance(self._sock, ssl.SSLSocket):
            with self._tls_lock or _NO_LOCK:
                if self._sock.pending():
                    return True
        poller = select.poll()
        try:
            poller.register(self._sock.fileno(), select.POLLIN)  # type: ignore[attr-defined]
            return bool(poller.poll(None if timeout is None else max(0.0, timeout) * 1000))
        except (OSError, ValueError):
            return True  # a closed socket: let recv report it
