"""Failover between two private PostgreSQL servers, on both cores.

(a) ``conninfo`` as a callable, called at each connect: the application points it at server B
    and calls ``pool.drain()``; idle connections are replaced at once, borrowed ones when they
    come back, and every new connection goes to B.
(b) a libpq multi-host DSN (``host=h,h port=PA,PB target_session_attrs=read-write``): server A
    stops; the pool notices its dead connections, reconnects (libpq skips A and lands on B) and
    serves borrowers again within a few seconds, without any call from the application and
    without a borrower hanging. When A is back, new connections go to A again (host order is a
    preference), which ``drain()`` makes uniform.

Where a connection is is told by ``inet_server_port()``.
"""

from __future__ import annotations

import threading
import time
from time import monotonic
from typing import Any, Dict, List, Tuple

import psycopg2
import pytest

# Every test here starts private servers and stops one under load: seconds each.
pytestmark = pytest.mark.slow


def server_port(conn: Any) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT inet_server_port()")
        port = int(cur.fetchone()[0])
    conn.commit()
    return port


def ports_of_all(pool: Any, n: int) -> List[int]:
    """Borrow ``n`` connections at once and say where each one is."""
    conns = [pool.getconn(timeout=10) for _ in range(n)]
    try:
        return [server_port(c) for c in conns]
    finally:
        for c in conns:
            pool.putconn(c)


def settle(pool: Any, timeout: float = 5.0) -> Dict[str, int]:
    deadline = monotonic() + timeout
    while True:
        st = pool.stats()
        if (st["requests_waiting"] == 0 and st["pool_available"] == st["pool_size"]) or monotonic() > deadline:
            return st
        time.sleep(0.02)


def app_backends(dsn: str, app_name: str) -> int:
    conn = psycopg2.connect(dsn, application_name=app_name + "-admin")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (app_name,))
            return int(cur.fetchone()[0])
    finally:
        conn.close()


def wait_backends(dsn: str, app_name: str, expected: int, timeout: float = 5.0) -> int:
    deadline = monotonic() + timeout
    while True:
        n = app_backends(dsn, app_name)
        if n == expected or monotonic() > deadline:
            return n
        time.sleep(0.05)


# --------------------------------------------------------------------------------------------
# (a) callable conninfo + drain()


def test_callable_conninfo_rotation_with_drain(Pool: Any, private_server: Any, app_name: str) -> None:
    a, b = private_server.default, private_server()
    target = {"dsn": a.dsn}
    calls: List[str] = []

    def conninfo() -> str:
        calls.append(target["dsn"])
        return target["dsn"]

    pool = Pool(conninfo, min_size=2, max_size=4, kwargs={"application_name": app_name}, timeout=10.0)
    try:
        pool.wait(10)
        assert ports_of_all(pool, 4) == [a.port] * 4
        held = pool.getconn()
        assert server_port(held) == a.port

        target["dsn"] = b.dsn
        # Without drain() nothing moves: pooled connections stay where they are.
        assert set(ports_of_all(pool, 3)) == {a.port}
        t0 = monotonic()
        pool.drain()
        # Idle connections were replaced: everything not borrowed is now on B.
        assert ports_of_all(pool, 3) == [b.port] * 3
        drained_in = monotonic() - t0
        # The borrowed one still works on A until it is returned, then it is retired.
        assert server_port(held) == a.port
        pool.putconn(held)
        assert ports_of_all(pool, 4) == [b.port] * 4
        assert wait_backends(a.dsn, app_name, 0) == 0, "a connection to A survived drain()"
        st = settle(pool)
        print(f"\nrotation: A={a.port} -> B={b.port}; first B-only checkout {drained_in * 1000:.0f} ms after "
              f"drain(); conninfo() called {len(calls)} times; stats {st}")
        assert st["pool_available"] == st["pool_size"] and st["requests_waiting"] == 0, st
        assert st["connections_errors"] == 0 and st["requests_errors"] == 0, st
        pool._check_invariants()
    finally:
        pool.close()


# --------------------------------------------------------------------------------------------
# (b) multi-host DSN, primary stops


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_multi_host_failover(Pool: Any, private_server: Any, app_name: str, mode: str) -> None:
    a, b = private_server.default, private_server()
    dsn = (f"host=127.0.0.1,127.0.0.1 port={a.port},{b.port} user=postgres dbname=postgres "
           f"target_session_attrs=read-write")
    timeout = 3.0
    pool = Pool(dsn, min_size=2, max_size=4, kwargs={"application_name": app_name}, timeout=timeout)
    load_errors: List[Tuple[float, str]] = []
    served: List[Tuple[float, int]] = []
    slowest = [0.0]
    stop = threading.Event()
    try:
        pool.wait(10)
        assert ports_of_all(pool, 4) == [a.port] * 4

        def load() -> None:
            while not stop.is_set():
                t = monotonic()
                try:
                    with pool.connection() as conn:
                        port = server_port(conn)
                    served.append((monotonic(), port))
                except Exception as exc:
                    load_errors.append((monotonic(), f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"))
                    time.sleep(0.01)
                slowest[0] = max(slowest[0], monotonic() - t)
                time.sleep(0.002)

        threads = [threading.Thread(target=load, daemon=True) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        t_stop = monotonic()
        a.stop(mode)
        t_stopped = monotonic()
        deadline = t_stopped + 15
        while monotonic() < deadline and not any(p == b.port for _, p in served):
            time.sleep(0.01)
        on_b = [t for t, p in served if p == b.port]
        assert on_b, f"no borrower reached B within 15 s; errors {load_errors[-5:]}"
        recovery = on_b[0] - t_stop
        time.sleep(0.5)  # keep the load running on B for a moment
        stop.set()
        for t in threads:
            t.join(timeout + 5)
        assert not any(t.is_alive() for t in threads), "a borrower hung"
        errs_after_stop = [(round(t - t_stop, 3), e) for t, e in load_errors if t >= t_stop]
        late_a = [t for t, p in served if p == a.port and t > t_stopped]
        st = settle(pool)
        print(f"\nfailover ({mode} stop of A={a.port}): pg_ctl stop took {t_stopped - t_stop:.2f} s; first "
              f"checkout on B={b.port} {recovery:.2f} s after the stop began; {len(errs_after_stop)} borrower errors "
              f"{errs_after_stop[:6]}; slowest borrow {slowest[0]:.2f} s; stats {st}")
        assert recovery < 5.0, recovery
        assert slowest[0] < timeout + 2.0, "a borrow took longer than the pool timeout (hang?)"
        assert not late_a, "served from A after it stopped"
        assert set(ports_of_all(pool, 4)) == {b.port}
        assert st["pool_available"] == st["pool_size"] and st["requests_waiting"] == 0, st
        pool._check_invariants()

        # A comes back: new connections prefer it again (host order), drain() moves all.
        a.start()
        pool.drain()
        assert set(ports_of_all(pool, 4)) == {a.port}
    finally:
        stop.set()
        pool.close()
