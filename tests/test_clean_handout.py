"""Issue 9: the next borrower inherits nothing -- no transaction state (the server's or
psycopg2's), no session state, no client-side settings, no messages -- and every connection
the pool discards on return is logged with the reason, never the password.

Every test runs on both cores against the real server, reusing the connection within the
default check="auto" window (max_size=1: the same backend again, checked by pid)."""

import logging
import uuid

import psycopg2
import psycopg2.extensions as ext
import psycopg2.extras
import pytest
from psycopg2 import sql

from fastpool.session import changes_session
from helpers import count_rows

ALL_MODES = ["auto", "rollback", "discard", None, "callable"]


def mode_option(mode):
    if mode == "callable":
        return lambda conn: None
    return mode


def scalar(conn, query, args=None):
    with conn.cursor() as cur:
        cur.execute(query, args)
        return cur.fetchone()[0]


def borrow_twice(pool, first, second):
    """``first(conn)`` on one borrow, ``second(conn)`` on the next, on the same backend."""
    conn = pool.getconn(timeout=10)
    pid = conn.get_backend_pid()
    try:
        first(conn)
    finally:
        pool.putconn(conn)
    conn = pool.getconn(timeout=10)
    try:
        assert conn.get_backend_pid() == pid, "test needs the same backend again"
        return second(conn)
    finally:
        pool.putconn(conn)


@pytest.fixture
def table(admin):
    name = "fp_clean_" + uuid.uuid4().hex[:12]
    with admin.cursor() as cur:
        cur.execute(f"CREATE TABLE {name} (id int)")
    yield name
    with admin.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {name}")


def fastpool_warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "fastpool" and r.levelno >= logging.WARNING]


# --------------------------------------------------------------------------------------------
# 1. SQL-level transaction control must not desynchronise the next borrower
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ALL_MODES)
@pytest.mark.parametrize("shape", [
    ("BEGIN", "INSERT", "COMMIT"),
    ("INSERT", "COMMIT"),
    ("INSERT", "ROLLBACK"),
    ("INSERT", "END"),
    ("SELECT", "ABORT"),
])
def test_sql_commit_does_not_make_next_borrower_autocommit(make_pool, admin, table, mode, shape):
    pool = make_pool(min_size=1, max_size=1, reset=mode_option(mode))

    def first(conn):
        with conn.cursor() as cur:
            for step in shape:
                if step == "INSERT":
                    cur.execute(f"INSERT INTO {table} VALUES (1)")
                elif step == "SELECT":
                    cur.execute("SELECT 1")
                else:
                    cur.execute(step)

    def second(conn):
        # B's block fails after its INSERT: nothing of it may be committed.
        with pytest.raises(RuntimeError):
            with conn.cursor() as cur:
                cur.execute(f"INSERT INTO {table} VALUES (2)")
                raise RuntimeError("B fails")
        conn.rollback()

    with admin.cursor() as cur:
        cur.execute(f"TRUNCATE {table}")
    borrow_twice(pool, first, second)
    with admin.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table} WHERE id = 2")
        assert cur.fetchone()[0] == 0


@pytest.mark.parametrize("mode", ALL_MODES)
def test_sql_commit_then_with_block_rolls_back(make_pool, admin, table, mode):
    """The issue's scenario: A ends its transaction with SQL and returns the connection with
    putconn (a ``with`` block's own commit would heal psycopg2); B's ``with pool.connection()``
    block raises after an INSERT: its row must not be there."""
    pool = make_pool(min_size=1, max_size=1, reset=mode_option(mode))
    conn = pool.getconn(timeout=10)
    with conn.cursor() as cur:
        cur.execute(f"INSERT INTO {table} VALUES (1)")
        cur.execute("COMMIT")
    pool.putconn(conn)
    with pytest.raises(RuntimeError):
        with pool.connection() as conn:
            with conn.cursor() as cur:
                cur.execute(f"INSERT INTO {table} VALUES (2)")
            raise RuntimeError("B fails")
    assert count_rows(admin, table) == 1


@pytest.mark.parametrize("mode", ALL_MODES)
def test_failed_tpc_prepare_is_not_inherited(make_pool, admin, table, mode):
    if scalar(admin, "SHOW max_prepared_transactions") != "0":
        pytest.skip("needs a server where PREPARE TRANSACTION fails (max_prepared_transactions=0)")
    admin.rollback()
    pool = make_pool(min_size=1, max_size=1, reset=mode_option(mode))
    conn = pool.getconn(timeout=10)
    conn.tpc_begin(conn.xid(1, "fp-" + uuid.uuid4().hex[:8], "q"))
    with conn.cursor() as cur:
        cur.execute(f"INSERT INTO {table} VALUES (1)")
    with pytest.raises(psycopg2.Error):
        conn.tpc_prepare()
    pool.putconn(conn)
    with pytest.raises(RuntimeError):
        with pool.connection() as conn:
            with conn.cursor() as cur:
                cur.execute(f"INSERT INTO {table} VALUES (2)")
            raise RuntimeError("B fails")
    assert count_rows(admin, table) == 0
    with pool.connection() as conn:
        assert conn.status == ext.STATUS_READY


