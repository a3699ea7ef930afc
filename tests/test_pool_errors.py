"""Error paths of fastpool.Pool: timeouts, queue limits, closed pools,
misuse (foreign / double putconn, leaked connections), invalid options,
unreachable servers and secrets in messages."""

import gc
import logging
import re
import threading
import time

import psycopg2
import pytest

import fastpool
from helpers import wait_until, select_one, assert_consistent


def take_all(pool, n, timeout=5.0):
    """Check out ``n`` connections (each must work), then return them."""
    conns = []
    try:
        for _ in range(n):
            c = pool.getconn(timeout=timeout)
            conns.append(c)
            assert select_one(c) == 1
        assert len({id(c) for c in conns}) == n
    finally:
        for c in conns:
            pool.putconn(c)


class Waiter(threading.Thread):
    """A thread doing ``getconn(timeout)``; records result or exception and
    when it finished; holds the connection until ``release`` is set."""

    def __init__(self, pool, timeout=10.0, hold=None):
        super().__init__(daemon=True)
        self.pool = pool
        self.timeout = timeout
        self.release = hold or threading.Event()
        self.got = threading.Event()
        self.conn = None
        self.exc = None
        self.t_end = None

    def run(self):
        try:
            self.conn = self.pool.getconn(timeout=self.timeout)
        except BaseException as e:
            self.exc = e
            self.t_end = time.monotonic()
            return
        self.t_end = time.monotonic()
        self.got.set()
        self.release.wait(30)
        try:
            self.pool.putconn(self.conn)
        except BaseException as e:  # pragma: no cover - surfaced by asserts
            self.exc = e


# --------------------------------------------------------------------------
# timeouts
# --------------------------------------------------------------------------

def test_getconn_timeout_when_exhausted(make_pool):
    pool = make_pool(min_size=1, max_size=1, name="fp-exhausted")
    held = pool.getconn(timeout=10)
    try:
        pool.pop_stats()
        t0 = time.monotonic()
        with pytest.raises(fastpool.PoolTimeout) as ei:
            pool.getconn(timeout=0.2)
        elapsed = time.monotonic() - t0
        assert 0.15 <= elapsed < 2.0, elapsed
        assert "fp-exhausted" in str(ei.value)
        st = pool.stats()
        assert st["requests_errors"] >= 1
        assert st["requests_waiting"] == 0
    finally:
        pool.putconn(held)
    assert_consistent(pool)
    take_all(pool, 1)


def test_default_timeout_option_is_used(make_pool):
    pool = make_pool(min_size=1, max_size=1, timeout=0.3)
    held = pool.getconn()
    try:
        t0 = time.monotonic()
        with pytest.raises(fastpool.PoolTimeout):
            pool.getconn()
        elapsed = time.monotonic() - t0
        assert 0.2 <= elapsed < 2.5, elapsed
    finally:
        pool.putconn(held)


def test_timeout_message_mentions_name_and_waiting(make_pool):
    pool = make_pool(min_size=1, max_size=1, name="fp-msgpool")
    held = pool.getconn(timeout=10)
    release = threading.Event()
    waiters = [Waiter(pool, timeout=20, hold=release) for _ in range(3)]
    try:
        for w in waiters:
            w.start()
        assert wait_until(lambda: pool.stats()["requests_waiting"] == 3, timeout=5)
        with pytest.raises(fastpool.PoolTimeout) as ei:
            pool.getconn(timeout=0.25)
        msg = str(ei.value)
        assert "fp-msgpool" in msg, msg
        # number of waiters: 3 others (or 4 counting this one)
        assert "wait" in msg.lower(), msg
        assert re.search(r"(?<![\d.])[34](?![\d.])", msg), msg
    finally:
        release.set()
        pool.putconn(held)
        for w in waiters:
            w.join(10)
    for w in waiters:
        assert w.exc is None, w.exc
        assert w.got.is_set()
    assert_consistent(pool)


