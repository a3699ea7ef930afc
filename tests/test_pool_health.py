"""Health of pooled connections: dead-connection detection, max_lifetime,
max_idle, check(), drain(), check= callables."""

import time

import psycopg2
import psycopg2.extensions as ext
import pytest
from helpers import wait_until, pid_of, select_one, assert_consistent


def terminate(admin, pids):
    with admin.cursor() as cur:
        for pid in pids:
            cur.execute("SELECT pg_terminate_backend(%s)", (pid,))


# --------------------------------------------------------------------------
# dead connections
# --------------------------------------------------------------------------

@pytest.mark.parametrize("check", ["auto", "ping"])
def test_terminated_idle_connections_never_handed_out(
        make_pool, admin, app_name, backend_pids, check):
    pool = make_pool(min_size=3, max_size=3, check=check)
    pool.wait(timeout=10)
    old = backend_pids(app_name)
    assert len(old) == 3
    terminate(admin, old)
    assert wait_until(lambda: not (backend_pids(app_name) & old), timeout=5)
    time.sleep(0.2)  # let the FATAL/EOF reach the client sockets
    conns = []
    try:
        for _ in range(3):
            c = pool.getconn(timeout=10)
            conns.append(c)
            assert not c.closed
            assert c.get_transaction_status() == ext.TRANSACTION_STATUS_IDLE
            assert select_one(c) == 1
            assert pid_of(c) not in old
    finally:
        for c in conns:
            pool.putconn(c)
    st = pool.stats()
    assert st["connections_lost"] >= 1, st
    assert st["requests_errors"] == 0, st
    assert_consistent(pool)


def test_terminated_while_in_use_is_replaced(make_pool, admin, app_name, backend_pids):
    pool = make_pool(min_size=1, max_size=1)
    conn = pool.getconn(timeout=10)
    pid = pid_of(conn)
    conn.commit()
    terminate(admin, [pid])
    assert wait_until(lambda: pid not in backend_pids(app_name), timeout=5)
    with pytest.raises(psycopg2.Error):
        select_one(conn)
    pool.putconn(conn)  # returning a broken connection is not an error
    st = pool.stats()
    assert st["returns_bad"] + st["connections_lost"] >= 1, st
    conn2 = pool.getconn(timeout=10)
    try:
        assert select_one(conn2) == 1
        assert pid_of(conn2) != pid
    finally:
        pool.putconn(conn2)
    assert_consistent(pool)


def test_server_idle_session_timeout_is_survived(make_pool, app_name, backends):
    """The server closes idle sessions after 300 ms (a real-world cause of
    dead pooled connections: idle_session_timeout, firewalls, pgbouncer)."""

    def configure(conn):
        with conn.cursor() as cur:
            cur.execute("SET idle_session_timeout = 300")
        conn.commit()

    pool = make_pool(min_size=2, max_size=2, configure=configure)
    pool.wait(timeout=10)
    for _ in range(2):
        time.sleep(0.6)  # every pooled session is dead by now
        conns = [pool.getconn(timeout=10) for _ in range(2)]
        try:
            for c in conns:
                assert select_one(c) == 1
        finally:
            for c in conns:
                pool.putconn(c)
    assert pool.stats()["connections_lost"] >= 2
    assert pool.stats()["requests_errors"] == 0


def test_check_callable_rejects_connection(make_pool):
    calls = []
    bad = set()

    def check(conn):
        calls.append(id(conn))
        if id(conn) in bad:
            raise psycopg2.OperationalError("rejected by check")

    pool = make_pool(min_size=1, max_size=2, check=check)
    a = pool.getconn(timeout=10)
    pool.putconn(a)
    bad.add(id(a))
    b = pool.getconn(timeout=10)
    try:
        assert b is not a
        assert select_one(b) == 1
        assert id(a) in calls
    finally:
        pool.putconn(b)
    assert wait_until(lambda: a.closed, timeout=3)
    assert_consistent(pool)


# --------------------------------------------------------------------------
# lifetime / idle
# --------------------------------------------------------------------------