# --------------------------------------------------------------------------------------------
# 2. session state does not cross borrowers under the default settings
# --------------------------------------------------------------------------------------------

@pytest.fixture
def role(admin):
    name = "fp_clean_role_" + uuid.uuid4().hex[:8]
    with admin.cursor() as cur:
        cur.execute(f"CREATE ROLE {name}")
    yield name
    with admin.cursor() as cur:
        cur.execute(f"DROP ROLE IF EXISTS {name}")


def run(*statements, cursor_factory=None):
    def first(conn):
        cur = conn.cursor(cursor_factory=cursor_factory) if cursor_factory else conn.cursor()
        for s in statements:
            cur.execute(s)
        cur.close()
        conn.commit()
    return first


SESSION_CASES = {
    "search_path": (run("SET search_path TO pg_catalog"), "SHOW search_path", '"$user", public'),
    "search_path_realdict": (
        run("SET search_path TO pg_catalog", cursor_factory=psycopg2.extras.RealDictCursor),
        "SHOW search_path", '"$user", public'),
    "search_path_composed": (
        lambda conn: (conn.cursor().execute(sql.SQL("SET search_path TO {}").format(sql.Identifier("x"))),
                      conn.commit()),
        "SHOW search_path", '"$user", public'),
    "search_path_after_comment": (
        run("/* a comment */ -- and another\n  set search_path = pg_catalog"),
        "SHOW search_path", '"$user", public'),
    "multi_statement": (run("SELECT 1; SET search_path TO pg_catalog; SELECT 2"),
                        "SHOW search_path", '"$user", public'),
    "tenant_set": (run("SET app.tenant_id = '42'"),
                   "SELECT coalesce(current_setting('app.tenant_id', true), '')", ""),
    "tenant_set_config": (run("SELECT set_config('app.tenant_id', '42', false)"),
                          "SELECT coalesce(current_setting('app.tenant_id', true), '')", ""),
    "tenant_callproc": (
        lambda conn: (conn.cursor().callproc("set_config", ("app.tenant_id", "42", False)), conn.commit()),
        "SELECT coalesce(current_setting('app.tenant_id', true), '')", ""),
    "work_mem": (run("SET work_mem = '77MB'"), "SELECT current_setting('work_mem') <> '77MB'", True),
    "prepare": (run("PREPARE fp_q AS SELECT 1"), "SELECT count(*) FROM pg_prepared_statements", 0),
    "listen": (run("LISTEN fp_channel"), "SELECT count(*) FROM pg_listening_channels()", 0),
    "with_hold_sql": (run("DECLARE fp_c CURSOR WITH HOLD FOR SELECT 1"),
                      "SELECT count(*) FROM pg_cursors", 0),
    "temp_table": (run("CREATE TEMP TABLE fp_t (a int)"),
                   "SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()", 0),
    "select_into_temp": (run("SELECT 1 AS a INTO TEMP fp_t2"),
                         "SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()", 0),
    "advisory_lock": (run("SELECT pg_advisory_lock(424242)"),
                      "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()", 0),
    "do_block": (run("DO $$ BEGIN PERFORM set_config('app.tenant_id', '42', false); END $$"),
                 "SELECT coalesce(current_setting('app.tenant_id', true), '')", ""),
}


@pytest.mark.parametrize("case", sorted(SESSION_CASES))
def test_session_state_not_inherited_by_default(make_pool, case):
    first, probe, expected = SESSION_CASES[case]
    pool = make_pool(min_size=1, max_size=1)  # all defaults
    assert borrow_twice(pool, first, lambda c: scalar(c, probe)) == expected


def test_role_not_inherited_by_default(make_pool, role):
    pool = make_pool(min_size=1, max_size=1)
    assert borrow_twice(pool, run(f"SET ROLE {role}"), lambda c: scalar(c, "SELECT current_user")) == "postgres"


def test_named_with_hold_cursor_not_inherited(make_pool):
    pool = make_pool(min_size=1, max_size=1)

    def first(conn):
        cur = conn.cursor("fp_named", withhold=True)
        cur.execute("SELECT generate_series(1, 10)")
        cur.fetchone()
        conn.commit()  # the WITH HOLD cursor survives this; the borrower forgets to close it

    assert borrow_twice(pool, first, lambda c: scalar(c, "SELECT count(*) FROM pg_cursors")) == 0


