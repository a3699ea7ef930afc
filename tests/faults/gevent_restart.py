"""500 gevent greenlets through a max_size=10 pool while the server restarts (run by test_faults.py).

Run only as a subprocess of tests/test_faults.py: it monkey-patches the interpreter first.

Environment:

* ``FASTPOOL_TEST_DSN``  -- the PRIVATE server's DSN (the parent restarts it),
* ``FASTPOOL_IMPL``      -- the core under test ("c" or "python"),
* ``FASTPOOL_TEST_APP``  -- application_name of every pooled connection,
* ``FASTPOOL_FAULT_DIR`` -- a directory for the hand-shake with the parent.

Protocol: after a warm-up under load the script prints ``READY`` and polls for
``$FASTPOOL_FAULT_DIR/restarted`` (JSON ``{"t0": ..., "t1": ...}``: time.monotonic() when the
restart began / completed -- CLOCK_MONOTONIC is system-wide, so the clocks agree). It then keeps the
load up until the pool has recovered, stops, checks the pool and prints one ``RESULT {json}``.
"""

from __future__ import annotations

import faulthandler

# A hang (deadlock) must end with every thread's stack on stderr, not a silent timeout.
faulthandler.dump_traceback_later(40, exit=True)

from gevent import monkey  # noqa: E402

monkey.patch_all()

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402
from time import monotonic  # noqa: E402

import gevent  # noqa: E402
import psycopg2  # noqa: E402

import fastpool  # noqa: E402
from fastpool.pool import pool_class  # noqa: E402

DSN = os.environ["FASTPOOL_TEST_DSN"]
IMPL = os.environ["FASTPOOL_IMPL"]
APP = os.environ["FASTPOOL_TEST_APP"]
SIGNAL = Path(os.environ["FASTPOOL_FAULT_DIR"]) / "restarted"

GREENLETS, MAX_SIZE, GETCONN_TIMEOUT = 500, 10, 5.0
WARMUP, AFTER_RECOVERY, RECOVERY_LIMIT = 1.0, 1.0, 8.0


def check(cond: object, msg: str, *details: object) -> None:
    if not cond:
        raise AssertionError(msg + ("" if not details else ": " + " | ".join(map(repr, details))))


def main() -> None:
    pool = pool_class(IMPL)(DSN, kwargs={"application_name": APP}, min_size=2, max_size=MAX_SIZE,
                            timeout=GETCONN_TIMEOUT, name="faults-gevent")
    check(pool._core_impl == IMPL, "wrong core", pool._core_impl, IMPL)
    pool.wait(10)

    running = True
    calls = {"n": 0, "ok": 0, "max_s": 0.0}
    errors: Counter = Counter()
    samples: list = []
    successes: list = []  # end times of successful calls (monotonic)
    state = {"max_size_seen": 0, "max_gap": 0.0}

    def worker() -> None:
        while running:
            t0 = monotonic()
            conn = None
            try:
                conn = pool.getconn(timeout=GETCONN_TIMEOUT)
                cur = conn.cursor()
                cur.execute("SELECT 1")
                cur.fetchone()
                ok = True
            except (psycopg2.Error, fastpool.PoolError) as exc:
                ok = False
                errors[type(exc).__name__] += 1
                if len(samples) < 5:
                    samples.append(f"{type(exc).__name__}: {str(exc).strip()[:200]}")
            finally:
                if conn is not None:
                    pool.putconn(conn)  # must never raise: a PoolError here fails the worker
            t1 = monotonic()
            calls["n"] += 1
            calls["max_s"] = max(calls["max_s"], t1 - t0)
            if ok:
                calls["ok"] += 1
                successes.append(t1)
            gevent.sleep(0)  # a query to a healthy server may not yield; let the others in

    def ticker() -> None:
        last = monotonic()
        while running:
            gevent.sleep(0.005)
            now = monotonic()
            state["max_gap"] = max(state["max_gap"], now - last)
            last = now
            state["max_size_seen"] = max(state["max_size_seen"], pool.stats()["pool_size"])

    tick = gevent.spawn(ticker)
    workers = [gevent.spawn(worker) for _ in range(GREENLETS)]
    gevent.sleep(WARMUP)
    ok_before = calls["ok"]
    check(ok_before > 0, "no query succeeded during the warm-up")
    print("READY", flush=True)

    deadline = monotonic() + 60
    while not SIGNAL.exists():
        check(monotonic() < deadline, "the parent never signalled the restart")
        gevent.sleep(0.01)
    gevent.sleep(0.01)  # the parent writes then renames; be generous anyway
    times = json.loads(SIGNAL.read_text())
    t_restart0, t_restart1 = times["t0"], times["t1"]

    # Keep the load up until a query succeeds after the restart completed, then a bit longer.
    first_ok = None
    limit = t_restart1 + RECOVERY_LIMIT
    while monotonic() < limit:
        later = [t for t in successes if t > t_restart1]
        if later:
            first_ok = min(later)
            break
        gevent.sleep(0.005)
    gevent.sleep(AFTER_RECOVERY)
    running = False
    t_stop = monotonic()
    gevent.joinall(workers, timeout=GETCONN_TIMEOUT + 5)
    alive = sum(1 for g in workers if not g.dead)
    join_s = monotonic() - t_stop
    tick.join(2)

    # Settle: background refills may lag a little behind the last return.
    deadline = monotonic() + 5
    while True:
        st = pool.stats()
        if (st["requests_waiting"] == 0 and st["pool_available"] == st["pool_size"]) or monotonic() > deadline:
            break
        gevent.sleep(0.01)
    pool._check_invariants()
    # And the pool works: max_size distinct sessions.
    conns = [pool.getconn(timeout=5) for _ in range(MAX_SIZE)]
    pids = []
    for c in conns:
        pids.append(c.get_backend_pid())
        c.cursor().execute("SELECT 1")
    for c in conns:
        pool.putconn(c)
    st_after = pool.stats()
    pool.close()

    result = {
        "impl": IMPL, "greenlets": GREENLETS, "max_size": MAX_SIZE,
        "restart_s": t_restart1 - t_restart0,
        "recovery_s": None if first_ok is None else max(0.0, first_ok - t_restart1),
        "calls": calls["n"], "ok": calls["ok"], "ok_before_restart": ok_before,
        "errors": dict(errors), "error_samples": samples,
        "max_call_s": calls["max_s"], "alive_after_stop": alive, "join_s": join_s,
        "max_size_seen": state["max_size_seen"], "max_hub_gap_s": state["max_gap"],
        "final_stats": st, "stats_after_take_all": st_after, "distinct_pids": len(set(pids)),
    }
    print("RESULT " + json.dumps(result, sort_keys=True), flush=True)
    check(alive == 0, "greenlets still running after the load stopped", alive)
    check(first_ok is not None, "the pool never served again after the restart", result)
    check(st["requests_waiting"] == 0, "a waiter is still registered", st)
    check(st["pool_available"] == st["pool_size"], "a connection did not come back", st)
    check(len(set(pids)) == MAX_SIZE, "max_size sessions are not distinct", pids)


if __name__ == "__main__":
    try:
        main()
    except Exception:
        import traceback

        traceback.print_exc()
        sys.exit(1)
