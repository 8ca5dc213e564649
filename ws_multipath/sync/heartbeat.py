"""Keepalive pings for one connection, run on the server's timer thread.

Every ``interval`` seconds a ping is posted (never blocking); if no pong
has been read ``timeout`` seconds later, ``on_timeout`` is called. Only a
pong that carries the ping's payload, 4 random bytes, answers it (as in
websockets): RFC 6455 section 5.5.3 allows unsolicited pongs, and a client
that reads nothing could otherwise keep itself alive by sending empty ones
without ever reading a ping. A pong can
only be read while some thread reads the socket, so while nobody does (a
``'connection'`` listener busy between two ``receive()`` calls) the verdict
waits for the next read.
"""

from __future__ import annotations

import os
import random
from typing import Callable, Optional

from .timers import Timer, Timers

__all__ = ["Heartbeat"]

_RECHECK = 1.0  # seconds between verdict retries while nobody reads
_SPREAD = 0.25  # the first ping comes up to this share of the interval early


class Heartbeat:
    """Ping timers of one connection. Its fields are touched by the timer
    thread and by the reader (``pong``); each is a single atomic store."""

    __slots__ = ("_timers", "_interval", "_timeout", "_send_ping", "_on_timeout", "_is_reading", "_awaiting_pong", "_payload", "_stopped", "_ping_timer", "_verdict_timer")

    def __init__(
        self,
        timers: Timers,
        interval: Optional[float],
        timeout: Optional[float],
        send_ping: Callable[[bytes], None],
        on_timeout: Callable[[], None],
        is_reading: Callable[[], bool],
    ) -> None:
        self._timers = timers
        self._interval = interval
        self._timeout = timeout
        self._send_ping = send_ping
        self._on_timeout = on_timeout
        self._is_reading = is_reading
        self._awaiting_pong = False
        self._payload = b""  # of the pings sent while a pong is awaited
        self._stopped = False
        self._ping_timer: Optional[Timer] = None
        self._verdict_timer: Optional[Timer] = None

    def start(self) -> None:
        """The first ping comes after 75% to 100% of ``interval``, at random:
        connections opened together (a reconnecting crowd, a restart) then
        ping at different moments, not in one burst per interval."""
        if self._interval is not None:
            first = self._interval * (1.0 - random.random() * _SPREAD)
            self._ping_timer = self._timers.call_later(first, self._ping)

    def pong(self, payload: bytes) -> None:
        if payload == self._payload:
            self._awaiting_pong = False

    def stop(self) -> None:
        self._stopped = True
        for timer in (self._ping_timer, self._verdict_timer):
            if timer is not None:
                timer.cancel()

    def _ping(self) -> None:
        if self._stopped:
            return
        if self._timeout is not None and not self._awaiting_pong:
            self._payload = os.urandom(4)
            self._awaiting_pong = True
            if self._verdict_timer is not None:
                self._verdict_timer.cancel()  # the last ping's, answered: one verdict pending at a time
            self._verdict_timer = self._timers.call_later(self._timeout, self._verdict)
        self._send_ping(self._payload)
        self._ping_timer = self._timers.call_later(self._interval, self._ping)  # type: ignore[arg-type]

    def _verdict(self) -> None:
        if self._stopped or not self._awaiting_pong:
            return
        if not self._is_reading():
            self._verdict_timer = self._timers.call_later(_RECHECK, self._verdict)
            return
        self._on_timeout()
