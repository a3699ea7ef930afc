"""The greenlet benchmarks' reference pools (``benchmarks/fastpool_bench/refpools.py``) and the
contenders that use them: a yardstick that is not fair, or not one source, would mislead.

Every hub runs in its own subprocess: monkey-patching is per process.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
HUBS = [pytest.param(h, marks=pytest.mark.skipif(find_spec(h) is None, reason=f"{h} is not installed"))
        for h in ("gevent", "eventlet")]

# Two connections, two holders that return theirs and at once ask again, four greenlets queued
# meanwhile.  A fair queue serves the four before either holder's second request (a barging one
# would give each holder its own connection straight back); no connection is ever held twice.
_FIFO = r"""
import json, sys
hub = sys.argv[1]
if hub == "gevent":
    from gevent import monkey
    monkey.patch_all()
    import gevent
    spawn, sleep = gevent.spawn, gevent.sleep
    def join(gs):
        gevent.joinall(gs, raise_error=True)
else:
    import warnings
    warnings.filterwarnings("ignore")
    import eventlet
    eventlet.monkey_patch()
    spawn, sleep = eventlet.spawn, eventlet.sleep
    def join(gs):
        for g in gs:
            g.wait()
sys.path.insert(0, sys.argv[2])
from fastpool_bench.refpools import FairQueue

fq = FairQueue(hub, ["a", "b"])
order, in_use, errors = [], set(), []

def take(i):
    c = fq.get()
    if c in in_use:
        errors.append(f"{c} handed to {i} while held")
    in_use.add(c)
    order.append(i)
    return c

def give(c):
    in_use.discard(c)
    fq.put(c)

def holder(i):
    c = take(i)
    sleep(0.05)  # the others queue meanwhile
    give(c)
    give(take(i))  # asks again at once: must queue behind every earlier waiter

def waiter(i):
    c = take(i)
    sleep(0)
    give(c)

gs = [spawn(holder, 0), spawn(holder, 1)] + [spawn(waiter, i) for i in range(2, 6)]
join(gs)
print(json.dumps({"order": order, "errors": errors, "free": sorted(fq.free),
                  "waiters": len(fq.waiters)}))
"""


def _run(args: list, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, cwd=BENCH)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.mark.parametrize("hub", HUBS)
def test_fairq_serves_first_come_first_served(hub: str) -> None:
    out = json.loads(_run([sys.executable, "-c", _FIFO, hub, str(BENCH)]).stdout.splitlines()[-1])
    assert out["errors"] == []
    assert out["order"][:6] == [0, 1, 2, 3, 4, 5], out["order"]
    assert sorted(out["order"][6:]) == [0, 1], out["order"]
    # everything came back: both connections free, nobody left parked
    assert out["free"] == ["a", "b"] and out["waiters"] == 0


@pytest.mark.parametrize("hub", HUBS)
def test_checkout_bench_runs_fairq_from_the_one_source(hub: str, dsn: str) -> None:
    src = (BENCH / "bench_green_checkout.py").read_text()
    assert "from fastpool_bench.refpools import FairQueue" in src
    assert "Waiter(" not in src  # no second copy of the reference
    proc = _run([sys.executable, str(BENCH / "bench_green_checkout.py"), "fairq", "1",
                 "--hub", hub, "--dsn", dsn])
    assert f"{hub} fairq: CPU" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("hub", HUBS)
def test_full_green_scenario_reports_fastpool_against_both_references(hub: str, dsn: str,
                                                                      tmp_path: Path) -> None:
    pytest.importorskip("psycogreen")
    out = tmp_path / "g.json"
    _run([sys.executable, str(BENCH / "bench_green.py"), "--dsn", dsn, "--hub", hub,
          "--only", "fastpool-c,fairq,hubqueue,nopool", "--greenlets", "40", "--size", "4",
          "--cycles", "2", "--repeat", "1", "--busy", "1", "--json", str(out)], timeout=300)
    doc = json.loads(out.read_text())
    res = doc["green"]["results"]
    fq = res["fairq"]
    assert fq["status"] == "ok", fq
    assert fq["errors"] == 0 and fq["missing_queries"] == 0
    assert 1 <= fq["peak_conns"] <= 4
    assert fq["wait_p99_ms"] is not None and fq["wait_callback"].startswith("psycogreen")
    assert fq["label"].startswith("ref:")  # a reference, not a product
    refs = doc["green"]["vs_references"]["fastpool-c"]
    assert set(refs) == {"hubqueue", "fairq"} and all(v > 0 for v in refs.values())
    assert doc["config"]["busy"] == 1
    # the fair reference is not a target: only hubqueue appears among the targets
    assert not any("fairq" in t["name"] for t in doc["targets"])


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_cache_bench_counts_per_query(dsn: str, tmp_path: Path) -> None:
    out = tmp_path / "c.json"
    _run([sys.executable, str(BENCH / "bench_green_cache.py"), "--dsn", dsn, "--only", "fairq",
          "--greenlets", "20", "--cycles", "1", "--queries", "40", "--json", str(out)], timeout=500)
    (row,) = json.loads(out.read_text())["rows"]
    assert row["lo"]["cycles"] == 1 and row["hi"]["cycles"] == 3
    assert row["lo"]["queries"] == 20 and row["hi"]["queries"] == 60
    pq = row["per_query"]
    # a query costs the client some instructions and data references; misses cannot exceed refs
    assert pq["instr"] > 0 and 0 <= pq["d1_miss"] <= pq["d_refs"]
