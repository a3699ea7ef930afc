"""One-file Django site for the seed scenario: settings + urls + one view.

The view runs ``SELECT pg_sleep(0.002)`` and ``SELECT 1`` through ``django.db.connection`` and
returns ``ok``. ``run.py`` serves it with gunicorn (``-k gevent``) or ``eventlet_server.py``
and picks the database backend with environment variables, read once at import:

``BENCH_BACKEND``
    ``stock``      -- ``django.db.backends.postgresql`` on **psycopg2** (psycopg 3 is hidden
                      while Django's backend modules import, as django_fastpool/base.py does);
    ``geventpool`` -- ``django_db_geventpool.backends.postgresql_psycopg2`` (psycopg2 as well);
    ``native``     -- ``django.db.backends.postgresql`` on psycopg 3 with ``OPTIONS["pool"]``
                      (Django's own pool, psycopg_pool); django_fastpool is never imported;
    ``fastpool``   -- ``ENGINE: "django_fastpool"`` with ``OPTIONS["pool"]``.
``BENCH_CONN_MAX_AGE`` (stock only), ``BENCH_POOL_MIN`` / ``BENCH_POOL_MAX`` (pool sizes; the
geventpool's ``MAX_CONNS`` is ``BENCH_POOL_MAX``), ``BENCH_DB_HOST`` / ``_PORT`` / ``_NAME`` /
``_USER``, ``BENCH_APPNAME`` (the ``application_name`` run.py counts in pg_stat_activity).

Every response carries ``X-Bench: driver=...; fastpool=0|1; wait=...`` (computed once, after the
first request's queries) so run.py can check what really served the requests: the DB-API
driver, whether ``django_fastpool``/``fastpool`` were imported, and psycopg2's wait callback.

psycogreen is *not* applied here: the server applies it when the worker boots
(gunicorn_conf.py ``post_worker_init``; eventlet_server.py), as a deployment would.
"""

import os
import sys

BACKEND = os.environ.get("BENCH_BACKEND", "fastpool")
POOL_MIN = int(os.environ.get("BENCH_POOL_MIN", "2"))
POOL_MAX = int(os.environ.get("BENCH_POOL_MAX", "10"))


def _postgresql_backend_on_psycopg2() -> None:
    """Make Django's PostgreSQL backend choose psycopg2 although psycopg 3 is installed."""
    missing = object()
    saved = sys.modules.get("psycopg", missing)
    sys.modules["psycopg"] = None  # `import psycopg` now fails: Django falls back to psycopg2
    try:
        import django.db.backends.postgresql.psycopg_any  # noqa: F401
        import django.db.backends.postgresql.base  # noqa: F401
    finally:
        if saved is missing:
            del sys.modules["psycopg"]
        else:
            sys.modules["psycopg"] = saved


_db = {
    "NAME": os.environ.get("BENCH_DB_NAME", "test"),
    "USER": os.environ.get("BENCH_DB_USER", "postgres"),
    "PASSWORD": os.environ.get("BENCH_DB_PASSWORD", ""),
    "HOST": os.environ.get("BENCH_DB_HOST", "127.0.0.1"),
    "PORT": os.environ.get("BENCH_DB_PORT", "5432"),
    "OPTIONS": {"application_name": os.environ.get("BENCH_APPNAME", "djbench")},
}
if BACKEND == "stock":
    _postgresql_backend_on_psycopg2()
    _db.update(ENGINE="django.db.backends.postgresql",
               CONN_MAX_AGE=int(os.environ.get("BENCH_CONN_MAX_AGE", "0")))
elif BACKEND == "geventpool":
    _postgresql_backend_on_psycopg2()
    _db.update(ENGINE="django_db_geventpool.backends.postgresql_psycopg2", CONN_MAX_AGE=0)
    _db["OPTIONS"]["MAX_CONNS"] = POOL_MAX
elif BACKEND == "native":
    _db.update(ENGINE="django.db.backends.postgresql", CONN_MAX_AGE=0)
    _db["OPTIONS"]["pool"] = {"min_size": POOL_MIN, "max_size": POOL_MAX}
