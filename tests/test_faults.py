"""Fault injection against PRIVATE PostgreSQL servers, on both cores.

Every test here runs its own throwaway server (the ``private_server`` fixture) and restarts,
stops, saturates or SIGSTOPs only that one -- never the shared server on 127.0.0.1:5432.

1. server restart under load (50 threads; 500 gevent greenlets in a subprocess script)
2. backends killed with pg_terminate_backend (idle, and while checked out)
3. server full (max_connections) and server down: clear errors in time, bounded reconnects,
   recovery without user action
4. frozen server: SIGSTOP of one backend (health check gives another connection) and of the
   postmaster (connect_timeout bounds new connects, getconn still times out in time)
5. regressions found by 1-4 on a wholly frozen host (health checks vs the getconn deadline;
   the watchdog timer starved by hanging connects): they fail until the pool is fixed

Each test prints one ``FIGURES <name>[<core>] {json}`` line (run with ``-s``); RELIABILITY.md
quotes them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from time import monotonic
from typing import Any, Callable, Dict, Iterator, List, Optional

import psycopg2
import pytest

import fastpool
import fastpool.health
from fastpool import PoolError, PoolTimeout
from helpers import wait_until

FAULTS_DIR = Path(__file__).parent / "faults"
#: the gevent script prints READY after its warm-up (~1 s) and finishes ~3 s after the restart; it
#: dumps every thread's stack and exits by itself after 40 s (faulthandler), before these expire
GEVENT_READY_TIMEOUT = 45.0
GEVENT_SCRIPT_TIMEOUT = 45.0
ADMIN_APP = "fp-faults-admin"


# --------------------------------------------------------------------------------------------
# helpers


def figures(name: str, impl: str, **values: Any) -> None:
    print(f"\nFIGURES {name}[{impl}] " + json.dumps(values, sort_keys=True, default=repr), flush=True)


def admin_connect(server: Any, timeout: int = 2) -> Any:
    """A plain autocommit connection to the private server (not a pooled one)."""
    conn = psycopg2.connect(server.dsn, application_name=ADMIN_APP, connect_timeout=timeout)
    conn.autocommit = True
    return conn


def server_pids(server: Any, app: str) -> set:
    conn = admin_connect(server)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s", (app,))
            return {int(r[0]) for r in cur.fetchall()}
    finally:
        conn.close()


def terminate(server: Any, app: str) -> int:
    conn = admin_connect(server)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                        (app,))
            return sum(1 for (ok,) in cur.fetchall() if ok)
    finally:
        conn.close()


def postmaster_pid(server: Any) -> int:
    return int((server.pgdata / "postmaster.pid").read_text().splitlines()[0])


def configure_server(server: Any, **settings: Any) -> None:
    """Append settings to the private server's postgresql.conf and restart it (last line wins)."""
    with open(server.pgdata / "postgresql.conf", "a") as conf:
        for key, value in settings.items():
            conf.write(f"{key} = {value}\n")
    server.restart("fast")


def settle(pool: Any, timeout: float = 5.0) -> Dict[str, int]:
    """Wait until nobody waits and every connection is idle (refills may lag a little)."""
    def settled() -> bool:
        st = pool.stats()
        return st["requests_waiting"] == 0 and st["pool_available"] == st["pool_size"]

    wait_until(settled, timeout)
    return pool.stats()


def assert_whole(pool: Any, server: Any, app: str, max_size: int) -> Dict[str, Any]:
    """End-of-scenario post-condition: no waiter, every connection back, invariants hold,
    max_size distinct working sessions can be taken, and the server holds no more sessions for
    this pool than the pool thinks it has (no leaked connection)."""
    st = settle(pool)
    assert st["requests_waiting"] == 0, st
    assert st["pool_available"] == st["pool_size"], (st, pool._slot_states())
    assert st["pool_size"] <= max_size, st
    pool._check_invariants()
    conns = [pool.getconn(timeout=5) for _ in range(max_size)]
    try:
        pids = [select_pid(c) for c in conns]
    finally:
        for c in conns:
            pool.putconn(c)
    assert len(set(pids)) == max_size, pids
    st = settle(pool)
    assert st["requests_waiting"] == 0 and st["pool_available"] == st["pool_size"], st
    pool._check_invariants()
    # Server side: exactly the pool's sessions (closed ones exit asynchronously: wait a little).
    wait_until(lambda: len(server_pids(server, app)) == st["pool_size"], 3.0)
    server_count = len(server_pids(server, app))
    assert server_count == st["pool_size"], (server_count, st)
    return {"final_pool_size": st["pool_size"], "server_sessions": server_count}


