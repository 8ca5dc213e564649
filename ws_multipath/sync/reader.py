"""Who reads a connection's socket, and on which thread.

A connection is read in one of three modes:

- LOOP: the connection is in its handler's event loop (``loop.py``): the
  loop's thread reads it when it is readable and calls its listeners
  inline. This is where a connection lives once its ``'connection'``
  listeners have returned; it costs no thread of its own.
- PULLING: a ``'connection'`` listener that calls ``receive()`` (the
  ``for message in ws`` style) reads on its own thread, the request thread,
  for as long as it waits: no hand-off, no loop.
- IDLE: nobody reads. While a ``'connection'`` listener is busy between two
  ``receive()`` calls, or has not called it yet, a watchdog on the timer
  thread checks the socket; when data has waited for ``TAKEOVER_AFTER``
  seconds the connection joins its loop (LOOP) early, so pings, close
  frames and messages are never left unread for long; its messages then
  wait in the inbox for ``receive()``. Events that ``receive()`` read
  ahead and left waiting (a close frame read with the message it
  returned), and the frames that came with the handshake (not parsed
  before the first read: ``_begin``), count as data waiting: the client's close is so answered
  within ``TAKEOVER_AFTER`` even if the code never calls ``receive()``
  again (and an answer it sends later fails, as in websockets).

In LOOP mode the connection is read by tasks its loop runs, one thread at
a time; when a listener blocks, the loop goes on on another thread and the
stuck one becomes the connection's dispatcher: ``loop_reading.py``, the
loop's side of this class.

``_lock`` guards the mode, the runner, the hand-off, the flags and the
watchdog; it is never held while reading, calling back, or taking the
loop's lock (the loop takes it inside its own: ``hand_off``).
"""

from __future__ import annotations

import contextlib
import enum
import select
import socket
import ssl
import threading
import time
from typing import TYPE_CHECKING, Callable, Optional

from .dispatch import Dispatcher
from .loop_reading import RECV_MIN, LoopReading
from .timers import Timer, Timers

if TYPE_CHECKING:
    from .holding import Holding
    from .loop import EventLoop

__all__ = ["SocketReader", "TAKEOVER_AFTER"]

_NO_LOCK = contextlib.nullcontext()

#: Seconds that received data may wait unread before the loop takes over.
TAKEOVER_AFTER = 1.0

class Mode(enum.Enum):
    IDLE = "idle"
    PULLING = "pulling"
    LOOP = "loop"


