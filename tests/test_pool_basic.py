"""Basic behaviour of fastpool.Pool against a real PostgreSQL.

Covers: prewarm, getconn/putconn, the ``connection()`` context manager
(commit / rollback / always returned), stats, names, open/close, LIFO/FIFO
free list, the ``connect`` / ``configure`` / callable-conninfo hooks.
Every test taking the ``Pool`` fixture (directly or via ``make_pool``) runs
once per core.
"""

import re
import threading
import time
import uuid

import psycopg2
import psycopg2.extensions as ext
import pytest
from conftest import dsn_to_url

import fastpool
from helpers import wait_until, pid_of, select_one, count_rows


STATS_KEYS = {
    "pool_min", "pool_max", "pool_size", "pool_available", "requests_waiting",
    "requests_num", "requests_queued", "requests_wait_ms", "requests_errors",
    "returns_bad", "connections_num", "connections_ms", "connections_errors",
    "connections_lost", "usage_ms", "connections_reclaimed",
}


@pytest.fixture
def table(admin):
    """A fresh table ``(id int primary key, v text)``; dropped at teardown."""
    name = "fp_basic_" + uuid.uuid4().hex[:12]
    with admin.cursor() as cur:
        cur.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v text)")
    yield name
    with admin.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {name}")


# --------------------------------------------------------------------------
# prewarm / sizing
# --------------------------------------------------------------------------

def test_prewarm_min_size(make_pool, app_name, backends):
    pool = make_pool(min_size=3, max_size=5)
    pool.wait(timeout=10)
    assert wait_until(lambda: backends(app_name) == 3, timeout=3), backends(app_name)
    st = pool.stats()
    assert st["pool_size"] == 3
    assert st["pool_available"] == 3
    assert st["pool_min"] == 3
    assert st["pool_max"] == 5
    assert st["connections_num"] == 3
    assert st["requests_waiting"] == 0
    # prewarm does not overshoot later either
    time.sleep(0.2)
    assert backends(app_name) == 3


def test_min_size_zero_connects_lazily(make_pool, app_name, backends):
    pool = make_pool(min_size=0, max_size=2)
    pool.wait(timeout=5)
    time.sleep(0.2)
    assert backends(app_name) == 0
    assert pool.stats()["pool_size"] == 0
    conn = pool.getconn(timeout=5)
    try:
        assert select_one(conn) == 1
        assert backends(app_name) == 1
    finally:
        pool.putconn(conn)
    st = pool.stats()
    assert st["pool_size"] == 1
    assert st["pool_available"] == 1


def test_getconn_returns_working_psycopg2_connection(make_pool):
    pool = make_pool(min_size=1, max_size=2)
    conn = pool.getconn(timeout=10)
    try:
        assert isinstance(conn, ext.connection)
        assert not conn.closed
        assert conn.get_transaction_status() == ext.TRANSACTION_STATUS_IDLE
        assert select_one(conn) == 1
        st = pool.stats()
        assert st["pool_available"] == st["pool_size"] - 1
    finally:
        pool.putconn(conn)
    st = pool.stats()
    assert st["pool_available"] == st["pool_size"]


def test_connection_is_reused(make_pool, app_name, backends):
    pool = make_pool(min_size=1, max_size=1)
    pids = set()
    for _ in range(20):
        conn = pool.getconn(timeout=10)
        pids.add(pid_of(conn))
        pool.putconn(conn)
    assert len(pids) == 1
    assert backends(app_name) == 1
    assert pool.stats()["connections_num"] == 1


def test_grows_on_demand_up_to_max(make_pool, app_name, backends):
    pool = make_pool(min_size=0, max_size=3)
    conns = [pool.getconn(timeout=10) for _ in range(3)]
    try:
        assert len({id(c) for c in conns}) == 3
        assert len({pid_of(c) for c in conns}) == 3
        assert backends(app_name) == 3
        st = pool.stats()
        assert st["pool_size"] == 3
        assert st["pool_available"] == 0
    finally:
        for c in conns:
            pool.putconn(c)
    assert pool.stats()["pool_available"] == 3


# --------------------------------------------------------------------------
# connection() context manager
# --------------------------------------------------------------------------

