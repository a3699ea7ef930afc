#!/usr/bin/env python
"""Cost of psycopg2's wait callback under gevent: fastpool's own against psycogreen's.

    python benchmarks/bench_wait_callback.py fastpool|psycogreen N [--dsn DSN]

10 greenlets, each owning one psycopg2 connection, run N x (SELECT 1, fetch, commit) after a
warm-up: no pool involved, only the callback that makes psycopg2 yield to the hub (3 round trips
per query: BEGIN, SELECT, COMMIT). Wall-clock figures on a shared box are noise; count
instructions instead, which load does not change:

    for cb in psycogreen fastpool; do for n in 0 300; do
        valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
            python benchmarks/bench_wait_callback.py $cb $n 2>&1 | grep Collected
    done; done
    # instructions per query = (Collected at 300 - Collected at 0) / 3000

``--tracked``: the connections are of the class a fastpool pool with ``reset="auto"`` opens
(``fastpool.tracking``: its cursors flag session-changing statements); the difference from the
same callback without it is what the return tracking costs a query.
"""

import argparse
import os
import sys
import time

from gevent import monkey

monkey.patch_all()

import gevent  # noqa: E402
import psycopg2  # noqa: E402

p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
p.add_argument("callback", choices=["fastpool", "psycogreen"])
p.add_argument("n", type=int, help="queries per greenlet (0: only start-up, for the subtraction)")
p.add_argument("--dsn", default=os.environ.get("FASTPOOL_BENCH_DSN",
                                               "host=127.0.0.1 port=5432 user=postgres dbname=test"))
p.add_argument("--tracked", action="store_true",
               help="connections of the class fastpool's own pool uses (return tracking)")
a = p.parse_args()
if a.callback == "psycogreen":
    import psycogreen.gevent

    psycogreen.gevent.patch_psycopg()
else:
    from fastpool.green import ensure_wait_callback

    ensure_wait_callback(True)
factory = None
if a.tracked:
    from fastpool.tracking import tracked_class

    factory = tracked_class(session=True)
conns = [psycopg2.connect(a.dsn, connection_factory=factory) for _ in range(10)]


def work(conn, n):
    cur = conn.cursor()
    for _ in range(n):
        cur.execute("SELECT 1")
        cur.fetchone()
        conn.commit()


gevent.joinall([gevent.spawn(work, c, 50) for c in conns])
t0, c0 = time.perf_counter(), time.process_time()
gevent.joinall([gevent.spawn(work, c, a.n) for c in conns])
elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
total = 10 * a.n
if total:
    print(f"{a.callback}: {total / elapsed:,.0f} queries/s, {cpu / total * 1e6:.1f} µs CPU per query")
for c in conns:
    c.close()
sys.exit(0)
