"""``python -m fastpool_bench`` from ``benchmarks/`` (same as ``python -m fastpool bench``)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
