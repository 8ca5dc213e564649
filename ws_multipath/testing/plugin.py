"""The pytest plugin of ``ws_multipath.testing`` (registered through the
package's ``pytest11`` entry point): the ``multipath_server`` fixture."""

from __future__ import annotations

import threading
import time
from typing import Iterator

import pytest

from ..server import MultipathServer

__all__ = ["multipath_server"]

_LEFT_BEHIND_WAIT = 5.0  # seconds for connection threads to end after close()


@pytest.fixture
def multipath_server() -> Iterator[MultipathServer]:
    """A fresh ``MultipathServer(port=0, host="127.0.0.1")``, closed after
    the test; the test fails if a thread of one of its connections is
    still running a few seconds after the close."""
    before = set(threading.enumerate())
    server = MultipathServer(port=0, host="127.0.0.1")
    try:
        yield server
    finally:
        server.close()
    deadline = time.monotonic() + _LEFT_BEHIND_WAIT
    while True:
        left = [t for t in threading.enumerate() if t not in before and t.name.startswith("ws_multipath") and t.is_alive()]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert not left, f"threads left behind after server.close(): {[t.name for t in left]}"
