"""The cluster's wire format (version 1) and channel names.

A message is one Redis pub/sub payload (bytes)::

    <header: a JSON object on one line, UTF-8> "\\n" <the message's bytes>

The header's keys (docs/scaling.rst is the reference):

- ``"v"``: ``1``, the format version (required). Other versions are dropped
  with a warning, so a newer publisher never garbles an older server.
- ``"binary"``: true for a binary message; false or absent: text, the
  payload is its UTF-8 encoding.
- ``"origin"``: the publishing process's id (a string); a server ignores
  the messages it published itself (it delivered them at once). Absent or
  any other value: delivered.
- ``"exclude"``: a list of connection ids (``ws.id``) not to send to.
- ``"params"``: an object of path params (values as strings, converted by
  the receiving handler's pattern): only the clients whose
  ``request.path_params`` have those items get the message.
- ``"to"``: one connection id (``send_to``), on the ``<prefix>@send``
  channel: only the process holding that connection delivers it.
- ``"presence"``: on the ``<prefix>@presence`` channel, the publishing
  process's presence version after this change (an int); the payload is a
  JSON list of changes (``presence.py``); ``"reset"``: true when the
  receivers must reload that process's entries from the store;
  ``"gone"``: true when the process left the cluster (its entries leave).

Channels: ``<prefix><path>``, the path as clients request it (not
percent-decoded), e.g. ``ws_multipath:/chat`` or ``ws_multipath:/rooms/lobby``.
A broadcast to every client of a route pattern (or to a partial set of its
params) goes to ``<prefix><pattern>``, e.g. ``ws_multipath:/rooms/<room>``.
A route pattern's handler subscribes to that channel and pattern-subscribes
to ``<prefix>/rooms/[^<]*`` (the first variable as ``[^<]*``, the others as
``*``, the static text escaped), so it hears every concrete room.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence, Union
from urllib.parse import quote

from ..http.routing import _VARIABLE, RoutePattern, compile_pattern, is_pattern
from ..linear_match import AnyCount, ByteClass, Literal, One, Piece, SequencePattern

__all__ = [
    "VERSION", "DEFAULT_PREFIX", "ClusterMessage", "encode", "decode", "target_channel", "subscription_of", "compile_glob",
    "presence_channel", "send_channel", "encode_presence", "checked_data", "checked_send_to",
]

VERSION = 1
DEFAULT_PREFIX = "ws_multipath:"
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")
_SAFE = "!$&'()*+,;=:@-._~"  # sub-delims and pchar punctuation kept as is in a path segment


class FormatError(ValueError):
    """A payload that is not a message of a known version."""


@dataclass(frozen=True)
class ClusterMessage:
    data: Union[str, bytes]
    origin: Optional[str] = None
    exclude: frozenset[str] = field(default_factory=frozenset)
    params: Optional[dict[str, Any]] = None
    to: Optional[str] = None
    presence: Optional[int] = None  # a presence message: the origin's version
    reset: bool = False
    gone: bool = False


def presence_channel(prefix: str) -> str:
    """Presence changes (join and leave) of every process: no path starts with ``@``."""
    return prefix + "@presence"


def send_channel(prefix: str) -> str:
    """``send_to`` messages, heard by every process."""
    return prefix + "@send"


def encode_presence(origin: str, version: int, changes: Sequence[Any], reset: bool = False, gone: bool = False) -> bytes:
    """A presence message: the header, then the changes as one JSON list."""
    header: dict[str, Any] = {"v": VERSION, "origin": origin, "presence": version}
    if reset:
        header["reset"] = True
    if gone:
        header["gone"] = True
    return (json.dumps(header, separators=(",", ":")) + "\n" + json.dumps(changes, separators=(",", ":"), ensure_ascii=False)).encode("utf-8")


def encode(data: Union[str, bytes], origin: Optional[str], exclude: Sequence[str] = (), params: Optional[Mapping[str, str]] = None, to: Optional[str] = None) -> bytes:
    header: dict[str, Any] = {"v": VERSION}
    if isinstance(data, str):
        payload = data.encode("utf-8")
    else:
        header["binary"] = True
        payload = bytes(data)
    if origin is not None:
        header["origin"] = origin
    if exclude:
        header["exclude"] = list(exclude)
    if params:
        header["params"] = dict(params)
    if to is not None:
        header["to"] = to
    return json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode("ascii") + b"\n" + payload


def decode(raw: bytes) -> ClusterMessage:
    """Parse a payload; ``FormatError`` if it is not a version 1 message."""
    end = raw.find(b"\n")
    if end < 0:
        raise FormatError("no header line")
    try:
        header = json.loads(raw[:end])
    except (ValueError, RecursionError) as exc:  # RecursionError: nesting deeper than the parser goes
        raise FormatError(f"header is not JSON: {type(exc).__name__}") from None
    if not isinstance(header, dict):
        raise FormatError("header is not a JSON object")
    version = header.get("v")
    if type(version) is not int or version != VERSION:
        raise FormatError(f"unknown format version {version!r} (this server reads {VERSION})")
    payload = raw[end + 1 :]
    if header.get("binary"):
        data: Union[str, bytes] = bytes(payload)
    else:
        try:
            data = payload.decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError("text message is not valid UTF-8") from None
    exclude = header.get("exclude") or []
    params = header.get("params")
    if not isinstance(exclude, list) or not all(isinstance(item, str) for item in exclude):
        raise FormatError("'exclude' is not a list of strings")
    if params is not None and (not isinstance(params, dict) or not all(isinstance(v, str) for v in params.values())):
        raise FormatError("'params' is not an object of strings")
    origin = header.get("origin")
    to = header.get("to")
    if to is not None and not isinstance(to, str):
        raise FormatError("'to' is not a string")
    presence = header.get("presence")
    if presence is not None and (type(presence) is not int or presence < 0):
        raise FormatError("'presence' is not a version number")
    return ClusterMessage(data, origin if isinstance(origin, str) else None, frozenset(exclude), params or None, to, presence,
                          header.get("reset") is True, header.get("gone") is True)


def target_channel(prefix: str, path: str, path_params: Optional[Mapping[str, Any]], route: Optional[RoutePattern] = None) -> tuple[str, Optional[dict[str, str]]]:
    """The channel to publish a broadcast of ``path`` (an exact path or a
    route pattern) on, and the params the header must carry.

    A pattern whose params are all given (and come back the same when the
    path built from them is matched) goes to that concrete path's channel,
    with no params; otherwise to the pattern's own channel, with them."""
    if not is_pattern(path):
        return prefix + path, _as_strings(path_params) if path_params else None
    if route is None:
        route = compile_pattern(path)
    if path_params:
        concrete = _build(route, path_params)
        if concrete is not None:
            return prefix + concrete, None
    return prefix + path, _as_strings(path_params) if path_params else None


