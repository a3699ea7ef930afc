"""Django scenarios for tests/test_django.py, one per process: ``python driver.py SCENARIO [ARG]``.

Django settings are process-global and gevent monkey-patching must never happen in the pytest
process, so every scenario runs here, in a fresh interpreter. Scenarios named ``gevent_*``
call ``monkey.patch_all()`` before anything else is imported.

Environment (set by tests/test_django.py):

* ``FASTPOOL_TEST_DSN``  libpq key=value DSN of the test database (parsed into NAME/USER/...)
* ``FASTPOOL_IMPL``      fastpool core under test ("c" or "python")
* ``FASTPOOL_TEST_APP``  application_name of the pooled connections (``OPTIONS``)
* ``FP_DJ_TABLE``        table of ``fpapp.Item`` (created and dropped by the test)
* ``FP_DJ_POOL``         JSON: ``OPTIONS["pool"]`` of alias "default" (default ``{}``)
* ``FP_DJ_DB``           JSON merged into ``DATABASES["default"]`` (``OPTIONS`` merged key by key)
* ``FP_DJ_OTHER``        JSON: if set, a second alias "other" on the same database with this
                         ``OPTIONS["pool"]``
* ``FP_DJ_SETTINGS``     JSON: extra global settings (``USE_TZ``, ``TIME_ZONE``, ``INSTALLED_APPS``)

The scenario prints exactly one line ``RESULT {json}`` (observations; the test makes the
assertions) and exits 0; an unexpected error ends it with a traceback and exit code 1.
"""

from __future__ import annotations

import sys

SCENARIO = sys.argv[1] if len(sys.argv) > 1 else ""
ARG = sys.argv[2] if len(sys.argv) > 2 else ""

if SCENARIO.startswith("gevent_"):
    from gevent import monkey

    monkey.patch_all()

if SCENARIO == "preload" and ARG.startswith("gevent"):
    # A deadlock blocks the whole OS thread, hub included (no gevent timeout can fire): a
    # C-level watchdog ends the process with every thread's traceback instead.
    import faulthandler

    faulthandler.dump_traceback_later(60, exit=True)
    from gevent import monkey

    monkey.patch_all()

