"""Greenlets: N greenlets sharing a pool of ``size`` connections, under gevent (or eventlet).

Every contender runs in its own subprocess, because monkey-patching is per process::

    python -c <bootstrap> --one NAME --hub gevent --dsn DSN --app APP --greenlets 1000 ...

The bootstrap monkey-patches *first* (as a gunicorn/celery gevent worker does), then runs this
module as ``__main__`` (``python -m fastpool_bench.green --one NAME ...`` works by hand too; it
patches as soon as it starts).  The child opens its pool, runs the scenario and prints one
``RESULT {json}`` line.  Meanwhile the parent (never patched) samples the server from a plain
thread with its own connection: ``count(*)`` of ``pg_stat_activity`` rows carrying the child's
unique ``application_name``, every ~20 ms, for the child's whole life -- the peak is the number
of server connections the contender really used.

Scenario, per contender: ``greenlets`` greenlets start together (one event) and each does
``cycles`` times: checkout, ``SELECT 1`` + fetch, commit, return.  The time a checkout takes is
the caller's wait.  One warm-up pass (every greenlet, one cycle) precedes the timed one.

Contenders (same run, same hub):

* ``fastpool-c`` / ``fastpool-python``: ``pool_class(impl)(dsn, min_size=size, max_size=size)``;
  no psycogreen -- fastpool registers its own cooperative wait callback (``green="auto"``) once
  it sees ``socket`` patched;
* ``dbutils``: DBUtils ``PooledDB(maxconnections=size, blocking=True)`` + psycogreen;
* ``sqlalchemy``: SQLAlchemy ``QueuePool(pool_size=size, max_overflow=0)`` + psycogreen;
* ``psycopg_pool``: psycopg 3 ``ConnectionPool(min_size=max_size=size)``, as is (psycopg 3 has
  no wait callback; it cooperates when ``select`` is patched);
* ``hubqueue``: a reference floor, not a product -- the hub's own ``Queue`` holding ``size``
  psycopg2 connections + psycogreen: sharing connections between greenlets with no pool logic
  at all (no health check, no reset, no timeout).  It barges: a greenlet that returns a
  connection takes one straight back while others wait, so ~``size`` greenlets stay hot;
* ``fairq``: the fair reference, not a product -- ``refpools.FairQueue``: a free list and a FIFO
  of parked greenlets on the hub's own primitives, a return handing the connection to the
  oldest waiter, + psycogreen.  The least first come, first served can cost: fastpool vs
  ``fairq`` is fastpool's own code, ``fairq`` vs ``hubqueue`` is the price of fairness;
* ``nopool``: the limit -- ``size`` greenlets each owning one psycopg2 connection, running the
  same total number of queries (``greenlets * cycles``, split evenly).  psycogreen's wait
  callback, or fastpool's own when psycogreen is not installed.

Each contender's queries/s is reported as a share of the no-pool limit (median over ``repeat``
rounds, contenders interleaved round by round).  Targets for fastpool: >= 95 % of the no-pool
limit and >= 1.0x the hub-Queue reference (when it runs), peak server connections == size, 0
errors; fastpool vs the fair reference is reported beside it (not a target: a yardstick).

The detailed command line (``benchmarks/bench_green.py`` has the same options)::

    python -m fastpool_bench.green [--dsn DSN] [--hub gevent|eventlet] [--greenlets 1000]
        [--size 10] [--cycles 20] [--repeat 3] [--quick] [--only NAMES] [--busy N] [--json FILE]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from . import REF

CONTENDERS = ["fastpool-c", "fastpool-python", "dbutils", "sqlalchemy", "psycopg_pool", "hubqueue",
              "fairq", "nopool"]
#: also runnable with --only: fastpool's C core with the hub's usual psycopg2 callback instead of
#: fastpool's own (eventlet: the one eventlet.monkey_patch() registers; gevent: psycogreen's)
EXTRA_CONTENDERS = ["fastpool-c+hubcb"]
LABELS = {
    "fastpool-c": "fastpool (C core)",
    "fastpool-python": "fastpool (python core)",
    "fastpool-c+hubcb": "fastpool (C core), hub's own callback",
    "dbutils": "DBUtils PooledDB + psycogreen",
    "sqlalchemy": "SQLAlchemy QueuePool + psycogreen",
    "psycopg_pool": "psycopg_pool (psycopg 3)",
    "hubqueue": "ref: hub Queue of conns + psycogreen",
    "fairq": "ref: fair FIFO hand-off + psycogreen",
    "nopool": "no pool: size conns, 1 per greenlet",
}
# --quick leaves out the python core and the two references: one subprocess each is most of this
# scenario's time.
QUICK_CONTENDERS = ["fastpool-c", "dbutils", "sqlalchemy", "psycopg_pool", "nopool"]
FASTPOOL = ("fastpool-c", "fastpool-python", "fastpool-c+hubcb")
NEEDS_PSYCOGREEN = ("dbutils", "sqlalchemy", "hubqueue", "fairq")
#: the reference pools: yardsticks for fastpool, not products
REFERENCES = ("hubqueue", "fairq")
TARGET_SHARE = 0.95  # issue 14, goal 1
TARGET_VS_HUBQUEUE = 1.0  # ... and at least the unfair hub-Queue reference, same run
RESULT_TAG = "RESULT "

NORMAL = dict(greenlets=1000, size=10, cycles=20, repeat=3, timeout=120.0, sample_ms=20.0)
QUICK = dict(greenlets=1000, size=10, cycles=4, repeat=1, timeout=60.0, sample_ms=20.0)

# Run as ``python -c _BOOT --one NAME --hub HUB ...``: patch before fastpool (or anything that
# could capture a blocking primitive) is imported, then run this module as __main__.
_BOOT = """\
import sys
hub = sys.argv[sys.argv.index("--hub") + 1]
if hub == "gevent":
    from gevent import monkey
    monkey.patch_all()
