#!/usr/bin/env python
"""What the clean hand-out costs (reset="auto"): the clean return, the tracked cursor, a dirty
return. One process, one thread, PostgreSQL on the DSN below.

1. ``cycle``: getconn + putconn, no query, ns per cycle (best of N), for ``reset="auto"``
   (default) and ``reset="rollback"`` on the core loaded (``FASTPOOL_IMPL=python`` for the twin).
2. ``cursor``: ``conn.cursor()`` + classify + close, no query, ns: the pool's tracked connection
   (reset="auto") against a plain psycopg2 connection, for a few statements; and the
   classifier alone (``fastpool.session.changes_session``).
3. ``select``: ``cur.execute(q)`` round trip µs, tracked vs plain, same server.
4. ``dirty``: putconn µs of a connection that ran ``SET work_mem`` (DISCARD ALL, client state
   resync, configure) against a clean putconn.

Usage::

    python benchmarks/bench_reset.py [--dsn DSN] [--repeats 7]

Instruction counts (load-independent; client process only): run ``--callgrind WHAT N`` under
``valgrind --tool=callgrind`` for two values of N; the difference of the totals divided by the
difference of N is the cost of one WHAT::

    valgrind --tool=callgrind python benchmarks/bench_reset.py --callgrind cycle 0
    valgrind --tool=callgrind python benchmarks/bench_reset.py --callgrind cycle 100000
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from time import perf_counter_ns

try:
    import fastpool
except ImportError:  # a checkout that is not installed: use its src/ tree
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    import fastpool

import psycopg2

from fastpool.session import changes_session

DEFAULT_DSN = os.environ.get("FASTPOOL_BENCH_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=test")
STATEMENTS = {
    "select": "SELECT id, name FROM users WHERE id = %s",
    "update": "UPDATE users SET name = %s WHERE id = %s",
    "set": "SET work_mem = '8MB'",
}


def best(fn, n: int, repeats: int) -> tuple:
    runs = []
    for _ in range(repeats):
        t0 = perf_counter_ns()
        fn(n)
        runs.append((perf_counter_ns() - t0) / n)
    return min(runs), statistics.median(runs)


def bench_cycle(dsn: str, repeats: int) -> dict:
    out = {}
    for mode in ("auto", "rollback"):
        pool = fastpool.Pool(dsn, min_size=1, max_size=1, reset=mode)
        pool.wait()
        get, put = pool.getconn, pool.putconn

        def loop(n: int) -> None:
            for _ in range(n):
                put(get())

        loop(5000)
        out[mode] = best(loop, 200_000, repeats)
        pool.close()
    return out


def bench_cursor(dsn: str, repeats: int) -> dict:
    out = {}
    pool = fastpool.Pool(dsn, min_size=1, max_size=1)
    pool.wait()
    tracked = pool.getconn()
    plain = psycopg2.connect(dsn)
    for label, conn in (("plain", plain), ("tracked", tracked)):
        def loop(n: int, conn=conn) -> None:
            for _ in range(n):
                conn.cursor().close()

        out[("cursor()", label)] = best(loop, 100_000, repeats)
    for name, q in STATEMENTS.items():
        def classify(n: int, q=q) -> None:
            for _ in range(n):
                changes_session(q)

        out[("classify", name)] = best(classify, 100_000, repeats)
    for label, conn in (("plain", plain), ("tracked", tracked)):
        conn.autocommit = True
        cur = conn.cursor()

        def select(n: int, cur=cur) -> None:
            for _ in range(n):
                cur.execute("SELECT 1")

        select(200)
        out[("SELECT 1", label)] = best(select, 2000, repeats)
        conn.autocommit = False
    pool.putconn(tracked)
    plain.close()
    pool.close()
    return out


def bench_dirty(dsn: str, repeats: int) -> dict:
    out = {}
    pool = fastpool.Pool(dsn, min_size=1, max_size=1)
    pool.wait()
    for label, sql in (("clean (SELECT 1)", "SELECT 1"), ("dirty (SET work_mem)", "SET work_mem = '8MB'")):
        times = []
        for _ in range(repeats * 50):
            conn = pool.getconn()
            with conn.cursor() as cur:
                cur.execute(sql)
            conn.commit()
            t0 = perf_counter_ns()
            pool.putconn(conn)
            times.append((perf_counter_ns() - t0) / 1000)
        out[label] = (min(times), statistics.median(times))
    pool.close()
    return out


def callgrind(dsn: str, what: str, n: int, reset: str) -> None:
    """``what`` n times (after 1000 of warm-up): two runs with different n give one's cost."""
    pool = fastpool.Pool(dsn, min_size=1, max_size=1, reset=reset)
    pool.wait()
    n += 1000
    if what == "cycle":
        get, put = pool.getconn, pool.putconn
        for _ in range(n):
            put(get())
        pool.close()
        return
    kind, _, conn_kind = what.partition("-")
    conn = pool.getconn() if conn_kind == "tracked" else psycopg2.connect(dsn)
    conn.autocommit = True  # no BEGIN/COMMIT: only the statement itself
    if kind == "cursor":
        for _ in range(n):
            conn.cursor().close()
    else:
        cur = conn.cursor()
        query = "SELECT 1" if kind == "select" else "UPDATE pg_class SET relname = relname WHERE false"
        for _ in range(n):
            cur.execute(query)
    if conn_kind == "tracked":
        conn.autocommit = False
        pool.putconn(conn)
    else:
        conn.close()
    pool.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dsn", default=DEFAULT_DSN)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--reset", default="auto", help="with --callgrind cycle: the reset mode")
    ap.add_argument("--callgrind", nargs=2, metavar=("WHAT", "N"), default=None,
                    help="only run N repetitions of WHAT, print nothing (for callgrind): cycle, "
                         "cursor-plain, cursor-tracked, select-plain, select-tracked, "
                         "update-plain, update-tracked")
    args = ap.parse_args(argv)
    if args.callgrind is not None:
        callgrind(args.dsn, args.callgrind[0], int(args.callgrind[1]), args.reset)
        return 0
    print(f"fastpool core: {fastpool.__impl__}, python {sys.version.split()[0]}, psycopg2 {psycopg2.__version__}")
    print("\n1. getconn+putconn, no query (ns/cycle, best / median)")
    for mode, (b, m) in bench_cycle(args.dsn, args.repeats).items():
        print(f"   reset={mode!r:<11} {b:8.0f} {m:8.0f}")
    print("\n2./3. cursor and statement cost (ns, best / median)")
    for (what, label), (b, m) in bench_cursor(args.dsn, args.repeats).items():
        print(f"   {what:<9} {label:<8} {b:10.0f} {m:10.0f}")
    print("\n4. putconn after a transaction (µs, best / median)")
    for label, (b, m) in bench_dirty(args.dsn, args.repeats).items():
        print(f"   {label:<22} {b:8.1f} {m:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
