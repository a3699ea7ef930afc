#!/usr/bin/env python
"""Greenlets: N greenlets sharing a pool of ``size`` connections, under gevent or eventlet.

Every contender runs in its own subprocess (monkey-patching is per process): the script
re-invokes itself with ``--one NAME``, the child monkey-patches *first*, opens its pool,
runs the scenario and prints one ``RESULT {json}`` line; the parent collects the lines and
prints the table.  Meanwhile the parent (never patched) samples the server from a plain
thread with its own connection: ``count(*)`` of ``pg_stat_activity`` rows carrying the
child's unique ``application_name``, every ~20 ms, for the child's whole life.

Scenario, per contender: ``greenlets`` greenlets start together (one event) and each does
``cycles`` times: checkout, ``SELECT 1`` + fetch, commit, return.  The time a checkout takes
is the caller's wait.  One warm-up pass (every greenlet, one cycle) precedes the timed one.

Contenders (same run, same hub):

* ``fastpool-c`` / ``fastpool-python``: ``pool_class(impl)(dsn, min_size=size, max_size=size,
  kwargs={"application_name": ...})`` via ``peers.py``; no psycogreen -- fastpool registers its
  own cooperative wait callback (``green="auto"``) once it sees ``socket`` patched;
* ``dbutils``: DBUtils ``PooledDB(psycopg2, maxconnections=size, mincached=size, blocking=True)``
  + psycogreen;
* ``sqlalchemy``: SQLAlchemy ``QueuePool(creator, pool_size=size, max_overflow=0)`` + psycogreen;
* ``psycopg_pool``: psycopg 3 ``ConnectionPool(min_size=max_size=size)``, as is (psycopg 3 has
  no wait callback; it cooperates with gevent when ``select`` is patched);
* ``nopool``: the limit -- ``size`` greenlets each owning one psycopg2 connection (psycogreen
  callback), running the same total number of queries (``greenlets * cycles``, split evenly).

Each contender's queries/s is reported as a share of the no-pool limit (median over
``--repeat`` rounds, contenders interleaved round by round).  Targets for fastpool (PASS/MISS):
>= 85 % of the no-pool limit, peak server connections == size, 0 errors.

Usage::

    python benchmarks/bench_green.py [--hub gevent|eventlet] [--greenlets 1000] [--size 10]
                                     [--cycles 20] [--repeat 3] [--quick] [--json out.json]
    python benchmarks/bench_green.py --only fastpool-c,nopool --hub eventlet
"""

import sys

# --- child: monkey-patch before anything else is imported ------------------------------------
if __name__ == "__main__" and "--one" in sys.argv:
    _argv = sys.argv
    _hub = "gevent"
    for _i, _a in enumerate(_argv):
        if _a == "--hub" and _i + 1 < len(_argv):
            _hub = _argv[_i + 1]
        elif _a.startswith("--hub="):
            _hub = _a.split("=", 1)[1]
    if _hub == "gevent":
        from gevent import monkey

        monkey.patch_all()
    elif _hub == "eventlet":
        import warnings

        warnings.filterwarnings("ignore", module="eventlet")
        warnings.filterwarnings("ignore", message=".*[Ee]ventlet is deprecated.*")
        import eventlet

        eventlet.monkey_patch()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peers  # noqa: E402  (benchmarks/peers.py)

CONTENDERS = ["fastpool-c", "fastpool-python", "dbutils", "sqlalchemy", "psycopg_pool", "nopool"]
LABELS = {
    "fastpool-c": "fastpool (C core)",
    "fastpool-python": "fastpool (python core)",
    "dbutils": "DBUtils PooledDB + psycogreen",
    "sqlalchemy": "SQLAlchemy QueuePool + psycogreen",
    "psycopg_pool": "psycopg_pool (psycopg 3)",
    "nopool": "no pool: size conns, 1 per greenlet",
}
FASTPOOL = ("fastpool-c", "fastpool-python")
TARGET_SHARE = 0.85
RESULT_TAG = "RESULT "


# ============================================================================= child


