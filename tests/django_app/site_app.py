"""A one-module Django site served by real servers in tests/test_django_servers.py (and by
benchmarks/django_asgi/run.py): uvicorn, gunicorn + ``uvicorn_worker.UvicornWorker``,
gunicorn ``gthread``. ``application`` is the ASGI app, ``wsgi_application`` the WSGI one.

Every view touches the database a different way Django runs code (``GET /<view>``):

``async_orm``   async view, the async ORM (``acount``, ``acreate``)
``s2a_false``   async view, ``sync_to_async(..., thread_sensitive=False)``: the loop's executor
``s2a_true``    async view, ``sync_to_async(..., thread_sensitive=True)``
``sync``        sync view (over ASGI Django runs it in a thread), an atomic block that commits
``atomic_raise`` async view; in an executor thread an atomic block inserts a row and raises
``a2s``         sync view calling ``async_to_sync`` of an async-ORM coroutine
``stats``       this worker's pool stats (JSON; fastpool only)

Environment: ``FASTPOOL_TEST_DSN``, ``FASTPOOL_TEST_APP`` (application_name), ``FP_DJ_TABLE``,
``FP_DJ_POOL`` (JSON ``OPTIONS["pool"]``), ``FP_DJ_ENGINE``: ``fastpool`` (default),
``stock`` (Django's backend on psycopg2, ``CONN_MAX_AGE`` from ``FP_DJ_MAX_AGE``) or
``native`` (Django's own pool on psycopg 3, ``OPTIONS["pool"]`` from ``FP_DJ_POOL``).
"""

from __future__ import annotations

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import psycopg2.extensions  # noqa: E402

ENGINE = os.environ.get("FP_DJ_ENGINE", "fastpool")
_params = psycopg2.extensions.parse_dsn(os.environ["FASTPOOL_TEST_DSN"])
_db = {
    "NAME": _params.get("dbname", ""), "USER": _params.get("user", ""),
    "PASSWORD": _params.get("password", ""), "HOST": _params.get("host", ""),
    "PORT": _params.get("port", ""),
    "OPTIONS": {"application_name": os.environ["FASTPOOL_TEST_APP"]},
}
_pool = json.loads(os.environ.get("FP_DJ_POOL") or "{}")
if ENGINE == "fastpool":
    _db.update(ENGINE="django_fastpool")
    _db["OPTIONS"]["pool"] = _pool
elif ENGINE == "stock":
    # Django's backend on psycopg2, as the projects that move to django_fastpool have it.
    import django_fastpool.base  # noqa: F401  # only for its "pick psycopg2" import dance

    _db.update(ENGINE="django.db.backends.postgresql",
               CONN_MAX_AGE=int(os.environ.get("FP_DJ_MAX_AGE", "0")))
elif ENGINE == "native":
    _db.update(ENGINE="django.db.backends.postgresql")
    _db["OPTIONS"]["pool"] = _pool
else:
    raise SystemExit(f"FP_DJ_ENGINE={ENGINE!r}: fastpool, stock or native")

from django.conf import settings  # noqa: E402

settings.configure(
    DEBUG=False,
    ALLOWED_HOSTS=["*"],
    SECRET_KEY="fastpool-tests",
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=["fpapp"],
    MIDDLEWARE=[],
    DATABASES={"default": _db},
    USE_TZ=True,
    DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
    LOGGING_CONFIG=None,
)

import django  # noqa: E402

django.setup()

from asgiref.sync import async_to_sync, sync_to_async  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.http import HttpResponse, JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402

from fpapp.models import Item  # noqa: E402


def _orm_work(tag: str) -> int:
    Item.objects.create(name=tag)
    return Item.objects.filter(name=tag).count()


def _atomic_that_raises() -> None:
    try:
        with transaction.atomic():
            Item.objects.create(name="failed")
            raise ValueError("rolled back")
    except ValueError:
        pass


def _ok(n: int) -> HttpResponse:
    return HttpResponse("ok" if n >= 1 else "bad", status=200 if n >= 1 else 500)


async def async_orm(request):  # type: ignore[no-untyped-def]
    await Item.objects.acreate(name="async")
    return _ok(await Item.objects.filter(name="async").acount())


async def s2a_false(request):  # type: ignore[no-untyped-def]
    return _ok(await sync_to_async(_orm_work, thread_sensitive=False)("s2a-false"))


async def s2a_true(request):  # type: ignore[no-untyped-def]
    return _ok(await sync_to_async(_orm_work, thread_sensitive=True)("s2a-true"))


def sync(request):  # type: ignore[no-untyped-def]
    with transaction.atomic():
        Item.objects.create(name="sync")
    return _ok(Item.objects.filter(name="sync").count())


async def atomic_raise(request):  # type: ignore[no-untyped-def]
    await sync_to_async(_atomic_that_raises, thread_sensitive=False)()
    return _ok(1)


async def _acount() -> int:
    return await Item.objects.acount()


def a2s(request):  # type: ignore[no-untyped-def]
    return _ok(1 + async_to_sync(_acount)())


def stats(request):  # type: ignore[no-untyped-def]
    pool = getattr(connection, "pool", None)
    if ENGINE != "fastpool" or pool is None:
        return JsonResponse({})
    return JsonResponse({**pool.stats(), "pid": os.getpid()})


VIEWS = ("async_orm", "s2a_false", "s2a_true", "sync", "atomic_raise", "a2s")
urlpatterns = [path(f"{name}", globals()[name]) for name in VIEWS + ("stats",)]

application = get_asgi_application()
wsgi_application = get_wsgi_application()