def test_configure_is_rerun_after_a_session_reset(make_pool):
    """DISCARD ALL also wipes what configure set: the pool runs configure again."""
    def configure(conn):
        with conn.cursor() as cur:
            cur.execute("SET application_name = 'fp-configured'")
            cur.execute("SET statement_timeout = '123s'")
        conn.commit()

    pool = make_pool(min_size=1, max_size=1, configure=configure)
    got = borrow_twice(pool, run("SET statement_timeout = '1s'"),
                       lambda c: (scalar(c, "SHOW statement_timeout"), scalar(c, "SHOW application_name")))
    assert got == ("123s", "fp-configured")


def last_query(admin, pid):
    with admin.cursor() as cur:
        cur.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", (pid,))
        return cur.fetchone()[0]


def test_clean_borrower_pays_no_extra_round_trip(make_pool, admin):
    pool = make_pool(min_size=1, max_size=1)
    for _ in range(2):  # also after a first return
        with pool.connection() as conn:
            pid = conn.get_backend_pid()
            with conn.cursor() as cur:
                cur.execute("UPDATE pg_class SET relname = relname WHERE false")
                cur.execute("SELECT 'not session state: SET search_path TO x'")
        # psycopg2 sent COMMIT on the block's exit; the pool sent nothing after it.
        assert last_query(admin, pid) == "COMMIT"


def test_dirty_borrower_is_reset_on_return(make_pool, admin):
    pool = make_pool(min_size=1, max_size=1)
    with pool.connection() as conn:
        pid = conn.get_backend_pid()
        with conn.cursor() as cur:
            cur.execute("SET work_mem = '5MB'")
    assert last_query(admin, pid) == "DISCARD ALL"


def test_rollback_mode_keeps_session_state_when_asked_for(make_pool):
    pool = make_pool(min_size=1, max_size=1, reset="rollback")
    assert borrow_twice(pool, run("SET search_path TO pg_catalog"),
                        lambda c: scalar(c, "SHOW search_path")) == "pg_catalog"


@pytest.mark.parametrize("statement", [
    "SELECT 1", "UPDATE t SET a = 1", "INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING",
    "SELECT 'SET role x'", "-- SET x\nSELECT 1", "SET LOCAL work_mem = '1MB'",
    "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", "SELECT pg_advisory_xact_lock(1)",
    "SELECT temp FROM weather", "SELECT * FROM t OFFSET 10",
])
def test_classifier_clean_statements(statement):
    assert changes_session(statement) is False


@pytest.mark.parametrize("statement", [
    "SET search_path TO x", "set role x", "RESET ALL", "SET SESSION AUTHORIZATION x",
    "PREPARE p AS SELECT 1", "DEALLOCATE ALL", "LISTEN c", "UNLISTEN *", "DISCARD PLANS",
    "LOAD 'auto_explain'", "DO $$ BEGIN END $$", "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
    "CREATE TEMP TABLE x (a int)", "CREATE TEMPORARY VIEW v AS SELECT 1",
    "CREATE TABLE pg_temp.x (a int)", "SELECT 1 INTO TEMP x", "SELECT pg_catalog.set_config('a.b', '1', false)",
    "SELECT pg_try_advisory_lock_shared(1)", "SELECT 1; SET x = 1", "/* c */ SET x = 1",
    "SELECT 'a;b'; SET x = 'y'",
])
def test_classifier_session_statements(statement):
    assert changes_session(statement) is True


# --------------------------------------------------------------------------------------------
# 3. client-side state matches the server and the pool's defaults after any reset
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["auto", "rollback", "discard", "callable"])
def test_client_encoding_restored(make_pool, mode):
    pool = make_pool(min_size=1, max_size=1, reset=mode_option(mode))

    def first(conn):
        conn.set_client_encoding("LATIN1")
        assert scalar(conn, "SELECT 'é'") == "é"
        conn.commit()

    def second(conn):
        assert conn.encoding == "UTF8"
        assert conn.get_parameter_status("client_encoding") == "UTF8"
        return scalar(conn, "SELECT 'é'")

    assert borrow_twice(pool, first, second) == "é"


@pytest.mark.parametrize("mode", ["auto", "rollback", "discard", "callable"])
def test_cursor_factory_restored(make_pool, mode):
    pool = make_pool(min_size=1, max_size=1, reset=mode_option(mode))

    def first(conn):
        conn.cursor_factory = psycopg2.extras.RealDictCursor

    assert borrow_twice(pool, first, lambda c: scalar(c, "SELECT 1")) == 1


