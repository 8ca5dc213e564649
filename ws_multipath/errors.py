"""Every exception that ws_multipath raises, in one hierarchy.

``WebSocketError`` is the root: catching it catches anything this library
raises on purpose. Argument checks raise the builtin ``TypeError`` and
``ValueError`` instead, since those mean the caller's code is wrong.
"""

from __future__ import annotations

__all__ = [
    "WebSocketError",
    "ConnectionClosed",
    "ConnectionClosedOK",
    "ConnectionClosedError",
    "ProtocolError",
    "PayloadTooBig",
    "HandshakeError",
    "HookError",
]


class WebSocketError(Exception):
    """Base class of the exceptions raised by ws_multipath."""


class ConnectionClosed(WebSocketError):
    """The connection is closed: nothing more can be sent, and nothing is left
    to receive.

    ``code`` and ``reason`` are the close code and reason of the connection:
    the ones the peer sent, the ones this side sent when it failed the
    connection, or 1006 and ``""`` when the TCP connection was lost without a
    closing handshake.
    """

    def __init__(self, code: int, reason: str = "") -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"connection closed: code {code}" + (f", reason {reason!r}" if reason else ""))


class ConnectionClosedOK(ConnectionClosed):
    """The connection was closed cleanly, with code 1000 or 1001."""


class ConnectionClosedError(ConnectionClosed):
    """The connection was closed by an error, or lost."""


def connection_closed(code: int, reason: str = "") -> ConnectionClosed:
    """Return the ``ConnectionClosed`` subclass that fits ``code``."""
    if code in (1000, 1001):
        return ConnectionClosedOK(code, reason)
    return ConnectionClosedError(code, reason)


class ProtocolError(WebSocketError):
    """The peer broke RFC 6455; the connection is failed with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"{reason} (close code {code})")


class PayloadTooBig(ProtocolError):
    """A message is larger than the handler's ``max_payload`` (close code 1009)."""

    def __init__(self, max_payload: int) -> None:
        super().__init__(1009, f"message larger than max_payload ({max_payload} bytes)")


class HandshakeError(WebSocketError):
    """An upgrade request is refused with an HTTP ``status``.

    ``headers`` are extra response headers, as ``(name, value)`` pairs.
    """

    def __init__(self, status: int, reason: str = "", headers: list[tuple[str, str]] | None = None) -> None:
        self.status = status
        self.reason = reason
        self.headers = list(headers or [])
        super().__init__(f"HTTP {status}" + (f": {reason}" if reason else ""))


class HookError(WebSocketError):
    """A hook of the opening handshake raised, or returned something invalid.

    The hooks are ``verify_client``, a callable ``allowed_origins``,
    ``handle_protocols`` and the ``'headers'`` listeners. The client got a
    500 response and this error went to the ``'error'`` listeners. ``hook``
    names the hook; ``__cause__`` is the exception it raised, if it raised.
    """

    def __init__(self, hook: str, problem: str) -> None:
        self.hook = hook
        super().__init__(f"{hook} {problem}")
