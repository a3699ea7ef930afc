"""Django test-suite settings: both aliases on Django's stock PostgreSQL backend, on psycopg2.

The baseline that settings_fastpool.py is compared with (tests/django_suite/run.sh --stock).
psycopg 3 may be installed too (the fastpool test extras pull it in), and Django's backend would
then pick it; hide it during the one import in which Django chooses its driver, exactly as
django_fastpool/base.py does, so both runs are on psycopg2. ``FASTPOOL_DJANGO_NAME`` defaults to
``django_stock`` here, so the two runs never share test databases.
"""

import os
import sys

from fastpool_suite_db import COMMON, databases

if "django.db.backends.postgresql.psycopg_any" not in sys.modules:
    _missing = object()
    _saved = sys.modules.get("psycopg", _missing)
    sys.modules["psycopg"] = None  # makes `import psycopg` fail
    try:
        import django.db.backends.postgresql.psycopg_any  # noqa: F401
    finally:
        if _saved is _missing:
            del sys.modules["psycopg"]
        else:
            sys.modules["psycopg"] = _saved

from django.db.backends.postgresql.psycopg_any import is_psycopg3  # noqa: E402

if is_psycopg3:
    raise RuntimeError("settings_stock: Django's PostgreSQL backend picked psycopg 3, not psycopg2")

globals().update(COMMON)

DATABASES = databases(
    "django.db.backends.postgresql",
    os.environ.get("FASTPOOL_DJANGO_NAME", "django_stock"),
    {},
)
