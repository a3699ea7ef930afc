"""gevent scenarios, one per run: ``python gevent_scenarios.py SCENARIO`` (see _common.py).

Run only as a subprocess of tests/test_green.py: most scenarios monkey-patch the interpreter.
``load_patched_after`` builds (and prewarms) the pool before ``monkey.patch_all()``,
``load_unpatched`` never patches (gevent.spawn only, ``green=True``); every other scenario
uses the usual order, patching first.
"""

from __future__ import annotations

import sys

SCENARIO = sys.argv[1] if len(sys.argv) > 1 else ""
PATCH_FIRST = SCENARIO not in ("load_patched_after", "load_unpatched")

if PATCH_FIRST:
    from gevent import monkey

    monkey.patch_all()

import random  # noqa: E402
import time  # noqa: E402
from time import monotonic  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import psycopg2  # noqa: E402
from psycopg2 import extensions  # noqa: E402

import _common as C  # noqa: E402
import fastpool  # noqa: E402
from fastpool import green as fp_green  # noqa: E402

WORKERS, ROUNDS, MAX = 200, 3, 5


def _busy(seconds: float) -> None:
    """Burn CPU without yielding to the hub (so timers expire while we keep running)."""
    end = monotonic() + seconds
    while monotonic() < end:
        pass


def _callback_name() -> str:
    cb = extensions.get_wait_callback()
    return getattr(cb, "__qualname__", repr(cb))


# -- 1. load: 200 greenlets share max_size=5 ------------------------------------------------------
def _load(pool: object) -> dict:
    res = C.run_load(pool, gevent.spawn, gevent.joinall, gevent.sleep, WORKERS, ROUNDS)
    res["wait_callback"] = _callback_name()
    res["fastpool_callback"] = fp_green.is_fastpool_callback(extensions.get_wait_callback())
    C.check_load(res, MAX)
    C.check(res["fastpool_callback"], "fastpool's wait callback is not registered", res["wait_callback"])
    res["verify"] = C.verify_pool(pool, MAX, sleep=gevent.sleep)
    pool.close()
    return res


def load_patched_first() -> dict:
    pool = C.make_pool(min_size=1, max_size=MAX)
    pool.wait()
    return _load(pool)


def load_patched_after() -> dict:
    # The pool exists (and has prewarmed min_size) before gevent patches anything: what a web
    # app importing its models before the worker patches looks like. Cooperation is decided at
    # use time, so this must still overlap the queries.
    pool = C.make_pool(min_size=1, max_size=MAX)
    pool.wait()
    from gevent import monkey

    monkey.patch_all()
    return _load(pool)


def load_unpatched() -> dict:
    # gevent imported, nothing patched, green=True: waiters must use the hub (not block the
    # thread on a lock that only a hub-run greenlet would release) and queries cooperate.
    pool = C.make_pool(min_size=1, max_size=MAX, green=True)
    pool.wait()
    monkey = sys.modules.get("gevent.monkey")
    C.check(monkey is None or not monkey.is_module_patched("socket"), "socket is patched")
    return _load(pool)


# -- 4a. gevent.Timeout while waiting ------------------------------------------------------------
def cancel_timeout_waiting() -> dict:
    pool = C.make_pool(min_size=2, max_size=2)
    pool.wait()
    held = [pool.getconn(), pool.getconn()]
    t0 = monotonic()
    try:
        with gevent.Timeout(0.1):
            conn = pool.getconn(timeout=5)
        pool.putconn(conn)
        raise AssertionError("getconn() returned a connection from an exhausted pool")
    except gevent.Timeout:
        elapsed = monotonic() - t0
    C.check(elapsed < 1.0, "gevent.Timeout did not interrupt getconn promptly", elapsed)
    C.check(pool.stats()["requests_waiting"] == 0, "cancelled waiter still registered", pool.stats())

    def waiter() -> str:
        try:
            with gevent.Timeout(0.05):
                conn = pool.getconn(timeout=5)
        except gevent.Timeout:
            return "timeout"
        pool.putconn(conn)
        return "got"

    gs = [gevent.spawn(waiter) for _ in range(10)]
    gevent.joinall(gs, timeout=10)
    outcomes = [g.value for g in gs]
    C.check(outcomes == ["timeout"] * 10, "waiters did not all time out", outcomes)
    C.check(pool.stats()["requests_waiting"] == 0, "cancelled waiters still registered", pool.stats())
    # The next returned connection must not go to a cancelled waiter: it goes back to idle.
    pool.putconn(held.pop())
    C.check(pool.stats()["pool_available"] == 1, "returned connection vanished", pool.stats())
    pool.putconn(held.pop())
    verify = C.verify_pool(pool, 2, sleep=gevent.sleep)
    pool.close()
    return {"elapsed": elapsed, "outcomes": outcomes, "verify": verify}


