"""fork() scenarios, one per run: ``python fork_scenarios.py SCENARIO`` (see _common.py).

Forking from a small script instead of from pytest keeps pytest's own threads, fixtures and
exit handling out of the child: here the child can exit the normal way (``sys.exit`` with
finalizers), which is exactly what could send libpq's Terminate down an inherited socket.

* ``fork_child_uses_pool``: the parent holds one borrowed connection and has idle ones; two
  children fork in turn -- the first uses the pool then drops everything and exits with
  finalizers, the second closes the pool explicitly. The parent's sessions must be untouched.
* ``multiprocessing_fork``: two ``multiprocessing`` children (fork start method) query through
  the inherited pool.
* ``control_plain_close``: CONTROL. ``fastpool.fork.neutralise`` is replaced by a plain
  ``conn.close()``; the same fork must then kill the parent's session -- proof that the other
  scenarios can detect the damage they guard against.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import sys
import traceback
from typing import Any, Dict, List

import _common as C
import fastpool.fork

MIN = 3
MAX = 5


def _parent_setup() -> Dict[str, Any]:
    pool = C.make_pool(min_size=MIN, max_size=MAX)
    pool.wait()
    conns = [pool.getconn(timeout=5) for _ in range(MIN)]
    pids = [C.backend_pid(c) for c in conns]
    held = conns.pop(0)
    for c in conns:
        pool.putconn(c)  # idle again
    st = pool.stats()
    C.check(st["pool_size"] == MIN and st["pool_available"] == MIN - 1, "setup", st)
    return {"pool": pool, "held": held, "held_pid": pids[0], "idle_pids": set(pids[1:])}


def _child_uses_pool(pool: Any, held: Any, parent_pids: set) -> Dict[str, Any]:
    """In the child: the pool starts empty and makes connections of its own."""
    st0 = pool.stats()
    conns = [pool.getconn(timeout=10) for _ in range(MIN)]
    pids = [C.backend_pid(c) for c in conns]
    for c in conns:
        pool.putconn(c)
    pool._check_invariants()
    return {"stats_after_fork": st0, "pids": pids, "inherited_held_closed": int(held.closed)}


def _fork_child(pool: Any, held: Any, parent_pids: set, close_pool: bool) -> Dict[str, Any]:
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # ---- child
        os.close(r)
        code = 0
        try:
            out = _child_uses_pool(pool, held, parent_pids)
            if close_pool:
                pool.close()
        except BaseException:
            out = {"error": traceback.format_exc()}
            code = 1
        with os.fdopen(w, "w") as f:
            f.write(json.dumps(out))
        # Drop everything (the inherited borrowed connection too) and exit normally: module
        # teardown and finalizers run, closing whatever is still open.
        del held
        gc.collect()
        sys.exit(code)
    os.close(w)  # ---- parent
    with os.fdopen(r) as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    out = json.loads(data) if data else {"error": "child wrote nothing"}
    out["exit_status"] = status
    return out


def _check_parent(env: Dict[str, Any], admin: Any, child_pids: set) -> Dict[str, Any]:
    pool, held = env["pool"], env["held"]
    parent_pids = {env["held_pid"]} | env["idle_pids"]
    # the borrowed connection still works, on the same session
    C.check(not held.closed, "parent's borrowed connection was closed")
    C.check(C.backend_pid(held) == env["held_pid"], "parent's borrowed connection changed session")
    alive = C.server_pids(admin)
    C.check(parent_pids <= alive, "a parent session was terminated", parent_pids - alive)
    # the idle ones are the same sessions, and none was found dead on checkout
    conns = [pool.getconn(timeout=5) for _ in range(MIN - 1)]
    idle_pids = {C.backend_pid(c) for c in conns}
    for c in conns:
        pool.putconn(c)
    C.check(idle_pids == env["idle_pids"], "parent's idle connections were replaced",
            idle_pids, env["idle_pids"])
    pool.putconn(held)
    st = pool.stats()
    C.check(st["connections_lost"] == 0, "parent lost connections", st)
    C.check(st["connections_num"] == MIN, "parent had to reconnect", st)
    # the children's sessions ended with the children
    gone = C.wait_for(lambda: not (C.server_pids(admin) & child_pids), timeout=5)
    C.check(gone, "a child's session outlived the child", C.server_pids(admin) & child_pids)
    verify = C.verify_pool(pool, MAX)
    return {"verify": verify}


def fork_child_uses_pool() -> dict:
    env = _parent_setup()
    parent_pids = {env["held_pid"]} | env["idle_pids"]
    children: List[Dict[str, Any]] = []
    child_pids: set = set()
    for close_pool in (False, True):
        out = _fork_child(env["pool"], env["held"], parent_pids, close_pool)
        C.check("error" not in out, "child failed", out.get("error"))
        C.check(out["exit_status"] == 0, "child exited abnormally", out)
        C.check(out["stats_after_fork"]["requests_waiting"] == 0, "child inherited waiters", out)
        pids = set(out["pids"])
        C.check(len(pids) == MIN, "child connections are not distinct", out)
        C.check(not pids & parent_pids, "child was handed a parent session", pids & parent_pids)
        child_pids |= pids
        children.append(out)
        # the parent is fine after each child
        C.check(C.backend_pid(env["held"]) == env["held_pid"], "parent's held connection broke")
    # (the inspection connection is opened only now: a child would inherit it, and closing it
    # at exit would end its session -- the very hazard under test, for a non-pool connection)
    admin = C.admin_connection()
    result = _check_parent(env, admin, child_pids)
    env["pool"].close()
    admin.close()
    return {"children": children, **result}


def _mp_child(pool: Any, queue: Any, parent_pids: List[int]) -> None:
    try:
        conns = [pool.getconn(timeout=10) for _ in range(2)]
        pids = [C.backend_pid(c) for c in conns]
        for _ in range(3):
            with pool.connection() as conn:
                with conn.cursor() as cur:
                    cur.execute("SELECT count(*) FROM generate_series(1, 1000)")
                    cur.fetchone()
        for c in conns:
            pool.putconn(c)
        pool._check_invariants()
        out = {"pids": pids, "stats": pool.stats()}
    except BaseException:
        out = {"error": traceback.format_exc()}
    queue.put(out)


_MP_POOL: Any = None


def _mp_target(queue: Any, parent_pids: List[int]) -> None:
    _mp_child(_MP_POOL, queue, parent_pids)  # the pool inherited through fork, not pickled


def multiprocessing_fork() -> dict:
    global _MP_POOL
    env = _parent_setup()
    _MP_POOL = env["pool"]
    parent_pids = sorted({env["held_pid"]} | env["idle_pids"])
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_mp_target, args=(queue, parent_pids)) for _ in range(2)]
    for p in procs:
        p.start()
    outs = [queue.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(30)
    C.check(all(p.exitcode == 0 for p in procs), "a child failed", [p.exitcode for p in procs])
    admin = C.admin_connection()  # only now: see fork_child_uses_pool
    child_pids: set = set()
    for out in outs:
        C.check("error" not in out, "child failed", out.get("error"))
        pids = set(out["pids"])
        C.check(not pids & set(parent_pids), "child was handed a parent session", out)
        child_pids |= pids
    C.check(len(child_pids) == 4, "children shared sessions", outs)
    result = _check_parent(env, admin, child_pids)
    env["pool"].close()
    admin.close()
    return {"children": outs, **result}


def control_plain_close() -> dict:
    """CONTROL: without the guard the child's close() ends the parent's sessions."""

    def plain_close(conn: Any) -> None:
        conn.close()

    fastpool.fork.neutralise = plain_close  # looked up at fork time by Pool._after_fork_in_child
    env = _parent_setup()
    parent_pids = {env["held_pid"]} | env["idle_pids"]
    out = _fork_child(env["pool"], env["held"], parent_pids, close_pool=False)
    admin = C.admin_connection()  # only now: see fork_child_uses_pool
    C.check("error" not in out and out["exit_status"] == 0, "child failed", out)
    gone = C.wait_for(lambda: not (C.server_pids(admin) & parent_pids), timeout=5)
    held_broken = False
    try:
        C.backend_pid(env["held"])
    except Exception:
        held_broken = True
    C.check(gone, "CONTROL: parent sessions survived a plain close() in the child: "
                  "the fork tests could not detect the damage", C.server_pids(admin) & parent_pids)
    C.check(held_broken, "CONTROL: parent's borrowed connection still works")
    try:
        env["pool"].putconn(env["held"])
    except Exception:
        pass
    env["pool"].close()
    admin.close()
    return {"parent_sessions_killed": True, "held_broken": held_broken}


SCENARIOS = {
    "fork_child_uses_pool": fork_child_uses_pool,
    "multiprocessing_fork": multiprocessing_fork,
    "control_plain_close": control_plain_close,
}

if __name__ == "__main__":
    C.scenario_main(SCENARIOS, sys.argv[1] if len(sys.argv) > 1 else "")
