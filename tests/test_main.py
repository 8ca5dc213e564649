"""The demo server, ``python -m ws_multipath``, run as a real process."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from websockets.sync.client import connect

TIMEOUT = 10


@pytest.fixture
def demo():
    process = subprocess.Popen(
        [sys.executable, "-m", "ws_multipath", "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        urls = [process.stdout.readline().strip() for _ in range(2)]
        assert process.stdout.readline().strip() == "Ctrl-C to stop"
        yield process, urls
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(TIMEOUT)
        process.stdout.close()
        process.stderr.close()


def test_demo_serves_echo_and_chat_and_stops_gracefully_on_sigterm(demo):
    process, (echo_url, chat_url) = demo
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
