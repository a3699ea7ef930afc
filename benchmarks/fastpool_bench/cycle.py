"""The OS-thread scenarios: checkout/return cost, SELECT 1 share, 8 threads on 4 connections.

1. ``cycle``: ``getconn`` + ``putconn``, no query, one thread: ns per cycle.  A tight loop over
   the pools' own bound methods; best (and median) of N repeats, the peers interleaved repeat by
   repeat so a noisy neighbour hits all of them alike.
2. ``select``: ``with pool.connection(): SELECT 1`` (or the peer's idiomatic equivalent: commit
   on success, connection returned), one thread: µs per cycle, and the pool's share of the cycle,
   ``(cycle - raw) / cycle``, where *raw* is the same work on a plain psycopg2 connection measured
   in this run.
3. ``threads``: 8 threads sharing 4 connections, each doing ``getconn`` + ``putconn`` for a fixed
   wall time: total cycles/s and errors (psycopg2's ThreadedConnectionPool raises "connection
   pool exhausted"; those are counted, not fatal).

Each ``scenario_*`` function returns ``{"ref", "metric", "better", "ratio_meaning", "ratios",
"results"}``: ``results`` maps a contender (or a ``_``-prefixed baseline) to its figures, and
``ratios`` says how many times better the reference (fastpool's C core) is than each contender.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from itertools import repeat
from time import perf_counter, perf_counter_ns
from typing import Any, Callable, Dict, List, Optional

from . import REF

NORMAL = dict(
    s1_repeats=7, s1_cycles=200_000, s1_min_cycles=20_000, s1_repeat_budget=0.5,
    s1_warmup=5_000,
    s2_repeats=30, s2_cycles=200, s2_warmup=200,
    s3_threads=8, s3_size=4, s3_seconds=2.0, s3_rounds=4,
)
QUICK = dict(
    s1_repeats=3, s1_cycles=50_000, s1_min_cycles=5_000, s1_repeat_budget=0.12,
    s1_warmup=2_000,
    s2_repeats=6, s2_cycles=100, s2_warmup=50,
    s3_threads=8, s3_size=4, s3_seconds=0.5, s3_rounds=2,
)

TARGET_NS = 200.0
TARGET_VS_PSYCOPG_POOL = 15.0
TARGET_VS_DBUTILS = 3.0

BASELINES = {
    "_floor": "(floor: deque.pop/append, no lock)",
    "_raw_psycopg2": "(raw psycopg2 connection, no pool)",
    "_raw_psycopg": "(raw psycopg 3 connection, no pool)",
}

Notes = Dict[str, str]


class _NoProgress:
    """Stands in for fastpool_bench.progress.Progress when the caller shows none."""

    def task(self, description: str, total: int) -> "_NoProgress":
        return self

    def advance(self, label: Optional[str] = None, n: int = 1) -> None:
        pass

    def __enter__(self) -> "_NoProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


NO_PROGRESS = _NoProgress()


# ----------------------------------------------------------------------------- loops


def cycle_loop(get: Callable, put: Callable, n: int) -> int:
    """n checkout/return cycles; returns elapsed ns."""
    it = repeat(None, n)
    t0 = perf_counter_ns()
    for _ in it:
        put(get())
    return perf_counter_ns() - t0


def select_loop(connection: Callable, n: int, times: list) -> None:
    """n pooled SELECT 1 cycles; appends each cycle's ns to times.

    Per-cycle timing (about 0.1 µs of clock reads against a ~100 µs round trip) lets the report
    use medians and deciles, which a noisy shared machine disturbs far less than a chunk's mean.
    """
    clock = perf_counter_ns
    record = times.append
    for _ in repeat(None, n):
        t0 = clock()
        with connection() as conn:
            cur = conn.cursor()
            cur.execute("SELECT 1")
            cur.fetchone()
            cur.close()
        record(clock() - t0)


def raw_select_loop(conn: Any, n: int, times: list) -> None:
    """The same work as select_loop on a bare connection (commit included)."""
    clock = perf_counter_ns
    record = times.append
    commit = conn.commit
    for _ in repeat(None, n):
        t0 = clock()
        cur = conn.cursor()
        cur.execute("SELECT 1")
        cur.fetchone()
        cur.close()
        commit()
        record(clock() - t0)


# ----------------------------------------------------------------------------- helpers


def open_adapters(specs: list, dsn: str, size: int, notes: Notes) -> dict:
    adapters = {}
    for spec in specs:
        try:
            adapters[spec.name] = spec.make(dsn, size)
        except Exception as exc:
            notes[spec.name] = f"failed to open: {type(exc).__name__}: {exc}".strip()
    return adapters


def close_adapters(adapters: dict) -> None:
    for a in adapters.values():
        try:
            a.close()
        except Exception:
            pass


def pick_ref(names) -> Optional[str]:
    names = [n for n in names if not n.startswith("_")]
    return REF if REF in names else (names[0] if names else None)


def with_ratios(results: dict, metric: str, better: str, meaning: str) -> dict:
    """Wrap a scenario's results with the reference and each contender's ratio to it.

    ratio = how many times better the reference is (> 1: the reference wins), whichever way the
    metric points (``better`` is "lower" or "higher").
    """
    ref = pick_ref(results)
    ratios: Dict[str, Optional[float]] = {}
    ref_value = results[ref][metric] if ref else None
    for name, r in results.items():
        if name.startswith("_") or not ref_value:
            continue
        value = r.get(metric)
        if not value:
            ratio = None
        elif better == "lower":
            ratio = value / ref_value
        else:
            ratio = ref_value / value
        r["ratio_vs_ref"] = ratio
        ratios[name] = ratio
    return {"ref": ref, "metric": metric, "better": better, "ratio_meaning": meaning,
            "ratios": ratios, "results": results}


# ----------------------------------------------------------------------------- scenario 1


def scenario_cycle(specs: list, dsn: str, cfg: dict, notes: Notes, progress: Any = NO_PROGRESS) -> dict:
    adapters = open_adapters(specs, dsn, 2, notes)
    floor = deque([object()])  # a C-only floor: deque bound methods, no lock, no bookkeeping
    entries = {"_floor": (floor.pop, floor.append)}
    entries.update({name: (a.get, a.put) for name, a in adapters.items()})
    plan: Dict[str, int] = {}
    samples: Dict[str, List[float]] = {}
    try:
        with progress.task("cycle: getconn + putconn", len(entries) * (1 + cfg["s1_repeats"])) as task:
            for name, (get, put) in entries.items():
                try:
                    ns = cycle_loop(get, put, cfg["s1_warmup"]) / cfg["s1_warmup"]
                except Exception as exc:
                    notes[name] = f"cycle scenario failed: {type(exc).__name__}: {exc}"
                    task.advance(name, 1 + cfg["s1_repeats"])
                    continue
                budget_cycles = int(cfg["s1_repeat_budget"] * 1e9 / max(ns, 1.0))
                plan[name] = max(cfg["s1_min_cycles"], min(cfg["s1_cycles"], budget_cycles))
                task.advance(name)
            samples = {name: [] for name in plan}
            for _ in range(cfg["s1_repeats"]):
                for name, n in plan.items():
                    get, put = entries[name]
                    samples[name].append(cycle_loop(get, put, n) / n)
                    task.advance(name)
    finally:
        close_adapters(adapters)
    results = {
        name: {
            "best_ns": min(s),
            "median_ns": statistics.median(s),
            "samples_ns": [round(x, 2) for x in s],
            "cycles_per_repeat": plan[name],
        }
        for name, s in samples.items()
    }
    return with_ratios(results, "best_ns", "lower",
                       "peer best ns / reference best ns (> 1: the reference is faster)")


# ----------------------------------------------------------------------------- scenario 2


def scenario_select(specs: list, dsn: str, cfg: dict, notes: Notes, progress: Any = NO_PROGRESS) -> dict:
    import psycopg2

    raws = {"_raw_psycopg2": psycopg2.connect(dsn)}
    try:
        import psycopg

        raws["_raw_psycopg"] = psycopg.connect(dsn)
    except Exception:
        pass
    adapters = open_adapters(specs, dsn, 2, notes)
    entries: Dict[str, tuple] = {name: (raw_select_loop, conn) for name, conn in raws.items()}
    entries.update({name: (select_loop, a.connection) for name, a in adapters.items()})
    samples: Dict[str, List[int]] = {}
    try:
        with progress.task("select: with pool.connection(): SELECT 1",
                           len(entries) * (1 + cfg["s2_repeats"])) as task:
            for name, (fn, arg) in list(entries.items()):
                try:
                    fn(arg, cfg["s2_warmup"], [])
                except Exception as exc:
                    notes[name] = f"select scenario failed: {type(exc).__name__}: {exc}"
                    del entries[name]
                    task.advance(name, 1 + cfg["s2_repeats"])
                    continue
                samples[name] = []
                task.advance(name)
            # Interleave short chunks so drifting background load hits every entry alike.
            for _ in range(cfg["s2_repeats"]):
                for name, (fn, arg) in entries.items():
                    fn(arg, cfg["s2_cycles"], samples[name])
                    task.advance(name)
    finally:
        close_adapters(adapters)
        for conn in raws.values():
            conn.close()
    results: Dict[str, dict] = {}
    for name, s in samples.items():
        s.sort()
        q = statistics.quantiles(s, n=20)  # 5% steps
        results[name] = {
            "median_us": statistics.median(s) / 1000.0,
            "p10_us": q[1] / 1000.0,
            "p90_us": q[17] / 1000.0,
            "mean_us": statistics.fmean(s) / 1000.0,
            "cycles": len(s),
        }
    # Shares come from the p10 of each entry's per-cycle times (like "best of" in the cycle
    # scenario): on a shared machine the median moves with whatever else runs, the fast decile
    # does not.  Median-based shares are kept too.
    for key in ("p10_us", "median_us"):
        tag = key.split("_")[0]
        raw2 = results.get("_raw_psycopg2", {}).get(key)
        raw3 = results.get("_raw_psycopg", {}).get(key)
        for name, r in results.items():
            if name.startswith("_") or not raw2:
                continue
            r[f"overhead_us_vs_raw_psycopg2_{tag}"] = r[key] - raw2
            r[f"pool_share_vs_raw_psycopg2_{tag}"] = (r[key] - raw2) / r[key]
            if name == "psycopg_pool" and raw3:
                r[f"pool_share_vs_raw_psycopg_{tag}"] = (r[key] - raw3) / r[key]
    return with_ratios(results, "p10_us", "lower",
                       "peer p10 µs / reference p10 µs (> 1: the reference is faster)")


# ----------------------------------------------------------------------------- scenario 3


def run_threads(adapter: Any, n_threads: int, seconds: float) -> dict:
    get, put = adapter.get, adapter.put
    stop = [False]
    counts = [0] * n_threads
    errors = [0] * n_threads
    ends = [0.0] * n_threads
    messages: Dict[str, int] = {}
    barrier = threading.Barrier(n_threads + 1)

    def worker(idx: int) -> None:
        n = 0
        errs = 0
        barrier.wait()
        while not stop[0]:
            for _ in repeat(None, 64):
                try:
                    c = get()
                except Exception as exc:
                    errs += 1
                    key = f"{type(exc).__name__}: {exc}".strip()
                    messages[key] = messages.get(key, 0) + 1
                    continue
                try:
                    put(c)
                except Exception as exc:
                    errs += 1
                    key = f"putconn {type(exc).__name__}: {exc}".strip()
                    messages[key] = messages.get(key, 0) + 1
                    continue
                n += 1
        ends[idx] = perf_counter()
        counts[idx] = n
        errors[idx] = errs

    threads = [threading.Thread(target=worker, args=(i,), daemon=True,
                                name=f"bench-{adapter.name}-{i}") for i in range(n_threads)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = perf_counter()
    time.sleep(seconds)
    stop[0] = True
    deadline = time.monotonic() + seconds + 60
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    hung = sum(t.is_alive() for t in threads)
    elapsed = (max(ends) if not hung else perf_counter()) - t0
    total = sum(counts)
    return {
        "cycles": total,
        "seconds": elapsed,
        "cycles_per_s": total / elapsed if elapsed > 0 else 0.0,
        "errors": sum(errors),
        "error_messages": messages,
        "per_thread_min": min(counts),
        "per_thread_max": max(counts),
        "hung_threads": hung,
    }


def scenario_threads(specs: list, dsn: str, cfg: dict, notes: Notes, progress: Any = NO_PROGRESS) -> dict:
    """s3_seconds per pool, split into s3_rounds rounds interleaved across the pools.

    This workload is dominated by how the GIL hands over between 8 threads, which reacts
    strongly to whatever else the machine is doing; interleaving rounds keeps that drift from
    favouring whichever pool happened to run in a quiet moment.
    """
    adapters = open_adapters(specs, dsn, cfg["s3_size"], notes)
    rounds: Dict[str, List[dict]] = {name: [] for name in adapters}
    seconds = cfg["s3_seconds"] / cfg["s3_rounds"]
    hung = set()
    try:
        with progress.task(f"threads: {cfg['s3_threads']} threads, {cfg['s3_size']} connections",
                           len(adapters) * (1 + cfg["s3_rounds"])) as task:
            for name, adapter in list(adapters.items()):
                try:  # warm-up: first touches of threads and pool paths
                    run_threads(adapter, cfg["s3_threads"], min(0.1, seconds / 2))
                except Exception as exc:
                    notes[name] = f"threads scenario failed: {type(exc).__name__}: {exc}"
                    del adapters[name], rounds[name]
                    task.advance(name, 1 + cfg["s3_rounds"])
                    continue
                task.advance(name)
            for _ in range(cfg["s3_rounds"]):
                for name, adapter in adapters.items():
                    if name in hung:
                        task.advance(name)
                        continue
                    pop_stats = getattr(adapter.raw, "pop_stats", None)  # fastpool, psycopg_pool
                    if pop_stats is not None:
                        pop_stats()
                    r = run_threads(adapter, cfg["s3_threads"], seconds)
                    if pop_stats is not None:
                        st = pop_stats()
                        r["queued"] = st.get("requests_queued", 0)
                    rounds[name].append(r)
                    if r["hung_threads"]:
                        hung.add(name)
                        notes[name] = f"threads scenario: {r['hung_threads']} threads never finished"
                    task.advance(name)
    finally:
        for name, adapter in adapters.items():
            if name not in hung:  # closing under a stuck thread could block the report
                try:
                    adapter.close()
                except Exception:
                    pass
    results: Dict[str, dict] = {}
    for name, rs in rounds.items():
        if not rs:
            continue
        cycles = sum(r["cycles"] for r in rs)
        secs = sum(r["seconds"] for r in rs)
        messages: Dict[str, int] = {}
        for r in rs:
            for k, v in r["error_messages"].items():
                messages[k] = messages.get(k, 0) + v
        results[name] = {
            "cycles": cycles,
            "seconds": secs,
            "cycles_per_s": cycles / secs if secs > 0 else 0.0,
            "rounds_cycles_per_s": [round(r["cycles_per_s"]) for r in rs],
            "errors": sum(r["errors"] for r in rs),
            "error_messages": messages,
            "fairness": min((r["per_thread_min"] / r["per_thread_max"]) if r["per_thread_max"] else 0.0
                            for r in rs),
            "hung_threads": max(r["hung_threads"] for r in rs),
            # getconn calls that had to wait (only pools with pop_stats() report it)
            "queued": (sum(r["queued"] for r in rs) if all("queued" in r for r in rs) else None),
        }
    out = with_ratios(results, "cycles_per_s", "higher",
                      "reference cycles/s / peer cycles/s (> 1: the reference does more)")
    out["threads"] = cfg["s3_threads"]
    out["size"] = cfg["s3_size"]
    out["seconds_per_pool"] = cfg["s3_seconds"]
    out["rounds"] = cfg["s3_rounds"]
    return out


# ----------------------------------------------------------------------------- targets


def target(name: str, goal: str, value: Optional[float], ok: Optional[bool], detail: str) -> dict:
    """A target's record: ``ok`` True (PASS), False (MISS) or None (not measured: ``detail`` says why)."""
    return {"name": name, "target": goal, "value": value, "ok": ok, "detail": detail}


