#!/usr/bin/env python
"""Checkout/return cost of fastpool against its peers, all measured in one run.

Scenarios (all against a real PostgreSQL):

1. ``getconn`` + ``putconn``, no query, one thread: ns per cycle.  A tight loop
   over the pools' own bound methods; best (and median) of N repeats, the peers
   interleaved repeat by repeat so a noisy neighbour hits all of them alike.
2. ``with pool.connection(): SELECT 1`` (or the peer's idiomatic equivalent:
   commit on success, connection returned), one thread: µs per cycle, and the
   pool's share of the cycle, ``(cycle - raw) / cycle``, where *raw* is the same
   work on a plain psycopg2 connection measured in this run.
3. 8 threads sharing 4 connections, each doing ``getconn`` + ``putconn`` for a
   fixed wall time: total cycles/s and errors (psycopg2's ThreadedConnectionPool
   raises "connection pool exhausted"; those are counted, not fatal).

Usage::

    python benchmarks/bench_cycle.py [--dsn DSN] [--quick] [--json out.json]

Targets printed as PASS/MISS: fastpool's C core <= 200 ns per cycle and >= 15x
faster than psycopg_pool (scenario 1); >= 3x DBUtils' throughput with no error
(scenario 3).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import statistics
import sys
import threading
import time
from itertools import repeat
from pathlib import Path
from time import perf_counter, perf_counter_ns

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peers  # noqa: E402  (benchmarks/peers.py)

REF = "fastpool-c"

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


# ----------------------------------------------------------------------------- output


class Out:
    """Plain-text tables, or rich ones when rich is importable (and not --plain)."""

    def __init__(self, plain: bool):
        self.console = None
        if not plain:
            try:
                from rich.console import Console

                self.console = Console(highlight=False)
            except ImportError:
                pass

    def line(self, text: str = "") -> None:
        if self.console is not None:
            self.console.print(text, markup=False)
        else:
            print(text, flush=True)

    def heading(self, text: str) -> None:
        self.line()
        self.line(text)
        self.line("=" * len(text))

    def table(self, headers: list[str], rows: list[list[str]], align: str) -> None:
        """align: one char per column, 'l' or 'r'."""
        if self.console is not None:
            from rich.table import Table

            t = Table(show_edge=True)
            for h, a in zip(headers, align):
                t.add_column(h, justify="right" if a == "r" else "left")
            for r in rows:
                t.add_row(*r)
            self.console.print(t)
            return
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
                  for i, h in enumerate(headers)]

        def fmt(cells):
            out = []
            for c, w, a in zip(cells, widths, align):
                out.append(c.rjust(w) if a == "r" else c.ljust(w))
            return "  ".join(out).rstrip()

        print(fmt(headers))
        print("  ".join("-" * w for w in widths))
        for r in rows:
            print(fmt(r))
        sys.stdout.flush()


def slower(ratio: float | None, digits: int = 1) -> str:
    """Phrase peer/ref time ratio (>1 = peer slower)."""
    if ratio is None:
        return "-"
    if ratio >= 1:
        return f"{ratio:.{digits}f}× slower"
    return f"{1 / ratio:.{digits}f}× faster"


def lower(ratio: float | None, digits: int = 1) -> str:
    """Phrase ref/peer throughput ratio (>1 = peer has less throughput)."""
    if ratio is None:
        return "-"
    if ratio >= 1:
        return f"{ratio:.{digits}f}× less"
    return f"{1 / ratio:.{digits}f}× more"


# ----------------------------------------------------------------------------- machine


def machine_info(dsn: str) -> dict:
    info: dict = {
        "nproc": os.cpu_count(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "loadavg_start": None,
        "cpu": None,
        "postgresql": None,
        "gil_switch_interval_s": sys.getswitchinterval(),
    }
    try:
        info["nproc_usable"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    try:
        info["loadavg_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import psycopg2

        conn = psycopg2.connect(dsn)
        cur = conn.cursor()
        cur.execute("SHOW server_version")
        info["postgresql"] = cur.fetchone()[0]
        conn.close()
    except Exception as exc:  # reported, not fatal here
        info["postgresql"] = f"unreachable: {exc}".strip()
    return info


# ----------------------------------------------------------------------------- loops


def cycle_loop(get, put, n: int) -> int:
    """n checkout/return cycles; returns elapsed ns."""
    it = repeat(None, n)
    t0 = perf_counter_ns()
    for _ in it:
        put(get())
    return perf_counter_ns() - t0


def select_loop(connection, n: int, times: list) -> None:
    """n pooled SELECT 1 cycles; appends each cycle's ns to times.

    Per-cycle timing (about 0.1 µs of clock reads against a ~100 µs round trip) lets
    the report use medians, which a noisy shared machine disturbs far less than the
    mean of a chunk.
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


