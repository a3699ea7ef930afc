"""The peer adapters, for the scripts in this directory (``import peers``).

They live in ``fastpool_bench.peers`` beside this module (also used by
``python -m fastpool bench``); this module only re-exports them so there is one
implementation.  See that module for the interface.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import fastpool  # noqa: F401
except ImportError:  # a checkout that is not installed: use its src/ tree
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import fastpool_bench.peers as _impl  # noqa: E402

Adapter = _impl.Adapter
BY_NAME = _impl.BY_NAME
DEFAULT_DSN = _impl.DEFAULT_DSN
SPECS = _impl.SPECS
Spec = _impl.Spec
ToyPool = _impl.ToyPool
TxContext = _impl.TxContext
available = _impl.available
get_spec = _impl.get_spec
make = _impl.make

__all__ = ["Adapter", "BY_NAME", "DEFAULT_DSN", "SPECS", "Spec", "ToyPool", "TxContext",
           "available", "get_spec", "make"]
