"""eventlet scenarios, one per run: ``python eventlet_scenarios.py SCENARIO`` (see _common.py).

Run only as a subprocess of tests/test_green.py: every scenario monkey-patches the interpreter.

``eventlet.monkey_patch()`` also patches psycopg2 (it registers eventlet's own wait callback;
fastpool replaces it with its own equivalent one). The ``*_own_callback`` scenarios patch with
``psycopg=False``, so that fastpool's callback is the only one ever registered.
"""

from __future__ import annotations

import sys
import warnings

SCENARIO = sys.argv[1] if len(sys.argv) > 1 else ""
PATCH_AFTER = SCENARIO.startswith("load_patched_after") or SCENARIO == "load_own_callback_after"
OWN_CALLBACK = "own_callback" in SCENARIO

warnings.simplefilter("ignore", DeprecationWarning)  # eventlet announces its own deprecation
import eventlet  # noqa: E402


def _patch() -> None:
    if OWN_CALLBACK:
        eventlet.monkey_patch(psycopg=False)
    else:
        eventlet.monkey_patch()


if not PATCH_AFTER:
    _patch()

import random  # noqa: E402
from time import monotonic  # noqa: E402

from psycopg2 import extensions  # noqa: E402

import _common as C  # noqa: E402
import fastpool  # noqa: E402
from fastpool import green as fp_green  # noqa: E402

WORKERS, ROUNDS, MAX = 100, 3, 5
QUERY_S = 0.02  # 100 x 3 x 20 ms = 6 s sequential, like the gevent runs


def _joinall(gts: list) -> None:
    for gt in gts:
        gt.wait()


def _load(pool: object) -> dict:
    res = C.run_load(pool, eventlet.spawn, _joinall, eventlet.sleep, WORKERS, ROUNDS, QUERY_S)
    cb = extensions.get_wait_callback()
    res["wait_callback"] = getattr(cb, "__module__", "?") + "." + getattr(cb, "__qualname__", repr(cb))
    res["fastpool_callback"] = fp_green.is_fastpool_callback(cb)
    C.check_load(res, MAX)
    if OWN_CALLBACK:
        C.check(res["fastpool_callback"], "fastpool's eventlet wait callback is not registered",
                res["wait_callback"])
    else:
        # eventlet's own callback (registered by monkey_patch, not chosen by anyone) is replaced
        # by fastpool's equivalent one, which needs no wrapper for the pool's worker threads.
        C.check(cb is fp_green._eventlet_wait_callback,
                "eventlet's own wait callback was not replaced by fastpool's", res["wait_callback"])
    res["verify"] = C.verify_pool(pool, MAX, sleep=eventlet.sleep)
    pool.close()
    return res


def _prewarmed() -> object:
    pool = C.make_pool(min_size=1, max_size=MAX)
    pool.wait()
    return pool


def load_patched_first() -> dict:
    return _load(_prewarmed())


def load_patched_after() -> dict:
    pool = _prewarmed()
    _patch()
    return _load(pool)


def load_own_callback_first() -> dict:
    return _load(_prewarmed())


def load_own_callback_after() -> dict:
    pool = _prewarmed()
    _patch()
    return _load(pool)


# -- 4c. eventlet.Timeout while waiting; kill of a waiter -----------------------------------------
def cancel_timeout_waiting() -> dict:
    pool = C.make_pool(min_size=2, max_size=2)
    pool.wait()
    held = [pool.getconn(), pool.getconn()]
    t0 = monotonic()
    try:
        with eventlet.Timeout(0.1):
            conn = pool.getconn(timeout=5)
        pool.putconn(conn)
        raise AssertionError("getconn() returned a connection from an exhausted pool")
    except eventlet.Timeout:
        elapsed = monotonic() - t0
    C.check(elapsed < 1.0, "eventlet.Timeout did not interrupt getconn promptly", elapsed)
    C.check(pool.stats()["requests_waiting"] == 0, "cancelled waiter still registered", pool.stats())

    def waiter() -> str:
        try:
            with eventlet.Timeout(0.05):
                conn = pool.getconn(timeout=5)
        except eventlet.Timeout:
            return "timeout"
        pool.putconn(conn)
        return "got"

    gts = [eventlet.spawn(waiter) for _ in range(10)]
    outcomes = [gt.wait() for gt in gts]
    C.check(outcomes == ["timeout"] * 10, "waiters did not all time out", outcomes)
    C.check(pool.stats()["requests_waiting"] == 0, "cancelled waiters still registered", pool.stats())
    pool.putconn(held.pop())
    C.check(pool.stats()["pool_available"] == 1, "returned connection vanished", pool.stats())
    pool.putconn(held.pop())
    verify = C.verify_pool(pool, 2, sleep=eventlet.sleep)
    pool.close()
    return {"elapsed": elapsed, "outcomes": outcomes, "verify": verify}