# -- 4b. kill() of a waiter ----------------------------------------------------------------------
class Boom(Exception):
    pass


def cancel_kill_waiter() -> dict:
    pool = C.make_pool(min_size=2, max_size=2)
    pool.wait()
    held = [pool.getconn(), pool.getconn()]
    gs = [gevent.spawn(pool.getconn, timeout=10) for _ in range(6)]
    gevent.sleep(0.05)
    C.check(pool.stats()["requests_waiting"] == 6, "waiters not queued", pool.stats())
    for i, g in enumerate(gs):
        if i % 2:
            g.kill(Boom)  # any exception, not only GreenletExit
        else:
            g.kill()
    C.check(all(g.dead for g in gs), "killed waiters still alive")
    C.check(all(isinstance(g.value, gevent.GreenletExit) for g in gs[0::2]), "kill() not delivered",
            [g.value for g in gs])
    C.check(all(isinstance(g.exception, Boom) for g in gs[1::2]), "kill(Boom) not delivered",
            [g.exception for g in gs])
    C.check(pool.stats()["requests_waiting"] == 0, "killed waiters still registered", pool.stats())
    for c in held:
        pool.putconn(c)
    verify = C.verify_pool(pool, 2, sleep=gevent.sleep)
    pool.close()
    return {"verify": verify}


# -- 4d. a handoff racing a cancellation ---------------------------------------------------------
def cancel_handoff_race_deterministic() -> dict:
    """The three orders of "connection handed over" vs "waiter cancelled", forced."""
    pool = C.make_pool(min_size=1, max_size=1)
    pool.wait()
    out = {}

    # (i) the kill is already scheduled when the connection is handed to the waiter: the waiter
    # dies holding a handed connection, which must go back to the pool.
    held = pool.getconn()
    g = gevent.spawn(pool.getconn, timeout=10)
    gevent.sleep(0.05)
    C.check(pool.stats()["requests_waiting"] == 1, "waiter not queued", pool.stats())
    g.kill(block=False)
    pool.putconn(held)  # handed to g, which has not run since
    g.join()
    C.check(isinstance(g.value, gevent.GreenletExit), "waiter was not killed", g.value)
    st = C.settle(pool, sleep=gevent.sleep)
    C.check(st["pool_available"] == 1 and st["pool_size"] == 1,
            "connection handed to a killed waiter was lost", st)
    out["kill_after_handoff"] = st

    # (ii) a gevent.Timeout that expired before the handoff is processed: whichever wins, the
    # connection ends up either with the waiter (who returns it) or back in the pool.
    def timed_waiter(use_gevent_timeout: bool) -> str:
        try:
            if use_gevent_timeout:
                with gevent.Timeout(0.05):
                    conn = pool.getconn(timeout=5)
            else:
                conn = pool.getconn(timeout=0.05)
        except (gevent.Timeout, fastpool.PoolTimeout) as exc:
            return type(exc).__name__
        pool.putconn(conn)
        return "got"

    for use_gevent_timeout in (True, False):
        held = pool.getconn()
        g = gevent.spawn(timed_waiter, use_gevent_timeout)
        gevent.sleep(0.01)  # g is queued
        _busy(0.1)  # its deadline passes while the hub cannot run
        pool.putconn(held)  # handed to g (still WAITING in the core)
        g.join()
        st = C.settle(pool, sleep=gevent.sleep)
        C.check(st["pool_available"] == 1 and st["requests_waiting"] == 0,
                "timeout racing a handoff lost the connection", g.value, st)
        out["gevent_timeout" if use_gevent_timeout else "pool_timeout"] = g.value
        pool._check_invariants()

    out["verify"] = C.verify_pool(pool, 1, sleep=gevent.sleep)
    pool.close()
    return out


