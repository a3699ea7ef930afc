"""Greenlets, cancellation safety and fork safety, against the real PostgreSQL, on both cores.

gevent/eventlet monkey-patching must never happen in the pytest process, so every scenario that
uses a hub runs in a fresh interpreter: ``tests/green/<lib>_scenarios.py SCENARIO`` (environment:
FASTPOOL_TEST_DSN, FASTPOOL_IMPL, FASTPOOL_TEST_APP). A script exits 0 and prints one
``RESULT {json}`` line, or fails with a traceback that is shown here. fork() also runs from a
script (pytest's threads and exit handling must not be inherited). Bare greenlets (no hub, no
patching) run in-process.

Every cancellation scenario ends with the same post-condition (``_common.verify_pool``): no
waiter left registered, every connection back (pool_available == pool_size), the ring's
invariants hold, and max_size distinct working connections can be taken.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from time import monotonic
from typing import Any, Dict, Optional

import psycopg2
import pytest

import fastpool

GREEN_DIR = Path(__file__).parent / "green"
SCRIPT_TIMEOUT = 60


# --------------------------------------------------------------------------------------------
# running scenario scripts


def run_scenario(script: str, scenario: str, dsn: str, impl: str, app_name: str) -> Dict[str, Any]:
    env = dict(os.environ)
    env.update(FASTPOOL_TEST_DSN=dsn, FASTPOOL_IMPL=impl, FASTPOOL_TEST_APP=app_name,
               PYTHONUNBUFFERED="1")
    try:
        proc = subprocess.run(
            [sys.executable, str(GREEN_DIR / script), scenario],
            env=env, cwd=str(GREEN_DIR), capture_output=True, text=True, timeout=SCRIPT_TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{script} {scenario} [{impl}] did not finish in {SCRIPT_TIMEOUT} s (deadlock?)\n"
                    f"--- stdout ---\n{_tail(exc.stdout)}\n--- stderr ---\n{_tail(exc.stderr)}",
                    pytrace=False)
    results = [line[len("RESULT "):] for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or len(results) != 1:
        pytest.fail(f"{script} {scenario} [{impl}] exited with {proc.returncode}\n"
                    f"--- stdout ---\n{_tail(proc.stdout)}\n--- stderr ---\n{_tail(proc.stderr)}",
                    pytrace=False)
    result: Dict[str, Any] = json.loads(results[0])
    assert result["scenario"] == scenario and result["impl"] == impl
    return result


def _tail(text: Any, limit: int = 6000) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    text = text or ""
    return text if len(text) <= limit else "...\n" + text[-limit:]


class PeakSampler:
    """Samples, from its own plain connection in a thread of this process, how many server
    backends carry ``app_name``: the server-side view of the max_size bound."""

    def __init__(self, dsn: str, app_name: str, interval: float = 0.005) -> None:
        self._dsn, self._app, self._interval = dsn, app_name, interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name="peak-sampler", daemon=True)

    def _run(self) -> None:
        try:
            conn = psycopg2.connect(self._dsn, application_name=self._app + "-sampler")
            conn.autocommit = True
            try:
                with conn.cursor() as cur:
                    while not self._stop.is_set():
                        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                                    (self._app,))
                        self.peak = max(self.peak, int(cur.fetchone()[0]))
                        self.samples += 1
                        self._stop.wait(self._interval)
            finally:
                conn.close()
        except BaseException as exc:  # reported by __exit__
            self._error = exc

    def __enter__(self) -> "PeakSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(10)
        if self._error is not None:
            raise self._error


@pytest.fixture
def scenario(dsn: str, impl: str, app_name: str) -> Any:
    def run(script: str, name: str) -> Dict[str, Any]:
        return run_scenario(script, name, dsn, impl, app_name)

    return run


def test_pytest_process_is_never_monkey_patched() -> None:
    # The scripts patch; this process must stay pristine for every other test.
    monkey = sys.modules.get("gevent.monkey")
    assert monkey is None or not monkey.is_module_patched("socket")
    patcher = sys.modules.get("eventlet.patcher")
    assert patcher is None or not patcher.is_monkey_patched("socket")
    assert socket.socket.__module__ == "socket"


# --------------------------------------------------------------------------------------------
# 1. gevent: 200 greenlets share max_size=5


@pytest.mark.slow
@pytest.mark.parametrize("name", ["load_patched_first", "load_patched_after", "load_unpatched"])
def test_gevent_200_greenlets_share_5_connections(scenario: Any, dsn: str, app_name: str, name: str) -> None:
    """All succeed, never more than 5 server sessions, queries overlap (several in flight at once,
    wall time well under the 6 s sequential time): psycopg2 cooperated with the hub.

    ``load_patched_after``: the pool is created and prewarmed BEFORE ``monkey.patch_all()``.
    ``load_unpatched``: gevent.spawn only, nothing patched, ``green=True`` -- must not deadlock.
    """
    with PeakSampler(dsn, app_name) as sampler:
        res = scenario("gevent_scenarios.py", name)
    assert sampler.samples > 10
    assert 1 <= sampler.peak <= 5, f"server saw {sampler.peak} sessions for a max_size=5 pool"
    assert res["done"] == 600 and res["max_size_seen"] <= 5
    assert res["wall"] < res["sequential"], res  # (the script checks a tighter bound)


# --------------------------------------------------------------------------------------------
# 2. eventlet: 100 greenthreads share max_size=5


@pytest.mark.slow
@pytest.mark.parametrize("name", [
    "load_patched_first",        # eventlet.monkey_patch() (it registers its own psycopg2 callback)
    "load_patched_after",        # ... after the pool was created and prewarmed
    "load_own_callback_first",   # monkey_patch(psycopg=False): fastpool's eventlet callback
    "load_own_callback_after",   # ... after the pool was created and prewarmed
])
def test_eventlet_100_greenthreads_share_5_connections(scenario: Any, dsn: str, app_name: str,
                                                       name: str) -> None:
    with PeakSampler(dsn, app_name) as sampler:
        res = scenario("eventlet_scenarios.py", name)
    assert sampler.samples > 10
    assert 1 <= sampler.peak <= 5, f"server saw {sampler.peak} sessions for a max_size=5 pool"
    assert res["done"] == 300 and res["max_size_seen"] <= 5
    assert res["wall"] < res["sequential"], res  # (the script checks a tighter bound)


# --------------------------------------------------------------------------------------------
# 3. bare greenlets (no hub, switching by hand): in-process, nothing is patched


def _select_one(conn: Any) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        value = cur.fetchone()[0]
    conn.rollback()
    return int(value)


def _assert_pool_whole(pool: Any, max_size: int) -> None:
    deadline = monotonic() + 5
    while True:
        st = pool.stats()
        if (st["requests_waiting"] == 0 and st["pool_available"] == st["pool_size"]) or monotonic() > deadline:
            break
        time.sleep(0.01)
    assert st["requests_waiting"] == 0, st
    assert st["pool_available"] == st["pool_size"], st
    pool._check_invariants()
    conns = [pool.getconn(timeout=5) for _ in range(max_size)]
    try:
        assert len({id(c) for c in conns}) == max_size
        assert all(_select_one(c) == 1 for c in conns)
    finally:
        for c in conns:
            pool.putconn(c)
    pool._check_invariants()


def test_bare_greenlet_waiter_yields_to_parent_and_gets_the_handoff(make_pool: Any) -> None:
    greenlet = pytest.importorskip("greenlet")
    pool = make_pool(min_size=1, max_size=1)
    pool.wait()
    main = greenlet.getcurrent()
    events = []

    def a_body() -> Any:
        conn = pool.getconn(timeout=5)
        events.append("A took")
        main.switch("A holds")
        pool.putconn(conn)
        events.append("A returned")
        return conn

    def b_body() -> Any:
        events.append("B waits")
        conn = pool.getconn(timeout=5)
        events.append("B got")
        return conn

    a, b = greenlet.greenlet(a_body), greenlet.greenlet(b_body)
    assert a.switch() == "A holds"
    t0 = monotonic()
    assert b.switch() == ()  # B cannot get the connection: it yields to us, the thread runs on
    assert monotonic() - t0 < 1.0
    assert not b.dead
    assert pool.stats()["requests_waiting"] == 1
    conn_a = a.switch()  # A returns the connection: handed straight to B
    assert a.dead
    st = pool.stats()
    assert st["requests_waiting"] == 0 and st["pool_available"] == 0, st
    conn_b = b.switch()  # B re-checks, finds the handoff
    assert b.dead
    assert conn_b is conn_a
    assert _select_one(conn_b) == 1
    pool.putconn(conn_b)
    assert events == ["A took", "B waits", "A returned", "B got"]
    _assert_pool_whole(pool, 1)


def test_bare_greenlet_waiter_times_out_cleanly(make_pool: Any) -> None:
    greenlet = pytest.importorskip("greenlet")
    pool = make_pool(min_size=1, max_size=1)
    pool.wait()
    held = pool.getconn()
    b = greenlet.greenlet(lambda: pool.getconn(timeout=0.3))
    t0 = monotonic()
    assert b.switch() == ()  # waiting: yielded to us
    switches = 0
    with pytest.raises(fastpool.PoolTimeout):
        while not b.dead:  # the parent keeps switching to B; B re-checks and yields again
            b.switch()
            switches += 1
            time.sleep(0.01)
    elapsed = monotonic() - t0
    assert b.dead
    assert 0.25 <= elapsed < 2.0, elapsed
    assert switches >= 5, switches
    assert pool.stats()["requests_waiting"] == 0, pool.stats()
    pool.putconn(held)
    assert pool.stats()["pool_available"] == 1, "returned connection went to the timed-out waiter"
    _assert_pool_whole(pool, 1)


# --------------------------------------------------------------------------------------------
# 4. cancellation never leaks or swallows a connection


@pytest.mark.slow
@pytest.mark.parametrize("name", [
    "cancel_timeout_waiting",             # (a) gevent.Timeout while waiting in getconn
    "cancel_kill_waiter",                 # (b) greenlet.kill() of waiters (GreenletExit, custom)
    "cancel_handoff_race_deterministic",  # (d) kill/timeouts forced to coincide with a handoff
    "cancel_race",                        # (d) ~1 s of churn: tiny timeouts, kills, handoffs
    "kill_holder_midquery",               # (e) kill inside `with pool.connection()` mid-query
    "timeout_holder_midquery",            # (e) gevent.Timeout around it, mid-query
    "timeout_many_waiters_one_timer",     # one hub timer for N waits; deadlines exact; FIFO
])
def test_gevent_cancellation(scenario: Any, name: str) -> None:
    res = scenario("gevent_scenarios.py", name)
    st = res["verify"]["stats"]
    assert st["requests_waiting"] == 0 and st["pool_available"] == st["pool_size"], st


def test_gevent_reused_fd_does_not_hang(scenario: Any) -> None:
    """A new connection that gets a closed connection's fd number is waited on with new watchers:
    the wait callback's per-connection watcher cache is never reused across sockets (it was keyed
    by fd number once, and that query hung forever; the greenlet soak saw it about 1 run in 50)."""
    res = scenario("gevent_scenarios.py", "reuse_fd_after_close")
    assert [r[2] for r in res["rounds"]] == [2, 2, 2], res


@pytest.mark.slow
@pytest.mark.parametrize("name", [
    "cancel_during_health_check",             # check="ping": kill lands in getconn's ping
    "cancel_during_health_check_autocommit",  # ... on autocommit connections
    "cancel_during_reset",                    # reset="discard": kill lands in putconn's DISCARD ALL
    "cancel_during_reset_autocommit",         # ... on autocommit connections
    "cancel_during_pool_growth",              # kill lands while the waiter's enqueue starts a worker
])
def test_gevent_cancellation_inside_pool_io(scenario: Any, name: str) -> None:
    """A cancellation landing in a switch the POOL makes (health check, reset, starting a worker)
    must propagate to the caller and must leave no slot, waiter or connection behind."""
    res = scenario("gevent_scenarios.py", name)
    st = res["verify"]["stats"]
    assert st["requests_waiting"] == 0 and st["pool_available"] == st["pool_size"], st


@pytest.mark.slow
@pytest.mark.parametrize("name", [
    "cancel_timeout_waiting",  # (c) eventlet.Timeout while waiting
    "cancel_kill_waiter",      # greenthread.kill(), including right after a handoff
    "cancel_race",             # tiny eventlet.Timeouts / getconn timeouts racing handoffs
])
def test_eventlet_cancellation(scenario: Any, name: str) -> None:
    res = scenario("eventlet_scenarios.py", name)
    st = res["verify"]["stats"]
    assert st["requests_waiting"] == 0 and st["pool_available"] == st["pool_size"], st


_PARK_SCENARIOS = [
    "park_close_while_parked",  # close() wakes every parked greenlet with PoolClosed
    "park_stepped_timeouts",    # infinite/huge timeouts in steps; a kill between steps
    "park_handoff_checked",     # a failed check of a handed connection: discard, wait again
    "park_max_waiting",         # the waiter past max_waiting refused; the others FIFO
]


@pytest.mark.parametrize("hub", ["gevent", "eventlet"])
@pytest.mark.parametrize("name", _PARK_SCENARIOS)
def test_hub_wait_path_keeps_every_promise(scenario: Any, hub: str, name: str) -> None:
    """The greenlet wait path (Pool._on_miss and the core's Park), on both hubs and cores:
    each promise of a wait, one scenario each (kills at the park and races: the cancellation
    scenarios above)."""
    res = scenario(f"{hub}_scenarios.py", name)
    if "verify" in res:
        st = res["verify"]["stats"]
        assert st["requests_waiting"] == 0 and st["pool_available"] == st["pool_size"], st


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sigint_waiting", "sigint_while_growing"])
def test_keyboard_interrupt_while_waiting(scenario: Any, name: str) -> None:
    """(f) SIGINT from a timer thread interrupts getconn() in the main thread; afterwards no
    waiter is left and every connection (including one made for the interrupted wait) is idle."""
    res = scenario("signal_scenarios.py", name)
    assert res["elapsed"] < 5
    st = res["verify"]["stats"]
    assert st["requests_waiting"] == 0 and st["pool_available"] == st["pool_size"], st


def test_keyboard_interrupt_inside_health_check(scenario: Any) -> None:
    """Not only greenlets: Ctrl-C landing in getconn()'s health-check round trip (simulated
    deterministically, see the script) must propagate and must not leak the slot."""
    res = scenario("signal_scenarios.py", "interrupt_during_health_check")
    st = res["verify"]["stats"]
    assert st["requests_waiting"] == 0 and st["pool_available"] == st["pool_size"], st


# --------------------------------------------------------------------------------------------
# 5. fork safety


def test_fork_child_gets_own_sessions_parent_untouched(scenario: Any) -> None:
    res = scenario("fork_scenarios.py", "fork_child_uses_pool")
    assert len(res["children"]) == 2
    assert all(child["inherited_held_closed"] for child in res["children"])
    assert res["verify"]["stats"]["connections_lost"] == 0


def test_multiprocessing_fork_children_use_inherited_pool(scenario: Any) -> None:
    res = scenario("fork_scenarios.py", "multiprocessing_fork")
    assert len(res["children"]) == 2
    assert res["verify"]["stats"]["connections_lost"] == 0


def test_CONTROL_fork_without_guard_kills_parent_sessions(scenario: Any) -> None:  # noqa: N802
    """CONTROL, not a feature test: with fastpool.fork.neutralise replaced by a plain close(),
    the child's close ends the parent's sessions. This proves the fork tests above would notice
    if the guard stopped working."""
    res = scenario("fork_scenarios.py", "control_plain_close")
    assert res["parent_sessions_killed"] and res["held_broken"]


_PSYCOGREEN_FIRST = """
from gevent import monkey; monkey.patch_all()
import psycogreen.gevent; psycogreen.gevent.patch_psycopg()   # as many gevent apps do
import os
from fastpool.pool import pool_class
pool = pool_class(os.environ["FASTPOOL_IMPL"])(os.environ["FASTPOOL_TEST_DSN"], min_size=5, max_size=5)
pool.wait(20)   # the main thread's first gevent.sleep creates its hub here
with pool.connection() as conn:
    conn.cursor().execute("SELECT 1")
pool.close(); print("ok")
"""


@pytest.mark.slow
def test_foreign_wait_callback_registered_before_the_pool_does_not_hang(dsn: str, impl: str) -> None:
    """Regression: with psycogreen's callback registered first, the pool's worker threads used
    it, each created a gevent hub, and that raced the main thread's hub on import locks."""
    pytest.importorskip("psycogreen")
    env = {**os.environ, "FASTPOOL_TEST_DSN": dsn, "FASTPOOL_IMPL": impl}
    for _ in range(3):  # it hung every time before the fix
        proc = subprocess.run([sys.executable, "-c", _PSYCOGREEN_FIRST], env=env,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
