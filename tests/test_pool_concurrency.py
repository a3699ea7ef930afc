"""Concurrency: the max_size bound under load, exclusive ownership, FIFO
fairness and no barging, timeouts racing handoffs, resize() with waiters."""

import random
import threading
import time

import pytest

import fastpool
from helpers import wait_until, select_one, assert_consistent


def take_all(pool, n, timeout=5.0):
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


def run_threads(threads, timeout=30):
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    alive = [t for t in threads if t.is_alive()]
    assert not alive, f"{len(alive)} threads still running"


# --------------------------------------------------------------------------
# bound under load
# --------------------------------------------------------------------------

def test_max_size_never_exceeded_under_load(make_pool, app_name, backends):
    max_size = 4
    n_threads, iterations = 32, 50
    pool = make_pool(min_size=1, max_size=max_size, timeout=20)
    pool.wait(timeout=10)

    errors = []
    lock = threading.Lock()
    holders = {}           # id(conn) -> thread index
    in_use = [0]
    max_in_use = [0]
    pids_seen = set()
    stop_sampler = threading.Event()
    samples = []

    def worker(idx):
        rnd = random.Random(idx)
        try:
            for _ in range(iterations):
                conn = pool.getconn()
                with lock:
                    if id(conn) in holders:
                        errors.append(
                            AssertionError(f"conn held by {holders[id(conn)]} handed to {idx}"))
                    holders[id(conn)] = idx
                    in_use[0] += 1
                    max_in_use[0] = max(max_in_use[0], in_use[0])
                try:
                    with conn.cursor() as cur:
                        cur.execute("SELECT pg_backend_pid()")
                        pid = cur.fetchone()[0]
                    with lock:
                        pids_seen.add(pid)
                    if rnd.random() < 0.3:
                        time.sleep(rnd.random() * 0.002)
                    conn.rollback()
                finally:
                    with lock:
                        holders.pop(id(conn), None)
                        in_use[0] -= 1
                    pool.putconn(conn)
        except BaseException as e:
            with lock:
                errors.append(e)

    bad_stats = []

    def sampler():
        while not stop_sampler.is_set():
            samples.append(backends(app_name))
            st = pool.stats()
            if not (0 <= st["pool_available"] <= st["pool_size"] <= max_size
                    and st["requests_waiting"] >= 0):
                bad_stats.append(st)
            time.sleep(0.005)

    s = threading.Thread(target=sampler, daemon=True)
    s.start()
    try:
        run_threads([threading.Thread(target=worker, args=(i,), daemon=True)
                     for i in range(n_threads)], timeout=60)
    finally:
        stop_sampler.set()
        s.join(5)
    assert not errors, errors[:5]
    assert samples, "sampler took no samples"
    assert not bad_stats, bad_stats[:3]
    assert max(samples) <= max_size, max(samples)
    assert max_in_use[0] <= max_size
    assert len(pids_seen) <= max_size
    st = pool.stats()
    assert st["pool_size"] <= max_size
    assert st["requests_waiting"] == 0
    assert st["pool_available"] == st["pool_size"]
    assert st["requests_num"] >= n_threads * iterations
    assert st["requests_errors"] == 0
    assert st["returns_bad"] == 0
    assert backends(app_name) <= max_size
    take_all(pool, max_size)


def test_exclusive_ownership_with_connection_ctx(make_pool):
    """Two borrowers never share a connection (ctx manager path)."""
    pool = make_pool(min_size=2, max_size=2, timeout=20)
    lock = threading.Lock()
    owners = {}
    errors = []

    def worker(idx):
        try:
            for _ in range(100):
                with pool.connection() as conn:
                    with lock:
                        if id(conn) in owners:
                            errors.append(f"shared conn {idx}/{owners[id(conn)]}")
                        owners[id(conn)] = idx
                    select_one(conn)
                    with lock:
                        del owners[id(conn)]
        except BaseException as e:
            errors.append(e)

    run_threads([threading.Thread(target=worker, args=(i,), daemon=True)
                 for i in range(8)])
    assert not errors, errors[:5]
    assert_consistent(pool)


