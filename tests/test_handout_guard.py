"""Who may return a connection, and what every hand-out is checked for (issue 9 items 5 and 6,
issue 13.5).

* A stale ``putconn`` (a second one, or one inside ``with pool.connection()``) can never give
  back a connection someone else borrowed since: held borrows (``with pool.connection()``,
  ``fastpool.connect()``, Django) refuse a bare ``putconn`` with ``PoolMisuse``.
* ``PoolMisuse`` is not an ``OperationalError``: retry-on-OperationalError code does not retry a
  programming bug.
* ``check="ping"`` / ``check=callable`` apply to every hand-out, direct handoffs to a waiter and
  new connections included; a failure is discarded, logged and, for new connections, backs off.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any, Callable, Iterator, List

import psycopg2
import psycopg2.errors
import pytest

import fastpool
import fastpool.pool
from fastpool.pool import pool_class
from helpers import wait_until, pid_of


@pytest.fixture
def table(admin: Any) -> Iterator[str]:
    name = f"hg_{uuid.uuid4().hex[:10]}"
    with admin.cursor() as cur:
        cur.execute(f"CREATE TABLE {name} (x int)")
    yield name
    with admin.cursor() as cur:
        # A failed test may leave a borrower's transaction holding a lock on the table: never
        # let the teardown wait for it.
        cur.execute("SET lock_timeout = '5s'")
        try:
            cur.execute(f"DROP TABLE IF EXISTS {name}")
        except psycopg2.errors.LockNotAvailable:
            pass
        finally:
            cur.execute("RESET lock_timeout")


def rows(admin: Any, table: str) -> List[int]:
    with admin.cursor() as cur:
        cur.execute(f"SELECT x FROM {table} ORDER BY x")
        return [r[0] for r in cur.fetchall()]


def assert_settled(pool: Any) -> None:
    assert wait_until(lambda: pool.stats()["pool_available"] == pool.stats()["pool_size"]), pool.stats()
    pool._check_invariants()


# --------------------------------------------------------------------------------------------
# issue 13.5: misuse has its own error class


def test_pool_misuse_is_not_an_operational_error() -> None:
    assert not issubclass(fastpool.PoolMisuse, psycopg2.OperationalError)
    assert not issubclass(fastpool.PoolMisuse, fastpool.PoolError)
    assert issubclass(fastpool.PoolMisuse, psycopg2.Error)  # `except psycopg2.Error` still sees it
    assert "PoolMisuse" in fastpool.__all__


def test_double_putconn_raises_pool_misuse(make_pool: Callable[..., Any]) -> None:
    pool = make_pool(min_size=1, max_size=1)
    conn = pool.getconn(timeout=10)
    pool.putconn(conn)
    with pytest.raises(fastpool.PoolMisuse) as info:
        pool.putconn(conn)
    assert not isinstance(info.value, psycopg2.OperationalError)
    assert_settled(pool)


# --------------------------------------------------------------------------------------------
# item 5: a stale putconn never returns someone else's connection


def test_stale_putconn_cannot_return_a_with_block_borrow(
    make_pool: Callable[..., Any], admin: Any, table: str
) -> None:
    """A returns its connection, B borrows the same one with ``with pool.connection()``, then A's
    stale second putconn: refused, and B's transaction is untouched (both rows commit)."""
    pool = make_pool(min_size=1, max_size=1)
    a = pool.getconn(timeout=10)
    pool.putconn(a)
    with pool.connection(timeout=10) as b:
        assert b is a  # max_size=1: the very same connection object
        with b.cursor() as cur:
            cur.execute(f"INSERT INTO {table} VALUES (1)")
        with pytest.raises(fastpool.PoolMisuse):
            pool.putconn(a)  # A's stale second return
        assert b.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_INTRANS
        with b.cursor() as cur:
            cur.execute(f"INSERT INTO {table} VALUES (2)")
    assert rows(admin, table) == [1, 2]
    assert_settled(pool)