else:
    import warnings
    warnings.filterwarnings("ignore", module="eventlet")
    warnings.filterwarnings("ignore", message=".*[Ee]ventlet is deprecated.*")
    import eventlet
    eventlet.monkey_patch()
import runpy
runpy.run_module("fastpool_bench.green", run_name="__main__", alter_sys=True)
"""


# ============================================================================= child


def _patch(hub: str) -> None:
    """Monkey-patch for ``hub`` unless it is already done (the bootstrap does it first)."""
    if hub == "gevent":
        from gevent import monkey

        if not monkey.is_module_patched("socket"):
            monkey.patch_all()
    else:
        import warnings

        warnings.filterwarnings("ignore", module="eventlet")
        warnings.filterwarnings("ignore", message=".*[Ee]ventlet is deprecated.*")
        import eventlet
        import eventlet.patcher

        if not eventlet.patcher.is_monkey_patched("socket"):
            eventlet.monkey_patch()


class Hub:
    """The few hub operations the scenario needs, for gevent or eventlet."""

    def __init__(self, kind: str):
        self.kind = kind
        if kind == "gevent":
            import gevent
            import gevent.event
            import gevent.queue

            self.version = f"gevent {gevent.__version__}"
            self.spawn = gevent.spawn
            self.joinall = gevent.joinall
            self.Event = gevent.event.Event
            self.Queue = gevent.queue.Queue
        else:
            import eventlet
            import eventlet.queue

            self.version = f"eventlet {eventlet.__version__}"
            self.spawn = eventlet.spawn
            self.joinall = _eventlet_joinall
            self.Event = _EventletEvent
            self.Queue = eventlet.queue.Queue

    def patch_psycopg2(self) -> str:
        """psycogreen's wait callback if installed, else fastpool's; returns which."""
        try:
            if self.kind == "gevent":
                import psycogreen.gevent as green
            else:
                import psycogreen.eventlet as green
        except ImportError:
            from fastpool.green import ensure_wait_callback

            ensure_wait_callback(True)
            return "fastpool"
        green.patch_psycopg()
        return "psycogreen"


def _eventlet_joinall(gs: list) -> None:
    for g in gs:
        g.wait()


class _EventletEvent:
    """set()/wait() over eventlet's one-shot Event (send())."""

    def __init__(self) -> None:
        import eventlet.event

        self._ev = eventlet.event.Event()

    def set(self) -> None:
        self._ev.send(True)

    def wait(self) -> None:
        self._ev.wait()


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def _run_pass(hub: Hub, greenlets: int, cycles_of: Callable[[int], int],
              checkout_of: Callable[[int], tuple]) -> dict:
    """Spawn the greenlets, release them together, return the measurements.

    cycles_of(i): how many cycles greenlet i does; checkout_of(i): its (get, put) pair.
    """
    clock = time.perf_counter
    waits: list = []
    errors: list = []
    done = [0]
    busy = [0, 0]  # connections checked out now, most ever at once
    start = hub.Event()

    def worker(n: int, get: Callable, put: Callable) -> None:
        start.wait()
        record = waits.append
        for _ in range(n):
            t0 = clock()
            try:
                conn = get()
            except Exception as exc:
                errors.append(f"checkout: {type(exc).__name__}: {exc}".strip())
                continue
            record(clock() - t0)
            busy[0] += 1
            if busy[0] > busy[1]:
                busy[1] = busy[0]
            try:
                cur = conn.cursor()
                cur.execute("SELECT 1")
                cur.fetchone()
                cur.close()
                conn.commit()
                done[0] += 1
            except Exception as exc:
                errors.append(f"query: {type(exc).__name__}: {exc}".strip())
                try:
                    conn.rollback()
                except Exception:
                    pass
            finally:
                busy[0] -= 1
                try:
                    put(conn)
                except Exception as exc:
                    errors.append(f"return: {type(exc).__name__}: {exc}".strip())

    gs = [hub.spawn(worker, cycles_of(i), *checkout_of(i)) for i in range(greenlets)]
    time.sleep(0.05)  # patched: lets every greenlet reach start.wait()
    cpu0 = _cpu()
    wall0 = time.time()
    t0 = clock()
    start.set()
    hub.joinall(gs)
    elapsed = clock() - t0
    wall1 = time.time()
    cpu = _cpu() - cpu0
    return {
        "elapsed_s": elapsed,
        "window": [wall0, wall1],
        "queries": done[0],
        "qps": done[0] / elapsed if elapsed > 0 else 0.0,
        "client_cpu_us_per_query": (cpu / done[0] * 1e6) if done[0] else None,
        "waits": waits,
        "max_in_flight": busy[1],
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:5],
    }


