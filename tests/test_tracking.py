"""The return tracking's per-statement ``execute`` (fastpool._track), compiled and interpreted.

Every statement of a pool connection goes through it; its shortcut (an unnamed cursor, a str
the classifier already answered as harmless) must never skip a statement that changes session
state. Each test runs on both builds of the helper: the one fastpool imports (compiled where a
C compiler was at hand) and the same source run by the interpreter (the fallback where it was
not), against the real server.
"""

import sys
from importlib.machinery import SourceFileLoader
from importlib.util import module_from_spec, spec_from_loader
from pathlib import Path

import psycopg2
import psycopg2.extensions as ext
import psycopg2.extras
import pytest
from psycopg2 import sql

import fastpool
from fastpool import _track, session, tracking


def _interpreted_track():
    """fastpool/_track.py executed as plain Python, whatever was built beside it."""
    path = Path(_track.__file__).with_name("_track.py")
    loader = SourceFileLoader("fastpool._track_interpreted", str(path))
    module = module_from_spec(spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


INTERPRETED = _interpreted_track()


@pytest.fixture(params=["imported", "interpreted"])
def track(request):
    return _track if request.param == "imported" else INTERPRETED


@pytest.fixture
def conn_with(dsn, track):
    """``make(cursor_base)``: a connection (the pool's connection class without its own
    ``cursor()`` override) whose cursors are ``cursor_base`` tracked through ``track``."""
    opened = []

    def make(cursor_base=ext.cursor):
        conn = psycopg2.connect(dsn, connection_factory=tracking.tracked_class(session=False))
        conn.autocommit = True
        conn._fastpool_dirty = tracking.CLEAN
        conn.cursor_factory = tracking._build_cursor_class(cursor_base, track)
        conn._fastpool_dirty = tracking.CLEAN  # (setting cursor_factory marks CHARACTERISTICS)
        opened.append(conn)
        return conn

    yield make
    for conn in opened:
        conn.close()


def dirty(conn):
    return bool(conn._fastpool_dirty & tracking.SESSION)


def test_interpreted_helper_is_plain_python_and_builds_match():
    assert INTERPRETED.COMPILED is False
    if fastpool.__impl__ == "c":
        # One build: where the core compiled, the tracking's execute did too.
        assert _track.COMPILED is True
        execute = _track.tracked_execute(ext.cursor.execute, {}, lambda cur, q: None)
        assert type(execute).__name__ == "cython_function_or_method"


HARMLESS = ["SELECT 1", "select 2 /* set */", "UPDATE t SET a = 1 WHERE false", "BEGIN", "COMMIT"]
CHANGING = [
    "SET work_mem = '77MB'",
    "SELECT 1; SET search_path TO pg_catalog",
    "SELECT set_config('app.x', '1', false)",
    "LISTEN fp_trk",
    "PREPARE fp_trk_q AS SELECT 1",
    "CREATE TEMP TABLE fp_trk_t (a int)",
    "SELECT pg_try_advisory_lock(4242)",  # (try: the second connection must not block)
]


@pytest.mark.parametrize("statement", CHANGING)
def test_changing_statement_flags_even_when_seen_before(conn_with, statement):
    # Seen before (cached True) and then on a fresh connection: the shortcut only covers False.
    for _ in range(2):
        conn = conn_with()
        assert not dirty(conn)
        conn.cursor().execute(statement)
        assert dirty(conn), statement
        assert session._seen.get(statement) is True


@pytest.mark.parametrize("statement", HARMLESS)
def test_harmless_statement_never_flags(conn_with, statement):
    conn = conn_with()
    cur = conn.cursor()
    if statement.startswith("UPDATE"):
        cur.execute("CREATE TEMP TABLE IF NOT EXISTS t (a int)")
        conn._fastpool_dirty = tracking.CLEAN
    for _ in range(3):  # the first classifies, the next ones take the shortcut
        cur.execute(statement)
    assert not dirty(conn)


def test_parameters_and_no_parameters_reach_psycopg2(conn_with):
    conn = conn_with()
    cur = conn.cursor()
    cur.execute("SELECT %s + %s", (1, 2))
    assert cur.fetchone() == (3,)
    cur.execute("SELECT %(a)s", {"a": "x"})
    assert cur.fetchone() == ("x",)
    cur.execute("SELECT '%'")  # vars None: no formatting, a bare % stays
    assert cur.fetchone() == ("%",)
    cur.execute(query="SELECT 4", vars=None)
    assert cur.fetchone() == (4,)
    with pytest.raises(TypeError):
        cur.execute()
    assert not dirty(conn)


@pytest.mark.parametrize("query", [
    b"SET work_mem = '77MB'",
    sql.SQL("SET {} = {}").format(sql.Identifier("work_mem"), sql.Literal("77MB")),
    sql.Composed([sql.SQL("SET work_mem = "), sql.Literal("77MB")]),
])
def test_non_str_queries_are_classified(conn_with, query):
    conn = conn_with()
    conn.cursor().execute(query)
    assert dirty(conn)


def test_str_subclass_is_not_taken_for_a_seen_str(conn_with):
    class Query(str):
        pass

    session.changes_session("SELECT 1")  # the plain text is cached as harmless
    conn = conn_with()
    conn.cursor().execute(Query("SET work_mem = '77MB'"))
    assert dirty(conn)
    conn = conn_with()
    conn.cursor().execute(Query("SELECT 1"))
    assert not dirty(conn)


def test_unhashable_query_is_rejected_by_psycopg2_not_the_shortcut(conn_with):
    conn = conn_with()
    with pytest.raises(TypeError):
        conn.cursor().execute(["SELECT 1"])
    assert not dirty(conn)


def test_named_cursor_with_hold_flags_a_seen_harmless_text(conn_with):
    session.changes_session("SELECT generate_series(1, 3)")
    conn = conn_with()
    conn.autocommit = False
    cur = conn.cursor("fp_trk_hold", withhold=True)
    cur.execute("SELECT generate_series(1, 3)")
    assert dirty(conn)
    cur.close()
    conn.rollback()
    conn = conn_with()
    conn.autocommit = False
    cur = conn.cursor("fp_trk_nohold")
    cur.execute("SELECT generate_series(1, 3)")
    assert not dirty(conn)
    conn.rollback()


def test_cache_cleared_between_statements(conn_with):
    conn = conn_with()
    cur = conn.cursor()
    cur.execute("SELECT 1")
    session._seen.clear()  # what a full cache does: the shortcut's dict is the same object
    cur.execute("SELECT 1")
    assert not dirty(conn)
    session._seen.clear()
    cur.execute("SET work_mem = '77MB'")
    assert dirty(conn)


def test_flagged_before_a_failing_statement(conn_with):
    conn = conn_with()
    with pytest.raises(psycopg2.Error):
        conn.cursor().execute("SET work_mem = 'not a size'")
    assert dirty(conn)


def test_base_exception_from_the_flag_propagates_and_the_statement_does_not_run(dsn, track):
    ran = []

    class Stop(BaseException):
        pass

    def flag(cur, query):
        raise Stop

    class Cur(ext.cursor):
        __slots__ = ()
        execute = track.tracked_execute(lambda self, *a: ran.append(a), {}, flag)

    conn = psycopg2.connect(dsn)
    try:
        with pytest.raises(Stop):
            conn.cursor(cursor_factory=Cur).execute("SET work_mem = '77MB'")
        assert ran == []
    finally:
        conn.close()


def test_cursor_subclasses_keep_their_behaviour(conn_with):
    conn = conn_with(psycopg2.extras.RealDictCursor)
    cur = conn.cursor()
    cur.execute("SELECT 1 AS a")
    assert cur.fetchone() == {"a": 1}
    cur.execute("SET work_mem = '77MB'")
    assert dirty(conn)


def test_pool_borrower_after_shortcut_statements_inherits_nothing(make_pool):
    # Through the pool's own classes: harmless texts (cached) then a changing one, same borrow.
    pool = make_pool(min_size=1, max_size=1)
    with pool.connection() as conn:
        pid = conn.get_backend_pid()
        with conn.cursor() as cur:
            for _ in range(3):
                cur.execute("SELECT 1")
            cur.execute("SET work_mem = '77MB'")
    with pool.connection() as conn:
        assert conn.get_backend_pid() == pid
        with conn.cursor() as cur:
            cur.execute("SELECT current_setting('work_mem')")
            assert cur.fetchone()[0] != "77MB"


def test_module_is_not_shadowed_by_a_stale_build():
    # A build of _track that is not from this source would not say COMPILED.
    assert isinstance(_track.COMPILED, bool)
    assert "fastpool._track" in sys.modules
