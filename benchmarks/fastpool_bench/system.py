"""Facts about the machine, the server and fastpool itself, for report headers and JSON."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional


def loadavg() -> Optional[List[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def machine_info() -> Dict[str, Any]:
    info: Dict[str, Any] = {
        "nproc": os.cpu_count(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "cpu": None,
        "loadavg_start": loadavg(),
        "gil_switch_interval_s": sys.getswitchinterval(),
    }
    try:
        info["nproc_usable"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        info["cpu"] = platform.processor() or None
    return info


def server_info(dsn: str) -> Dict[str, Any]:
    """Version and max_connections of the server at ``dsn``; ``error`` instead if unreachable."""
    info: Dict[str, Any] = {"version": None, "max_connections": None}
    try:
        import psycopg2

        conn = psycopg2.connect(dsn, connect_timeout=10)
        try:
            cur = conn.cursor()
            cur.execute("SHOW server_version")
            info["version"] = cur.fetchone()[0]
            cur.execute("SHOW max_connections")
            info["max_connections"] = int(cur.fetchone()[0])
        finally:
            conn.close()
    except Exception as exc:  # reported, the caller decides
        info["error"] = f"{type(exc).__name__}: {exc}".strip()
    return info


def fastpool_info() -> Dict[str, Any]:
    """Version, active core and location of the fastpool being measured (git revision if a checkout)."""
    info: Dict[str, Any] = {}
    try:
        import fastpool

        src = Path(fastpool.__file__).resolve().parent
        info["version"] = getattr(fastpool, "__version__", "?")
        info["impl"] = getattr(fastpool, "__impl__", "?")
        info["path"] = str(src)
        if (src.parent.parent / ".git").exists():
            rev = subprocess.run(["git", "-C", str(src), "describe", "--always", "--dirty"],
                                 capture_output=True, text=True, timeout=10)
            info["git"] = rev.stdout.strip() or None
    except Exception as exc:
        info["error"] = f"{type(exc).__name__}: {exc}"
    return info


def mask(dsn: str) -> str:
    """``dsn`` with any password masked."""
    try:
        from fastpool.conninfo import masked_conninfo

        return masked_conninfo(dsn)
    except Exception:
        return "<dsn>"