def _pct(values: list, q: float) -> Optional[float]:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q * (len(s) - 1)))))]


def child_main(args: Any) -> int:
    """One contender, in a monkey-patched process; prints one ``RESULT {json}`` line."""
    from . import peers

    name = args.one
    hub = Hub(args.hub)
    import psycopg2
    from psycopg2 import extensions

    app = args.app or f"fpgreen-{os.getpid()}"
    app_dsn = extensions.make_dsn(args.dsn, application_name=app)
    size, greenlets, cycles = args.size, args.greenlets, args.cycles
    info: Dict[str, Any] = {"name": name, "hub": args.hub, "hub_version": hub.version, "app": app,
                            "pid": os.getpid()}
    conns: list = []
    adapter = None
    if name == "nopool":
        info["wait_callback_from"] = hub.patch_psycopg2()
        conns = [psycopg2.connect(app_dsn) for _ in range(size)]
        info["version"] = psycopg2.__version__.split()[0]
    elif name == "hubqueue":
        info["wait_callback_from"] = hub.patch_psycopg2()
        q = hub.Queue()
        conns = [psycopg2.connect(app_dsn) for _ in range(size)]
        for c in conns:
            q.put(c)
        info["version"] = hub.version
        adapter = peers.Adapter("hubqueue", "psycopg2", q, q.get, q.put)
    elif name == "fairq":
        from .refpools import FairQueue

        info["wait_callback_from"] = hub.patch_psycopg2()
        conns = [psycopg2.connect(app_dsn) for _ in range(size)]
        fq = FairQueue(args.hub, conns)
        info["version"] = hub.version
        adapter = peers.Adapter("fairq", "psycopg2", fq, fq.get, fq.put)
    elif name == "fastpool-c+hubcb":
        spec = peers.get_spec("fastpool-c")
        info["version"] = spec.version
        options: Dict[str, Any] = {"kwargs": {"application_name": app}}
        if args.hub == "gevent":
            info["wait_callback_from"] = hub.patch_psycopg2()  # fastpool keeps a callback it finds
        else:
            options["green"] = False  # keeps the callback eventlet.monkey_patch() registered
        adapter = spec.make(args.dsn, size, **options)
    else:
        spec = peers.get_spec(name)
        if not spec.available():
            print(RESULT_TAG + json.dumps({**info, "status": "n/a", "note": spec.note}), flush=True)
            return 0
        info["version"] = spec.version
        if name in FASTPOOL:
            # no psycogreen: fastpool installs its own callback (green="auto")
            extra = {} if args.checkout_timeout is None else {"timeout": args.checkout_timeout}
            adapter = spec.make(args.dsn, size, kwargs={"application_name": app}, **extra)
        elif name == "psycopg_pool":
            adapter = spec.make(app_dsn, size)
        else:
            info["wait_callback_from"] = hub.patch_psycopg2()
            adapter = spec.make(app_dsn, size)
    cb = extensions.get_wait_callback()
    info["psycopg2_wait_callback"] = None if cb is None else f"{cb.__module__}.{getattr(cb, '__qualname__', type(cb).__qualname__)}"

    if name == "nopool":
        # one connection per greenlet, `size` greenlets doing all the queries between them
        base, extra = divmod(greenlets * cycles, size)
        own = [(lambda c=c: c, lambda c: None) for c in conns]
        warm = _run_pass(hub, size, lambda i: max(1, greenlets // size), own.__getitem__)
        res = _run_pass(hub, size, lambda i: base + (1 if i < extra else 0), own.__getitem__)
        res["waits"] = []
    else:
        pair = (adapter.get, adapter.put)
        warm = _run_pass(hub, greenlets, lambda i: 1, lambda i: pair)
        res = _run_pass(hub, greenlets, lambda i: cycles, lambda i: pair)

    waits = res.pop("waits")
    warm.pop("waits")
    out = {**info, "status": "ok", **res,
           "expected_queries": greenlets * cycles,
           "wait_p50_ms": None if not waits else _pct(waits, 0.50) * 1e3,
           "wait_p99_ms": None if not waits else _pct(waits, 0.99) * 1e3,
           "wait_max_ms": None if not waits else max(waits) * 1e3,
           "warmup_errors": warm["errors"], "warmup_error_samples": warm["error_samples"]}
    if adapter is not None and name in FASTPOOL:
        try:
            out["pool_stats"] = adapter.raw.stats()
        except Exception as exc:
            out["pool_stats"] = f"{type(exc).__name__}: {exc}"
    try:
        if adapter is not None:
            adapter.close()
        for c in conns:
            c.close()
    except Exception as exc:
        out["close_error"] = f"{type(exc).__name__}: {exc}"
    print(RESULT_TAG + json.dumps(out, default=str), flush=True)
    return 0


# ============================================================================= parent


class Sampler:
    """Plain thread, unpatched connection: pg_stat_activity rows for one application_name."""

    def __init__(self, dsn: str, app: str, interval: float):
        import psycopg2

        self.app = app
        self.interval = interval
        self.samples: list = []  # (time.time(), count)
        self._stop = threading.Event()
        self._conn = psycopg2.connect(dsn, application_name="fastpool-bench-green-sampler")
        self._conn.autocommit = True  # a fresh pg_stat_activity snapshot at every query
        self._thread = threading.Thread(target=self._run, daemon=True, name="bench-green-sampler")

    def _run(self) -> None:
        cur = self._conn.cursor()
        while not self._stop.is_set():
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                        (self.app,))
            self.samples.append((time.time(), cur.fetchone()[0]))
            self._stop.wait(self.interval)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(5)
        self._conn.close()

    def peak(self, window: Optional[list] = None) -> int:
        if window is None:
            vals = [c for _, c in self.samples]
        else:
            lo, hi = window
            vals = [c for t, c in self.samples if lo <= t <= hi]
        return max(vals) if vals else 0


def child_command(name: str, hub: str, dsn: str, app: str, cfg: dict) -> List[str]:
    cmd = [sys.executable, "-c", _BOOT, "--one", name, "--hub", hub, "--dsn", dsn, "--app", app,
           "--greenlets", str(cfg["greenlets"]), "--size", str(cfg["size"]),
           "--cycles", str(cfg["cycles"])]
    if cfg.get("checkout_timeout") is not None:
        cmd += ["--checkout-timeout", str(cfg["checkout_timeout"])]
    return cmd


def run_child(dsn: str, cfg: dict, hub: str, name: str, rnd: int) -> dict:
    app = f"fpgreen-{os.getpid()}-{name}-{rnd}"[:63]
    cmd = child_command(name, hub, dsn, app, cfg)
    env = dict(os.environ)
    # The child must import these benchmarks and the fastpool the parent measures, even from a
    # bare checkout.
    import fastpool

    roots = (str(Path(__file__).resolve().parent.parent), str(Path(fastpool.__file__).resolve().parent.parent))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (*roots, env.get("PYTHONPATH")) if p)
    t0 = time.perf_counter()
    # Background load (--busy N): N processes spinning on the CPU for the contender's whole life.
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL)
               for _ in range(cfg.get("busy", 0))]
    with Sampler(dsn, app, cfg["sample_ms"] / 1e3) as sampler:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=cfg["timeout"],
                                  env=env, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
            return {"name": name, "status": "timeout",
                    "note": f"no result within the {cfg['timeout']:g} s subprocess timeout (killed)"
                            + (f"; stderr tail: {err.strip()[-300:]}" if err.strip() else ""),
                    "peak_conns": sampler.peak()}
        finally:
            for b in burners:
                b.kill()
                b.wait()
    wall = time.perf_counter() - t0
    res = None
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            res = json.loads(line[len(RESULT_TAG):])
    if res is None:
        tail = (proc.stderr or "").strip().splitlines()[-3:]
        return {"name": name, "status": "failed",
                "note": f"exit {proc.returncode}: " + " | ".join(tail)[-400:],
                "peak_conns": sampler.peak()}
    res["peak_conns"] = sampler.peak()
    res["peak_conns_timed"] = sampler.peak(res.get("window"))
    res["samples"] = len(sampler.samples)
    res["subprocess_s"] = wall
    if proc.stderr.strip():
        res["stderr_tail"] = proc.stderr.strip()[-500:]
    return res