def test_connection_ctx_commits_on_success(make_pool, admin, table):
    pool = make_pool(min_size=1, max_size=2)
    with pool.connection() as conn:
        assert isinstance(conn, ext.connection)
        with conn.cursor() as cur:
            cur.execute(f"INSERT INTO {table} VALUES (1, 'a')")
        # not yet visible from elsewhere: still in the borrower's transaction
        assert count_rows(admin, table) == 0
    assert count_rows(admin, table) == 1
    st = pool.stats()
    assert st["pool_available"] == st["pool_size"]


def test_connection_ctx_rolls_back_on_exception(make_pool, admin, table):
    pool = make_pool(min_size=1, max_size=2)

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with pool.connection() as conn:
            with conn.cursor() as cur:
                cur.execute(f"INSERT INTO {table} VALUES (1, 'a')")
            raise Boom()
    assert count_rows(admin, table) == 0
    st = pool.stats()
    assert st["pool_available"] == st["pool_size"]
    # the connection that saw the exception is clean for the next borrower
    with pool.connection() as conn:
        assert conn.get_transaction_status() == ext.TRANSACTION_STATUS_IDLE
        with conn.cursor() as cur:
            cur.execute(f"SELECT count(*) FROM {table}")
            assert cur.fetchone()[0] == 0


def test_connection_ctx_sql_error_is_propagated_and_conn_returned(make_pool):
    pool = make_pool(min_size=1, max_size=1)
    with pytest.raises(psycopg2.errors.UndefinedTable):
        with pool.connection() as conn:
            with conn.cursor() as cur:
                cur.execute("SELECT * FROM fp_no_such_table_xyz")
    st = pool.stats()
    assert st["pool_available"] == st["pool_size"] == 1
    with pool.connection(timeout=5) as conn:
        assert conn.get_transaction_status() == ext.TRANSACTION_STATUS_IDLE
        assert select_one(conn) == 1


def test_connection_ctx_commit_failure_raises_and_returns(make_pool, admin):
    """A commit that fails (deferred constraint) raises from the ``with``
    exit; the connection still goes back to the pool, clean."""
    name = "fp_defer_" + uuid.uuid4().hex[:12]
    with admin.cursor() as cur:
        cur.execute(
            f"CREATE TABLE {name} (id int, CONSTRAINT {name}_u UNIQUE (id) "
            "DEFERRABLE INITIALLY DEFERRED)")
    try:
        pool = make_pool(min_size=1, max_size=1)
        with pytest.raises(psycopg2.IntegrityError):
            with pool.connection() as conn:
                with conn.cursor() as cur:
                    cur.execute(f"INSERT INTO {name} VALUES (1), (1)")
        assert count_rows(admin, name) == 0
        st = pool.stats()
        assert st["pool_available"] == st["pool_size"] == 1
        with pool.connection(timeout=5) as conn:
            assert conn.get_transaction_status() == ext.TRANSACTION_STATUS_IDLE
            assert select_one(conn) == 1
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {name}")


def test_connection_ctx_autocommit_borrower(make_pool, admin, table):
    pool = make_pool(min_size=1, max_size=1)
    with pool.connection() as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"INSERT INTO {table} VALUES (1, 'a')")
        assert count_rows(admin, table) == 1
    assert count_rows(admin, table) == 1
    with pool.connection() as conn:
        assert conn.autocommit is False


def test_connection_ctx_timeout(make_pool):
    pool = make_pool(min_size=1, max_size=1)
    held = pool.getconn(timeout=10)
    try:
        t0 = time.monotonic()
        with pytest.raises(fastpool.PoolTimeout):
            with pool.connection(timeout=0.2):
                pytest.fail("should not get a connection")
        assert time.monotonic() - t0 < 2.0
    finally:
        pool.putconn(held)
    st = pool.stats()
    assert st["pool_available"] == st["pool_size"] == 1
    assert st["requests_waiting"] == 0


# --------------------------------------------------------------------------
# stats
# --------------------------------------------------------------------------

def test_stats_keys_and_counters(make_pool):
    pool = make_pool(min_size=1, max_size=2)
    pool.wait(timeout=10)
    st = pool.stats()
    missing = STATS_KEYS - set(st)
    assert not missing, f"missing stats keys: {sorted(missing)}"
    for key in STATS_KEYS:
        assert isinstance(st[key], (int, float)), (key, st[key])
        assert st[key] >= 0, (key, st[key])
    base = st["requests_num"]
    for _ in range(5):
        pool.putconn(pool.getconn(timeout=10))
    st = pool.stats()
    assert st["requests_num"] == base + 5
    assert st["requests_errors"] == 0
    assert st["returns_bad"] == 0
    assert st["connections_errors"] == 0
    assert st["connections_reclaimed"] == 0


