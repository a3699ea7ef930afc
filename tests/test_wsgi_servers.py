"""A real WSGI server process serving a Django view through ``django_fastpool``, per green server.

What works with which server (README "gunicorn, gevent and eventlet"):

* ``gunicorn -k gevent`` (any gunicorn, 27 included);
* ``eventlet.wsgi.server`` in forked processes (benchmarks/django_gunicorn/eventlet_server.py):
  the eventlet user's server once gunicorn has no eventlet worker;
* ``gunicorn -k eventlet``: only gunicorn < 26 has that worker (deprecated in 25, removed in 26);
  skipped, with the reason, when the installed gunicorn lacks it (CI's 3.11 lane installs
  ``gunicorn<26`` to run it).

Each server runs 2 worker processes of tests/wsgi_site/site_app.py with ``max_size=3``. Clients
keep requests in flight (each view holds a connection for ``SELECT pg_sleep``) until the server
shows more queries active at once than there are workers -- greenlets of one worker overlapping
on the database, which a worker whose hub psycopg2 blocked could never do -- then the test checks
that no more than workers × max_size server connections ever existed, every request succeeded
on psycopg2 with fastpool's wait callback for that hub, and the connections close with the server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, List

import pytest

from conftest import free_tcp_port

pytest.importorskip("django")

ROOT = Path(__file__).resolve().parent.parent
SITE = Path(__file__).resolve().parent / "wsgi_site"
EVENTLET_SERVER = ROOT / "benchmarks" / "django_gunicorn" / "eventlet_server.py"
WORKERS = 2
MAX_SIZE = 3
CLIENTS = 16
SLEEP = 0.2          # seconds each request holds its connection
DEADLINE = 90.0      # generous: the machine may be loaded


def _gunicorn_workers() -> Dict[str, str]:
    try:
        from gunicorn.workers import SUPPORTED_WORKERS
    except ImportError:
        pytest.fail("gunicorn is not installed (it is in the test extras: pip install -e '.[test]')",
                    pytrace=False)
    return dict(SUPPORTED_WORKERS)


def _command(server: str, port: int) -> List[str]:
    bind = f"127.0.0.1:{port}"
    if server == "eventlet-wsgi":
        return [sys.executable, str(EVENTLET_SERVER), bind, str(WORKERS), "site_app:application"]
    kind = server.split("-", 1)[1]
    if kind not in _gunicorn_workers():
        import gunicorn

        pytest.skip(f"gunicorn {gunicorn.__version__} has no {kind} worker (removed in gunicorn 26; "
                    f"eventlet users run eventlet.wsgi or gunicorn<26)")
    return [sys.executable, "-m", "gunicorn", "-k", kind, "-w", str(WORKERS), "-b", bind,
            "--chdir", str(SITE), "--log-level", "warning", "--graceful-timeout", "5",
            "site_app:application"]


def _get(url: str) -> Dict[str, Any]:
    req = urllib.request.Request(url, headers={"Connection": "close"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.status == 200
        result: Dict[str, Any] = json.loads(resp.read())
        return result


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's own process group (master and workers), then SIGKILL if needed."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.mark.slow
@pytest.mark.parametrize("server", ["gunicorn-gevent", "eventlet-wsgi", "gunicorn-eventlet"])
def test_green_server_serves_django_through_the_pool(
    server: str, dsn: str, impl: str, app_name: str, admin: Any, backends: Any, tmp_path: Path
) -> None:
    port = free_tcp_port()
    env = {**os.environ, "FASTPOOL_TEST_DSN": dsn, "FASTPOOL_TEST_APP": app_name,
           "FASTPOOL_IMPL": impl, "FP_SITE_POOL_MAX": str(MAX_SIZE), "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(_command(server, port), cwd=SITE, env=env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def log_tail() -> str:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])

    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + DEADLINE
        while True:  # ready when a request gets through
            assert proc.poll() is None, f"{server} exited with {proc.returncode}:\n{log_tail()}"
            try:
                _get(url)
                break
            except OSError:
                assert time.monotonic() < deadline, f"{server} never answered:\n{log_tail()}"
                time.sleep(0.2)

        done = threading.Event()
        results: List[Dict[str, Any]] = []
        errors: List[BaseException] = []
        peaks = {"total": 0, "active": 0}

        def client() -> None:
            while not done.is_set():
                try:
                    results.append(_get(f"{url}?sleep={SLEEP}"))
                except BaseException as exc:  # noqa: BLE001 - reported by the test
                    errors.append(exc)
                    return

        threads = [threading.Thread(target=client, daemon=True) for _ in range(CLIENTS)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + DEADLINE
        with admin.cursor() as cur:
            while time.monotonic() < deadline and not errors:
                cur.execute("SELECT count(*), count(*) FILTER (WHERE state = 'active') "
                            "FROM pg_stat_activity WHERE application_name = %s", (app_name,))
                total, active = cur.fetchone()
                peaks["total"] = max(peaks["total"], total)
                peaks["active"] = max(peaks["active"], active)
                if peaks["active"] > WORKERS:
                    break
                time.sleep(0.01)
            done.set()
            for t in threads:
                t.join(DEADLINE)
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (app_name,))
            peaks["total"] = max(peaks["total"], cur.fetchone()[0])

        assert not errors, f"{server}: {errors[0]!r}\n{log_tail()}"
        assert peaks["active"] > WORKERS, (
            f"{server}: never more than {peaks['active']} queries at once for {WORKERS} workers: the "
            f"greenlets of a worker did not overlap on the database\n{log_tail()}")
        assert peaks["total"] <= WORKERS * MAX_SIZE, (server, peaks)
        hub = "eventlet" if "eventlet" in server else "gevent"
        assert results and {r["driver"] for r in results} == {"psycopg2"}
        # fastpool registers its own callback for the hub, unless one was there first:
        # eventlet.monkey_patch() registers eventlet's (fastpool keeps it, see green.py).
        cooperative = {f"fastpool.green._{hub}_wait_callback",
                       "eventlet.support.psycopg2_patcher.eventlet_wait_callback"}
        assert {r["wait"] for r in results} <= cooperative, results[0]
        assert {r["stats"]["pool_max"] for r in results} == {MAX_SIZE}
        assert len({r["pid"] for r in results}) <= WORKERS
    finally:
        _stop(proc)
    # The workers' connections end with them.
    assert backends.wait(0, timeout=30) == 0, log_tail()
