"""Metadata is in setup.cfg. This file adds the optional C extension
``ws_multipath._speedups`` (the masking of client frames): when there is no
compiler, or the build fails, the install still succeeds and ws_multipath
uses its pure-Python path (``ws_multipath.protocol.SPEEDUPS`` is False)."""

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class optional_build_ext(build_ext):
    """``build_ext`` that reports a failure in one line instead of failing."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # no compiler, missing Python headers, ...
            self._skip(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # the compiler or linker failed
            self._skip(exc)

    @staticmethod
    def _skip(exc):
        reason = str(exc).strip().splitlines()[-1:] or [type(exc).__name__]
        print(f"ws_multipath: C speedups not built ({reason[0]}); using the pure-Python path", file=sys.stderr)


setup(
    ext_modules=[Extension("ws_multipath._speedups", sources=["ws_multipath/_speedups.c"])],
    cmdclass={"build_ext": optional_build_ext},
)
