"""The cluster side of a ``MultipathServer``: the ``ServerCluster`` mixin.

Its id in the cluster, waiting for the broker, sending to one connection
wherever it is (``send_to``), and the presence registry the first handler
with ``presence=True`` makes. The broker and the cluster node are made by
the server's constructor (``cluster/node.py``); ``_lock`` is the server's.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Optional, Union

from .cluster.message import checked_send_to

if TYPE_CHECKING:
    from .cluster.directory import Directory
    from .cluster.node import ClusterNode
    from .cluster.presence import Presence
    from .handler import WebSocketHandler

__all__ = ["ServerCluster"]


class ServerCluster:
    """What a ``MultipathServer`` does with its cluster (see above)."""

    # made by MultipathServer.__init__
    _lock: threading.Lock
    _cluster: Optional["ClusterNode"]
    _presence: Optional["Presence"]
    _directory: "Directory"

    @property
    def node_id(self) -> Optional[str]:
        """This server's id in the cluster (the ``origin`` of its messages), or None without a broker."""
        return self._cluster.id if self._cluster is not None else None

    def wait_cluster_ready(self, timeout: Optional[float] = None) -> bool:
        """Wait until the broker confirmed this server's subscriptions (True),
        or ``timeout`` passed (False); True at once without a broker.
        Messages published before that may not reach this server."""
        return self._cluster.wait_ready(timeout) if self._cluster is not None else True

    def _presence_for(self, handler: "WebSocketHandler") -> None:
        from .cluster.presence import Presence

        with self._lock:
            if self._presence is None:
                cluster = self._cluster
                store = cluster.broker.presence_store() if cluster is not None else None
                self._presence = Presence(cluster.id if cluster else None, store, cluster.publish_presence if cluster else None)
                if cluster is not None:
                    cluster.presence = self._presence
            presence = self._presence
        presence.add_handler(handler)

    # -- one connection, wherever it is ------------------------------------------

    def send_to(self, id: str, data: Union[str, bytes, bytearray, memoryview]) -> bool:
        """Send ``data`` (str: text, bytes: binary) to the connection whose
        ``ws.id`` is ``id``, in this process or, with a broker, in any
        process sharing it (``Publisher(url).send_to`` does the same from
        outside). At-most-once, as broadcasts: True when it was queued for
        a local connection or published, False when the id is not here and
        there is no broker (or the broker dropped it). Never blocks on the
        client."""
        id, message = checked_send_to(id, data)
        if self._directory.send(id, message):
            return True
        return self._cluster.send_to(id, message) if self._cluster is not None else False