def _as_strings(params: Mapping[str, Any]) -> dict[str, str]:
    return {str(name): str(value) for name, value in params.items()}


def _build(route: RoutePattern, params: Mapping[str, Any]) -> Optional[str]:
    names = [name for name, _ in route.conversions]
    if set(params) != set(names):
        return None
    converters = dict(_converters(route.pattern))
    values = {}
    for name in names:
        safe = _SAFE + ("/" if converters.get(name) == "path" else "")
        values[name] = quote(str(params[name]), safe=safe)
    position = 0
    built = []
    for found in _VARIABLE.finditer(route.pattern):
        built.append(route.pattern[position : found.start()])
        built.append(values[found.group(2)])
        position = found.end()
    built.append(route.pattern[position:])
    concrete = "".join(built)
    if route.match(concrete) != dict(params):
        return None
    return concrete


def _converters(pattern: str) -> list[tuple[str, str]]:
    return [(found.group(2), found.group(1) or "string") for found in _VARIABLE.finditer(pattern)]


def subscription_of(prefix: str, path: str) -> tuple[str, Optional[str]]:
    """``(channel, glob)`` a handler of ``path`` subscribes to: an exact path
    has no glob; a pattern's glob matches every concrete path of it and not
    the pattern's own channel."""
    channel = prefix + path
    if not is_pattern(path):
        return channel, None
    parts = [_GLOB_SPECIAL.sub(r"\\\1", prefix)]
    position = 0
    for index, found in enumerate(_VARIABLE.finditer(path)):
        parts.append(_GLOB_SPECIAL.sub(r"\\\1", path[position : found.start()]))
        parts.append("[^<]*" if index == 0 else "*")
        position = found.end()
    parts.append(_GLOB_SPECIAL.sub(r"\\\1", path[position:]))
    return channel, "".join(parts)


