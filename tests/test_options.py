"""options.py: the typed options of create_handler."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
import typing

import pytest

from ws_multipath.options import HandlerOptions, HandlerOptionsDict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_typed_dict_names_every_option():
    assert set(typing.get_type_hints(HandlerOptionsDict)) == {f.name for f in dataclasses.fields(HandlerOptions)}


@pytest.mark.timeout(120)
def test_mypy_strict_catches_a_misspelt_option(tmp_path):
    pytest.importorskip("mypy")
    user_file = tmp_path / "app.py"
    user_file.write_text(
        textwrap.dedent(
            """
            from ws_multipath import MultipathServer

            def build() -> None:
                server = MultipathServer(port=0)
                server.create_handler("/ok", ping_interval=5, max_queue=4)
                server.create_handler("/typo", ping_intervall=5)
            """
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"), str(user_file)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=110,
    )
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert result.returncode == 1, result.stdout + result.stderr
    assert len(errors) == 1 and "ping_intervall" in errors[0] and "app.py:7" in errors[0], result.stdout
