#!/usr/bin/env python
"""Greenlets: N greenlets sharing a pool of ``size`` connections, under gevent or eventlet.

The scenario is implemented once, in ``fastpool_bench.green`` beside this script (also run by
``python -m fastpool bench``); this script is its command line, with the same options::

    python benchmarks/bench_green.py [--hub gevent|eventlet] [--greenlets 1000] [--size 10]
                                     [--cycles 20] [--repeat 3] [--quick] [--json out.json]
    python benchmarks/bench_green.py --only fastpool-c,nopool --hub eventlet

Every contender runs in its own monkey-patched subprocess; see that module for the method.
"""

import sys
from pathlib import Path

try:
    import fastpool  # noqa: F401
except ImportError:  # a checkout that is not installed: use its src/ tree
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
from fastpool_bench import green  # this directory is sys.path[0] for a script

if __name__ == "__main__":
    sys.exit(green.main())
