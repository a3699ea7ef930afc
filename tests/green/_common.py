"""Helpers shared by the scenario scripts in this directory (not a test module).

tests/test_green.py runs each script as ``python SCRIPT SCENARIO`` in a fresh interpreter, with

* ``FASTPOOL_TEST_DSN``  -- the test database (the ``dsn`` fixture),
* ``FASTPOOL_IMPL``      -- the core under test ("c" or "python"),
* ``FASTPOOL_TEST_APP``  -- the application_name every pooled connection carries.

A script prints exactly one line ``RESULT {json}`` and exits 0 on success; a failed check raises
(traceback on stderr, exit code 1). Monkey-patching must happen before this module is imported
when a scenario patches first: it imports psycopg2 and fastpool.
"""

from __future__ import annotations

import json
import os
import sys
import time
from time import monotonic
from typing import Any, Callable, Dict, List, Optional

import psycopg2

DSN = os.environ["FASTPOOL_TEST_DSN"]
IMPL = os.environ["FASTPOOL_IMPL"]
APP = os.environ.get("FASTPOOL_TEST_APP", "fp-green-script")
#: application_name of the scripts' own inspection connection (never counted as a pool backend)
ADMIN_APP = APP + "-admin"


def make_pool(**options: Any) -> Any:
    from fastpool.pool import pool_class

    kwargs = {"application_name": APP, **(options.pop("kwargs", None) or {})}
    pool = pool_class(IMPL)(DSN, kwargs=kwargs, **options)
    assert pool._core_impl == IMPL, (pool._core_impl, IMPL)
    return pool


def emit(**result: Any) -> None:
    print("RESULT " + json.dumps(result, default=repr, sort_keys=True), flush=True)


def check(cond: Any, msg: str, *details: Any) -> None:
    if not cond:
        raise AssertionError(msg + ("" if not details else ": " + " | ".join(map(repr, details))))


