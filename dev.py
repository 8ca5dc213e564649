#!/usr/bin/env python3
"""The commands of README.rst, needing only python3:

    python3 dev.py demo --port 8080    # the demo server (/echo, /chat, a page at /)
    python3 dev.py test [pytest args]  # the whole test suite
    python3 dev.py docs [sphinx args]  # the documentation, into docs/_build/html (warnings are errors)
    python3 dev.py test-pythons [--skip-missing] [pytest args]
                                       # the core tests on every Python in PYTHONS (each in .venv-3.X)

Each creates (or reuses) the virtual environment ``.venv`` in the repo and
installs what it needs into it from the package index. The tests with
Node's ``ws`` as the client (tests/test_node_ws.py) install ``ws@8`` with
npm into tests/.node/ themselves the first time (without ``node`` they skip).
"""

import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = "Scripts" if os.name == "nt" else "bin"
PYTHON = VENV / BIN / ("python.exe" if os.name == "nt" else "python")

# Every Python that setup.cfg's python_requires admits and its classifiers
# name (tests/test_pythons.py checks the three agree). ``test-pythons`` runs
# CORE_TESTS on each: the protocol, the server, connections, handshakes,
# routing, the WSGI side, closing, and the pages' code. A minute or so each.
PYTHONS = ("3.9", "3.10", "3.11", "3.12", "3.13")
CORE_TESTS = (
    "tests/test_protocol.py",
    "tests/test_speedups.py",
    "tests/test_server.py",
    "tests/test_connection.py",
    "tests/test_handler.py",
    "tests/test_closing.py",
    "tests/test_routing.py",
    "tests/test_upgrade.py",
    "tests/test_wsgi.py",
    "tests/test_testing.py",
    "tests/test_first_hour.py",
    "tests/test_examples.py",
    "tests/test_docs_code.py",
    "tests/test_pythons.py",
)


def ensure_venv(extras: str, venv_dir: Path = VENV, base_python: str = "") -> Path:
    """Create (or reuse) ``venv_dir`` and install the checkout into it,
    editable, with ``extras``; returns its python. ``base_python`` is the
    interpreter to build it with (default: the one running dev.py)."""
    python = venv_dir / BIN / ("python.exe" if os.name == "nt" else "python")
    if not python.exists():
        print(f"creating {venv_dir}" + (f" with {base_python}" if base_python else ""), flush=True)
        if base_python:
            subprocess.check_call([base_python, "-m", "venv", str(venv_dir)])
        else:
            venv.EnvBuilder(with_pip=True).create(venv_dir)
    stamp = venv_dir / f".installed-{extras or 'base'}"
    setup_files = [ROOT / "setup.cfg", ROOT / "setup.py", ROOT / "ws_multipath" / "_speedups.c"]  # the C file: rebuild it
    if stamp.exists() and all(stamp.stat().st_mtime >= f.stat().st_mtime for f in setup_files):
        return python
    target = f"{ROOT}[{extras}]" if extras else str(ROOT)
    subprocess.check_call([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-e", target])
    stamp.touch()
    return python


def find_python(version: str) -> str:
    """The newest pyenv build of ``version`` (X.Y), else ``pythonX.Y`` on
    PATH; each candidate is run to check that it is that version (a pyenv
    shim of a version not selected fails). "" if none."""
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    builds = [b for b in glob.glob(os.path.join(root, "versions", f"{version}.*", "bin", "python")) if re.fullmatch(re.escape(version) + r"\.\d+", Path(b).parent.parent.name)]
    builds.sort(key=lambda b: int(Path(b).parent.parent.name.rsplit(".", 1)[1]), reverse=True)
    for candidate in [*builds, shutil.which(f"python{version}")]:
        if not candidate:
            continue
        try:
            said = subprocess.run([candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            continue
        if said == version:
            return candidate
    return ""


def test_pythons(args: list) -> int:
    """The core tests on every Python in PYTHONS, each in its own .venv-X.Y
    (editable, [test] extra, C speedups built). A missing interpreter fails
    the run unless --skip-missing is given, and is then named in the summary."""
    skip_missing = "--skip-missing" in args
    args = [a for a in args if a != "--skip-missing"]
    results = []
    for version in PYTHONS:
        base = find_python(version)
        if not base:
            results.append((version, "MISSING", 0.0))
            print(f"== Python {version}: NOT FOUND (neither python{version} on PATH nor ~/.pyenv/versions/{version}.*)", flush=True)
            continue
        print(f"== Python {version}: {base}", flush=True)
        started = time.monotonic()
        python = ensure_venv("test", ROOT / f".venv-{version}", base)
        check = "import sys, ws_multipath.protocol as p; print(sys.version.split()[0], 'C' if p.SPEEDUPS else 'pure Python')"
        found = subprocess.run([str(python), "-c", check], cwd=ROOT, capture_output=True, text=True).stdout.split()
        if found[1:] != ["C"]:
            print(f"   the C speedups were not built for Python {version} ({' '.join(found[1:]) or 'import failed'})", flush=True)
            results.append((version, "NO SPEEDUPS", time.monotonic() - started))
            continue
        status = run([str(python), "-m", "pytest", "-q", *(args or CORE_TESTS)])
        results.append((version + f" ({found[0]})", "passed" if status == 0 else f"FAILED (exit {status})", time.monotonic() - started))
    print("== test-pythons summary")
    for version, outcome, seconds in results:
        print(f"   Python {version}: {outcome}, {seconds:.0f} s")
    failed = [r for r in results if r[1] != "passed" and not (r[1] == "MISSING" and skip_missing)]
    if any(r[1] == "MISSING" for r in results):
        print("   WARNING: some Pythons were not found" + (" (--skip-missing: not counted as a failure)" if skip_missing else ""))
    return 1 if failed else 0


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("demo", "test", "docs", "test-pythons"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    command, rest = sys.argv[1], sys.argv[2:]
    if command == "test-pythons":
        return test_pythons(rest)
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