def cancel_race() -> dict:
    """~1 s of churn: holders return connections continuously while waiters with tiny timeouts
    (gevent.Timeout and getconn's own) and a killer cancel waits at random moments."""
    size = 3
    pool = C.make_pool(min_size=size, max_size=size)
    pool.wait()
    counts = {"got": 0, "Timeout": 0, "PoolTimeout": 0, "killed": 0, "holder_cycles": 0}
    stop = [False]
    rnd = random.Random(1234)

    def holder() -> None:
        while not stop[0]:
            try:
                conn = pool.getconn(timeout=1)
            except fastpool.PoolTimeout:
                continue
            gevent.sleep(rnd.uniform(0, 0.002))
            pool.putconn(conn)
            counts["holder_cycles"] += 1
            gevent.sleep(0)

    def waiter() -> None:
        while not stop[0]:
            try:
                if rnd.random() < 0.5:
                    with gevent.Timeout(rnd.uniform(0.0002, 0.003)):
                        conn = pool.getconn(timeout=5)
                else:
                    conn = pool.getconn(timeout=rnd.uniform(0.0002, 0.003))
            except gevent.Timeout:
                counts["Timeout"] += 1
                continue
            except fastpool.PoolTimeout:
                counts["PoolTimeout"] += 1
                continue
            counts["got"] += 1
            pool.putconn(conn)  # no switch between getting and returning: kills land in waits
            gevent.sleep(0)

    holders = [gevent.spawn(holder) for _ in range(size)]
    waiters = [gevent.spawn(waiter) for _ in range(30)]

    def killer() -> None:
        while not stop[0]:
            gevent.sleep(rnd.uniform(0, 0.003))
            i = rnd.randrange(len(waiters))
            waiters[i].kill(block=False)
            counts["killed"] += 1
            waiters[i] = gevent.spawn(waiter)

    k = gevent.spawn(killer)
    gevent.sleep(1.0)
    stop[0] = True
    k.join(timeout=5)
    gevent.joinall(holders + waiters, timeout=10)
    C.check(all(g.dead for g in holders + waiters), "workers did not finish")
    st = C.settle(pool, sleep=gevent.sleep)
    C.check(counts["got"] > 0 and counts["Timeout"] > 0 and counts["PoolTimeout"] > 0
            and counts["killed"] > 0 and counts["holder_cycles"] > 0, "the race did not happen", counts)
    C.check(st["connections_reclaimed"] == 0, "a handed connection was garbage-collected (lost)", st)
    C.check(st["connections_num"] == size and st["returns_bad"] == 0,
            "connections were replaced: one was lost or broken by a cancellation", st)
    verify = C.verify_pool(pool, size, sleep=gevent.sleep)
    pool.close()
    return {"counts": counts, "verify": verify}


