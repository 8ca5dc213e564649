"""Waiting for many sockets to become readable, on one thread, while other
threads add sockets to the wait: ``ReadPoller``.

On Linux it is an ``epoll`` set: a socket is added from any thread by one
``epoll_ctl`` (the kernel makes that safe beside a thread in
``epoll_wait``), so adding one never wakes the waiting thread. Elsewhere it
is a ``selectors`` selector, which only the waiting thread may change: an
added socket is queued and the waiting thread woken to register it.

A socket is in the set from ``add`` until the waiting thread ``remove``\\ s
it. One closed while in the set leaves it by itself (epoll, kqueue; a
``select()`` fails on it instead), but its number may be reused at once:
its owner must then never ``remove`` that number, as ``ParkingLot.close()``
ensures (the lot stops for good). The owner of the
poller (``http/keepalive.py``) calls every method under one lock of its
own, except ``wait``, so this class has no lock.
"""

from __future__ import annotations

import select
import selectors
import socket
from typing import Optional

__all__ = ["ReadPoller"]

_EPOLL_READ = getattr(select, "EPOLLIN", 0)  # a client's FIN makes it readable too


class ReadPoller:
    """A set of sockets waited on for reading; ``wait`` on one thread,
    ``add`` from any, ``wake`` to end a ``wait`` early. ``OSError`` from the
    constructor when no descriptor is left for it."""

    def __init__(self, use_epoll: bool = True) -> None:
        self._wake_r, self._wake_w = socket.socketpair()
        self._epoll: Optional["select.epoll"] = None
        self._selector: Optional[selectors.BaseSelector] = None
        self._queued: list[int] = []  # added, not yet registered (selector only)
        try:
            self._wake_r.setblocking(False)
            if use_epoll and hasattr(select, "epoll"):
                self._epoll = select.epoll()
                self._epoll.register(self._wake_r.fileno(), select.EPOLLIN)
            else:
                self._selector = selectors.DefaultSelector()
                self._selector.register(self._wake_r, selectors.EVENT_READ)
        except BaseException:
            self.close()
            raise

    @property
    def epoll(self) -> bool:
        return self._epoll is not None

    def add(self, fd: int) -> None:
        """Wait for ``fd`` to be readable (any thread); ``OSError`` when it cannot."""
        if self._epoll is not None:
            self._epoll.register(fd, _EPOLL_READ)
        else:
            self._queued.append(fd)
            self.wake()

    def remove(self, fd: int) -> None:
        """Stop waiting for ``fd`` (the waiting thread; before it is closed)."""
        if self._epoll is not None:
            try:
                self._epoll.unregister(fd)
            except (OSError, ValueError):
                pass
        elif fd in self._queued:
            self._queued.remove(fd)
        elif self._selector is not None:
            try:
                self._selector.unregister(fd)
            except (KeyError, ValueError, OSError):
                pass

    def take_queued(self) -> list[int]:
        """The descriptors ``add`` queued for the waiting thread (selector only)."""
        queued, self._queued = self._queued, []
        return queued

    def register_queued(self, fds: list[int]) -> None:
        """Register what ``take_queued`` returned (the waiting thread)."""
        assert self._selector is not None
        for fd in fds:
            try:
                self._selector.register(fd, selectors.EVENT_READ)
            except (KeyError, ValueError, OSError):
                pass  # closed meanwhile: its deadline unparks it

    def wait(self, timeout: float) -> list[int]:
        """The descriptors readable within ``timeout`` seconds (the waiting
        thread only); they stay in the set until removed."""
        if self._epoll is not None:
            ready = [fd for fd, _ in self._epoll.poll(timeout)]
        else:
            assert self._selector is not None
            ready = [key.fd for key, _ in self._selector.select(timeout)]
        wake = self._wake_r.fileno()
        if wake in ready:
            ready.remove(wake)
            try:
                while self._wake_r.recv(4096):
                    pass
            except OSError:
                pass
        return ready

    def wake(self) -> None:
        """End the current (or next) ``wait`` early (any thread)."""
        try:
            self._wake_w.send(b"x", socket.MSG_DONTWAIT)
        except OSError:  # full: it is awake already
            pass

    def close(self) -> None:
        for closable in (self._epoll, self._selector, self._wake_r, self._wake_w):
            if closable is not None:
                closable.close()
