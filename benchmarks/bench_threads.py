#!/usr/bin/env python
"""8 OS threads sharing 4 connections: fastpool with and without the pre-queue yield, DBUtils,
and a GIL-only control, interleaved round by round in one process.

    python benchmarks/bench_threads.py [--dsn DSN] [--rounds 8] [--seconds 0.5] [--json FILE]

Each round runs every contender for ``--seconds`` (the loop of ``python -m fastpool bench``'s
threads scenario: getconn + putconn, no query). Contenders:

* ``fastpool-c``: as shipped (an OS thread that misses yields the GIL up to
  ``fastpool.green.SPIN_YIELDS`` times before it queues);
* ``fastpool-c-queue``: the same pool with ``SPIN_YIELDS = 0`` (queue at once: the behaviour
  before the yield was added);
* ``dbutils``: DBUtils ``PooledDB`` (a Condition; a returned connection can be taken by any
  thread, so it barges);
* ``gil-only``: no pool and no lock, a deque of 4 tokens under the GIL alone: the most any pool
  could do here, and the fairness the GIL itself allows (least/most cycles of one thread).

Reported per contender: cycles/s of every round, the worst round, and the fairness of every
round; and per round, fastpool's ratio to DBUtils in that same round.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
from pathlib import Path

try:
    import fastpool  # noqa: F401
except ImportError:  # a checkout that is not installed: use its src/ tree
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
from fastpool_bench import cycle, peers  # this directory is sys.path[0] for a script

import fastpool.green


class _GilOnly:
    """4 tokens in a deque, no lock: what the threads do when no pool is involved."""

    def __init__(self, size: int) -> None:
        self.free = collections.deque(range(1, size + 1))
        self.name = "gil-only"

    def get(self) -> int:
        free = self.free
        return free.pop() if free else 0

    def put(self, token: int) -> None:
        if token:
            self.free.append(token)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dsn", default=os.environ.get("FASTPOOL_BENCH_DSN", peers.DEFAULT_DSN))
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--size", type=int, default=4)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--seconds", type=float, default=0.5)
    p.add_argument("--json", default=None, metavar="FILE")
    a = p.parse_args()

    fp = peers.get_spec("fastpool-c").make(a.dsn, a.size)
    contenders = {"fastpool-c": fp, "fastpool-c-queue": fp, "gil-only": _GilOnly(a.size)}
    db = peers.get_spec("dbutils")
    if db.available():
        contenders["dbutils"] = db.make(a.dsn, a.size)
    else:
        print("note: DBUtils not installed (pip install DBUtils): no DBUtils column")
    spin = fastpool.green.SPIN_YIELDS
    rounds: dict = {n: [] for n in contenders}
    try:
        for name, ad in contenders.items():  # warm-up
            cycle.run_threads(ad, a.threads, 0.1)
        for r in range(a.rounds):
            names = list(contenders)
            k = r % len(names)
            for name in names[k:] + names[:k]:  # rotate the order round by round
                fastpool.green.SPIN_YIELDS = 0 if name == "fastpool-c-queue" else spin
                res = cycle.run_threads(contenders[name], a.threads, a.seconds)
                fair = res["per_thread_min"] / res["per_thread_max"] if res["per_thread_max"] else 0.0
                rounds[name].append({"cps": res["cycles_per_s"], "fairness": fair,
                                     "errors": res["errors"]})
    finally:
        fastpool.green.SPIN_YIELDS = spin
        for name, ad in contenders.items():
            if hasattr(ad, "close") and name != "fastpool-c-queue":
                ad.close()

    load = os.getloadavg()
    print(f"{a.threads} threads, {a.size} connections, {a.rounds} rounds of {a.seconds:g} s, "
          f"interleaved; load average {load[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'contender':18s} {'median/s':>10s} {'worst/s':>10s} {'best/s':>10s}  "
          f"{'fairness min..max':>18s}  errors")
    for name, rs in rounds.items():
        cps = [x["cps"] for x in rs]
        fair = [x["fairness"] for x in rs]
        print(f"{name:18s} {statistics.median(cps):10,.0f} {min(cps):10,.0f} {max(cps):10,.0f}  "
              f"{min(fair):8.2f}..{max(fair):<8.2f}  {sum(x['errors'] for x in rs)}")
    if "dbutils" in rounds:
        for name in ("fastpool-c", "fastpool-c-queue"):
            ratios = [f["cps"] / d["cps"] for f, d in zip(rounds[name], rounds["dbutils"])]
            print(f"{name} / dbutils, same round: worst {min(ratios):.2f}×, median "
                  f"{statistics.median(ratios):.2f}×, rounds ≥ 3×: {sum(x >= 3 for x in ratios)}"
                  f"/{len(ratios)}")
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "load": load, "rounds": rounds},
                                           indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
