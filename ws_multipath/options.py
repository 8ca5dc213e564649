"""The options of ``create_handler``, checked once, with their defaults.

Names follow ``ws``'s ``WebSocketServer`` options in snake_case; the ones
``ws`` lacks (heartbeat, queue and write limits) follow ``websockets``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, Optional, Sequence, TypedDict, Union

from .protocol.deflate import DeflateSettings

__all__ = ["HandlerOptions", "HandlerOptionsDict"]

MiB = 1024 * 1024
NO_LIMIT = 2**63  # max_payload 0 or None: the parsers' way of saying no limit

#: Options that belong to the MultipathServer, not to a handler (as in ws-multipath).
_SERVER_OPTIONS = ("port", "host", "server")


@dataclass(frozen=True)
class HandlerOptions:
    """Options of one path's handler. See README.rst for each default's reason.

    - ``max_payload``: largest message accepted, in bytes (after
      decompression; a fragmented one has at most max_payload // 64 frames); larger ones fail with 1009. 16 MiB.
      ``0`` or None: no limit (as ws's ``maxPayload: 0``).
    - ``max_fragments``: most frames one fragmented message may have; past
      it the connection fails with 1009. None: ``max_payload // 64``
      (262,144 by default), which bounds the work of one message; with no
      ``max_payload``, set it.
    - ``max_queue``: messages held for ``receive()`` before the connection
      stops reading from the socket. 16.
    - ``handle_protocols``: ``(protocols, request) -> str | None`` picks the
      subprotocol; by default the client's first one is chosen (as ``ws``).
      Returning one the client did not offer is a hook failure (below).
    - ``verify_client``: ``(request) -> result`` where ``result`` is a
      truthy or falsy value, or ``(ok,)``, ``(ok, status)`` or
      ``(ok, status, reason)`` with an int ``status`` in 400-599 (default
      401) and a str ``reason`` (the response body). A falsy ``ok`` refuses
      the upgrade with that status. It may also raise
      ``HandshakeError(status, reason, headers=[...])`` to send exactly that
      response (3xx-5xx, so redirects with a ``Location`` header work).
    - ``allowed_origins``: list of allowed ``Origin`` values, or a callable
      ``(origin) -> bool``; other origins get 403. None allows all.

    Hook failures: when ``handle_protocols``, ``verify_client`` or a callable
    ``allowed_origins`` raises, or returns something not described above
    (an empty or longer tuple, a non-int or out-of-range status, a raised
    ``HandshakeError`` with a 1xx/2xx status or a header that cannot be
    sent), the client gets 500 and a ``HookError`` naming the hook, with the
    original exception as its ``__cause__``, goes to the handler's
    ``'error'`` listeners (then the server's, then the log).

    - ``client_tracking``: keep ``handler.clients``. True.
    - ``per_message_deflate``: False, True or a dict (see ``DeflateSettings``).
    - ``skip_utf8_validation``: replace invalid UTF-8 in text instead of
      failing with 1007. False.
    - ``auto_pong``: answer pings. True.
    - ``close_timeout``: seconds to wait for the peer's close frame. 10.
    - ``ping_interval`` / ``ping_timeout``: heartbeat; a client that does not
      answer a ping within ``ping_timeout`` is dropped with 1011. 20 / 20;
      None turns either off.
    - ``write_timeout``: longest a write may wait without progress (the
      client taking 64 KiB, or the rest of the frame) before the connection
      is dropped with 1011; a steady slow reader gets large messages whole.
      10; None waits forever.
    - ``should_handle``: ``(request) -> bool``, ws's ``shouldHandle``: run
      first, before the other hooks; a falsy result refuses the upgrade with
      400. A failure is a hook failure (500).
    - ``websocket_class``: a subclass of ``WebSocket`` that every connection
      of the handler is made of (ws's ``WebSocket`` option). Its
      ``__init__`` is the library's: add behaviour and attributes, not
      arguments.
    - ``presence``: keep this path's connections in presence
      (``handler.presence()``, the ``'join'`` and ``'leave'`` events,
      ``ws.set_presence``), across the processes sharing the server's
      broker. False.
    - ``loops``: event loops that run the handler's open connections
      (``sync/loop.py``), each on one thread at a time. 1; more pay off
      on a free-threaded Python, where they run in parallel.
    """

    max_payload: Optional[int] = 16 * MiB
    max_fragments: Optional[int] = None
    max_queue: int = 16
    handle_protocols: Optional[Callable[[list[str], Any], Optional[str]]] = None
    verify_client: Optional[Callable[[Any], Any]] = None
    allowed_origins: Optional[Union[Sequence[str], Callable[[Optional[str]], bool]]] = None
    client_tracking: bool = True
    per_message_deflate: Optional[DeflateSettings] = None
    skip_utf8_validation: bool = False
    auto_pong: bool = True
    close_timeout: float = 10.0
    ping_interval: Optional[float] = 20.0
    ping_timeout: Optional[float] = 20.0
    write_timeout: Optional[float] = 10.0
    should_handle: Optional[Callable[[Any], Any]] = None
    websocket_class: Optional[type] = None
    presence: bool = False
    loops: int = 1

    @property
    def payload_limit(self) -> int:
        """``max_payload`` as the parsers take it (no limit: 2**63)."""
        return self.max_payload or NO_LIMIT

    @classmethod
    def from_kwargs(cls, **options: Any) -> "HandlerOptions":
        """Build from ``create_handler`` keyword arguments, checking each."""
        for name in _SERVER_OPTIONS:
            if name in options:
                raise TypeError(f"{name!r} is not a handler option: it comes from the MultipathServer")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown handler option(s): {', '.join(unknown)}")
        if "per_message_deflate" in options:
            options["per_message_deflate"] = DeflateSettings.from_option(options["per_message_deflate"])
        result = cls(**options)
        result._check()
        return result

    def _check(self) -> None:
        if self.max_payload is not None and self.max_payload != 0:
            _positive_int("max_payload", self.max_payload)
        _positive_int("max_queue", self.max_queue)
        _positive_int("loops", self.loops)
        if self.max_fragments is not None:
            _positive_int("max_fragments", self.max_fragments)
        if self.websocket_class is not None:
            from .sync.connection import WebSocket

            if not isinstance(self.websocket_class, type) or not issubclass(self.websocket_class, WebSocket):
                raise TypeError(f"websocket_class must be a subclass of WebSocket, not {self.websocket_class!r}")
        for name in ("handle_protocols", "verify_client", "should_handle"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise TypeError(f"{name} must be callable, not {type(value).__name__}")
        if self.allowed_origins is not None and not callable(self.allowed_origins):
            if isinstance(self.allowed_origins, str) or not all(isinstance(o, str) for o in self.allowed_origins):
                raise TypeError("allowed_origins must be a list of origin strings or a callable")
        for name in ("client_tracking", "skip_utf8_validation", "auto_pong", "presence"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, not {type(getattr(self, name)).__name__}")
        _seconds("close_timeout", self.close_timeout, allow_none=False)
        for name in ("ping_interval", "ping_timeout", "write_timeout"):
            _seconds(name, getattr(self, name), allow_none=True)

    def origin_allowed(self, origin: Optional[str]) -> bool:
        if self.allowed_origins is None:
            return True
        if callable(self.allowed_origins):
            return bool(self.allowed_origins(origin))
        return origin is not None and origin in self.allowed_origins


class HandlerOptionsDict(TypedDict, total=False):
    """The keyword arguments of ``create_handler``, for type checkers: a
    misspelt option (``ping_intervall=5``) is an error before it runs (and a
    ``TypeError`` when it runs). Kept equal to ``HandlerOptions``' fields."""

    max_payload: Optional[int]
    max_fragments: Optional[int]
    max_queue: int
    handle_protocols: Optional[Callable[[list[str], Any], Optional[str]]]
    verify_client: Optional[Callable[[Any], Any]]
    allowed_origins: Optional[Union[Sequence[str], Callable[[Optional[str]], bool]]]
    client_tracking: bool
    per_message_deflate: Union[bool, dict[str, Any], DeflateSettings, None]
    skip_utf8_validation: bool
    auto_pong: bool
    close_timeout: float
    ping_interval: Optional[float]
    ping_timeout: Optional[float]
    write_timeout: Optional[float]
    should_handle: Optional[Callable[[Any], Any]]
    websocket_class: Optional[type]
    presence: bool
    loops: int


def _positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, not {value!r}")


def _seconds(name: str, value: Any, *, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a number of seconds > 0{' or None' if allow_none else ''}, not {value!r}")
