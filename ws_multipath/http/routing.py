"""The server's table of paths and their handlers: exact paths and route
patterns such as ``/rooms/<room>`` or ``/users/<int:id>/files/<path:rest>``.

A pattern is a path with variables in ``<converter:name>`` or ``<name>``
form, anywhere in the path (``/v<int:version>/feed`` too). The converters
are Werkzeug's defaults (``werkzeug/routing/converters.py``), without their
arguments:

=========  ===============================================  ==============
converter  matches                                          value
=========  ===============================================  ==============
``string`` one or more characters other than ``/``          ``str``
           (the default: ``<name>``)
``int``    ``[0-9]+`` (no sign)                             ``int``
``float``  ``[0-9]+\\.[0-9]+`` (no sign, no exponent)        ``float``
``uuid``   8-4-4-4-12 hex digits, either case               ``uuid.UUID``
``path``   one or more characters, ``/`` included           ``str``
=========  ===============================================  ==============

(Werkzeug writes ``\\d``, which in a Python ``str`` regex also matches
non-ASCII digits; here it is ASCII only.)

The regular expressions above say what each converter matches; matching
itself is done by ``linear_match`` in time linear in the path's length,
whatever the patterns (a backtracking regex on a path a client chooses can
take seconds), with the groups a greedy regex would give.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Generic, Optional, TypeVar
from urllib.parse import unquote

from ..linear_match import ByteClass, Literal, Many, One, Piece, SequencePattern, Subject

__all__ = ["RoutingTable", "RoutePattern", "compile_pattern"]

H = TypeVar("H")

_DIGITS = ByteClass.of("0123456789")
_HEX = ByteClass.of("0123456789abcdefABCDEF")


def _hex_run(count: int) -> list[Piece]:
    return [One(_HEX)] * count


# converter -> (the pieces it matches, conversion of the percent-decoded value)
CONVERTERS: dict[str, tuple[tuple[Piece, ...], Callable[[str], Any]]] = {
    "string": ((Many(ByteClass.excluding("/")),), str),
    "int": ((Many(_DIGITS),), int),
    "float": ((Many(_DIGITS), Literal(b"."), Many(_DIGITS)), float),
    "uuid": (
        tuple(_hex_run(8) + [Literal(b"-")] + _hex_run(4) + [Literal(b"-")] + _hex_run(4) + [Literal(b"-")] + _hex_run(4) + [Literal(b"-")] + _hex_run(12)),
        uuid.UUID,
    ),
    "path": ((Many(ByteClass.excluding("\n")),), str),  # as the regex ``.+``
}

_VARIABLE = re.compile(r"<(?:([^<>:]*):)?([^<>:]*)>")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass(frozen=True)
class RoutePattern:
    """A compiled route pattern (see ``compile_pattern``)."""

    pattern: str
    matcher: SequencePattern  # the pattern after ``prefix``, one group per variable
    # name -> conversion, in the order of the pattern
    conversions: tuple[tuple[str, Callable[[str], Any]], ...]
    # the pattern with each variable replaced by <converter>: two patterns
    # with the same shape match exactly the same paths
    shape: str
    prefix: str  # the static text before the first variable
    # sort key, most specific first (see RoutingTable)
    rank: tuple[int, ...]

    def match(self, path: str) -> Optional[dict[str, Any]]:
        """The converted values if ``path`` matches, else None."""
        if not path.startswith(self.prefix):
            return None
        return self.match_rest(Subject(path[len(self.prefix) :]))

    def match_rest(self, rest: Subject) -> Optional[dict[str, Any]]:
        """``match`` for a path that starts with ``prefix``, given what
        follows the prefix."""
        found = self.matcher.match(rest)
        if found is None:
            return None
        try:
            return {name: convert(unquote(text, errors="replace")) for (name, convert), text in zip(self.conversions, found)}
        except ValueError:  # an int of more than sys.get_int_max_str_digits() digits
            return None


def compile_pattern(pattern: str) -> RoutePattern:
    """Parse ``pattern``; ``ValueError`` naming it when it is invalid (an
    unknown converter, an unbalanced ``<`` or ``>``, an empty, invalid or
    repeated variable name, two variables next to each other)."""
    pieces: list[Piece] = []
    groups: list[tuple[int, int]] = []
    shape: list[str] = []
    conversions: list[tuple[str, Callable[[str], Any]]] = []
    counts = {name: 0 for name in CONVERTERS}
    prefix: Optional[str] = None
    position = 0
    for found in _VARIABLE.finditer(pattern):
        static = pattern[position : found.start()]
        if "<" in static or ">" in static:
            raise ValueError(f"unbalanced '<' or '>' in route pattern {pattern!r}")
        if conversions and not static:
            raise ValueError(f"two variables with nothing between them in route pattern {pattern!r}")
        converter, name = found.group(1), found.group(2)
        converter = "string" if converter is None else converter
        if converter not in CONVERTERS:
            raise ValueError(f"unknown converter {converter!r} in route pattern {pattern!r} (known: {', '.join(CONVERTERS)})")
        if not name:
            raise ValueError(f"empty variable name in route pattern {pattern!r}")
        if not _NAME.match(name):
            raise ValueError(f"variable name {name!r} is not an identifier in route pattern {pattern!r}")
        if any(name == seen for seen, _ in conversions):
            raise ValueError(f"variable {name!r} appears twice in route pattern {pattern!r}")
        if prefix is None:
            prefix = static
        converter_pieces, convert = CONVERTERS[converter]
        if conversions:  # the first variable's static text is the prefix, matched before the pieces
            _append_literal(pieces, static)
        groups.append((len(pieces), len(pieces) + len(converter_pieces) - 1))
        pieces.extend(converter_pieces)
        shape.append(f"{static}<{converter}>")
        conversions.append((name, convert))
        counts[converter] += 1
        position = found.end()
    static = pattern[position:]
    if "<" in static or ">" in static:
        raise ValueError(f"unbalanced '<' or '>' in route pattern {pattern!r}")
    if not conversions:
        raise ValueError(f"route pattern {pattern!r} has no variable")
    _append_literal(pieces, static)
    shape.append(static)
    assert prefix is not None
    static_length = len(pattern) - sum(found.end() - found.start() for found in _VARIABLE.finditer(pattern))
    rank = (
        counts["path"],  # a <path:> pattern comes after every other
        len(conversions),  # fewer variables
        counts["string"],  # typed before untyped
        -len(prefix),  # longer static prefix
        -static_length,  # more static text
    )
    return RoutePattern(pattern, SequencePattern(pieces, groups), tuple(conversions), "".join(shape), prefix, rank)


def _append_literal(pieces: list[Piece], text: str) -> None:
    if text:
        pieces.append(Literal(text.encode("utf-8", "surrogatepass")))


def is_pattern(path: str) -> bool:
    """True when ``path`` is to be compiled as a route pattern."""
    return "<" in path or ">" in path


class RoutingTable(Generic[H]):
    """Path or route pattern -> handler.

    ``lookup(path)`` takes the request path as received, without the query
    and not percent-decoded (``Request.path``), and returns ``(handler,
    params)`` or None:

    1. An exact path is looked up first, in a dict (O(1)); it wins over any
       pattern that also matches (``/rooms/lobby`` beside ``/rooms/<room>``),
       and its params are ``{}``.
    2. Otherwise the patterns are tried in turn, most specific first, each
       in time linear in the path's length (``linear_match``):

       - a pattern with a ``<path:>`` variable comes after all without one;
       - then fewer variables first;
       - then fewer untyped (``string``) variables, i.e. typed first;
       - then the longer static prefix (the text before the first variable);
       - then the more static text in all;
       - then the one registered first.

       The first match wins. Its params map each variable name to its value:
       the captured text, percent-decoded (UTF-8, invalid bytes replaced by
       U+FFFD), then converted (``int``, ``float``, ``uuid.UUID``). Matching
       is on the path as received, so ``%2F`` in a ``<string:>`` segment does
       not split it, but the decoded value contains ``/``. A value that
       cannot be converted (an ``int`` of more digits than Python converts)
       is no match, and the next pattern is tried.

    ``add`` refuses a path that already has a handler and a pattern of the
    same shape as a registered one (the same pattern up to the variable
    names, e.g. ``/rooms/<room>`` and ``/rooms/<name>``: they match exactly
    the same paths), naming the handler in the way.

    ``lookup_or_wait`` is ``lookup`` that, while the server is starting
    (``expect_handlers``), waits for a handler to be added for a path none
    serves yet: a server listens before its ``create_handler`` calls (a
    script's next lines, a worker's factory), and a client that comes in
    between (one reconnecting as the server restarts) would get 400.

    Every access holds ``_lock``; lookups return the handler, whose own lock
    then guards its state. Compiling a pattern happens before taking it.
    ``_added`` (a condition on ``_lock``) is notified by every ``add``.
    """

    def __init__(self) -> None:
        self._handlers: dict[str, H] = {}
        # the patterns in lookup order, and by pattern string and by shape
        self._patterns: list[tuple[RoutePattern, H]] = []
        self._by_pattern: dict[str, tuple[RoutePattern, H]] = {}
        self._by_shape: dict[str, str] = {}
        self._lock = threading.Lock()
        self._added = threading.Condition(self._lock)
        self._additions = 0
        self._expect_until = 0.0  # time.monotonic(): lookup_or_wait waits until then
        #: lookups waiting in ``lookup_or_wait`` now
        self.waiting = 0

    def add(self, path: str, handler: H) -> None:
        """Register ``handler`` for ``path``, an exact path or a pattern.

        ``ValueError`` if ``path`` already has a handler, if it is a pattern
        of the same shape as a registered one, or if it is an invalid pattern.
        """
        route = compile_pattern(path) if is_pattern(path) else None
        with self._lock:
            if path in self._handlers or path in self._by_pattern:
                raise ValueError(f"a handler for path {path!r} already exists")
            self._additions += 1
            self._added.notify_all()  # takes effect as _lock is let go
            if route is None:
                self._handlers[path] = handler
                return
            other = self._by_shape.get(route.shape)
            if other is not None:
                raise ValueError(f"route pattern {path!r} matches the same paths as the handler for {other!r}")
            entry = (route, handler)
            self._by_pattern[path] = entry
            self._by_shape[route.shape] = path
            # stable: among equal ranks the one registered first stays first
            index = len(self._patterns)
            while index > 0 and self._patterns[index - 1][0].rank > route.rank:
                index -= 1
            self._patterns.insert(index, entry)

    def remove(self, path: str, handler: H) -> bool:
        """Unregister ``handler`` if it is still the one for ``path``."""
        with self._lock:
            if self._handlers.get(path) is handler:
                del self._handlers[path]
                return True
            entry = self._by_pattern.get(path)
            if entry is not None and entry[1] is handler:
                del self._by_pattern[path]
                del self._by_shape[entry[0].shape]
                self._patterns.remove(entry)
                return True
            return False

    def lookup(self, path: str) -> Optional[tuple[H, dict[str, Any]]]:
        """``(handler, params)`` for the request path ``path``, or None."""
        with self._lock:
            handler = self._handlers.get(path)
            if handler is not None:
                return handler, {}
            patterns = list(self._patterns)
        rests: dict[str, Subject] = {}  # what follows each prefix, its masks made once
        for route, handler in patterns:
            if path.startswith(route.prefix):
                rest = rests.get(route.prefix)
                if rest is None:
                    rest = rests[route.prefix] = Subject(path[len(route.prefix) :])
                params = route.match_rest(rest)
                if params is not None:
                    return handler, params
        return None

    def expect_handlers(self, seconds: float) -> None:
        """For ``seconds`` from now, ``lookup_or_wait`` waits for handlers
        still to come; ``0`` ends that at once (the server closes)."""
        with self._lock:
            self._expect_until = time.monotonic() + seconds if seconds > 0 else 0.0
            self._added.notify_all()

    def lookup_or_wait(self, path: str) -> Optional[tuple[H, dict[str, Any]]]:
        """``lookup``; while handlers are expected and none matches, after
        each ``add`` again, until one matches or the expecting ends."""
        while True:
            route = self.lookup(path)
            if route is not None:
                return route
            with self._lock:
                remaining = self._expect_until - time.monotonic()
                if remaining <= 0:
                    return None
                seen = self._additions
                self.waiting += 1
                try:
                    self._added.wait_for(lambda: self._additions != seen or self._expect_until == 0.0, remaining)
                finally:
                    self.waiting -= 1
                if self._additions == seen:
                    return None

    def handlers(self) -> list[H]:
        """A snapshot of the registered handlers."""
        with self._lock:
            return list(self._handlers.values()) + [handler for _, handler in self._patterns]