class Hub:
    """The few hub operations the scenario needs, for gevent or eventlet."""

    def __init__(self, kind: str):
        self.kind = kind
        if kind == "gevent":
            import gevent
            import gevent.event

            self._gevent = gevent
            self.Event = gevent.event.Event
        else:
            import eventlet
            import eventlet.event

            self._eventlet = eventlet
            self.Event = _EventletEvent

    def spawn(self, fn, *args):
        if self.kind == "gevent":
            return self._gevent.spawn(fn, *args)
        return self._eventlet.spawn(fn, *args)

    def joinall(self, gs) -> None:
        if self.kind == "gevent":
            self._gevent.joinall(gs)
        else:
            for g in gs:
                g.wait()

    def patch_psycopg2(self) -> None:
        """psycogreen's wait callback, for the psycopg2 peers that need one."""
        if self.kind == "gevent":
            import psycogreen.gevent

            psycogreen.gevent.patch_psycopg()
        else:
            import psycogreen.eventlet

            psycogreen.eventlet.patch_psycopg()


class _EventletEvent:
    """set()/wait() over eventlet's one-shot Event (send())."""

    def __init__(self):
        import eventlet.event

        self._ev = eventlet.event.Event()

    def set(self) -> None:
        self._ev.send(True)

    def wait(self) -> None:
        self._ev.wait()


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def _run_pass(hub: Hub, get, put, greenlets: int, cycles_of, commit_needed=True) -> dict:
    """Spawn the greenlets, release them together, return the measurements.

    cycles_of(i) -> the number of cycles greenlet i does.
    """
    clock = time.perf_counter
    waits: list = []
    errors: list = []
    done = [0]
    start = hub.Event()

    def worker(n: int) -> None:
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
                try:
                    put(conn)
                except Exception as exc:
                    errors.append(f"return: {type(exc).__name__}: {exc}".strip())

    gs = [hub.spawn(worker, cycles_of(i)) for i in range(greenlets)]
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
        "client_cpu_s": cpu,
        "client_cpu_us_per_query": (cpu / done[0] * 1e6) if done[0] else None,
        "waits": waits,
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:5],
    }


def _pct(values: list, q: float):
    if not values:
        return None
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(q * (len(s) - 1)))))
    return s[k]