def raw_select_loop(conn, n: int, times: list) -> None:
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


def open_adapters(specs, dsn: str, size: int, notes: dict) -> dict:
    adapters = {}
    for spec in specs:
        try:
            adapters[spec.name] = spec.make(dsn, size)
        except Exception as exc:
            notes[spec.name] = f"failed to open: {type(exc).__name__}: {exc}"
    return adapters


def close_adapters(adapters: dict) -> None:
    for a in adapters.values():
        try:
            a.close()
        except Exception:
            pass


def pick_ref(results: dict) -> str | None:
    if REF in results:
        return REF
    return next(iter(results), None)


# ----------------------------------------------------------------------------- scenario 1


def scenario_cycle(specs, dsn, cfg, notes) -> dict:
    adapters = open_adapters(specs, dsn, 2, notes)
    # A C-only floor: deque.pop/append bound methods, no lock, no bookkeeping.
    from collections import deque

    floor = deque([object()])
    entries = {"_floor": (floor.pop, floor.append)}
    entries.update({name: (a.get, a.put) for name, a in adapters.items()})
    plan = {}
    try:
        for name, (get, put) in entries.items():
            try:
                ns = cycle_loop(get, put, cfg["s1_warmup"]) / cfg["s1_warmup"]
            except Exception as exc:
                notes[name] = f"scenario 1 failed: {type(exc).__name__}: {exc}"
                continue
            budget_cycles = int(cfg["s1_repeat_budget"] * 1e9 / max(ns, 1.0))
            plan[name] = max(cfg["s1_min_cycles"], min(cfg["s1_cycles"], budget_cycles))
        samples: dict[str, list[float]] = {name: [] for name in plan}
        for _ in range(cfg["s1_repeats"]):
            for name, n in plan.items():
                get, put = entries[name]
                samples[name].append(cycle_loop(get, put, n) / n)
    finally:
        close_adapters(adapters)
    return {
        name: {
            "best_ns": min(s),
            "median_ns": statistics.median(s),
            "samples_ns": [round(x, 2) for x in s],
            "cycles_per_repeat": plan[name],
        }
        for name, s in samples.items()
    }


# ----------------------------------------------------------------------------- scenario 2


def scenario_select(specs, dsn, cfg, notes) -> dict:
    import psycopg2

    raws = {"_raw_psycopg2": psycopg2.connect(dsn)}
    try:
        import psycopg

        raws["_raw_psycopg"] = psycopg.connect(dsn)
    except Exception:
        pass
    adapters = open_adapters(specs, dsn, 2, notes)
    entries = {}
    for name, conn in raws.items():
        entries[name] = (raw_select_loop, conn)
    for name, a in adapters.items():
        entries[name] = (select_loop, a.connection)
    samples: dict[str, list[int]] = {}
    try:
        for name, (fn, arg) in list(entries.items()):
            try:
                fn(arg, cfg["s2_warmup"], [])
            except Exception as exc:
                notes[name] = f"scenario 2 failed: {type(exc).__name__}: {exc}"
                del entries[name]
                continue
            samples[name] = []
        # Interleave short chunks so drifting background load hits every entry alike.
        for _ in range(cfg["s2_repeats"]):
            for name, (fn, arg) in entries.items():
                fn(arg, cfg["s2_cycles"], samples[name])
    finally:
        close_adapters(adapters)
        for conn in raws.values():
            conn.close()
    results = {}
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
    return results