def test_grows_concurrently_up_to_max(make_pool, app_name, backends):
    pool = make_pool(min_size=0, max_size=3)
    barrier = threading.Barrier(3, timeout=20)
    got = []
    errors = []

    def worker():
        try:
            c = pool.getconn(timeout=10)
            got.append(c)
            barrier.wait()  # all three held at the same time
            pool.putconn(c)
        except BaseException as e:
            errors.append(e)

    run_threads([threading.Thread(target=worker, daemon=True) for _ in range(3)])
    assert not errors, errors
    assert len({id(c) for c in got}) == 3
    assert backends(app_name) == 3
    assert_consistent(pool)


# --------------------------------------------------------------------------
# fairness
# --------------------------------------------------------------------------

def test_fifo_fairness(make_pool):
    pool = make_pool(min_size=1, max_size=1)
    held = pool.getconn(timeout=10)
    order = []
    errors = []

    def waiter(idx):
        try:
            c = pool.getconn(timeout=20)
            order.append(idx)
            time.sleep(0.01)
            pool.putconn(c)
        except BaseException as e:
            errors.append(e)

    n = 6
    threads = [threading.Thread(target=waiter, args=(i,), daemon=True) for i in range(n)]
    try:
        for i, t in enumerate(threads):
            t.start()
            # make sure waiter i is queued before waiter i+1 arrives
            assert wait_until(lambda: pool.stats()["requests_waiting"] == i + 1, timeout=5)
            time.sleep(0.01)
    finally:
        pool.putconn(held)
    for t in threads:
        t.join(20)
    assert not errors, errors
    assert order == list(range(n))
    assert_consistent(pool)


def test_no_barging_on_return(make_pool):
    """The returning thread cannot grab back the connection it just handed
    to a waiter."""
    pool = make_pool(min_size=1, max_size=1)
    held = pool.getconn(timeout=10)
    order = []
    errors = []

    def waiter():
        try:
            c = pool.getconn(timeout=10)
            order.append("waiter")
            time.sleep(0.2)
            pool.putconn(c)
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=waiter, daemon=True)
    t.start()
    assert wait_until(lambda: pool.stats()["requests_waiting"] == 1, timeout=5)
    pool.putconn(held)
    c = pool.getconn(timeout=5)
    order.append("main")
    pool.putconn(c)
    t.join(10)
    assert not errors, errors
    assert order == ["waiter", "main"]
    assert_consistent(pool)


# --------------------------------------------------------------------------
# timeouts racing handoffs
# --------------------------------------------------------------------------

def test_tiny_timeouts_racing_handoffs_do_not_leak(make_pool, app_name, backends):
    pool = make_pool(min_size=2, max_size=2)
    pool.wait(timeout=10)
    stop = time.monotonic() + 1.0
    errors = []
    counts = {"ok": 0, "timeout": 0}
    lock = threading.Lock()

    def worker(seed):
        rnd = random.Random(seed)
        ok = to = 0
        try:
            while time.monotonic() < stop:
                try:
                    c = pool.getconn(timeout=0.01)
                except fastpool.PoolTimeout:
                    to += 1
                    continue
                ok += 1
                if rnd.random() < 0.5:
                    time.sleep(rnd.random() * 0.003)
                pool.putconn(c)
        except BaseException as e:
            errors.append(e)
        with lock:
            counts["ok"] += ok
            counts["timeout"] += to

    run_threads([threading.Thread(target=worker, args=(i,), daemon=True)
                 for i in range(16)], timeout=30)
    assert not errors, errors[:5]
    assert counts["ok"] > 0
    st = pool.stats()
    assert st["requests_waiting"] == 0, st
    assert st["pool_available"] == st["pool_size"], st
    assert st["pool_size"] == 2, st
    assert backends(app_name) == 2
    take_all(pool, 2, timeout=2)


