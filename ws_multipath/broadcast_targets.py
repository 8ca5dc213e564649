"""Who a broadcast reaches: its arguments checked, a room's path params
converted as the pattern converts them, and the set of clients it skips.
Pure functions and one immutable class; no lock.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, Optional, Union

from .cluster.message import checked_data
from .http.routing import RoutePattern
from .protocol.writer import Payload
from .sync.connection import WebSocket

__all__ = ["Outside", "checked_broadcast", "converted"]


def checked_broadcast(
    data: Union[str, Payload], exclude: Union[WebSocket, Collection[WebSocket], None], path_params: Optional[Mapping[str, Any]]
) -> tuple[Union[str, bytes], Collection[WebSocket], Optional[dict[str, Any]]]:
    """``broadcast``'s arguments as it uses them: the data as ``str`` or
    ``bytes``, the excluded clients as a collection, the params as a dict
    (None: no params). ``TypeError`` naming the argument that is wrong."""
    data = checked_data(data)
    if isinstance(exclude, WebSocket):
        exclude = (exclude,)
    if path_params is not None and not isinstance(path_params, Mapping):
        raise TypeError(f"path_params must be a mapping, not {type(path_params).__name__}")
    return data, exclude or (), None if path_params is None else dict(path_params)


def converted(route: Optional[RoutePattern], params: dict[str, Any]) -> dict[str, Any]:
    """String values converted as the pattern converts them (``"7"`` ->
    ``7`` for ``<int:id>``), so they compare equal to
    ``request.path_params``; a value that does not convert stays as
    given (and matches no client)."""
    if route is None:
        return params
    converted = dict(params)
    for name, convert in route.conversions:
        value = params.get(name)
        if isinstance(value, str):
            try:
                converted[name] = convert(value)
            except ValueError:
                pass
    return converted


class Outside:
    """The clients to skip in a broadcast to one set of path params: the
    excluded ones, and those whose ``request.path_params`` lack an item. It
    is checked against the snapshot of the connections (so a client that
    connects meanwhile, to another room, is not sent to)."""

    __slots__ = ("params", "exclude")

    def __init__(self, params: dict[str, Any], exclude: Collection[WebSocket]) -> None:
        self.params = params
        self.exclude = exclude

    def __contains__(self, ws: object) -> bool:
        if not isinstance(ws, WebSocket) or ws in self.exclude:
            return True
        got = ws.request.path_params
        return any(name not in got or got[name] != value for name, value in self.params.items())
