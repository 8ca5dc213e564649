"""The Pythons claimed agree (issue 20): setup.cfg's python_requires floor,
its classifiers, dev.py's PYTHONS (which ``dev.py test-pythons`` and CI run
the core tests on) and the pages that name them."""

from __future__ import annotations

import configparser
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
try:
    import dev
finally:
    sys.path.remove(str(ROOT))


def test_python_requires_classifiers_and_test_pythons_agree():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    floor = re.fullmatch(r">=\s*3\.(\d+)", cfg["options"]["python_requires"].strip())
    assert floor, cfg["options"]["python_requires"]
    classified = re.findall(r"Programming Language :: Python :: (3\.\d+)", cfg["metadata"]["classifiers"])
    assert dev.PYTHONS[0] == f"3.{floor.group(1)}"
    assert list(dev.PYTHONS) == classified
    for page in ("README.rst", "docs/install.rst", "docs/tutorial.rst"):
        text = (ROOT / page).read_text()
        assert f"{dev.PYTHONS[0]} to {dev.PYTHONS[-1]}" in text.replace("\n", " "), page


def test_every_core_test_module_exists():
    for module in dev.CORE_TESTS:
        assert (ROOT / module).is_file(), module