def select_one(conn: Any) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        value = int(cur.fetchone()[0])
    conn.rollback()
    return value


def select_pid(conn: Any) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        value = int(cur.fetchone()[0])
    conn.rollback()
    return value


class ServerSampler:
    """Samples, from its own plain connection to the private server, how many backends carry
    ``app``; survives restarts (reconnects). ``peak`` after ``since`` is what the tests check."""

    def __init__(self, server: Any, app: str, interval: float = 0.01) -> None:
        self._server, self._app, self._interval = server, app, interval
        self.samples: List[tuple] = []  # (monotonic, count)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="server-sampler", daemon=True)

    def _run(self) -> None:
        conn = None
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = admin_connect(self._server, timeout=2)
                with conn.cursor() as cur:
                    cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                                (self._app,))
                    self.samples.append((monotonic(), int(cur.fetchone()[0])))
            except psycopg2.Error:
                if conn is not None:
                    conn.close()
                    conn = None
                self._stop.wait(0.02)
                continue
            self._stop.wait(self._interval)
        if conn is not None:
            conn.close()

    def peak(self, since: float = 0.0) -> int:
        return max((n for t, n in self.samples if t >= since), default=-1)

    def count(self, since: float = 0.0) -> int:
        return sum(1 for t, _ in self.samples if t >= since)

    def __enter__(self) -> "ServerSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(10)


