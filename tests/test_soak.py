"""Soak: many mixed checkouts with faults, on both cores; no slot may leak, memory must stay flat.

Two soaks per core, sharing the checkout budget ``FASTPOOL_SOAK_CHECKOUTS`` (default 100_000 for
the whole file: each soak gets an equal share; set 1_000_000 for the full figure):

* threads (in this process): ``THREADS`` OS threads over a pool of ``MAX_SIZE``, a random mix of
  clean borrows, exceptions inside ``with pool.connection()``, short getconn timeouts
  (PoolTimeout expected), transactions and session changes left behind (reset on return),
  connections closed by the borrower; a chaos thread meanwhile terminates pool backends
  server-side, drains the pool and runs ``pool.check()``;
* greenlets (tests/faults/soak_gevent.py in a fresh, gevent-patched interpreter, so pytest is
  never monkey-patched): the same mix over ``gevent`` greenlets, plus cancellations -- a killer
  ``kill()``s random workers (waiters, holders, returners) and ``gevent.Timeout`` cancels whole
  borrows.

A third soak, ``test_soak_waiters_exhausted_then_recovering``, runs 64 threads with random
1-50 ms getconn timeouts against a pool that is in turns exhausted and recovering, for
``FASTPOOL_SOAK_WAITERS_SECONDS`` per core (default 12; 600 is the 10-minute run of issue 11):
the waiter queue stays bounded and RSS flat.

Each soak asserts: no unexpected error, nobody left waiting, every connection back
(pool_available == pool_size), the ring's invariants, max_size distinct sessions can still be
taken, ``requests_num`` >= the getconn calls made, and RSS flat after warm-up (final minus the
value at 20 % progress < ``RSS_SLACK``). The RSS curve is printed (run with ``-s``).

The regression tests at the end pin down what the soaks found, deterministically and fast: the
slot leak on a cancellation inside the pool's own round trips (a RESERVED slot never freed), and
cancelled watchdog timers piling up in the timer heap (RELIABILITY.md, bugs S1 and S2).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import logging
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from time import monotonic
from typing import Any, Dict, List, Tuple

import psutil
import psycopg2
import pytest

import fastpool

FAULTS_DIR = Path(__file__).parent / "faults"
TOTAL = int(os.environ.get("FASTPOOL_SOAK_CHECKOUTS", "100000"))
THREADS = 12
MAX_SIZE = 6
SAMPLES = 50
RSS_SLACK = 5 * 2**20
WARMUP = 0.2


def _n_cores() -> int:
    return 1 if os.environ.get("FASTPOOL_IMPL", "") in ("c", "python") else 2


def share() -> int:
    """Checkouts for one soak run (threads or greenlets, one core)."""
    return max(2000, TOTAL // (2 * _n_cores()))


#: seconds a checkout-budget soak may take: 300 checkouts/s at the least (the greenlet script's own
#: limit), plus set-up. Beyond pyproject's 600 s once FASTPOOL_SOAK_CHECKOUTS is large.
SOAK_TIMEOUT = max(600.0, share() / 300 + 120)


def rss_report(label: str, curve: List[Tuple[int, int, float]]) -> Dict[str, Any]:
    """Print the RSS curve; return the flatness figures the tests assert on."""
    n = curve[-1][0]
    at_warm = min(curve, key=lambda p: abs(p[0] - WARMUP * n))
    after = [p[1] for p in curve if p[0] >= at_warm[0]]
    out = {"rss_start": curve[0][1], "rss_warm": at_warm[1], "rss_final": curve[-1][1],
           "rss_max_after_warmup": max(after), "growth_after_warmup": curve[-1][1] - at_warm[1]}
    print(f"\n[{label}] RSS curve (checkouts -> MiB, seconds):")
    step = max(1, len(curve) // 25)
    for i, rss, t in curve[::step] + ([curve[-1]] if (len(curve) - 1) % step else []):
        print(f"  {i:>9}  {rss / 2**20:8.2f} MiB  {t:7.2f} s")
    print(f"[{label}] RSS start {out['rss_start'] / 2**20:.2f} MiB, at {WARMUP:.0%} "
          f"{out['rss_warm'] / 2**20:.2f} MiB, final {out['rss_final'] / 2**20:.2f} MiB, "
          f"growth after warm-up {out['growth_after_warmup'] / 2**20:+.2f} MiB, "
          f"max after warm-up {out['rss_max_after_warmup'] / 2**20:.2f} MiB")
    return out


def settle(pool: Any, timeout: float = 10.0) -> Dict[str, int]:
    deadline = monotonic() + timeout
    while True:
        st = pool.stats()
        if (st["requests_waiting"] == 0 and st["pool_available"] == st["pool_size"]) or monotonic() > deadline:
            return st
        time.sleep(0.02)


def assert_no_leak(pool: Any, max_size: int) -> Dict[str, int]:
    st = settle(pool)
    assert st["requests_waiting"] == 0, st
    assert st["pool_available"] == st["pool_size"], ("leaked slot(s)", st, pool._slot_states())
    pool._check_invariants()
    conns = [pool.getconn(timeout=10) for _ in range(max_size)]
    try:
        pids = set()
        for c in conns:
            with c.cursor() as cur:
                cur.execute("SELECT pg_backend_pid()")
                pids.add(cur.fetchone()[0])
            c.commit()
    finally:
        for c in conns:
            pool.putconn(c)
    assert len(pids) == max_size, pids
    st = settle(pool)
    assert st["pool_available"] == st["pool_size"], st
    pool._check_invariants()
    return st


class Injected(Exception):
    pass


class _Counter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.counts: Dict[str, int] = collections.Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[f"{record.levelname}: {record.msg}"] += 1


@contextlib.contextmanager
def counted_fastpool_logs() -> Any:
    """Count fastpool's log records instead of letting pytest's log capture keep them all:
    tens of thousands of "rolling back" warnings kept in memory would swamp the RSS curve."""
    logger = logging.getLogger("fastpool")
    handler = _Counter()
    saved = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield handler.counts
    finally:
        logger.propagate = saved
        logger.removeHandler(handler)


# --------------------------------------------------------------------------------------------
# threads, in process


@pytest.mark.slow
@pytest.mark.timeout(SOAK_TIMEOUT)
def test_soak_threads(make_pool: Any, backends: Any, impl: str) -> None:
    n = share()
    pool = make_pool(min_size=2, max_size=MAX_SIZE, timeout=10.0)
    pool.wait(10)
    proc = psutil.Process()
    seed = int(os.environ.get("SOAK_SEED", "0")) or random.randrange(1, 2**31)
    print(f"\n[threads/{impl}] {n} checkouts, {THREADS} threads, max_size {MAX_SIZE}, seed {seed}")
    counter = itertools.count()
    step = max(1, n // SAMPLES)
    curve: List[Tuple[int, int, float]] = []
    curve_lock = threading.Lock()
    per_thread: List[Dict[str, int]] = []
    unexpected: List[str] = []
    done = threading.Event()
    t0 = monotonic()

    def query(conn: Any) -> None:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            cur.fetchall()

    def worker(tid: int) -> None:
        rnd = random.Random(seed * 1000 + tid)
        c = {"getconn": 0, "ok": 0, "injected": 0, "pool_timeout": 0, "dirty_txn": 0,
             "dirty_session": 0, "closed_by_user": 0, "db_errors": 0}
        per_thread.append(c)
        while True:
            i = next(counter)  # atomic under the GIL
            if i >= n:
                return
            if i % step == 0:
                with curve_lock:
                    curve.append((i, proc.memory_info().rss, round(monotonic() - t0, 2)))
            r = rnd.random()
            try:
                if r < 0.55:
                    c["getconn"] += 1
                    with pool.connection() as conn:
                        if rnd.random() < 0.3:
                            query(conn)
                        if rnd.random() < 0.2:
                            time.sleep(0)
                    c["ok"] += 1
                elif r < 0.65:
                    c["getconn"] += 1
                    try:
                        with pool.connection() as conn:
                            if rnd.random() < 0.5:
                                query(conn)
                            raise Injected()
                    except Injected:
                        c["injected"] += 1
                elif r < 0.78:
                    c["getconn"] += 1
                    try:
                        with pool.connection(timeout=rnd.choice((0.0002, 0.001, 0.003))) as conn:
                            time.sleep(0)
                        c["ok"] += 1
                    except fastpool.PoolTimeout:
                        c["pool_timeout"] += 1
                elif r < 0.88:
                    c["getconn"] += 1
                    conn = pool.getconn()
                    try:
                        query(conn)  # transaction left open
                    finally:
                        pool.putconn(conn)
                    c["dirty_txn"] += 1
                elif r < 0.995:
                    c["getconn"] += 1
                    conn = pool.getconn()
                    try:
                        conn.autocommit = True
                        if rnd.random() < 0.5:
                            query(conn)
                    finally:
                        pool.putconn(conn)
                    c["dirty_session"] += 1
                else:
                    c["getconn"] += 1
                    conn = pool.getconn()
                    conn.close()
                    pool.putconn(conn)
                    c["closed_by_user"] += 1
            except fastpool.PoolError as exc:
                unexpected.append(repr(exc))
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                c["db_errors"] += 1  # a backend terminated by the chaos thread mid-use
            except Exception as exc:
                unexpected.append(repr(exc))

    chaos = {"terminated": 0, "drains": 0, "checks": 0}

    def chaos_thread() -> None:
        rnd = random.Random(seed)
        while not done.wait(rnd.uniform(0.02, 0.1)):
            r = rnd.random()
            if r < 0.3:
                pids = sorted(backends.pids())
                if pids:
                    with backends._admin.cursor() as cur:
                        cur.execute("SELECT pg_terminate_backend(%s)", (rnd.choice(pids),))
                    chaos["terminated"] += 1
            elif r < 0.45:
                pool.drain()
                chaos["drains"] += 1
            elif r < 0.6:
                pool.check()
                chaos["checks"] += 1

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(THREADS)]
    ct = threading.Thread(target=chaos_thread, daemon=True)
    budget = max(120.0, n / 500)
    with counted_fastpool_logs() as logs:
        ct.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(0.1, t0 + budget - monotonic()))
        done.set()
        ct.join(10)
    wall = monotonic() - t0
    assert not any(t.is_alive() for t in threads), f"soak did not finish in {budget:.0f} s: {pool.stats()}"
    curve.append((n, proc.memory_info().rss, round(wall, 2)))
    curve.sort()

    totals = {k: sum(c[k] for c in per_thread) for k in per_thread[0]}
    st = settle(pool)
    print(f"[threads/{impl}] {wall:.1f} s, {n / wall:.0f} checkouts/s; outcomes {totals}; chaos {chaos}")
    print(f"[threads/{impl}] stats {st}")
    print(f"[threads/{impl}] fastpool log records: {dict(logs)}")
    assert not unexpected, unexpected[:10]
    assert st["requests_num"] >= totals["getconn"], (st, totals)
    final = assert_no_leak(pool, MAX_SIZE)
    assert final["pool_size"] <= MAX_SIZE
    rss = rss_report(f"threads/{impl}", curve)
    assert rss["growth_after_warmup"] < RSS_SLACK, rss


# --------------------------------------------------------------------------------------------
# waiters: an exhausted-then-recovering pool under many short timeouts (issue 11)

#: seconds per core; set FASTPOOL_SOAK_WAITERS_SECONDS=600 for the 10-minute run.
WAITER_SECONDS = float(os.environ.get("FASTPOOL_SOAK_WAITERS_SECONDS", "12"))
WAITER_THREADS = 64
WAITER_MAX_SIZE = 4
PHASE = 1.0  # seconds exhausted, then as long recovering, over and over


@pytest.mark.slow
@pytest.mark.timeout(max(600.0, WAITER_SECONDS + 300))  # the 10-minute run is longer than pyproject's limit
def test_soak_waiters_exhausted_then_recovering(make_pool: Any, impl: str) -> None:
    """64 threads with random short getconn timeouts (1-50 ms) against a pool that is, in
    turns, exhausted (a holder keeps every connection: all of them time out) and recovering
    (connections come back and are shared): timed-out waiters must not accumulate, so RSS stays
    flat, and at the end nothing is left waiting or leaked."""
    pool = make_pool(min_size=1, max_size=WAITER_MAX_SIZE, timeout=10.0)
    pool.wait(10)
    proc = psutil.Process()
    seed = int(os.environ.get("SOAK_SEED", "0")) or random.randrange(1, 2**31)
    print(f"\n[waiters/{impl}] {WAITER_SECONDS:g} s, {WAITER_THREADS} threads, "
          f"max_size {WAITER_MAX_SIZE}, seed {seed}")
    t0 = monotonic()
    end = t0 + WAITER_SECONDS
    exhausted = threading.Event()
    counts = collections.Counter()
    unexpected: List[str] = []

    def worker(tid: int) -> None:
        rnd = random.Random(seed * 1000 + tid)
        c = collections.Counter()
        while monotonic() < end:
            try:
                conn = pool.getconn(timeout=rnd.uniform(0.001, 0.05))
            except fastpool.PoolTimeout:
                c["timeout_exhausted" if exhausted.is_set() else "timeout"] += 1
                continue
            except Exception as exc:  # noqa: BLE001 - reported below
                unexpected.append(repr(exc))
                continue
            try:
                if rnd.random() < 0.2:
                    with conn.cursor() as cur:
                        cur.execute("SELECT 1")
                    conn.commit()
                time.sleep(rnd.random() * 0.002)
            finally:
                pool.putconn(conn)
            c["ok"] += 1
        counts.update(c)

    def patient_wait() -> None:
        try:
            pool.putconn(pool.getconn(timeout=2 * PHASE))
        except fastpool.PoolTimeout:
            pass

    def holder() -> None:
        while monotonic() + 2 * PHASE < end:
            held = []
            exhausted.set()
            # one caller with a long timeout waits through the whole phase, as in a real
            # service: the queue is never empty, so dead waiters must go some other way
            patient = threading.Thread(target=patient_wait, daemon=True)
            patient.start()
            try:
                # take every connection as the workers return them (they also compete)
                phase_end = monotonic() + PHASE
                while len(held) < WAITER_MAX_SIZE and monotonic() < phase_end:
                    try:
                        held.append(pool.getconn(timeout=0.05))
                    except fastpool.PoolTimeout:
                        pass
                time.sleep(max(0.0, phase_end - monotonic()))
            finally:
                exhausted.clear()
                for conn in held:
                    pool.putconn(conn)
            time.sleep(PHASE)

    curve: List[Tuple[int, int, float]] = []
    with counted_fastpool_logs():
        threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(WAITER_THREADS)]
        threads.append(threading.Thread(target=holder, daemon=True))
        for t in threads:
            t.start()
        i = 0
        longest_queue = 0
        while any(t.is_alive() for t in threads):
            curve.append((i, proc.memory_info().rss, round(monotonic() - t0, 2)))
            longest_queue = max(longest_queue, pool._counts()["queue"])
            i += 1
            time.sleep(max(0.05, WAITER_SECONDS / SAMPLES))
        for t in threads:
            t.join(30)
    st = pool.stats()
    print(f"[waiters/{impl}] {dict(counts)}")
    print(f"[waiters/{impl}] stats {st}; longest waiter queue {longest_queue}")
    assert not unexpected, unexpected[:10]
    assert counts["ok"] > 0 and counts["timeout_exhausted"] > 0, counts
    # live waiters (at most 66) plus the dead ones the queue may keep a while (Core._claim)
    assert longest_queue <= 4 * (WAITER_THREADS + 2) + 64, longest_queue
    assert_no_leak(pool, WAITER_MAX_SIZE)
    gc_waiters = sum(1 for o in __import__("gc").get_objects() if type(o) is pool._Waiter)
    assert gc_waiters < 200, f"{gc_waiters} waiters still alive"
    rss = rss_report(f"waiters/{impl}", curve)
    assert rss["growth_after_warmup"] < RSS_SLACK, rss


# --------------------------------------------------------------------------------------------
# greenlets, in a gevent-patched subprocess


def run_script(script: str, args: List[str], env_extra: Dict[str, str], timeout: float) -> Dict[str, Any]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", **env_extra)
    try:
        proc = subprocess.run([sys.executable, str(FAULTS_DIR / script), *args], env=env,
                              cwd=str(FAULTS_DIR), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{script} {args} did not finish in {timeout:.0f} s (hang?)\n"
                    f"--- stdout ---\n{_tail(exc.stdout)}\n--- stderr ---\n{_tail(exc.stderr)}",
                    pytrace=False)
    results = [line[7:] for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or len(results) != 1:
        pytest.fail(f"{script} {args} exited with {proc.returncode}\n--- stdout ---\n{_tail(proc.stdout)}"
                    f"\n--- stderr ---\n{_tail(proc.stderr)}", pytrace=False)
    out: Dict[str, Any] = json.loads(results[0])
    return out


def _tail(text: Any, limit: int = 5000) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    lines = [ln for ln in (text or "").splitlines() if "rolling back a connection returned" not in ln]
    text = "\n".join(lines)
    return text if len(text) <= limit else "...\n" + text[-limit:]


@pytest.mark.slow
@pytest.mark.timeout(SOAK_TIMEOUT)
def test_soak_greenlets(dsn: str, app_name: str, impl: str) -> None:
    n = share()
    seed = os.environ.get("SOAK_SEED", "") or str(random.randrange(1, 2**31))
    env = {"FASTPOOL_TEST_DSN": dsn, "FASTPOOL_IMPL": impl, "FASTPOOL_TEST_APP": app_name,
           "SOAK_CHECKOUTS": str(n), "SOAK_SEED": seed,
           # only for measuring while the cancellation leak is open; see soak_gevent.py
           "SOAK_SPARE_RETURNING": os.environ.get("FASTPOOL_SOAK_SPARE_RETURNING", "0")}
    print(f"\n[greenlets/{impl}] {n} checkouts, seed {seed}")
    res = run_script("soak_gevent.py", [], env, timeout=max(120.0, n / 300))
    counts, st = res["counts"], res["stats"]
    print(f"[greenlets/{impl}] {res['wall']:.1f} s, {n / res['wall']:.0f} checkouts/s; "
          f"{res['workers']} greenlets, max_size {res['max_size']}; outcomes {counts}")
    print(f"[greenlets/{impl}] stats {st}")
    rss = rss_report(f"greenlets/{impl}", [tuple(p) for p in res["curve"]])
    # the script already asserted: no unexpected error, no waiter left, every slot back,
    # invariants, max_size distinct sessions; re-check what it reported
    assert st["requests_waiting"] == 0 and st["pool_available"] == st["pool_size"], st
    assert st["requests_num"] >= counts["getconn"], (st, counts)
    assert counts["killed"] > 0 and counts["gevent_timeout_fired"] > 0 and counts["pool_timeout"] > 0, counts
    assert rss["growth_after_warmup"] < RSS_SLACK, rss


# --------------------------------------------------------------------------------------------
# regressions found by the greenlet soak: a cancellation inside the pool's own round trip


class Cancel(BaseException):
    """Stands for KeyboardInterrupt, SystemExit, greenlet.GreenletExit, gevent.Timeout: every
    cancellation is a BaseException, and a pool must survive one at any point."""


def _leaked(pool: Any) -> Tuple[int, Dict[str, int], List[int]]:
    st = settle(pool, 3.0)
    return st["pool_size"] - st["pool_available"], st, pool._slot_states()


def test_cancel_in_reset_callable_does_not_leak_slot(make_pool: Any) -> None:
    """A BaseException out of reset (here the callable; under gevent a kill or Timeout during
    the ROLLBACK/DISCARD ALL round trip) must not leave the slot RESERVED forever."""

    calls = []

    def reset(conn: Any) -> None:
        calls.append(conn)
        if len(calls) == 1:
            raise Cancel()

    pool = make_pool(min_size=1, max_size=1, reset=reset, timeout=1.0)
    conn = pool.getconn()
    with pytest.raises(Cancel):
        pool.putconn(conn)
    leaked, st, states = _leaked(pool)
    assert leaked == 0, ("slot leaked after a cancelled reset", st, states)
    pool.putconn(pool.getconn(timeout=2))


def test_cancel_in_check_callable_does_not_leak_slot(make_pool: Any) -> None:
    """Same for the health check run by getconn (ping under gevent, or a check callable)."""

    calls = []
    caller = threading.get_ident()

    def check(conn: Any) -> bool:
        # Only the check getconn runs in this thread is cancelled: a check callable also vets
        # each brand-new connection in the pool's worker thread (issue 9), where a failure is a
        # failed connection attempt, not the caller's cancellation.
        if threading.get_ident() != caller:
            return True
        calls.append(conn)
        if len(calls) == 1:
            raise Cancel()
        return True

    pool = make_pool(min_size=1, max_size=1, check=check, timeout=1.0)
    pool.wait(10)
    with pytest.raises(Cancel):
        pool.getconn()
    leaked, st, states = _leaked(pool)
    assert leaked == 0, ("slot leaked after a cancelled health check", st, states)
    pool.putconn(pool.getconn(timeout=2))


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["kill_in_reset", "timeout_in_reset", "timeout_in_check", "kill_in_ping"])
def test_gevent_cancel_in_pool_round_trip(dsn: str, app_name: str, impl: str, scenario: str) -> None:
    """The greenlet versions (tests/faults/cancel_gevent.py): the cancellation must reach the
    caller and the slot must come back."""
    res = run_script("cancel_gevent.py", [scenario],
                     {"FASTPOOL_TEST_DSN": dsn, "FASTPOOL_IMPL": impl, "FASTPOOL_TEST_APP": app_name},
                     timeout=60)
    print(f"\n[{scenario}/{impl}] {res}")
    assert res["leaked"] == 0, ("slot leaked", res["states"], res["stats"])
    assert res["getconn_after"] is True, res
    assert res["raised"], ("the cancellation was swallowed", res)


# --------------------------------------------------------------------------------------------
# memory found by the soak: cancelled watchdog timers pile up


def test_cancelled_watchdog_timers_do_not_pile_up(make_pool: Any) -> None:
    """Every guarded round trip on the slow return path (any dirty return; *every* return with
    reset="discard") schedules a ``ROUND_TRIP_TIMEOUT`` (5 s) watchdog and cancels it a few
    milliseconds later, but ``Workers.cancel`` only blanks the heap entry: it stays until its
    5 s are up. Measured with reset="discard", 4 threads: ~80,000 dead entries (+13 MiB RSS) at
    16,000 returns/s, and throughput falling to ~10,000/s once the workers start popping them.
    The heap should hold about as many entries as there are live timers."""
    from fastpool.workers import Workers

    pool = make_pool(min_size=1, max_size=1, reset="discard")
    for _ in range(3000):
        with pool.connection():
            pass
    # every timer heap the pool owns (the watchdog's may be its own Workers, not pool._workers)
    heaps = {name: w._heap for name, w in vars(pool).items() if isinstance(w, Workers)}
    assert heaps, "no Workers found on the pool"
    heap = sum(len(h) for h in heaps.values())
    live = sum(1 for h in heaps.values() for e in h if e[2] is not None)
    print(f"\nafter 3000 returns with reset='discard': {heap} timer entries ({live} live) in "
          f"{ {k: len(h) for k, h in heaps.items()} }")
    assert heap <= 100 + 2 * live, f"{heap} timer entries kept for {live} live timers"
