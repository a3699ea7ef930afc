"""Connection state is never inherited by the next borrower: transactions,
session attributes (autocommit, isolation, readonly, deferrable), and with
reset="discard" all session state (GUCs, role, temp tables, prepared
statements, advisory locks). Broken connections are not reused."""

import uuid

import psycopg2
import psycopg2.extensions as ext
import pytest
from helpers import wait_until, pid_of, assert_consistent


def scalar(conn, sql, args=None):
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchone()[0]


@pytest.fixture
def table(admin):
    name = "fp_reset_" + uuid.uuid4().hex[:12]
    with admin.cursor() as cur:
        cur.execute(f"CREATE TABLE {name} (id int)")
    yield name
    with admin.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {name}")


def borrow_twice(pool, first, second):
    """Run ``first(conn)`` on a borrowed connection, return it, borrow again
    (max_size=1 pools: the same backend) and run ``second(conn)``."""
    conn = pool.getconn(timeout=10)
    pid = pid_of(conn)
    first(conn)
    pool.putconn(conn)
    conn = pool.getconn(timeout=10)
    try:
        assert pid_of(conn) == pid, "test needs the same backend again"
        return second(conn)
    finally:
        pool.putconn(conn)


# --------------------------------------------------------------------------
# transaction and client-side state (every reset mode)
# --------------------------------------------------------------------------

def test_open_transaction_not_inherited(make_pool, admin, table):
    pool = make_pool(min_size=1, max_size=1)

    def first(conn):
        with conn.cursor() as cur:
            cur.execute(f"INSERT INTO {table} VALUES (1)")
        assert conn.get_transaction_status() == ext.TRANSACTION_STATUS_INTRANS

    def second(conn):
        assert conn.get_transaction_status() == ext.TRANSACTION_STATUS_IDLE
        assert scalar(conn, f"SELECT count(*) FROM {table}") == 0

    borrow_twice(pool, first, second)
    assert scalar(admin, f"SELECT count(*) FROM {table}") == 0
    # no lock left behind by the rolled-back insert: admin can take an
    # exclusive lock at once
    with admin.cursor() as cur:
        cur.execute("SET lock_timeout = '1s'")
        cur.execute("BEGIN")
        cur.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        cur.execute("ROLLBACK")
        cur.execute("RESET lock_timeout")
    assert_consistent(pool)


def test_failed_transaction_not_inherited(make_pool):
    pool = make_pool(min_size=1, max_size=1)

    def first(conn):
        with pytest.raises(psycopg2.Error):
            with conn.cursor() as cur:
                cur.execute("SELECT 1/0")
        assert conn.get_transaction_status() == ext.TRANSACTION_STATUS_INERROR

    def second(conn):
        assert conn.get_transaction_status() == ext.TRANSACTION_STATUS_IDLE
        assert scalar(conn, "SELECT 1") == 1

    borrow_twice(pool, first, second)
    assert pool.stats()["returns_bad"] == 0
    assert_consistent(pool)


def test_committed_work_is_kept(make_pool, admin, table):
    pool = make_pool(min_size=1, max_size=1)
    conn = pool.getconn(timeout=10)
    with conn.cursor() as cur:
        cur.execute(f"INSERT INTO {table} VALUES (1)")
    conn.commit()
    pool.putconn(conn)
    assert scalar(admin, f"SELECT count(*) FROM {table}") == 1


def effective(attr, value):
    """psycopg2 reports "server default" as None; an explicit setting equal
    to the server default (read committed / read write / not deferrable)
    is the same session state."""
    if attr in ("readonly", "deferrable") and value is None:
        return False
    if attr == "isolation_level" and value is None:
        return ext.ISOLATION_LEVEL_READ_COMMITTED
    return value


SESSION_CHANGES = [
    ("autocommit", True),
    ("isolation_level", ext.ISOLATION_LEVEL_SERIALIZABLE),
    ("readonly", True),
    ("deferrable", True),
]