if SCENARIO == "preload" and ARG == "eventlet":
    import faulthandler
    import warnings

    faulthandler.dump_traceback_later(60, exit=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eventlet's deprecation notice
        import eventlet

    eventlet.monkey_patch()

if SCENARIO == "psycopg3" and ARG == "imported_first":
    import psycopg  # noqa: F401  # psycopg 3 already in sys.modules when Django picks a driver

if SCENARIO == "contrib_postgres" and ARG == "imported_first":
    # What a project does in settings.py: load the backend before apps (contrib.postgres) load.
    import django_fastpool.base  # noqa: F401

import gc  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from time import monotonic  # noqa: E402
from typing import Any, Callable, Dict, List  # noqa: E402

import psycopg2  # noqa: E402
import psycopg2.extensions  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

DSN = os.environ["FASTPOOL_TEST_DSN"]
IMPL = os.environ["FASTPOOL_IMPL"]
APP = os.environ["FASTPOOL_TEST_APP"]
ADMIN_APP = APP + "-admin"
TABLE = os.environ.get("FP_DJ_TABLE", "fp_dj_item")


# --------------------------------------------------------------------------------------------
# logging capture (installed before Django makes any DatabaseWrapper)


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: List[Dict[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append({"logger": record.name, "level": record.levelname, "msg": record.getMessage()})

    def of(self, logger: str, level: str = "WARNING") -> List[str]:
        return [r["msg"] for r in self.records if r["logger"] == logger and r["level"] == level]


CAPTURE = Capture()
for _name in ("django_fastpool", "fastpool"):
    _lg = logging.getLogger(_name)
    _lg.addHandler(CAPTURE)
    _lg.setLevel(logging.DEBUG)


# --------------------------------------------------------------------------------------------
# settings


def _json_env(name: str, default: Any) -> Any:
    raw = os.environ.get(name, "").strip()
    return json.loads(raw) if raw else default


def database_settings() -> Dict[str, Any]:
    params = psycopg2.extensions.parse_dsn(DSN)
    options = {k: v for k, v in params.items() if k not in ("dbname", "user", "password", "host", "port")}
    options["application_name"] = APP
    options["pool"] = _json_env("FP_DJ_POOL", {})
    db: Dict[str, Any] = {
        "ENGINE": "django_fastpool",
        "NAME": params.get("dbname", ""),
        "USER": params.get("user", ""),
        "PASSWORD": params.get("password", ""),
        "HOST": params.get("host", ""),
        "PORT": params.get("port", ""),
        "OPTIONS": options,
    }
    extra = dict(_json_env("FP_DJ_DB", {}))
    db["OPTIONS"].update(extra.pop("OPTIONS", {}))
    db.update(extra)
    return db


def setup() -> None:
    import django
    from django.conf import settings

    default = database_settings()
    databases = {"default": default}
    other_pool = _json_env("FP_DJ_OTHER", None)
    if other_pool is not None:
        databases["other"] = {**default, "OPTIONS": {**default["OPTIONS"], "pool": other_pool},
                              "TEST": {"MIRROR": "default"}}
    conf: Dict[str, Any] = {
        "DATABASES": databases,
        "INSTALLED_APPS": ["fpapp"],
        "USE_TZ": True,
        "TIME_ZONE": "UTC",
        "DEFAULT_AUTO_FIELD": "django.db.models.BigAutoField",
        "SECRET_KEY": "fastpool-tests",
    }
    conf.update(_json_env("FP_DJ_SETTINGS", {}))
    settings.configure(**conf)
    django.setup()


# --------------------------------------------------------------------------------------------
# helpers


def emit(**result: Any) -> None:
    result.setdefault("warnings_django_fastpool", CAPTURE.of("django_fastpool"))
    result.setdefault("warnings_fastpool", CAPTURE.of("fastpool"))
    print("RESULT " + json.dumps(result, default=repr, sort_keys=True), flush=True)


def err(exc: BaseException) -> str:
    return f"{type(exc).__module__}.{type(exc).__name__}: {exc}".strip()


def request(fn: Callable[[], Any]) -> Any:
    """One Django "request": request_started, ``fn()``, request_finished (even if fn raises)."""
    from django.core.signals import request_finished, request_started

    request_started.send(sender=None, environ={})
    try:
        return fn()
    finally:
        request_finished.send(sender=None)


def try_request(fn: Callable[[], Dict[str, Any]]) -> Dict[str, Any]:
    try:
        return {"ok": True, **request(fn)}
    except Exception as exc:
        return {"ok": False, "error": err(exc)}


def scalar(sql: str, params: Any = None, alias: str = "default") -> Any:
    from django.db import connections

    with connections[alias].cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchone()[0]


def pid(alias: str = "default") -> int:
    return int(scalar("SELECT pg_backend_pid()", alias=alias))


def settled(pool: Any, timeout: float = 5.0, collect: bool = False) -> Dict[str, int]:
    """Stats once every connection of ``pool`` is idle again (or after ``timeout``)."""
    deadline = monotonic() + timeout
    while True:
        if collect:
            gc.collect()
        s = pool.stats()
        if s["pool_available"] == s["pool_size"] and s["requests_waiting"] == 0:
            return s
        if monotonic() >= deadline:
            return s
        time.sleep(0.02)


def admin_connection() -> Any:
    conn = psycopg2.connect(DSN, application_name=ADMIN_APP)
    conn.autocommit = True
    return conn


def server_pids(admin: Any) -> List[int]:
    with admin.cursor() as cur:
        cur.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s", (APP,))
        return sorted(int(r[0]) for r in cur.fetchall())


def txn_probe() -> Dict[str, Any]:
    """State of this request's connection, taken before it runs anything else.

    ``inherited_write``: the server transaction already has an xid, i.e. it wrote something
    before this request began; ``txn_started_before``: now() (transaction start) is older than
    this statement, i.e. the transaction began earlier.
    """
    from django.db import connection

    connection.ensure_connection()
    raw = connection.connection
    status = raw.get_transaction_status()
    with connection.cursor() as cur:
        cur.execute("SELECT pg_backend_pid(), txid_current_if_assigned() IS NOT NULL, "
                    "now() < statement_timestamp()")
        backend, inherited_write, started_before = cur.fetchone()
    return {"pid": int(backend), "status_at_start": status, "inherited_write": bool(inherited_write),
            "txn_started_before": bool(started_before), "in_atomic_block": connection.in_atomic_block,
            "autocommit": connection.get_autocommit()}


def item_model() -> Any:
    from fpapp.models import Item

    return Item


# --------------------------------------------------------------------------------------------
# 1. basic


def s_basic() -> None:
    setup()
    import fastpool
    from django.db import connection
    from fastpool import Pool

    Item = item_model()
    pool = connection.pool
    res: Dict[str, Any] = {
        "pool_class": f"{type(pool).__module__}.{type(pool).__name__}",
        "is_fastpool_pool": isinstance(pool, Pool),
        "core": getattr(pool, "_core_impl", None),
        "fastpool_impl": fastpool.__impl__,
        "pool_name": pool.name,
        "same_pool_again": connection.pool is pool,
        "stats_keys": sorted(pool.stats()),
        "conn_max_age": connection.settings_dict["CONN_MAX_AGE"],
    }
    reqs = []
    for i in range(4):
        def body(i: int = i) -> Dict[str, Any]:
            p = pid()
            Item.objects.create(name=f"basic-{i}", n=i)
            count = Item.objects.filter(name__startswith="basic-").count()
            return {"pid": p, "count": count, "stats_in_request": pool.stats(),
                    "raw_in_request": connection.connection is not None}
        r = request(body)
        r["connection_none_after"] = connection.connection is None
        r["stats_after"] = pool.stats()
        reqs.append(r)
    res["requests"] = reqs

    # close_old_connections directly (what request_started / request_finished call)
    from django.db import close_old_connections

    pid_direct = pid()
    held = pool.stats()
    close_old_connections()
    res["close_old_connections"] = {"pid": pid_direct, "stats_held": held, "stats_after": pool.stats(),
                                    "connection_none_after": connection.connection is None}

    # other threads: new DatabaseWrappers (no second warning), their requests return too
    thread_pids: List[int] = []
    thread_errors: List[str] = []

    def worker() -> None:
        try:
            for _ in range(3):
                thread_pids.append(request(pid))
        except Exception as exc:
            thread_errors.append(err(exc))

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    res["thread_pids"] = thread_pids
    res["thread_errors"] = thread_errors
    res["final_stats"] = settled(pool)
    emit(**res)


# --------------------------------------------------------------------------------------------
# 2. gevent: the bound holds from start-up (the pool is made while requests already pile up)


def s_gevent_startup() -> None:
    import gevent

    setup()
    from django.db import connection

    admin = admin_connection()
    opened: List[str] = []  # every connection this process opened for the alias (its app name)
    undo = _count_connects(opened)
    samples: List[int] = []
    stop = False

    def sampler() -> None:
        while not stop:
            samples.append(len(server_pids(admin)))
            gevent.sleep(0.001)

    s = gevent.spawn(sampler)
    gevent.sleep(0.01)  # sampling before the first request: no connection yet

    def body() -> None:
        with connection.cursor() as cur:
            cur.execute("SELECT pg_sleep(0.005)")

    results: List[Any] = []

    def worker() -> None:
        try:
            request(body)
            results.append(None)
        except Exception as exc:
            results.append(err(exc))

    n_requests = int(ARG or 100)
    gs = [gevent.spawn(worker) for _ in range(n_requests)]  # all at once: the pool is made under load
    gevent.joinall(gs, timeout=90)
    stop = True
    s.join(5)
    undo()
    emit(
        ok=sum(1 for r in results if r is None),
        errors=[r for r in results if r is not None][:5],
        n_requests=n_requests,
        opened=len(opened),
        samples=len(samples),
        first_sample=samples[0] if samples else None,
        max_server_connections=max(samples) if samples else None,
        stats=settled(connection.pool),
    )


# --------------------------------------------------------------------------------------------
# 2. the alias's first connections made at once: one settings probe, one pool, no deadlock


def _count_connects(opened: List[str]) -> Callable[[], None]:
    """Count every psycopg2.connect() of the alias (its application_name); returns the undo."""
    import psycopg2 as pg

    real_connect = pg.connect

    def counting_connect(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("application_name") == APP:
            opened.append(kwargs.get("dbname", ""))
        return real_connect(*args, **kwargs)

    pg.connect = counting_connect

    def undo() -> None:
        pg.connect = real_connect

    return undo


def s_preload() -> None:
    """ARG "gevent" / "eventlet": the backend's registry lock a real lock, as when
    django_fastpool was imported before monkey-patching (gunicorn --preload), psycogreen's wait
    callback set (the probe's connect switches greenlets), then 20 greenlets
    make the alias's first connection at once. "gevent_kill": the same, and the greenlet that
    builds the pool is killed inside its settings probe. "threads": 20 OS threads at once."""
    kind = ARG or "gevent"
    green = kind != "threads"
    setup()
    from django.db import connection

    from django_fastpool.base import DatabaseWrapper

    # What gunicorn --preload leaves: the backend imported before the worker patched, so what
    # it made at import is real -- its registry lock included. (Importing Django itself before
    # patching here would also leave Django's own connection locals shared between greenlets,
    # a different problem.) psycogreen's wait callback: the probe's connect switches greenlets.
    if kind == "eventlet":
        import eventlet
        from eventlet import patcher
        from psycogreen.eventlet import patch_psycopg

        DatabaseWrapper._fastpools_lock = patcher.original("_thread").allocate_lock()
        spawn, sleep = eventlet.spawn, eventlet.sleep
    elif green:
        import gevent
        from gevent import monkey
        from psycogreen.gevent import patch_psycopg

        DatabaseWrapper._fastpools_lock = monkey.get_original("_thread", "allocate_lock")()
        spawn, sleep = gevent.spawn, gevent.sleep
    if green:
        patch_psycopg()

    admin = admin_connection()
    opened: List[str] = []
    undo = _count_connects(opened)
    samples: List[int] = []
    stop = threading.Event()
    n = 20
    results: List[Any] = []

    def body() -> None:
        with connection.cursor() as cur:
            cur.execute("SELECT pg_sleep(0.005)")

    def worker() -> None:
        try:
            request(body)
            results.append(None)
        except Exception as exc:
            results.append(err(exc))

    killed = False
    if green:
        def sampler() -> None:
            while not stop.is_set():
                samples.append(len(server_pids(admin)))
                sleep(0.001)

        s = spawn(sampler)
        sleep(0.01)
        gs = [spawn(worker) for _ in range(n)]
        if kind == "gevent_kill":
            sleep(0)  # the first greenlet is now inside its probe's connect, the others wait
            killed = "default" in DatabaseWrapper._fastpool_builds
            gs[0].kill()
        for g in gs:
            g.wait() if kind == "eventlet" else g.join(30)
        stop.set()
        s.wait() if kind == "eventlet" else s.join(5)
    else:
        barrier = threading.Barrier(n)

        def sampler_thread() -> None:
            while not stop.is_set():
                samples.append(len(server_pids(admin)))
                time.sleep(0.001)

        def thread_worker() -> None:
            barrier.wait()
            worker()

        st = threading.Thread(target=sampler_thread)
        st.start()
        time.sleep(0.01)
        ts = [threading.Thread(target=thread_worker) for _ in range(n)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(30)
        stop.set()
        st.join(5)
    undo()
    emit(
        ok=sum(1 for r in results if r is None),
        errors=[r for r in results if r is not None][:5],
        n_requests=n,
        killed_in_probe=killed,
        opened=len(opened),
        samples=len(samples),
        first_sample=samples[0] if samples else None,
        max_server_connections=max(samples) if samples else None,
        stats=settled(connection.pool),
    )


def s_parked_probe() -> None:
    """The pool is made (connection.pool) long before its first checkout; ARG "terminated": its
    parked probe's session is also ended by the server meanwhile. max_size=1 must hold at every
    pg_stat_activity sample, and the requests must succeed."""
    setup()
    from django.db import connection

    admin = admin_connection()
    opened: List[str] = []
    undo = _count_connects(opened)
    pool = connection.pool  # makes the pool and its settings probe, no checkout
    probe_pid = server_pids(admin)
    if ARG == "terminated":
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                        (APP,))
        deadline = monotonic() + 10
        while server_pids(admin) and monotonic() < deadline:
            time.sleep(0.01)
    samples: List[int] = []
    stop = threading.Event()

    def sampler() -> None:
        mine = admin_connection()
        while not stop.is_set():
            samples.append(len(server_pids(mine)))
        mine.close()

    st = threading.Thread(target=sampler)
    st.start()
    time.sleep(float(os.environ.get("FP_DJ_PARK", "6")))  # longer than the old 5 s shelf life
    errors: List[str] = []
    pids: List[int] = []
    for _ in range(5):
        try:
            pids.append(request(pid))
        except Exception as exc:
            errors.append(err(exc))
    time.sleep(0.2)
    stop.set()
    st.join(5)
    undo()
    emit(errors=errors, pids=sorted(set(pids)), probe_pid=probe_pid, opened=len(opened),
         samples=len(samples), max_server_connections=max(samples) if samples else None,
         stats=settled(pool))


def s_nested_connect() -> None:
    """hold="transaction": a connection_created receiver closes and reconnects (a connect()
    inside connect()), the next receiver runs a session query. The outer connect() must stay a
    connect until it ends: the second receiver's cursor must not give the connection back
    mid-connect (the caller's cursor() would then meet connection None)."""
    setup()
    from django.db import connection
    from django.db.backends.signals import connection_created

    calls: List[str] = []

    def reconnect(sender: Any, connection: Any, **kwargs: Any) -> None:
        if not calls:
            calls.append("reconnect")
            connection.close()
            connection.ensure_connection()  # nested connect(): this receiver runs again inside

    def session_setup(sender: Any, connection: Any, **kwargs: Any) -> None:
        calls.append("setup")
        with connection.cursor() as cur:
            cur.execute("SET application_name = %s", [APP])

    connection_created.connect(reconnect)
    connection_created.connect(session_setup)
    errors: List[str] = []
    held_after_connect: List[bool] = []

    def body() -> int:
        connection.ensure_connection()
        held_after_connect.append(connection.connection is not None)
        return pid()

    pids = []
    for _ in range(3):
        try:
            pids.append(request(body))
        except Exception as exc:
            errors.append(err(exc))
    emit(errors=errors, calls=calls, held_after_connect=held_after_connect, n=len(pids),
         stats=settled(connection.pool))


# --------------------------------------------------------------------------------------------
# 2. gevent: 200 concurrent greenlet requests on max_size=5


def s_gevent_load() -> None:
    import gevent
    from psycopg2 import extensions

    setup()
    from django.db import connection

    from fastpool import green as fp_green

    Item = item_model()
    n_requests = int(ARG or 200)
    warm = request(pid)  # first connect registers fastpool's cooperative wait callback
    pool = connection.pool
    admin = admin_connection()
    samples: List[int] = []
    sampled_pids: set = set()
    stop = False

    def sampler() -> None:
        while not stop:
            p = server_pids(admin)
            samples.append(len(p))
            sampled_pids.update(p)
            gevent.sleep(0.005)

    results: List[Any] = []
    concurrent = {"now": 0, "max": 0}

    def worker(i: int) -> None:
        def body() -> Any:
            concurrent["now"] += 1
            concurrent["max"] = max(concurrent["max"], concurrent["now"])
            try:
                p = pid()
                with connection.cursor() as cur:
                    cur.execute("SELECT pg_sleep(0.005)")
                Item.objects.create(name=f"g-{i}", n=i)
                n = Item.objects.filter(name=f"g-{i}").count()
                return p, n
            finally:
                concurrent["now"] -= 1

        try:
            p, n = request(body)
            results.append({"ok": True, "pid": p, "n": n})
        except Exception as exc:
            results.append({"ok": False, "error": err(exc)})

    t0 = monotonic()
    s = gevent.spawn(sampler)
    gs = [gevent.spawn(worker, i) for i in range(n_requests)]
    gevent.joinall(gs, timeout=90)
    elapsed = monotonic() - t0
    stop = True
    s.join(5)
    pids = [r["pid"] for r in results if r["ok"]]
    emit(
        warm_pid=warm,
        n_requests=n_requests,
        finished=sum(1 for g in gs if g.ready()),
        ok=sum(1 for r in results if r["ok"]),
        bad_counts=[r for r in results if r["ok"] and r["n"] != 1][:5],
        errors=[r["error"] for r in results if not r["ok"]][:5],
        distinct_pids=sorted(set(pids)),
        n_pids=len(pids),
        samples=len(samples),
        max_server_connections=max(samples) if samples else None,
        sampled_pids=sorted(sampled_pids),
        max_concurrent_requests=concurrent["max"],
        elapsed=elapsed,
        stats=settled(pool),
        fastpool_callback=fp_green.is_fastpool_callback(extensions.get_wait_callback()),
        rows=Item.objects.filter(name__startswith="g-").count(),
    )


# --------------------------------------------------------------------------------------------
# 3. a transaction left open by one request is never seen by the next (max_size=1)


def s_txn() -> None:
    setup()
    from django.db import connection, transaction

    Item = item_model()
    pool = connection.pool
    variant = ARG
    tag = f"txn-{variant}"
    res: Dict[str, Any] = {"variant": variant, "pool_max": pool.stats()["pool_max"]}

    def seen() -> int:
        return Item.objects.filter(name=tag).count()

    def probe() -> Dict[str, Any]:
        out = txn_probe()
        out["seen"] = seen()
        return out

    def leave_open() -> Dict[str, Any]:
        p = pid()
        if variant == "autocommit_off":
            transaction.set_autocommit(False)
            Item.objects.create(name=tag)
        elif variant == "raw_begin":
            connection.ensure_connection()  # between queries the wrapper may hold none (hold="transaction")
            raw = connection.connection
            with raw.cursor() as cur:
                cur.execute(f"BEGIN; INSERT INTO {TABLE} (name, n) VALUES (%s, 0)", [tag])
        elif variant.startswith("atomic_open"):
            transaction.atomic().__enter__()  # never exited
            with connection.cursor() as cur:
                cur.execute(f"INSERT INTO {TABLE} (name, n) VALUES (%s, 0)", [tag])
        else:
            raise SystemExit(f"unknown txn variant {variant!r}")
        return {"pid": p}

    if variant == "atomic_open_other_thread":
        # request 1 in a worker thread that stays alive (a thread-pool worker between requests)
        box: Dict[str, Any] = {}
        done = threading.Event()
        finished = threading.Event()

        def worker() -> None:
            try:
                box["req1"] = try_request(leave_open)
            finally:
                done.set()
                finished.wait(30)

        t = threading.Thread(target=worker)
        t.start()
        done.wait(30)
        res["req1"] = box.get("req1")
        res["stats_after_req1"] = pool.stats()
        res["req2"] = try_request(probe)  # main thread; max_size=1
        finished.set()
        t.join(30)
        del t
        res["stats_after_thread_end"] = settled(pool, collect=True)
        res["req3"] = try_request(probe)
    else:
        res["req1"] = try_request(leave_open)
        res["stats_after_req1"] = pool.stats()
        res["req2"] = try_request(probe)
        res["stats_after_req2"] = pool.stats()
    res["committed_rows"] = _count_committed(tag)
    emit(**res)


def _count_committed(tag: str) -> int:
    admin = admin_connection()
    try:
        with admin.cursor() as cur:
            cur.execute(f"SELECT count(*) FROM {TABLE} WHERE name = %s", [tag])
            return int(cur.fetchone()[0])
    finally:
        admin.close()


# --------------------------------------------------------------------------------------------
# 4. threads / greenlets that end without closing their connection


def _orphans(spawn_all: Callable[[Callable[[Dict[str, Any]], None], int], None], n: int,
             sleep: Callable[[float], Any]) -> Dict[str, Any]:
    from django.db import connection

    Item = item_model()
    pool = connection.pool
    warm_pid = request(pid)
    before = settled(pool)
    boxes: List[Dict[str, Any]] = [{} for _ in range(n)]

    def job(box: Dict[str, Any]) -> None:
        try:
            box["pid"] = pid()
            box["count"] = Item.objects.count()
            box["borrowed"] = connection.connection is not None
        except Exception as exc:
            box["error"] = err(exc)
        # ends WITHOUT connection.close() / close_old_connections()

    gc.collect()
    gc.disable()  # nothing collects the ended workers' wrappers before after_end is taken
    try:
        spawn_all(lambda i: job(boxes[i]), n)  # returns when all have ended, keeps no reference
        after_end = connection.pool.stats()
    finally:
        gc.enable()
    gc.collect()
    deadline = monotonic() + 5
    while True:
        s = pool.stats()
        if s["pool_available"] >= before["pool_available"] and s["pool_available"] == s["pool_size"]:
            break
        if monotonic() > deadline:
            break
        sleep(0.02)
        gc.collect()
    after_gc = pool.stats()
    worker_pids = sorted({b["pid"] for b in boxes if "pid" in b})
    next_pids = [request(pid) for _ in range(3)]
    return {
        "warm_pid": warm_pid, "before": before, "after_end": after_end, "after_gc": after_gc,
        "boxes": boxes, "worker_pids": worker_pids, "next_pids": next_pids,
        "final": settled(pool),
    }


def s_orphan_thread() -> None:
    setup()

    def spawn_all(fn: Callable[[int], None], n: int) -> None:
        threads = [threading.Thread(target=fn, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)

    emit(**_orphans(spawn_all, 3, time.sleep))


def s_gevent_orphan() -> None:
    import gevent

    setup()

    def spawn_all(fn: Callable[[int], None], n: int) -> None:
        # greenlets, and a (monkey-patched) threading.Thread, which is a greenlet too
        gs = [gevent.spawn(fn, i) for i in range(n - 1)]
        t = threading.Thread(target=fn, args=(n - 1,))
        t.start()
        gevent.joinall(gs, timeout=30)
        t.join(30)
        gs.clear()
        del t

    emit(**_orphans(spawn_all, 4, gevent.sleep))


# --------------------------------------------------------------------------------------------
# 5. everything Django does keeps working


class Boom(Exception):
    pass


def s_atomic() -> None:
    setup()
    from django.db import connection, transaction

    Item = item_model()
    pool = connection.pool
    on_commit: List[str] = []

    def body() -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        with transaction.atomic():
            Item.objects.create(name="a")
            try:
                with transaction.atomic():
                    Item.objects.create(name="b")
                    raise Boom
            except Boom:
                pass
            with transaction.atomic():
                Item.objects.create(name="c")
                with transaction.atomic():
                    Item.objects.create(name="c2")
            sid = transaction.savepoint()
            Item.objects.create(name="d")
            transaction.savepoint_rollback(sid)
            first = Item.objects.create(name="g")
            try:
                with transaction.atomic():
                    Item.objects.create(id=first.id, name="dup")  # unique violation
            except Exception as exc:
                out["dup_error"] = err(exc)
            Item.objects.create(name="h")  # the outer block goes on after the inner rollback
            transaction.on_commit(lambda: on_commit.append("outer"))
            out["savepoints_in_block"] = len(connection.savepoint_ids)
        with transaction.atomic():
            Item.objects.create(name="e")
            transaction.on_commit(lambda: on_commit.append("rolled-back"))
            transaction.set_rollback(True)
        try:
            with transaction.atomic():
                Item.objects.create(name="f")
                raise Boom
        except Boom:
            pass
        out["names"] = sorted(Item.objects.values_list("name", flat=True))
        out["in_atomic_after"] = connection.in_atomic_block
        return out

    res = request(body)
    res["on_commit"] = on_commit
    res["stats_after"] = settled(pool)
    res["names_next_request"] = request(lambda: sorted(Item.objects.values_list("name", flat=True)))
    res["committed_rows"] = _count_committed("a") + _count_committed("c") + _count_committed("h")
    emit(**res)


def s_close() -> None:
    setup()
    from django.db import ProgrammingError, connection, connections, transaction

    pool = connection.pool
    res: Dict[str, Any] = {}

    def body() -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        out["p1"] = pid()
        out["stats_held"] = pool.stats()
        connection.close()
        out["none_after_close"] = connection.connection is None
        out["stats_after_close"] = pool.stats()
        out["p2"] = pid()
        connections.close_all()
        out["none_after_close_all"] = connection.connection is None
        out["stats_after_close_all"] = pool.stats()
        out["p3"] = pid()
        # close() inside an atomic block: the block is broken, the wrapper must recover after it
        try:
            with transaction.atomic():
                pid()
                connection.close()
                out["stats_after_close_in_atomic"] = pool.stats()
                try:
                    pid()
                    out["query_after_close_in_atomic"] = "ran"
                except ProgrammingError as exc:
                    out["query_after_close_in_atomic"] = err(exc)
        except Exception as exc:
            out["atomic_exit_error"] = err(exc)
        out["p4"] = pid()
        return out

    res = request(body)
    res["stats_after"] = settled(pool)
    res["p5"] = request(pid)
    emit(**res)


def s_held() -> None:
    """A Django connection is held (issue 9.5): a bare pool.putconn() of it raises PoolMisuse,
    inside the request and as a stale second return after the next request took it again.
    (Inside atomic blocks: under hold="transaction" the wrapper has a connection only there.)"""
    setup()
    import fastpool
    from django.db import connection, transaction

    pool = connection.pool
    out: Dict[str, Any] = {}

    def first() -> None:
        with transaction.atomic():
            pid()
            raw = connection.connection
            out["raw_first"] = id(raw)
            out["had_connection"] = raw is not None
            try:
                pool.putconn(raw)
                out["inside"] = "accepted"
            except fastpool.PoolMisuse as exc:
                out["inside"] = "PoolMisuse"
                out["inside_is_operational"] = isinstance(exc, psycopg2.OperationalError)
            out["query_after"] = scalar("SELECT 1")  # still this block's connection
        return None

    request(first)

    def second() -> None:
        with transaction.atomic():
            pid()
            stale = connection.connection  # the same object the first request had (max_size=1)
            out["same_object"] = id(stale) == out["raw_first"]
            try:
                pool.putconn(stale)  # someone's stale second return of that object
                out["stale"] = "accepted"
            except fastpool.PoolMisuse:
                out["stale"] = "PoolMisuse"
            out["query_after_stale"] = scalar("SELECT 2")
        return None

    request(second)
    out["stats_after"] = settled(pool)
    emit(**out)


def s_aliases() -> None:
    setup()
    from django.db import connections

    Item = item_model()
    d, o = connections["default"].pool, connections["other"].pool
    res: Dict[str, Any] = {
        "distinct": d is not o,
        "names": [d.name, o.name],
        "max": [d.stats()["pool_max"], o.stats()["pool_max"]],
        "stable": connections["default"].pool is d and connections["other"].pool is o,
    }

    def body() -> Dict[str, Any]:
        Item.objects.create(name="via-default")
        Item.objects.using("other").create(name="via-other")
        return {"pid_default": pid("default"), "pid_other": pid("other"),
                "count_default": Item.objects.count(), "count_other": Item.objects.using("other").count(),
                "in_use": [d.stats()["pool_available"], o.stats()["pool_available"]]}

    res["request"] = request(body)
    admin = admin_connection()
    samples: List[int] = []
    stop = threading.Event()
    errors: List[str] = []

    def sampler() -> None:
        while not stop.is_set():
            samples.append(len(server_pids(admin)))
            time.sleep(0.005)

    def worker() -> None:
        def body2() -> None:
            for alias in ("default", "other"):
                scalar("SELECT pg_sleep(0.02)", alias=alias)
        try:
            request(body2)
        except Exception as exc:
            errors.append(err(exc))

    st = threading.Thread(target=sampler)
    st.start()
    ts = [threading.Thread(target=worker) for _ in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    stop.set()
    st.join(5)
    res["errors"] = errors
    res["max_server_connections"] = max(samples) if samples else None
    res["stats"] = [settled(d), settled(o)]
    emit(**res)


def s_iterator() -> None:
    setup()
    from django.db import connection, transaction

    Item = item_model()
    pool = connection.pool
    res: Dict[str, Any] = {"disable_ssc": connection.settings_dict.get("DISABLE_SERVER_SIDE_CURSORS", False)}
    request(lambda: Item.objects.bulk_create([Item(name=f"it-{i:03d}", n=i) for i in range(40)]))

    def iterate() -> Dict[str, Any]:
        names: List[str] = []
        cursors: Any = None
        for i, obj in enumerate(Item.objects.filter(name__startswith="it-").order_by("n").iterator(chunk_size=7)):
            names.append(obj.name)
            if i == 10:
                cursors = scalar("SELECT coalesce(array_agg(name::text || ':' || is_holdable::text), "
                                 "'{}') FROM pg_cursors")
        return {"n": len(names), "ordered": names == sorted(names), "cursors_during": cursors,
                "pid": pid()}

    def iterate_atomic() -> Dict[str, Any]:
        with transaction.atomic():
            return iterate()

    res["outside_atomic"] = try_request(iterate)
    res["inside_atomic"] = try_request(iterate_atomic)
    res["after"] = try_request(lambda: {"pid": pid(), "cursors": scalar("SELECT count(*) FROM pg_cursors")})
    res["stats"] = settled(pool)
    emit(**res)


def s_health() -> None:
    setup()
    from django.db import connection

    pool = connection.pool
    res: Dict[str, Any] = {"conn_health_checks": connection.settings_dict["CONN_HEALTH_CHECKS"]}

    def body() -> Dict[str, Any]:
        return {"pid": pid(), "health_check_enabled": connection.health_check_enabled}

    res["req1"] = try_request(body)
    res["req2"] = try_request(body)
    admin = admin_connection()
    with admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", (APP,))
        res["terminated"] = len(cur.fetchall())
    time.sleep(1.3)  # the pool pings a connection idle for more than 1 s before handing it out
    res["req3"] = try_request(body)
    res["req4"] = try_request(body)
    res["stats"] = settled(pool)
    emit(**res)


def s_session() -> None:
    """Per-physical-connection setup (time zone, assume_role, isolation level) on every request."""
    setup()
    from django.db import connection, transaction

    pool = connection.pool
    res: Dict[str, Any] = {"timezone_name": connection.timezone_name,
                           "assume_role": connection.settings_dict["OPTIONS"].get("assume_role")}

    def body() -> Dict[str, Any]:
        out = {"pid": pid(), "timezone": scalar("SHOW TimeZone"), "current_user": scalar("SELECT current_user"),
               "session_user": scalar("SELECT session_user")}
        with transaction.atomic():
            out["isolation_in_atomic"] = scalar("SHOW transaction_isolation")
        return out

    res["requests"] = [try_request(body) for _ in range(3)]
    options = connection.settings_dict["OPTIONS"].get("pool")
    if (options.get("reset", "auto") if isinstance(options, dict) else "auto") in ("auto", "discard"):
        # A request that changes what configure() set: the next one must get it back.
        def dirty() -> Dict[str, Any]:
            with connection.cursor() as cur:
                cur.execute("SET TIME ZONE 'UTC'")
                cur.execute("RESET ROLE")
            return {}

        res["dirty"] = try_request(dirty)
        res["requests"].append(try_request(body))
    res["stats"] = settled(pool)
    emit(**res)


# --------------------------------------------------------------------------------------------
# 6. test database create / clone / destroy


def s_test_db() -> None:
    setup()
    from django.db import connection

    Item = item_model()
    res: Dict[str, Any] = {}
    res["original_db"] = request(lambda: scalar("SELECT current_database()"))
    old_name = connection.settings_dict["NAME"]
    first_pool = connection.pool
    test_name = connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    res["test_name"] = test_name
    res["first_pool_closed"] = first_pool.closed
    res["in_test_db"] = request(lambda: {"db": scalar("SELECT current_database()"), "items": Item.objects.count()})

    # several pooled connections to the test database, idle in the pool
    def worker() -> None:
        request(lambda: (Item.objects.create(name="t"), scalar("SELECT pg_sleep(0.05)")))

    ts = [threading.Thread(target=worker) for _ in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    test_pool = connection.pool
    res["test_pool_stats"] = settled(test_pool)
    res["items_in_test_db"] = request(lambda: Item.objects.count())

    clone_name = connection.creation.get_test_db_clone_settings("1")["NAME"]
    res["clone_name"] = clone_name
    try:
        connection.creation.clone_test_db(suffix="1", verbosity=0, autoclobber=True)
        res["clone"] = "ok"
        connection.creation.destroy_test_db(verbosity=0, suffix="1")
        res["clone_destroyed"] = "ok"
    except Exception as exc:
        res["clone_error"] = err(exc)
    res["in_test_db_after_clone"] = request(lambda: scalar("SELECT current_database()"))
    request(lambda: scalar("SELECT 1"))  # a pooled connection to the test database, idle again
    try:
        connection.creation.destroy_test_db(old_name, verbosity=0)
        res["destroy"] = "ok"
    except Exception as exc:
        res["destroy"] = err(exc)
    res["test_pool_closed"] = test_pool.closed
    res["after_destroy"] = try_request(lambda: {"db": scalar("SELECT current_database()"), "pid": pid()})
    res["pool_is_new"] = connection.pool is not test_pool
    res["new_pool_stats"] = settled(connection.pool)
    emit(**res)


# --------------------------------------------------------------------------------------------
# 7. psycopg 3 installed: the backend stays on psycopg2


def s_psycopg3() -> None:
    setup()
    from django.db import IntegrityError, connection, transaction

    Item = item_model()
    res: Dict[str, Any] = {"psycopg_preimported": ARG == "imported_first"}
    res["wrapper_Database"] = connection.Database.__name__  # loads the backend (first, as Django does)
    from django.db.backends.postgresql import psycopg_any

    res["is_psycopg3"] = psycopg_any.is_psycopg3
    from django.db.backends.postgresql import base as pg_base

    res["pg_base_Database"] = pg_base.Database.__name__

    def body() -> Dict[str, Any]:
        connection.ensure_connection()
        raw = connection.connection
        out: Dict[str, Any] = {"raw_is_psycopg2": isinstance(raw, psycopg2.extensions.connection),
                               "raw_class": f"{type(raw).__module__}.{type(raw).__name__}"}
        first = Item.objects.create(name="p")
        try:
            with transaction.atomic():
                Item.objects.create(id=first.id, name="dup")
            out["integrity"] = "no error"
        except IntegrityError as exc:
            out["integrity"] = "django.db.IntegrityError"
            out["integrity_cause"] = type(exc.__cause__).__module__ + "." + type(exc.__cause__).__name__
        except Exception as exc:
            out["integrity"] = "unwrapped " + err(exc)
        obj, created = Item.objects.get_or_create(id=first.id, defaults={"name": "x"})
        out["get_or_create_existing"] = [obj.name, created]
        return out

    res["request"] = try_request(body)
    # code elsewhere in the process can still use psycopg 3
    try:
        import psycopg

        with psycopg.connect(DSN, application_name=ADMIN_APP) as c3:
            res["psycopg3_query"] = c3.execute("SELECT 41 + 1").fetchone()[0]
        res["psycopg3_version"] = psycopg.__version__
    except Exception as exc:
        res["psycopg3_query"] = err(exc)
    emit(**res)


def s_contrib_postgres() -> None:
    res: Dict[str, Any] = {"mode": ARG}
    try:
        setup()
        from django.db import connection
        from django.db.backends.postgresql import psycopg_any

        res["request"] = try_request(lambda: {"pid": pid(), "wrapper_Database": connection.Database.__name__})
        res["is_psycopg3"] = psycopg_any.is_psycopg3
    except Exception as exc:
        res["setup_error"] = err(exc)
    emit(**res)


# --------------------------------------------------------------------------------------------
# extra: fork after the parent used its connection (gunicorn --preload)


def s_fork() -> None:
    setup()
    from django.db import connection

    res: Dict[str, Any] = {}
    res["parent_pid_before"] = pid()  # the parent keeps this connection (no request around it)
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - child
        os.close(r)
        out: Dict[str, Any] = {}
        try:
            out["req1"] = try_request(lambda: {"pid": pid()})
            out["req2"] = try_request(lambda: {"pid": pid()})
        except BaseException as exc:
            out["fatal"] = err(exc)
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    chunks = []
    while True:
        data = os.read(r, 65536)
        if not data:
            break
        chunks.append(data)
    os.waitpid(child, 0)
    res["child"] = json.loads(b"".join(chunks).decode() or "{}")
    try:
        res["parent_pid_after"] = pid()
    except Exception as exc:
        res["parent_pid_after"] = err(exc)
    res["parent_request"] = try_request(lambda: {"pid": pid()})
    emit(**res)


# --------------------------------------------------------------------------------------------
# extra: the orphan finalizer runs inside whatever code the garbage collector interrupts


def s_finalizer_reentrancy() -> None:
    """gc can run at any allocation, including inside the pool's own ``Workers.schedule_at``
    (``with self._cond: heapq.heappush(...)``). The orphan finalizer then calls
    ``pool._return_later`` -> ``Workers.submit`` -> ``with self._cond`` again, in the same
    thread, on a non-reentrant lock. Simulated deterministically: collect the orphan while this
    thread holds ``_cond``."""
    setup()
    from django.db import connection

    pool = connection.pool
    request(pid)
    gc.collect()
    gc.disable()
    t = threading.Thread(target=lambda: pid())  # ends without closing: an orphan wrapper
    t.start()
    t.join()
    del t
    outcome: Dict[str, Any] = {}

    workers = pool._workers
    lock_name = next((n for n in ("_cond", "_lock") if hasattr(workers, n)), None)

    def collect_inside_schedule_at() -> None:
        try:
            with getattr(workers, lock_name):  # what Workers.schedule_at holds while it allocates
                outcome["collected"] = gc.collect()
            outcome["returned"] = True
        except BaseException as exc:
            outcome["error"] = err(exc)

    h = threading.Thread(target=collect_inside_schedule_at, daemon=True)
    h.start()
    h.join(1)
    gc.enable()
    res = {"deadlocked": h.is_alive(), "outcome": outcome, "lock": lock_name,
           "stats": pool.stats() if not h.is_alive() else None}
    emit(**res)
    sys.stdout.flush()
    os._exit(0)  # a deadlocked daemon thread holds the workers' lock: skip interpreter teardown


# --------------------------------------------------------------------------------------------
# hold="transaction": threads that are done with the database hold no connection


def in_use(pool: Any) -> int:
    s = pool.stats()
    return s["pool_size"] - s["pool_available"]


def s_app_threads() -> None:
    """An application ThreadPoolExecutor (4 threads, more than max_size) and a long-lived
    background thread run ORM code outside any request; between their tasks, how many
    connections do they hold?"""
    setup()
    import queue
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connection, transaction

    Item = item_model()
    pool = connection.pool

    def task(i: int) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        try:
            Item.objects.create(name=f"ex-{i}", n=i)
            out["count"] = Item.objects.filter(name=f"ex-{i}").count()
            with transaction.atomic():
                Item.objects.create(name=f"ex-atomic-{i}", n=i)
            try:
                with transaction.atomic():
                    Item.objects.create(name=f"ex-failed-{i}", n=i)
                    raise ValueError("rolled back")
            except ValueError:
                pass
            out["released"] = connection.connection is None
        except Exception as exc:
            out["error"] = err(exc)
        return out

    res: Dict[str, Any] = {"executor": [], "executor_in_use": [], "errors": []}
    with ThreadPoolExecutor(max_workers=4) as ex:
        for start in range(0, 40, 8):
            results = list(ex.map(task, range(start, start + 8)))
            res["executor"] += results
            # the batch is done, its 4 threads are alive and idle: nothing may be held
            res["executor_in_use"].append(in_use(pool))

    tasks: "queue.Queue[Any]" = queue.Queue()
    done: "queue.Queue[Dict[str, Any]]" = queue.Queue()

    def background() -> None:
        while True:
            i = tasks.get()
            if i is None:
                return
            done.put(task(100 + i))

    bg = threading.Thread(target=background, daemon=True)
    bg.start()
    res["background"], res["background_in_use"] = [], []
    for i in range(10):
        tasks.put(i)
        res["background"].append(done.get(timeout=60))
        res["background_in_use"].append(in_use(pool))  # bg waits for its next task
    tasks.put(None)
    bg.join(30)
    admin = admin_connection()  # not through the pool: it may be exhausted (hold="request")
    with admin.cursor() as cur:
        cur.execute(f"SELECT count(*) FILTER (WHERE name LIKE 'ex-failed-%%'), "
                    f"count(*) FILTER (WHERE name LIKE 'ex-atomic-%%') FROM {TABLE}")
        res["failed_rows"], res["atomic_rows"] = cur.fetchone()
    admin.close()
    res["stats"] = pool.stats()
    emit(**res)


def s_hold_rules() -> None:
    """The rule of hold="transaction", observed step by step in one thread (max_size=1)."""
    setup()
    from django.db import connection, transaction
    from django.test.utils import CaptureQueriesContext

    Item = item_model()
    pool = connection.pool
    out: Dict[str, Any] = {}

    def state() -> Dict[str, Any]:
        return {"held": connection.connection is not None, "in_use": in_use(pool)}

    out["pid"] = pid()
    out["after_query"] = state()
    with CaptureQueriesContext(connection) as ctx:
        Item.objects.create(name="q1")
        Item.objects.filter(name="q1").count()
        with transaction.atomic():
            Item.objects.create(name="q2")
    out["captured"] = [q["sql"].split()[0] for q in ctx.captured_queries]
    out["after_capture"] = state()

    fired: List[Dict[str, Any]] = []
    with transaction.atomic():
        Item.objects.create(name="a1")
        out["in_atomic"] = state()
        transaction.on_commit(lambda: fired.append({"rows": Item.objects.filter(name="a1").count()}))
        out["in_atomic_after_on_commit"] = state()
    out["on_commit"] = fired
    out["after_atomic"] = state()

    try:
        with transaction.atomic():
            Item.objects.create(name="failed")
            raise ValueError("boom")
    except ValueError:
        pass
    out["after_failed_atomic"] = state()
    out["failed_rows"] = Item.objects.filter(name="failed").count()

    Item.objects.bulk_create([Item(name=f"it-{i}", n=i) for i in range(6)])
    it = Item.objects.filter(name__startswith="it-").order_by("n").iterator(chunk_size=2)
    next(it)
    out["during_iterator"] = state()
    out["iterated"] = 1 + sum(1 for _ in it)
    out["after_iterator"] = state()

    connection.ensure_connection()
    out["after_ensure_connection"] = state()
    out["ensure_pid"] = connection.connection.get_backend_pid()
    Item.objects.count()
    out["after_ensure_then_query"] = state()

    out["get_autocommit"] = connection.get_autocommit()
    out["after_get_autocommit"] = state()

    transaction.set_autocommit(False)
    Item.objects.create(name="manual")
    transaction.commit()
    out["manual_after_commit"] = state()
    transaction.set_autocommit(True)
    out["manual_after_autocommit_on"] = state()

    with connection.cursor() as cur:
        cur.execute("BEGIN")
    out["raw_begin_after_close"] = state()
    with connection.cursor() as cur:
        cur.execute("COMMIT")
    out["raw_commit_after_close"] = state()

    cur = connection.cursor()
    cur.execute("SELECT 1")
    out["open_cursor"] = state()
    cur.close()
    out["after_cursor_close"] = state()

    connection.force_debug_cursor = True
    before = len(connection.queries_log)
    Item.objects.count()
    out["debug_logged"] = len(connection.queries_log) - before
    out["after_debug_query"] = state()
    connection.force_debug_cursor = False

    out["last_pid"] = pid()
    out["stats"] = pool.stats()
    emit(**out)


def s_bad_hold() -> None:
    try:
        setup()
        from django.db import connection

        connection.ensure_connection()
        emit(error=None)
    except Exception as exc:
        emit(error=err(exc))


SCENARIOS = {name[2:]: fn for name, fn in globals().items() if name.startswith("s_") and callable(fn)}

if __name__ == "__main__":
    if SCENARIO not in SCENARIOS:
        raise SystemExit(f"unknown scenario {SCENARIO!r}; one of {sorted(SCENARIOS)}")
    try:
        SCENARIOS[SCENARIO]()
    except BaseException:
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush()
