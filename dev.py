#!/usr/bin/env python3
"""The commands of README.rst, needing only python3:

    python3 dev.py demo --port 8080    # the demo server (/echo, /chat, a page at /)
    python3 dev.py test [pytest args]  # the whole test suite
    python3 dev.py docs [sphinx args]  # the documentation, into docs/_build/html (warnings are errors)

Each creates (or reuses) the virtual environment ``.venv`` in the repo and
installs what it needs into it from the package index.
"""

import os
import signal
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PYTHON = VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure_venv(extras: str) -> None:
    if not PYTHON.exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    stamp = VENV / f".installed-{extras or 'base'}"
    setup_files = [ROOT / "setup.cfg", ROOT / "setup.py", ROOT / "ws_multipath" / "_speedups.c"]  # the C file: rebuild it
    if stamp.exists() and all(stamp.stat().st_mtime >= f.stat().st_mtime for f in setup_files):
        return
    target = f"{ROOT}[{extras}]" if extras else str(ROOT)
    subprocess.check_call([str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-e", target])
    stamp.touch()


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("demo", "test", "docs"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    command, rest = sys.argv[1], sys.argv[2:]
    if command == "demo":
        ensure_venv("")
        return run([str(PYTHON), "-m", "ws_multipath", *rest])
    if command == "docs":
        ensure_venv("docs")
        # -W: a warning (a broken reference, a docstring autodoc cannot read, a
        # missing literalinclude) fails the build; --keep-going lists them all.
        # -E: read every page again, so a warning is never hidden by the cache.
        return run([str(PYTHON), "-m", "sphinx", "-W", "--keep-going", "-E", "-b", "html", "docs", "docs/_build/html", *rest])
    ensure_venv("test")
    return run([str(PYTHON), "-m", "pytest", *rest])


_FORWARDED = (signal.SIGTERM, signal.SIGINT)
_SI_KERNEL = 0x80  # si_code of a signal the terminal sent (Ctrl-C) rather than kill()


def _child_setup() -> None:
    """In the child: the signals dev.py blocks are unblocked again, and on
    Linux the child gets SIGTERM if dev.py dies (even by SIGKILL)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except Exception:  # noqa: BLE001 - best effort
            pass


def run(argv: list) -> int:
    """Run ``argv`` and return its exit status. SIGTERM and SIGINT sent to
    dev.py (``kill``, a process manager) are passed on to it; a Ctrl-C in
    the terminal reaches it directly (same process group) and is not sent
    twice. dev.py waits for it to stop, and on Linux it never outlives
    dev.py (``PR_SET_PDEATHSIG``)."""
    if not hasattr(signal, "sigtimedwait"):  # not Linux: forward whatever comes
        return _run_forwarding(argv)
    signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARDED)
    try:
        child = subprocess.Popen(argv, cwd=ROOT, preexec_fn=_child_setup)  # noqa: PLW1509 - dev.py has one thread
        while True:
            info = signal.sigtimedwait(_FORWARDED, 0.2)
            if info is not None and not (info.si_signo == signal.SIGINT and info.si_code == _SI_KERNEL):
                _pass_on(child, info.si_signo)
            status = child.poll()
            if status is not None:
                return status
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)


def _run_forwarding(argv: list) -> int:
    child = subprocess.Popen(argv, cwd=ROOT)
    previous = {sig: signal.signal(sig, lambda signum, frame: _pass_on(child, signum)) for sig in _FORWARDED}
    try:
        while True:
            try:
                return child.wait()
            except KeyboardInterrupt:
                continue
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _pass_on(child: "subprocess.Popen[bytes]", sig: int) -> None:
    try:
        child.send_signal(sig)
    except ProcessLookupError:
        pass


if __name__ == "__main__":
    sys.exit(main())
