"""A small, thread-safe event emitter, shaped like Node's ``EventEmitter``.

The server, each handler and each connection are emitters. Listeners are
called in the order they were added, on the thread that emits, never while
the emitter's lock is held, so a listener may add or remove listeners, emit,
or close things without deadlocking.

What a listener raises never propagates into the library's threads: it goes
to the ``'error'`` listeners of the same emitter, or, when it has none, up to
its parent (connection -> handler -> server), and is logged with its
traceback on the ``ws_multipath`` logger when nobody listens. Then, and only
then, ``_unhandled_listener_error`` is called: a connection closes with 1011
when that listener was a ``'message'`` one (docs/topics/closing.rst).
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Optional, TypeVar, overload

from .errors import ConnectionClosed
from .log import logger

__all__ = ["EventEmitter"]


Listener = Callable[..., Any]
L = TypeVar("L", bound=Listener)


class _Once:
    """Wraps a listener added with ``once`` so that ``off`` finds it."""

    __slots__ = ("emitter", "event", "listener", "fired")

    def __init__(self, emitter: "EventEmitter", event: str, listener: Listener) -> None:
        self.emitter = emitter
        self.event = event
        self.listener = listener
        self.fired = False

    def __call__(self, *args: Any) -> Any:
        with self.emitter._listeners_lock:
            if self.fired:
                return None
            self.fired = True
        self.emitter.off(self.event, self)
        return self.listener(*args)


class EventEmitter:
    """Named events with ordered listeners.

    ``EVENTS`` names the events a subclass emits; adding a listener for any
    other name raises ``ValueError`` (a typo would otherwise go silent).
    The listener table is guarded by ``_listeners_lock``; ``emit`` takes a
    snapshot under it and calls the listeners outside it.
    """

    EVENTS: frozenset[str] = frozenset()

    def __init__(self, error_parent: Optional["EventEmitter"] = None) -> None:
        self._listeners: dict[str, tuple[Listener, ...]] = {}
        self._listeners_lock = threading.Lock()
        self._error_parent = error_parent

    # -- adding and removing -------------------------------------------

    @overload
    def on(self, event: str) -> Callable[[L], L]: ...
    @overload
    def on(self, event: str, listener: L) -> L: ...

    def on(self, event: str, listener: Optional[Listener] = None) -> Any:
        """Call ``listener`` each time ``event`` is emitted; returns ``listener``.

        Without ``listener`` it returns a decorator: ``@server.on("connection")``.
        """
        if listener is None:
            return lambda fn: self.on(event, fn)
        self._add(event, listener)
        return listener

    add_listener = on

    @overload
    def once(self, event: str) -> Callable[[L], L]: ...
    @overload
    def once(self, event: str, listener: L) -> L: ...

    def once(self, event: str, listener: Optional[Listener] = None) -> Any:
        """Like ``on``, but the listener is removed after its first call."""
        if listener is None:
            return lambda fn: self.once(event, fn)
        self._add(event, _Once(self, event, listener))
        return listener

    def off(self, event: str, listener: Listener) -> None:
        """Remove one registration of ``listener`` for ``event`` (no error if absent)."""
        with self._listeners_lock:
            current = self._listeners.get(event, ())
            for index in range(len(current) - 1, -1, -1):
                registered = current[index]
                if registered is listener or getattr(registered, "listener", None) is listener:
                    self._listeners[event] = current[:index] + current[index + 1 :]
                    return

    remove_listener = off

    def remove_all_listeners(self, event: Optional[str] = None) -> None:
        """Remove every listener of ``event``, or of all events."""
        with self._listeners_lock:
            if event is None:
                self._listeners.clear()
            else:
                self._listeners.pop(event, None)

    def listeners(self, event: str) -> list[Listener]:
        """The listeners of ``event``, in call order (``once`` ones unwrapped)."""
        return [getattr(fn, "listener", fn) for fn in self._listeners.get(event, ())]

    def listener_count(self, event: str) -> int:
        return len(self._listeners.get(event, ()))

    def _add(self, event: str, listener: Listener) -> None:
        if not isinstance(event, str):
            raise TypeError(f"event must be a str, not {type(event).__name__}")
        if self.EVENTS and event not in self.EVENTS:
            raise ValueError(f"{type(self).__name__} has no event {event!r}; events: {', '.join(sorted(self.EVENTS))}")
        if not callable(listener):
            raise TypeError(f"listener must be callable, not {type(listener).__name__}")
        with self._listeners_lock:
            self._listeners[event] = self._listeners.get(event, ()) + (listener,)

    # -- emitting -----------------------------------------------------

    def emit(self, event: str, *args: Any) -> bool:
        """Call the listeners of ``event`` with ``args``; True if there were any.

        A listener that raises does not stop the others; its exception is
        reported as described in the module docstring.
        """
        listeners = self._listeners.get(event, ())
        for listener in listeners:
            try:
                listener(*args)
            except Exception as exc:  # noqa: BLE001 - user code: report, never propagate
                if event == "error":
                    logger.error("an 'error' listener of %r raised", self, exc_info=exc)
                elif not self._listener_failed(exc, event) and not isinstance(exc, ConnectionClosed):
                    self._unhandled_listener_error(event)
        return bool(listeners)

    def _unhandled_listener_error(self, event: str) -> None:
        """A listener of ``event`` raised and no ``'error'`` listener took
        the exception (it was logged). Nothing here; a connection closes."""

    def _listener_failed(self, exc: BaseException, event: str = "", origin: Optional["EventEmitter"] = None) -> bool:
        """Report an exception raised by a listener of ``event`` (or a close
        callback) of this emitter; ``origin`` is the emitter whose listener
        raised, when the report was passed up to a parent. The log line
        names both, and ``repr(origin)`` of a connection names its path and
        peer. True when an ``'error'`` listener got it, False when it was logged."""
        origin = self if origin is None else origin
        if self._listeners.get("error"):
            self.emit("error", exc)
            return True
        if self._error_parent is not None:
            return self._error_parent._listener_failed(exc, event, origin)
        if isinstance(exc, ConnectionClosed):  # a send to a peer who just left: churn, not a bug
            logger.debug("a %r listener of %r met a closed connection: %s", event or "?", origin, exc)
        else:
            # repr now: the connection's state when its listener raised (it closes right after)
            logger.error("a %r listener of %s raised and no 'error' listener was set", event or "?", repr(origin), exc_info=exc, extra={"event": "listener_error", "emitter": repr(origin), "listener_event": event})
        return False