def child_main(args) -> int:
    name = args.one
    hub = Hub(args.hub)
    import psycopg2
    from psycopg2 import extensions

    app = args.app
    app_dsn = extensions.make_dsn(args.dsn, application_name=app)
    size, greenlets, cycles = args.size, args.greenlets, args.cycles
    info: dict = {"name": name, "hub": args.hub, "app": app, "pid": os.getpid()}
    if args.hub == "gevent":
        import gevent

        info["hub_version"] = f"gevent {gevent.__version__}"
    else:
        import eventlet

        info["hub_version"] = f"eventlet {eventlet.__version__}"

    conns: list = []
    adapter = None
    if name == "nopool":
        hub.patch_psycopg2()
        conns = [psycopg2.connect(app_dsn) for _ in range(size)]
        info["version"] = psycopg2.__version__.split()[0]
    else:
        spec = peers.get_spec(name)
        if not spec.available():
            print(RESULT_TAG + json.dumps({**info, "status": "n/a", "note": spec.note}), flush=True)
            return 0
        info["version"] = spec.version
        if name in FASTPOOL:
            # no psycogreen: fastpool installs its own callback (green="auto")
            adapter = spec.make(args.dsn, size, kwargs={"application_name": app})
        elif name == "psycopg_pool":
            adapter = spec.make(app_dsn, size)
        else:
            hub.patch_psycopg2()
            adapter = spec.make(app_dsn, size)
    cb = extensions.get_wait_callback()
    info["psycopg2_wait_callback"] = None if cb is None else f"{cb.__module__}.{cb.__qualname__}"

    if name == "nopool":
        # one connection per greenlet: "checkout" is handing out that greenlet's own connection
        total = greenlets * cycles
        base, extra = divmod(total, size)

        def pass_(cycles_of, n_greenlets):
            clock = time.perf_counter
            errors: list = []
            done = [0]
            start = hub.Event()

            def worker(i: int, n: int) -> None:
                conn = conns[i]
                start.wait()
                for _ in range(n):
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

            gs = [hub.spawn(worker, i, cycles_of(i)) for i in range(n_greenlets)]
            time.sleep(0.05)
            cpu0 = _cpu()
            wall0 = time.time()
            t0 = clock()
            start.set()
            hub.joinall(gs)
            elapsed = clock() - t0
            wall1 = time.time()
            cpu = _cpu() - cpu0
            return {"elapsed_s": elapsed, "window": [wall0, wall1], "queries": done[0],
                    "qps": done[0] / elapsed if elapsed > 0 else 0.0,
                    "client_cpu_s": cpu,
                    "client_cpu_us_per_query": (cpu / done[0] * 1e6) if done[0] else None,
                    "waits": [], "errors": len(errors),
                    "error_samples": sorted(set(errors))[:5]}

        warm = pass_(lambda i: max(1, greenlets // size), size)
        res = pass_(lambda i: base + (1 if i < extra else 0), size)
    else:
        warm = _run_pass(hub, adapter.get, adapter.put, greenlets, lambda i: 1)
        res = _run_pass(hub, adapter.get, adapter.put, greenlets, lambda i: cycles)

    waits = res.pop("waits")
    warm.pop("waits")
    out = {**info, "status": "ok", **res,
           "expected_queries": greenlets * cycles,
           "wait_p50_ms": None if not waits else _pct(waits, 0.50) * 1e3,
           "wait_p99_ms": None if not waits else _pct(waits, 0.99) * 1e3,
           "wait_max_ms": None if not waits else max(waits) * 1e3,
           "wait_mean_ms": None if not waits else statistics.fmean(waits) * 1e3,
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
    print(RESULT_TAG + json.dumps(out), flush=True)
    return 0


# ============================================================================= parent


class Sampler:
    """Plain thread, unpatched connection: peak pg_stat_activity rows for one application_name."""

    def __init__(self, dsn: str, app: str, interval: float):
        import threading

        import psycopg2

        self.app = app
        self.interval = interval
        self.samples: list = []  # (time.time(), count)
        self._stop = threading.Event()
        self._conn = psycopg2.connect(dsn, application_name="fastpool-bench-green-sampler")
        self._conn.autocommit = True  # a fresh pg_stat_activity snapshot at every query
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        cur = self._conn.cursor()
        while not self._stop.is_set():
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                        (self.app,))
            self.samples.append((time.time(), cur.fetchone()[0]))
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)
        self._conn.close()

    def peak(self, window=None) -> int:
        if window is None:
            vals = [c for _, c in self.samples]
        else:
            lo, hi = window
            vals = [c for t, c in self.samples if lo <= t <= hi]
        return max(vals) if vals else 0


def run_child(args, name: str, rnd: int) -> dict:
    import subprocess

    app = f"fpgreen-{os.getpid()}-{name}-{rnd}"[:63]
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", name, "--hub", args.hub,
           "--dsn", args.dsn, "--app", app, "--greenlets", str(args.greenlets),
           "--size", str(args.size), "--cycles", str(args.cycles)]
    t0 = time.perf_counter()
    with Sampler(args.dsn, app, args.sample_ms / 1e3) as sampler:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired as exc:
            err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
            return {"name": name, "status": "timeout",
                    "note": f"no result within the {args.timeout:g} s subprocess timeout (killed)"
                            + (f"; stderr tail: {err.strip()[-300:]}" if err.strip() else ""),
                    "peak_conns": sampler.peak(), "samples": len(sampler.samples)}
    wall = time.perf_counter() - t0
    res = None
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            res = json.loads(line[len(RESULT_TAG):])
    if res is None:
        tail = (proc.stderr or "").strip().splitlines()[-3:]
        return {"name": name, "status": "failed",
                "note": f"exit {proc.returncode}: " + " | ".join(tail)[-400:],
                "peak_conns": sampler.peak(), "samples": len(sampler.samples)}
    res["peak_conns"] = sampler.peak()
    res["peak_conns_timed"] = sampler.peak(res.get("window"))
    res["samples"] = len(sampler.samples)
    res["subprocess_s"] = wall
    if proc.stderr.strip():
        res["stderr_tail"] = proc.stderr.strip()[-500:]
    return res