def test_putconn_inside_with_block_raises_and_the_block_still_returns_once(
    make_pool: Callable[..., Any], admin: Any, table: str
) -> None:
    """``pool.putconn(conn)`` inside ``with pool.connection() as conn`` is refused, so no other
    borrower (here a waiting thread) can get the connection while the block still uses it."""
    pool = make_pool(min_size=1, max_size=1)
    got: List[Any] = []
    errors: List[BaseException] = []

    def other() -> None:
        try:
            c = pool.getconn(timeout=10)
            got.append(c)
            with c.cursor() as cur:
                cur.execute(f"INSERT INTO {table} VALUES (3)")  # its own transaction, rolled back
            pool.putconn(c)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    with pool.connection(timeout=10) as conn:
        with conn.cursor() as cur:
            cur.execute(f"INSERT INTO {table} VALUES (1)")
        t = threading.Thread(target=other)
        t.start()
        assert wait_until(lambda: pool.stats()["requests_waiting"] == 1)
        with pytest.raises(fastpool.PoolMisuse):
            pool.putconn(conn)
        assert not got  # the waiter did not get the connection the block still uses
        with conn.cursor() as cur:
            cur.execute(f"INSERT INTO {table} VALUES (2)")
    t.join(15)
    assert not t.is_alive() and not errors, errors
    assert got and got[0] is conn  # served after the block returned it, once
    assert rows(admin, table) == [1, 2]
    with pytest.raises(fastpool.PoolMisuse):
        pool.putconn(conn)  # returned exactly once
    assert_settled(pool)