# ----------------------------------------------------------------------------- scenario 3


def run_threads(adapter, n_threads: int, seconds: float) -> dict:
    get, put = adapter.get, adapter.put
    stop = [False]
    counts = [0] * n_threads
    errors = [0] * n_threads
    ends = [0.0] * n_threads
    messages: dict[str, int] = {}
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
                    key = f"{type(exc).__name__}: {exc}"
                    messages[key] = messages.get(key, 0) + 1
                    continue
                try:
                    put(c)
                except Exception as exc:
                    errs += 1
                    key = f"putconn {type(exc).__name__}: {exc}"
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


def scenario_threads(specs, dsn, cfg, notes) -> dict:
    """s3_seconds per pool, split into s3_rounds rounds interleaved across the pools.

    This workload is dominated by how the GIL hands over between 8 threads, which
    reacts strongly to whatever else the machine is doing; interleaving rounds keeps
    that drift from favouring whichever pool happened to run in a quiet moment.
    """
    adapters = open_adapters(specs, dsn, cfg["s3_size"], notes)
    rounds: dict[str, list[dict]] = {name: [] for name in adapters}
    seconds = cfg["s3_seconds"] / cfg["s3_rounds"]
    hung = set()
    try:
        for name, adapter in list(adapters.items()):
            try:  # warm-up: first touches of threads and pool paths
                run_threads(adapter, cfg["s3_threads"], min(0.1, seconds / 2))
            except Exception as exc:
                notes[name] = f"scenario 3 failed: {type(exc).__name__}: {exc}"
                del adapters[name], rounds[name]
        for _ in range(cfg["s3_rounds"]):
            for name, adapter in adapters.items():
                if name in hung:
                    continue
                pop_stats = getattr(adapter.raw, "pop_stats", None)  # fastpool, psycopg_pool
                if pop_stats is not None:
                    pop_stats()
                r = run_threads(adapter, cfg["s3_threads"], seconds)
                if pop_stats is not None:
                    st = pop_stats()
                    r["queued"] = st.get("requests_queued", 0)
                    r["wait_ms"] = st.get("requests_wait_ms", 0)
                rounds[name].append(r)
                if r["hung_threads"]:
                    hung.add(name)
                    notes[name] = f"scenario 3: {r['hung_threads']} threads never finished"
    finally:
        for name, adapter in adapters.items():
            if name not in hung:  # closing under a stuck thread could block the report
                try:
                    adapter.close()
                except Exception:
                    pass
    results = {}
    for name, rs in rounds.items():
        if not rs:
            continue
        cycles = sum(r["cycles"] for r in rs)
        secs = sum(r["seconds"] for r in rs)
        messages: dict[str, int] = {}
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
            "per_thread_min": min(r["per_thread_min"] for r in rs),
            "per_thread_max": max(r["per_thread_max"] for r in rs),
            "fairness": min((r["per_thread_min"] / r["per_thread_max"]) if r["per_thread_max"] else 0.0
                            for r in rs),
            "hung_threads": max(r["hung_threads"] for r in rs),
            # getconn calls that had to wait (only pools with pop_stats() report it)
            "queued": (sum(r["queued"] for r in rs) if all("queued" in r for r in rs) else None),
            "rounds_queued": [r.get("queued") for r in rs],
        }
    return results


# ----------------------------------------------------------------------------- report


def label(name: str) -> str:
    if name in peers.BY_NAME:
        return peers.BY_NAME[name].label
    return {
        "_floor": "(floor: deque.pop/append, no lock)",
        "_raw_psycopg2": "(raw psycopg2 connection, no pool)",
        "_raw_psycopg": "(raw psycopg 3 connection, no pool)",
    }.get(name, name)


