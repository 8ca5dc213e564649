"""Connection ids: ``new_id()``, a uuid4 as 32 hex digits.

The random bytes come from ``os.urandom`` as before, but 256 ids' worth
at a time: ``getrandom(2)`` lets the GIL go, and on the head loop, where
handshakes run one after another, each such call was a chance for another
thread to take the interpreter (a fifth of the head loop's time under a
stream of new connections). ``_lock`` guards the batch and the position
in it; a forked child starts a batch of its own, so that no two processes
of a cluster hand out the same ids.
"""

from __future__ import annotations

import os
import threading

__all__ = ["new_id"]

_BATCH = 256  # ids per os.urandom call

_lock = threading.Lock()
_batch = b""
_position = 0


def new_id() -> str:
    """A new uuid4 (RFC 4122 version 4, its variant bits set) as 32 hex digits."""
    global _batch, _position
    with _lock:
        if _position >= len(_batch):
            _batch, _position = os.urandom(16 * _BATCH), 0
        raw = bytearray(_batch[_position:_position + 16])
        _position += 16
    raw[6], raw[8] = (raw[6] & 0x0F) | 0x40, (raw[8] & 0x3F) | 0x80
    return raw.hex()


def _forget_batch() -> None:
    global _batch, _position, _lock
    _lock = threading.Lock()  # the parent's may have been held by another thread at the fork
    _batch, _position = b"", 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_batch)