@pytest.mark.parametrize("attr,value", SESSION_CHANGES, ids=[a for a, _ in SESSION_CHANGES])
def test_session_attribute_restored(make_pool, attr, value):
    pool = make_pool(min_size=1, max_size=1)
    conn = pool.getconn(timeout=10)
    default = getattr(conn, attr)
    assert default != value
    setattr(conn, attr, value)
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
    pool.putconn(conn)

    conn = pool.getconn(timeout=10)
    try:
        assert effective(attr, getattr(conn, attr)) == effective(attr, default)
        assert conn.get_transaction_status() == ext.TRANSACTION_STATUS_IDLE
        assert scalar(conn, "SHOW transaction_isolation") == "read committed"
        assert scalar(conn, "SHOW transaction_read_only") == "off"
        assert scalar(conn, "SHOW transaction_deferrable") == "off"
        conn.rollback()
    finally:
        pool.putconn(conn)


def test_all_session_attributes_restored_together(make_pool):
    pool = make_pool(min_size=1, max_size=1)
    conn = pool.getconn(timeout=10)
    defaults = {a: getattr(conn, a) for a, _ in SESSION_CHANGES}
    conn.set_session(isolation_level="SERIALIZABLE", readonly=True, deferrable=True,
                     autocommit=True)
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
    pool.putconn(conn)
    conn = pool.getconn(timeout=10)
    try:
        assert ({a: effective(a, getattr(conn, a)) for a, _ in SESSION_CHANGES}
                == {a: effective(a, v) for a, v in defaults.items()})
        assert scalar(conn, "SHOW transaction_isolation") == "read committed"
        assert scalar(conn, "SHOW transaction_read_only") == "off"
        conn.rollback()
    finally:
        pool.putconn(conn)


# --------------------------------------------------------------------------
# reset="discard"
# --------------------------------------------------------------------------

def test_discard_resets_search_path(make_pool):
    pool = make_pool(min_size=1, max_size=1, reset="discard")
    default = borrow_twice(pool, lambda c: c.rollback(),
                           lambda c: scalar(c, "SHOW search_path"))

    def first(conn):
        with conn.cursor() as cur:
            cur.execute("SET search_path TO foo")
        conn.commit()
        assert scalar(conn, "SHOW search_path") == "foo"
        conn.commit()

    after = borrow_twice(pool, first, lambda c: scalar(c, "SHOW search_path"))
    assert after == default
    assert after != "foo"


def test_discard_resets_search_path_autocommit_borrower(make_pool):
    pool = make_pool(min_size=1, max_size=1, reset="discard")

    def first(conn):
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SET search_path TO foo")

    after = borrow_twice(pool, first, lambda c: scalar(c, "SHOW search_path"))
    assert after != "foo"


def test_discard_resets_role(make_pool, admin):
    role = "fp_role_" + uuid.uuid4().hex[:10]
    with admin.cursor() as cur:
        cur.execute(f"CREATE ROLE {role}")
    try:
        pool = make_pool(min_size=1, max_size=1, reset="discard")

        def first(conn):
            with conn.cursor() as cur:
                cur.execute(f"SET ROLE {role}")
            conn.commit()
            assert scalar(conn, "SELECT current_user") == role
            conn.commit()

        def second(conn):
            return scalar(conn, "SELECT current_user"), scalar(conn, "SELECT session_user")

        current, session = borrow_twice(pool, first, second)
        assert current == session
        assert current != role
        pool.close()
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP ROLE IF EXISTS {role}")


def test_discard_drops_temp_tables(make_pool):
    pool = make_pool(min_size=1, max_size=1, reset="discard")

    def first(conn):
        with conn.cursor() as cur:
            cur.execute("CREATE TEMP TABLE fp_tmp (x int)")
            cur.execute("INSERT INTO fp_tmp VALUES (1)")
        conn.commit()

    def second(conn):
        return scalar(conn, "SELECT to_regclass('pg_temp.fp_tmp') IS NULL")

    assert borrow_twice(pool, first, second) is True


def test_discard_deallocates_prepared_statements(make_pool):
    pool = make_pool(min_size=1, max_size=1, reset="discard")

    def first(conn):
        with conn.cursor() as cur:
            cur.execute("PREPARE fp_stmt AS SELECT 1")
        conn.commit()

    def second(conn):
        return scalar(conn, "SELECT count(*) FROM pg_prepared_statements")

    assert borrow_twice(pool, first, second) == 0


def test_discard_releases_session_advisory_locks(make_pool, admin):
    key = 0x5A5A0000 + (uuid.uuid4().int & 0xFFFF)
    pool = make_pool(min_size=1, max_size=1, reset="discard")

    def first(conn):
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (key,))
        conn.commit()

    def second(conn):
        return scalar(admin, "SELECT pg_try_advisory_lock(%s)", (key,))

    try:
        assert borrow_twice(pool, first, second) is True
    finally:
        with admin.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock_all()")