def _missing(res: dict, *names: str) -> str:
    gone = [n for n in names if n not in res]
    return f"not measured ({', '.join(gone)} missing: see the notes)"


def targets(cycle: Optional[dict], threads: Optional[dict]) -> List[dict]:
    """PASS/MISS records for the OS-thread targets (``ok`` None = not measured)."""
    ts: List[dict] = []
    if cycle is not None:
        res = cycle["results"]
        c1, pp = res.get(REF), res.get("psycopg_pool")
        tgt = f"fastpool C core ≤ {TARGET_NS:.0f} ns per getconn + putconn"
        if c1:
            v = c1["best_ns"]
            detail = f"{v:.0f} ns" + ("" if v <= TARGET_NS else f" ({v / TARGET_NS:.2f}× the target)")
            ts.append(target("cycle_ns", tgt, v, v <= TARGET_NS, detail))
        else:
            ts.append(target("cycle_ns", tgt, None, None, _missing(res, REF)))
        tgt = f"fastpool C core ≥ {TARGET_VS_PSYCOPG_POOL:g}× faster than psycopg_pool per cycle"
        if c1 and pp:
            r = pp["best_ns"] / c1["best_ns"]
            ts.append(target("cycle_vs_psycopg_pool", tgt, r, r >= TARGET_VS_PSYCOPG_POOL,
                              f"{r:.1f}× ({pp['best_ns']:,.0f} ns vs {c1['best_ns']:,.0f} ns)"))
        else:
            ts.append(target("cycle_vs_psycopg_pool", tgt, None, None,
                              _missing(res, REF, "psycopg_pool")))
    if threads is not None:
        res = threads["results"]
        c3, db = res.get(REF), res.get("dbutils")
        tgt = (f"fastpool C core ≥ {TARGET_VS_DBUTILS:g}× DBUtils' throughput, "
               f"{threads['threads']} threads / {threads['size']} connections, 0 errors")
        if c3 and db and db["cycles_per_s"] > 0:
            r = c3["cycles_per_s"] / db["cycles_per_s"]
            ok = r >= TARGET_VS_DBUTILS and c3["errors"] == 0 and not c3["hung_threads"]
            ts.append(target("threads_vs_dbutils", tgt, r, ok, f"{r:.2f}×, {c3['errors']} errors"))
        else:
            ts.append(target("threads_vs_dbutils", tgt, None, None, _missing(res, REF, "dbutils")))
    return ts
