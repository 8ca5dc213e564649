"""What a handshake may take: ``HeadLimits``, the server's limits on a
request before it is answered, and ``Deadline``, one connection's
handshake deadline (``open_timeout``) that drops it when it passes."""

from __future__ import annotations

import dataclasses
import socket
import threading
from typing import Any

from ..log import format_address, logger
from .proxies import TrustedProxies
from .strictness import MAX_TARGET_SIZE

__all__ = ["HeadLimits", "Deadline"]


@dataclasses.dataclass(frozen=True)
class HeadLimits:
    """What a request may take before it is answered (server options)."""

    open_timeout: float
    max_header_size: int
    max_headers: int
    proxies: TrustedProxies = dataclasses.field(default_factory=TrustedProxies)
    max_target_size: int = MAX_TARGET_SIZE


class Deadline:
    """The handshake deadline of one socket.

    ``_lock`` makes the deadline's ``shutdown`` and the owner's ``finish``
    exclusive, so the deadline never touches a descriptor that was reused.
    """

    __slots__ = ("sock", "_lock", "_done", "expired", "timer")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._lock = threading.Lock()
        self._done = False
        self.expired = False
        self.timer: Any = None

    def expire(self, address: tuple[Any, ...], timeout: float) -> None:
        """The deadline passed: drop the client (timer thread)."""
        with self._lock:
            if self._done:
                return
            self.expired = True
        logger.info("dropping %s: handshake not completed within %ss", format_address(address), timeout)
        self.abort()

    def abort(self) -> None:
        with self._lock:
            if not self._done:
                try:
                    socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
                except OSError:
                    pass

    def finish(self) -> None:
        with self._lock:
            self._done = True
        if self.timer is not None:
            self.timer.cancel()