def machine_info(dsn: str) -> dict:
    info: dict = {"nproc": os.cpu_count(),
                  "python": f"{platform.python_implementation()} {platform.python_version()}",
                  "platform": platform.platform()}
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
        cur.execute("SHOW max_connections")
        info["max_connections"] = int(cur.fetchone()[0])
        conn.close()
    except Exception as exc:
        info["postgresql"] = f"unreachable: {exc}"
    return info


def summarise(name: str, runs: list) -> dict:
    ok = [r for r in runs if r.get("status") == "ok"]
    s: dict = {"name": name, "label": LABELS[name], "rounds": len(runs), "ok_rounds": len(ok)}
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
        "wait_p50_ms_all": [r["wait_p50_ms"] for r in ok],
        "wait_p99_ms_all": [r["wait_p99_ms"] for r in ok],
        "peak_conns": max(r["peak_conns"] for r in runs),
        "peak_conns_timed": max(r.get("peak_conns_timed", 0) for r in ok),
        "errors": sum(r["errors"] + r.get("warmup_errors", 0) for r in ok),
        "error_samples": sorted({e for r in ok for e in r["error_samples"] + r.get("warmup_error_samples", [])})[:5],
        "missing_queries": sum(r["expected_queries"] - r["queries"] for r in ok),
        "client_cpu_us_per_query": statistics.median(
            [r["client_cpu_us_per_query"] for r in ok if r["client_cpu_us_per_query"]] or [0]),
        "version": mid.get("version"), "wait_callback": mid.get("psycopg2_wait_callback"),
    })
    return s


def _fmt(v, spec: str, none: str = "-") -> str:
    return none if v is None else format(v, spec)


def table(headers, rows, align) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def fmt(cells):
        return "  ".join(c.rjust(w) if a == "r" else c.ljust(w)
                         for c, w, a in zip(cells, widths, align)).rstrip()

    lines = [fmt(headers), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows]
    return "\n".join(lines)


