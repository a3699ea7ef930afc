#!/usr/bin/env python
"""Checkout/return cost of fastpool against its peers, all measured in one run.

The OS-thread scenarios of ``python -m fastpool bench`` (the code is in ``fastpool_bench``, beside this script):

1. ``getconn`` + ``putconn``, no query, one thread: ns per cycle.  A tight loop over the pools'
   own bound methods; best (and median) of N repeats, the peers interleaved repeat by repeat so
   a noisy neighbour hits all of them alike.
2. ``with pool.connection(): SELECT 1`` (or the peer's idiomatic equivalent: commit on success,
   connection returned), one thread: µs per cycle, and the pool's share of the cycle,
   ``(cycle - raw) / cycle``, where *raw* is the same work on a plain psycopg2 connection
   measured in this run.
3. 8 threads sharing 4 connections, each doing ``getconn`` + ``putconn`` for a fixed wall time:
   total cycles/s and errors (psycopg2's ThreadedConnectionPool raises "connection pool
   exhausted"; those are counted, not fatal).

Usage::

    python benchmarks/bench_cycle.py [--dsn DSN] [--quick] [--json out.json] [--out chart.png]
    python benchmarks/bench_cycle.py --only fastpool-c,psycopg_pool --scenarios 1

Unlike ``python -m fastpool bench``, the server defaults to the local one
(``FASTPOOL_BENCH_DSN``, else host=127.0.0.1 port=5432 user=postgres dbname=test) and no chart
is drawn unless ``--out`` is given.  Targets printed as PASS/MISS: fastpool's C core <= 200 ns
per cycle and >= 15x faster than psycopg_pool (scenario 1); >= 3x DBUtils' throughput with no
error (scenario 3).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

try:
    import fastpool  # noqa: F401
except ImportError:  # a checkout that is not installed: use its src/ tree
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
from fastpool_bench import cli, peers  # this directory is sys.path[0] for a script

SCENARIOS = {"1": "cycle", "2": "select", "3": "threads"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Every other option is passed to `python -m fastpool bench`: --quick, --json PATH, "
               "--only NAMES, --plain, --strict.")
    ap.add_argument("--dsn", default=os.environ.get("FASTPOOL_BENCH_DSN", peers.DEFAULT_DSN),
                    help="default: FASTPOOL_BENCH_DSN, else the local server (%(default)s)")
    ap.add_argument("--scenarios", default="1,2,3",
                    help="which scenarios: 1 (cycle), 2 (select), 3 (threads); e.g. 1,3")
    ap.add_argument("--out", default=None, metavar="PATH", help="also draw the chart here (PNG)")
    args, rest = ap.parse_known_args(argv)
    scenarios = [SCENARIOS.get(s.strip(), s.strip()) for s in args.scenarios.split(",") if s.strip()]
    forward = ["--dsn", args.dsn, "--scenarios", ",".join(scenarios)]
    forward += ["--out", args.out] if args.out else ["--no-chart"]
    return cli.main(forward + rest)


if __name__ == "__main__":
    sys.exit(main())