def test_too_many_requests(make_pool):
    pool = make_pool(min_size=1, max_size=1, max_waiting=2)
    held = pool.getconn(timeout=10)
    release = threading.Event()
    release.set()  # waiters return immediately once served
    waiters = [Waiter(pool, timeout=10, hold=release) for _ in range(2)]
    try:
        for w in waiters:
            w.start()
        assert wait_until(lambda: pool.stats()["requests_waiting"] == 2, timeout=5)
        t0 = time.monotonic()
        with pytest.raises(fastpool.TooManyRequests):
            pool.getconn(timeout=5)
        assert time.monotonic() - t0 < 1.0  # refused at once, no waiting
        with pytest.raises(fastpool.TooManyRequests):
            with pool.connection(timeout=5):
                pass
        assert pool.stats()["requests_waiting"] == 2
    finally:
        pool.putconn(held)
        for w in waiters:
            w.join(10)
    for w in waiters:
        assert w.exc is None, w.exc
        assert w.got.is_set()
    assert_consistent(pool)
    take_all(pool, 1)


def test_max_waiting_slot_freed_by_timeout(make_pool):
    pool = make_pool(min_size=1, max_size=1, max_waiting=1)
    held = pool.getconn(timeout=10)
    try:
        with pytest.raises(fastpool.PoolTimeout):
            pool.getconn(timeout=0.1)
        # the timed-out waiter no longer counts against max_waiting
        assert pool.stats()["requests_waiting"] == 0
        with pytest.raises(fastpool.PoolTimeout):
            pool.getconn(timeout=0.1)
        w = Waiter(pool, timeout=10)
        w.release.set()
        w.start()
        assert wait_until(lambda: pool.stats()["requests_waiting"] == 1, timeout=5)
        with pytest.raises(fastpool.TooManyRequests):
            pool.getconn(timeout=1)
    finally:
        pool.putconn(held)
    w.join(10)
    assert w.exc is None and w.got.is_set()
    assert_consistent(pool)


def test_getconn_negative_timeout_rejected(make_pool):
    pool = make_pool(min_size=1, max_size=1)
    with pytest.raises(ValueError, match="timeout"):
        pool.getconn(timeout=-1)
    assert_consistent(pool)


# --------------------------------------------------------------------------
# closed pool
# --------------------------------------------------------------------------

def test_pool_closed_getconn_and_connection(make_pool):
    pool = make_pool(min_size=1, max_size=2)
    pool.wait(timeout=10)
    pool.close()
    assert pool.closed
    with pytest.raises(fastpool.PoolClosed):
        pool.getconn(timeout=1)
    with pytest.raises(fastpool.PoolClosed):
        with pool.connection(timeout=1):
            pass


def test_waiter_gets_pool_closed_promptly(make_pool):
    pool = make_pool(min_size=1, max_size=1)
    held = pool.getconn(timeout=10)
    w = Waiter(pool, timeout=20)
    w.start()
    try:
        assert wait_until(lambda: pool.stats()["requests_waiting"] == 1, timeout=5)
        t0 = time.monotonic()
        pool.close(timeout=0.5)
        w.join(5)
        assert not w.is_alive(), "waiter still blocked after close()"
        assert isinstance(w.exc, fastpool.PoolClosed), repr(w.exc)
        assert w.t_end - t0 < 2.0
    finally:
        w.release.set()
        # returning a connection after close: no error, the connection is closed
        pool.putconn(held)
    assert held.closed


def test_close_timeout_bounded_with_checked_out_conn(make_pool, app_name, backends):
    pool = make_pool(min_size=2, max_size=2)
    held = pool.getconn(timeout=10)
    t0 = time.monotonic()
    pool.close(timeout=0.5)
    assert time.monotonic() - t0 < 3.0
    assert pool.closed
    # the idle connection is gone; the held one is still usable by its owner
    assert wait_until(lambda: backends(app_name) <= 1, timeout=5)
    pool.putconn(held)  # not an error
    assert held.closed
    assert wait_until(lambda: backends(app_name) == 0, timeout=5)


# --------------------------------------------------------------------------
# putconn misuse
# --------------------------------------------------------------------------

def test_putconn_foreign_connection(make_pool):
    pool_a = make_pool(min_size=1, max_size=2, name="fp-a")
    pool_b = make_pool(min_size=1, max_size=2, name="fp-b")
    conn = pool_a.getconn(timeout=10)
    try:
        with pytest.raises(fastpool.PoolMisuse):
            pool_b.putconn(conn)
        assert not conn.closed
        # pool_b unaffected
        assert_consistent(pool_b)
        take_all(pool_b, 2)
    finally:
        pool_a.putconn(conn)
    assert_consistent(pool_a)
    take_all(pool_a, 2)


