"""The interpreted core: ``_core.py`` run by the interpreter, never compiled.

``fastpool._core`` is what Cython compiled from ``_core.py`` (where a compiler was at hand);
this module executes the very same source file as plain Python, so both cores can be loaded in
one process (the tests run both) and can never drift apart. The bytecode is cached as for any
import of ``_core.py``.
"""

import sys as _sys
from importlib.machinery import SourceFileLoader as _SourceFileLoader
from os import path as _path

_SourceFileLoader(__name__, _path.join(_path.dirname(__file__), "_core.py")).exec_module(_sys.modules[__name__])
