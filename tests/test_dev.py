"""dev.py passes SIGTERM and SIGINT on to the server it started and never
leaves it orphaned (``run()``, which ``dev.py demo`` uses, driven here with
this interpreter instead of the repo's .venv)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 10.0

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc, uses PR_SET_PDEATHSIG")


def start_dev_demo():
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); import dev; sys.exit(dev.run([sys.executable, '-m', 'ws_multipath', '--port', '0']))"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    dev = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = dev.stdout.readline().strip()  # the demo's first line, ws://localhost:<port>/echo
    assert url.startswith("ws://") and url.endswith("/echo"), url
    children = Path(f"/proc/{dev.pid}/task/{dev.pid}/children").read_text().split()
    assert len(children) == 1
    child = int(children[0])
    # the demo prints its URLs just before serve_forever() catches SIGTERM: wait for that
    deadline = time.monotonic() + TIMEOUT
    while not catches_sigterm(child):
        assert time.monotonic() < deadline, "the demo never caught SIGTERM"
        time.sleep(0.02)
    return dev, child


def catches_sigterm(pid: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return status != "Z"


def wait_gone(pid: int) -> bool:
    deadline = time.monotonic() + TIMEOUT
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.timeout(30)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_dev_passes_the_signal_on_and_waits_for_the_server(sig):
    dev, child = start_dev_demo()
    try:
        dev.send_signal(sig)
        assert dev.wait(TIMEOUT) == 0  # the demo's own status: it closed gracefully
        assert wait_gone(child)
    finally:
        if dev.poll() is None:
            dev.kill()
        dev.wait()
        dev.stdout.close()
        dev.stderr.close()
        if alive(child):
            os.kill(child, signal.SIGKILL)


@pytest.mark.timeout(30)
def test_the_server_does_not_outlive_a_killed_dev():
    dev, child = start_dev_demo()
    try:
        dev.kill()
        dev.wait(TIMEOUT)
        assert wait_gone(child), "the demo was orphaned"
    finally:
        dev.stdout.close()
        dev.stderr.close()
        if alive(child):
            os.kill(child, signal.SIGKILL)