elif BACKEND == "fastpool":
    _db.update(ENGINE="django_fastpool", CONN_MAX_AGE=0)
    _db["OPTIONS"]["pool"] = {"max_size": POOL_MAX}
    if os.environ.get("BENCH_POOL_HOLD"):  # "transaction" (default) or "request"
        _db["OPTIONS"]["pool"]["hold"] = os.environ["BENCH_POOL_HOLD"]
else:
    raise SystemExit(f"BENCH_BACKEND={BACKEND!r}: stock, geventpool, native or fastpool")

import logging  # noqa: E402

import django  # noqa: E402
from django.conf import settings  # noqa: E402


class _LastLineFormatter(logging.Formatter):
    """One line per failed request: the message and the exception's last line (run.py counts
    them by kind)."""

    def format(self, record):
        exc = ""
        if record.exc_info and record.exc_info[1] is not None:
            e = record.exc_info[1]
            exc = f" | {type(e).__module__}.{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None})
        return f"BENCH-ERROR {record.getMessage()}{exc}"


settings.configure(
    DEBUG=False,
    SECRET_KEY="seed-benchmark-not-secret",
    ALLOWED_HOSTS=["127.0.0.1", "localhost"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=[],
    MIDDLEWARE=[],
    USE_TZ=True,
    TIME_ZONE="UTC",
    DATABASES={"default": _db},
    LOGGING={
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"last": {"()": _LastLineFormatter}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "last"}},
        "loggers": {"django.request": {"handlers": ["stderr"], "level": "ERROR", "propagate": False}},
    },
)
django.setup()

from django.db import connection  # noqa: E402
from django.http import HttpResponse  # noqa: E402
from django.urls import path  # noqa: E402

_info = None
_served = None  # this process's request counter, shared with run.py (BENCH_COUNT_DIR)


def _counter():
    """An 8-byte counter in BENCH_COUNT_DIR/<pid>, mapped into memory: run.py reads how many
    requests the profiled worker served (workers do not share the load evenly: a keep-alive
    client stays with the worker that accepted it). None when BENCH_COUNT_DIR is unset."""
    import mmap

    path = os.path.join(os.environ["BENCH_COUNT_DIR"], str(os.getpid()))
    with open(path, "wb+") as f:
        f.write(bytes(8))
        f.flush()
        m = mmap.mmap(f.fileno(), 8)
    return memoryview(m).cast("Q")


def _describe() -> str:
    driver = connection.Database.__name__
    wait = "-"
    if driver == "psycopg2":
        import psycopg2.extensions

        cb = psycopg2.extensions.get_wait_callback()
        if cb is not None:
            wait = f"{getattr(cb, '__module__', '?')}.{getattr(cb, '__qualname__', type(cb).__name__)}"
    else:
        import psycopg.waiting

        wait = f"psycopg.waiting.{psycopg.waiting.wait.__name__}"
    fp = int("django_fastpool" in sys.modules or "fastpool" in sys.modules)
    return f"backend={BACKEND}; engine={_db['ENGINE']}; driver={driver}; fastpool={fp}; wait={wait}"


def view(request):
    global _info, _served
    if _served is not None:
        _served[0] += 1
    elif os.environ.get("BENCH_COUNT_DIR"):
        _served = _counter()
        _served[0] += 1
    with connection.cursor() as cur:
        cur.execute("SELECT pg_sleep(0.002)")
        cur.execute("SELECT 1")
        cur.fetchone()
    if _info is None:
        _info = _describe()
    return HttpResponse(b"ok", content_type="text/plain", headers={"X-Bench": _info})


def stats(request):
    """The answering worker's pool counters (django_fastpool only): run.py reads how many
    checkouts had to wait (requests_queued / requests_num) after the measurement."""
    import json

    pool = getattr(connection, "pool", None) if BACKEND == "fastpool" else None
    body = json.dumps(pool.stats() if pool is not None else {})
    return HttpResponse(body.encode(), content_type="application/json")


urlpatterns = [path("", view), path("stats", stats)]

if os.environ.get("BENCH_CPUPROF_DIR"):  # run.py --profile: CPU-time sampling, SIGUSR2 toggles
    import cpuprof  # noqa: E402

    cpuprof.install()

from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
