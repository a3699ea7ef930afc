"""Which core runs: ``FASTPOOL_IMPL=c|python`` (unset: C if it loads, else Python).

Asking for ``c`` when the extension cannot load is an error, never a silent fallback.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Tuple


def load(name: str) -> ModuleType:
    """The core module for ``name`` ("c" or "python")."""
    if name == "c":
        from . import _core

        # False: no extension was built and _core.py itself was imported. Missing: an extension
        # built from the retired _core.pyx (a checkout not rebuilt since).
        if not getattr(_core, "COMPILED", False):
            raise ImportError(
                "fastpool._core is not compiled from this source (no C compiler when fastpool was "
                "installed, or a build older than _core.py): rebuild with pip install -e ."
            )
        return _core
    if name == "python":
        from . import _core_py

        return _core_py
    raise ValueError(f"FASTPOOL_IMPL must be 'c' or 'python', not {name!r}")


def select() -> Tuple[str, ModuleType]:
    wanted = os.environ.get("FASTPOOL_IMPL", "").strip().lower()
    if wanted:
        if wanted == "c":
            try:
                return "c", load("c")
            except ImportError as exc:
                raise ImportError(
                    f"FASTPOOL_IMPL=c but the compiled core fastpool._core cannot be loaded ({exc}); "
                    "reinstall fastpool with a C compiler available, or set FASTPOOL_IMPL=python"
                ) from exc
        return wanted, load(wanted)
    try:
        return "c", load("c")
    except ImportError:
        return "python", load("python")


impl, core = select()
