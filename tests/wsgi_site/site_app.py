"""A one-file Django site on ``ENGINE: "django_fastpool"`` for tests/test_wsgi_servers.py.

Served by a real server process (gunicorn's gevent or eventlet worker, or ``eventlet.wsgi``
through benchmarks/django_gunicorn/eventlet_server.py). Configured from the environment, read
once at import:

* ``FASTPOOL_TEST_DSN``   libpq DSN of the test database (parsed into NAME/USER/HOST/...)
* ``FASTPOOL_TEST_APP``   ``application_name`` of the pooled connections (counted by the test)
* ``FP_SITE_POOL_MAX``    ``OPTIONS["pool"]["max_size"]``

``GET /?sleep=S`` runs ``SELECT pg_sleep(S)`` through ``django.db.connection`` and answers JSON:
the worker's pid, the DB-API driver, psycopg2's wait callback (fastpool's own when the worker's
hub is gevent or eventlet, or the one eventlet's ``monkey_patch()`` registered first) and the
alias's pool stats.
"""

import json
import os

import psycopg2.extensions

_params = psycopg2.extensions.parse_dsn(os.environ["FASTPOOL_TEST_DSN"])
_options = {k: v for k, v in _params.items() if k not in ("dbname", "user", "password", "host", "port")}
_options["application_name"] = os.environ["FASTPOOL_TEST_APP"]
_options["pool"] = {"max_size": int(os.environ.get("FP_SITE_POOL_MAX", "3")), "timeout": 60}

import django  # noqa: E402
from django.conf import settings  # noqa: E402

settings.configure(
    DEBUG=False,
    SECRET_KEY="fastpool-tests-not-secret",
    ALLOWED_HOSTS=["127.0.0.1"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=[],
    MIDDLEWARE=[],
    USE_TZ=True,
    DATABASES={"default": {
        "ENGINE": "django_fastpool",
        "NAME": _params.get("dbname", ""), "USER": _params.get("user", ""),
        "PASSWORD": _params.get("password", ""), "HOST": _params.get("host", ""),
        "PORT": _params.get("port", ""), "OPTIONS": _options,
    }},
)
django.setup()

from django.db import connection  # noqa: E402
from django.http import HttpResponse  # noqa: E402
from django.urls import path  # noqa: E402


def view(request):  # type: ignore[no-untyped-def]
    with connection.cursor() as cur:
        cur.execute("SELECT pg_sleep(%s)", [float(request.GET.get("sleep", "0"))])
    cb = psycopg2.extensions.get_wait_callback()
    cb = getattr(cb, "inner", cb)  # fastpool's wrapper of a callback registered before it
    body = {
        "pid": os.getpid(),
        "driver": connection.Database.__name__,
        "wait": None if cb is None else f"{cb.__module__}.{getattr(cb, '__qualname__', type(cb).__name__)}",
        "stats": connection.pool.stats(),
    }
    return HttpResponse(json.dumps(body), content_type="application/json")


urlpatterns = [path("", view)]

from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
