#!/usr/bin/env python
"""The full greenlet scenario per query, in counts load cannot change: instructions and
simulated cache misses (valgrind's cachegrind), by difference of two cycle counts.

    python benchmarks/bench_green_cache.py [--only fastpool-c,fairq,hubqueue,nopool]
        [--greenlets 100,300,1000] [--cycles 2] [--queries 2000] [--hub gevent] [--dsn DSN]
        [--LL SIZE,ASSOC,LINE] [--json out.json]

Each contender runs the same child as ``bench_green.py`` (``fastpool_bench.green``: monkey-patch
first, a warm-up pass of one cycle a greenlet, then ``greenlets × cycles`` queries of
``SELECT 1`` + commit on 10 connections), once under cachegrind for each cycle count.  Per query:

    (count at the larger cycle count − count at the smaller) / (greenlets × cycle difference)

(``--cycles`` a greenlet in the smaller run; the larger adds ``--queries`` / greenlets cycles, so
every greenlet count is measured over about the same number of queries.)

which cancels start-up, imports, connecting and the warm-up pass.  Counts: ``I refs``
(instructions), ``D1 misses`` (first-level data misses, reads + writes), ``LLd misses`` (data
misses of the simulated last level).  Only the client process is measured (the server is another
process).  Valgrind runs one thread at a time; the child has one thread (the parent's
``pg_stat_activity`` sampler is not started here).  The simulated caches are valgrind's model of
this CPU (printed), not the hardware: they compare contenders, they do not predict seconds.
``--LL 2097152,16,64`` models the last level as this box's 2 MiB per-core L2 instead of the
shared L3 (valgrind's default choice), to see whether the working set outgrows the closer level.
Page-sized lines make the two levels a model of the data TLBs (4 KiB pages: transparent huge
pages are ``madvise`` only here, and neither pymalloc nor greenlet asks for them):
``--D1 262144,64,4096 --LL 8388608,16,4096`` = 64 fully associative entries, then 2048.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from fastpool_bench import green  # noqa: E402

COUNTS = {"I   refs": "instr", "D1  misses": "d1_miss", "LLd misses": "lld_miss",
          "LL misses": "ll_miss", "D   refs": "d_refs"}
_LINE = re.compile(r"==\d+== (I   refs|D   refs|D1  misses|LLd misses|LL misses):\s+([\d,]+)")


def run_once(name: str, hub: str, dsn: str, greenlets: int, cycles: int, ll: str,
             d1: str = "") -> dict:
    """One child under cachegrind: its totals, plus the cache geometry valgrind used."""
    import fastpool

    # valgrind runs ~50-100x slower: a fastpool checkout must not time out (the references have
    # no timeout at all)
    cfg = {"greenlets": greenlets, "size": 10, "cycles": cycles, "checkout_timeout": 3600.0}
    cmd = ["valgrind", "--tool=cachegrind", "--cache-sim=yes", "--cachegrind-out-file=/dev/null"]
    if ll:
        cmd.append(f"--LL={ll}")
    if d1:
        cmd.append(f"--D1={d1}")
    cmd += green.child_command(name, hub, dsn, f"fpcache-{os.getpid()}-{name}", cfg)
    env = dict(os.environ, PYTHONHASHSEED="0")  # the same dict layouts in both runs
    roots = (str(HERE), str(Path(fastpool.__file__).resolve().parent.parent))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (*roots, env.get("PYTHONPATH")) if p)
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL,
                          timeout=3600)
    out: dict = {"name": name, "greenlets": greenlets, "cycles": cycles, "valgrind_s": time.time() - t0}
    for label, value in _LINE.findall(proc.stderr):
        # the "D1 misses" and "LL misses" lines come once per kind (I and D, or total): keep the
        # first of each label, which is the data or total line cachegrind prints under it
        out.setdefault(COUNTS[label], int(value.replace(",", "")))
    res = [json.loads(line[len(green.RESULT_TAG):]) for line in proc.stdout.splitlines()
           if line.startswith(green.RESULT_TAG)]
    out["queries"] = res[0].get("queries") if res else None
    out["errors"] = res[0].get("errors") if res else None
    if not res or res[0].get("status") != "ok" or "instr" not in out:
        # e.g. a stale compiled core: the child says why in its RESULT line
        out["failed"] = (res[0].get("note") if res else None) or proc.stderr.strip()[-600:]
    warn = [ln for ln in proc.stderr.splitlines() if "warning" in ln.lower() and "cache" in ln.lower()]
    out["cache_notes"] = warn[:3]
    return out


def per_query(lo: dict, hi: dict) -> dict:
    n = hi["greenlets"] * (hi["cycles"] - lo["cycles"])
    return {k: (hi[k] - lo[k]) / n for k in ("instr", "d_refs", "d1_miss", "lld_miss", "ll_miss")
            if k in hi and k in lo}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="fastpool-c,fairq,hubqueue,nopool")
    p.add_argument("--greenlets", default="1000")
    p.add_argument("--cycles", type=int, default=2, help="cycles a greenlet in the smaller run")
    p.add_argument("--queries", type=int, default=2000,
                   help="extra queries in the larger run (its cycles: --cycles + queries/greenlets, "
                        "rounded up): the same difference whatever the greenlet count")
    p.add_argument("--hub", choices=["gevent", "eventlet"], default="gevent")
    p.add_argument("--dsn", default=os.environ.get("FASTPOOL_BENCH_DSN",
                                                   "host=127.0.0.1 port=5432 user=postgres dbname=test"))
    p.add_argument("--LL", default="", help="cachegrind --LL=size,assoc,line (default: valgrind's)")
    p.add_argument("--D1", default="", help="cachegrind --D1=size,assoc,line (default: valgrind's)")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    rows = []
    print(f"load {os.getloadavg()[0]:.1f}; hub {a.hub}; D1 {a.D1 or 'valgrind default'}; "
          f"LL {a.LL or 'valgrind default'}", flush=True)
    print(f"{'contender':12s} {'greenlets':>9s} {'instr/q':>9s} {'D refs/q':>9s} {'D1 miss/q':>9s} "
          f"{'LLd miss/q':>10s}", flush=True)
    for g in (int(x) for x in a.greenlets.split(",")):
        c_lo = a.cycles
        c_hi = c_lo + -(-a.queries // g)
        for name in a.only.split(","):
            lo = run_once(name, a.hub, a.dsn, g, c_lo, a.LL, a.D1)
            hi = run_once(name, a.hub, a.dsn, g, c_hi, a.LL, a.D1)
            if lo.get("failed") or hi.get("failed"):
                print(f"{name:12s} {g:9d} failed: {lo.get('failed') or hi.get('failed')}", flush=True)
                rows.append({"name": name, "greenlets": g, "lo": lo, "hi": hi})
                continue
            pq = per_query(lo, hi)
            rows.append({"name": name, "greenlets": g, "lo": lo, "hi": hi, "per_query": pq})
            print(f"{name:12s} {g:9d} {pq['instr']:9,.0f} {pq['d_refs']:9,.0f} {pq['d1_miss']:9,.1f} "
                  f"{pq['lld_miss']:10,.2f}   ({lo['valgrind_s'] + hi['valgrind_s']:.0f} s, "
                  f"errors {lo['errors']}+{hi['errors']})", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
