"""ws_multipath.metrics: server.stats() as a Prometheus collector, served
on /metrics through the WSGI side of the same port."""

from __future__ import annotations

import http.client
import subprocess
import sys

import pytest

from tests.conftest import wait_until
from tests.faultkit import (
    encode_frame,
    raw_connect,
    raw_upgrade,
    read_http_response,
    upgrade_request,
)

prometheus_client = pytest.importorskip("prometheus_client")

from ws_multipath.metrics import Collector  # noqa: E402


def metrics_app(registry):
    """The README's dispatch: /metrics to prometheus_client, the rest 404."""
    metrics = prometheus_client.make_wsgi_app(registry)

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/metrics":
            return metrics(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]

    return app


def test_the_collector_exposes_stats_on_metrics_of_the_same_port(make_server):
    registry = prometheus_client.CollectorRegistry()
    server = make_server(wsgi_app=metrics_app(registry))
    registry.register(Collector(server))
    handler = server.create_handler("/echo", ping_interval=None, allowed_origins=lambda origin: origin != "https://bad.example")
    handler.on("connection", lambda ws, request: ws.on("message", lambda data, is_binary: ws.send(data)))
    sock, _ = raw_upgrade(server.port, "/echo")
    with sock:
        sock.sendall(encode_frame(0x2, b"12345"))
        sock.recv(100)
        with raw_connect(server.port) as refused:
            refused.sendall(upgrade_request("/echo", server.port, headers=(("Origin", "https://bad.example"),)))
            assert read_http_response(refused)[0] == 403
        with raw_connect(server.port) as unrouted:
            unrouted.sendall(upgrade_request("/nowhere", server.port))
            assert read_http_response(unrouted)[0] == 400
        assert wait_until(lambda: registry.get_sample_value("ws_multipath_bytes_sent_total", {"path": "/echo"}) == 7)
        value = registry.get_sample_value
        assert value("ws_multipath_connections_open", {"path": "/echo"}) == 1
        assert value("ws_multipath_upgrades_accepted_total", {"path": "/echo"}) == 1
        assert value("ws_multipath_messages_received_total", {"path": "/echo"}) == 1
        assert value("ws_multipath_messages_sent_total", {"path": "/echo"}) == 1
        assert value("ws_multipath_bytes_received_total", {"path": "/echo"}) == 11
        assert value("ws_multipath_upgrades_refused_total", {"path": "/echo", "status": "403", "reason": "origin"}) == 1
        assert value("ws_multipath_upgrades_refused_total", {"path": "", "status": "400", "reason": "no_handler"}) == 1
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        body = response.read().decode()
        connection.close()
        assert response.status == 200
        assert 'ws_multipath_connections_open{path="/echo"} 1.0' in body
        assert 'ws_multipath_upgrades_refused_total{path="/echo",reason="origin",status="403"} 1.0' in body
    assert wait_until(lambda: registry.get_sample_value("ws_multipath_closes_total", {"path": "/echo", "code": "1006"}) == 1)
    assert registry.get_sample_value("ws_multipath_connections_open", {"path": "/echo"}) == 0


def test_without_prometheus_client_the_import_error_names_the_extra():
    code = "import sys; sys.modules['prometheus_client'] = None\ntry:\n import ws_multipath.metrics\nexcept ImportError as e:\n print(e)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30).stdout
    assert "pip install prometheus_client, or the [metrics] extra" in out  # not on PyPI: the package, not ws_multipath[metrics]