def summarise(name: str, runs: list) -> dict:
    ok = [r for r in runs if r.get("status") == "ok"]
    s: Dict[str, Any] = {"label": LABELS[name], "rounds": len(runs), "ok_rounds": len(ok)}
    if not ok:
        first = runs[0] if runs else {}
        s["status"] = first.get("status", "failed")
        s["note"] = first.get("note", "")
        s["peak_conns"] = max((r.get("peak_conns", 0) for r in runs), default=0)
        return s
    s["status"] = "ok" if len(ok) == len(runs) else "partial"
    if len(ok) != len(runs):
        bad = [r for r in runs if r.get("status") != "ok"]
        s["note"] = f"{len(bad)} of {len(runs)} rounds {bad[0].get('status')}: {bad[0].get('note', '')}"
    qps = [r["qps"] for r in ok]
    med = statistics.median(qps)
    mid = min(ok, key=lambda r: abs(r["qps"] - med))  # the median round, for its percentiles
    s.update({
        "qps_median": med, "qps_all": qps,
        "wait_p50_ms": mid["wait_p50_ms"], "wait_p99_ms": mid["wait_p99_ms"],
        "peak_conns": max(r["peak_conns"] for r in runs),
        "peak_conns_timed": max(r.get("peak_conns_timed", 0) for r in ok),
        "max_in_flight": max(r.get("max_in_flight", 0) for r in ok),
        "errors": sum(r["errors"] + r.get("warmup_errors", 0) for r in ok),
        "error_samples": sorted({e for r in ok
                                 for e in r["error_samples"] + r.get("warmup_error_samples", [])})[:5],
        "missing_queries": sum(r["expected_queries"] - r["queries"] for r in ok),
        "client_cpu_us_per_query": statistics.median(
            [r["client_cpu_us_per_query"] for r in ok if r["client_cpu_us_per_query"]] or [0]),
        "version": mid.get("version"), "wait_callback": mid.get("psycopg2_wait_callback"),
    })
    return s


