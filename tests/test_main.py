"""The demo server, ``python -m ws_multipath``, run as a real process."""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from websockets.sync.client import connect

TIMEOUT = 10


@pytest.fixture
def demo():
    process = subprocess.Popen(
        [sys.executable, "-m", "ws_multipath", "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        lines = [process.stdout.readline().strip() for _ in range(4)]  # ws://.../echo, ws://.../chat, http://.../ (the page)
        assert lines[3] == "Ctrl-C to stop", lines
        yield process, lines[:2] + [lines[2].split()[0]]
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(TIMEOUT)
        process.stdout.close()
        process.stderr.close()


def test_demo_serves_echo_and_chat_and_stops_gracefully_on_sigterm(demo):
    process, (echo_url, chat_url, _) = demo
    assert echo_url.startswith("ws://127.0.0.1:") and echo_url.endswith("/echo") and chat_url.endswith("/chat")
    echo_url, chat_url = (u.replace("localhost", "127.0.0.1") for u in (echo_url, chat_url))
    with connect(echo_url, open_timeout=TIMEOUT) as echo:
        echo.send("ping")
        assert echo.recv(timeout=TIMEOUT) == "ping"
    with connect(chat_url, open_timeout=TIMEOUT) as alice, connect(chat_url, open_timeout=TIMEOUT) as bob:
        alice.send("hi all")
        assert alice.recv(timeout=TIMEOUT) == "hi all"
        assert bob.recv(timeout=TIMEOUT) == "hi all"
        process.send_signal(signal.SIGTERM)
        assert process.wait(TIMEOUT) == 0
    assert process.stderr.read() == ""


def test_demo_serves_its_page_at_the_root_through_the_wsgi_path(demo):
    process, (_, _, page_url) = demo
    assert page_url.startswith("http://127.0.0.1:") and page_url.endswith("/")
    with urllib.request.urlopen(page_url, timeout=TIMEOUT) as response:
        assert response.headers["Content-Type"] == "text/html; charset=utf-8"
        page = response.read().decode()
    assert "<title>ws_multipath demo</title>" in page and 'src="demo.js"' in page
    with urllib.request.urlopen(page_url + "demo.js", timeout=TIMEOUT) as response:
        assert b'wsURL("/echo")' in response.read()
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(page_url + "nothing-here", timeout=TIMEOUT)
    assert missing.value.code == 404
    missing.value.close()


def test_demo_stops_on_ctrl_c(demo):
    process, _ = demo
    process.send_signal(signal.SIGINT)
    assert process.wait(TIMEOUT) == 0


def test_demo_reports_a_port_in_use():
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = subprocess.run(
            [sys.executable, "-m", "ws_multipath", "--port", str(busy.getsockname()[1])], capture_output=True, text=True, timeout=TIMEOUT
        )
    assert result.returncode == 1 and "cannot listen" in result.stderr and "Traceback" not in result.stderr