# -- 4e. kill/timeout of a greenlet holding a connection mid-query --------------------------------
def _holder_midquery(cancel: str) -> dict:
    pool = C.make_pool(min_size=2, max_size=2)
    pool.wait()
    started = gevent.event.Event()
    box: dict = {}

    def holder() -> str:
        def body() -> None:
            with pool.connection() as conn:
                box["conn"] = conn
                box["pid"] = C.backend_pid(conn)
                started.set()
                with conn.cursor() as cur:
                    cur.execute("SELECT pg_sleep(5)")
        if cancel == "timeout":
            try:
                with gevent.Timeout(0.3):
                    body()
            except gevent.Timeout:
                return "timed out"
            return "finished"
        body()
        return "finished"

    g = gevent.spawn(holder)
    C.check(started.wait(5), "holder never started")
    gevent.sleep(0.1)
    st = pool.stats()
    C.check(st["pool_available"] == st["pool_size"] - 1, "holder does not hold a connection", st)
    t0 = monotonic()
    if cancel == "kill":
        g.kill()
    g.join(5)
    elapsed = monotonic() - t0
    C.check(g.dead, "holder still running")
    if cancel == "kill":
        C.check(isinstance(g.value, gevent.GreenletExit), "holder was not killed", g.value)
    else:
        C.check(g.value == "timed out", "holder was not timed out", g.value)
    C.check(elapsed < 2.0, "cancelling a running query waited for it to finish", elapsed)
    conn = box.pop("conn")
    C.check(conn.closed, "a connection cancelled mid-query must be discarded, not reused")
    verify = C.verify_pool(pool, 2, sleep=gevent.sleep, forbidden_pids={box["pid"]})
    st = pool.stats()
    C.check(st["connections_reclaimed"] == 0, "slot recovered by GC instead of by the return", st)
    pool.close()
    return {"elapsed": elapsed, "verify": verify}


def kill_holder_midquery() -> dict:
    return _holder_midquery("kill")


def timeout_holder_midquery() -> dict:
    return _holder_midquery("timeout")


# -- cancellations landing inside the pool's own I/O ----------------------------------------------
def _autocommit(conn: object) -> None:
    conn.autocommit = True


def _cancel_during_health_check(autocommit: bool) -> dict:
    """check="ping": getconn's health check is a round trip, i.e. a hub switch. A kill that lands
    there must propagate (not be swallowed) and must not leak the slot."""
    pool = C.make_pool(min_size=1, max_size=1, check="ping",
                       configure=_autocommit if autocommit else None)
    pool.wait()
    box: dict = {}

    def victim() -> str:
        conn = pool.getconn(timeout=5)
        box["swallowed"] = True  # the kill did not stop us
        pool.putconn(conn)
        return "got a connection"

    g = gevent.spawn(victim)
    gevent.spawn(g.kill, block=False)  # runs at g's first switch: inside the ping's I/O
    g.join(10)
    problems = []
    if box.get("swallowed") or not isinstance(g.value, gevent.GreenletExit):
        problems.append(f"kill() was swallowed: the victim went on and returned {g.value!r}")
    st = C.settle(pool, timeout=2, sleep=gevent.sleep)
    if st["pool_available"] != st["pool_size"]:
        problems.append(f"slot leaked: states {pool._slot_states()} stats {st}")
    C.check(not problems, "cancellation during the health check: " + "; ".join(problems))
    verify = C.verify_pool(pool, 1, sleep=gevent.sleep)
    pool.close()
    return {"verify": verify}


def cancel_during_health_check() -> dict:
    return _cancel_during_health_check(autocommit=False)


def cancel_during_health_check_autocommit() -> dict:
    return _cancel_during_health_check(autocommit=True)


def _cancel_during_reset(autocommit: bool) -> dict:
    """reset="discard": putconn runs DISCARD ALL, a hub switch. A kill landing there must
    propagate and must not leak the slot."""
    pool = C.make_pool(min_size=1, max_size=1, reset="discard",
                       configure=_autocommit if autocommit else None)
    pool.wait()
    box: dict = {}

    def victim() -> str:
        conn = pool.getconn(timeout=5)
        gevent.spawn(gevent.getcurrent().kill, block=False)
        pool.putconn(conn)  # first switch: the reset round trip (DISCARD ALL)
        box["swallowed"] = True
        return "returned"

    g = gevent.spawn(victim)
    g.join(10)
    problems = []
    if box.get("swallowed") or not isinstance(g.value, gevent.GreenletExit):
        problems.append(f"kill() was swallowed: the victim went on and returned {g.value!r}")
    st = C.settle(pool, timeout=2, sleep=gevent.sleep)
    if st["pool_available"] != st["pool_size"]:
        problems.append(f"slot leaked: states {pool._slot_states()} stats {st}")
    C.check(not problems, "cancellation during the reset on return: " + "; ".join(problems))
    verify = C.verify_pool(pool, 1, sleep=gevent.sleep)
    pool.close()
    return {"verify": verify}