def test_timed_out_waiter_does_not_swallow_connection(make_pool):
    """A waiter that gave up must not keep the connection handed to it at
    the last moment: returned connections always reach a live waiter or
    the free list."""
    pool = make_pool(min_size=1, max_size=1)
    for _ in range(20):
        held = pool.getconn(timeout=5)
        result = {}

        def waiter():
            try:
                result["c"] = pool.getconn(timeout=0.05)
            except fastpool.PoolTimeout:
                result["timeout"] = True

        t = threading.Thread(target=waiter, daemon=True)
        t.start()
        time.sleep(0.04 + random.random() * 0.02)  # race the deadline
        pool.putconn(held)
        t.join(5)
        if "c" in result:
            pool.putconn(result["c"])
        st = pool.stats()
        assert st["pool_available"] == st["pool_size"] == 1, st
        assert st["requests_waiting"] == 0, st
    take_all(pool, 1, timeout=1)


# --------------------------------------------------------------------------
# resize
# --------------------------------------------------------------------------

def test_resize_grow_serves_waiters(make_pool, app_name, backends):
    pool = make_pool(min_size=1, max_size=1)
    held = pool.getconn(timeout=10)
    release = threading.Event()
    got = []
    errors = []

    def waiter():
        try:
            c = pool.getconn(timeout=10)
            got.append(c)
            release.wait(20)
            pool.putconn(c)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=waiter, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        assert wait_until(lambda: pool.stats()["requests_waiting"] == 2, timeout=5)
        pool.resize(1, 3)
        st = pool.stats()
        assert st["pool_min"] == 1 and st["pool_max"] == 3
        assert wait_until(lambda: len(got) == 2, timeout=5), (got, errors)
        assert backends(app_name) == 3
    finally:
        release.set()
        pool.putconn(held)
        for t in threads:
            t.join(10)
    assert not errors, errors
    assert_consistent(pool)


def test_resize_shrink_closes_extra_idle(make_pool, app_name, backends):
    pool = make_pool(min_size=4, max_size=4)
    pool.wait(timeout=10)
    assert wait_until(lambda: backends(app_name) == 4, timeout=3)
    pool.resize(1, 2)
    st = pool.stats()
    assert st["pool_min"] == 1 and st["pool_max"] == 2
    assert wait_until(lambda: backends(app_name) <= 2, timeout=5), backends(app_name)
    assert wait_until(lambda: pool.stats()["pool_size"] <= 2, timeout=2), pool.stats()
    take_all(pool, 2)
    # cannot take a third
    a = pool.getconn(timeout=5)
    b = pool.getconn(timeout=5)
    try:
        with pytest.raises(fastpool.PoolTimeout):
            pool.getconn(timeout=0.2)
    finally:
        pool.putconn(a)
        pool.putconn(b)
    assert backends(app_name) <= 2
    assert_consistent(pool)


def test_resize_shrink_while_in_use(make_pool, app_name, backends):
    pool = make_pool(min_size=1, max_size=4)
    conns = [pool.getconn(timeout=10) for _ in range(4)]
    assert backends(app_name) == 4
    pool.resize(1, 2)
    for c in conns:
        pool.putconn(c)
    assert wait_until(lambda: backends(app_name) <= 2, timeout=5), backends(app_name)
    st = pool.stats()
    assert st["pool_size"] <= 2, st
    assert_consistent(pool)
    take_all(pool, 2)


def test_resize_min_grows_prewarm(make_pool, app_name, backends):
    pool = make_pool(min_size=1, max_size=4)
    pool.wait(timeout=10)
    pool.resize(3, 4)
    assert pool.stats()["pool_min"] == 3
    assert pool.stats()["pool_max"] == 4
    pool.wait(timeout=10)
    assert wait_until(lambda: backends(app_name) == 3, timeout=5), backends(app_name)


def test_resize_invalid(make_pool):
    pool = make_pool(min_size=1, max_size=2)
    with pytest.raises(ValueError):
        pool.resize(3, 2)
    with pytest.raises(ValueError):
        pool.resize(-1, 2)
    st = pool.stats()
    assert st["pool_min"] == 1 and st["pool_max"] == 2


# --------------------------------------------------------------------------
# close with concurrent users
# --------------------------------------------------------------------------

