"""What a handler needs of the server that made it: ``HandlerHost``.

A ``WebSocketHandler`` is given its server as a ``HandlerHost``, the narrow
interface below, not as a ``MultipathServer``: the handler does not import
the server (which imports it), so the layers stay one above the other
(server -> handler -> host). ``MultipathServer`` is the one implementation.

The members keep the server's own names; what each is:

- ``_timers``, ``_flusher``, ``_sysmon``: the server's timer thread, the
  thread that writes queued frames, and the watcher of the event loops;
- ``_directory``: open connections by id (``send_to``);
- ``_routes``: the handler table (a closed handler leaves it);
- ``_cluster``, ``_presence``: the cluster node and the presence, or None;
- ``_http``: the HTTP side, whose ``serve_upgrade`` serves a socket given
  to ``handler.handle_upgrade``;
- ``_reserve_connection``/``_release_connection``: a ``max_connections``
  slot; ``_handler_closed``: a handler finished closing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .sync.flusher import Flusher
    from .sync.handoff import Sysmon
    from .sync.timers import Timers

__all__ = ["HandlerHost"]


class HandlerHost(Protocol):
    """The server, as its handlers see it (see the module docstring)."""

    _timers: "Timers"
    _flusher: "Flusher"
    _sysmon: "Sysmon"
    _directory: Any
    _routes: Any
    _cluster: Any
    _presence: Any
    _http: Any

    @property
    def address(self) -> Any: ...

    def emit(self, event: str, *args: Any) -> bool: ...

    def _reserve_connection(self) -> bool: ...

    def _release_connection(self) -> None: ...

    def _handler_closed(self, handler: Any) -> None: ...

    def _listener_failed(self, exc: BaseException, event: str = "", origin: Any = None) -> bool: ...
