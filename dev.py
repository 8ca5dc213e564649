#!/usr/bin/env python3
"""The commands of README.rst, needing only python3:

    python3 dev.py demo --port 8080    # the demo server (/echo, /chat, a page at /)
    python3 dev.py test [pytest args]  # the whole test suite
    python3 dev.py docs [sphinx args]  # the documentation, into docs/_build/html (warnings are errors)

Each creates (or reuses) the virtual environment ``.venv`` in the repo and
installs what it needs into it from the package index.
"""

import os
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


def run(argv: list) -> int:
    """Run ``argv``; Ctrl-C reaches it directly, so wait for it to stop."""
    child = subprocess.Popen(argv, cwd=ROOT)
    while True:
        try:
            return child.wait()
        except KeyboardInterrupt:
            continue


if __name__ == "__main__":
    sys.exit(main())