def report_cycle(out: Out, res: dict) -> None:
    out.heading("Scenario 1: getconn + putconn, no query, 1 thread (ns per cycle)")
    ref = pick_ref({k: v for k, v in res.items() if not k.startswith("_")})
    rows = []
    order = sorted(res, key=lambda k: (k.startswith("_"), res[k]["best_ns"]))
    for name in order:
        r = res[name]
        ratio = r["best_ns"] / res[ref]["best_ns"] if ref else None
        rel = "reference" if name == ref else slower(ratio)
        rows.append([label(name), f"{r['best_ns']:,.0f}", f"{r['median_ns']:,.0f}",
                     f"{r['cycles_per_repeat']:,}×{len(r['samples_ns'])}", rel])
    out.table(["pool", "best ns", "median ns", "cycles×repeats", f"vs {ref}"], rows, "lrrrl")


def report_select(out: Out, res: dict) -> None:
    out.heading("Scenario 2: with pool.connection(): SELECT 1, 1 thread (µs per cycle)")
    ref = pick_ref({k: v for k, v in res.items() if not k.startswith("_")})
    # Shares come from the p10 of each entry's per-cycle times (like "best of" in
    # scenario 1): on a shared 2-core box the median is moved by whatever else runs,
    # the fast decile is not.  Median-based shares are kept in the JSON.
    for key in ("p10_us", "median_us"):
        raw2 = res.get("_raw_psycopg2", {}).get(key)
        raw3 = res.get("_raw_psycopg", {}).get(key)
        tag = key.split("_")[0]
        for name, r in res.items():
            if name.startswith("_") or not raw2:
                continue
            r[f"overhead_us_vs_raw_psycopg2_{tag}"] = r[key] - raw2
            r[f"pool_share_vs_raw_psycopg2_{tag}"] = (r[key] - raw2) / r[key]
            if r.get("driver") == "psycopg" or name == "psycopg_pool":
                if raw3:
                    r[f"pool_share_vs_raw_psycopg_{tag}"] = (r[key] - raw3) / r[key]
    rows = []
    order = sorted(res, key=lambda k: (not k.startswith("_"), res[k]["p10_us"]))
    for name in order:
        r = res[name]
        cells = [label(name), f"{r['p10_us']:.1f}", f"{r['median_us']:.1f}", f"{r['p90_us']:.1f}"]
        if name.startswith("_"):
            rows.append(cells + ["-", "-", "-"])
            continue
        over = r.get("overhead_us_vs_raw_psycopg2_p10")
        share = r.get("pool_share_vs_raw_psycopg2_p10")
        share_s = f"{share * 100:.1f}%" if share is not None else "-"
        own = r.get("pool_share_vs_raw_psycopg_p10")
        if own is not None:
            share_s += f" ({own * 100:.1f}% vs raw psycopg 3)"
        ratio = r["p10_us"] / res[ref]["p10_us"] if ref else None
        rel = "reference" if name == ref else slower(ratio, 2)
        rows.append(cells + [f"{over:+.1f}" if over is not None else "-", share_s, rel])
    out.table(["pool", "p10 µs", "median µs", "p90 µs", "pool µs", "pool share of cycle",
               f"vs {ref}"], rows, "lrrrrrl")
    n = next(iter(res.values()))["cycles"] if res else 0
    out.line(f"{n:,} timed cycles each, interleaved in chunks. pool µs = p10 cycle - p10 raw "
             "psycopg2 cycle; share = pool µs / p10 cycle (p10: the undisturbed cycle on a "
             "shared box; median-based shares are in the JSON). The raw loop does the same "
             "cursor/execute/fetchone/close/commit on one bare connection.")


