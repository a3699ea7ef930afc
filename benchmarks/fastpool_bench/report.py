"""Human output: one table per scenario with absolute numbers and ratios, then the targets."""

from __future__ import annotations

import sys
from typing import Any, Dict, List, Optional

from . import peers
from .cycle import BASELINES


class Out:
    """Plain-text tables on stdout; rich tables on a terminal when rich is installed (not ``plain``)."""

    def __init__(self, plain: bool = False, stream: Any = None):
        self.stream = stream or sys.stdout
        self.console = None
        if not plain:
            try:
                from rich.console import Console

                console = Console(file=self.stream, highlight=False)
                if console.is_terminal:
                    self.console = console
            except ImportError:
                pass

    def line(self, text: str = "") -> None:
        if self.console is not None:
            self.console.print(text, markup=False)
        else:
            print(text, file=self.stream, flush=True)

    def heading(self, text: str) -> None:
        self.line()
        self.line(text)
        self.line("-" * len(text))

    def table(self, headers: List[str], rows: List[List[str]], align: str) -> None:
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
        widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

        def fmt(cells: List[str]) -> str:
            return "  ".join(c.rjust(w) if a == "r" else c.ljust(w)
                             for c, w, a in zip(cells, widths, align)).rstrip()

        self.line(fmt(headers))
        self.line("  ".join("-" * w for w in widths))
        for r in rows:
            self.line(fmt(r))


def label(name: str) -> str:
    if name in peers.BY_NAME:
        return peers.BY_NAME[name].label
    from .green import LABELS

    return BASELINES.get(name) or LABELS.get(name, name)


def ref_label(ref: Optional[str]) -> str:
    return {"fastpool-c": "fastpool C", "fastpool-python": "fastpool py"}.get(ref or "", ref or "-")


def times(ratio: Optional[float], more: str, less: str, digits: int = 1) -> str:
    """A ratio (> 1: the reference wins) in words, from the peer's side."""
    if ratio is None:
        return "-"
    if round(ratio, digits) == 1:
        return f"{1:.{digits}f}× (same)"
    if ratio > 1:
        return f"{ratio:.{digits}f}× {more}"
    return f"{1 / ratio:.{digits}f}× {less}"


def _rel(name: str, scen: dict, more: str, less: str, digits: int = 1) -> str:
    if name == scen["ref"]:
        return "reference"
    return times(scen["results"][name].get("ratio_vs_ref"), more, less, digits)


# ----------------------------------------------------------------------------- scenarios


def report_cycle(out: Out, scen: dict) -> None:
    res = scen["results"]
    out.heading("cycle: getconn + putconn, no query, 1 thread (ns per cycle, lower is better)")
    rows = []
    for name in sorted(res, key=lambda k: (k.startswith("_"), res[k]["best_ns"])):
        r = res[name]
        rel = "-" if name.startswith("_") else _rel(name, scen, "slower", "faster")
        rows.append([label(name), f"{r['best_ns']:,.0f}", f"{r['median_ns']:,.0f}",
                     f"{r['cycles_per_repeat']:,}×{len(r['samples_ns'])}", rel])
    out.table(["pool", "best ns", "median ns", "cycles×repeats", f"vs {ref_label(scen['ref'])}"],
              rows, "lrrrl")
    out.line("best of the repeats; the floor row is the loop's own cost.")


def report_select(out: Out, scen: dict) -> None:
    res = scen["results"]
    out.heading("select: with pool.connection(): SELECT 1, 1 thread (µs per cycle, lower is better)")
    rows = []
    for name in sorted(res, key=lambda k: (not k.startswith("_"), res[k]["p10_us"])):
        r = res[name]
        cells = [label(name), f"{r['p10_us']:.1f}", f"{r['median_us']:.1f}"]
        if name.startswith("_"):
            rows.append(cells + ["-", "-", "-"])
            continue
        over = r.get("overhead_us_vs_raw_psycopg2_p10")
        share = r.get("pool_share_vs_raw_psycopg2_p10")
        share_s = f"{share * 100:.1f}%" if share is not None else "-"
        own = r.get("pool_share_vs_raw_psycopg_p10")
        if own is not None:
            share_s += f" ({own * 100:.1f}% vs psycopg 3)"
        rows.append(cells + [f"{over:+.1f}" if over is not None else "-", share_s,
                             _rel(name, scen, "slower", "faster", 2)])
    out.table(["pool", "p10 µs", "median µs", "pool µs", "pool share", f"vs {ref_label(scen['ref'])}"],
              rows, "lrrrrl")
    n = next(iter(res.values()))["cycles"] if res else 0
    out.line(f"{n:,} timed cycles each. pool µs = p10 - p10 of the raw psycopg2 connection doing "
             "the same work; pool share = pool µs / p10.")