def runnable(names: List[str], hub: str, notes: Dict[str, str]) -> List[str]:
    """The contenders that can run here; the others get a note saying why not."""
    from . import peers

    if find_spec(hub) is None:
        notes["green"] = f"skipped: {hub} is not installed (pip install {hub})"
        return []
    have_psycogreen = find_spec("psycogreen") is not None
    out = []
    for n in names:
        if n in peers.BY_NAME and not peers.BY_NAME[n].available():
            notes.setdefault(n, peers.describe_missing(peers.BY_NAME[n]))  # same note as elsewhere
        elif n in NEEDS_PSYCOGREEN and not have_psycogreen:
            notes[f"green:{n}"] = "skipped: psycogreen is not installed (pip install psycogreen)"
        else:
            out.append(n)
    if "nopool" in out and not have_psycogreen:
        notes["green:nopool"] = "psycogreen is not installed: the no-pool limit uses fastpool's wait callback"
    return out


def scenario_green(dsn: str, cfg: dict, notes: Dict[str, str], progress: Any = None,
                   names: Optional[List[str]] = None, hub: str = "gevent",
                   on_round: Optional[Callable[[int, str, dict], None]] = None) -> Optional[dict]:
    """Run every runnable contender ``cfg["repeat"]`` times, interleaved; summarise.

    None if nothing can run here (``notes["green"]`` says why).

    Returns ``{"ref", "metric", "better", "ratio_meaning", "ratios", "results", ...}`` like the
    thread scenarios, plus ``limit_qps`` and each result's ``share_of_limit``.
    """
    from .cycle import NO_PROGRESS, with_ratios

    progress = progress or NO_PROGRESS
    names = runnable(list(names or CONTENDERS), hub, notes)
    if not names:
        notes.setdefault("green", "skipped: no contender can run")
        return None
    runs: Dict[str, list] = {n: [] for n in names}
    with progress.task(f"green: {cfg['greenlets']} greenlets, {cfg['size']} connections ({hub})",
                       len(names) * cfg["repeat"]) as task:
        for rnd in range(cfg["repeat"]):
            k = rnd % max(1, len(names))
            for n in names[k:] + names[:k]:  # rotate: no contender always first or last
                r = run_child(dsn, cfg, hub, n, rnd)
                runs[n].append(r)
                if on_round is not None:
                    on_round(rnd, n, r)
                task.advance(f"{n}: {r['qps']:,.0f} q/s" if r.get("status") == "ok" else n)
    results = {n: summarise(n, runs[n]) for n in names}
    limit = results.get("nopool", {}).get("qps_median")
    best_limit = max(results.get("nopool", {}).get("qps_all") or [0]) or None
    for s in results.values():
        s["share_of_limit"] = (s["qps_median"] / limit) if (limit and s.get("qps_median")) else None
        s["best_share_of_limit"] = (max(s["qps_all"]) / best_limit
                                    if (best_limit and s.get("qps_all")) else None)
    out = with_ratios(results, "qps_median", "higher",
                      "reference queries/s / peer queries/s (> 1: the reference does more)")
    out.update({"hub": hub, "limit_qps": limit, "config": dict(cfg), "runs": runs,
                "vs_references": vs_references(results)})
    return out