def parent_main(args) -> int:
    names = CONTENDERS if not args.only else [n.strip() for n in args.only.split(",") if n.strip()]
    for n in names:
        if n not in LABELS:
            print(f"unknown contender {n!r}; choose from {', '.join(CONTENDERS)}", file=sys.stderr)
            return 2
    info = machine_info(args.dsn)
    print(f"bench_green: hub={args.hub} greenlets={args.greenlets} size={args.size} "
          f"cycles={args.cycles} (= {args.greenlets * args.cycles} queries per contender) "
          f"repeat={args.repeat} timeout={args.timeout:g}s")
    print(f"machine: {info.get('cpu')} x{info.get('nproc')}, {info.get('python')}, "
          f"PostgreSQL {info.get('postgresql')}, load {info.get('loadavg_start')}")
    runs: dict = {n: [] for n in names}
    for rnd in range(args.repeat):
        order = names[rnd % len(names):] + names[:rnd % len(names)]  # rotate: no fixed position
        for n in order:
            r = run_child(args, n, rnd)
            runs[n].append(r)
            status = r.get("status")
            if status == "ok":
                print(f"  round {rnd + 1}/{args.repeat} {n:16s} {r['qps']:9.0f} q/s  "
                      f"peak {r['peak_conns']:3d}  errors {r['errors']}  "
                      f"({r['subprocess_s']:.1f} s)", flush=True)
            else:
                print(f"  round {rnd + 1}/{args.repeat} {n:16s} {status}: {r.get('note', '')}", flush=True)
    summary = {n: summarise(n, runs[n]) for n in names}
    limit = summary.get("nopool", {}).get("qps_median")
    for s in summary.values():
        s["share_of_limit"] = (s["qps_median"] / limit) if (limit and s.get("qps_median")) else None

    headers = ["contender", "queries/s", "% of no-pool", "wait p50 ms", "wait p99 ms",
               "peak conns", "errors", "CPU µs/query", "note"]
    rows = []
    for n in names:
        s = summary[n]
        if s.get("qps_median") is None:
            rows.append([s["label"], "n/a", "-", "-", "-", str(s.get("peak_conns", "-")), "-", "-",
                         f"{s.get('status')}: {s.get('note', '')}"[:120]])
            continue
        note = s.get("note", "") or ""
        if s.get("missing_queries"):
            note = (note + f" {s['missing_queries']} queries missing").strip()
        rows.append([
            s["label"], f"{s['qps_median']:.0f}",
            "100 % (limit)" if n == "nopool" else _fmt(s["share_of_limit"] and s["share_of_limit"] * 100, ".1f") + " %",
            "-" if n == "nopool" else _fmt(s["wait_p50_ms"], ".2f"),
            "-" if n == "nopool" else _fmt(s["wait_p99_ms"], ".2f"),
            str(s["peak_conns"]), str(s["errors"]),
            _fmt(s["client_cpu_us_per_query"], ".0f"), note[:120],
        ])
    print()
    print(f"Greenlets ({args.hub}): {args.greenlets} greenlets x {args.cycles} cycles sharing "
          f"{args.size} connections; median of {args.repeat} round(s)")
    print(table(headers, rows, "lrrrrrrrl"))

    verdicts = []
    print()
    for n in FASTPOOL:
        if n not in summary:
            continue
        s = summary[n]
        share = s.get("share_of_limit")
        checks = [
            (f">= {TARGET_SHARE:.0%} of no-pool q/s",
             share is not None and share >= TARGET_SHARE,
             "-" if share is None else f"{share:.1%}"),
            (f"peak server connections == {args.size}",
             s.get("peak_conns") == args.size, str(s.get("peak_conns"))),
            ("0 errors", s.get("status") == "ok" and s.get("errors") == 0 and not s.get("missing_queries"),
             f"{s.get('errors', '-')}" + ("" if s.get("status") == "ok" else f" ({s.get('status')})")),
        ]
        for what, ok, got in checks:
            verdicts.append({"contender": n, "target": what, "ok": ok, "got": got})
            print(f"  {'PASS' if ok else 'MISS'}  {LABELS[n]:24s} {what:34s} got {got}")
    if args.json:
        payload = {"benchmark": "bench_green", "args": vars(args), "machine": info,
                   "summary": summary, "verdicts": verdicts,
                   "runs": runs, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        Path(args.json).write_text(json.dumps(payload, indent=2, default=str))
        print(f"\nJSON written to {args.json}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dsn", default=os.environ.get("FASTPOOL_BENCH_DSN", peers.DEFAULT_DSN))
    p.add_argument("--hub", choices=["gevent", "eventlet"], default="gevent")
    p.add_argument("--greenlets", type=int, default=None, help="default 1000 (200 with --quick)")
    p.add_argument("--size", type=int, default=10)
    p.add_argument("--cycles", type=int, default=None, help="default 20 (5 with --quick)")
    p.add_argument("--repeat", type=int, default=None,
                   help="rounds per contender, interleaved; median reported (default 3, 1 with --quick)")
    p.add_argument("--quick", action="store_true", help="200 greenlets x 5 cycles, 1 round")
    p.add_argument("--only", default="", help=f"comma-separated subset of {','.join(CONTENDERS)}")
    p.add_argument("--timeout", type=float, default=120.0, help="per-subprocess timeout, seconds")
    p.add_argument("--sample-ms", type=float, default=20.0, help="pg_stat_activity sampling period")
    p.add_argument("--json", default=None, metavar="FILE")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child mode
    p.add_argument("--app", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.greenlets is None:
        args.greenlets = 200 if args.quick else 1000
    if args.cycles is None:
        args.cycles = 5 if args.quick else 20
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.one:
        return child_main(args)
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
