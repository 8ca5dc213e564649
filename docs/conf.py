"""Sphinx configuration: python3 dev.py docs (builds into docs/_build/html, -W)."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

import ws_multipath

project = "ws_multipath"
author = "the ws_multipath authors"
copyright = "ws_multipath authors, MIT licence"
release = version = ws_multipath.__version__

extensions = ["sphinx.ext.autodoc"]
exclude_patterns = ["_build"]
html_theme = "furo"
html_title = f"ws_multipath {release}"
html_static_path = []
pygments_style = "sphinx"

# autodoc: the docstrings are written for reading in the source (RST-ish,
# ``literals``), shown as they are; signatures keep their defaults.
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autoclass_content = "class"
