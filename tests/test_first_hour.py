"""What a new user meets (issue 20). A 'message' listener that raises,
with nobody listening for 'error', closes that connection with 1011 (as
websockets does) instead of leaving the client waiting for an answer; with
an 'error' listener the application decides. A port already in use is
refused with an error naming the address. SIGTERM ends serve_forever()
whichever thread the kernel gave it to. Real sockets on 127.0.0.1,
websockets' client, real processes."""

from __future__ import annotations

import logging
import os
import pathlib
import queue
import socket
import subprocess
import sys

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from ws_multipath import MultipathServer

from .conftest import TIMEOUT, url

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_a_message_listener_that_raises_closes_its_connection_with_1011(server, caplog):
    handler = server.create_handler("/fragile")

    def on_message(data, is_binary):
        if data == "boom":
            raise KeyError("no such user")
        handler_ws[0].send(data)

    handler_ws = []

    @handler.on("connection")
    def joined(ws, request):
        handler_ws.append(ws)
        ws.on("message", on_message)

    with connect(url(server, "/fragile"), open_timeout=TIMEOUT) as other, caplog.at_level(logging.ERROR, logger="ws_multipath"):
        with connect(url(server, "/fragile"), open_timeout=TIMEOUT) as client:
            client.send("boom")
            with pytest.raises(ConnectionClosed) as closed:
                client.recv(TIMEOUT)
        assert closed.value.rcvd.code == 1011 and closed.value.rcvd.reason == "internal error"
        # the traceback is logged, and nobody else is affected
        assert any(record.exc_info and record.exc_info[0] is KeyError for record in caplog.records)
        other.send("still here")
        assert other.recv(TIMEOUT) == "still here"


def test_with_an_error_listener_the_application_decides(server):
    handler = server.create_handler("/handled")
    errors: queue.Queue = queue.Queue()
    handler.on("error", errors.put)

    @handler.on("connection")
    def joined(ws, request):
        def on_message(data, is_binary):
            if data == "boom":
                raise ValueError(data)
            ws.send(data)

        ws.on("message", on_message)

    with connect(url(server, "/handled"), open_timeout=TIMEOUT) as client:
        client.send("boom")
        assert isinstance(errors.get(timeout=TIMEOUT), ValueError)
        client.send("after")
        assert client.recv(TIMEOUT) == "after"  # still open: the 'error' listener chose not to close


def test_a_port_in_use_names_the_address():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError) as caught:
            MultipathServer(port=port, host="127.0.0.1")
        assert f"127.0.0.1:{port}" in str(caught.value)
        assert caught.value.errno is not None  # errno kept (EADDRINUSE)
        with pytest.raises(OSError, match=f"127.0.0.1:{port}"):
            MultipathServer(port=port, host="127.0.0.1", auto_listen=False).listen()


def test_serve_forever_ends_on_a_sigterm_that_another_thread_received(tmp_path):
    """The kernel may deliver SIGTERM to any thread; serve_forever() must end
    all the same (it hung in an untimed wait when the accept or timer thread
    got the signal: the pages' blocks met it about one time in ten)."""
    script = tmp_path / "serve.py"
    script.write_text(
        "import signal, threading, time\n"
        "from ws_multipath import MultipathServer\n"
        "server = MultipathServer(port=0, host='127.0.0.1')\n"
        "def elsewhere():\n"
        "    while signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:  # until serve_forever() took SIGTERM over\n"
        "        time.sleep(0.01)\n"
        "    signal.pthread_kill(threading.get_ident(), signal.SIGTERM)  # to this thread, not the main one\n"
        "threading.Thread(target=elsewhere).start()\n"
        "server.serve_forever()\n"
        "print('closed', flush=True)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0 and result.stdout == "closed\n", result.stderr
