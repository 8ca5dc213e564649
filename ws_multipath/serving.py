"""Waiting for a server to close, with SIGTERM and Ctrl-C closing it
gracefully (``serve_forever``), and how a listening address is written."""

from __future__ import annotations

import signal
import threading
from typing import Any, Callable

__all__ = ["wait_closed", "format_listen_address"]


def wait_closed(closed: threading.Event, close: Callable[[], None]) -> None:
    """Block until ``closed`` is set; SIGTERM or Ctrl-C call ``close()``
    (SIGTERM only when called on the main thread, where Python runs signal
    handlers; the previous handler is restored)."""
    restore = None
    if threading.current_thread() is threading.main_thread():
        restore = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        # A timed wait, not wait(): the kernel may deliver SIGTERM or SIGINT
        # to any thread (the accept or timer thread), and then nothing
        # interrupts the main thread's wait; Python runs the handler when
        # the wait returns, within 0.5 s (socketserver polls the same way).
        while not closed.wait(0.5):
            pass
    except (KeyboardInterrupt, _Terminated):
        close()
    finally:
        if restore is not None:
            signal.signal(signal.SIGTERM, restore)


class _Terminated(Exception):
    """Raised in the main thread by SIGTERM while ``serve_forever`` waits."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise _Terminated()


def format_listen_address(address: Any) -> str:
    """``host:port`` (``[::1]:8000``; ``*:8000`` for every interface) or a Unix socket's path."""
    if isinstance(address, tuple):
        host = address[0] or "*"
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return str(address)