def cancel_during_reset() -> dict:
    return _cancel_during_reset(autocommit=False)


def cancel_during_reset_autocommit() -> dict:
    return _cancel_during_reset(autocommit=True)


def cancel_during_pool_growth() -> dict:
    """A waiter whose enqueue makes the pool grow may switch there (starting a background worker
    is a switch once threading is patched). A kill landing at that moment must unregister it."""

    def slow_connect(conninfo: str, **kwargs: object) -> object:
        time.sleep(0.3)  # patched: cooperative; keeps the worker busy
        return psycopg2.connect(conninfo, **kwargs)

    pool = C.make_pool(min_size=0, max_size=3, connect=slow_connect)
    gevent.sleep(0.05)
    w1 = gevent.spawn(pool.getconn, timeout=5)  # the idle maintenance worker starts connecting
    gevent.sleep(0.05)
    w2 = gevent.spawn(pool.getconn, timeout=5)  # every worker busy: its enqueue starts one
    gevent.spawn(w2.kill, block=False)  # runs at w2's first switch
    w2.join(5)
    C.check(isinstance(w2.value, gevent.GreenletExit), "w2 was not killed", w2.value)
    waiting = pool.stats()["requests_waiting"]
    conn = w1.get(timeout=5)
    pool.putconn(conn)
    gevent.sleep(0.8)  # the connection started for w2 arrives
    st = C.settle(pool, timeout=2, sleep=gevent.sleep)
    problems = []
    if waiting != 1:
        problems.append(f"killed waiter still registered: requests_waiting={waiting} with one live waiter")
    if st["pool_available"] != st["pool_size"] or st["connections_reclaimed"]:
        problems.append(f"a connection was handed to the killed waiter: states {pool._slot_states()} "
                        f"stats {st}")
    C.check(not problems, "; ".join(problems))
    verify = C.verify_pool(pool, 3, sleep=gevent.sleep)
    pool.close()
    return {"verify": verify}


# -- 7. many waiters, one hub timer ----------------------------------------------------------------
def timeout_many_waiters_one_timer() -> dict:
    """N parked greenlets cost one loop timer, not N; every timeout still fires on its own
    deadline (never early), a shorter one passed later fires first, and handoffs stay FIFO."""
    pool = C.make_pool(min_size=1, max_size=1, timeout=0.5)
    pool.wait()
    held = pool.getconn()
    hub = gevent.get_hub()
    gevent.sleep(0.01)
    before = hub.loop.activecnt
    outcomes: list = []

    def waiter(i: int, timeout: object) -> None:
        t0 = monotonic()
        try:
            conn = pool.getconn() if timeout is None else pool.getconn(timeout=timeout)
        except fastpool.PoolTimeout:
            outcomes.append((i, "timeout", monotonic() - t0))
            return
        pool.putconn(conn)
        outcomes.append((i, "got", monotonic() - t0))

    n = 50
    gs = [gevent.spawn(waiter, i, None) for i in range(n)]
    gevent.sleep(0.05)
    parked = hub.loop.activecnt - before
    C.check(pool.stats()["requests_waiting"] == n, "waiters not parked", pool.stats())
    C.check(parked <= 2, f"{n} parked waiters hold {parked} active loop watchers (want one timer)")
    gs.append(gevent.spawn(waiter, n, 0.1))  # an earlier deadline than the queue's tail
    gevent.joinall(gs, timeout=10)
    C.check(len(outcomes) == n + 1, "waiters did not finish", outcomes)
    C.check(outcomes[0][0] == n and outcomes[0][1] == "timeout",
            "the shorter timeout did not fire first", outcomes[:3])
    late = [o for o in outcomes if o[0] < n and not (o[1] == "timeout" and 0.45 <= o[2] < 5.0)]
    C.check(not late, "default-timeout waiters did not time out on their deadline", late[:5])
    C.check(pool.stats()["requests_waiting"] == 0, "timed-out waiters still registered", pool.stats())

    # Handoffs through the same machinery stay first come, first served.
    order: list = []

    def taker(i: int) -> None:
        conn = pool.getconn(timeout=5)
        order.append(i)
        gevent.sleep(0)
        pool.putconn(conn)

    gs = [gevent.spawn(taker, i) for i in range(20)]
    gevent.sleep(0.05)
    pool.putconn(held)
    gevent.joinall(gs, timeout=10)
    C.check(order == list(range(20)), "handoffs were not FIFO", order)
    verify = C.verify_pool(pool, 1, sleep=gevent.sleep)
    pool.close()
    return {"parked_watchers": parked, "verify": verify}