class SizeSampler:
    """Samples stats()['pool_size'] every couple of milliseconds in a thread."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="size-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._pool.stats()["pool_size"])
            self._stop.wait(0.002)

    def __enter__(self) -> "SizeSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(5)


class Hammer:
    """``n`` threads looping getconn(timeout) / SELECT 1 / putconn until stopped, recording every
    call: its duration, success, and the error type (psycopg2.Error and PoolError are caught;
    anything else escapes and is reported as a crash)."""

    def __init__(self, pool: Any, n: int, timeout: float, pause: float = 0.0) -> None:
        self.pool, self.timeout, self.pause = pool, timeout, pause
        self._lock = threading.Lock()
        self.calls: List[tuple] = []  # (t_start, t_end, ok)
        self.errors: Counter = Counter()
        self.messages: List[str] = []
        self.crashes: List[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True, name=f"hammer-{i}")
                         for i in range(n)]

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                t0 = monotonic()
                conn = None
                err: Optional[BaseException] = None
                try:
                    conn = self.pool.getconn(timeout=self.timeout)
                    with conn.cursor() as cur:
                        cur.execute("SELECT 1")
                        cur.fetchone()
                except (psycopg2.Error, PoolError) as exc:
                    err = exc
                finally:
                    if conn is not None:
                        self.pool.putconn(conn)  # must not raise
                t1 = monotonic()
                with self._lock:
                    self.calls.append((t0, t1, err is None))
                    if err is not None:
                        self.errors[type(err).__name__] += 1
                        if len(self.messages) < 200:
                            self.messages.append(f"{type(err).__name__}: {str(err).strip()}")
                if self.pause:
                    self._stop.wait(self.pause)
        except BaseException as exc:  # pragma: no cover - reported by the tests
            with self._lock:
                self.crashes.append(repr(exc))

    def start(self) -> "Hammer":
        for t in self._threads:
            t.start()
        return self

    def stop(self, join_timeout: float) -> int:
        """Stop and join; returns how many threads are still alive (hung callers)."""
        self._stop.set()
        deadline = monotonic() + join_timeout
        for t in self._threads:
            t.join(max(0.0, deadline - monotonic()))
        return sum(1 for t in self._threads if t.is_alive())

    def first_success_after(self, t: float) -> Optional[float]:
        with self._lock:
            ends = [t1 for _, t1, ok in self.calls if ok and t1 > t]
        return min(ends) if ends else None

    @property
    def max_duration(self) -> float:
        with self._lock:
            return max((t1 - t0 for t0, t1, _ in self.calls), default=0.0)

    def summary(self) -> Dict[str, Any]:
        with self._lock:
            ok = sum(1 for c in self.calls if c[2])
            return {"calls": len(self.calls), "ok": ok, "errors": dict(self.errors),
                    "max_call_s": round(max((t1 - t0 for t0, t1, _ in self.calls), default=0.0), 3)}


@pytest.fixture
def pools(private_server: Any, app_name: str, Pool: type) -> Iterator[Callable[..., Any]]:  # noqa: N803
    """``pools(server=None, **options)`` -> Pool on the private server, tagged with app_name,
    closed at teardown (before the servers are removed)."""
    made: List[Any] = []

    def factory(server: Any = None, **options: Any) -> Any:
        server = server or private_server.default
        kwargs = {"application_name": app_name, **(options.pop("kwargs", None) or {})}
        pool = Pool(server.dsn, kwargs=kwargs, **options)
        made.append(pool)
        return pool

    yield factory
    for pool in made:
        pool.close(timeout=5)


# --------------------------------------------------------------------------------------------
# 1. server restart under load


@pytest.mark.slow
def test_restart_threads(pools: Any, private_server: Any, impl: str, app_name: str) -> None:
    """50 threads, max_size=10, getconn(timeout=5), server restarted (fast): no call hangs, the
    pool serves again within 2 s of the restart completing, never exceeds max_size (pool and
    server side), and ends consistent."""
    server = private_server.default
    max_size, getconn_timeout = 10, 5.0
    pool = pools(min_size=2, max_size=max_size, timeout=getconn_timeout)
    pool.wait(10)
    with SizeSampler(pool) as sizes, ServerSampler(server, app_name) as sampler:
        hammer = Hammer(pool, 50, getconn_timeout).start()
        time.sleep(1.0)
        ok_before = hammer.summary()["ok"]
        t0 = monotonic()
        server.restart("fast")
        t1 = monotonic()
        wait_until(lambda: hammer.first_success_after(t1), 8.0)
        first_ok = hammer.first_success_after(t1)
        time.sleep(1.0)  # load on the recovered pool
        hung = hammer.stop(getconn_timeout + 5)
        server_peak = sampler.peak(since=t1)
        server_samples = sampler.count(since=t1)
    whole = assert_whole(pool, server, app_name, max_size)
    st = pool.stats()
    summary = hammer.summary()
    recovery = None if first_ok is None else max(0.0, first_ok - t1)
    figures("restart_threads", impl, threads=50, max_size=max_size, restart_s=round(t1 - t0, 3),
            recovery_s=None if recovery is None else round(recovery, 3), ok_before=ok_before,
            pool_size_peak=sizes.peak, server_sessions_peak_after_restart=server_peak,
            connections_lost=st["connections_lost"], returns_bad=st["returns_bad"],
            connections_errors=st["connections_errors"], **summary, **whole)
    assert not hammer.crashes, hammer.crashes
    assert hung == 0, f"{hung} callers still blocked after the load stopped"
    assert summary["max_call_s"] <= getconn_timeout + 2.0, summary
    assert ok_before > 0
    assert recovery is not None, f"the pool never served again after the restart: {summary}"
    assert recovery <= 2.0, f"first success {recovery:.2f} s after the restart completed"
    assert sizes.peak <= max_size
    assert server_samples > 0 and 0 <= server_peak <= max_size, (server_peak, server_samples)


@pytest.mark.slow
def test_restart_gevent(private_server: Any, impl: str, app_name: str) -> None:
    """Same with 500 gevent greenlets (subprocess script: monkey-patching never touches pytest)."""
    server = private_server.default
    with tempfile.TemporaryDirectory(prefix="fp-faults-") as tmp:
        env = dict(os.environ, FASTPOOL_TEST_DSN=server.dsn, FASTPOOL_IMPL=impl,
                   FASTPOOL_TEST_APP=app_name, FASTPOOL_FAULT_DIR=tmp, PYTHONUNBUFFERED="1")
        out_path, err_path = Path(tmp) / "stdout", Path(tmp) / "stderr"
        with open(out_path, "w") as out_f, open(err_path, "w") as err_f:
            # Files, not pipes: nothing here can block on a full pipe, and every wait is bounded.
            proc = subprocess.Popen([sys.executable, str(FAULTS_DIR / "gevent_restart.py")], env=env,
                                    cwd=str(FAULTS_DIR), stdout=out_f, stderr=err_f, text=True)
        server_peak = server_samples = -1
        try:
            ready = wait_until(lambda: "READY" in out_path.read_text() or proc.poll() is not None,
                               GEVENT_READY_TIMEOUT, 0.02)
            if ready and "READY" in out_path.read_text():
                with ServerSampler(server, app_name) as sampler:
                    t0 = monotonic()
                    server.restart("fast")
                    t1 = monotonic()
                    tmp_signal = Path(tmp) / "restarted.tmp"
                    tmp_signal.write_text(json.dumps({"t0": t0, "t1": t1}))
                    tmp_signal.rename(Path(tmp) / "restarted")
                    try:
                        proc.wait(timeout=GEVENT_SCRIPT_TIMEOUT)
                    except subprocess.TimeoutExpired:
                        pass
                    server_peak = sampler.peak(since=t1)
                    server_samples = sampler.count(since=t1)
        finally:
            hung = proc.poll() is None
            if hung:
                proc.kill()
            proc.wait()
        out, err = out_path.read_text(), err_path.read_text()
    if hung or "READY" not in out:
        pytest.fail(f"gevent_restart.py [{impl}] {'hung' if hung else 'did not get ready'} "
                    f"(exit {proc.returncode}); a hang dumps every thread's stack below (faulthandler)\n"
                    f"--- stdout ---\n{out[-3000:]}\n--- stderr ---\n{err[-12000:]}", pytrace=False)
    results = [json.loads(x[len("RESULT "):]) for x in out.splitlines() if x.startswith("RESULT ")]
    assert proc.returncode == 0 and len(results) == 1, (
        f"script exited with {proc.returncode}\n--- stdout ---\n{out[-4000:]}\n--- stderr ---\n{err[-6000:]}")
    res = results[0]
    st = res["final_stats"]
    figures("restart_gevent", impl, greenlets=res["greenlets"], max_size=res["max_size"],
            restart_s=round(res["restart_s"], 3),
            recovery_s=None if res["recovery_s"] is None else round(res["recovery_s"], 3),
            calls=res["calls"], ok=res["ok"], errors=res["errors"], max_call_s=round(res["max_call_s"], 3),
            max_hub_gap_s=round(res["max_hub_gap_s"], 3), pool_size_peak=res["max_size_seen"],
            server_sessions_peak_after_restart=server_peak, connections_lost=st["connections_lost"],
            returns_bad=st["returns_bad"], connections_errors=st["connections_errors"],
            final_pool_size=st["pool_size"], final_available=st["pool_available"],
            alive_after_stop=res["alive_after_stop"])
    assert res["alive_after_stop"] == 0
    assert res["max_call_s"] <= 5.0 + 2.0, res
    assert res["recovery_s"] is not None and res["recovery_s"] <= 2.0, res
    assert res["max_size_seen"] <= 10, res
    assert server_samples > 0 and 0 <= server_peak <= 10, (server_peak, server_samples)
    assert st["requests_waiting"] == 0 and st["pool_available"] == st["pool_size"], st


# --------------------------------------------------------------------------------------------
# 2. killed backends


@pytest.mark.slow
@pytest.mark.parametrize("check", ["auto", "ping"])
def test_killed_idle_backends(pools: Any, private_server: Any, impl: str, app_name: str, check: str) -> None:
    """pg_terminate_backend on every idle pooled connection: the next checkouts see ZERO errors
    (dead connections are detected before hand-out and replaced)."""
    server = private_server.default
    n = 5
    pool = pools(min_size=n, max_size=n, timeout=5, check=check)
    pool.wait(10)
    conns = [pool.getconn() for _ in range(n)]
    old = {c.get_backend_pid() for c in conns}
    for c in conns:
        pool.putconn(c)
    assert len(old) == n and server_pids(server, app_name) == old
    lost0 = pool.stats()["connections_lost"]
    assert terminate(server, app_name) == n
    assert wait_until(lambda: not server_pids(server, app_name), 3.0)
    time.sleep(0.05)  # the FATAL message reaches the client sockets
    errors: List[str] = []
    t0 = monotonic()
    conns = []
    try:
        for _ in range(n):  # take them all at once: every dead slot must be vetted
            conns.append(pool.getconn(timeout=5))
        pids = []
        for c in conns:
            try:
                pids.append(select_pid(c))
            except psycopg2.Error as exc:
                errors.append(repr(exc))
    finally:
        for c in conns:
            pool.putconn(c)
    elapsed = monotonic() - t0
    st = pool.stats()
    whole = assert_whole(pool, server, app_name, n)
    figures(f"killed_idle_{check}", impl, connections=n, killed=n, errors=len(errors),
            recovery_s=round(elapsed, 3), connections_lost=st["connections_lost"] - lost0,
            returns_bad=st["returns_bad"], **whole)
    assert errors == [], errors
    assert not set(pids) & old, "a killed session was handed out"
    assert st["connections_lost"] - lost0 == n, st


@pytest.mark.slow
def test_killed_busy_backends(pools: Any, private_server: Any, impl: str, app_name: str) -> None:
    """Backends killed while their connections are checked out: each borrower gets psycopg2's
    OperationalError (not a pool error), putconn accepts the broken connection, and the slots are
    recovered: max_size can be taken again."""
    server = private_server.default
    n = 4
    pool = pools(min_size=n, max_size=n, timeout=5)
    pool.wait(10)
    conns = [pool.getconn() for _ in range(n)]
    old = {select_pid(c) for c in conns}
    assert len(old) == n
    assert terminate(server, app_name) == n
    assert wait_until(lambda: not server_pids(server, app_name), 3.0)
    time.sleep(0.05)
    seen: List[str] = []
    for c in conns:
        with pytest.raises(psycopg2.OperationalError) as info:
            select_one(c)
        assert not isinstance(info.value, PoolError), info.value
        seen.append(type(info.value).__name__)
    for c in conns:
        pool.putconn(c)  # must not raise
    t0 = monotonic()
    again = [pool.getconn(timeout=5) for _ in range(n)]
    try:
        pids = {select_pid(c) for c in again}
    finally:
        for c in again:
            pool.putconn(c)
    elapsed = monotonic() - t0
    st = pool.stats()
    whole = assert_whole(pool, server, app_name, n)
    figures("killed_busy", impl, connections=n, killed=n, borrower_errors=Counter(seen),
            recovery_s=round(elapsed, 3), returns_bad=st["returns_bad"],
            connections_lost=st["connections_lost"], **whole)
    assert len(pids) == n and not pids & old
    assert st["returns_bad"] + st["connections_lost"] >= n, st


# --------------------------------------------------------------------------------------------
# 3. server full or down


def _timeouts_in_time(pool: Any, n: int, timeout: float) -> List[tuple]:
    """n parallel getconn(timeout) calls: (seconds, exception or None) for each."""
    out: List[tuple] = []
    lock = threading.Lock()

    def one() -> None:
        t0 = monotonic()
        try:
            conn = pool.getconn(timeout=timeout)
        except PoolError as exc:
            with lock:
                out.append((monotonic() - t0, exc))
        else:
            pool.putconn(conn)
            with lock:
                out.append((monotonic() - t0, None))

    threads = [threading.Thread(target=one, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 10)
    assert not any(t.is_alive() for t in threads), "getconn hung"
    return out


def _outage_phase(pool: Any, expected_error: str, timeout: float = 1.0, window: float = 4.0) -> Dict[str, Any]:
    """While the server cannot accept us: callers time out in time with a clear message naming
    the last connection error, and reconnect attempts back off (counted over ``window`` s while
    10 threads keep asking)."""
    calls = _timeouts_in_time(pool, 3, timeout)
    durations = [d for d, _ in calls]
    for d, exc in calls:
        assert isinstance(exc, PoolTimeout), f"expected PoolTimeout, got {exc!r}"
        assert d <= timeout + 0.5, f"getconn(timeout={timeout}) took {d:.2f} s"
        msg = str(exc)
        assert "last connection error" in msg and expected_error in msg.lower(), msg
    e0 = pool.stats()["connections_errors"]
    hammer = Hammer(pool, 10, 0.5).start()
    time.sleep(window)
    hung = hammer.stop(5)
    e1 = pool.stats()["connections_errors"]
    summary = hammer.summary()
    assert hung == 0 and not hammer.crashes, (hung, hammer.crashes)
    assert summary["ok"] == 0 and set(summary["errors"]) == {"PoolTimeout"}, summary
    assert summary["max_call_s"] <= 0.5 + 0.5, summary
    return {"timeout_s": timeout, "max_timeout_call_s": round(max(durations), 3),
            "message": str(calls[0][1]), "window_s": window, "callers": 10,
            "connect_attempts_in_window": e1 - e0, "window_calls": summary["calls"],
            "window_max_call_s": summary["max_call_s"]}


@pytest.mark.slow
def test_server_full(pools: Any, private_server: Any, impl: str, app_name: str) -> None:
    """max_connections=5, all taken by plain connections: PoolTimeout in time naming "too many
    clients", a handful of reconnect attempts (not a storm), and the pool recovers by itself once
    capacity is freed."""
    server = private_server.default
    configure_server(server, max_connections=5)
    hogs = []
    try:
        while True:  # fill every slot (superusers may use the reserved ones too)
            try:
                hogs.append(psycopg2.connect(server.dsn, application_name="fp-faults-hog", connect_timeout=2))
            except psycopg2.OperationalError as exc:
                assert "too many clients" in str(exc), exc
                break
            assert len(hogs) <= 5
        pool = pools(min_size=1, max_size=3, timeout=1.0, kwargs={"connect_timeout": 2})
        t_created = monotonic()
        figs = _outage_phase(pool, "too many clients")
        attempts_total = pool.stats()["connections_errors"]
        since = monotonic() - t_created
    finally:
        t_free = monotonic()
        for h in hogs:
            h.close()
    pool.wait(5)  # passive: the pool reconnects by itself
    recovered = monotonic() - t_free
    conn = pool.getconn(timeout=0.5)
    assert select_one(conn) == 1
    pool.putconn(conn)
    whole = assert_whole(pool, server, app_name, 3)
    figures("server_full", impl, max_connections=5, hogs=len(hogs), recovery_s=round(recovered, 3),
            connect_attempts_total=attempts_total, outage_s=round(since, 2), **figs, **whole)
    assert figs["connect_attempts_in_window"] <= 10, figs
    assert recovered <= 3.0, f"pool needed {recovered:.2f} s to recover after capacity was freed"


@pytest.mark.slow
def test_server_down(pools: Any, private_server: Any, impl: str, app_name: str) -> None:
    """Server stopped: PoolTimeout in time naming the refused connection, bounded reconnect
    attempts, and recovery by itself when the server is started again."""
    server = private_server.default
    pool = pools(min_size=2, max_size=3, timeout=1.0, kwargs={"connect_timeout": 2})
    pool.wait(10)
    conn = pool.getconn()
    pool.putconn(conn)
    server.stop("fast")
    t_down = monotonic()
    try:
        figs = _outage_phase(pool, "refused")
        attempts_total = pool.stats()["connections_errors"]
        outage = monotonic() - t_down
    finally:
        server.start()
    t_up = monotonic()
    pool.wait(5)
    recovered = monotonic() - t_up
    conn = pool.getconn(timeout=0.5)
    assert select_one(conn) == 1
    pool.putconn(conn)
    whole = assert_whole(pool, server, app_name, 3)
    st = pool.stats()
    figures("server_down", impl, recovery_s=round(recovered, 3), connect_attempts_total=attempts_total,
            outage_s=round(outage, 2), connections_lost=st["connections_lost"], **figs, **whole)
    assert figs["connect_attempts_in_window"] <= 10, figs
    assert recovered <= 3.0, f"pool needed {recovered:.2f} s to recover after the server started"


# --------------------------------------------------------------------------------------------
# 4. frozen server


@pytest.mark.slow
@pytest.mark.parametrize("check", ["ping", "auto"])
def test_frozen_backend(pools: Any, private_server: Any, impl: str, app_name: str, check: str,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGSTOP the backend of the next connection to be handed out: getconn (check="ping", or
    "auto" after > 1 s idle) gives a DIFFERENT healthy connection within the timeout, after the
    watchdog (ROUND_TRIP_TIMEOUT, patched to 1 s) gave up on the frozen one; other callers keep
    getting connections quickly meanwhile."""
    monkeypatch.setattr(fastpool.health, "ROUND_TRIP_TIMEOUT", 1.0)
    server = private_server.default
    n, timeout = 4, 4.0
    pool = pools(min_size=n, max_size=n, timeout=timeout, check=check)
    pool.wait(10)
    conns = [pool.getconn() for _ in range(n)]
    pids = [c.get_backend_pid() for c in conns]
    assert server_pids(server, app_name) == set(pids)  # seen from a second, plain connection
    for c in conns:  # LIFO: the last one returned is handed out first
        pool.putconn(c)
    frozen_pid = pids[-1]
    if check == "auto":
        time.sleep(fastpool.health.PING_AFTER + 0.1)
    lost0 = pool.stats()["connections_lost"]
    os.kill(frozen_pid, signal.SIGSTOP)
    try:
        result: Dict[str, Any] = {}

        def victim() -> None:
            t0 = monotonic()
            try:
                conn = pool.getconn(timeout=timeout)
            except BaseException as exc:
                result["error"] = repr(exc)
                result["elapsed"] = monotonic() - t0
                return
            result["elapsed"] = monotonic() - t0
            try:
                result["pid"] = conn.get_backend_pid()
                result["select"] = select_one(conn)
            finally:
                pool.putconn(conn)

        t = threading.Thread(target=victim, daemon=True)
        t.start()
        time.sleep(0.2)  # the victim is now inside the health check of the frozen connection
        others = Hammer(pool, 2, timeout=timeout, pause=0.02).start()
        time.sleep(0.6)
        others_during = others.summary()  # measured while the victim is still stuck
        t.join(timeout + 5)
        assert not t.is_alive(), "getconn hung on a frozen backend"
        hung = others.stop(timeout + 2)
    finally:
        os.kill(frozen_pid, signal.SIGCONT)
    st = pool.stats()
    whole = assert_whole(pool, server, app_name, n)
    figures(f"frozen_backend_{check}", impl, round_trip_timeout=1.0, pool_timeout=timeout,
            victim_s=round(result.get("elapsed", -1), 3), victim_pid_changed=result.get("pid") != frozen_pid,
            others_during=others_during, others_total=others.summary(),
            connections_lost=st["connections_lost"] - lost0, **whole)
    assert "error" not in result, result
    assert result["pid"] != frozen_pid and result["select"] == 1, result
    assert result["elapsed"] <= 1.0 + 1.0, result
    assert hung == 0 and not others.crashes
    assert others_during["ok"] >= 5 and others_during["errors"] == {}, others_during
    assert others.max_duration <= 0.5, others.summary()
    assert st["connections_lost"] - lost0 >= 1, st