def report_threads(out: Out, scen: dict) -> None:
    res = scen["results"]
    out.heading(f"threads: {scen['threads']} threads share {scen['size']} connections, getconn + "
                f"putconn (cycles/s, higher is better)")
    rows = []
    order = sorted(res, key=lambda k: -res[k]["cycles_per_s"])
    for name in order:
        r = res[name]
        spread = (f"{min(r['rounds_cycles_per_s']) / 1000:,.0f}k–"
                  f"{max(r['rounds_cycles_per_s']) / 1000:,.0f}k")
        err = f"{r['errors']:,}" + (f" ({r['hung_threads']} hung)" if r["hung_threads"] else "")
        rows.append([label(name), f"{r['cycles_per_s']:,.0f}", spread, err,
                     f"{r['fairness']:.2f}", _rel(name, scen, "less", "more")])
    out.table(["pool", "cycles/s", "rounds", "errors", "fairness", f"vs {ref_label(scen['ref'])}"],
              rows, "lrrrrl")
    out.line(f"{scen['rounds']} rounds of {scen['seconds_per_pool'] / scen['rounds']:g} s per pool, "
             "interleaved. fairness = least / most cycles of one thread (0 = a thread starved).")
    for name in order:
        for msg, n in res[name]["error_messages"].items():
            out.line(f"  {label(name)}: {n:,} × {msg}")


def report_green(out: Out, scen: dict, detailed: bool = False) -> None:
    res = scen["results"]
    cfg = scen["config"]
    out.heading(f"green: {cfg['greenlets']} {scen['hub']} greenlets share {cfg['size']} connections, "
                f"{cfg['cycles']} × (checkout, SELECT 1, commit, return) each "
                f"(queries/s, higher is better)")
    if not res:
        out.line("not run (see the notes).")
        return
    headers = ["contender", "queries/s", "% of no-pool", "wait p50 ms", "wait p99 ms", "peak conns",
               "errors"]
    if detailed:
        headers += ["best-round %", "in flight", "CPU µs/query", "note"]
    headers.append(f"vs {ref_label(scen['ref'])}")

    def fmt(v: Optional[float], spec: str) -> str:
        return "-" if v is None else format(v, spec)

    rows = []
    order = sorted(res, key=lambda k: (k == "nopool", -(res[k].get("qps_median") or 0)))
    for name in order:
        s = res[name]
        limit = name == "nopool"
        if s.get("qps_median") is None:
            row = [s["label"], "n/a", "-", "-", "-", str(s.get("peak_conns", "-")), "-"]
            if detailed:
                row += ["-", "-", "-", f"{s.get('status')}: {s.get('note', '')}"[:100]]
            rows.append(row + ["-"])
            continue
        share = s.get("share_of_limit")
        row = [s["label"], f"{s['qps_median']:,.0f}",
               "100% (limit)" if limit else (fmt(share and share * 100, ".1f") + "%"),
               "-" if limit else fmt(s["wait_p50_ms"], ".2f"),
               "-" if limit else fmt(s["wait_p99_ms"], ".2f"),
               str(s["peak_conns"]), str(s["errors"] + s.get("missing_queries", 0))]
        if detailed:
            note = s.get("note", "") or ""
            if s.get("missing_queries"):
                note = f"{note} {s['missing_queries']} queries missing".strip()
            if s.get("max_in_flight") == 1 and cfg["size"] > 1:
                note = f"{note} queries never overlapped: I/O blocks the hub".strip()
            best = s.get("best_share_of_limit")
            row += ["-" if limit else fmt(best and best * 100, ".1f") + "%", str(s["max_in_flight"]),
                    fmt(s["client_cpu_us_per_query"], ".0f"), note[:100]]
        rows.append(row + [_rel(name, scen, "less", "more")])
    out.table(headers, rows, "lrrrrrr" + ("rrrl" if detailed else "") + "l")
    out.line(f"median of {cfg['repeat']} round(s), each contender in its own monkey-patched process. "
             "no-pool = size greenlets with one connection each (the limit); peak conns = most "
             "server connections seen in pg_stat_activity.")
    for name, refs in (scen.get("vs_references") or {}).items():
        out.line(f"{label(name)} vs the references (queries/s, same run): "
                 + ", ".join(f"{v:.2f}× {r}" for r, v in refs.items())
                 + " (hubqueue barges; fairq is the least first come, first served costs)")


def print_targets(out: Out, ts: List[dict]) -> None:
    out.heading("targets")
    if not ts:
        out.line("(no target in the scenarios run)")
    for t in ts:
        status = {True: "PASS", False: "MISS", None: "N/A "}[t["ok"]]
        out.line(f"{status}  {t['target']}: {t['detail']}")


def summary_line(scenarios: Dict[str, dict]) -> Optional[str]:
    """One sentence with fastpool's headline ratios, for the end of the report."""
    bits = []
    cyc = scenarios.get("cycle")
    if cyc and cyc.get("ref") == "fastpool-c":
        r = cyc["ratios"]
        others = {k: v for k, v in r.items() if v and not k.startswith("fastpool") and k != "toy"}
        if others:
            lo, hi = min(others.values()), max(others.values())
            if len(others) == 1:
                bits.append(f"checkout+return {lo:.1f}× faster than {label(next(iter(others)))}")
            else:
                bits.append(f"checkout+return {lo:.1f}–{hi:.1f}× faster than the other pools")
    thr = scenarios.get("threads")
    if thr and thr.get("ref") == "fastpool-c" and thr["ratios"].get("dbutils"):
        bits.append(f"{thr['ratios']['dbutils']:.1f}× DBUtils' 8-thread throughput")
    grn = scenarios.get("green")
    if grn and (grn["results"].get("fastpool-c") or {}).get("share_of_limit"):
        cfg = grn["config"]
        bits.append(f"{grn['results']['fastpool-c']['share_of_limit']:.0%} of the no-pool limit with "
                    f"{cfg['greenlets']} greenlets on {cfg['size']} connections")
    if not bits:
        return None
    return "fastpool (C core): " + "; ".join(bits) + "."