def compile_glob(glob: str) -> SequencePattern:
    """Redis's glob (``*``, ``?``, ``[...]``, ``[^...]``, ``\\x``) for the
    in-process broker, matched on the UTF-8 bytes of a channel name as
    Redis does, and in time linear in its length (``linear_match``). Every
    glob the server makes (``subscription_of``) matches what Redis matches;
    an unclosed ``[`` is a literal here, where Redis runs the class to the
    end of the pattern."""
    data = glob.encode("utf-8", "surrogatepass")
    pieces: list[Piece] = []
    literal = bytearray()
    i = 0
    while i < len(data):
        byte = data[i]
        special: Optional[Piece] = None
        if byte == 0x5C and i + 1 < len(data):  # backslash
            i += 1
            literal.append(data[i])
        elif byte == 0x2A:  # *
            special = AnyCount(_ANY_BYTE)
        elif byte == 0x3F:  # ?
            special = One(_ANY_BYTE)
        elif byte == 0x5B and data.find(b"]", i + 1) >= 0:  # [ with its ]
            end = data.index(b"]", i + 1)
            special = One(_bracket_class(data[i + 1 : end]))
            i = end
        else:
            literal.append(byte)
        if special is not None:
            if literal:
                pieces.append(Literal(bytes(literal)))
                literal.clear()
            pieces.append(special)
        i += 1
    if literal:
        pieces.append(Literal(bytes(literal)))
    return SequencePattern(pieces)


_ANY_BYTE = ByteClass(range(256))


def _bracket_class(body: bytes) -> ByteClass:
    """The class of a glob's ``[...]`` body: bytes, ``a-z`` ranges, ``\\x``
    escapes, a leading ``^`` for the bytes outside it."""
    negate = body.startswith(b"^")
    if negate:
        body = body[1:]
    members: set[int] = set()
    i = 0
    while i < len(body):
        if body[i] == 0x5C and i + 1 < len(body):
            i += 1
            members.add(body[i])
        elif i + 2 < len(body) and body[i + 1] == 0x2D:  # a-z
            low, high = sorted((body[i], body[i + 2]))
            members.update(range(low, high + 1))
            i += 2
        else:
            members.add(body[i])
        i += 1
    return ByteClass(value for value in range(256) if (value in members) != negate)


def checked_data(data: Any) -> Union[str, bytes]:
    """A message's data as sent: ``str`` (text) or ``bytes`` (binary);
    ``TypeError`` for anything else."""
    if not isinstance(data, (str, bytes, bytearray, memoryview)):
        raise TypeError(f"data must be str or bytes-like, not {type(data).__name__}")
    return data if isinstance(data, str) else bytes(data)


def checked_send_to(id: Any, data: Any) -> tuple[str, Union[str, bytes]]:
    """``send_to``'s arguments, checked (``TypeError`` naming the wrong one)."""
    if not isinstance(id, str):
        raise TypeError(f"id must be a str (a ws.id), not {type(id).__name__}")
    return id, checked_data(data)
