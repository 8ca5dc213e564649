"""Run the Autobahn|Testsuite (``../shared/autobahn``) against the echo server.

    python tests/conformance/autobahn.py            # cases 1-10 on /echo and /iter (about 45 s)
    python tests/conformance/autobahn.py --deflate  # cases 12.* and 13.* on /deflate (about 11 min)
    python tests/conformance/autobahn.py --all      # both, one after the other

Starts ``echo_server.py`` on a free port, runs the suite, stops the server,
and exits non-zero when a case is FAILED or MISSING. Exits 0 with a message
when ``../shared/autobahn`` is absent (a user's clone has no suite).
Reports go to ``--out`` (default: a temporary folder, printed).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SUITE = ROOT.parent / "shared" / "autobahn"


def start_server(port_file: Path) -> subprocess.Popen:
    server = subprocess.Popen([sys.executable, str(HERE / "echo_server.py"), "--port-file", str(port_file)], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not (port_file.exists() and port_file.read_text().strip()):
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise SystemExit("echo server did not start")
        time.sleep(0.05)
    return server


def run_suite(port: int, path: str, cases: str, exclude: str, out: Path) -> int:
    env = dict(os.environ, AB_EXCLUDE=exclude, AB_AGENT="ws_multipath")
    started = time.monotonic()
    result = subprocess.run(["bash", str(SUITE / "run.sh"), f"ws://127.0.0.1:{port}{path}", cases, str(out)], env=env)
    print(f"autobahn {cases} (excluding {exclude or 'nothing'}) on {path}: {time.monotonic() - started:.1f} s, exit {result.returncode}", flush=True)
    return result.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--deflate", action="store_true", help="cases 12.* and 13.* (permessage-deflate)")
    group.add_argument("--all", action="store_true", help="cases 1-10, then 12.* and 13.*")
    parser.add_argument("--out", type=Path, help="folder for the reports")
    args = parser.parse_args()
    if not (SUITE / "run.sh").exists():
        print(f"SKIPPED: the Autobahn suite is not at {SUITE} (it comes with the team's shared folder)")
        return 0
    subprocess.run(["bash", str(SUITE / "setup.sh")], check=True, stdout=subprocess.DEVNULL)
    out = args.out or Path(tempfile.mkdtemp(prefix="autobahn-"))
    runs = []
    if not args.deflate:
        runs.append(("/echo", "*", "12.*,13.*", out / "cases-1-10-listener"))
        runs.append(("/iter", "*", "12.*,13.*", out / "cases-1-10-iteration"))
    if args.deflate or args.all:
        runs.append(("/deflate", "12.*,13.*", "", out / "cases-12-13"))
    with tempfile.TemporaryDirectory() as scratch:
        server = start_server(Path(scratch) / "port")
        try:
            port = int((Path(scratch) / "port").read_text())
            status = 0
            for path, cases, exclude, folder in runs:
                status = run_suite(port, path, cases, exclude, folder) or status
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    print(f"reports in {out}")
    return status


if __name__ == "__main__":
    sys.exit(main())
