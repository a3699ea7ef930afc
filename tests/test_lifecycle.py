"""Pool lifecycle and psycopg_pool parity (issue 11), on both cores against a real server.

Dropped pools are collected, timed-out waiters do not pile up, any failure of connect= frees or
retries its slot, infinite timeouts wait, drain() also replaces in-flight connects, open(wait=True)
waits, reconnect_failed fires once, stats keep psycopg_pool's meanings, sizes are unambiguous,
the pool grows with sustained demand, and fastpool.connect(timeout=) makes no pool per timeout.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref
from time import monotonic
from typing import Any, List

import psycopg2
import pytest

import fastpool
from fastpool import pool as pool_mod
from fastpool.workers import WORKER_THREADS
from helpers import wait_until

DEAD_DSN = "host=127.0.0.1 port=1 user=postgres dbname=test connect_timeout=1"


def backend_pid(conn: Any) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        return cur.fetchone()[0]


class Gate:
    """A connect= wrapper whose calls block until opened; counts calls in flight."""

    def __init__(self) -> None:
        self.open_ = threading.Event()
        self.lock = threading.Lock()
        self.in_flight = 0
        self.peak = 0
        self.made: List[Any] = []

    def __call__(self, conninfo: str, **kwargs: Any) -> Any:
        with self.lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        try:
            assert self.open_.wait(30), "gate never opened"
            conn = psycopg2.connect(conninfo, **kwargs)
            self.made.append(conn)
            return conn
        finally:
            with self.lock:
                self.in_flight -= 1


# -- 1. a dropped pool is collected ---------------------------------------------------------------
def test_dropped_pool_is_collected_closes_sessions_and_ends_threads(Pool, dsn, app_name, backends):
    pools, idents = [], set()
    for _ in range(3):
        pool = Pool(dsn, kwargs={"application_name": app_name}, min_size=2, max_size=4)
        pool.wait(timeout=10)
        with pool.connection(timeout=10) as conn:
            conn.cursor().execute("SELECT 1")
        idents |= {i for i in pool._workers._running.values() if i is not None}
        idents |= {i for i in pool._timers._running.values() if i is not None}
        pools.append(pool)
    del pool, conn
    assert idents and backends.wait(6, app_name, timeout=10) == 6
    refs = [weakref.ref(p) for p in pools]
    del pools  # dropped without close()
    gc.collect()
    assert all(r() is None for r in refs), "a pool dropped without close() was not collected"
    # its __del__ closed the sessions and stopped the threads
    assert backends.wait(0, app_name, timeout=10) == 0
    assert wait_until(lambda: not (idents & WORKER_THREADS), 10), "worker threads outlived their pool"


# -- 2. timed-out waiters do not pile up --------------------------------------------------------
def test_timed_out_waiters_do_not_pile_up(make_pool, Pool):
    pool = make_pool(min_size=1, max_size=1, max_waiting=2)
    held = pool.getconn(timeout=10)
    got: List[Any] = []
    # one live waiter all along: the queue is never empty, so nothing clears it wholesale
    waiter = threading.Thread(target=lambda: got.append(pool.getconn(timeout=60)))
    waiter.start()
    assert wait_until(lambda: pool.stats()["requests_waiting"] == 1)
    for _ in range(1500):
        with pytest.raises(fastpool.PoolTimeout):
            pool.getconn(timeout=0.0001)  # max_waiting=2 counts the live waiter only
    assert pool.stats()["requests_waiting"] == 1
    gc.collect()
    queued = sum(1 for o in gc.get_objects() if type(o) is Pool._Waiter)
    assert queued < 200, f"{queued} dead waiters kept"
    pool.putconn(held)
    waiter.join(10)
    assert got, "the live waiter was not served"
    pool.putconn(got[0])
    pool._check_invariants()


# -- 3. any failure of connect= frees or retries the slot ---------------------------------------
@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit, asyncio.CancelledError])
@pytest.mark.parametrize("where", ["connect", "conninfo"])
def test_base_exception_from_connect_is_retried(make_pool, dsn, exc, where):
    calls: List[int] = []

    def fail_first() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise exc()

    if where == "connect":
        def connect(conninfo: str, **kwargs: Any) -> Any:
            fail_first()
            return psycopg2.connect(conninfo, **kwargs)

        pool = make_pool(min_size=1, max_size=1, connect=connect)
    else:
        def conninfo() -> str:
            fail_first()
            return dsn

        pool = make_pool(min_size=1, max_size=1, conninfo=conninfo)
    with pool.connection(timeout=10) as conn:
        assert conn.cursor().execute("SELECT 1") is None
    stats = pool.stats()
    assert stats["connections_errors"] == 1 and stats["connections_num"] == 2


@pytest.mark.parametrize("bad", [None, 42, "not a connection"])
def test_connect_returning_a_non_connection_is_a_clear_error(make_pool, bad):
    pool = make_pool(min_size=0, max_size=2, connect=lambda conninfo, **kw: bad)
    with pytest.raises(fastpool.PoolTimeout, match=r"connect returned") as info:
        pool.getconn(timeout=0.5)
    assert type(bad).__name__ in str(info.value)
    assert pool.stats()["connections_errors"] >= 1
    pool._check_invariants()


def test_connect_returning_none_once_then_recovers(make_pool):
    calls: List[int] = []

    def connect(conninfo: str, **kwargs: Any) -> Any:
        calls.append(1)
        return None if len(calls) == 1 else psycopg2.connect(conninfo, **kwargs)

    pool = make_pool(min_size=1, max_size=1, connect=connect)
    pool.wait(timeout=10)
    with pool.connection(timeout=10) as conn:
        conn.cursor().execute("SELECT 1")
    assert pool.stats()["pool_size"] == 1


class NoStatus:
    """A connection proxy without get_transaction_status (as from an odd connect=)."""

    def __init__(self, conn: Any) -> None:
        object.__setattr__(self, "_c", conn)

    def __getattr__(self, name: str) -> Any:
        if name == "get_transaction_status":
            raise AttributeError(name)
        return getattr(self._c, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._c, name, value)


def test_first_connection_without_status_keeps_transaction_check(make_pool):
    made: List[Any] = []

    def connect(conninfo: str, **kwargs: Any) -> Any:
        conn = psycopg2.connect(conninfo, **kwargs)
        made.append(conn)
        return NoStatus(conn) if len(made) == 1 else conn

    pool = make_pool(min_size=1, max_size=2, connect=connect)
    pool.wait(timeout=10)
    first = pool.getconn(timeout=10)
    assert isinstance(first, NoStatus)
    real = pool.getconn(timeout=10)
    real.cursor().execute("SELECT 1")  # opens a transaction
    assert real.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_INTRANS
    pool.putconn(real)
    assert real.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE, \
        "a connection went back into the pool inside a transaction"
    pool.putconn(first)


# -- 4. infinite and huge timeouts, absurd sizes ------------------------------------------------
@pytest.mark.parametrize("timeout", [float("inf"), 1e10])
def test_infinite_timeout_waits(make_pool, timeout):
    pool = make_pool(min_size=1, max_size=1)
    held = pool.getconn(timeout=10)
    result: List[Any] = []

    def take() -> None:
        try:
            result.append(pool.getconn(timeout=timeout))
        except BaseException as exc:  # noqa: BLE001 - reported below
            result.append(exc)

    t = threading.Thread(target=take)
    t.start()
    assert wait_until(lambda: pool.stats()["requests_waiting"] == 1 or result)
    pool.putconn(held)
    t.join(10)
    assert result and result[0] is held, result
    pool.putconn(held)


def test_infinite_pool_timeout_is_accepted(make_pool):
    pool = make_pool(min_size=1, max_size=1, timeout=float("inf"))
    assert pool.timeout == float("inf")
    with pool.connection() as conn:
        conn.cursor().execute("SELECT 1")


@pytest.mark.parametrize("option,value", [("max_size", 2**31), ("max_size", 2**40),
                                          ("max_waiting", 2**31)])
def test_huge_sizes_are_a_value_error_naming_the_option(Pool, dsn, option, value):
    with pytest.raises(ValueError, match=option):
        Pool(dsn, **{"min_size": 0, "max_size": 10, "open": False, option: value})


def test_resize_to_a_huge_max_size_is_a_value_error(make_pool):
    pool = make_pool(min_size=0, max_size=2)
    with pytest.raises(ValueError, match="max_size"):
        pool.resize(0, 2**31)
    assert pool.max_size == 2


# -- 5. drain() replaces in-flight connects -----------------------------------------------------
def test_drain_replaces_connections_still_connecting(make_pool):
    gate = Gate()
    pool = make_pool(min_size=1, max_size=1, connect=gate)
    assert wait_until(lambda: gate.in_flight == 1)
    pool.drain()  # e.g. a failover: the attempt in flight may reach the old server
    gate.open_.set()
    with pool.connection(timeout=10) as conn:
        assert conn is not gate.made[0], "a connection opened before drain() was handed out"
    assert gate.made[0].closed
    assert len(gate.made) == 2


# -- 6. open(wait=True) on an open pool waits ---------------------------------------------------
def test_open_wait_on_an_open_pool_waits(make_pool):
    gate = Gate()
    pool = make_pool(min_size=2, max_size=2, connect=gate)
    with pytest.raises(fastpool.PoolTimeout):
        pool.open(wait=True, timeout=0.3)
    gate.open_.set()
    pool.open(wait=True, timeout=10)
    assert pool.stats()["pool_available"] == 2


# -- 7. reconnect_failed fires once, at the deadline --------------------------------------------
@pytest.mark.slow
def test_reconnect_failed_fires_once_at_deadline_then_retries_stop(Pool):
    fired: List[float] = []
    t0 = monotonic()
    pool = Pool(DEAD_DSN, min_size=2, max_size=4, reconnect_timeout=1.0,
                reconnect_failed=lambda p: fired.append(monotonic()))
    try:
        assert wait_until(lambda: fired, 15), "reconnect_failed never fired"
        # at the deadline, within one backoff step (the last attempt is made at the deadline)
        assert 1.0 <= fired[0] - t0 < 1.0 + pool_mod.BACKOFF_MAX + 1.0, fired[0] - t0
        attempts = pool.stats()["connections_num"]
        time.sleep(3 * pool_mod.BACKOFF_MAX)  # several backoff periods: nothing may happen
        assert len(fired) == 1, f"reconnect_failed fired {len(fired)} times"
        stats = pool.stats()
        assert stats["connections_num"] == attempts, "retries went on after giving up"
        assert stats["pool_size"] == 0
        # a request that needs a connection starts attempts again
        with pytest.raises(fastpool.PoolTimeout):
            pool.getconn(timeout=0.5)
        assert wait_until(lambda: pool.stats()["connections_num"] > attempts)
    finally:
        pool.close()


@pytest.mark.slow
def test_gave_up_pool_recovers_on_demand(Pool, private_server):
    srv = private_server()
    srv.stop()
    fired: List[float] = []
    pool = Pool(srv.dsn + " connect_timeout=2", min_size=1, max_size=2, reconnect_timeout=0.5,
                reconnect_failed=lambda p: fired.append(monotonic()))
    try:
        assert wait_until(lambda: fired, 15)
        srv.start()
        with pool.connection(timeout=20) as conn:  # a request revives the pool
            conn.cursor().execute("SELECT 1")
        pool.wait(timeout=10)  # and min_size is kept again
    finally:
        pool.close()


# -- 8. a check= callable that blocks without I/O -----------------------------------------------
def test_check_callable_sleeping_past_timeout_is_documented(make_pool):
    """Documented (README, "check"): a callable's own round trips are bounded by the caller's
    timeout; a callable that blocks otherwise (time.sleep) cannot be interrupted, and its
    connection is discarded as failed once it returns past the deadline."""
    slow = threading.Event()

    def check(conn: Any) -> None:
        if slow.is_set():
            time.sleep(0.6)

    pool = make_pool(min_size=1, max_size=1, check=check)
    pool.wait(timeout=10)
    slow.set()
    t0 = monotonic()
    with pytest.raises(fastpool.PoolTimeout):
        pool.getconn(timeout=0.2)
    assert monotonic() - t0 >= 0.6  # not bounded: it ran to its end
    slow.clear()
    with pool.connection(timeout=10) as conn:  # the slot was freed and refilled
        conn.cursor().execute("SELECT 1")
    assert pool.stats()["connections_lost"] == 1


@pytest.mark.slow
def test_check_callable_round_trip_is_bounded_by_timeout(make_pool):
    slow = threading.Event()

    def check(conn: Any) -> None:
        if slow.is_set():
            conn.cursor().execute("SELECT pg_sleep(30)")

    pool = make_pool(min_size=1, max_size=1, check=check)
    pool.wait(timeout=10)
    slow.set()
    t0 = monotonic()
    with pytest.raises(fastpool.PoolTimeout):
        pool.getconn(timeout=0.5)
    assert monotonic() - t0 < 15  # far from the 30 s query: the watchdog ended it


# -- 9. stats with psycopg_pool's meanings ------------------------------------------------------
def test_requests_wait_ms_includes_timed_out_waits(make_pool):
    pool = make_pool(min_size=1, max_size=1)
    held = pool.getconn(timeout=10)
    with pytest.raises(fastpool.PoolTimeout):
        pool.getconn(timeout=0.3)
    stats = pool.stats()
    assert stats["requests_wait_ms"] >= 250, stats
    assert stats["requests_errors"] == 1
    pool.putconn(held)


def test_connections_num_counts_attempts(Pool):
    pool = Pool(DEAD_DSN, min_size=1, max_size=1)
    try:
        assert wait_until(lambda: pool.stats()["connections_errors"] >= 2)
        stats = pool.stats()
        assert stats["connections_num"] >= stats["connections_errors"] >= 2, stats
    finally:
        pool.close()


# -- 10. sizes --------------------------------------------------------------------------------
def test_min_size_alone_is_refused_as_ambiguous(Pool, dsn):
    with pytest.raises(ValueError, match="max_size"):
        Pool(dsn, min_size=5, open=False)


def test_max_size_none_is_a_fixed_pool_as_in_psycopg_pool(Pool, dsn):
    pool = Pool(dsn, min_size=3, max_size=None, open=False)
    assert (pool.min_size, pool.max_size) == (3, 3)
    with pytest.raises(ValueError, match="max_size"):
        Pool(dsn, min_size=0, max_size=None, open=False)


def test_defaults_and_min_size_zero_alone(Pool, dsn):
    pool = Pool(dsn, open=False)
    assert (pool.min_size, pool.max_size) == (1, 10)
    pool = Pool(dsn, min_size=0, open=False)
    assert (pool.min_size, pool.max_size) == (0, 10)


def test_resize_one_argument_sets_both_bounds(make_pool):
    pool = make_pool(min_size=1, max_size=10)
    pool.resize(4)
    assert (pool.min_size, pool.max_size) == (4, 4)
    pool.resize(0, 3)
    assert (pool.min_size, pool.max_size) == (0, 3)


# -- 11. read-only attributes -----------------------------------------------------------------
def test_public_read_only_attributes(Pool, dsn):
    pool = Pool(dsn, min_size=0, max_size=2, max_waiting=7, max_lifetime=100.0, max_idle=50.0,
                reconnect_timeout=20.0, open=False)
    assert (pool.max_waiting, pool.max_lifetime, pool.max_idle, pool.reconnect_timeout) == \
        (7, 100.0, 50.0, 20.0)
    for name in ("max_waiting", "max_lifetime", "max_idle", "reconnect_timeout"):
        with pytest.raises(AttributeError):
            setattr(pool, name, 1)


# -- 12. growth follows sustained demand ------------------------------------------------------
def test_waiters_grow_the_pool_one_connect_at_a_time(make_pool):
    gate = Gate()
    pool = make_pool(min_size=0, max_size=10, connect=gate)
    got: List[Any] = []
    threads = [threading.Thread(target=lambda: got.append(pool.getconn(timeout=30))) for _ in range(5)]
    for t in threads:
        t.start()
    assert wait_until(lambda: pool.stats()["requests_waiting"] == 5)
    assert wait_until(lambda: gate.in_flight == 1)
    time.sleep(0.2)  # give a second connect every chance to start (none may)
    assert gate.in_flight == 1 and gate.peak == 1
    assert pool.stats()["pool_size"] == 1, "a momentary queue reserved the whole pool"
    gate.open_.set()  # each connect that ends starts the next while waiters remain
    for t in threads:
        t.join(30)
    assert len(got) == 5 and gate.peak == 1
    for conn in got:
        pool.putconn(conn)
    assert pool.stats()["pool_size"] == 5


# -- Also: fastpool.connect(timeout=) -----------------------------------------------------------
def test_dbapi_timeout_does_not_make_a_pool_per_value(dsn, app_name):
    from fastpool import dbapi

    before = set(map(id, dbapi._pools.values()))
    try:
        for i in range(8):
            conn = fastpool.connect(dsn, application_name=app_name, max_size=2, timeout=1 + i / 10)
            conn.close()
        new = [p for p in dbapi._pools.values() if id(p) not in before]
        assert len(new) == 1, f"{len(new)} pools for one dsn"
    finally:
        fastpool.pool_for(dsn, application_name=app_name, max_size=2).close()
