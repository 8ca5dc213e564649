"""A connection's side of its event loop: ``LoopReading``, the part of
``SocketReader`` (``reader.py``) that runs on the loop.

A connection in LOOP mode is read by tasks that the loop runs (``loop.py``):
``on_ready`` when its socket is readable, and calls (``_continue``, the
first task). A task runs on one thread at a time, the connection's
*runner*; a task that finds another thread still running one (a thread that
lost the loop while in it) is deferred until that thread is done, and the
socket is not watched meanwhile, so the loop never spins on it.

The loop watches the socket exactly while ``_wants_reading``: while the
next message has no room (``hold``/``room``: the inbox or the dispatcher is
full) or ``pause()`` holds it, only as long as the events that wait have
room to read ahead (``holding.py``: a bounded amount, so that the client's
pings and pongs are still seen); without limit once the socket was shut
down (``aborted``: then it is read to its end whatever holds it). While
paused, what is read goes to ``Holding.feed_paused`` (``_feed`` is swapped,
so that the per-read path tests nothing).

When a listener keeps the runner so long that the loop is handed off
(``handoff.py``), ``hand_off`` moves the connection's reading to the loop
as well, and the stuck thread becomes its dispatcher (``dispatch.py``).

The fields are ``SocketReader``'s (declared there, with ``__slots__``);
``_lock`` guards the runner, the flags and the hand-off.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import ssl
import threading
from typing import TYPE_CHECKING, Callable, Optional

from .dispatch import Dispatcher
from .sockets import recv_nowait

if TYPE_CHECKING:
    from .holding import Holding
    from .loop import EventLoop

__all__ = ["LoopReading", "RECV_MIN"]

_NO_LOCK = contextlib.nullcontext()

# recv() sizes: CPython allocates the full size for every call, so a large
# fixed size costs an allocation (and page faults) per small message. Start
# small, grow while reads fill the buffer (bulk transfers), shrink back when
# they stop. The smallest size keeps the buffer (a bytes object: 33 bytes of
# header) in pymalloc, which serves requests up to 512 bytes: larger ones
# come from glibc's malloc, whose per-thread caches grew without end when
# hundreds of threads each shrank their buffers.
RECV_MIN = 512 - 33
_RECV_MAX = 64 * 1024  # larger reads are over glibc's mmap threshold: 16 us each instead of 2.5 (strace)

#: TLS records decrypted per task before the loop turns to other connections.
_TLS_READS_PER_TASK = 16


class LoopReading:
    """The loop's side of one connection's reading (see above)."""

    if TYPE_CHECKING:  # SocketReader's fields (its __slots__) and methods used here
        _sock: socket.socket
        _fd: int
        _tls: bool
        _tls_lock: Optional[threading.Lock]
        _loop: "EventLoop"
        _feed: Callable[[bytes], None]
        _plain_feed: Callable[[bytes], None]
        _holder: "Holding"
        _resume: Callable[[], None]
        _recv_size: int
        _lock: threading.Lock
        _runner: Optional[threading.Thread]
        _in_listener: bool
        _done: bool
        _held: bool
        _paused: bool
        _deferred: bool
        _aborted: bool
        _eof_queued: bool
        _registered: int
        _want_write: bool
        _sealed: bool
        _max_queue: int
        dispatcher: Optional[Dispatcher]

        def _in_loop(self) -> bool: ...
        def _end(self) -> None: ...
    else:
        __slots__ = ()  # the state is in SocketReader's slots

    # -- listener calls on the runner (incoming.py) ----------------------------

    def enter_listener(self) -> None:
        self._in_listener = True

    @property
    def in_listener(self) -> bool:
        """True while the runner is inside one of this connection's listeners."""
        return self._in_listener

    def leave_listener(self) -> bool:
        """After a listener call on the runner: False when the connection's
        reading was handed off meanwhile (the caller stops acting on it)."""
        with self._lock:
            self._in_listener = False
            dispatcher = self.dispatcher
        return dispatcher is None or dispatcher.thread is not threading.current_thread()

    # -- tasks on the loop ------------------------------------------------------

    def on_ready(self, me: threading.Thread) -> None:
        """The loop found the socket readable: read what is there and act on
        it (``me``: the loop's thread that runs this). The claim takes the
        lock: a task run off the loop (a burst) and the loop's next owner may
        both find the socket ready."""
        if not self._claim(me):
            return
        try:
            if self._tls:
                self._read_some()
            else:  # _read_some's one read, inline (the hot path)
                size = self._recv_size
                try:
                    data = recv_nowait(self._sock, size)
                except OSError:
                    data = b""
                if data is None:
                    return
                received = len(data)
                if received == size or (size > RECV_MIN and received < size >> 3):  # _adapt would change it
                    self._adapt(received, size)
                if received:
                    self._feed(data)
                else:
                    self._at_eof()
        finally:
            with self._lock:  # _release, inline
                if self._runner is me:
                    self._runner = None
                deferred, self._deferred = self._deferred, False
            if deferred:
                self._loop.call_soon(self, self._continue)

    def _continue(self) -> None:
        """A task: act on the events held back, then read again if nothing holds."""
        if self._claim():
            try:
                if not self._paused or self._sealed:  # read ahead while paused, they wait for resume()
                    self._resume()
                self._read_decrypted()
            finally:
                self._release()
        self._sync()

    def _read_decrypted(self) -> None:
        """TLS: read what the SSL object already decrypted (a record longer
        than the last read), which the selector cannot see: it would wait
        there until the client sent more."""
        if self._tls and self._still_reading():
            with self._tls_lock or _NO_LOCK:
                pending = self._sock.pending()  # type: ignore[attr-defined]
            if pending:
                self._read_some()

    def _still_reading(self) -> bool:
        """True while this thread should go on reading: it is still the
        runner (not handed off in a listener) and nothing holds the reader."""
        return self._runner is threading.current_thread() and self._wants_reading()

    def _claim(self, me: Optional[threading.Thread] = None) -> bool:
        """Become the runner (``me``: this thread, when the caller knows
        it); False (and the task deferred) while another thread still runs
        one, or once ended."""
        with self._lock:
            if self._done:
                return False
            if self._runner is not None:
                self._deferred = True
                deferred = True
            else:
                self._runner = me or threading.current_thread()
                deferred = False
        if deferred:
            self._sync()  # stop watching: no busy loop while the other thread finishes
        return not deferred

    def _release(self) -> None:
        with self._lock:
            if self._runner is threading.current_thread():
                self._runner = None
            deferred, self._deferred = self._deferred, False
        if deferred:
            self._loop.call_soon(self, self._continue)

    def _read_some(self) -> None:
        for _ in range(_TLS_READS_PER_TASK):
            data = self._recv_nowait()
            if data is None:
                return
            if not data:
                self._at_eof()
                return
            self._feed(data)
            if not self._tls or not self._still_reading():  # a hand-off: the loop reads from here
                return
            with self._tls_lock or _NO_LOCK:
                if not self._sock.pending():  # type: ignore[attr-defined]
                    return
        self._loop.call_soon(self, self._continue)  # more decrypted data: after the others' turn

    def _recv_nowait(self) -> Optional[bytes]:
        """Read without waiting: None when nothing is there yet, b"" at the end."""
        size = self._recv_size
        try:
            if self._tls:
                with self._tls_lock or _NO_LOCK:
                    data = self._sock.recv(size)
            else:
                data = self._sock.recv(size, socket.MSG_DONTWAIT)
        except (BlockingIOError, ssl.SSLWantReadError):
            if self._want_write:  # the write OpenSSL wanted went out: watch for reading again
                self._want_write = False
                self._sync()
            return None
        except ssl.SSLWantWriteError:
            self._await_writable()
            return None
        except OSError:
            return b""
        self._adapt(len(data), size)
        return data

    def _await_writable(self) -> None:
        """TLS: OpenSSL must write before it can read on (a renegotiation
        or an alert, with the socket's send buffer full). Readability says
        nothing about that, and the data left readable would have the loop
        call this again at once (a busy loop for as long as the client does
        not read): watch the socket for writability instead, then read."""
        self._want_write = True
        self._sync()

    def _adapt(self, received: int, size: int) -> None:
        if received == size:
            self._recv_size = min(size * 4, _RECV_MAX)
        elif size > RECV_MIN and received < size >> 3:
            self._recv_size = size >> 1

    def _at_eof(self) -> None:
        """The end of the stream: the connection ends, after the events
        read ahead while held or paused (``holding.py``), if any wait: also
        just after room was made, before the task that acts on them ran."""
        if not self._aborted and self._holder.queue_end():
            self._eof_queued = True
            self._sync()  # an EOF stays readable: stop watching
            return
        self.end_in_order()

    def end_in_order(self) -> None:
        """The end of the stream reached (on the runner): the connection
        ends; while it is open, after the listener calls queued for its
        dispatcher (a client's close frame may be among them, whose echo
        must go out first)."""
        dispatcher = self.dispatcher
        if dispatcher is not None and dispatcher.thread is not threading.current_thread() and not self._sealed:
            self._eof_queued = True
            self._sync()  # an EOF stays readable: stop watching
            if dispatcher.call(self._end, bounded=False):
                return
        self._end()

    def _wants_reading(self) -> bool:
        if not self._in_loop() or self._done or self._deferred or self._eof_queued:
            return False
        return self._aborted or not (self._held or (self._paused and not self._sealed)) or self._holder.ahead_room()

    def _sync(self) -> None:
        """Have the loop watch the socket exactly while it should be read."""
        self._loop.sync(self)

    def resync(self) -> None:
        """The read-ahead filled up (``holding.py``): stop watching if held."""
        if self._in_loop():
            self._sync()

    def sync_on_loop(self, selector: selectors.BaseSelector) -> None:
        """On the loop's owner, under the loop's lock: register or
        unregister the socket to match ``_wants_reading``."""
        want = self._wants_reading()
        if want:
            events = selectors.EVENT_WRITE if self._want_write else selectors.EVENT_READ
            if self._registered == events:
                return
            try:
                try:
                    if self._registered:
                        selector.modify(self._fd, events, self)
                    else:
                        selector.register(self._fd, events, self)
                except KeyError:  # a stale entry of this descriptor's (or none): take it over
                    if self._registered:
                        selector.register(self._fd, events, self)
                    else:
                        selector.modify(self._fd, events, self)
            except (OSError, ValueError):  # closed meanwhile: the reader sees the end
                return
            self._registered = events
        elif self._registered:
            self.unregister_on_loop(selector)

    # -- backpressure and pause (incoming.py, the application's threads) --------

    def hold(self) -> None:
        """No room for the next message: stop reading until ``room``."""
        self._held = True
        if self._in_loop():
            self._sync()

    def room(self) -> None:
        """The inbox or the dispatcher made room (any thread): read again."""
        with self._lock:
            if not self._held:
                return
            self._held = False
            loop = self._in_loop() and not self._done
        if loop:
            self._loop.call_soon(self, self._continue)

    def pause(self) -> None:
        with self._lock:
            self._paused = True
            if not self._sealed:  # closing: pause() holds nothing back any more (seal)
                self._feed = self._holder.feed_paused
            loop = self._in_loop() and not self._done
        if loop:
            self._sync()

    def resume_reading(self) -> None:
        with self._lock:
            if not self._paused:
                return
            self._paused = False
            self._feed = self._plain_feed
            loop = self._in_loop() and not self._done
        if loop:
            self._loop.call_soon(self, self._continue)

    def aborted(self) -> None:
        """The socket was shut down (any thread): read on to its end, so
        that the connection finishes even while held or paused."""
        with self._lock:
            if self._aborted or self._done:
                return
            self._aborted = True
            loop = self._in_loop()
            end_now = self._eof_queued  # its end waited for a blocked listener: no longer
        if end_now:
            self._loop.call_soon(self, self._end)
        elif loop:
            self._loop.call_soon(self, self._continue)

    # -- the hand-off (the sysmon, under the loop's lock) -------------------------

    def hand_off(self, stuck: threading.Thread) -> Optional[Callable[[], None]]:
        """The loop was taken from ``stuck`` while it ran a task of this
        connection. If it was inside a listener, this connection's reading
        moves to the loop and ``stuck`` becomes its dispatcher: returns the
        task that acts on the events it had not reached."""
        with self._lock:
            current = self.dispatcher
            if self._runner is not stuck or not self._in_listener or self._done or (current is not None and not current.dissolved):
                return None
            self.dispatcher = Dispatcher(self._max_queue, stuck, self.room)
            if self._sealed:
                self.dispatcher.seal()
            self._runner = None
        return self._continue

    def run_dispatcher(self, me: threading.Thread) -> None:
        """On a thread that lost the loop in one of this connection's tasks:
        run the listener calls queued for it meanwhile, then let it go."""
        dispatcher = self.dispatcher
        if dispatcher is None or dispatcher.thread is not me:
            return
        dispatcher.run()
        with self._lock:
            if self.dispatcher is dispatcher:
                self.dispatcher = None

    def unregister_on_loop(self, selector: selectors.BaseSelector) -> None:
        if self._registered:
            self._registered = 0
            try:
                selector.unregister(self._fd)
            except (KeyError, ValueError, OSError):
                pass
