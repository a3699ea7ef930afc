#!/usr/bin/env python
"""What a pool costs a greenlet per checkout, without the database: instructions, not seconds.

    python benchmarks/bench_green_checkout.py CONTENDER CYCLES [--hub gevent|eventlet] [--dsn DSN]

1000 greenlets share 10 connections; each does CYCLES x (checkout, ``sleep(0)``, return), after
a warm-up pass. ``sleep(0)`` stands in for the query's trip through the hub, so what is left is
the pool and the switches it causes. Contenders:

* ``fastpool-c`` / ``fastpool-python``: ``fastpool.Pool`` on that core (first come, first served);
* ``hubqueue``: the hub's ``Queue`` of connections (the greenlet benchmark's reference; it
  barges: a greenlet that returns a connection takes one back at once and never parks);
* ``fairq``: the least a fair pool can do in Python -- a free list and a FIFO of parked
  greenlets, a return handing the connection to the oldest waiter (no timeout, no checks,
  no reset: the floor for first come, first served); ``fastpool_bench.refpools.FairQueue``,
  the same reference the full greenlet scenario runs;
* ``nopool``: 10 greenlets, each owning its connection, doing the same number of cycles.

Wall-clock figures on a shared box are noise (the bench prints CPU µs per cycle anyway); count
instructions, which load does not change::

    for c in fastpool-c hubqueue fairq nopool; do for n in 5 10; do
        valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
            python benchmarks/bench_green_checkout.py $c $n 2>&1 | grep Collected
    done; done
    # instructions per cycle = (Collected at 10 - Collected at 5) / 5000
"""

import argparse
import os
import sys

p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
p.add_argument("contender", choices=["fastpool-c", "fastpool-python", "hubqueue", "fairq", "nopool"])
p.add_argument("cycles", type=int, help="cycles per greenlet in the measured pass")
p.add_argument("--hub", choices=["gevent", "eventlet"], default="gevent")
p.add_argument("--dsn", default=os.environ.get("FASTPOOL_BENCH_DSN",
                                               "host=127.0.0.1 port=5432 user=postgres dbname=test"))
a = p.parse_args()
if a.hub == "gevent":
    from gevent import monkey

    monkey.patch_all()
    import gevent
    import gevent.queue

    spawn, joinall, Queue = gevent.spawn, gevent.joinall, gevent.queue.Queue

    def sleep0():
        gevent.sleep(0)
else:
    import warnings

    warnings.filterwarnings("ignore", message=".*[Ee]ventlet is deprecated.*")
    import eventlet

    eventlet.monkey_patch()
    import eventlet.queue

    spawn, Queue = eventlet.spawn, eventlet.queue.Queue

    def sleep0():
        eventlet.sleep(0)

    def joinall(gs):
        for g in gs:
            g.wait()

import time  # noqa: E402

import psycopg2  # noqa: E402

GREENLETS, SIZE = 1000, 10
name = a.contender
if name.startswith("fastpool"):
    try:
        import fastpool  # noqa: F401
    except ImportError:  # a checkout that is not installed: use its src/ tree
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
    from fastpool.pool import pool_class

    pool = pool_class("c" if name == "fastpool-c" else "python")(a.dsn, min_size=SIZE, max_size=SIZE)
    pool.wait()
    get, put = pool.getconn, pool.putconn
elif name == "hubqueue":
    q = Queue()
    for _ in range(SIZE):
        q.put(psycopg2.connect(a.dsn))
    get, put = q.get, q.put
elif name == "fairq":
    from fastpool_bench.refpools import FairQueue  # this directory is sys.path[0] for a script

    fq = FairQueue(a.hub, [psycopg2.connect(a.dsn) for _ in range(SIZE)])
    get, put = fq.get, fq.put

def work(n, get, put):
    for _ in range(n):
        conn = get()
        sleep0()
        put(conn)


def run(cycles):
    if name == "nopool":
        conns = [psycopg2.connect(a.dsn) for _ in range(SIZE)]
        gs = [spawn(work, cycles * GREENLETS // SIZE, (lambda c=c: c), (lambda c: None))
              for c in conns]
    else:
        gs = [spawn(work, cycles, get, put) for _ in range(GREENLETS)]
    t0 = time.process_time()
    joinall(gs)
    return time.process_time() - t0


run(1)
if a.cycles:
    cpu = run(a.cycles)
    print(f"{a.hub} {name}: CPU {cpu / (GREENLETS * a.cycles) * 1e6:.2f} µs a cycle")