# -- a closed connection's fd number reused by the next connection ---------------------------------
def reuse_fd_after_close() -> dict:
    """A query on a new connection that got a closed connection's fd number, with no hub
    iteration in between, must wake up. The wait callback once kept its watchers per fd number:
    libev re-registers an fd with the kernel only when a watcher is new or its events change,
    so the restarted watcher waited on a socket the kernel never reported (a hang)."""
    fp_green.ensure_wait_callback(True)  # what a pool does at its first cooperative wait
    cb = extensions.get_wait_callback()
    C.check(fp_green.is_fastpool_callback(cb), "fastpool's wait callback is not registered", _callback_name())
    rounds = []

    def run() -> None:
        a = psycopg2.connect(C.DSN)
        with a.cursor() as cur:  # a read wait: the watcher for a's fd is made and stopped
            cur.execute("SELECT 1")
        fd = a.fileno()
        for _ in range(3):
            a.close()
            extensions.set_wait_callback(None)  # connect without a switch: no loop iteration
            try:
                b = psycopg2.connect(C.DSN)
            finally:
                extensions.set_wait_callback(cb)
            with b.cursor() as cur:  # the first wait on the reused fd number
                cur.execute("SELECT pg_sleep(0.01), 2")
                rounds.append((fd, b.fileno(), cur.fetchone()[1]))
            a, fd = b, b.fileno()
        a.close()

    g = gevent.spawn(run)
    g.join(timeout=10)
    C.check(g.dead, "a query on a reused fd number never woke up (stale watcher)", rounds)
    g.get()
    C.check(len(rounds) == 3 and all(r[2] == 2 for r in rounds), "rounds did not complete", rounds)
    C.check(any(r[0] == r[1] for r in rounds), "the fd number was never reused: the scenario proved nothing", rounds)
    return {"rounds": rounds}


# -- the hub's wait path, each promise (shared with eventlet: _common.park_*) ----------------------
_HUB = C.Hub(gevent.spawn, lambda g: g.get(), lambda g, exc: g.kill(exc, block=False), gevent.sleep)


def park_close_while_parked() -> dict:
    return C.park_close_while_parked(_HUB)


def park_stepped_timeouts() -> dict:
    return C.park_stepped_timeouts(_HUB)


def park_handoff_checked() -> dict:
    return C.park_handoff_checked(_HUB)


def park_max_waiting() -> dict:
    return C.park_max_waiting(_HUB)


SCENARIOS = {name: fn for name, fn in globals().items()
             if callable(fn) and not name.startswith("_") and fn.__module__ == __name__
             and name.split("_")[0] in ("load", "cancel", "kill", "timeout", "reuse", "park")}

if __name__ == "__main__":
    C.scenario_main(SCENARIOS, SCENARIO)
