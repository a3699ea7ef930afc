"""fastpool under a REAL Celery worker process with a REAL broker.

Each scenario starts ``python -m celery -A celery_app.tasks worker`` (tests/celery_app/tasks.py)
in a subprocess, sends 500 tasks that each borrow a pooled connection and run
``SELECT pg_backend_pid(), pg_sleep(0.005)``, waits for every result, and meanwhile samples
``pg_stat_activity`` (by the worker pool's unique application_name) every ~50 ms from this
process:

* ``-P gevent -c 100`` with ``max_size=5``: 100 greenlets share at most 5 connections.
* ``-P prefork -c 2`` with ``max_size=5``: at most 2 x 5 connections; the parent borrows one
  connection before forking, and the test checks that no session was shared between processes
  and that the parent's session survived both children (fork safety).

Broker / result backend: Redis at 127.0.0.1:6379 db 15 when reachable, else kombu's SQLAlchemy
transport and Celery's database backend on the test PostgreSQL. Force one with
``FASTPOOL_TEST_CELERY_BROKER=redis|sqla``. With Redis every scenario runs on both cores
(~30 s); the SQLAlchemy fallback is slow (10-50 tasks/s), so it runs gevent on the C core and
prefork on the Python core only (~70 s; ``FASTPOOL_TEST_CELERY_ALL=1`` runs all four). Each run
uses a queue of its own, purged before and after. The worker is always stopped (SIGTERM, then
SIGKILL to its process group after 20 s), and must close its pools on shutdown.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Set, Tuple

import psycopg2
import psycopg2.extensions
import pytest
from conftest import dsn_to_url

try:
    import celery  # noqa: F401
    from celery import Celery
    from celery.result import ResultSet
except ImportError as _exc:  # pragma: no cover - depends on the environment
    pytest.skip(f"celery is not importable ({_exc}); pip install 'fastpool[celery]' to run these tests",
                allow_module_level=True)

TESTS_DIR = Path(__file__).resolve().parent
TASK = "celery_app.tasks.query"
STATS_TASK = "celery_app.tasks.stats"
NTASKS = 500
MAX_SIZE = 5  # as in tests/celery_app/tasks.py
RESULTS_TIMEOUT = 120.0
STARTUP_TIMEOUT = 45.0
STOP_TIMEOUT = 20.0
SAMPLE_EVERY = 0.05
REDIS_HOST, REDIS_PORT, REDIS_DB = "127.0.0.1", 6379, 15

pytestmark = pytest.mark.slow


# --------------------------------------------------------------------------------------------
# setup() itself, in this process (no worker)


def _receivers(signal: Any) -> int:
    return sum(1 for key, _ in signal.receivers if str(key[0]).startswith("fastpool.contrib.celery."))


def test_import_is_lazy() -> None:
    code = ("import sys, fastpool, fastpool.contrib.celery; "
            "assert 'celery' not in sys.modules, 'importing fastpool(.contrib.celery) imported celery'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_setup_idempotent_pools_and_close_all(make_pool: Any) -> None:
    from celery import signals

    import fastpool.contrib.celery as fc

    app = Celery("fastpool_setup_test", set_as_current=False)
    fc.setup(app)
    fc.setup(app, close_timeout=2.0)
    fc.setup()
    for sig in (signals.worker_process_init, signals.worker_process_shutdown, signals.worker_shutdown):
        assert _receivers(sig) == 1, sig
    with pytest.raises(TypeError):
        fc.setup(object())
    with pytest.raises(ValueError):
        fc.setup(close_timeout=-1)

    pool = make_pool(min_size=1, max_size=2)
    pool.wait(10)
    assert pool in fc.pools()
    fc._on_worker_process_init()  # not forked: a no-op apart from re-ensuring min_size
    with pool.connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")
    assert fc.close_all(2.0) >= 1
    assert pool.closed and pool not in fc.pools()


_DJANGO_CHECK = """
import os, sys
import django
from django.conf import settings
from celery import signals
import fastpool.contrib.celery as fc