def test_pop_stats_resets_counters_not_gauges(make_pool):
    pool = make_pool(min_size=2, max_size=3)
    pool.wait(timeout=10)
    for _ in range(3):
        pool.putconn(pool.getconn(timeout=10))
    popped = pool.pop_stats()
    assert STATS_KEYS <= set(popped)
    assert popped["requests_num"] >= 3
    assert popped["connections_num"] >= 2
    st = pool.stats()
    assert st["requests_num"] == 0
    assert st["connections_num"] == 0
    # gauges are not counters
    assert st["pool_size"] == 2
    assert st["pool_available"] == 2
    assert st["pool_min"] == 2
    assert st["pool_max"] == 3


def test_usage_and_connection_time_stats(make_pool):
    pool = make_pool(min_size=1, max_size=1)
    pool.wait(timeout=10)
    assert pool.stats()["connections_ms"] > 0
    conn = pool.getconn(timeout=10)
    time.sleep(0.2)
    pool.putconn(conn)
    assert pool.stats()["usage_ms"] >= 150


def test_requests_queued_and_wait_ms(make_pool):
    pool = make_pool(min_size=1, max_size=1)
    held = pool.getconn(timeout=10)
    result = {}

    def waiter():
        try:
            c = pool.getconn(timeout=10)
            result["ok"] = True
            pool.putconn(c)
        except Exception as e:  # pragma: no cover - reported below
            result["err"] = e

    pool.pop_stats()
    t = threading.Thread(target=waiter)
    t.start()
    assert wait_until(lambda: pool.stats()["requests_waiting"] == 1, timeout=5)
    time.sleep(0.2)
    pool.putconn(held)
    t.join(10)
    assert not t.is_alive()
    assert result.get("ok"), result
    st = pool.stats()
    assert st["requests_queued"] >= 1
    assert st["requests_wait_ms"] >= 150
    assert st["requests_waiting"] == 0


# --------------------------------------------------------------------------
# names, repr, open/close
# --------------------------------------------------------------------------

def test_default_and_custom_name(Pool, dsn, app_name):
    p1 = Pool(dsn, kwargs={"application_name": app_name}, min_size=0, open=False)
    p2 = Pool(dsn, kwargs={"application_name": app_name}, min_size=0, open=False,
              name="my-pool")
    try:
        assert re.fullmatch(r"pool-\d+", p1.name), p1.name
        assert p2.name == "my-pool"
        assert "my-pool" in repr(p2)
    finally:
        p1.close()
        p2.close()


def test_open_false_does_not_connect(Pool, dsn, app_name, backends):
    pool = Pool(dsn, kwargs={"application_name": app_name}, min_size=2, max_size=10, open=False)
    try:
        time.sleep(0.3)
        assert backends(app_name) == 0
        pool.open(wait=True, timeout=10)
        assert not pool.closed
        assert wait_until(lambda: backends(app_name) == 2, timeout=3)
        with pool.connection(timeout=5) as conn:
            assert select_one(conn) == 1
    finally:
        pool.close()
    assert pool.closed


def test_getconn_before_open_raises_pool_closed(Pool, dsn, app_name):
    pool = Pool(dsn, kwargs={"application_name": app_name}, min_size=0, open=False)
    try:
        with pytest.raises(fastpool.PoolClosed):
            pool.getconn(timeout=0.5)
    finally:
        pool.close()


def test_context_manager_opens_and_closes(Pool, dsn, app_name, backends):
    with Pool(dsn, kwargs={"application_name": app_name}, min_size=2, max_size=10) as pool:
        assert not pool.closed
        with pool.connection(timeout=10) as conn:
            assert select_one(conn) == 1
        pool.wait(timeout=10)
        assert backends(app_name) == 2
    assert pool.closed
    assert wait_until(lambda: backends(app_name) == 0, timeout=5), backends(app_name)
    with pytest.raises(fastpool.PoolClosed):
        pool.getconn(timeout=0.5)


def test_context_manager_opens_unopened_pool(Pool, dsn, app_name):
    pool = Pool(dsn, kwargs={"application_name": app_name}, min_size=1, max_size=10, open=False)
    with pool:
        with pool.connection(timeout=10) as conn:
            assert select_one(conn) == 1
    assert pool.closed


