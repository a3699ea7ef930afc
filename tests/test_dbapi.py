"""fastpool as a PEP 249 module: ``fastpool.connect()`` over process-wide pools.

Every scenario runs on both cores: ``fastpool.connect()`` builds its pools with
``fastpool.pool.Pool`` (the ``FASTPOOL_IMPL``-selected core, looked up at each pool creation),
and the ``core`` fixture points that at the core under test, with no process-wide pool before or
after the test. ``test_env_selected_core`` checks the real selection, ``FASTPOOL_IMPL`` in a fresh
interpreter, the way applications get it.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import logging
import os
import subprocess
import sys
import time
import uuid
from typing import Any, Callable, Iterator, List

import psycopg2
import psycopg2.extensions
import psycopg2.extras
import pytest

import fastpool
import fastpool.pool
from fastpool.pool import pool_class
from helpers import count_rows

EXCEPTIONS = (
    "Warning", "Error", "InterfaceError", "DatabaseError", "DataError", "OperationalError",
    "IntegrityError", "InternalError", "ProgrammingError", "NotSupportedError",
)
TYPE_OBJECTS = ("STRING", "BINARY", "NUMBER", "DATETIME", "ROWID")
CONSTRUCTORS = ("Date", "Time", "Timestamp", "DateFromTicks", "TimeFromTicks", "TimestampFromTicks", "Binary")


@contextlib.contextmanager
def pools_on_core(impl: str) -> Iterator[None]:
    cls = pool_class(impl)
    fastpool.close_all()
    saved = fastpool.pool.Pool
    fastpool.pool.Pool = cls
    try:
        yield
    finally:
        fastpool.pool.Pool = saved
        fastpool.close_all()


@pytest.fixture
def core(impl: str) -> Iterator[str]:
    """fastpool.connect() on the core under test; no process-wide pools before or after."""
    with pools_on_core(impl):
        yield impl


@pytest.fixture
def connect(core: str, dsn: str, app_name: str) -> Iterator[Callable[..., Any]]:
    """``connect(**kw)`` = ``fastpool.connect(dsn, application_name=<test's>, **kw)``; the
    connections are closed (returned) at teardown, then the pools (by the core fixture)."""
    made: List[Any] = []

    def factory(**kwargs: Any) -> Any:
        kwargs.setdefault("application_name", app_name)
        con = fastpool.connect(dsn, **kwargs)
        made.append(con)
        return con

    yield factory
    for con in made:
        con.close()


def pool_of(dsn: str, app_name: str, **kwargs: Any) -> Any:
    return fastpool.pool_for(dsn, application_name=app_name, **kwargs)


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def table(admin: Any) -> Iterator[str]:
    name = f"fp_dbapi_{uuid.uuid4().hex[:10]}"
    with admin.cursor() as cur:
        cur.execute(f"CREATE TABLE {name} (v int)")
    yield name
    with admin.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {name}")


# -- module globals -----------------------------------------------------------------------------


def test_module_globals() -> None:
    assert fastpool.apilevel == "2.0"
    assert fastpool.threadsafety in (0, 1, 2, 3)
    assert fastpool.threadsafety == psycopg2.threadsafety
    assert fastpool.paramstyle == "pyformat" == psycopg2.paramstyle
    assert callable(fastpool.connect)


def test_exceptions_are_psycopg2s() -> None:
    for name in EXCEPTIONS:
        assert getattr(fastpool, name) is getattr(psycopg2, name), name
        assert name in fastpool.__all__
    assert issubclass(fastpool.Warning, Exception)
    for name in EXCEPTIONS[2:]:
        assert issubclass(getattr(fastpool, name), fastpool.Error)
    for name in ("DataError", "OperationalError", "IntegrityError", "InternalError",
                 "ProgrammingError", "NotSupportedError"):
        assert issubclass(getattr(fastpool, name), fastpool.DatabaseError)
    # the pool's own errors are caught by code written for psycopg2
    for exc in (fastpool.PoolError, fastpool.PoolTimeout, fastpool.PoolClosed, fastpool.TooManyRequests):
        assert issubclass(exc, psycopg2.OperationalError)


def test_type_objects_and_constructors(connect: Callable[..., Any]) -> None:
    for name in TYPE_OBJECTS + CONSTRUCTORS:
        assert getattr(fastpool, name) is getattr(psycopg2, name), name
    con = connect()
    cur = con.cursor()
    cur.execute(
        "SELECT %s::date, %s::time, %s::timestamp, %s::bytea, %s::date, %s::timestamp, %s::time",
        (
            fastpool.Date(2002, 12, 25),
            fastpool.Time(13, 45, 30),
            fastpool.Timestamp(2002, 12, 25, 13, 45, 30),
            fastpool.Binary(b"\x00bin\xff"),
            fastpool.DateFromTicks(time.mktime((2002, 12, 25, 0, 0, 0, 0, 0, -1))),
            fastpool.TimestampFromTicks(time.mktime((2002, 12, 25, 13, 45, 30, 0, 0, -1))),
            fastpool.TimeFromTicks(time.mktime((2001, 1, 1, 13, 45, 30, 0, 0, -1))),
        ),
    )
    row = cur.fetchone()
    assert row[0] == datetime.date(2002, 12, 25)
    assert row[1] == datetime.time(13, 45, 30)
    assert row[2] == datetime.datetime(2002, 12, 25, 13, 45, 30)
    assert bytes(row[3]) == b"\x00bin\xff"
    assert row[4] == datetime.date(2002, 12, 25)
    assert row[5] == datetime.datetime(2002, 12, 25, 13, 45, 30)
    assert row[6] == datetime.time(13, 45, 30)

    cur.execute("SELECT 'x'::text, 1::int4, 2.5::numeric, now()::timestamp, 'b'::bytea, "
                "'pg_class'::regclass::oid")
    codes = [d.type_code for d in cur.description]
    assert codes[0] == fastpool.STRING
    assert codes[1] == fastpool.NUMBER and codes[2] == fastpool.NUMBER
    assert codes[3] == fastpool.DATETIME
    assert codes[4] == fastpool.BINARY
    assert codes[5] == fastpool.ROWID
    assert codes[0] != fastpool.NUMBER


# -- close() returns to the pool ---------------------------------------------------------------


def test_close_returns_to_pool(connect: Callable[..., Any], dsn: str, app_name: str, backends: Any) -> None:
    con = connect()
    pool = pool_of(dsn, app_name)
    assert con.pool is pool
    assert isinstance(con, fastpool.PooledConnection)
    with con.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        pid = cur.fetchone()[0]
    s = pool.stats()
    assert (s["pool_size"], s["pool_available"]) == (1, 0)
    assert not con.closed

    con.close()
    s = pool.stats()
    assert (s["pool_size"], s["pool_available"]) == (1, 1)
    assert con.closed
    assert backends() == 1  # returned, not disconnected
    assert "closed" in repr(con)

    con2 = connect()
    with con2.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        assert cur.fetchone()[0] == pid  # the same server connection, reused
    assert pool.stats()["connections_num"] == 1


def test_use_after_close_raises_interface_error(connect: Callable[..., Any]) -> None:
    con = connect()
    cur = con.cursor()
    cur.execute("SELECT 1")
    con.close()
    attempts = {
        "commit": lambda: con.commit(),
        "rollback": lambda: con.rollback(),
        "cursor": lambda: con.cursor(),
        "attribute": lambda: con.Error,
        "psycopg2 method": lambda: con.get_transaction_status(),
        "autocommit get": lambda: con.autocommit,
        "autocommit set": lambda: setattr(con, "autocommit", True),
        "attribute set": lambda: setattr(con, "isolation_level", 1),
        "with": lambda: con.__enter__(),
        "cursor made before close": lambda: cur.execute("SELECT 1"),
        "fetch on cursor made before close": cur.fetchone,
    }
    failures = []
    for what, attempt in attempts.items():
        try:
            attempt()
        except fastpool.InterfaceError:
            continue
        except Exception as exc:
            failures.append(f"{what}: {exc!r}")
        else:
            failures.append(f"{what}: no error")
    assert failures == [], "after close() these did not raise InterfaceError"
    assert cur.closed


def test_double_close_is_harmless(connect: Callable[..., Any], dsn: str, app_name: str) -> None:
    con = connect()
    pool = pool_of(dsn, app_name)
    con.close()
    before = pool.stats()
    con.close()
    con.close()
    after = pool.stats()
    assert after["pool_available"] == before["pool_available"] == 1
    assert after["returns_bad"] == 0


# -- transactions -------------------------------------------------------------------------------


@pytest.mark.parametrize("driver", ["psycopg2", "fastpool"])
def test_with_commits_or_rolls_back_and_stays_open(driver: str, connect: Callable[..., Any], dsn: str,
                                                   admin: Any, table: str) -> None:
    """``with con:`` behaves the same on psycopg2 and fastpool connections."""
    con = psycopg2.connect(dsn) if driver == "psycopg2" else connect()
    try:
        with con as entered:
            assert entered is con
            con.cursor().execute(f"INSERT INTO {table} VALUES (1)")
        assert count_rows(admin, table) == 1  # committed at exit
        assert not con.closed  # psycopg2 semantics: the connection stays open

        with pytest.raises(ZeroDivisionError):
            with con:
                con.cursor().execute(f"INSERT INTO {table} VALUES (2)")
                1 / 0
        assert count_rows(admin, table) == 1  # rolled back
        assert not con.closed
        assert con.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE

        with pytest.raises(psycopg2.errors.DivisionByZero):
            with con:
                con.cursor().execute(f"INSERT INTO {table} VALUES (3)")
                con.cursor().execute("SELECT 1 / 0")
        assert count_rows(admin, table) == 1
        with con:  # usable again after a failed transaction
            con.cursor().execute(f"INSERT INTO {table} VALUES (4)")
        assert count_rows(admin, table) == 2
    finally:
        con.close()


def test_close_rolls_back_uncommitted_work(connect: Callable[..., Any], admin: Any, table: str) -> None:
    con = connect()
    con.cursor().execute(f"INSERT INTO {table} VALUES (1)")
    con.close()  # PEP 249: closing without commit is an implicit rollback
    assert count_rows(admin, table) == 0
    con2 = connect()
    assert con2.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE
    assert count_rows(admin, table) == 0


def test_commit_and_rollback(connect: Callable[..., Any], admin: Any, table: str) -> None:
    con = connect()
    cur = con.cursor()
    cur.execute(f"INSERT INTO {table} VALUES (1)")
    con.rollback()
    assert count_rows(admin, table) == 0
    cur.execute(f"INSERT INTO {table} VALUES (1)")
    con.commit()
    assert count_rows(admin, table) == 1


def test_exceptions_as_connection_attributes(connect: Callable[..., Any]) -> None:
    con = connect()
    for name in EXCEPTIONS:
        assert getattr(con, name) is getattr(fastpool, name), name
    with pytest.raises(con.ProgrammingError):
        con.cursor().execute("SELECT * FROM fp_no_such_table_here")
    con.rollback()


def test_autocommit_get_set_and_reset_on_return(connect: Callable[..., Any], admin: Any, table: str) -> None:
    con = connect()
    assert con.autocommit is False
    con.autocommit = True
    assert con.autocommit is True
    con.cursor().execute(f"INSERT INTO {table} VALUES (1)")
    assert con.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE
    assert count_rows(admin, table) == 1  # no commit needed
    con.autocommit = False
    con.cursor().execute(f"INSERT INTO {table} VALUES (2)")
    assert con.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_INTRANS
    con.commit()
    con.autocommit = True
    raw = con._conn
    con.close()
    con2 = connect()
    assert con2._conn is raw  # the same connection again...
    assert con2.autocommit is False  # ...reset to the default for the next borrower


# -- pooling ------------------------------------------------------------------------------------


def test_unclosed_connection_returns_when_garbage_collected(connect: Callable[..., Any], dsn: str,
                                                            app_name: str, backends: Any) -> None:
    con = fastpool.connect(dsn, application_name=app_name)  # not via the fixture: nobody closes it
    pool = con.pool
    cur = con.cursor()
    cur.execute("SELECT pg_backend_pid()")
    pid = cur.fetchone()[0]
    assert pool.stats()["pool_available"] == 0
    del con
    gc.collect()
    # As with psycopg2, a live cursor keeps its connection: still borrowed.
    assert pool.stats()["pool_available"] == 0
    assert cur.connection.get_backend_pid() == pid
    del cur
    gc.collect()
    assert wait_for(lambda: pool.stats()["pool_available"] == 1), pool.stats()
    s = pool.stats()
    assert s["pool_size"] == 1
    assert s["connections_reclaimed"] == 0  # returned, not lost and reclaimed
    assert s["connections_lost"] == 0
    assert s["returns_bad"] == 0
    assert backends() == 1
    con2 = connect()
    c2 = con2.cursor()
    c2.execute("SELECT pg_backend_pid()")
    assert c2.fetchone()[0] == pid  # the very same server connection
    assert con2.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_INTRANS


def test_pools_are_keyed_by_dsn_and_options(core: str, dsn: str, app_name: str) -> None:
    a = fastpool.pool_for(dsn, application_name=app_name)
    assert fastpool.pool_for(dsn, application_name=app_name) is a
    assert fastpool.pool_for(dsn=dsn, application_name=app_name) is a
    assert fastpool.pool_for(dsn, application_name=app_name, max_size=3) is not a
    assert (fastpool.pool_for(dsn, application_name=app_name, max_size=3)
            is fastpool.pool_for(dsn, application_name=app_name, max_size=3))
    assert fastpool.pool_for(dsn, application_name=app_name + "-other") is not a
    con = fastpool.connect(dsn, application_name=app_name)
    try:
        assert con.pool is a
        assert a._core_impl == core
        assert a.min_size == 0  # connect() pools open no connection in advance
    finally:
        con.close()
    con = fastpool.connect(dsn, application_name=app_name, max_size=3)
    try:
        assert con.pool is fastpool.pool_for(dsn, application_name=app_name, max_size=3)
        assert con.pool.max_size == 3
    finally:
        con.close()


def test_max_size_is_honoured(connect: Callable[..., Any], dsn: str, app_name: str, backends: Any) -> None:
    c1 = connect(max_size=2, timeout=0.3)
    c2 = connect(max_size=2, timeout=0.3)
    t0 = time.monotonic()
    with pytest.raises(fastpool.PoolTimeout) as info:
        connect(max_size=2, timeout=0.3)
    assert time.monotonic() - t0 >= 0.25
    assert isinstance(info.value, psycopg2.OperationalError)  # `except psycopg2.Error` catches it
    assert backends() == 2
    c1.close()
    c3 = connect(max_size=2, timeout=0.3)  # a returned connection is handed out again
    assert backends() == 2
    pool = pool_of(dsn, app_name, max_size=2, timeout=0.3)
    assert c3.pool is pool and c2.pool is pool
    assert pool.stats()["requests_errors"] == 1


def test_keyword_connection_params_like_psycopg2(connect: Callable[..., Any], dsn: str, app_name: str) -> None:
    params = {k: v for k, v in psycopg2.extensions.parse_dsn(dsn).items()}
    query = "SELECT current_user, current_database(), current_setting('application_name')"

    ref = psycopg2.connect(**params, application_name=app_name)
    try:
        with ref.cursor() as cur:
            cur.execute(query)
            expected = cur.fetchone()
    finally:
        ref.close()

    con = fastpool.connect(**params, application_name=app_name)  # keywords only, no dsn
    try:
        with con.cursor() as cur:
            cur.execute(query)
            assert cur.fetchone() == expected
        assert con.info.dbname == params["dbname"]
    finally:
        con.close()

    # a dsn plus keyword overrides, as psycopg2.connect(dsn, user=..., dbname=...)
    con = fastpool.connect(dsn, user=params.get("user", "postgres"), dbname=params["dbname"],
                           application_name=app_name + "-kw")
    try:
        with con.cursor() as cur:
            cur.execute(query)
            assert cur.fetchone() == (expected[0], expected[1], app_name + "-kw")
    finally:
        con.close()

    # cursor_factory stays a connect() argument, not a libpq parameter
    con = connect(cursor_factory=psycopg2.extras.RealDictCursor)
    with con.cursor() as cur:
        cur.execute("SELECT 1 AS one")
        assert cur.fetchone() == {"one": 1}


def test_bad_connection_params_raise_psycopg2_errors(core: str, dsn: str) -> None:
    with pytest.raises(psycopg2.ProgrammingError):
        fastpool.connect(dsn, no_such_libpq_option="x")


def test_env_selected_core(impl: str, dsn: str, app_name: str) -> None:
    """Without any patching: FASTPOOL_IMPL picks the core that connect()'s pools use."""
    code = (
        "import sys, fastpool\n"
        f"con = fastpool.connect({dsn!r}, application_name={app_name!r})\n"
        "cur = con.cursor(); cur.execute('SELECT 1'); assert cur.fetchone() == (1,)\n"
        "print(fastpool.__impl__, con.pool._core_impl)\n"
        "con.close(); fastpool.close_all()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=dict(os.environ, FASTPOOL_IMPL=impl),
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [impl, impl]


# -- regressions ---------------------------------------------------------------------------------


def test_close_after_select_is_quiet(connect: Callable[..., Any], caplog: pytest.LogCaptureFixture) -> None:
    """close() is PEP 249's implicit rollback: no pool warning for read-only code."""
    con = connect()
    con.close()  # make the pool's first connection (and learn its defaults) outside the capture
    con = connect()
    cur = con.cursor()
    cur.execute("SELECT 1")  # psycopg2 opens a transaction: read-only code never commits
    with caplog.at_level(logging.WARNING, logger="fastpool"):
        con.close()
    assert [r.getMessage() for r in caplog.records if r.name == "fastpool"] == []


def test_cursor_connection_does_not_outlive_close(connect: Callable[..., Any]) -> None:
    """cursor.connection is the PooledConnection: after close() it cannot reach the raw
    connection the pool now lends to the next borrower."""
    con = connect()
    cur = con.cursor()
    assert cur.connection is con
    leaked = cur.connection
    con.close()
    other = connect()
    try:
        with pytest.raises(fastpool.InterfaceError):
            leaked.cursor()
        with pytest.raises(fastpool.InterfaceError):
            leaked.commit()
    finally:
        other.close()