def test_putconn_unpooled_connection(make_pool, dsn):
    pool = make_pool(min_size=1, max_size=2)
    stranger = psycopg2.connect(dsn)
    try:
        with pytest.raises(fastpool.PoolMisuse):
            pool.putconn(stranger)
        assert not stranger.closed
    finally:
        stranger.close()
    assert_consistent(pool)
    take_all(pool, 2)


def test_putconn_twice(make_pool):
    pool = make_pool(min_size=1, max_size=2)
    conn = pool.getconn(timeout=10)
    pool.putconn(conn)
    with pytest.raises(fastpool.PoolMisuse):
        pool.putconn(conn)
    assert_consistent(pool)
    st = pool.stats()
    assert st["pool_size"] <= 2
    take_all(pool, 2)
    # and the double return didn't duplicate the connection in the free list
    a = pool.getconn(timeout=5)
    b = pool.getconn(timeout=5)
    try:
        assert a is not b
    finally:
        pool.putconn(a)
        pool.putconn(b)


# --------------------------------------------------------------------------
# leaks
# --------------------------------------------------------------------------

def _fastpool_warnings(caplog):
    out = []
    for r in caplog.records:
        if r.name.split(".")[0] != "fastpool" or r.levelno < logging.WARNING:
            continue
        text = r.getMessage()
        if r.stack_info:
            text += "\n" + r.stack_info
        if r.exc_text:
            text += "\n" + r.exc_text
        elif r.exc_info:
            text += "\n" + logging.Formatter().formatException(r.exc_info)
        out.append(text)
    return out


def test_leak_warning_names_taker(make_pool, caplog):
    caplog.set_level(logging.WARNING, logger="fastpool")
    pool = make_pool(min_size=1, max_size=2, leak_timeout=0.3)
    pool.wait(timeout=10)  # served from the idle list: the fast path
    conn = pool.getconn(timeout=10)
    try:
        found = wait_until(
            lambda: [t for t in _fastpool_warnings(caplog)
                     if "test_leak_warning_names_taker" in t],
            timeout=3.0)
        assert found, _fastpool_warnings(caplog) or "no fastpool warning at all"
    finally:
        pool.putconn(conn)


def test_leak_warning_names_taker_slow_path(make_pool, caplog):
    """Same, when getconn had to wait for a connection to be made."""
    caplog.set_level(logging.WARNING, logger="fastpool")
    pool = make_pool(min_size=0, max_size=2, leak_timeout=0.3)
    conn = pool.getconn(timeout=10)
    try:
        found = wait_until(
            lambda: [t for t in _fastpool_warnings(caplog)
                     if "test_leak_warning_names_taker_slow_path" in t],
            timeout=3.0)
        assert found, _fastpool_warnings(caplog) or "no fastpool warning at all"
    finally:
        pool.putconn(conn)


@pytest.mark.slow
def test_leak_warning_once_per_checkout(make_pool, caplog):
    caplog.set_level(logging.WARNING, logger="fastpool")
    pool = make_pool(min_size=1, max_size=2, leak_timeout=0.3)
    conn = pool.getconn(timeout=10)
    try:
        assert wait_until(lambda: _fastpool_warnings(caplog), timeout=3)
        time.sleep(1.2)  # past at least one more maintenance pass
        assert len(_fastpool_warnings(caplog)) == 1, _fastpool_warnings(caplog)
    finally:
        pool.putconn(conn)


def test_no_leak_warning_when_returned_in_time(make_pool, caplog):
    caplog.set_level(logging.WARNING, logger="fastpool")
    pool = make_pool(min_size=1, max_size=2, leak_timeout=0.3)
    for _ in range(3):
        conn = pool.getconn(timeout=10)
        pool.putconn(conn)
    time.sleep(0.8)
    assert _fastpool_warnings(caplog) == []


def _take_and_drop(pool):
    """Check out a connection and lose every reference to it."""
    conn = pool.getconn(timeout=10)
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        return cur.fetchone()[0]