@pytest.mark.slow
def test_frozen_postmaster(pools: Any, private_server: Any, impl: str, app_name: str) -> None:
    """SIGSTOP the postmaster: existing sessions still work, new connects end at connect_timeout
    (2 s), getconn(timeout) still raises PoolTimeout in time, attempts stay bounded, and the pool
    grows again once the postmaster is continued."""
    server = private_server.default
    pool = pools(min_size=1, max_size=3, timeout=1.5, kwargs={"connect_timeout": 2})
    pool.wait(10)
    held = pool.getconn()
    assert select_one(held) == 1
    pm = postmaster_pid(server)
    e0 = pool.stats()["connections_errors"]
    os.kill(pm, signal.SIGSTOP)
    try:
        t0 = monotonic()
        with pytest.raises(PoolTimeout):
            pool.getconn(timeout=1.5)
        first = monotonic() - t0
        assert select_one(held) == 1  # the existing backend is not frozen
        hammer = Hammer(pool, 4, timeout=1.0).start()
        time.sleep(4.5)
        hung = hammer.stop(5)
        summary = hammer.summary()
        frozen_for = monotonic() - t0
        attempts = pool.stats()["connections_errors"] - e0
        try:
            pool.getconn(timeout=0.5)
            msg = "no error"
        except PoolTimeout as exc:
            msg = str(exc)
    finally:
        os.kill(pm, signal.SIGCONT)
    t_cont = monotonic()
    second = pool.getconn(timeout=5)  # a new connection: `held` is still out
    recovered = monotonic() - t_cont
    assert select_one(second) == 1
    pool.putconn(second)
    pool.putconn(held)
    whole = assert_whole(pool, server, app_name, 3)
    figures("frozen_postmaster", impl, connect_timeout=2, getconn_timeout_s=1.5,
            first_getconn_s=round(first, 3), frozen_s=round(frozen_for, 2),
            connect_attempts=attempts, message=msg, recovery_s=round(recovered, 3), **summary, **whole)
    assert first <= 1.5 + 0.5, first
    assert hung == 0 and not hammer.crashes
    assert summary["ok"] == 0 and set(summary["errors"]) == {"PoolTimeout"}, summary
    assert summary["max_call_s"] <= 1.0 + 0.5, summary
    # ~6 s frozen, each attempt ends at connect_timeout (2 s), one at a time after the first failure
    assert 1 <= attempts <= 5, attempts
    assert "timeout expired" in msg, msg
    assert recovered <= 3.0, recovered