def backend_pid(conn: Any) -> int:
    """The server pid behind ``conn`` (leaves no transaction open)."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        pid = int(cur.fetchone()[0])
    conn.commit()
    return pid


def admin_connection() -> Any:
    conn = psycopg2.connect(DSN, application_name=ADMIN_APP)
    conn.autocommit = True
    return conn


def server_pids(admin: Any, app: str = APP) -> set:
    with admin.cursor() as cur:
        cur.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s", (app,))
        return {int(r[0]) for r in cur.fetchall()}


def wait_for(pred: Callable[[], Any], timeout: float = 5.0, sleep: Callable[[float], Any] = time.sleep) -> Any:
    deadline = monotonic() + timeout
    while True:
        value = pred()
        if value or monotonic() >= deadline:
            return value
        sleep(0.01)


def _settled(pool: Any) -> bool:
    st = pool.stats()
    return (st["requests_waiting"] == 0 and st["pool_available"] == st["pool_size"]
            and st["pool_size"] <= st["pool_max"])


def settle(pool: Any, timeout: float = 5.0, sleep: Callable[[float], Any] = time.sleep) -> Dict[str, int]:
    """Wait until nobody waits and every connection is idle (background refills may lag)."""
    wait_for(lambda: _settled(pool), timeout, sleep)
    return pool.stats()


def verify_pool(pool: Any, max_size: int, sleep: Callable[[float], Any] = time.sleep,
                forbidden_pids: Optional[set] = None) -> Dict[str, Any]:
    """The post-condition of every scenario: no waiter left, every connection back, the ring's
    invariants hold, and max_size distinct working connections can be taken (and returned)."""
    st = settle(pool, sleep=sleep)
    check(st["requests_waiting"] == 0, "a waiter is still registered", st)
    check(st["pool_available"] == st["pool_size"], "a connection did not come back", st,
          pool._slot_states())
    pool._check_invariants()
    conns: List[Any] = []
    try:
        for _ in range(max_size):
            conns.append(pool.getconn(timeout=5))
        pids = [backend_pid(c) for c in conns]
    finally:
        for c in conns:
            pool.putconn(c)
    check(len(set(pids)) == max_size, "max_size connections are not distinct sessions", pids)
    if forbidden_pids:
        check(not set(pids) & forbidden_pids, "a discarded session was handed out again", pids,
              forbidden_pids)
    st = settle(pool, sleep=sleep)
    check(st["requests_waiting"] == 0 and st["pool_available"] == st["pool_size"],
          "pool not consistent after taking max_size", st)
    pool._check_invariants()
    return {"stats": st, "pids": pids}


def run_load(pool: Any, spawn: Callable[..., Any], joinall: Callable[[list], Any],
             sleep: Callable[[float], Any], workers: int, rounds: int, query_s: float = 0.01) -> Dict[str, Any]:
    """``workers`` green workers each do ``rounds`` x (getconn, SELECT pg_sleep, putconn).

    A ticker (another green worker) samples the pool size and measures the longest stretch the
    hub went without running it: psycopg2 blocking the hub shows up there and in the wall time.
    """
    state: Dict[str, Any] = {"inflight": 0, "max_inflight": 0, "done": 0, "errors": [],
                             "pids": set(), "max_size_seen": 0, "max_gap": 0.0, "running": True}

    def worker() -> None:
        for _ in range(rounds):
            try:
                conn = pool.getconn(timeout=30)
            except Exception as exc:  # recorded, then asserted on
                state["errors"].append(repr(exc))
                return
            state["inflight"] += 1
            state["max_inflight"] = max(state["max_inflight"], state["inflight"])
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT pg_backend_pid(), pg_sleep(%s)", (query_s,))
                    state["pids"].add(int(cur.fetchone()[0]))
                conn.commit()
                state["done"] += 1
            except Exception as exc:
                state["errors"].append(repr(exc))
            finally:
                state["inflight"] -= 1
                pool.putconn(conn)

    def ticker() -> None:
        last = monotonic()
        while state["running"]:
            sleep(0.002)
            now = monotonic()
            state["max_gap"] = max(state["max_gap"], now - last)
            last = now
            state["max_size_seen"] = max(state["max_size_seen"], pool.stats()["pool_size"])

    tick = spawn(ticker)
    t0 = monotonic()
    joinall([spawn(worker) for _ in range(workers)])
    wall = monotonic() - t0
    state["running"] = False
    joinall([tick])
    return {
        "wall": wall,
        "sequential": workers * rounds * query_s,
        "done": state["done"],
        "expected": workers * rounds,
        "errors": state["errors"][:5],
        "n_errors": len(state["errors"]),
        "max_inflight": state["max_inflight"],
        "max_size_seen": state["max_size_seen"],
        "distinct_pids": len(state["pids"]),
        "max_hub_gap": state["max_gap"],
    }


def check_load(res: Dict[str, Any], max_size: int) -> None:
    check(res["n_errors"] == 0, "workers failed", res["errors"])
    check(res["done"] == res["expected"], "not every query ran", res)
    check(res["max_size_seen"] <= max_size, "pool grew beyond max_size", res)
    check(res["distinct_pids"] <= max_size, "more sessions than max_size were used", res)
    # Cooperative psycopg2: several borrowers hold connections with queries in flight at once.
    # Deterministic: a blocking query never lets another greenlet run while it holds its
    # connection. (No wall-clock bound: on a loaded machine it is a speed threshold, not a
    # proof; wall and sequential times stay in the result for a reader.)
    check(res["max_inflight"] >= 2, "queries never overlapped: psycopg2 blocked the hub", res)


def scenario_main(scenarios: Dict[str, Callable[[], Any]], name: str) -> None:
    fn = scenarios.get(name)
    if fn is None:
        sys.exit(f"unknown scenario {name!r}; known: {', '.join(sorted(scenarios))}")
    result = fn() or {}
    emit(scenario=name, impl=IMPL, **result)


# -- the hub's wait path (fastpool.Pool._on_miss + the core's Park), for gevent and eventlet --
class Hub:
    """The few hub operations the park scenarios need: ``spawn(fn, *args)``, ``join(g)`` (its
    result, or raises what it raised), ``kill(g, exc)`` (raise ``exc`` in it), ``sleep(s)``."""

    def __init__(self, spawn: Callable[..., Any], join: Callable[[Any], Any],
                 kill: Callable[[Any, BaseException], Any], sleep: Callable[[float], Any]) -> None:
        self.spawn, self.join, self.kill, self.sleep = spawn, join, kill, sleep


class Killed(Exception):
    pass


def _outcome(hub: Hub, g: Any) -> str:
    try:
        hub.join(g)
    except BaseException as exc:  # noqa: B036 - what the greenlet died of is the outcome
        return type(exc).__name__
    return "ok"


def park_close_while_parked(hub: Hub) -> Dict[str, Any]:
    """close() wakes every parked greenlet with PoolClosed, at once; nothing stays queued."""
    from fastpool import PoolClosed

    pool = make_pool(min_size=1, max_size=1, timeout=30)
    pool.wait()
    held = pool.getconn()

    def waiter() -> str:
        try:
            pool.putconn(pool.getconn())
        except PoolClosed:
            return "closed"
        return "got"

    gs = [hub.spawn(waiter) for _ in range(5)]
    hub.sleep(0.05)
    check(pool.stats()["requests_waiting"] == 5, "waiters not parked", pool.stats())
    t0 = monotonic()
    pool.close(timeout=1)
    outcomes = [hub.join(g) for g in gs]
    elapsed = monotonic() - t0
    check(outcomes == ["closed"] * 5, "parked waiters did not get PoolClosed", outcomes)
    check(elapsed < 5.0, "close() did not wake the parked waiters", elapsed)
    check(pool.stats()["requests_waiting"] == 0, "a closed waiter is still registered", pool.stats())
    pool.putconn(held)  # returned after close: retired, not leaked
    check(pool.stats()["pool_size"] == 0, "a connection outlived close()", pool.stats())
    return {"outcomes": outcomes}


def park_stepped_timeouts(hub: Hub) -> Dict[str, Any]:
    """Infinite and huge timeouts wait in steps (WAIT_STEP, made tiny here) and still get the
    handoff; a finite timeout longer than a step expires on its deadline, not at a step; a
    kill between steps returns nothing and leaks nothing."""
    import math

    from fastpool import PoolTimeout
    from fastpool import pool as fp_pool

    fp_pool.WAIT_STEP = 0.03
    pool = make_pool(min_size=1, max_size=1, timeout=30)
    pool.wait()
    held = pool.getconn()
    got: List[Any] = []

    def taker(name: str, timeout: float) -> str:
        conn = pool.getconn(timeout=timeout)
        got.append(name)
        pool.putconn(conn)
        return "got"

    def timing_out() -> float:
        t0 = monotonic()
        try:
            pool.putconn(pool.getconn(timeout=0.1))
        except PoolTimeout:
            return monotonic() - t0
        return -1.0

    short = hub.spawn(timing_out)
    forever = hub.spawn(taker, "inf", math.inf)
    huge = hub.spawn(taker, "huge", 1e12)
    victim = hub.spawn(taker, "victim", math.inf)
    hub.sleep(0.2)  # several steps for each
    waited = hub.join(short)
    check(0.1 <= waited < 5.0, "a timeout longer than a step did not expire on its deadline", waited)
    check(pool.stats()["requests_waiting"] == 3, "a stepped waiter stopped waiting", pool.stats())
    hub.kill(victim, Killed("between steps"))
    check(_outcome(hub, victim) == "Killed", "the kill did not reach the stepped waiter")
    check(pool.stats()["requests_waiting"] == 2, "a killed waiter is still registered", pool.stats())
    pool.putconn(held)
    outcomes = [hub.join(forever), hub.join(huge)]
    check(outcomes == ["got", "got"] and got == ["inf", "huge"],
          "stepped waiters were not served, first come first served", outcomes, got)
    verify = verify_pool(pool, 1, sleep=hub.sleep)
    pool.close()
    return {"short_timeout_waited": waited, "verify": verify}


def park_handoff_checked(hub: Hub) -> Dict[str, Any]:
    """A handed connection is health-checked when check_after says so (a callable check: always):
    one that fails is discarded and the waiter waits again, for a replacement, in its own time;
    the wait hook, the wait counter and leak tracking see the served wait."""
    from fastpool import timings

    verdicts: List[bool] = []  # what the check says next (empty: passes); set before the handoff
    checked: List[int] = []

    def check_fn(conn: Any) -> bool:
        checked.append(backend_pid(conn))
        return verdicts.pop(0) if verdicts else True

    pool = make_pool(min_size=1, max_size=1, timeout=10, check=check_fn, leak_timeout=60)
    pool.wait()
    held = pool.getconn()
    first_pid = backend_pid(held)
    waits: List[float] = []

    class Listener:
        def connection_waited(self, pool_name: str, seconds: float) -> None:
            waits.append(seconds)

        def connection_used(self, pool_name: str, seconds: float) -> None:
            pass

        def connection_created(self, pool_name: str, seconds: float) -> None:
            pass

    takers: List[Any] = []

    def waiter() -> int:
        conn = pool.getconn()
        try:
            takers.append(pool._takers.get(pool._slot_for(conn)))  # leak tracking's record
            return backend_pid(conn)
        finally:
            pool.putconn(conn)

    g = hub.spawn(waiter)
    hub.sleep(0.05)
    checked.clear()
    verdicts[:] = [False]
    timings.subscribe(Listener(), [pool])
    before = pool.stats()
    pool.putconn(held)
    pid = hub.join(g)
    check(checked[:1] == [first_pid], "the handed connection was not checked", checked)
    check(pid != first_pid, "a connection that failed its check was handed out", pid, first_pid)
    st = pool.stats()
    check(st.get("connections_lost", 0) >= 1, "the failed handoff was not counted", st)
    check(waits and waits[-1] >= 0.04, "the wait hook missed the served wait", waits)
    check(st["requests_wait_ms"] >= before["requests_wait_ms"] + 40, "the wait was not counted", st,
          before)
    check(takers and takers[0] and takers[0][-1].name == "waiter",
          "leak tracking did not record who took the handed connection", takers)
    verify = verify_pool(pool, 1, sleep=hub.sleep)
    pool.close()
    return {"checked": len(checked), "verify": verify}


def park_max_waiting(hub: Hub) -> Dict[str, Any]:
    """max_waiting: the greenlet past the limit is refused at once (TooManyRequests), the
    queued ones are served in order."""
    from fastpool import TooManyRequests

    pool = make_pool(min_size=1, max_size=1, timeout=10, max_waiting=2)
    pool.wait()
    held = pool.getconn()
    order: List[int] = []

    def taker(i: int) -> str:
        try:
            conn = pool.getconn()
        except TooManyRequests:
            return "refused"
        order.append(i)
        pool.putconn(conn)
        return "got"

    gs = [hub.spawn(taker, i) for i in range(3)]
    hub.sleep(0.05)
    check(_outcome(hub, gs[2]) == "ok" and hub.join(gs[2]) == "refused",
          "the waiter past max_waiting was not refused")
    pool.putconn(held)
    outcomes = [hub.join(g) for g in gs[:2]]
    check(outcomes == ["got", "got"] and order == [0, 1], "queued waiters not served in order",
          outcomes, order)
    verify = verify_pool(pool, 1, sleep=hub.sleep)
    pool.close()
    return {"verify": verify}