@pytest.mark.slow
@pytest.mark.parametrize("leak_timeout", [0.3, None], ids=["leak0.3", "noleak"])
def test_dropped_connection_is_reclaimed(make_pool, app_name, backend_pids, leak_timeout):
    opts = {} if leak_timeout is None else {"leak_timeout": leak_timeout}
    pool = make_pool(min_size=0, max_size=2, **opts)
    keep = pool.getconn(timeout=10)
    try:
        lost_pid = _take_and_drop(pool)
        gc.collect()
        assert wait_until(
            lambda: pool.stats()["connections_reclaimed"] == 1, timeout=3.0), pool.stats()
        # the slot is usable again: max_size connections can be held
        other = pool.getconn(timeout=3)
        try:
            assert select_one(other) == 1
            assert wait_until(lambda: lost_pid not in backend_pids(app_name), timeout=5)
            st = pool.stats()
            assert st["pool_size"] <= 2
            assert st["connections_reclaimed"] == 1
        finally:
            pool.putconn(other)
    finally:
        pool.putconn(keep)
    assert_consistent(pool)
    take_all(pool, 2)


# --------------------------------------------------------------------------
# invalid options
# --------------------------------------------------------------------------

BAD_OPTIONS = [
    ({"min_size": -1}, ValueError, ("min_size",)),
    ({"max_size": 0}, ValueError, ("max_size",)),
    ({"min_size": 5, "max_size": 2}, ValueError, ("min_size", "max_size")),
    ({"timeout": 0}, ValueError, ("timeout",)),
    ({"timeout": -1}, ValueError, ("timeout",)),
    ({"max_waiting": -1}, ValueError, ("max_waiting",)),
    ({"max_lifetime": 0}, ValueError, ("max_lifetime",)),
    ({"max_idle": -1}, ValueError, ("max_idle",)),
    ({"reset": "bogus"}, ValueError, ("reset",)),
    ({"check": "bogus"}, ValueError, ("check",)),
    ({"leak_timeout": 0}, ValueError, ("leak_timeout",)),
    ({"green": "bogus"}, ValueError, ("green",)),
    ({"reconnect_timeout": -1}, ValueError, ("reconnect_timeout",)),
    # wrong types
    ({"max_size": "10"}, (TypeError, ValueError), ("max_size",)),
    ({"min_size": 1.5}, (TypeError, ValueError), ("min_size",)),
    ({"timeout": "soon"}, (TypeError, ValueError), ("timeout",)),
    ({"reset": 42}, (TypeError, ValueError), ("reset",)),
    ({"check": 42}, (TypeError, ValueError), ("check",)),
    ({"configure": 42}, (TypeError, ValueError), ("configure",)),
    ({"connect": "psycopg2"}, (TypeError, ValueError), ("connect",)),
]


@pytest.mark.parametrize(
    "options,exc_type,names", BAD_OPTIONS,
    ids=["-".join(f"{k}={v}" for k, v in o.items()) for o, _, _ in BAD_OPTIONS])
def test_invalid_options(Pool, dsn, app_name, options, exc_type, names):
    pool = None
    try:
        with pytest.raises(exc_type) as ei:
            pool = Pool(dsn, kwargs={"application_name": app_name}, **options)
        msg = str(ei.value)
        assert any(n in msg for n in names), f"message does not name {names}: {msg!r}"
    finally:
        if pool is not None:
            pool.close()


def test_valid_edge_options_accepted(Pool, dsn, app_name):
    pool = Pool(dsn, kwargs={"application_name": app_name}, min_size=0, max_size=1,
                max_waiting=0, max_idle=0.5, max_lifetime=1, timeout=0.5,
                leak_timeout=5, reset="discard", check="ping", green=False,
                open=False)
    pool.close()
    for reset in ("rollback", "discard", None, lambda conn: None):
        Pool(dsn, kwargs={"application_name": app_name}, min_size=0, reset=reset,
             open=False).close()
    for check in ("auto", "ping", None, lambda conn: None):
        Pool(dsn, kwargs={"application_name": app_name}, min_size=0, check=check,
             open=False).close()


# --------------------------------------------------------------------------
# unreachable server, secrets
# --------------------------------------------------------------------------