signals.task_postrun.send(sender=None, task=None)  # Django not configured: must be a no-op
fc.setup()
signals.task_postrun.send(sender=None, task=None)
settings.configure(DATABASES={"default": {
    "ENGINE": "django.db.backends.postgresql", "HOST": sys.argv[1], "PORT": sys.argv[2],
    "USER": sys.argv[3], "NAME": sys.argv[4], "PASSWORD": sys.argv[5], "CONN_MAX_AGE": 0}})
django.setup()
from django.db import connection

class Req:
    is_eager = False
class Task:
    request = Req()
class EagerTask:
    request = type("R", (), {"is_eager": True})()

connection.ensure_connection()
signals.task_postrun.send(sender=EagerTask, task=EagerTask)
assert connection.connection is not None, "an eager task closed the caller's connection"
signals.task_postrun.send(sender=Task, task=Task)
assert connection.connection is None, "task_postrun did not close the obsolete connection"
signals.task_postrun.send(sender=Task, task=Task)  # already closed: harmless
print("ok")
"""


def test_task_postrun_closes_old_django_connections(dsn: str) -> None:
    pytest.importorskip("django", reason="Django is not installed")
    p = psycopg2.extensions.parse_dsn(dsn)
    args = [p.get("host", ""), p.get("port", ""), p.get("user", ""), p.get("dbname", ""), p.get("password", "")]
    out = subprocess.run([sys.executable, "-c", _DJANGO_CHECK, *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr


# --------------------------------------------------------------------------------------------
# broker selection


@dataclass(frozen=True)
class Transport:
    kind: str  # "redis" | "sqla"
    broker: str
    backend: str


def _redis_reachable() -> bool:
    try:
        import redis
    except ImportError:
        return False
    try:
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB,
                             socket_connect_timeout=1, socket_timeout=2)
        ok = bool(client.ping())
        client.close()
        return ok
    except Exception:
        return False


def _sqlalchemy_url(dsn: str) -> str:
    """``dsn`` as the part of an SQLAlchemy URL after ``scheme://`` (a socket-directory host goes
    in the query string: as a URL's host its slashes would be read as the database name)."""
    return dsn_to_url(dsn, "postgresql+psycopg2").split("://", 1)[1]


@pytest.fixture(scope="module")
def transport(dsn: str) -> Transport:
    wanted = os.environ.get("FASTPOOL_TEST_CELERY_BROKER", "").strip().lower()
    if wanted not in ("", "redis", "sqla"):
        raise pytest.UsageError(f"FASTPOOL_TEST_CELERY_BROKER must be redis or sqla, not {wanted!r}")
    if wanted == "redis" or (not wanted and _redis_reachable()):
        if not _redis_reachable():
            pytest.fail(f"FASTPOOL_TEST_CELERY_BROKER=redis but Redis at {REDIS_HOST}:{REDIS_PORT} is unreachable")
        url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"
        return Transport("redis", url, url)
    pytest.importorskip("sqlalchemy", reason="neither Redis nor SQLAlchemy (for kombu's sqla transport) available")
    rest = _sqlalchemy_url(dsn)
    # name the driver: SQLAlchemy 2.1 maps plain postgresql:// to psycopg (3)
    return Transport("sqla", f"sqla+postgresql+psycopg2://{rest}", f"db+postgresql+psycopg2://{rest}")


# --------------------------------------------------------------------------------------------
# sampling pg_stat_activity from this process


