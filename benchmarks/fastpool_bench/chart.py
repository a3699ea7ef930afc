"""One PNG with a bar chart per scenario (matplotlib, optional)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple

HIGHLIGHT = "#d62728"  # fastpool, C core
HIGHLIGHT_PY = "#f1a1a1"  # fastpool, python core
OTHER = "#7f7f7f"
BASELINE = "#c7c7c7"

# scenario -> (title, metric, unit label, lower is better)
PANELS = {
    "cycle": ("getconn + putconn, 1 thread", "best_ns", "ns per cycle (lower is better)", True),
    "select": ("with pool.connection(): SELECT 1", "p10_us", "µs per cycle, p10 (lower is better)", True),
    "threads": ("8 threads share 4 connections", "cycles_per_s", "cycles/s (higher is better)", False),
    "green": ("1000 greenlets share 10 connections", "qps_median", "queries/s (higher is better)", False),
}


def unavailable() -> Optional[str]:
    """Why no chart can be drawn (None: matplotlib is importable)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib, or pip install 'fastpool[bench]')"
    return None


def _bars(scen: dict, metric: str) -> List[Tuple[str, str, float, str]]:
    from .report import label

    bars = []
    for name, r in scen["results"].items():
        value = r.get(metric)
        if value is None:
            continue
        if name == "fastpool-python":
            colour = HIGHLIGHT_PY
        elif name.startswith("fastpool"):
            colour = HIGHLIGHT
        elif name.startswith("_") or name in ("nopool", "hubqueue", "fairq", "toy"):
            colour = BASELINE  # baselines and references, not products
        else:
            colour = OTHER
        bars.append((name, r.get("label") or label(name), float(value), colour))
    return bars


def draw(scenarios: Dict[str, dict], path: str, subtitle: str = "") -> str:
    """Write the chart to ``path``; returns the path.  Raises ImportError without matplotlib."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    from .report import times

    panels = [(key, scenarios[key]) for key in PANELS if scenarios.get(key) and scenarios[key]["results"]]
    if not panels:
        raise ValueError("no scenario results to chart")
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 2.2 + 2.1 * len(panels)), squeeze=False)
    for ax, (key, scen) in zip(axes[:, 0], panels):
        title, metric, unit, lower = PANELS[key]
        if key == "green":
            cfg = scen["config"]
            title = f"{cfg['greenlets']} {scen['hub']} greenlets share {cfg['size']} connections"
        bars = sorted(_bars(scen, metric), key=lambda b: b[2], reverse=not lower)
        values = [b[2] for b in bars]
        ax.barh(range(len(bars)), values, color=[b[3] for b in bars])
        ax.set_yticks(range(len(bars)))
        ax.set_yticklabels([b[1] for b in bars], fontsize=8)
        ax.invert_yaxis()  # best on top
        ax.set_title(title, fontsize=10, loc="left")
        ax.set_xlabel(unit, fontsize=8)
        ax.tick_params(axis="x", labelsize=8)
        ref = scen["results"].get(scen.get("ref") or "", {}).get(metric)
        top = max(values) if values else 1
        for i, (name, _, value, _) in enumerate(bars):
            text = f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"
            if name == scen.get("ref"):
                text += "  (reference)"
            elif ref and value and not name.startswith("_"):
                ratio = value / ref if lower else ref / value
                if round(ratio, 1) == 1:
                    text += "  (same)"
                else:
                    text += "  (" + times(ratio, "slower" if lower else "less", "faster" if lower else "more") + ")"
            ax.text(value + top * 0.01, i, text, va="center", fontsize=7)
        ax.set_xlim(0, top * 1.35)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    fig.suptitle("fastpool vs other PostgreSQL pools, one run" + (f"\n{subtitle}" if subtitle else ""),
                 fontsize=11)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
