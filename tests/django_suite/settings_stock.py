"""Django test-suite settings: both aliases on Django's stock PostgreSQL backend, on psycopg2.

The baseline that settings_fastpool.py is compared with (tests/django_suite/run.sh --stock).
psycopg 3 may be installed too (the fastpool bench extras pull it in), and Django's backend would
then pick it. Django chooses the driver twice, by trying ``import psycopg`` first, in
``postgresql/psycopg_any.py`` (adapters, ``is_psycopg3``) and in ``postgresql/base.py``
(``Database``: the exception classes that ``wrap_database_errors`` translates, the version
checks); hide psycopg 3 while both are imported, so the whole backend is on psycopg2.
``FASTPOOL_DJANGO_NAME`` defaults to ``django_stock`` here, so the two runs never share test
databases.
"""

import os
import sys

from fastpool_suite_db import common_settings, databases

if "django.db.backends.postgresql.base" not in sys.modules:
    _missing = object()
    _saved = sys.modules.get("psycopg", _missing)
    sys.modules["psycopg"] = None  # makes `import psycopg` fail
    try:
        import django.db.backends.postgresql.psycopg_any  # noqa: F401
        import django.db.backends.postgresql.base  # noqa: F401
    finally:
        if _saved is _missing:
            del sys.modules["psycopg"]
        else:
            sys.modules["psycopg"] = _saved

from django.db.backends.postgresql import base as _pg_base  # noqa: E402

if _pg_base.is_psycopg3 or _pg_base.Database.__name__ != "psycopg2":
    raise RuntimeError("settings_stock: Django's PostgreSQL backend is not (only) on psycopg2")

globals().update(common_settings())

DATABASES = databases(
    "django.db.backends.postgresql",
    os.environ.get("FASTPOOL_DJANGO_NAME", "django_stock"),
    {},
)