def vs_references(results: Dict[str, dict]) -> Dict[str, Dict[str, float]]:
    """{fastpool contender: {reference: its queries/s / the reference's}}, same run, medians.

    Against ``hubqueue`` it is issue 14's target; against ``fairq`` it is what fastpool's own code
    costs over the least a fair pool can do (the yardstick that leaves fairness itself out).
    """
    out: Dict[str, Dict[str, float]] = {}
    for n in FASTPOOL:
        mine = (results.get(n) or {}).get("qps_median")
        if not mine:
            continue
        refs = {r: mine / results[r]["qps_median"] for r in REFERENCES
                if (results.get(r) or {}).get("qps_median")}
        if refs:
            out[n] = refs
    return out


def targets(green: Optional[dict], names=(REF,), why: Optional[str] = None) -> List[dict]:
    """PASS/MISS records for the greenlet targets of each fastpool contender in ``names``.

    ``green`` None (the scenario could not run): N/A records saying ``why``.
    """
    from .cycle import target

    size = green["config"]["size"] if green else NORMAL["size"]
    ts: List[dict] = []
    for n in names:
        who = "fastpool C core" if n == "fastpool-c" else LABELS.get(n, n)
        goals = {"share": f"greenlets: {who} ≥ {TARGET_SHARE:.0%} of the no-pool limit",
                 "peak": f"greenlets: {who} peak server connections = {size}",
                 "errors": f"greenlets: {who} 0 errors"}
        s = (green or {}).get("results", {}).get(n)
        if s is None or s.get("qps_median") is None:
            reason = why or (s or {}).get("note") or "not measured"
            ts += [target(f"green_{k}:{n}", g, None, None, reason) for k, g in goals.items()]
            continue
        share = s.get("share_of_limit")
        ts.append(target(f"green_share:{n}", goals["share"], share,
                         None if share is None else share >= TARGET_SHARE,
                         "no-pool limit not measured" if share is None else
                         f"{share:.1%} ({s['qps_median']:,.0f} vs {green['limit_qps']:,.0f} queries/s)"))
        ref = green["results"].get("hubqueue", {}).get("qps_median")
        if ref:
            vs = s["qps_median"] / ref
            ts.append(target(f"green_vs_hubqueue:{n}",
                             f"greenlets: {who} ≥ {TARGET_VS_HUBQUEUE:.1f}× the hub-Queue reference",
                             vs, vs >= TARGET_VS_HUBQUEUE,
                             f"{vs:.2f}× ({s['qps_median']:,.0f} vs {ref:,.0f} queries/s; wait p99 "
                             f"{s.get('wait_p99_ms') or 0:,.0f} vs "
                             f"{green['results']['hubqueue'].get('wait_p99_ms') or 0:,.0f} ms)"))
        ts.append(target(f"green_peak:{n}", goals["peak"], s.get("peak_conns"),
                         s.get("peak_conns") == size, f"{s.get('peak_conns')}"))
        clean = s.get("status") == "ok" and s.get("errors") == 0 and not s.get("missing_queries")
        ts.append(target(f"green_errors:{n}", goals["errors"], s.get("errors"), clean,
                         f"{s.get('errors')}" + ("" if s.get("status") == "ok" else f" ({s.get('status')})")))
    return ts


