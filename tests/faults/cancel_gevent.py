"""Deterministic cancellations inside the pool's own round trips: ``python cancel_gevent.py SCENARIO``.

Run only as a subprocess of tests/test_soak.py (gevent-patched first thing). Environment:
``FASTPOOL_TEST_DSN``, ``FASTPOOL_IMPL``, ``FASTPOOL_TEST_APP``. Prints one ``RESULT {json}``
line: ``leaked`` is the number of slots that never came back (0 when the pool is correct),
``states`` the ring's slot states afterwards (0 EMPTY, 1 CONNECTING, 2 IDLE, 3 IN_USE, 4 RESERVED).

The soak (soak_gevent.py) finds these by chance; each scenario here lands the cancellation at
the pool's first switch to the hub inside one call:

* ``kill_in_reset``: a greenlet returns a connection with a transaction open; it is killed
  (``Greenlet.kill``) while ``putconn`` rolls it back;
* ``timeout_in_reset``: ``reset=callable`` with a round trip; a ``gevent.Timeout`` expires
  during it (inside ``putconn``);
* ``timeout_in_check``: ``check=callable`` with a round trip; a ``gevent.Timeout`` expires during
  it (inside ``getconn``);
* ``kill_in_ping``: ``check="ping"``; the greenlet is killed while ``getconn`` vets the idle
  connection.

``raised``: what the cancelled call raised (the Timeout's repr; None if it returned normally,
i.e. the cancellation was swallowed).
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from time import monotonic  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402

from fastpool.pool import pool_class  # noqa: E402

DSN = os.environ["FASTPOOL_TEST_DSN"]
IMPL = os.environ["FASTPOOL_IMPL"]
APP = os.environ.get("FASTPOOL_TEST_APP", "fp-cancel-gevent")


def make_pool(**options: object) -> object:
    pool = pool_class(IMPL)(DSN, kwargs={"application_name": APP}, min_size=1, max_size=1,
                            timeout=5.0, **options)
    pool.wait(10)
    return pool


def busy(seconds: float) -> None:
    """Let a timer expire without yielding: it fires at our next switch to the hub."""
    end = monotonic() + seconds
    while monotonic() < end:
        pass


def dirty(pool: object) -> object:
    conn = pool.getconn()
    with conn.cursor() as cur:
        cur.execute("SELECT 1")  # leaves a transaction open: putconn must roll it back
    return conn


def kill_in_reset() -> object:
    pool = make_pool()
    ready = gevent.event.Event()

    def borrower() -> None:
        conn = dirty(pool)
        ready.set()           # the main greenlet runs at our next switch: inside putconn
        pool.putconn(conn)

    g = gevent.spawn(borrower)
    ready.wait()
    g.kill(block=True, timeout=5)
    return pool, {"raised": repr(g.value) if g.dead else None}


def slow_round_trip(conn: object) -> None:
    """A reset/check callable with a round trip that takes a while (0.3 s)."""
    autocommit = conn.autocommit
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_sleep(0.3)")
    finally:
        if not conn.closed:  # interrupted: psycopg2 closed it; do not mask the cancellation
            conn.autocommit = autocommit


def _interrupted(call: object, delay: float) -> object:
    """``call()`` under ``gevent.Timeout(delay)``: (result, repr of the Timeout or None)."""
    with gevent.Timeout(delay, False):
        try:
            return call(), None
        except gevent.Timeout as exc:
            return None, repr(exc)
    return None, "swallowed by the with block"


def timeout_in_reset() -> object:
    pool = make_pool(reset=slow_round_trip)
    conn = pool.getconn()
    _, raised = _interrupted(lambda: pool.putconn(conn), 0.05)
    return pool, {"raised": raised}


def timeout_in_check() -> object:
    pool = make_pool(check=slow_round_trip)
    conn, raised = _interrupted(pool.getconn, 0.05)
    if conn is not None:
        pool.putconn(conn)
    return pool, {"raised": raised}


def kill_in_ping() -> object:
    pool = make_pool(check="ping")
    ready = gevent.event.Event()
    got = []

    def borrower() -> None:
        ready.set()            # the main greenlet runs at our next switch: inside getconn's ping
        got.append(pool.getconn())

    g = gevent.spawn(borrower)
    ready.wait()
    g.kill(block=True, timeout=5)
    for conn in got:           # the kill was swallowed: give the connection back
        pool.putconn(conn)
    return pool, {"raised": repr(g.value) if not got else None}


SCENARIOS = {f.__name__: f for f in (kill_in_reset, timeout_in_reset, timeout_in_check, kill_in_ping)}


def main() -> None:
    pool, info = SCENARIOS[sys.argv[1]]()
    deadline = monotonic() + 3  # background refills may lag a little
    while monotonic() < deadline:
        st = pool.stats()
        if st["pool_available"] == st["pool_size"] and st["requests_waiting"] == 0:
            break
        gevent.sleep(0.02)
    st = pool.stats()
    states = pool._slot_states()
    got_one = True
    try:
        pool.putconn(pool.getconn(timeout=1))
    except Exception as exc:
        got_one = repr(exc)
    out = {"scenario": sys.argv[1], "impl": IMPL, "leaked": st["pool_size"] - st["pool_available"],
           "states": states, "stats": st, "getconn_after": got_one, **info}
    pool.close()
    print("RESULT " + json.dumps(out, sort_keys=True), flush=True)


if __name__ == "__main__":
    main()