class Sampler:
    """Counts the server backends tagged ``app_name`` every ~50 ms on a thread of its own."""

    def __init__(self, dsn: str, app_name: str) -> None:
        self._conn = psycopg2.connect(dsn, application_name="fastpool-test-celery-sampler")
        self._conn.autocommit = True
        self._app_name = app_name
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pg-sampler", daemon=True)
        self.samples = 0
        self.peak = 0
        #: sessions left out of ``peak_others`` (the prefork parent's, known before sampling starts)
        self.exclude: Set[int] = set()
        self.peak_others = 0
        self.seen: Set[int] = set()
        #: pid -> (backend_start, state, query) as last sampled: what a session did, for messages
        self.last: Dict[int, Tuple[Any, ...]] = {}
        self.error: Optional[BaseException] = None

    def pids(self) -> Set[int]:
        with self._conn.cursor() as cur:
            cur.execute("SELECT pid, backend_start, state, left(query, 80) FROM pg_stat_activity "
                        "WHERE application_name = %s", (self._app_name,))
            rows = cur.fetchall()
        for pid, *rest in rows:
            self.last[int(pid)] = (str(rest[0]), *rest[1:])
        return {int(r[0]) for r in rows}

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                pids = self.pids()
                self.samples += 1
                self.peak = max(self.peak, len(pids))
                self.peak_others = max(self.peak_others, len(pids - self.exclude))
                self.seen |= pids
                self._stop.wait(SAMPLE_EVERY)
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def close(self) -> None:
        self.stop()
        self._conn.close()


# --------------------------------------------------------------------------------------------
# the worker subprocess


@dataclass
class Worker:
    proc: subprocess.Popen
    log_path: Path
    stopped_cleanly: Optional[bool] = None

    def log(self, tail: int = 80) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "<no worker log>"
        return "\n".join(lines[-tail:])

    def stop(self) -> None:
        """SIGTERM (warm shutdown), then SIGKILL to the whole process group after STOP_TIMEOUT."""
        if self.proc.poll() is not None:
            self.stopped_cleanly = self.proc.returncode == 0
            return
        try:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(STOP_TIMEOUT)
            self.stopped_cleanly = self.proc.returncode == 0
        except subprocess.TimeoutExpired:
            self.stopped_cleanly = False
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: the worker and its children
            except ProcessLookupError:
                pass
            self.proc.wait(10)


def _purge(app: Celery, queue: str) -> None:
    try:
        with app.connection_for_write() as conn:
            conn.default_channel.queue_purge(queue)
    except Exception:
        pass  # nothing to purge (the queue does not exist yet)


def _forget_queue(transport: Transport, queue: str) -> None:
    """Drop what kombu leaves in Redis db 15 for a queue used once (its exchange bindings)."""
    if transport.kind != "redis":
        return
    try:
        import redis

        r = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB, socket_connect_timeout=1)
        r.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
        r.zrem("_kombu.binding_deadlines", queue)
        r.close()
    except Exception:
        pass


def _client(transport: Transport, queue: str) -> Celery:
    app = Celery("fastpool_celery_client", broker=transport.broker, backend=transport.backend,
                 set_as_current=False)
    app.conf.update(task_default_queue=queue, result_expires=600)
    return app


@dataclass
class Outcome:
    values: List[Any]
    failures: List[Any] = field(default_factory=list)


def _collect(results: ResultSet, timeout: float) -> Outcome:
    if results.supports_native_join:
        values = results.join_native(timeout=timeout, propagate=False)
    else:
        values = results.join(timeout=timeout, propagate=False, interval=0.05)
    outcome = Outcome(values=[])
    for v in values:
        if isinstance(v, BaseException) or not isinstance(v, (list, tuple)):
            outcome.failures.append(v)
        else:
            outcome.values.append(v)
    return outcome


def _await_gone(sampler: Sampler, timeout: float) -> Set[int]:
    deadline = time.monotonic() + timeout
    while True:
        left = sampler.pids()
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


# --------------------------------------------------------------------------------------------
# scenarios

_IMPLS = [os.environ["FASTPOOL_IMPL"]] if os.environ.get("FASTPOOL_IMPL") in ("c", "python") else ["c", "python"]
#: with the slow SQLAlchemy fallback broker only these run (one per pool type, each core once)
_SQLA_SCENARIOS = {("gevent", "c"), ("prefork", "python")}
SCENARIOS = [
    pytest.param(kind, conc, impl, id=f"{kind}-c{conc}-{'py' if impl == 'python' else impl}")
    for kind, conc in (("gevent", 100), ("prefork", 2))
    for impl in _IMPLS
]