# ============================================================================= detailed CLI


def main(argv: Optional[List[str]] = None) -> int:
    """The greenlet benchmark alone, with every knob (``benchmarks/bench_green.py``)."""
    import argparse

    from . import peers
    from .report import Out, print_targets, report_green

    p = argparse.ArgumentParser(prog="python -m fastpool_bench.green",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--dsn", default=os.environ.get("FASTPOOL_BENCH_DSN", peers.DEFAULT_DSN))
    p.add_argument("--hub", choices=["gevent", "eventlet"], default="gevent")
    p.add_argument("--greenlets", type=int, default=None, help="default 1000")
    p.add_argument("--size", type=int, default=None, help="default 10")
    p.add_argument("--cycles", type=int, default=None, help="default 20 (4 with --quick)")
    p.add_argument("--repeat", type=int, default=None,
                   help="rounds per contender, interleaved; median reported (default 3, 1 with --quick)")
    p.add_argument("--quick", action="store_true", help="4 cycles per greenlet, 1 round")
    p.add_argument("--only", default="", help=f"comma-separated subset of {','.join(CONTENDERS + EXTRA_CONTENDERS)}")
    p.add_argument("--timeout", type=float, default=None, help="per-subprocess timeout, seconds")
    p.add_argument("--sample-ms", type=float, default=None, help="pg_stat_activity sampling period")
    p.add_argument("--busy", type=int, default=None, metavar="N",
                   help="background load: N CPU-spinning processes run alongside every contender "
                        "(1 keeps the other core of a 2-core box busy); default 0")
    p.add_argument("--json", default=None, metavar="FILE")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child mode
    p.add_argument("--app", default=None, help=argparse.SUPPRESS)
    # fastpool's checkout timeout in the child (default: the pool's): under valgrind a queue of
    # 1000 greenlets can take longer than 30 s to move, which is slowness, not a failure
    p.add_argument("--checkout-timeout", type=float, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    cfg = dict(QUICK if args.quick else NORMAL)
    for key in ("greenlets", "size", "cycles", "repeat", "timeout", "sample_ms", "busy"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    if args.one:
        args.greenlets, args.size, args.cycles = cfg["greenlets"], cfg["size"], cfg["cycles"]
        return child_main(args)

    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(CONTENDERS)
    unknown = [n for n in names if n not in LABELS]
    if unknown:
        p.error(f"unknown contender(s) {', '.join(unknown)}; choose from {', '.join(CONTENDERS + EXTRA_CONTENDERS)}")
    from .system import fastpool_info, machine_info, mask, server_info

    out = Out(plain=True)
    info = {"machine": machine_info(), "server": server_info(args.dsn), "fastpool": fastpool_info()}
    m, srv, fp = info["machine"], info["server"], info["fastpool"]
    out.line(f"fastpool bench green: hub={args.hub} greenlets={cfg['greenlets']} size={cfg['size']} "
             f"cycles={cfg['cycles']} (= {cfg['greenlets'] * cfg['cycles']} queries per contender) "
             f"repeat={cfg['repeat']} busy={cfg.get('busy', 0)}")
    out.line(f"machine : {m.get('cpu')} x{m.get('nproc')}, {m.get('python')}, load {m.get('loadavg_start')}")
    out.line(f"server  : PostgreSQL {srv.get('version') or srv.get('error')} via {mask(args.dsn)!r}")
    out.line(f"fastpool: {fp.get('version')} at {fp.get('path')} (git: {fp.get('git') or '-'})")

    def on_round(rnd: int, n: str, r: dict) -> None:
        head = f"  round {rnd + 1}/{cfg['repeat']} {n:16s}"
        if r.get("status") == "ok":
            out.line(f"{head} {r['qps']:9.0f} q/s  peak {r['peak_conns']:3d}  errors {r['errors']}  "
                     f"({r['subprocess_s']:.1f} s)")
        else:
            out.line(f"{head} {r.get('status')}: {r.get('note', '')}")

    notes: Dict[str, str] = {}
    res = scenario_green(args.dsn, cfg, notes, names=names, hub=args.hub, on_round=on_round)
    if res is not None:
        report_green(out, res, detailed=True)
    ts = targets(res, [n for n in FASTPOOL if n in names], why=notes.get("green"))
    print_targets(out, ts)
    for k, v in notes.items():
        out.line(f"note: {k}: {v}")
    if args.json:
        payload = {"benchmark": "fastpool_bench.green", "args": vars(args), "config": cfg, **info,
                   "dsn": mask(args.dsn), "green": res, "targets": ts, "notes": notes,
                   "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        Path(args.json).write_text(json.dumps(payload, indent=2, default=str) + "\n")
        out.line(f"JSON written to {args.json}")
    return 0


if __name__ == "__main__":
    if "--one" in sys.argv:
        _i = sys.argv.index("--hub") + 1 if "--hub" in sys.argv else 0
        _patch(sys.argv[_i] if _i else "gevent")
    sys.exit(main())