def test_max_lifetime_replaces_connection(make_pool, app_name, backend_pids):
    pool = make_pool(min_size=1, max_size=2, max_lifetime=1)
    conn = pool.getconn(timeout=10)
    pid1 = pid_of(conn)
    pool.putconn(conn)
    time.sleep(1.5)
    conn = pool.getconn(timeout=10)
    try:
        pid2 = pid_of(conn)
        assert pid2 != pid1
    finally:
        pool.putconn(conn)
    assert wait_until(lambda: pid1 not in backend_pids(app_name), timeout=5)
    assert len(backend_pids(app_name)) <= 2


def test_max_lifetime_enforced_at_return(make_pool, app_name, backend_pids):
    pool = make_pool(min_size=1, max_size=1, max_lifetime=1)
    conn = pool.getconn(timeout=10)
    pid1 = pid_of(conn)
    conn.commit()
    time.sleep(1.3)
    pool.putconn(conn)
    # expired at return: closed, not put back
    assert wait_until(lambda: conn.closed, timeout=3)
    assert wait_until(lambda: pid1 not in backend_pids(app_name), timeout=5)
    conn = pool.getconn(timeout=10)
    try:
        assert pid_of(conn) != pid1
    finally:
        pool.putconn(conn)


def test_max_idle_shrinks_to_min_size(make_pool, app_name, backends):
    pool = make_pool(min_size=1, max_size=4, max_idle=0.5)
    conns = [pool.getconn(timeout=10) for _ in range(4)]
    for c in conns:
        select_one(c)
    assert backends(app_name) == 4
    for c in conns:
        pool.putconn(c)
    t0 = time.monotonic()
    assert wait_until(lambda: backends(app_name) == 1, timeout=6), backends(app_name)
    assert time.monotonic() - t0 >= 0.4  # not closed before max_idle
    assert wait_until(lambda: pool.stats()["pool_size"] == 1, timeout=2), pool.stats()
    # never below min_size
    time.sleep(0.8)
    assert backends(app_name) == 1
    assert_consistent(pool)
    with pool.connection(timeout=5) as conn:
        assert select_one(conn) == 1


# --------------------------------------------------------------------------
# check() / drain()
# --------------------------------------------------------------------------

def test_check_removes_terminated_idle(make_pool, admin, app_name, backend_pids):
    pool = make_pool(min_size=2, max_size=2)
    pool.wait(timeout=10)
    pids = backend_pids(app_name)
    assert len(pids) == 2
    victim = min(pids)
    survivor = max(pids)
    terminate(admin, [victim])
    assert wait_until(lambda: victim not in backend_pids(app_name), timeout=5)
    time.sleep(0.1)
    pool.check()
    assert wait_until(lambda: pool.stats()["connections_lost"] >= 1, timeout=3), pool.stats()
    # refilled to min_size with a fresh backend
    assert wait_until(lambda: len(backend_pids(app_name)) == 2, timeout=5)
    assert victim not in backend_pids(app_name)
    assert survivor in backend_pids(app_name), "check() must keep healthy connections"
    conns = [pool.getconn(timeout=5) for _ in range(2)]
    try:
        got = {pid_of(c) for c in conns}
        assert victim not in got
        assert len(got) == 2
    finally:
        for c in conns:
            pool.putconn(c)
    assert_consistent(pool)


def test_drain_replaces_idle_and_in_use(make_pool, app_name, backend_pids):
    pool = make_pool(min_size=2, max_size=2)
    pool.wait(timeout=10)
    held = pool.getconn(timeout=10)
    held_pid = pid_of(held)
    held.commit()
    idle_pids = backend_pids(app_name) - {held_pid}
    assert len(idle_pids) == 1
    pool.drain()
    # idle connection replaced
    assert wait_until(lambda: not (backend_pids(app_name) & idle_pids), timeout=5)
    assert wait_until(lambda: len(backend_pids(app_name) - {held_pid}) == 1, timeout=5)
    # the in-use one is untouched while held ...
    assert held_pid in backend_pids(app_name)
    assert select_one(held) == 1
    held.commit()
    # ... and replaced when returned
    pool.putconn(held)
    assert wait_until(lambda: held_pid not in backend_pids(app_name), timeout=5)
    old = idle_pids | {held_pid}
    conns = [pool.getconn(timeout=5) for _ in range(2)]
    try:
        got = {pid_of(c) for c in conns}
        assert not (got & old)
    finally:
        for c in conns:
            pool.putconn(c)
    assert_consistent(pool)
