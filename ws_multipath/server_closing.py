"""The closing half of ``MultipathServer``: how it counts open connections
against ``max_connections`` and how ``close()`` ends everything.

``ServerClosing`` is a mixin of ``MultipathServer`` (``server.py``), which
makes the parts named below. The closing state (``_closing``,
``_finished``, ``_close_deadline``, ``_close_callbacks``,
``_closing_handlers``) and the connection count are guarded by the server's
``_lock``; no user code and no I/O run under it.

The order of ``close()``: stop accepting, tell the cluster and presence,
close the HTTP side (idle keep-alive connections at once, requests in
flight within ``http_graceful_timeout``), close every handler (1001 to each
connection); when the last handler and the last HTTP connection are done,
stop the shared threads (timers, flusher, sysmon), emit ``'close'`` and run
the callbacks given to ``close()``.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

from .log import logger
from .sync.dispatch import listener_thread

if TYPE_CHECKING:
    from .cluster.node import ClusterNode
    from .cluster.presence import Presence
    from .handler import WebSocketHandler
    from .http.handshake import HTTPSide
    from .http.routing import RoutingTable
    from .sync.acceptor import Acceptor
    from .sync.flusher import Flusher
    from .sync.handoff import Sysmon
    from .sync.timers import Timers

__all__ = ["ServerClosing"]


class ServerClosing:
    """Connection accounting and the closing sequence of a ``MultipathServer``."""

    # made by MultipathServer.__init__
    _lock: threading.Lock
    _max_connections: Optional[int]
    _open_connections: int
    _open_loops: int
    _routes: "RoutingTable[WebSocketHandler]"
    _wsgi_graceful: Optional[float]
    _presence: Optional["Presence"]
    _cluster: Optional["ClusterNode"]
    _acceptor: "Acceptor"
    _http: "HTTPSide"
    _timers: "Timers"
    _flusher: "Flusher"
    _sysmon: "Sysmon"

    emit: Callable[..., Any]
    _listener_failed: Callable[..., bool]

    def _init_closing(self) -> None:
        """The closing state, before the server listens."""
        self._closing_handlers: set["WebSocketHandler"] = set()
        self._close_callbacks: list[Callable[[], Any]] = []
        self._closing = False
        self._finished = False  # 'close' is being or was emitted
        self._close_deadline = 0.0  # when close() stops waiting (monotonic), set by the first call
        self._closing_event = threading.Event()
        self._closed_event = threading.Event()

    # -- connection accounting (called by handlers) -------------------------

    def _reserve_connection(self) -> bool:
        with self._lock:
            if self._closing or (self._max_connections is not None and self._open_connections >= self._max_connections):
                return False
            self._open_connections += 1
            return True

    def _release_connection(self) -> None:
        with self._lock:
            self._open_connections -= 1

    # -- closing --------------------------------------------------------------

    def close(self, callback: Optional[Callable[[], Any]] = None) -> None:
        """Stop accepting, close every connection on every path with 1001,
        wait for their closing handshakes (up to each handler's
        ``close_timeout``), then emit ``'close'`` and call ``callback()``.

        With a ``wsgi_app``: idle keep-alive connections are dropped at once,
        requests in flight finish (up to ``http_graceful_timeout``) and their
        connections close after the response.

        Idempotent. Called from a listener (which runs on a connection's
        thread) it does not wait: ``'close'`` follows once all have ended.
        """
        with self._lock:
            closed = self._closed_event.is_set()
            if callback is not None and not closed:
                self._close_callbacks.append(callback)
            starting = not self._closing
            if starting:
                self._closing = True
                self._closing_event.set()
                handlers = self._routes.handlers()  # lock order: server, then routes (as create_handler)
                self._closing_handlers.update(handlers)
                wait = max((h.options.close_timeout for h in handlers), default=0.0) + 2.0
                if self._wsgi_graceful is not None:
                    wait = max(wait, self._wsgi_graceful + 2.0)
                self._close_deadline = time.monotonic() + wait
        if closed and callback is not None:
            callback()
        if starting:
            self._routes.expect_handlers(0)  # an upgrade waiting for a handler gets its 400 now
            if self._presence is not None:
                self._presence.close()  # the others drop this process's entries now
            if self._cluster is not None:
                self._cluster.close()  # no more messages from the other processes
            self._acceptor.stop()
            self._http.close()
            for handler in handlers:
                handler.close()
            self._maybe_finish_close()
        if not getattr(listener_thread, "active", False):
            if not self._closed_event.wait(max(0.0, self._close_deadline - time.monotonic())):
                logger.warning("close(): connections still open after the close timeout (a listener may be blocking)")

    def _handler_closed(self, handler: WebSocketHandler) -> None:
        with self._lock:
            self._closing_handlers.discard(handler)
            self._open_loops -= handler.options.loops
        self._maybe_finish_close()

    def _maybe_finish_close(self) -> None:
        with self._lock:
            if not self._closing or self._closing_handlers or self._finished:
                return
            if self._http.busy():  # it calls again when its last connection ends
                return
            self._finished = True
        if self._presence is not None:
            self._presence.stop()
        self._timers.stop()
        self._flusher.stop()
        self._sysmon.stop()
        self.emit("close")
        while True:
            with self._lock:
                if not self._close_callbacks:
                    self._closed_event.set()
                    break
                callback = self._close_callbacks.pop(0)
            try:
                callback()
            except Exception as exc:  # noqa: BLE001 - user code
                self._listener_failed(exc, "close callback")