SECRET = "s3cr3t-pw"
BAD_CONNINFOS = [
    f"host=127.0.0.1 port=1 user=postgres password={SECRET} dbname=test connect_timeout=1",
    f"postgresql://postgres:{SECRET}@127.0.0.1:1/test?connect_timeout=1",
]


def _all_text(exc):
    parts = [str(exc), repr(exc)]
    seen = set()
    e = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        parts += [str(e), repr(e)]
        parts += [str(a) for a in getattr(e, "args", ())]
        e = e.__cause__ or e.__context__
    return "\n".join(parts)


def _log_text(caplog):
    parts = [caplog.text]
    for r in caplog.records:
        parts.append(r.getMessage())
        parts.append(repr(r.args))
        if r.exc_info:
            parts.append(logging.Formatter().formatException(r.exc_info))
        if r.stack_info:
            parts.append(r.stack_info)
    return "\n".join(parts)


@pytest.mark.parametrize("conninfo", BAD_CONNINFOS, ids=["kv", "url"])
def test_password_never_leaks(Pool, conninfo, caplog):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="fastpool")
    pool = Pool(conninfo, min_size=0, timeout=0.5, name="fp-secret")
    try:
        assert SECRET not in repr(pool)
        assert SECRET not in str(pool)
        t0 = time.monotonic()
        with pytest.raises(fastpool.PoolTimeout) as ei:
            pool.getconn()
        assert time.monotonic() - t0 < 4.0
        text = _all_text(ei.value)
        assert SECRET not in text, text
        assert SECRET not in repr(pool)
        assert SECRET not in repr(pool.stats())
        with pytest.raises(fastpool.PoolTimeout) as ei2:
            with pool.connection(timeout=0.3):
                pass
        assert SECRET not in _all_text(ei2.value)
    finally:
        pool.close()
    assert SECRET not in _log_text(caplog)


def test_password_in_kwargs_never_leaks(Pool, caplog):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="fastpool")
    pool = Pool("host=127.0.0.1 port=1 user=postgres dbname=test connect_timeout=1",
                kwargs={"password": SECRET}, min_size=1, max_size=10, timeout=0.5)
    try:
        assert SECRET not in repr(pool)
        with pytest.raises(fastpool.PoolTimeout) as ei:
            pool.getconn()
        assert SECRET not in _all_text(ei.value)
        with pytest.raises(fastpool.PoolTimeout) as ei:
            pool.wait(timeout=0.5)
        assert SECRET not in _all_text(ei.value)
    finally:
        pool.close()
    assert SECRET not in _log_text(caplog)


@pytest.mark.slow
def test_unreachable_server_timeout_mentions_error_and_no_spin(Pool):
    pool = Pool("host=127.0.0.1 port=1 user=postgres dbname=test connect_timeout=1",
                min_size=1, max_size=4, timeout=0.5)
    try:
        t0 = time.monotonic()
        with pytest.raises(fastpool.PoolTimeout) as ei:
            pool.getconn()
        elapsed = time.monotonic() - t0
        assert 0.3 <= elapsed < 3.0, elapsed
        msg = str(ei.value)
        # the last connection error is in the message
        assert "refused" in msg.lower() or "port 1" in msg, msg
        time.sleep(2.0)
        st = pool.stats()
        assert 1 <= st["connections_errors"] < 20, st
        assert st["pool_available"] == 0, st  # nothing usable was ever made
    finally:
        t0 = time.monotonic()
        pool.close(timeout=1.0)
        assert time.monotonic() - t0 < 3.0


def test_wait_raises_pool_timeout_when_unreachable(Pool):
    pool = Pool("host=127.0.0.1 port=1 user=postgres dbname=test connect_timeout=1",
                min_size=1, max_size=10, timeout=0.5)
    try:
        t0 = time.monotonic()
        with pytest.raises(fastpool.PoolTimeout):
            pool.wait(timeout=0.5)
        assert time.monotonic() - t0 < 3.0
    finally:
        pool.close()


def test_connect_error_message_propagates(make_pool):
    def failing_connect(conninfo, **kwargs):
        raise psycopg2.OperationalError("boom-xyz-connect-failure")

    pool = make_pool(min_size=0, max_size=2, connect=failing_connect, timeout=0.5)
    with pytest.raises(fastpool.PoolTimeout) as ei:
        pool.getconn()
    assert "boom-xyz-connect-failure" in _all_text(ei.value)
    assert pool.stats()["connections_errors"] >= 1
    assert pool.stats()["pool_available"] == 0