def test_close_is_idempotent(make_pool, app_name, backends):
    pool = make_pool(min_size=2, max_size=2)
    pool.wait(timeout=10)
    a = pool.getconn(timeout=10)
    pool.putconn(a)
    pool.close()
    assert a.closed  # idle connections are closed by close()
    pool.close()
    assert pool.closed
    assert wait_until(lambda: backends(app_name) == 0, timeout=5)


# --------------------------------------------------------------------------
# free list order
# --------------------------------------------------------------------------

def test_lifo_default_returns_last_returned(make_pool):
    pool = make_pool(min_size=2, max_size=2)
    a = pool.getconn(timeout=10)
    b = pool.getconn(timeout=10)
    pool.putconn(a)
    pool.putconn(b)
    c = pool.getconn(timeout=10)
    try:
        assert c is b
    finally:
        pool.putconn(c)


def test_fifo_free_list(make_pool):
    pool = make_pool(min_size=2, max_size=2, lifo=False)
    a = pool.getconn(timeout=10)
    b = pool.getconn(timeout=10)
    pool.putconn(a)
    pool.putconn(b)
    c = pool.getconn(timeout=10)
    try:
        assert c is a
    finally:
        pool.putconn(c)


# --------------------------------------------------------------------------
# hooks: connect=, configure=, callable conninfo, kwargs
# --------------------------------------------------------------------------

def test_kwargs_passed_to_connect(make_pool, app_name):
    pool = make_pool(min_size=1, max_size=1)
    with pool.connection(timeout=10) as conn:
        with conn.cursor() as cur:
            cur.execute("SHOW application_name")
            assert cur.fetchone()[0] == app_name


def test_custom_connect_callable(make_pool, app_name, dsn):
    made = []
    lock = threading.Lock()

    def my_connect(conninfo, **kwargs):
        assert isinstance(conninfo, str)
        assert kwargs.get("application_name") == app_name
        conn = psycopg2.connect(conninfo, **kwargs)
        with lock:
            made.append(conn)
        return conn

    pool = make_pool(min_size=1, max_size=2, connect=my_connect)
    pool.wait(timeout=10)
    c1 = pool.getconn(timeout=10)
    c2 = pool.getconn(timeout=10)
    try:
        assert any(c1 is m for m in made)
        assert any(c2 is m for m in made)
        assert len(made) == 2
    finally:
        pool.putconn(c1)
        pool.putconn(c2)


def test_configure_called_once_per_new_connection(make_pool):
    configured = []
    lock = threading.Lock()

    def configure(conn):
        assert isinstance(conn, ext.connection)
        # the connection is usable inside configure
        select_one(conn)
        conn.rollback()
        with lock:
            configured.append(conn)

    pool = make_pool(min_size=2, max_size=3, configure=configure)
    pool.wait(timeout=10)
    assert len(configured) == 2
    conns = [pool.getconn(timeout=10) for _ in range(3)]
    try:
        assert len(configured) == 3
        for c in conns:
            assert any(c is k for k in configured)
    finally:
        for c in conns:
            pool.putconn(c)
    for _ in range(5):
        pool.putconn(pool.getconn(timeout=10))
    assert len(configured) == 3


def test_callable_conninfo(Pool, dsn, app_name):
    calls = []

    def conninfo():
        calls.append(1)
        return dsn

    pool = Pool(conninfo, kwargs={"application_name": app_name}, min_size=1, max_size=2)
    try:
        pool.wait(timeout=10)
        assert len(calls) >= 1
        c1 = pool.getconn(timeout=10)
        c2 = pool.getconn(timeout=10)
        assert select_one(c1) == select_one(c2) == 1
        # called at each connect
        assert len(calls) == pool.stats()["connections_num"] == 2
        pool.putconn(c1)
        pool.putconn(c2)
    finally:
        pool.close()


def test_url_conninfo(Pool, dsn, app_name, backends):
    url = dsn_to_url(dsn)  # a socket-directory host goes in the query string
    pool = Pool(url, kwargs={"application_name": app_name}, min_size=1, max_size=1)
    try:
        pool.wait(timeout=10)
        with pool.connection(timeout=5) as conn:
            assert select_one(conn) == 1
        assert backends(app_name) == 1
    finally:
        pool.close()


def test_exception_hierarchy():
    assert issubclass(fastpool.PoolError, psycopg2.OperationalError)
    for cls in (fastpool.PoolTimeout, fastpool.PoolClosed, fastpool.TooManyRequests):
        assert issubclass(cls, fastpool.PoolError)