def test_discard_also_rolls_back(make_pool, admin, table):
    pool = make_pool(min_size=1, max_size=1, reset="discard")

    def first(conn):
        with conn.cursor() as cur:
            cur.execute(f"INSERT INTO {table} VALUES (1)")
            cur.execute("SET search_path TO foo")  # inside the transaction

    def second(conn):
        assert conn.get_transaction_status() == ext.TRANSACTION_STATUS_IDLE
        return scalar(conn, f"SELECT count(*) FROM public.{table}")

    assert borrow_twice(pool, first, second) == 0
    assert pool.stats()["returns_bad"] == 0


def test_rollback_reset_does_not_discard_session(make_pool):
    """reset="rollback", asked for explicitly, only rolls back: committed session
    state survives (documents the difference with the default reset="auto")."""
    pool = make_pool(min_size=1, max_size=1, reset="rollback")

    def first(conn):
        with conn.cursor() as cur:
            cur.execute("SET search_path TO foo")
        conn.commit()

    assert borrow_twice(pool, first, lambda c: scalar(c, "SHOW search_path")) == "foo"


# --------------------------------------------------------------------------
# custom reset, broken returns
# --------------------------------------------------------------------------

def test_reset_callable_called_on_return(make_pool):
    seen = []

    def reset(conn):
        seen.append(conn)
        with conn.cursor() as cur:
            cur.execute("RESET search_path")
        conn.commit()

    pool = make_pool(min_size=1, max_size=1, reset=reset)

    def first(conn):
        with conn.cursor() as cur:
            cur.execute("SET search_path TO foo")
        conn.commit()

    after = borrow_twice(pool, first, lambda c: scalar(c, "SHOW search_path"))
    assert after != "foo"
    assert len(seen) >= 1


def test_reset_callable_failure_discards_connection(make_pool, app_name, backend_pids):
    def reset(conn):
        raise RuntimeError("reset failed")

    pool = make_pool(min_size=1, max_size=1, reset=reset)
    conn = pool.getconn(timeout=10)
    pid = pid_of(conn)
    conn.commit()
    pool.putconn(conn)  # the reset failure is the pool's problem, not the caller's
    conn2 = pool.getconn(timeout=10)
    try:
        assert conn2 is not conn
        assert pid_of(conn2) != pid
    finally:
        pool.putconn(conn2)
    assert conn.closed
    assert wait_until(lambda: pool.stats()["returns_bad"] >= 1, timeout=2), pool.stats()


def test_user_closed_connection_not_reused(make_pool, app_name, backends):
    pool = make_pool(min_size=1, max_size=1)
    conn = pool.getconn(timeout=10)
    conn.close()
    pool.putconn(conn)  # not an error
    assert wait_until(lambda: pool.stats()["returns_bad"] == 1, timeout=2), pool.stats()
    conn2 = pool.getconn(timeout=10)
    try:
        assert conn2 is not conn
        assert not conn2.closed
        assert scalar(conn2, "SELECT 1") == 1
    finally:
        pool.putconn(conn2)
    assert wait_until(lambda: backends(app_name) == 1, timeout=5), backends(app_name)
    assert_consistent(pool)


def test_connection_closed_inside_ctx_manager(make_pool):
    pool = make_pool(min_size=1, max_size=1)
    with pool.connection(timeout=10) as conn:
        conn.close()
    assert wait_until(lambda: pool.stats()["returns_bad"] == 1, timeout=2), pool.stats()
    with pool.connection(timeout=10) as conn2:
        assert conn2 is not conn
        assert scalar(conn2, "SELECT 1") == 1
    assert_consistent(pool)


def test_returned_with_server_side_cursor_open(make_pool):
    pool = make_pool(min_size=1, max_size=1)

    def first(conn):
        cur = conn.cursor(name="fp_named")
        cur.execute("SELECT generate_series(1, 1000)")
        cur.fetchmany(10)
        # returned with the named cursor still open (in a transaction)

    def second(conn):
        assert conn.get_transaction_status() == ext.TRANSACTION_STATUS_IDLE
        return scalar(conn, "SELECT count(*) FROM pg_cursors")

    assert borrow_twice(pool, first, second) == 0