@pytest.fixture
def worker_factory(tmp_path: Path) -> Iterator[Any]:
    workers: List[Worker] = []

    def start(pool_kind: str, concurrency: int, env: Dict[str, str]) -> Worker:
        log_path = tmp_path / f"worker-{pool_kind}.log"
        cmd = [
            sys.executable, "-m", "celery", "-A", "celery_app.tasks", "worker",
            "-P", pool_kind, "-c", str(concurrency), "-Q", env["FASTPOOL_CELERY_QUEUE"],
            "-n", f"fastpool-test-{uuid.uuid4().hex[:8]}@%h",
            "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "info",
        ]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, cwd=TESTS_DIR, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        w = Worker(proc, log_path)
        workers.append(w)
        return w

    yield start
    for w in workers:
        w.stop()


@pytest.mark.parametrize("pool_kind, concurrency, impl", SCENARIOS)
def test_celery_worker(pool_kind: str, concurrency: int, impl: str, transport: Transport, dsn: str,
                       app_name: str, worker_factory: Any) -> None:
    if pool_kind == "gevent":
        pytest.importorskip("gevent", reason="-P gevent needs gevent")
    if impl == "c":
        pytest.importorskip("fastpool._core", reason="the compiled core is not built")
    if (transport.kind == "sqla" and len(_IMPLS) > 1 and (pool_kind, impl) not in _SQLA_SCENARIOS
            and not os.environ.get("FASTPOOL_TEST_CELERY_ALL")):
        pytest.skip("the SQLAlchemy broker fallback runs ~10-50 tasks/s: only gevent on the C core and "
                    "prefork on the Python core, to stay in the time budget (FASTPOOL_TEST_CELERY_ALL=1: all)")
    processes = 1 if pool_kind == "gevent" else concurrency
    prewarm_parent = pool_kind == "prefork"
    queue = f"fastpool-test-{uuid.uuid4().hex[:12]}"
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join([str(TESTS_DIR)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])),
        FASTPOOL_IMPL=impl,
        FASTPOOL_CELERY_DSN=dsn,
        FASTPOOL_CELERY_APP_NAME=app_name,
        FASTPOOL_CELERY_BROKER=transport.broker,
        FASTPOOL_CELERY_BACKEND=transport.backend,
        FASTPOOL_CELERY_QUEUE=queue,
        FASTPOOL_CELERY_PREWARM="1" if prewarm_parent else "0",
        PYTHONUNBUFFERED="1",
    )
    client = _client(transport, queue)
    _purge(client, queue)
    sampler = Sampler(dsn, app_name)
    t_start = time.monotonic()
    worker = worker_factory(pool_kind, concurrency, env)
    try:
        # 1. the worker is up once a first task comes back
        try:
            first = client.send_task(TASK, queue=queue).get(timeout=STARTUP_TIMEOUT)
        except Exception as exc:
            pytest.fail(f"worker did not answer within {STARTUP_TIMEOUT:g} s ({exc!r}); "
                        f"exit code {worker.proc.poll()}; log:\n{worker.log()}")
        startup = time.monotonic() - t_start
        # the prefork parent borrowed (and keeps idle) one connection before forking
        parent_sessions = sampler.pids() - {first[0]} if prewarm_parent else set()
        if prewarm_parent:
            assert len(parent_sessions) == 1, f"expected the parent's one prewarm session, saw {parent_sessions}"

        # 2. 500 tasks while sampling pg_stat_activity
        sampler.exclude = set(parent_sessions)
        sampler.start()
        t0 = time.monotonic()
        sent = ResultSet([client.send_task(TASK, queue=queue) for _ in range(NTASKS)], app=client)
        t_sent = time.monotonic() - t0
        outcome = _collect(sent, RESULTS_TIMEOUT)
        elapsed = time.monotonic() - t0
        sampler.stop()
        assert sampler.error is None, f"sampler failed: {sampler.error!r}"
        still_there = sampler.pids()

        # 3. results
        assert not outcome.failures, (
            f"{len(outcome.failures)}/{NTASKS} tasks failed, e.g. {outcome.failures[:3]!r}\n{worker.log()}"
        )
        assert len(outcome.values) == NTASKS
        assert {v[2] for v in outcome.values} == {impl}, "the worker ran another fastpool core"
        owners: Dict[int, Set[int]] = {}
        for backend_pid, os_pid, _ in [tuple(first)] + [tuple(v) for v in outcome.values]:
            owners.setdefault(backend_pid, set()).add(os_pid)
        shared = {b: o for b, o in owners.items() if len(o) > 1}
        assert not shared, f"server sessions used by more than one worker process: {shared}"
        per_process: Dict[int, Set[int]] = {}
        for backend_pid, o in owners.items():
            per_process.setdefault(next(iter(o)), set()).add(backend_pid)
        assert len(per_process) <= processes, f"tasks ran in {len(per_process)} processes"
        for os_pid, used in per_process.items():
            assert len(used) <= MAX_SIZE, f"worker process {os_pid} used {len(used)} sessions > max_size"
        assert parent_sessions.isdisjoint(owners), "a child used the parent's inherited session"
        assert parent_sessions <= still_there, "the prefork parent's session was ended (by a child?)"
        unexpected = sampler.seen - set(owners) - parent_sessions
        if pool_kind == "gevent" and unexpected:
            # A waiting greenlet makes the pool open a connection; a connection returned
            # meanwhile can serve that greenlet first, and the new one then idles under LIFO
            # hand-out (the hot connections keep being reused) until max_idle: a pool connection
            # that ran no task, as designed. So here every session must be one the worker's pool
            # made (its own count), and the peak bound below still holds. Prefork children run one
            # task at a time, never wait, and keep the strict check.
            made = client.send_task(STATS_TASK, queue=queue).get(timeout=30)["connections_num"]
            seen = sampler.seen - parent_sessions
            assert len(seen) <= made, (
                f"{len(seen)} sessions with our application_name, but the worker's pool made only "
                f"{made}: {sorted(unexpected)} came from elsewhere; "
                f"{ {pid: sampler.last.get(pid) for pid in unexpected} }\n{worker.log()}"
            )
            print(f"\n{len(unexpected)} pool connection(s) ran no task ({made} made, "
                  f"{len(owners)} ran tasks): {[sampler.last.get(pid) for pid in unexpected]}")
            unexpected = set()
        assert not unexpected, (
            f"sessions with our application_name that ran no task: "
            f"{ {pid: sampler.last.get(pid) for pid in unexpected} }; task sessions: "
            f"{ {pid: sampler.last.get(pid) for pid in owners} }\n{worker.log()}"
        )
        bound = processes * MAX_SIZE
        assert sampler.peak_others <= bound, f"peak {sampler.peak_others} connections (parent's excluded) > {bound}"
        assert sampler.peak <= bound + len(parent_sessions), f"peak {sampler.peak} connections in all"
        assert sampler.samples >= 3, "too few pg_stat_activity samples to trust the peak"

        # 4. shutdown closes every pool (worker_shutdown / worker_process_shutdown)
        t_stop = time.monotonic()
        worker.stop()
        stop_time = time.monotonic() - t_stop
        left = _await_gone(sampler, 10.0)
        log = worker.log(400)
        assert worker.stopped_cleanly, f"worker exit code {worker.proc.returncode}\n{log}"
        assert not left, f"sessions left after the worker stopped: {left}"
        assert "worker_shutdown: closed" in log, f"worker_shutdown did not close the pool\n{log}"
        if pool_kind == "prefork":
            assert "worker_process_shutdown: closed" in log, f"children did not close their pools\n{log}"
        print(
            f"\n[celery {pool_kind} -c {concurrency}, core={impl}, broker={transport.kind}] "
            f"{NTASKS} tasks OK in {elapsed:.2f} s (sent in {t_sent:.2f} s; {NTASKS / elapsed:.0f} tasks/s); "
            f"peak {sampler.peak_others} task connections (bound {bound}), {sampler.peak} with the parent's "
            f"({sampler.samples} samples); "
            f"sessions per process {sorted(len(s) for s in per_process.values())}; "
            f"parent sessions {len(parent_sessions)}; startup {startup:.2f} s; stop {stop_time:.2f} s"
        )
    finally:
        worker.stop()
        sampler.close()
        _purge(client, queue)
        client.close()
        _forget_queue(transport, queue)
