"""The threading rule (``fastpool._original``'s docstring; RELIABILITY.md "Threads, locks and
greenlets"): every lock fastpool makes is a real OS lock and is never held across a greenlet
switch; fastpool's own threads touch no patched primitive; only a caller that waits cooperates
with its hub.

Two checks: a static one that lists every threading / _thread / queue / time.sleep use in the
shipped code and fails on one that is not allowed here with its reason; and the case the rule
exists for, in a gevent- and in an eventlet-patched process: a watchdog fires from the timer
thread while the watched thread holds the watchdog's lock and then never runs its hub (as when
it is blocked in libpq, the very thing the watchdog must end).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = [ROOT / "src" / "fastpool", ROOT / "django_fastpool"]

#: modules whose primitives become green once gevent/eventlet patched them
WATCHED_MODULES = {"threading", "_thread", "queue"}

#: (file, use) -> why it is allowed. A use is "import M", "from M import X" or "M.X".
ALLOWED: Dict[Tuple[str, str], str] = {
    ("src/fastpool/_original.py", "import _thread"):
        "the originals themselves: _thread's own functions when nothing patched it",
    ("src/fastpool/waiting.py", "import _thread"): "see the next entry",
    ("src/fastpool/waiting.py", "_thread.allocate_lock"):
        "rule 4: a plain thread waiting for a connection blocks on the lock _thread has at that "
        "moment (patched: it waits through the thread's hub)",
    ("src/fastpool/pool.py", "time.sleep"):
        "rule 4: Pool.wait(), a caller waiting for min_size, sleeps cooperatively when patched",
    ("src/fastpool/green.py", "time.sleep"):
        "rule 4: spin()'s fallback where os.sched_yield is missing, an OS-thread caller's wait",
}


def _uses(path: Path) -> List[str]:
    """Every import of a watched module, and every ``M.X`` / ``time.sleep`` attribute use."""
    found: List[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name in WATCHED_MODULES]
        elif isinstance(node, ast.ImportFrom):
            if node.module in WATCHED_MODULES or (node.module == "time" and any(a.name == "sleep" for a in node.names)):
                found += [f"from {node.module} import {a.name}" for a in node.names]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            name = node.value.id
            if name in WATCHED_MODULES or (name == "time" and node.attr == "sleep"):
                found.append(f"{name}.{node.attr}")
    return found


def test_every_threading_primitive_follows_the_rule() -> None:
    seen = set()
    unexplained = []
    for top in SHIPPED:
        for path in sorted(top.rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            for use in _uses(path):
                seen.add((rel, use))
                if (rel, use) not in ALLOWED:
                    unexplained.append(f"{rel}: {use}")
    assert not unexplained, (
        "threading primitives outside the rule (fastpool._original): use _original.allocate_lock() / "
        "start_new_thread(), or, for a caller's wait only, add the use to ALLOWED with its reason:\n  "
        + "\n  ".join(unexplained)
    )
    stale = sorted(f"{f}: {u}" for f, u in set(ALLOWED) - seen)
    assert not stale, "ALLOWED lists uses that are gone (remove them):\n  " + "\n  ".join(stale)


# -- the watchdog fires from its OS thread while the watched thread's hub never runs ------------

_WATCHDOG_SCRIPT = r"""
import json, os, sys, time
kind = sys.argv[1]
if kind == "gevent":
    from gevent import monkey
    monkey.patch_all()
    real_sleep = monkey.get_original("time", "sleep")

    def hub_in_this_thread():
        from gevent._hub_local import get_hub_if_exists
        return get_hub_if_exists() is not None
else:
    import warnings
    warnings.simplefilter("ignore")
    import eventlet
    eventlet.monkey_patch()
    from eventlet import patcher
    real_sleep = patcher.original("time").sleep

    def hub_in_this_thread():
        import eventlet.hubs
        return getattr(eventlet.hubs._threadlocal, "hub", None) is not None

import fastpool
from fastpool import health

pool = fastpool.Pool(os.environ["FASTPOOL_TEST_DSN"], min_size=0, max_size=1,
                     kwargs={"application_name": os.environ["FASTPOOL_TEST_APP"]})
conn = pool.getconn()
# From here on this thread never yields to its hub: it only sleeps with the real time.sleep.
wd = health.Watchdog(pool._timers, conn, 0.0)
wd._lock.acquire()  # the watched thread is inside finish() (or anywhere else holding it)


def timer_thread_in_fire():
    for frame in sys._current_frames().values():
        while frame is not None:
            if frame.f_code is health.Watchdog._fire.__code__:
                return True
            frame = frame.f_back
    return False


deadline = time.monotonic() + 30
while not timer_thread_in_fire() and time.monotonic() < deadline:
    real_sleep(0.001)
entered = timer_thread_in_fire()
real_sleep(0.05)  # let the timer thread reach the acquire
wd._lock.release()
released = time.monotonic()
while wd._state != wd.FIRED and time.monotonic() < released + 20:
    real_sleep(0.002)
fired_after = time.monotonic() - released if wd._state == wd.FIRED else None

# Whatever the timer thread ran must not have made a hub there (rule 2: no patched socket).
probe = []
if fired_after is not None:  # else the timer thread is still stuck in _fire
    pool._timers.submit(lambda: probe.append(hub_in_this_thread()))
    while not probe and time.monotonic() < deadline:
        real_sleep(0.002)
finished_in_time = wd.finish()
pool.putconn(conn)  # its socket is shut down if the watchdog fired: discarded
pool.close()
print("RESULT " + json.dumps({"entered": entered, "fired_after": fired_after,
                              "finished_in_time": finished_in_time,
                              "timer_thread_hub": probe[0] if probe else None}))
"""


@pytest.mark.parametrize("kind", ["gevent", "eventlet"])
def test_watchdog_fires_from_its_thread_while_the_watched_hub_is_blocked(
    kind: str, dsn: str, impl: str, app_name: str
) -> None:
    pytest.importorskip(kind)
    env = {**os.environ, "FASTPOOL_TEST_DSN": dsn, "FASTPOOL_IMPL": impl, "FASTPOOL_TEST_APP": app_name}
    proc = subprocess.run([sys.executable, "-c", _WATCHDOG_SCRIPT, kind], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=90)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and len(lines) == 1, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    result = json.loads(lines[0][len("RESULT "):])
    assert result["entered"], f"the timer thread never ran the watchdog: {result}"
    assert result["fired_after"] is not None, (
        f"[{kind}] the watchdog could not take its own lock from the timer thread while the watched "
        f"thread's hub was not running (a green lock?): {result}"
    )
    assert result["finished_in_time"] is False, result  # it fired: the connection is not reused
    assert result["timer_thread_hub"] is False, f"[{kind}] the timer thread made a hub of its own: {result}"
