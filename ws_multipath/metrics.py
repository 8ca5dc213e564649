"""``server.stats()`` as Prometheus metrics (the ``[metrics]`` extra: ``prometheus_client``)::

    from prometheus_client import REGISTRY, make_wsgi_app
    from ws_multipath.metrics import Collector

    REGISTRY.register(Collector(server))

and serve ``make_wsgi_app()`` on ``/metrics`` through the server's
``wsgi_app`` (README.rst, "Metrics"). Every scrape calls ``server.stats()``
once. Metrics (``path`` is the handler's path; refusals no handler saw have
``path=""``):

- ``ws_multipath_connections_open{path}`` (gauge)
- ``ws_multipath_upgrades_accepted_total{path}``
- ``ws_multipath_upgrades_refused_total{path,status,reason}``
- ``ws_multipath_messages_received_total{path}``, ``..._messages_sent_total{path}``
- ``ws_multipath_bytes_received_total{path}``, ``..._bytes_sent_total{path}``
  (on the wire, after the handshake)
- ``ws_multipath_closes_total{path,code}``
- ``ws_multipath_drops_total{path,reason}`` (slow_consumer, write_timeout,
  ping_timeout, close_timeout)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

try:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("ws_multipath.metrics needs prometheus_client: pip install prometheus_client, or the [metrics] extra") from exc

if TYPE_CHECKING:
    from .server import MultipathServer

__all__ = ["Collector"]


class Collector:
    """A ``prometheus_client`` collector of one server's ``stats()``;
    register it yourself (``REGISTRY.register(Collector(server))``).
    ``prefix`` starts every metric name."""

    def __init__(self, server: "MultipathServer", prefix: str = "ws_multipath") -> None:
        self._server = server
        self._prefix = prefix

    def describe(self) -> list[Any]:
        return list(self._families({"paths": {}, "refused": {}}))

    def collect(self) -> Iterator[Any]:
        return iter(self._families(self._server.stats()))

    def _families(self, stats: dict[str, Any]) -> list[Any]:
        p = self._prefix
        open_ = GaugeMetricFamily(f"{p}_connections_open", "Open WebSocket connections", labels=["path"])
        accepted = CounterMetricFamily(f"{p}_upgrades_accepted", "Upgrades answered with 101", labels=["path"])
        refused = CounterMetricFamily(f"{p}_upgrades_refused", "Refused upgrades and requests", labels=["path", "status", "reason"])
        traffic = {
            name: CounterMetricFamily(f"{p}_{metric}", text, labels=["path"])
            for name, metric, text in (
                ("messages_in", "messages_received", "Data messages received"),
                ("messages_out", "messages_sent", "Data messages sent"),
                ("bytes_in", "bytes_received", "Bytes received after the handshake"),
                ("bytes_out", "bytes_sent", "Bytes sent after the handshake"),
            )
        }
        closes = CounterMetricFamily(f"{p}_closes", "Ended connections by final close code", labels=["path", "code"])
        drops = CounterMetricFamily(f"{p}_drops", "Connections the server cut, by reason", labels=["path", "reason"])
        handled: dict[tuple[int, str], int] = {}
        for path, one in stats["paths"].items():
            open_.add_metric([path], one["open"])
            accepted.add_metric([path], one["accepted"])
            for name, family in traffic.items():
                family.add_metric([path], one[name])
            for status, keys in one["refused"].items():
                for key, count in keys.items():
                    refused.add_metric([path, str(status), key], count)
                    handled[(status, key)] = handled.get((status, key), 0) + count
            for code, count in one["closes"].items():
                closes.add_metric([path, str(code)], count)
            for key, count in one["drops"].items():
                drops.add_metric([path, key], count)
        for status, keys in stats["refused"].items():  # what no handler saw: the total minus the paths'
            for key, count in keys.items():
                rest = count - handled.get((status, key), 0)
                if rest:
                    refused.add_metric(["", str(status), key], rest)
        return [open_, accepted, refused, *traffic.values(), closes, drops]