def test_close_with_many_waiters(make_pool, app_name, backends):
    pool = make_pool(min_size=1, max_size=1)
    held = pool.getconn(timeout=10)
    results = []
    lock = threading.Lock()

    def waiter():
        try:
            c = pool.getconn(timeout=20)
        except BaseException as e:
            with lock:
                results.append(e)
        else:  # pragma: no cover - would be a bug
            with lock:
                results.append(c)

    threads = [threading.Thread(target=waiter, daemon=True) for _ in range(8)]
    for t in threads:
        t.start()
    assert wait_until(lambda: pool.stats()["requests_waiting"] == 8, timeout=5)
    t0 = time.monotonic()
    pool.close(timeout=0.5)
    for t in threads:
        t.join(5)
    assert time.monotonic() - t0 < 4.0
    assert len(results) == 8
    assert all(isinstance(r, fastpool.PoolClosed) for r in results), results
    pool.putconn(held)
    assert held.closed
    assert wait_until(lambda: backends(app_name) == 0, timeout=5)


# --------------------------------------------------------------------------
# failures under load
# --------------------------------------------------------------------------

def test_backends_terminated_under_load(make_pool, admin, app_name, backend_pids):
    """Server kills every pooled backend twice while 12 threads work: only
    in-flight queries may fail (with a psycopg2 error); the pool never times
    out and recovers fully."""
    import psycopg2

    pool = make_pool(min_size=2, max_size=4, timeout=10)
    pool.wait(timeout=10)
    stop = threading.Event()
    pool_errors = []
    db_errors = []
    lock = threading.Lock()

    def worker():
        while not stop.is_set():
            try:
                conn = pool.getconn()
            except BaseException as e:
                with lock:
                    pool_errors.append(e)
                return
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT pg_sleep(0.001)")
                conn.rollback()
            except psycopg2.Error as e:
                with lock:
                    db_errors.append(e)
            except BaseException as e:
                with lock:
                    pool_errors.append(e)
            finally:
                pool.putconn(conn)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(12)]
    for t in threads:
        t.start()
    try:
        for _ in range(2):
            time.sleep(0.3)
            with admin.cursor() as cur:
                for pid in backend_pids(app_name):
                    cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(15)
    assert not [t for t in threads if t.is_alive()]
    assert not pool_errors, pool_errors[:5]
    assert not any(isinstance(e, fastpool.PoolError) for e in db_errors)
    st = pool.stats()
    assert st["connections_lost"] + st["returns_bad"] >= 1, st
    assert_consistent(pool)
    take_all(pool, 4)


def test_close_while_hammering(make_pool, app_name, backends):
    pool = make_pool(min_size=2, max_size=3, timeout=5)
    pool.wait(timeout=10)
    outcomes = []
    lock = threading.Lock()

    def worker():
        try:
            while True:
                conn = pool.getconn()
                try:
                    with conn.cursor() as cur:
                        cur.execute("SELECT 1")
                    conn.rollback()
                finally:
                    pool.putconn(conn)
        except BaseException as e:
            with lock:
                outcomes.append(e)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    pool.close(timeout=2)
    for t in threads:
        t.join(5)
    assert time.monotonic() - t0 < 6
    assert not [t for t in threads if t.is_alive()], "threads hung after close()"
    assert len(outcomes) == 8
    assert all(isinstance(e, fastpool.PoolClosed) for e in outcomes), outcomes
    assert wait_until(lambda: backends(app_name) == 0, timeout=5), backends(app_name)


def test_slow_connect_timed_out_waiter_does_not_lose_connection(make_pool, dsn, backends,
                                                                app_name):
    """A connection that was being made for a waiter who gave up goes to
    the pool, not to the void."""
    import psycopg2

    def slow_connect(conninfo, **kwargs):
        time.sleep(0.5)
        return psycopg2.connect(conninfo, **kwargs)

    pool = make_pool(min_size=0, max_size=1, connect=slow_connect)
    with pytest.raises(fastpool.PoolTimeout):
        pool.getconn(timeout=0.1)
    assert wait_until(lambda: pool.stats()["pool_available"] == 1, timeout=5), pool.stats()
    t0 = time.monotonic()
    conn = pool.getconn(timeout=0.3)
    assert time.monotonic() - t0 < 0.3
    try:
        assert select_one(conn) == 1
    finally:
        pool.putconn(conn)
    assert pool.stats()["pool_size"] == 1
    assert backends(app_name) == 1
