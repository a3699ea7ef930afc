"""Build the Cython core. Everything else is declared in pyproject.toml.

The compiled core is optional: fastpool's pure-Python twin (``fastpool._core_py``) has the same
API and passes the same tests, so a machine without a C compiler still installs a working pool
(slower on the checkout/return path), with a warning saying so.
"""

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

NO_EXTENSION = """
********************************************************************************
fastpool: the compiled core could not be built ({reason}).
Installing the pure-Python core instead: same behaviour, slower getconn/putconn
(fastpool.__impl__ == "python"). To get the compiled core, install a C compiler
and Python's headers (Debian/Ubuntu: apt-get install gcc python3-dev) and reinstall.
********************************************************************************
"""


class optional_build_ext(build_ext):
    """Build the extension if possible; otherwise warn loudly and install without it."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler at all: distutils raises before any extension
            self._warn(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # compiler or headers missing, compile error
            self._warn(exc)

    @staticmethod
    def _warn(exc: Exception) -> None:
        print(NO_EXTENSION.format(reason=f"{type(exc).__name__}: {exc}"), file=sys.stderr)


def extensions() -> list:
    try:
        from Cython.Build import cythonize
    except ImportError as exc:  # only outside pip's isolated build (Cython is a build requirement)
        optional_build_ext._warn(exc)
        return []
    # Linux: strip the symbol table at link time (the wheel ships a stripped .so; tracebacks
    # through the core are not affected, they come from Python's own frame information).
    link_args = ["-Wl,--strip-all"] if sys.platform.startswith("linux") else []
    return cythonize(
        [
            Extension("fastpool._core", ["src/fastpool/_core.py"], extra_link_args=link_args),
            # The return tracking's per-statement execute (interpreted where this one is not built).
            Extension("fastpool._track", ["src/fastpool/_track.py"], extra_link_args=link_args),
        ],
        compiler_directives={
            "language_level": 3,
            # _core.py is also plain Python (the interpreted core): its annotations are for
            # type checkers; the C types come from _core.pxd and from inference.
            "annotation_typing": False,
            "infer_types": True,
            # The ring's invariants are enforced explicitly; these checks only cost time on the hot path.
            "boundscheck": False,
            "wraparound": False,
            "initializedcheck": False,
            "cdivision": True,
        },
    )


setup(ext_modules=extensions(), cmdclass={"build_ext": optional_build_ext})