def test_recovers_when_server_comes_back(Pool, dsn, app_name):
    """conninfo callable fails the first connect, then points at the real
    server: the pool must reconnect on its own (backoff, no give-up)."""
    calls = []

    def conninfo():
        calls.append(1)
        if len(calls) == 1:
            return "host=127.0.0.1 port=1 user=postgres dbname=test connect_timeout=1"
        return dsn

    pool = Pool(conninfo, kwargs={"application_name": app_name}, min_size=1, max_size=2)
    try:
        pool.wait(timeout=10)
        with pool.connection(timeout=5) as conn:
            assert select_one(conn) == 1
        assert pool.stats()["connections_errors"] >= 1
    finally:
        pool.close()


def test_reconnect_failed_called(Pool):
    called = []
    pool = Pool("host=127.0.0.1 port=1 user=postgres dbname=test connect_timeout=1",
                min_size=1, max_size=10, reconnect_timeout=0.5, reconnect_failed=called.append)
    try:
        assert wait_until(lambda: called, timeout=5), "reconnect_failed never called"
        assert called[0] is pool
    finally:
        pool.close()


def test_configure_failure_discards_connection_and_retries(make_pool, app_name, backends):
    calls = []

    def configure(conn):
        calls.append(conn)
        if len(calls) == 1:
            raise psycopg2.OperationalError("configure says no")

    pool = make_pool(min_size=1, max_size=1, configure=configure)
    pool.wait(timeout=10)
    assert len(calls) >= 2
    assert calls[0].closed, "a connection whose configure failed must be closed"
    with pool.connection(timeout=5) as conn:
        assert conn is not calls[0]
        assert select_one(conn) == 1
    assert pool.stats()["connections_errors"] >= 1
    assert wait_until(lambda: backends(app_name) == 1, timeout=5), backends(app_name)


def test_constructor_does_not_block_on_connect(Pool):
    """Prewarm happens in the background: building a pool against a dead
    server returns at once."""
    t0 = time.monotonic()
    pool = Pool("host=127.0.0.1 port=1 user=postgres dbname=test connect_timeout=1",
                min_size=4, max_size=4)
    try:
        assert time.monotonic() - t0 < 0.5
    finally:
        pool.close()


# --------------------------------------------------------------------------
# configuration errors: raised at once, not retried into a PoolTimeout
# --------------------------------------------------------------------------

def _with(dsn, **changes):
    params = psycopg2.extensions.parse_dsn(dsn)
    params.update(changes)
    return psycopg2.extensions.make_dsn(**params)


def _unique(prefix):
    import uuid

    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@pytest.mark.parametrize("min_size", [0, 2], ids=["lazy", "prewarm"])
def test_unknown_role_is_raised_at_once_not_after_the_timeout(make_pool, dsn, min_size):
    # The README's quick start on a server without role "app": a 60 s timeout must not be
    # spent retrying what can never succeed. ConnectionRejected is not a PoolTimeout, so
    # getting it proves the caller did not wait for the timeout.
    pool = make_pool(conninfo=_with(dsn, user=_unique("fp_no_role")), min_size=min_size,
                     max_size=4, timeout=60)
    for _ in range(2):  # the first call, and a later one during the same failure streak
        with pytest.raises(fastpool.ConnectionRejected, match=r"SQLSTATE 28000.*does not exist"):
            pool.getconn()
    with pytest.raises(psycopg2.OperationalError):  # still caught where psycopg2's errors are
        with pool.connection():
            pass
    assert pool.stats()["requests_errors"] == 3


def test_unknown_database_makes_wait_raise_at_once(make_pool, dsn):
    pool = make_pool(conninfo=_with(dsn, dbname=_unique("fp_no_db")), min_size=1, max_size=2)
    with pytest.raises(fastpool.ConnectionRejected, match=r"SQLSTATE 3D000"):
        pool.wait(timeout=60)


