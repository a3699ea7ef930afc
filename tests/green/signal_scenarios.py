"""KeyboardInterrupt while waiting: ``python signal_scenarios.py SCENARIO`` (see _common.py).

Signals are delivered to the main thread, so the waiting getconn() runs in this script's main
thread (pytest's main thread is not ours to interrupt); a timer thread sends SIGINT.

* ``sigint_waiting``: the pool is exhausted, nothing comes back while we wait.
* ``sigint_while_growing``: the wait has started a new connection, which arrives after the
  interrupt: it must land on the free list, not with the interrupted caller.
* ``interrupt_during_health_check``: Ctrl-C arriving while getconn() runs its health-check round
  trip (``check="ping"``), no greenlets involved.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time
from time import monotonic

import psycopg2
from psycopg2 import extensions

import _common as C

# A process started in the background by a non-interactive shell (`cmd &`, as a CI runner or
# nohup may do) inherits SIGINT as ignored, and Python then installs no KeyboardInterrupt
# handler: these scenarios test what Ctrl-C does, so they make sure it raises.
signal.signal(signal.SIGINT, signal.default_int_handler)


def _interrupt_getconn(pool: object, after: float) -> float:
    timer = threading.Timer(after, os.kill, (os.getpid(), signal.SIGINT))
    t0 = monotonic()
    timer.start()
    try:
        conn = pool.getconn(timeout=10)
        pool.putconn(conn)
        raise AssertionError("getconn() returned instead of being interrupted")
    except KeyboardInterrupt:
        elapsed = monotonic() - t0
    finally:
        timer.join()
    C.check(elapsed < 5, "KeyboardInterrupt did not interrupt the wait promptly", elapsed)
    return elapsed


def sigint_waiting() -> dict:
    pool = C.make_pool(min_size=2, max_size=2)
    pool.wait()
    held = [pool.getconn(), pool.getconn()]
    elapsed = _interrupt_getconn(pool, 0.2)
    st = pool.stats()
    C.check(st["requests_waiting"] == 0, "interrupted waiter still registered", st)
    pool._check_invariants()
    # a second interrupted wait on the same pool, then the connections come back
    _interrupt_getconn(pool, 0.1)
    pool.putconn(held.pop())
    C.check(pool.stats()["pool_available"] == 1, "returned connection went to a ghost waiter",
            pool.stats())
    pool.putconn(held.pop())
    verify = C.verify_pool(pool, 2)
    pool.close()
    return {"elapsed": elapsed, "verify": verify}


def sigint_while_growing() -> dict:
    def slow_connect(conninfo: str, **kwargs: object) -> object:
        time.sleep(0.5)
        return psycopg2.connect(conninfo, **kwargs)

    pool = C.make_pool(min_size=1, max_size=2, connect=slow_connect)
    pool.wait()
    held = pool.getconn()
    elapsed = _interrupt_getconn(pool, 0.1)  # a second connection is being made meanwhile
    C.check(pool.stats()["requests_waiting"] == 0, "interrupted waiter still registered", pool.stats())
    # the new connection arrives and must go idle (held is still out)
    C.wait_for(lambda: pool.stats()["pool_available"] == 1, timeout=5)
    st = pool.stats()
    C.check(st["pool_size"] == 2 and st["pool_available"] == 2 - 1,
            "the connection made for the interrupted waiter did not go idle", st)
    pool.putconn(held)
    verify = C.verify_pool(pool, 2)
    C.check(verify["stats"]["connections_reclaimed"] == 0, "a connection was lost", verify)
    pool.close()
    return {"elapsed": elapsed, "verify": verify}


def interrupt_during_health_check() -> dict:
    """KeyboardInterrupt raised inside the pool's health-check ping must reach the caller and
    must not leak the slot. A real SIGINT cannot be aimed at that round trip reliably, so it is
    simulated deterministically: a select()-based psycopg2 wait callback (blocking, like libpq's
    own wait) raises KeyboardInterrupt once, in the main thread -- where Python raises it for a
    real SIGINT arriving during the round trip."""
    main = threading.main_thread()
    armed = [False]

    def wait_select(conn: object) -> None:
        while True:
            if armed[0] and threading.current_thread() is main:
                armed[0] = False
                raise KeyboardInterrupt("simulated Ctrl-C during the health check")
            state = conn.poll()
            if state == extensions.POLL_OK:
                return
            if state == extensions.POLL_READ:
                select.select([conn.fileno()], [], [])
            elif state == extensions.POLL_WRITE:
                select.select([], [conn.fileno()], [])

    extensions.set_wait_callback(wait_select)
    problems = []
    for autocommit in (False, True):
        configure = (lambda c: setattr(c, "autocommit", True)) if autocommit else None
        pool = C.make_pool(min_size=1, max_size=1, check="ping", configure=configure, green=False)
        pool.wait()
        armed[0] = True
        try:
            conn = pool.getconn(timeout=5)
            pool.putconn(conn)
            problems.append(f"autocommit={autocommit}: KeyboardInterrupt was swallowed, "
                            f"getconn() returned a connection")
        except KeyboardInterrupt:
            pass
        st = C.settle(pool, timeout=2)
        if st["pool_available"] != st["pool_size"] or st["requests_waiting"]:
            problems.append(f"autocommit={autocommit}: slot leaked, states {pool._slot_states()}, "
                            f"stats {st}")
        pool.close()
    C.check(not problems, "; ".join(problems))
    pool = C.make_pool(min_size=1, max_size=1, check="ping", green=False)
    verify = C.verify_pool(pool, 1)
    pool.close()
    return {"verify": verify}


SCENARIOS = {
    "sigint_waiting": sigint_waiting,
    "sigint_while_growing": sigint_while_growing,
    "interrupt_during_health_check": interrupt_during_health_check,
}

if __name__ == "__main__":
    C.scenario_main(SCENARIOS, sys.argv[1] if len(sys.argv) > 1 else "")
