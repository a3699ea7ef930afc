"""The Django backend (``ENGINE: "django_fastpool"``) against the real PostgreSQL, on both cores.

Django settings are process-global and gevent monkey-patching must never happen in the pytest
process, so every scenario runs in a fresh interpreter: ``tests/django_app/driver.py SCENARIO``
configures Django from the environment (the ``dsn`` fixture parsed into NAME/USER/HOST/PORT/
PASSWORD, ``OPTIONS["application_name"]`` = the test's ``app_name``, ``OPTIONS["pool"]``,
``FASTPOOL_IMPL`` from the ``impl`` fixture), runs the scenario and prints one ``RESULT {json}``
line of observations; the assertions are made here. Each test gets a table of its own for the
``fpapp.Item`` model (created and dropped through the ``admin`` connection).

A "request" in the driver is what Django's handlers do: ``request_started``, the view's work,
``request_finished`` (both signals run ``close_old_connections``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional

import psycopg2
import pytest

try:
    import django  # noqa: F401
except ImportError as _exc:  # pragma: no cover - depends on the environment
    pytest.skip(f"Django is not importable ({_exc}); pip install 'fastpool[django]' to run these tests",
                allow_module_level=True)

# Every test here runs Django in a fresh interpreter (tests/django_app/driver.py), some a real
# server under load: seconds each, so none is in the fast lane (README, Tests).
pytestmark = pytest.mark.slow

DRIVER_DIR = Path(__file__).resolve().parent / "django_app"
DRIVER = DRIVER_DIR / "driver.py"
TIMEOUT = 120
ROLE = "fp_test_role"
API_STATS = {
    "pool_min", "pool_max", "pool_size", "pool_available", "requests_waiting", "requests_num",
    "requests_queued", "requests_wait_ms", "requests_errors", "returns_bad", "connections_num",
    "connections_ms", "connections_errors", "connections_lost", "usage_ms", "connections_reclaimed",
    "pool_used", "requests_timeouts",
}
IDLE = psycopg2.extensions.TRANSACTION_STATUS_IDLE


@pytest.fixture
def table(admin: Any, app_name: str) -> Iterator[str]:
    """A table of this test's own for ``fpapp.Item`` (the model's ``db_table`` comes from the env)."""
    name = "fp_dj_" + app_name.rsplit("-", 1)[-1]
    with admin.cursor() as cur:
        cur.execute(f"CREATE TABLE {name} (id bigserial PRIMARY KEY, name varchar(100) NOT NULL, "
                    f"n integer NOT NULL DEFAULT 0)")
    yield name
    with admin.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {name}")


@pytest.fixture
def run(dsn: str, impl: str, app_name: str, table: str) -> Callable[..., Dict[str, Any]]:
    """``run(scenario, arg="", pool=None, db=None, other=None, settings=None)`` -> RESULT dict."""

    def runner(scenario: str, arg: str = "", *, pool: Optional[dict] = None, db: Optional[dict] = None,
               other: Optional[dict] = None, settings: Optional[dict] = None) -> Dict[str, Any]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FP_DJ_", "DJANGO_"))}
        env.update(FASTPOOL_TEST_DSN=dsn, FASTPOOL_IMPL=impl, FASTPOOL_TEST_APP=app_name,
                   FP_DJ_TABLE=table, PYTHONDONTWRITEBYTECODE="1")
        for key, value in (("FP_DJ_POOL", pool), ("FP_DJ_DB", db), ("FP_DJ_OTHER", other),
                           ("FP_DJ_SETTINGS", settings)):
            if value is not None:
                env[key] = json.dumps(value)
        cmd = [sys.executable, str(DRIVER), scenario] + ([arg] if arg else [])
        try:
            proc = subprocess.run(cmd, cwd=DRIVER_DIR, env=env, capture_output=True, text=True,
                                  timeout=TIMEOUT, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"driver {scenario} {arg} timed out after {TIMEOUT} s\nstdout:\n{exc.stdout}\n"
                        f"stderr:\n{exc.stderr}", pytrace=False)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or len(lines) != 1:
            pytest.fail(f"driver {scenario} {arg} (impl={impl}) exited {proc.returncode}\n"
                        f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}", pytrace=False)
        result: Dict[str, Any] = json.loads(lines[0][len("RESULT "):])
        result["_stderr"] = proc.stderr
        return result

    return runner


@pytest.fixture(scope="module")
def role(admin: Any) -> str:
    """A NOLOGIN role for ``OPTIONS["assume_role"]`` (postgres is a superuser: SET ROLE works)."""
    with admin.cursor() as cur:
        cur.execute(f"DO $$ BEGIN CREATE ROLE {ROLE} NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    return ROLE


def returned(stats: Dict[str, int]) -> bool:
    """Every connection of the pool is idle (none checked out, nobody waiting)."""
    return stats["pool_available"] == stats["pool_size"] and stats["requests_waiting"] == 0


# --------------------------------------------------------------------------------------------
# 1. basic


@pytest.mark.parametrize("max_age", [0, 60, None], ids=["age0", "age60", "ageNone"])
def test_basic_requests_return_connections(run: Callable[..., Dict[str, Any]], impl: str, max_age: Any) -> None:
    r = run("basic", db={"CONN_MAX_AGE": max_age}, pool={"hold": "request"})
    assert r["is_fastpool_pool"], r["pool_class"]
    assert r["core"] == impl and r["fastpool_impl"] == impl
    assert r["pool_name"] == "django:default" and r["same_pool_again"]
    assert set(r["stats_keys"]) == API_STATS
    reqs = r["requests"]
    assert [q["count"] for q in reqs] == [1, 2, 3, 4]
    for q in reqs:
        assert q["raw_in_request"]
        assert q["stats_in_request"]["pool_available"] == q["stats_in_request"]["pool_size"] - 1
        # back in the pool at the end of the request whatever CONN_MAX_AGE says
        assert q["connection_none_after"], (max_age, q)
        assert returned(q["stats_after"]), (max_age, q["stats_after"])
    # the same server connection serves every request (reuse, not reconnect)
    assert len({q["pid"] for q in reqs}) == 1, reqs
    col = r["close_old_connections"]
    assert col["stats_held"]["pool_available"] == col["stats_held"]["pool_size"] - 1
    assert col["connection_none_after"] and returned(col["stats_after"])
    assert not r["thread_errors"]
    # 9 requests, at most 3 at a time: a handful of server connections, reused
    assert len(r["thread_pids"]) == 9 and len(set(r["thread_pids"])) <= 4, r["thread_pids"]
    assert set(r["thread_pids"]) & {reqs[0]["pid"]}, "threads never reused the pooled connection"
    assert returned(r["final_stats"]) and r["final_stats"]["connections_num"] <= 4, r["final_stats"]
    warnings = r["warnings_django_fastpool"]
    if max_age == 0:
        assert warnings == []
    else:
        # Django's persistent-connection setting is ignored: say so, once (per alias, per process)
        assert len(warnings) == 1, (max_age, warnings)
        assert "CONN_MAX_AGE" in warnings[0]


# --------------------------------------------------------------------------------------------
# 2. gevent


def test_gevent_200_requests_share_5_connections(run: Callable[..., Dict[str, Any]]) -> None:
    r = run("gevent_load", "200", pool={"max_size": 5})
    assert r["fastpool_callback"], "fastpool's cooperative psycopg2 wait callback is not registered"
    assert r["finished"] == 200 and r["ok"] == 200, (r["errors"], r["finished"])
    assert not r["bad_counts"]
    assert r["rows"] == 200
    assert r["max_concurrent_requests"] > 5, "the requests did not overlap: not a concurrency test"
    assert r["samples"] > 0
    assert r["max_server_connections"] <= 5, r
    assert len(r["distinct_pids"]) <= 5 and r["n_pids"] == 200
    assert len(r["sampled_pids"]) <= 5, r["sampled_pids"]
    assert returned(r["stats"]) and r["stats"]["pool_size"] <= 5
    assert r["stats"]["connections_num"] <= 5, r["stats"]
    assert r["stats"]["requests_errors"] == 0


def test_gevent_bound_holds_from_startup(run: Callable[..., Dict[str, Any]]) -> None:
    """max_size bounds the server sessions from the very first request, when the pool is made
    while 100 requests already wait: the settings probe that proves the connection settings is
    one of the pool's max_size connections, not one more (it used to be closed while the pool
    opened max_size others, so the server briefly saw max_size + 1 sessions). Counted two ways:
    every psycopg2.connect() the process made for the alias (exact), and pg_stat_activity
    sampled from before the first request."""
    r = run("gevent_startup", "100", pool={"max_size": 5})
    assert r["ok"] == 100, r["errors"]
    assert r["first_sample"] == 0 and r["samples"] > 10, r
    assert r["opened"] <= 5, r  # the probe included
    assert r["opened"] == r["stats"]["connections_num"], r  # no connection made outside the pool
    assert r["max_server_connections"] <= 5, r
    assert r["stats"]["pool_size"] <= 5 and r["stats"]["requests_errors"] == 0, r["stats"]


@pytest.mark.parametrize("kind", ["gevent", "gevent_kill", "eventlet", "threads"])
def test_first_connections_at_once_one_probe_no_deadlock(run: Callable[..., Dict[str, Any]], kind: str) -> None:
    """20 greenlets (or threads) make the alias's first connection at once. With gevent/eventlet the
    backend was imported before monkey.patch_all() (gunicorn --preload) and the settings probe's
    connect switches greenlets (psycogreen): the registry lock used to be a real lock held across
    that connect, so the second greenlet blocked the whole thread, hub included -- a deadlock
    (the driver's C-level watchdog ends it). One caller builds; the others wait cooperatively,
    then share its pool: one probe, never more than max_size=1 session. "gevent_kill": the
    builder is killed inside its probe; a waiter then builds, and every other request succeeds."""
    r = run("preload", kind, pool={"max_size": 1, "timeout": 20})
    if kind == "gevent_kill":
        assert r["killed_in_probe"], r
        assert r["ok"] == r["n_requests"] - 1 and not r["errors"], r
        assert r["stats"]["pool_size"] <= 1 and r["stats"]["requests_errors"] == 0, r["stats"]
        return
    assert r["ok"] == r["n_requests"], r["errors"]
    assert r["first_sample"] == 0 and r["samples"] > 5, r
    assert r["opened"] == 1, r  # one settings probe, which became the pool's one connection
    assert r["max_server_connections"] <= 1, r
    assert r["stats"]["connections_num"] == 1 and r["stats"]["requests_errors"] == 0, r["stats"]


@pytest.mark.parametrize("fate", ["parked", "terminated"])
def test_parked_probe_keeps_the_bound(run: Callable[..., Dict[str, Any]], fate: str) -> None:
    """The pool is made (``connection.pool``) 6 s before its first checkout. The probe used to
    be closed after 5 s and a new connection opened at once: the server still listed the old
    backend, 2 sessions for max_size=1. Now an old probe is vetted (ping) and handed over;
    "terminated" (the server ended it meanwhile): it fails the vet, and the new connection
    replaces a session that is already gone."""
    r = run("parked_probe", fate, pool={"max_size": 1})
    assert not r["errors"], r
    assert r["samples"] > 10, r
    assert r["max_server_connections"] <= 1, r
    if fate == "parked":
        assert r["opened"] == 1 and r["pids"] == r["probe_pid"], r  # the probe served them
    else:
        assert r["opened"] == 2 and r["pids"] != r["probe_pid"], r
    assert r["stats"]["pool_size"] == 1 and r["stats"]["requests_errors"] == 0, r["stats"]


def test_nested_connect_stays_connecting(run: Callable[..., Dict[str, Any]]) -> None:
    """A connect() nested in connect() (a connection_created receiver that reconnects) restores
    the outer connect's state instead of clearing it: otherwise the next receiver's cursor is a
    hold="transaction" release point, the connection goes back mid-connect, and the caller's
    ensure_connection() returns with connection None."""
    r = run("nested_connect", pool={"hold": "transaction"})
    assert not r["errors"], r
    assert r["calls"][:3] == ["reconnect", "setup", "setup"], r  # the nested and the outer one
    assert r["held_after_connect"] == [True, True, True] and r["n"] == 3, r
    assert returned(r["stats"]) and r["stats"]["requests_errors"] == 0, r["stats"]


# --------------------------------------------------------------------------------------------
# 3. a transaction left open by one request is never seen by the next


@pytest.mark.parametrize("hold", ["transaction", "request"])
@pytest.mark.parametrize("variant", ["autocommit_off", "raw_begin", "atomic_open_same_thread",
                                     "atomic_open_other_thread"])
def test_open_transaction_never_leaks_to_next_request(run: Callable[..., Dict[str, Any]], variant: str,
                                                      hold: str) -> None:
    """Request 1 leaves a transaction open (with a row inserted) and ends; request 2 (max_size=1)
    must start on a clean connection and never see the row."""
    r = run("txn", variant, pool={"max_size": 1, "timeout": 1, "hold": hold})
    assert r["pool_max"] == 1
    assert r["req1"]["ok"], r["req1"]
    req2 = r["req2"]
    if req2["ok"]:
        assert req2["seen"] == 0, (f"{variant}: request 2 sees request 1's uncommitted row", req2)
        assert not req2["inherited_write"] and not req2["txn_started_before"], (
            f"{variant}: request 2 runs inside request 1's transaction", req2)
        assert req2["status_at_start"] == IDLE, req2
        assert not req2["in_atomic_block"] and req2["autocommit"], req2
    elif variant == "atomic_open_same_thread":
        # Stock Django too refuses to go on in a thread whose atomic block was never exited.
        assert "ProgrammingError" in req2["error"] or "TransactionManagementError" in req2["error"], req2
    else:
        pytest.fail(f"{variant}: request 2 failed: {req2['error']}")
    # the request is over: its connection is back in the pool (rolled back by the pool's reset)
    assert returned(r["stats_after_req1"]), (
        f"{variant}: the connection was not given back at the end of the request", r["stats_after_req1"])
    if "req3" in r:
        assert r["req3"]["ok"] and r["req3"]["seen"] == 0, r["req3"]
    assert r["committed_rows"] == 0
    # max_size=1: the next request gets the same, rolled-back connection (not a new one)
    assert not req2["ok"] or req2["pid"] == r["req1"]["pid"], (
        f"{variant}: request 2 got another backend: the pool discarded the connection instead of "
        "rolling it back", r.get("stats_after_req2"), r["warnings_fastpool"])


# --------------------------------------------------------------------------------------------
# 4. threads / greenlets that end without closing their connection


@pytest.mark.parametrize("scenario", ["orphan_thread", "gevent_orphan"])
def test_orphaned_connections_come_back(run: Callable[..., Dict[str, Any]], scenario: str) -> None:
    # hold="request": the workers keep their connections after their queries (the case the
    # finalizer is for; with hold="transaction" they would already have given them back).
    r = run(scenario, pool={"max_size": 5, "hold": "request"})
    assert all("error" not in b and b["borrowed"] for b in r["boxes"]), r["boxes"]
    before, after_end, after_gc = r["before"], r["after_end"], r["after_gc"]
    n = len(r["boxes"])
    # when the workers ended they still held their connections ...
    assert after_end["pool_size"] - after_end["pool_available"] == n, after_end
    # ... and the finalizer gave them back (not reclaimed as lost)
    assert after_gc["pool_available"] >= before["pool_available"], (before, after_gc)
    assert returned(after_gc), after_gc
    assert after_gc["connections_reclaimed"] == 0, after_gc
    assert not [w for w in r["warnings_fastpool"] if "garbage-collected" in w], r["warnings_fastpool"]
    # the same server connections serve the next requests
    assert set(r["next_pids"]) <= set(r["worker_pids"]) | {r["warm_pid"]}, r
    assert r["final"]["connections_num"] == after_gc["pool_size"] <= 5, r["final"]


# --------------------------------------------------------------------------------------------
# 5. everything Django does keeps working


def test_atomic_savepoints(run: Callable[..., Dict[str, Any]]) -> None:
    r = run("atomic")
    assert r["names"] == ["a", "c", "c2", "g", "h"], r
    assert "dup_error" in r, r  # the unique violation in the inner block was raised ...
    assert "IntegrityError" in r["dup_error"] or "UniqueViolation" in r["dup_error"], r["dup_error"]
    assert r["savepoints_in_block"] == 0 and not r["in_atomic_after"]
    assert r["on_commit"] == ["outer"]
    assert r["names_next_request"] == ["a", "c", "c2", "g", "h"]
    assert r["committed_rows"] == 3
    assert returned(r["stats_after"])


def test_close_and_close_all(run: Callable[..., Dict[str, Any]]) -> None:
    r = run("close", pool={"max_size": 2, "hold": "request"})
    assert r["stats_held"]["pool_available"] == r["stats_held"]["pool_size"] - 1
    assert r["none_after_close"] and returned(r["stats_after_close"])
    assert r["none_after_close_all"] and returned(r["stats_after_close_all"])
    assert returned(r["stats_after_close_in_atomic"])
    assert r["query_after_close_in_atomic"] != "ran"  # Django: no new connection inside the block
    assert "atomic_exit_error" not in r, r
    assert r["p1"] == r["p2"] == r["p3"] == r["p4"] == r["p5"], r  # one backend, reused throughout
    assert returned(r["stats_after"])


def test_django_connection_is_held(run: Callable[..., Dict[str, Any]]) -> None:
    """Issue 9.5: a bare ``pool.putconn`` of a Django connection (inside its request, or a stale
    one after the next request took the same connection) raises PoolMisuse; the requests go on."""
    r = run("held", pool={"max_size": 1})
    assert r["had_connection"] is True
    assert r["inside"] == "PoolMisuse", r
    assert r["inside_is_operational"] is False
    assert r["query_after"] == 1
    assert r["same_object"] is True
    assert r["stale"] == "PoolMisuse", r
    assert r["query_after_stale"] == 2
    assert returned(r["stats_after"])


def test_two_aliases_two_pools(run: Callable[..., Dict[str, Any]]) -> None:
    r = run("aliases", pool={"max_size": 2, "hold": "request"}, other={"max_size": 3, "hold": "request"})
    assert r["distinct"] and r["stable"]
    assert r["names"] == ["django:default", "django:other"]
    assert r["max"] == [2, 3]
    q = r["request"]
    assert q["pid_default"] != q["pid_other"]
    assert q["count_default"] == q["count_other"] == 2
    assert q["in_use"] == [0, 0]
    assert not r["errors"], r["errors"]
    assert r["max_server_connections"] <= 5, r
    for s, limit in zip(r["stats"], (2, 3)):
        assert returned(s) and s["pool_size"] <= limit, s


@pytest.mark.parametrize("disable", [False, True], ids=["server_side", "client_side"])
def test_iterator_server_side_cursors(run: Callable[..., Dict[str, Any]], disable: bool) -> None:
    r = run("iterator", pool={"max_size": 1}, db={"DISABLE_SERVER_SIDE_CURSORS": disable})
    assert r["disable_ssc"] is disable
    for where, holdable in (("outside_atomic", "true"), ("inside_atomic", "false")):
        q = r[where]
        assert q["ok"], (where, q)
        assert q["n"] == 40 and q["ordered"], (where, q)
        if disable:
            assert q["cursors_during"] == [], (where, q)
        else:
            assert len(q["cursors_during"]) == 1, (where, q)
            name, hold = q["cursors_during"][0].split(":")
            assert name.startswith("_django_curs_") and hold == holdable, (where, q)
    assert r["after"]["ok"] and r["after"]["cursors"] == 0, r["after"]  # nothing left on the connection
    assert r["after"]["pid"] == r["outside_atomic"]["pid"] == r["inside_atomic"]["pid"]
    assert returned(r["stats"])


def test_conn_health_checks(run: Callable[..., Dict[str, Any]]) -> None:
    r = run("health", db={"CONN_HEALTH_CHECKS": True})
    assert r["conn_health_checks"] is True
    assert r["req1"]["ok"] and r["req2"]["ok"] and r["req1"]["health_check_enabled"]
    assert r["req1"]["pid"] == r["req2"]["pid"]
    assert r["terminated"] == 1
    # the server killed the idle pooled connection: the next request still works
    assert r["req3"]["ok"], r["req3"]
    assert r["req4"]["ok"], r["req4"]
    assert r["req3"]["pid"] != r["req1"]["pid"] and r["req4"]["pid"] == r["req3"]["pid"]
    assert returned(r["stats"])


@pytest.mark.parametrize("reset", ["auto", "rollback", "discard"])
def test_time_zone_role_isolation(run: Callable[..., Dict[str, Any]], role: str, reset: str) -> None:
    r = run("session", pool={"max_size": 1, "reset": reset},
            db={"OPTIONS": {"assume_role": role, "isolation_level": psycopg2.extensions.ISOLATION_LEVEL_SERIALIZABLE}},
            settings={"USE_TZ": False, "TIME_ZONE": "Europe/Paris"})
    assert r["timezone_name"] == "Europe/Paris" and r["assume_role"] == role
    reqs = r["requests"]
    assert all(q["ok"] for q in reqs), reqs
    assert len({q["pid"] for q in reqs}) == 1  # one physical connection, set up once
    for i, q in enumerate(reqs):
        assert q["timezone"] == "Europe/Paris", (reset, i, q)
        assert q["current_user"] == role and q["session_user"] == "postgres", (reset, i, q)
        assert q["isolation_in_atomic"] == "serializable", (reset, i, q)
    assert returned(r["stats"])


def test_use_tz_database_time_zone(run: Callable[..., Dict[str, Any]]) -> None:
    r = run("session", db={"TIME_ZONE": "Asia/Tokyo"}, settings={"USE_TZ": True})
    assert r["timezone_name"] == "Asia/Tokyo"
    assert all(q["ok"] and q["timezone"] == "Asia/Tokyo" for q in r["requests"]), r["requests"]
    assert all(q["isolation_in_atomic"] == "read committed" for q in r["requests"])


# --------------------------------------------------------------------------------------------
# 6. test database create / clone / destroy


@pytest.fixture
def test_db_name(admin: Any) -> Iterator[str]:
    name = f"test_fp_{uuid.uuid4().hex[:10]}"
    yield name
    with admin.cursor() as cur:  # whatever happened, leave no database behind
        for db in (name, name + "_1"):
            cur.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def test_test_database_lifecycle(run: Callable[..., Dict[str, Any]], admin: Any, test_db_name: str) -> None:
    r = run("test_db", pool={"max_size": 4}, db={"TEST": {"NAME": test_db_name}})
    original = r["original_db"]
    assert r["test_name"] == test_db_name
    assert r["in_test_db"] == {"db": test_db_name, "items": 0}  # migrate --run-syncdb made the table
    assert r["items_in_test_db"] == 3
    assert r["test_pool_stats"]["pool_size"] >= 1 and returned(r["test_pool_stats"])
    assert r.get("clone") == "ok" and r.get("clone_destroyed") == "ok", r
    assert r["in_test_db_after_clone"] == test_db_name
    assert r["destroy"] == "ok", r["destroy"]
    assert r["test_pool_closed"] and r["pool_is_new"]
    assert r["after_destroy"]["ok"] and r["after_destroy"]["db"] == original, r["after_destroy"]
    with admin.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_database WHERE datname IN (%s, %s)", (test_db_name, r["clone_name"]))
        assert cur.fetchone()[0] == 0


# --------------------------------------------------------------------------------------------
# 7. psycopg 3 is installed too


@pytest.mark.skipif(importlib.util.find_spec("psycopg") is None,
                    reason="psycopg 3 is not installed: nothing for the backend to avoid")
@pytest.mark.parametrize("mode", ["fresh", "imported_first"])
def test_backend_stays_on_psycopg2(run: Callable[..., Dict[str, Any]], mode: str) -> None:
    r = run("psycopg3", mode)
    assert r["is_psycopg3"] is False
    q = r["request"]
    assert q["ok"], q
    assert q["raw_is_psycopg2"], q
    # Django maps driver errors to django.db.* through the wrapper's DB-API module
    # (DatabaseErrorWrapper uses self.Database): it must be psycopg2, not psycopg 3
    assert q["integrity"] == "django.db.IntegrityError", (q, r["wrapper_Database"], r["pg_base_Database"])
    assert r["wrapper_Database"] == "psycopg2" and r["pg_base_Database"] == "psycopg2", r
    assert q["get_or_create_existing"] == ["p", False]
    assert r["psycopg3_query"] == 42, r["psycopg3_query"]


def test_contrib_postgres_with_backend_imported_first(run: Callable[..., Dict[str, Any]]) -> None:
    """django.contrib.postgres imports psycopg_any while apps load, before the backend: with psycopg 3
    installed the backend then refuses (ImproperlyConfigured naming contrib.postgres) unless
    ``django_fastpool.base`` was imported first (e.g. in settings.py), which must then work."""
    r = run("contrib_postgres", "imported_first",
            settings={"INSTALLED_APPS": ["django.contrib.postgres", "fpapp"]})
    assert "setup_error" not in r, r
    assert r["is_psycopg3"] is False
    assert r["request"]["ok"], r["request"]


# --------------------------------------------------------------------------------------------
# extras


def test_fork_after_parent_used_its_connection(run: Callable[..., Dict[str, Any]]) -> None:
    """gunicorn --preload: the parent ran a query at import time and kept its connection."""
    r = run("fork")
    child = r["child"]
    assert "fatal" not in child, child
    assert child["req1"]["ok"], child["req1"]
    assert child["req2"]["ok"], child["req2"]
    assert child["req1"]["pid"] != r["parent_pid_before"]  # never the parent's session
    assert r["parent_pid_after"] == r["parent_pid_before"]  # the parent's session survived the child
    assert r["parent_request"]["ok"], r["parent_request"]


def test_orphan_finalizer_must_not_take_workers_lock(run: Callable[..., Dict[str, Any]]) -> None:
    """The orphan finalizer runs wherever the garbage collector interrupts, including inside
    fastpool's ``Workers.schedule_at`` (which allocates while holding ``Workers._cond``)."""
    r = run("finalizer_reentrancy")
    assert r["lock"], "Workers has neither _cond nor _lock: update the simulation"
    assert "error" not in r["outcome"], r["outcome"]
    assert not r["deadlocked"], (
        "gc ran the DatabaseWrapper finalizer while this thread held the workers' lock: "
        "_return_later -> Workers.submit re-acquired the non-reentrant lock and the thread hung", r)
    assert r["outcome"].get("returned") and r["stats"] is not None


# --------------------------------------------------------------------------------------------
# hold="transaction" (default): a connection goes back as soon as no transaction, atomic block
# or cursor is open -- threads that are done with the database hold nothing (issue 10)


def test_app_threads_give_connections_back_between_tasks(run: Callable[..., Dict[str, Any]]) -> None:
    """A ThreadPoolExecutor with more threads (4) than connections (2) and a long-lived
    background thread run ORM code (queries, an atomic block that commits, one that raises)
    outside any request: every task gets a connection and none is held between tasks."""
    r = run("app_threads", pool={"max_size": 2, "timeout": 10})
    tasks = r["executor"] + r["background"]
    assert len(tasks) == 50 and not [t for t in tasks if "error" in t], [t for t in tasks if "error" in t][:3]
    assert all(t["count"] == 1 and t["released"] for t in tasks), tasks
    assert r["executor_in_use"] == [0] * 5, r["executor_in_use"]
    assert r["background_in_use"] == [0] * 10, r["background_in_use"]
    assert r["failed_rows"] == 0 and r["atomic_rows"] == 50, r
    assert returned(r["stats"]) and r["stats"]["pool_size"] <= 2, r["stats"]


def test_app_threads_hold_request_keeps_connections(run: Callable[..., Dict[str, Any]]) -> None:
    """hold="request" is the old rule: a thread outside a request keeps its connection, so 4
    executor threads on 2 connections run out (why "transaction" is the default)."""
    r = run("app_threads", pool={"max_size": 2, "timeout": 1, "hold": "request"})
    errors = [t["error"] for t in r["executor"] + r["background"] if "error" in t]
    assert errors and all("couldn't get a connection" in e for e in errors), errors[:3]
    assert max(r["executor_in_use"]) == 2


HELD = {"held": True, "in_use": 1}
FREE = {"held": False, "in_use": 0}


@pytest.mark.parametrize("hold", ["transaction", "request"])
def test_hold_rules(run: Callable[..., Dict[str, Any]], hold: str) -> None:
    """When the wrapper holds its connection, step by step, in one thread (max_size=1)."""
    r = run("hold_rules", pool={"max_size": 1, "hold": hold})
    between = FREE if hold == "transaction" else HELD
    # always held: inside atomic (also after on_commit registration), while a server-side
    # cursor (iterator) or any cursor is open, after a raw BEGIN, with autocommit off,
    # and right after ensure_connection() (its caller is about to use connection.connection)
    for key in ("in_atomic", "in_atomic_after_on_commit", "during_iterator", "open_cursor",
                "raw_begin_after_close", "manual_after_commit", "after_ensure_connection"):
        assert r[key] == HELD, (hold, key, r[key])
    # given back between transactions (hold="transaction") or held until Django closes it
    for key in ("after_query", "after_capture", "after_atomic", "after_failed_atomic", "after_iterator",
                "after_ensure_then_query", "after_get_autocommit", "manual_after_autocommit_on",
                "raw_commit_after_close", "after_cursor_close", "after_debug_query"):
        assert r[key] == between, (hold, key, r[key])
    # a give-back / re-take adds no query: assertNumQueries / CaptureQueriesContext see the same
    assert r["captured"] == ["INSERT", "SELECT", "BEGIN", "INSERT", "COMMIT"], r["captured"]
    assert r["debug_logged"] == 1
    assert r["on_commit"] == [{"rows": 1}], r["on_commit"]  # ran after the commit, could query
    assert r["failed_rows"] == 0 and r["iterated"] == 6 and r["get_autocommit"] is True
    # one physical connection throughout (re-taken from the pool, not reconnected)
    assert r["pid"] == r["ensure_pid"] == r["last_pid"] and r["stats"]["connections_num"] == 1, r
    assert not r["warnings_fastpool"], r["warnings_fastpool"]


def test_hold_option_is_validated(run: Callable[..., Dict[str, Any]]) -> None:
    r = run("bad_hold", pool={"hold": "session"})
    assert "ImproperlyConfigured" in r["error"] and "OPTIONS['pool']['hold']" in r["error"], r
    assert "'transaction' or 'request'" in r["error"] and "'session'" in r["error"], r


# --------------------------------------------------------------------------------------------
# real servers: uvicorn, gunicorn + UvicornWorker, gunicorn gthread (issue 10)

LONG = os.environ.get("FASTPOOL_TEST_LONG") == "1"
SERVE_SECONDS = 60.0 if LONG else 8.0   # load; the default still catches the old stall
IDLE_SECONDS = 30.0 if LONG else 3.0    # then idle: the pool must still answer
CLIENTS = 200
VIEWS = ("async_orm", "s2a_false", "s2a_true", "sync", "atomic_raise", "a2s")  # site_app.py
WORKERS = 2
MAX_SIZE = 5
SERVERS = {
    "uvicorn": ["-m", "uvicorn", "--workers", str(WORKERS), "--host", "127.0.0.1", "--port", "{port}",
                "--no-access-log", "--log-level", "warning", "site_app:application"],
    "gunicorn_uvicorn": ["-m", "gunicorn", "-k", "uvicorn_worker.UvicornWorker", "-w", str(WORKERS),
                         "-b", "127.0.0.1:{port}", "--log-level", "warning", "site_app:application"],
    "gthread": ["-m", "gunicorn", "-k", "gthread", "-w", str(WORKERS), "--threads", "50",
                "-b", "127.0.0.1:{port}", "--log-level", "warning", "site_app:wsgi_application"],
}


def _serve(server: str, env: Dict[str, str]) -> "tuple[subprocess.Popen, int]":
    from conftest import free_tcp_port

    port = free_tcp_port()
    cmd = [sys.executable] + [a.format(port=port) for a in SERVERS[server]]
    proc = subprocess.Popen(cmd, cwd=DRIVER_DIR, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    return proc, port


def _get_ok(port: int, path: str) -> bool:
    import http.client

    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("GET", "/" + path)
        ok = c.getresponse().status == 200
        c.close()
        return ok
    except OSError:
        return False


@pytest.mark.parametrize("server", list(SERVERS))
def test_server_under_load_no_stall_bounded_clean_shutdown(
        server: str, dsn: str, impl: str, app_name: str, table: str, admin: Any,
        backends: Any) -> None:
    """200 clients over every way a Django view reaches the database (async ORM,
    sync_to_async both ways, sync views, async_to_sync, atomic blocks that commit and raise):
    no stall, no error, never more than workers x max_size server sessions, no row of a failed
    atomic block, the pool answers after an idle spell, and the server exits cleanly.
    FASTPOOL_TEST_LONG=1: 60 s of load and 30 s idle."""
    import signal
    import time

    sys.path.insert(0, str(DRIVER_DIR))
    try:
        from http_load import Sampler, load
    finally:
        sys.path.remove(str(DRIVER_DIR))
    pytest.importorskip("uvicorn")
    pytest.importorskip("gunicorn")
    if server == "gunicorn_uvicorn":
        pytest.importorskip("uvicorn_worker")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FP_DJ_", "DJANGO_"))}
    env.update(FASTPOOL_TEST_DSN=dsn, FASTPOOL_IMPL=impl, FASTPOOL_TEST_APP=app_name, FP_DJ_TABLE=table,
               FP_DJ_POOL=json.dumps({"max_size": MAX_SIZE}), PYTHONDONTWRITEBYTECODE="1")
    sampler = Sampler(dsn, app_name, interval=0.05)
    sampler.start()
    proc, port = _serve(server, env)
    try:
        deadline = time.monotonic() + 60
        while not _get_ok(port, "stats"):
            assert proc.poll() is None, f"{server} exited {proc.returncode}:\n{proc.stdout.read()}"
            assert time.monotonic() < deadline, f"{server} did not answer within 60 s"
            time.sleep(0.2)
        # A stall is no answer in 30 s (the pool's own timeout): this box is shared and slow
        # under load, and a stranded connection never comes back, so it fails either way.
        result = load("127.0.0.1", port, VIEWS, clients=CLIENTS, seconds=SERVE_SECONDS, timeout=30.0)
        time.sleep(IDLE_SECONDS)
        after_idle = {view: _get_ok(port, view) for view in VIEWS}
        peak = sampler.peak
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            pass
    finally:
        sampler.stop()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    out = proc.stdout.read() if proc.stdout else ""
    summary = (f"{server} impl={impl} ok={result.ok} stalls={result.stalls} errors={result.errors} "
               f"retried={result.retried} "
               f"by_path={result.by_path} peak={peak} samples={result.error_samples}\n"
               f"server output:\n{out[-3000:]}")
    assert result.stalls == 0 and result.errors == 0, summary
    assert set(result.by_path) == set(VIEWS) and result.ok >= 2 * CLIENTS, summary
    assert sampler.samples > 10 and 0 < peak <= WORKERS * MAX_SIZE, summary
    assert after_idle == {view: True for view in VIEWS}, (after_idle, summary)
    assert proc.returncode is not None and proc.returncode <= 0 and proc.returncode != -signal.SIGKILL, (
        f"{server} did not shut down within 30 s of SIGTERM", summary)
    assert "Traceback" not in out, summary
    with admin.cursor() as cur:
        cur.execute(f"SELECT count(*) FILTER (WHERE name = 'failed'), count(*) FILTER (WHERE name = 'sync') "
                    f"FROM {table}")
        failed, committed = cur.fetchone()
    # every "sync" response committed its row (+1: the after-idle round)
    assert failed == 0 and committed == result.by_path["sync"] + 1, (failed, committed, summary)
    assert backends.wait(0, timeout=10) == 0  # every worker closed its pool on exit