def report_threads(out: Out, res: dict, cfg: dict) -> None:
    out.heading(f"Scenario 3: {cfg['s3_threads']} threads share {cfg['s3_size']} connections, "
                f"getconn + putconn, {cfg['s3_seconds']:g} s per pool (cycles/s)")
    ref = pick_ref(res)
    rows = []
    order = sorted(res, key=lambda k: -res[k]["cycles_per_s"])
    for name in order:
        r = res[name]
        ratio = (res[ref]["cycles_per_s"] / r["cycles_per_s"]
                 if ref and r["cycles_per_s"] > 0 else None)
        rel = "reference" if name == ref else lower(ratio)
        spread = (f"{min(r['rounds_cycles_per_s']) / 1000:,.0f}k–"
                  f"{max(r['rounds_cycles_per_s']) / 1000:,.0f}k")
        err = f"{r['errors']:,}"
        if r["hung_threads"]:
            err += f" ({r['hung_threads']} threads hung)"
        queued = f"{r['queued']:,}" if r.get("queued") is not None else "-"
        rows.append([label(name), f"{r['cycles_per_s']:,.0f}", spread, err, queued,
                     f"{r['fairness']:.2f}", rel])
    out.table(["pool", "cycles/s", "rounds", "errors", "waited", "fairness", f"vs {ref}"],
              rows, "lrrrrrl")
    out.line(f"{cfg['s3_rounds']} rounds of {cfg['s3_seconds'] / cfg['s3_rounds']:g} s per pool, "
             "interleaved; cycles/s over all rounds. fairness = least / most cycles done by one "
             "thread in a round (worst round); 0 means a thread starved. waited = getconn calls "
             "that had to queue (from pop_stats(), where the pool has it).")
    for name in order:
        for msg, n in res[name]["error_messages"].items():
            out.line(f"  {label(name)}: {n:,} × {msg}")