# --------------------------------------------------------------------------------------------
# 4. notices and notifies are cleared on return, every reset mode
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ALL_MODES)
def test_messages_not_inherited(make_pool, mode):
    pool = make_pool(min_size=1, max_size=1, reset=mode_option(mode))

    def first(conn):
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("DO $$ BEGIN RAISE NOTICE 'private to A'; END $$")
            cur.execute("LISTEN fp_msgs")
            cur.execute("NOTIFY fp_msgs, 'private to A'")
        assert conn.notices and conn.notifies

    def second(conn):
        return list(conn.notices), list(conn.notifies)

    assert borrow_twice(pool, first, second) == ([], [])


# --------------------------------------------------------------------------------------------
# 7. a reset callable that leaves a transaction open: discarded, with a warning
# --------------------------------------------------------------------------------------------

def test_reset_callable_leaving_transaction_discards(make_pool, caplog):
    calls = []

    def reset(conn):
        calls.append(1)
        if len(calls) == 1:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")  # opens a transaction and leaves it open

    pool = make_pool(min_size=1, max_size=1, reset=reset, name="fp-left-open")
    conn = pool.getconn(timeout=10)
    pid = conn.get_backend_pid()
    with caplog.at_level(logging.WARNING, logger="fastpool"):
        pool.putconn(conn)
    conn = pool.getconn(timeout=10)
    try:
        assert conn.get_backend_pid() != pid
        assert conn.get_transaction_status() == ext.TRANSACTION_STATUS_IDLE
    finally:
        pool.putconn(conn)
    assert any("fp-left-open" in m and "left a transaction open" in m for m in fastpool_warnings(caplog))
    assert pool.stats()["returns_bad"] == 1


# --------------------------------------------------------------------------------------------
# Also: every discard on return is logged with the pool name and the reason, never the password
# --------------------------------------------------------------------------------------------

SECRET = "Sekr1tPa55wd"


def _closed(conn):
    conn.close()


def _broken(conn):
    with conn.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(pg_backend_pid())")


def _mid_copy(conn):
    with conn.cursor() as cur:
        try:
            cur.execute("COPY (SELECT 1) TO STDOUT")
        except psycopg2.ProgrammingError:
            pass  # psycopg2 refuses to read it: the COPY is left in progress


def _failing_reset(conn):
    raise RuntimeError(f"cannot reset (password={SECRET})")


DISCARDS = {
    "closed": (_closed, "auto", "closed"),
    "broken": (_broken, "auto", ""),
    "mid_copy": (_mid_copy, "auto", ""),
    "failed_reset": (lambda conn: None, _failing_reset, "reset failed"),
    "failed_session_reset": (run("SET work_mem = '3MB'"), "auto", "reset failed"),
}


@pytest.mark.parametrize("case", sorted(DISCARDS))
def test_discards_are_logged_without_password(make_pool, dsn, caplog, case):
    borrow, mode, reason = DISCARDS[case]
    calls = []

    def configure(conn):
        calls.append(1)
        if case == "failed_session_reset" and len(calls) == 2:  # the re-run after DISCARD ALL
            raise psycopg2.OperationalError(f"configure failed; password={SECRET}")

    pool = make_pool(min_size=1, max_size=1, reset=mode, name=f"fp-log-{case}",
                     conninfo=f"{dsn} password={SECRET}", configure=configure)
    conn = pool.getconn(timeout=10)
    pid = conn.get_backend_pid()
    try:
        borrow(conn)
    except psycopg2.Error:
        pass
    with caplog.at_level(logging.WARNING, logger="fastpool"):
        pool.putconn(conn)
    messages = fastpool_warnings(caplog)
    discards = [m for m in messages if f"fp-log-{case}" in m and "discarding" in m]
    assert discards, messages
    assert reason in discards[0]
    assert not any(SECRET in m or SECRET[:6] in m for m in messages)
    assert pool.stats()["returns_bad"] == 1
    conn = pool.getconn(timeout=10)
    try:
        assert conn.get_backend_pid() != pid
    finally:
        pool.putconn(conn)


def test_desynchronised_connection_is_logged(make_pool, caplog):
    pool = make_pool(min_size=1, max_size=1, name="fp-desync")
    conn = pool.getconn(timeout=10)
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        cur.execute("COMMIT")
    with caplog.at_level(logging.WARNING, logger="fastpool"):
        pool.putconn(conn)
    assert any("fp-desync" in m and "COMMIT" in m for m in fastpool_warnings(caplog))
