"""Every code block on every page (README.rst and docs/**/*.rst) runs as
shown (issue 20).

- A Python block is either the whole of a file in examples/ (its first line
  is ``# examples/name.py``, as the file's is; its text is that file's, byte
  for byte, and tests/test_examples.py runs the file) or
  self-contained: it is run here, in a fresh interpreter, as it is written.
  A block that starts a server is run until it listens, then stopped with
  SIGTERM, which must close it cleanly (exit 0). The only changes made to
  it: its port (8000 or 8080) becomes a free one, so that it cannot meet
  another program on this machine, and a block that needs Redis (as its
  page says) gets a redis-server of its own started for it, on a free port
  instead of 6379 (skipped, saying so, where there is no redis-server).
- No page uses ``literalinclude``: on a code-hosting site the pages are
  rendered without Sphinx and an include shows nothing, so the code is on
  the page itself.
- A plain ``::`` block is never Python code (mark it ``.. code-block::
  python`` so that it is run); shell blocks never install from PyPI, where
  ws_multipath is not.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
PAGES = [ROOT / "README.rst", *sorted((ROOT / "docs").rglob("*.rst"))]
PAGES = [page for page in PAGES if "_build" not in page.parts]
RUN_TIMEOUT = 60.0


@dataclass
class Block:
    page: pathlib.Path
    line: int
    kind: str  # "python", "sh", ..., "::" for a plain literal block, "literalinclude"
    text: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks_of(page: pathlib.Path) -> list:
    """The literal blocks of an RST page, with their directive's language."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found = []
    i = 0
    while i < len(lines):
        line = lines[i]
        directive = re.match(r"^(\s*)\.\. (code-block|code|sourcecode|literalinclude)::\s*(\S*)", line)
        plain = line.rstrip().endswith("::") and not re.match(r"^\s*\.\. ", line)
        if not (directive or plain):
            i += 1
            continue
        indent = len(line) - len(line.lstrip())
        j = i + 1
        while j < len(lines) and re.match(r"^\s+:[\w-]+:", lines[j]):  # directive options
            j += 1
        body = []
        while j < len(lines) and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > indent):
            body.append(lines[j])
            j += 1
        while body and not body[-1].strip():
            body.pop()
        text_lines = [b for b in body if b.strip()]
        margin = min((len(b) - len(b.lstrip()) for b in text_lines), default=0)
        text = "\n".join(b[margin:] for b in body).strip("\n") + "\n"
        if directive and directive.group(2) == "literalinclude":
            kind = "literalinclude"
        elif directive:
            kind = directive.group(3) or "text"
        else:
            kind = "::"
        if directive or text.strip():
            found.append(Block(page, i + 1, kind, text))
        i = j
    return found


ALL = [block for page in PAGES for block in blocks_of(page)]
PYTHON = [block for block in ALL if block.kind in ("python", "python3", "py")]


def test_the_pages_have_python_blocks():
    assert len(PAGES) > 20 and len(PYTHON) > 10


def test_no_page_uses_literalinclude():
    """A code-hosting site shows nothing for an include: the code is on the page."""
    assert [b.where for b in ALL if b.kind == "literalinclude"] == []


def test_plain_literal_blocks_are_not_python():
    """Python is marked as such, so that the test below runs it."""
    looks_like_python = []
    for block in ALL:
        if block.kind != "::":
            continue
        try:
            compile(block.text, block.where, "exec")
        except SyntaxError:
            continue
        if re.search(r"^(import |from \S+ import |def |class |@)", block.text, re.MULTILINE):
            looks_like_python.append(block.where)
    assert looks_like_python == []


def test_no_page_installs_from_pypi():
    """ws_multipath is not on PyPI: ``pip install ws_multipath`` fails."""
    wrong = []
    for block in ALL:
        for line in block.text.splitlines():
            if re.search(r"pip install\s+(-\S+\s+)*[\"']?ws_multipath\b(?!\S*\s*@)", line):
                wrong.append(f"{block.where}: {line.strip()}")
    for page in PAGES:
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"``pip install\s+[\"']?ws_multipath\b(?!\S*\s*@)", line) and "fails" not in line:
                wrong.append(f"{page.relative_to(ROOT)}:{number}: {line.strip()}")
    assert wrong == []


def whole_file(block):
    """``examples/name`` when the block is shown as that whole file: its first
    line is the comment ``# examples/name``, as the file's own first line is."""
    named = re.match(r"#\s*(examples/[\w.]+)\s*\n", block.text)
    return named.group(1) if named else None


WHOLE = [block for block in ALL if whole_file(block)]


def test_whole_example_files_are_the_files():
    """A block shown as an examples/ file is that file, unchanged; every
    file so shown is run by tests/test_examples.py."""
    assert len(WHOLE) >= 15
    for block in WHOLE:
        path = ROOT / whole_file(block)
        assert path.exists(), block.where
        assert block.text == path.read_text(encoding="utf-8"), f"{block.where} differs from {whole_file(block)}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def catches_sigterm(pid: int) -> bool:
    """serve_forever() took SIGTERM over (Linux: the caught-signals mask in
    /proc); before that a SIGTERM would kill the process uncleanly."""
    try:
        status = pathlib.Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = int(re.search(r"^SigCgt:\s*([0-9a-f]+)", status, re.MULTILINE).group(1), 16)
    return bool(caught & (1 << (signal.SIGTERM - 1)))


def self_contained():
    return [block for block in PYTHON if not whole_file(block)]


@pytest.fixture
def redis_port():
    """A throwaway redis-server, started on first use."""
    started = []

    def start() -> int:
        if not shutil.which("redis-server"):
            pytest.skip("this block needs a Redis server, and there is no redis-server here")
        port = free_port()
        process = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
        started.append(process)
        deadline = time.monotonic() + RUN_TIMEOUT
        while not listening(port):
            assert process.poll() is None and time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        return port

    yield start
    for process in started:
        process.terminate()
        process.wait(RUN_TIMEOUT)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to know when SIGTERM is safe")
@pytest.mark.parametrize("block", self_contained(), ids=lambda b: b.where)
def test_block_runs_as_shown(block, tmp_path, redis_port):
    port = free_port()
    code = re.sub(r"\b(8000|8080)\b", str(port), block.text)
    if "redis://" in code:
        code = code.replace(":6379/", f":{redis_port()}/")
    script = tmp_path / "block.py"
    script.write_text(code, encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    process = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while process.poll() is None and not (listening(port) and catches_sigterm(process.pid)):
            assert time.monotonic() < deadline, f"{block.where}: neither ended nor served on its port in {RUN_TIMEOUT} s"
            time.sleep(0.05)  # polling a subprocess: nothing to wait on
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=RUN_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, f"{block.where} exited {process.returncode}:\n{out}\n{err}"
    assert "Traceback" not in err, f"{block.where}:\n{err}"