def cancel_kill_waiter() -> dict:
    pool = C.make_pool(min_size=1, max_size=1)
    pool.wait()
    held = pool.getconn()
    gts = [eventlet.spawn(pool.getconn, timeout=10) for _ in range(4)]
    eventlet.sleep(0.05)
    C.check(pool.stats()["requests_waiting"] == 4, "waiters not queued", pool.stats())
    for gt in gts[:2]:
        gt.kill()
    C.check(pool.stats()["requests_waiting"] == 2, "killed waiters still registered", pool.stats())
    # hand-off then kill before the waiter ever runs: eventlet throws into it at once, so it
    # dies holding a handed connection -- which must go on to the next live waiter, gts[3]
    pool.putconn(held)
    gts[2].kill()
    conn = gts[3].wait()
    pool.putconn(conn)
    for gt in gts[:3]:
        try:
            value = gt.wait()
        except BaseException as exc:  # eventlet re-raises GreenletExit from wait() or returns it
            value = exc
        C.check(isinstance(value, eventlet.greenlet.GreenletExit), "waiter not killed", value)
    C.check(all(gt.dead for gt in gts), "waiters still alive")
    verify = C.verify_pool(pool, 1, sleep=eventlet.sleep)
    pool.close()
    return {"verify": verify}


def cancel_race() -> dict:
    """~0.7 s: holders return connections continuously while waiters with tiny eventlet.Timeouts
    and getconn timeouts come and go."""
    size = 3
    pool = C.make_pool(min_size=size, max_size=size)
    pool.wait()
    counts = {"got": 0, "Timeout": 0, "PoolTimeout": 0, "holder_cycles": 0}
    stop = [False]
    rnd = random.Random(4321)

    def holder() -> None:
        while not stop[0]:
            try:
                conn = pool.getconn(timeout=1)
            except fastpool.PoolTimeout:
                continue
            eventlet.sleep(rnd.uniform(0, 0.002))
            pool.putconn(conn)
            counts["holder_cycles"] += 1
            eventlet.sleep(0)

    def waiter() -> None:
        while not stop[0]:
            try:
                if rnd.random() < 0.5:
                    with eventlet.Timeout(rnd.uniform(0.0002, 0.003)):
                        conn = pool.getconn(timeout=5)
                else:
                    conn = pool.getconn(timeout=rnd.uniform(0.0002, 0.003))
            except eventlet.Timeout:
                counts["Timeout"] += 1
                continue
            except fastpool.PoolTimeout:
                counts["PoolTimeout"] += 1
                continue
            counts["got"] += 1
            pool.putconn(conn)
            eventlet.sleep(0)

    gts = [eventlet.spawn(holder) for _ in range(size)] + [eventlet.spawn(waiter) for _ in range(20)]
    eventlet.sleep(0.7)
    stop[0] = True
    with eventlet.Timeout(10):
        _joinall(gts)
    st = C.settle(pool, sleep=eventlet.sleep)
    C.check(counts["got"] > 0 and counts["Timeout"] > 0 and counts["PoolTimeout"] > 0
            and counts["holder_cycles"] > 0, "the race did not happen", counts)
    C.check(st["connections_reclaimed"] == 0 and st["connections_num"] == size and st["returns_bad"] == 0,
            "a connection was lost or replaced", st)
    verify = C.verify_pool(pool, size, sleep=eventlet.sleep)
    pool.close()
    return {"counts": counts, "verify": verify}


# -- the hub's wait path, each promise (shared with gevent: _common.park_*) -----------------------
_HUB = C.Hub(eventlet.spawn, lambda gt: gt.wait(), lambda gt, exc: gt.kill(exc), eventlet.sleep)


def park_close_while_parked() -> dict:
    return C.park_close_while_parked(_HUB)


def park_stepped_timeouts() -> dict:
    return C.park_stepped_timeouts(_HUB)


def park_handoff_checked() -> dict:
    return C.park_handoff_checked(_HUB)


def park_max_waiting() -> dict:
    return C.park_max_waiting(_HUB)


SCENARIOS = {name: fn for name, fn in globals().items()
             if callable(fn) and not name.startswith("_") and getattr(fn, "__module__", "") == __name__
             and name.split("_")[0] in ("load", "cancel", "park")}

if __name__ == "__main__":
    C.scenario_main(SCENARIOS, SCENARIO)