class SocketReader(LoopReading):
    """Reads one socket and hands each chunk to ``feed``.

    ``begin`` runs once, before the first read; ``resume`` acts on events
    held back (a full inbox, a puller's read-ahead); ``finish`` runs once,
    when reading ends (EOF, error, or the socket shut down by another
    thread), on the thread that read last, after the loop let go of the
    socket.
    """

    __slots__ = (
        "_sock", "_fd", "_tls", "_tls_lock", "_timers", "_loop", "_feed", "_begin", "_resume", "_finish",
        "_recv_size", "_lock", "_mode", "_home", "_runner", "_in_listener", "_began", "_done", "_held", "_paused",
        "_deferred", "_aborted", "_eof_queued", "_registered", "_idle_since", "_watchdog", "_max_queue", "dispatcher", "_sealed",
        "_plain_feed", "_holder", "_want_write", "_first_data",
    )

    def __init__(
        self,
        sock: socket.socket,
        timers: Timers,
        loop: "EventLoop",
        feed: Callable[[bytes], None],
        begin: Callable[[], None],
        resume: Callable[[], None],
        finish: Callable[[], None],
        holder: "Holding",
        max_queue: int = 16,
        tls_lock: Optional[threading.Lock] = None,
    ) -> None:
        self._sock = sock
        self._fd = sock.fileno()
        self._tls = isinstance(sock, ssl.SSLSocket)
        self._tls_lock = tls_lock  # the transport's: one thread at a time in the SSL object
        self._timers = timers
        self._loop = loop
        self._feed = feed  # feed_paused while paused (loop_reading.py)
        self._plain_feed = feed
        self._holder = holder
        self._begin = begin
        self._resume = resume
        self._finish = finish
        self._recv_size = RECV_MIN
        self._lock = threading.Lock()
        self._mode = Mode.IDLE
        self._home = threading.get_ident()  # an ident: a Thread object would outlive its thread here
        self._runner: Optional[threading.Thread] = None  # the thread in a task of this connection (LOOP)
        self._in_listener = False  # the runner is inside a listener call
        self._began = False
        self._first_data = False  # frames came with the handshake: data that waits until _begin
        self._done = False
        self._held = False  # no room for the next message (inbox or dispatcher full)
        self._paused = False  # ws.pause()
        self._deferred = False  # a task came while another thread still ran one: run it when that ends
        self._aborted = False  # the socket was shut down: read to the end whatever holds it
        self._eof_queued = False  # the end waits behind the dispatcher's calls: nothing more to read
        self._registered = 0  # the events watched in the loop's selector, 0: none (changed by the loop's owner only)
        self._want_write = False  # TLS: OpenSSL must write before it reads on (loop_reading.py)
        self._idle_since = time.monotonic()
        self._watchdog: Optional[Timer] = None
        self._max_queue = max_queue
        #: Set while a thread that lost the loop in a listener runs this
        #: connection's queued listener calls (``dispatch.py``).
        self.dispatcher: Optional[Dispatcher] = None
        self._sealed = False  # closing: a dispatcher made from now on starts sealed

    def _in_loop(self) -> bool:
        return self._mode is Mode.LOOP

    @property
    def pulling(self) -> bool:
        return self._mode is Mode.PULLING

    @property
    def paused(self) -> bool:
        return self._paused

    def reading(self) -> bool:
        """True while the socket is being read (so an unanswered ping means something)."""
        mode = self._mode
        if mode is Mode.LOOP:
            if self._done or self._aborted or not (self._held or (self._paused and not self._sealed)):
                return True
            return not self._eof_queued and self._holder.ahead_room()  # held back, it still reads ahead
        return mode is Mode.PULLING or self._done

    def on_reading_thread(self) -> bool:
        """True on a thread that runs this connection's listeners now (a
        ``receive()`` there would wait for itself)."""
        current = threading.current_thread()
        dispatcher = self.dispatcher
        if dispatcher is not None and dispatcher.thread is current:
            return True
        if self._mode is Mode.PULLING:
            return threading.get_ident() == self._home
        return self._runner is current

    def feed_first(self, data: bytes) -> None:
        """What came with the handshake, before the first read: as what is
        read later (held back while ``pause()`` holds the loop's reading;
        ``receive()`` takes it regardless)."""
        (self._feed if self._mode is Mode.LOOP else self._plain_feed)(data)

    # -- joining the loop -----------------------------------------------------

    def serve(self) -> bool:
        """On the home thread once its ``'connection'`` listeners returned:
        the connection goes on in its loop. True when the loop owns the
        socket now; False when the connection ended here."""
        with self._lock:
            self._cancel_watchdog()
            if self._done:
                return False
            join = self._mode is not Mode.LOOP
            self._mode = Mode.LOOP
        if join:
            return self._join_loop()
        return True

    def _join_loop(self) -> bool:
        if self._loop.call_soon(self, self._first_task):
            return True
        with self._lock:  # the loop stopped (the server closed meanwhile): end here
            self._mode = Mode.PULLING
        self._end()
        return False

    def _first_task(self) -> None:
        if self._claim():
            try:
                if not self._began:
                    self._began = True
                    self._begin()  # what came with the handshake: a listener may lose the loop in it
                if self._runner is threading.current_thread():
                    if not self._paused or self._sealed:
                        self._resume()
                    self._read_decrypted()
            finally:
                self._release()
        self._sync()

    def seal(self) -> None:
        """The connection is closing: nothing may hold the reader back from
        the close frame any more, not even ``pause()`` (the events it held
        are acted on: messages discarded, the client's close answered)."""
        with self._lock:
            self._sealed = True
            dispatcher = self.dispatcher
            paused = self._paused
            self._feed = self._plain_feed
        if dispatcher is not None:
            dispatcher.seal()
        self.room()
        if paused and self._in_loop():
            self._loop.call_soon(self, self._continue)
    # -- the end ----------------------------------------------------------------

    def _end(self) -> None:
        """Reading is over: the loop lets go of the socket, then ``finish``."""
        with self._lock:
            if self._done:
                return
            self._done = True
            self._cancel_watchdog()
            loop = self._mode is Mode.LOOP
        if loop:
            self._loop.release(self, self._finish)
        else:
            self._finish()

    # -- PULLING ------------------------------------------------------------------

    def claim_pull(self) -> bool:
        """Become the reader on the home thread, if nobody reads; True if so."""
        if threading.get_ident() != self._home:
            return False
        with self._lock:
            if self._mode is not Mode.IDLE or self._done:
                return False
            self._mode = Mode.PULLING  # a pending watchdog finds it so and lets it be: no timer churn per receive()
            return True

    def pull_once(self, deadline: Optional[float]) -> None:
        """Read once, waiting for data at most until ``deadline``
        (``TimeoutError`` then). Ends the connection on EOF. The first call
        only begins (which may already deliver what came with the handshake)."""
        if not self._began:
            self._began = True
            self._begin()
            return
        if deadline is not None and not self._readable(deadline - time.monotonic()):
            raise TimeoutError("no message in time")
        try:
            data = self._recv_blocking()
        except OSError:
            data = b""
        except BaseException:
            self._end()
            raise
        if data:
            self._plain_feed(data)  # receive() reads regardless of pause()
        else:
            self._end()

    def _recv_blocking(self) -> bytes:
        size = self._recv_size
        if not self._tls:
            data = self._sock.recv(size)
        else:  # the transport keeps a TLS socket non-blocking: wait for it here
            while True:
                try:
                    with self._tls_lock or _NO_LOCK:
                        data = self._sock.recv(size)
                    break
                except ssl.SSLWantReadError:
                    self._readable(None)
                except ssl.SSLWantWriteError:
                    select.select([], [self._sock], [], 1.0)
        self._adapt(len(data), size)
        return data

    def release_pull(self) -> None:
        """Stop pulling; the watchdog watches the socket meanwhile."""
        with self._lock:
            if self._mode is Mode.PULLING:
                self._mode = Mode.IDLE
                self._idle_since = time.monotonic()
                self._arm_watchdog(TAKEOVER_AFTER)

    # -- IDLE: the watchdog (timer thread) ------------------------------------------

    def watch(self, first_data: bool = False) -> None:
        """Start watching the socket while the ``'connection'`` listeners run
        (``first_data``: frames came with the handshake, which wait as well)."""
        with self._lock:
            self._first_data = first_data
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
        if not self._holder.waiting() and not (self._first_data and not self._began) and not self._readable(0):
            with self._lock:
                if self._mode is Mode.IDLE:
                    self._arm_watchdog(TAKEOVER_AFTER)
            return
        with self._lock:
            if self._mode is not Mode.IDLE or self._done:
                return
            self._mode = Mode.LOOP
        self._join_loop()

    def _readable(self, timeout: Optional[float]) -> bool:
        """Wait until the socket has data (or failed), at most ``timeout``
        seconds (None: no limit)."""
        if self._tls:
            with self._tls_lock or _NO_LOCK:
                if self._sock.pending():  # type: ignore[attr-defined]
                    return True
        poller = select.poll()
        try:
            poller.register(self._sock.fileno(), select.POLLIN)
            return bool(poller.poll(None if timeout is None else max(0.0, timeout) * 1000))
        except (OSError, ValueError):
            return True  # a closed socket: let recv report it