def targets(s1: dict | None, s3: dict | None) -> list[dict]:
    ts = []
    c1 = (s1 or {}).get(REF)
    if s1 is not None:
        if c1:
            v = c1["best_ns"]
            note = (f"{v:.0f} ns" + ("" if v <= TARGET_NS
                                     else f" ({v - TARGET_NS:.0f} ns / {v / TARGET_NS:.2f}× over)"))
            ts.append(dict(name="s1_ns", target=f"fastpool C core ≤ {TARGET_NS:.0f} ns per cycle",
                           value=v, ok=v <= TARGET_NS, detail=note))
        else:
            ts.append(dict(name="s1_ns", target=f"fastpool C core ≤ {TARGET_NS:.0f} ns per cycle",
                           value=None, ok=None, detail="fastpool C core not measured"))
        pp = s1.get("psycopg_pool")
        if c1 and pp:
            r = pp["best_ns"] / c1["best_ns"]
            ts.append(dict(name="s1_vs_psycopg_pool",
                           target=f"fastpool C core ≥ {TARGET_VS_PSYCOPG_POOL:g}× faster than psycopg_pool",
                           value=r, ok=r >= TARGET_VS_PSYCOPG_POOL, detail=f"{r:.1f}×"))
        else:
            ts.append(dict(name="s1_vs_psycopg_pool",
                           target=f"fastpool C core ≥ {TARGET_VS_PSYCOPG_POOL:g}× faster than psycopg_pool",
                           value=None, ok=None, detail="not measured (fastpool-c or psycopg_pool missing)"))
    if s3 is not None:
        c3, db = s3.get(REF), s3.get("dbutils")
        tgt = f"fastpool C core ≥ {TARGET_VS_DBUTILS:g}× DBUtils' 8-thread throughput, 0 errors"
        if c3 and db and db["cycles_per_s"] > 0:
            r = c3["cycles_per_s"] / db["cycles_per_s"]
            ok = r >= TARGET_VS_DBUTILS and c3["errors"] == 0 and not c3["hung_threads"]
            ts.append(dict(name="s3_vs_dbutils", target=tgt, value=r, ok=ok,
                           detail=f"{r:.2f}×, {c3['errors']} errors"))
        else:
            ts.append(dict(name="s3_vs_dbutils", target=tgt, value=None, ok=None,
                           detail="not measured (fastpool-c or DBUtils missing)"))
    return ts


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dsn", default=os.environ.get("FASTPOOL_BENCH_DSN", peers.DEFAULT_DSN))
    ap.add_argument("--quick", action="store_true", help="fewer repeats, shorter runs (< 30 s)")
    ap.add_argument("--json", metavar="PATH", help="also write all results as JSON here")
    ap.add_argument("--only", metavar="NAMES",
                    help="comma-separated peers to run (default all): "
                         + ",".join(s.name for s in peers.SPECS))
    ap.add_argument("--scenarios", default="1,2,3", help="which scenarios, e.g. 1,3")
    ap.add_argument("--plain", action="store_true", help="plain-text tables even if rich is installed")
    ap.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    args = ap.parse_args(argv)

    cfg = QUICK if args.quick else NORMAL
    scen = {s.strip() for s in args.scenarios.split(",") if s.strip()}
    names = [n.strip() for n in args.only.split(",")] if args.only else None
    if names:
        unknown = [n for n in names if n not in peers.BY_NAME]
        if unknown:
            ap.error(f"unknown peer(s): {', '.join(unknown)}")
    out = Out(args.plain)
    started = time.monotonic()
    command = " ".join(shlex.quote(a) for a in [sys.executable] + sys.argv)

    specs_all = peers.SPECS if names is None else [peers.BY_NAME[n] for n in names]
    notes: dict[str, str] = {}
    specs = []
    for s in specs_all:
        if s.available():
            specs.append(s)
        else:
            notes[s.name] = s.note
    try:
        import fastpool

        fastpool_impl = getattr(fastpool, "__impl__", "?")
    except Exception as exc:
        fastpool_impl = f"not importable ({type(exc).__name__})"

    machine = machine_info(args.dsn)
    out.line("fastpool bench_cycle: checkout/return cost vs peers, one run")
    out.line(f"command : {command}")
    out.line(f"date    : {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}")
    out.line(f"machine : nproc={machine['nproc']}"
             + (f" (usable {machine.get('nproc_usable')})" if machine.get("nproc_usable") else "")
             + f", {machine['cpu'] or '?'}, load {machine['loadavg_start']}")
    out.line(f"python  : {machine['python']} on {machine['platform']}")
    out.line(f"server  : PostgreSQL {machine['postgresql']} via {args.dsn!r}")
    out.line(f"fastpool: __impl__ = {fastpool_impl}")
    for s in specs_all:
        out.line(f"  {s.label:34s} {s.version or '-'}" + (f"   [{s.note}]" if s.note else ""))
    out.line(f"mode    : {'quick' if args.quick else 'normal'}; gc enabled; "
             f"GIL switch interval {machine['gil_switch_interval_s'] * 1000:g} ms")
    load = machine["loadavg_start"]
    if load and machine["nproc"] and load[0] > 0.5 * machine["nproc"]:
        out.line(f"WARNING : 1-minute load {load[0]} on {machine['nproc']} CPUs: other work is "
                 "running, absolute numbers will be noisy (ratios less so)")

    s1 = s2 = s3 = None
    if "1" in scen:
        s1 = scenario_cycle(specs, args.dsn, cfg, notes)
        report_cycle(out, s1)
    if "2" in scen:
        s2 = scenario_select(specs, args.dsn, cfg, notes)
        report_select(out, s2)
    if "3" in scen:
        s3 = scenario_threads(specs, args.dsn, cfg, notes)
        report_threads(out, s3, cfg)

    ts = targets(s1, s3)
    out.heading("Targets")
    for t in ts:
        status = "PASS" if t["ok"] else ("MISS" if t["ok"] is False else "N/A ")
        out.line(f"{status}  {t['target']}: {t['detail']}")
    if notes:
        out.heading("Notes")
        for k, v in notes.items():
            out.line(f"{k}: {v}")
    elapsed = time.monotonic() - started
    try:
        load_end = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load_end = None
    machine["loadavg_end"] = load_end
    out.line()
    out.line(f"total runtime {elapsed:.1f} s; load average at end {load_end}")

    if args.json:
        doc = {
            "command": command,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "mode": "quick" if args.quick else "normal",
            "config": cfg,
            "dsn": args.dsn,
            "machine": machine,
            "fastpool_impl": fastpool_impl,
            "versions": {s.name: s.version for s in specs_all},
            "notes": notes,
            "scenarios": {"cycle_ns": s1, "select1_us": s2, "threads": s3},
            "targets": ts,
            "runtime_s": elapsed,
        }
        Path(args.json).write_text(json.dumps(doc, indent=2, default=str) + "\n")
        out.line(f"results written to {args.json}")

    if args.strict and any(t["ok"] is False for t in ts):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