# --------------------------------------------------------------------------------------------
# 5. regressions found by these fault tests (they fail until the pool is fixed; see RELIABILITY.md)


@pytest.mark.slow
def test_frozen_server_getconn_timeout_covers_health_checks(pools: Any, private_server: Any, impl: str,
                                                            app_name: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Whole server frozen (postmaster and every pooled backend SIGSTOPped -- a hung host):
    getconn(timeout=1.5) must end (PoolTimeout) within its timeout.

    BUG: the checkout vets the idle connections one after another, each bounded only by
    min(ROUND_TRIP_TIMEOUT, pool timeout) and not by the caller's deadline, and the wait in
    _on_miss starts its clock only after that: with 4 frozen idle connections the call takes
    4 x 1 s + 1.5 s = 5.5 s (with the default ROUND_TRIP_TIMEOUT of 5 s and max_size=10: ~50 s)."""
    monkeypatch.setattr(fastpool.health, "ROUND_TRIP_TIMEOUT", 1.0)
    server = private_server.default
    n, timeout = 4, 1.5
    pool = pools(min_size=n, max_size=n, timeout=10, check="ping", kwargs={"connect_timeout": 2})
    pool.wait(10)
    conns = [pool.getconn() for _ in range(n)]
    pids = [c.get_backend_pid() for c in conns]
    for c in conns:
        pool.putconn(c)
    frozen = pids + [postmaster_pid(server)]
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        t0 = monotonic()
        try:
            conn = pool.getconn(timeout=timeout)
        except PoolTimeout as exc:
            outcome = f"PoolTimeout: {exc}"
        else:
            outcome = f"connection to backend {conn.get_backend_pid()}"
            pool.putconn(conn)
        elapsed = monotonic() - t0
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    figures("bug_frozen_server_getconn_timeout", impl, idle_frozen=n, round_trip_timeout=1.0,
            getconn_timeout=timeout, elapsed_s=round(elapsed, 3), outcome=outcome)
    assert elapsed <= timeout + 0.5, (
        f"getconn(timeout={timeout}) took {elapsed:.2f} s on a frozen server ({outcome})")


@pytest.mark.slow
def test_watchdog_not_starved_by_hanging_connects(pools: Any, private_server: Any, impl: str,
                                                  app_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A frozen host: the health check of an idle connection must be abandoned after
    ROUND_TRIP_TIMEOUT (1 s here) even while new connects hang in connect_timeout (5 s).

    BUG: the Watchdog's deadline is a timer on the pool's Workers, the same 3 threads that run
    the blocking psycopg2.connect() of _connect_slot. Three waiters start three parallel connects
    (no failure streak yet, so the one-attempt-at-a-time rule does not apply); they occupy every
    worker for connect_timeout, the watchdog timer cannot run, and the ping on the frozen
    connection is bounded by connect_timeout (forever with connect_timeout=0), not
    ROUND_TRIP_TIMEOUT."""
    monkeypatch.setattr(fastpool.health, "ROUND_TRIP_TIMEOUT", 1.0)
    server = private_server.default
    pool = pools(min_size=1, max_size=8, timeout=3, check="ping", kwargs={"connect_timeout": 5})
    pool.wait(10)
    conn = pool.getconn()
    victim_pid = conn.get_backend_pid()
    pool.putconn(conn)
    frozen = [victim_pid, postmaster_pid(server)]
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    lost_at: List[float] = []
    outcomes: List[str] = []

    def caller() -> None:
        try:
            c = pool.getconn(timeout=3)
        except PoolError as exc:
            outcomes.append(type(exc).__name__)
        else:
            outcomes.append("ok")
            pool.putconn(c)

    try:
        lost0 = pool.stats()["connections_lost"]
        t0 = monotonic()
        victim = threading.Thread(target=caller, daemon=True)
        victim.start()  # takes the frozen idle connection and pings it
        time.sleep(0.1)
        fillers = [threading.Thread(target=caller, daemon=True) for _ in range(3)]
        for t in fillers:  # nothing idle: three waiters -> three parallel (hanging) connects
            t.start()
        wait_until(lambda: pool.stats()["connections_lost"] > lost0, 10.0)
        if pool.stats()["connections_lost"] > lost0:
            lost_at.append(monotonic() - t0)
        for t in [victim, *fillers]:
            t.join(15)
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    detected = lost_at[0] if lost_at else None
    figures("bug_watchdog_starved", impl, round_trip_timeout=1.0, connect_timeout=5,
            frozen_ping_abandoned_after_s=None if detected is None else round(detected, 3),
            outcomes=Counter(outcomes))
    assert detected is not None and detected <= 1.0 + 0.5, (
        f"the ping on the frozen connection was abandoned after {detected} s, not ~1 s")