def test_rejection_warns_once_keeps_retrying_and_recovers(make_pool, dsn, admin, caplog):
    caplog.set_level(logging.DEBUG, logger="fastpool")
    role = _unique("fp_late_role")
    pool = make_pool(conninfo=_with(dsn, user=role), min_size=1, max_size=2)
    try:
        # min_size keeps the pool trying in the background, with backoff
        assert wait_until(lambda: pool.stats()["connections_errors"] >= 3, timeout=30), pool.stats()
        warnings = [t for t in _fastpool_warnings(caplog) if "attempt failed" in t]
        assert len(warnings) == 1, warnings  # one warning per distinct error, not one per retry
        assert "28000" in warnings[0]
        with admin.cursor() as cur:
            cur.execute(f'CREATE ROLE "{role}" LOGIN SUPERUSER')
        assert wait_until(lambda: pool.stats()["pool_available"] >= 1, timeout=30), pool.stats()
        with pool.connection(timeout=30) as conn:
            assert select_one(conn) == 1
    finally:
        pool.close()
        with admin.cursor() as cur:
            cur.execute(f'DROP ROLE IF EXISTS "{role}"')


def test_transient_errors_are_not_rejections():
    from fastpool.rejection import permanent_sqlstate

    prefix = 'connection to server at "127.0.0.1", port 5432 failed: '
    permanent = {
        'FATAL:  role "app" does not exist': "28000",
        'FATAL:  database "app" does not exist': "3D000",
        'FATAL:  password authentication failed for user "app"': "28P01",
        "fe_sendauth: no password supplied": "28P01",
        'FATAL:  no pg_hba.conf entry for host "10.0.0.1", user "app", database "app", no encryption': "28000",
        'FATAL:  role "app" is not permitted to log in': "28000",
        'FATAL:  Peer authentication failed for user "app"': "28000",
    }
    for text, sqlstate in permanent.items():
        assert permanent_sqlstate(psycopg2.OperationalError(prefix + text)) == sqlstate, text
    transient = [
        "Connection refused\n\tIs the server running on that host and accepting TCP/IP connections?",
        "FATAL:  sorry, too many clients already",
        "FATAL:  the database system is starting up",
        "FATAL:  the database system is shutting down",
        "FATAL:  terminating connection due to administrator command",
        "timeout expired",
        "could not translate host name \"db\" to address: Name or service not known",
    ]
    for text in transient:
        assert permanent_sqlstate(psycopg2.OperationalError(prefix + text)) is None, text

    class WithCode(Exception):
        def __init__(self, code):
            super().__init__("localized text")
            self.pgcode = code

    assert permanent_sqlstate(WithCode("28P01")) == "28P01"
    assert permanent_sqlstate(WithCode("3D000")) == "3D000"
    assert permanent_sqlstate(WithCode("53300")) is None  # too_many_connections: transient
    assert permanent_sqlstate(WithCode("57P03")) is None  # cannot_connect_now: transient


def test_rejection_does_not_fail_callers_a_live_connection_can_serve(make_pool, dsn, admin):
    # Under a running pool the server starts refusing new connections (a rotated password, a
    # dropped role): callers waiting for a *return* must still get the connection returned.
    role = _unique("fp_dropped_role")
    with admin.cursor() as cur:
        cur.execute(f'CREATE ROLE "{role}" LOGIN SUPERUSER')
    pool = make_pool(conninfo=_with(dsn, user=role), min_size=0, max_size=2, timeout=60)
    try:
        held = pool.getconn()
        with admin.cursor() as cur:
            cur.execute(f'ALTER ROLE "{role}" NOLOGIN')  # new connections: 28000, not permitted
        got, errors = [], []

        def waiter():
            try:
                got.append(pool.getconn())
            except Exception as exc:  # reported below
                errors.append(exc)

        t = threading.Thread(target=waiter)
        t.start()
        # the waiter made the pool try a second connection, which the server refused
        assert wait_until(lambda: pool.stats()["connections_errors"] >= 1, timeout=30), pool.stats()
        pool.putconn(held)  # ... and this return serves the waiter
        t.join(60)
        assert not errors, errors
        assert got == [held]
        pool.putconn(got[0])
    finally:
        pool.close()
        with admin.cursor() as cur:
            cur.execute(f'DROP ROLE IF EXISTS "{role}"')