def test_stale_putconn_cannot_return_a_dbapi_connection(
    impl: str, dsn: str, app_name: str, admin: Any, table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same for a ``fastpool.connect()`` connection: a stale bare putconn of its connection
    is refused and ``close()`` returns it."""
    fastpool.close_all()
    monkeypatch.setattr(fastpool.pool, "Pool", pool_class(impl))
    try:
        pool = fastpool.pool_for(dsn, application_name=app_name, max_size=1)
        a = pool.getconn(timeout=10)
        pool.putconn(a)
        con = fastpool.connect(dsn, application_name=app_name, max_size=1)
        try:
            assert con.pool is pool
            with con.cursor() as cur:
                cur.execute(f"INSERT INTO {table} VALUES (1)")
            with pytest.raises(fastpool.PoolMisuse):
                pool.putconn(a)
            con.commit()
        finally:
            con.close()
        assert rows(admin, table) == [1]
        assert_settled(pool)
    finally:
        fastpool.close_all()


def test_held_borrow_survives_pool_close(make_pool: Callable[..., Any]) -> None:
    pool = make_pool(min_size=1, max_size=1)
    with pool.connection(timeout=10) as conn:
        pool.close()
    assert conn.closed
    assert pool.stats()["pool_size"] == 0


# --------------------------------------------------------------------------------------------
# item 6: the check applies to every hand-out


def _fastpool_records(caplog: pytest.LogCaptureFixture, text: str) -> List[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "fastpool" and text in r.getMessage()]


def test_check_callable_runs_on_direct_handoff(
    make_pool: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    """A connection returned while someone waits goes straight to the waiter: the ``check``
    callable still runs on it, and a failing one is discarded, logged and replaced."""
    bad: set = set()
    checked: List[int] = []

    def check(conn: Any) -> bool:
        checked.append(pid_of(conn))
        return pid_of(conn) not in bad

    pool = make_pool(min_size=1, max_size=1, check=check, name="hg-handoff")
    first = pool.getconn(timeout=10)
    pid1 = pid_of(first)
    got: List[Any] = []
    errors: List[BaseException] = []

    def waiter() -> None:
        try:
            got.append(pool.getconn(timeout=20))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=waiter)
    t.start()
    assert wait_until(lambda: pool.stats()["requests_waiting"] == 1)
    bad.add(pid1)
    with caplog.at_level(logging.WARNING, logger="fastpool"):
        pool.putconn(first)  # handed straight to the waiter
        t.join(25)
    assert not t.is_alive() and not errors, errors
    assert pid1 in checked
    second = got[0]
    assert pid_of(second) != pid1, "the waiter got the connection that failed its check"
    assert first.closed
    assert pool.stats()["connections_lost"] >= 1
    msgs = [r.getMessage() for r in _fastpool_records(caplog, "failed its health check")]
    assert msgs and "hg-handoff" in msgs[0], [r.getMessage() for r in caplog.records]
    pool.putconn(second)
    assert_settled(pool)


def test_ping_runs_on_direct_handoff(
    make_pool: Callable[..., Any], admin: Any, backends: Any
) -> None:
    """``check="ping"``: a connection whose server session died while borrowed, returned while
    someone waits, is pinged before the waiter gets it; the waiter gets a working one."""
    pool = make_pool(min_size=1, max_size=1, check="ping")
    first = pool.getconn(timeout=10)
    pid1 = pid_of(first)
    got: List[Any] = []
    errors: List[BaseException] = []

    def waiter() -> None:
        try:
            c = pool.getconn(timeout=20)
            with c.cursor() as cur:
                cur.execute("SELECT pg_backend_pid()")
                got.append((c, cur.fetchone()[0]))
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=waiter)
    t.start()
    assert wait_until(lambda: pool.stats()["requests_waiting"] == 1)
    with admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", (pid1,))
    assert wait_until(lambda: pid1 not in backends.pids())
    pool.putconn(first)  # looks clean to the fast path: psycopg2 has not noticed yet
    t.join(25)
    assert not t.is_alive()
    assert not errors, errors  # without the check the waiter's query failed here
    conn, pid2 = got[0]
    assert pid2 != pid1
    pool.putconn(conn)
    assert_settled(pool)


@pytest.mark.slow
def test_failing_check_on_new_connections_backs_off_and_is_named(
    make_pool: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    """A check that always fails never lets a connection out: new connections are checked
    before anyone gets them, each failure is a failed connection attempt (logged, backed off),
    and the caller's PoolTimeout names it."""
    calls: List[float] = []

    def check(conn: Any) -> bool:
        calls.append(time.monotonic())
        return False

    pool = make_pool(min_size=0, max_size=2, check=check, name="hg-always-fails")
    with caplog.at_level(logging.WARNING, logger="fastpool"):
        with pytest.raises(fastpool.PoolTimeout) as info:
            pool.getconn(timeout=2.0)
    assert "health check" in str(info.value)
    pool.close()  # no attempt in flight while we look
    st = pool.stats()
    # every attempt failed (connections_num counts attempts, failed ones included)
    assert st["connections_errors"] >= 1 and st["connections_errors"] == st["connections_num"], st
    # Backoff (0.1 s doubling): attempts are spaced, not back to back. Without it a
    # connection was made (and handed out) as fast as the server allowed.
    gaps = [b - a for a, b in zip(calls, calls[1:])]
    assert calls and all(g >= 0.05 for g in gaps), gaps
    assert _fastpool_records(caplog, "health check"), [r.getMessage() for r in caplog.records]


def test_auto_does_not_check_a_connection_handed_straight_from_a_return(
    make_pool: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``check="auto"`` stays cheap: a connection returned while someone waits has just proved
    itself and is handed over without a poll or a ping."""
    pool = make_pool(min_size=1, max_size=1)
    first = pool.getconn(timeout=10)
    seen: List[Any] = []
    real = fastpool.health.auto_check

    def spy(conn: Any, idle: float, guard: Any) -> bool:
        seen.append(idle)
        return real(conn, idle, guard)

    monkeypatch.setattr(pool, "_health_check", spy)
    got: List[Any] = []
    t = threading.Thread(target=lambda: got.append(pool.getconn(timeout=20)))
    t.start()
    assert wait_until(lambda: pool.stats()["requests_waiting"] == 1)
    pool.putconn(first)
    t.join(25)
    assert got and got[0] is first
    assert seen == []
    pool.putconn(first)
