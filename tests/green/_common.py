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
