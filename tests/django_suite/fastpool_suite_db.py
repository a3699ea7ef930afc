"""DATABASES for running Django's own test suite (tests/django_suite/run.sh).

Shared by settings_fastpool.py and settings_stock.py. The server comes from ``FASTPOOL_TEST_DSN``
(any libpq DSN or URL) or defaults to ``host=127.0.0.1 port=5432 user=postgres``. Django's
runner never touches ``NAME`` itself: it creates (and drops) ``test_<NAME>`` for each alias,
plus ``test_<NAME>_<n>`` clones under ``--parallel n``. Its maintenance connection goes to the
``postgres`` database, as usual.

The module name is deliberately unlike any of Django's test apps (the settings directory is on
``PYTHONPATH`` beside Django's ``tests/``).
"""

from __future__ import annotations

import os
from typing import Any, Dict

DEFAULT_DSN = "host=127.0.0.1 port=5432 user=postgres"

# psycopg2.connect() keywords that map onto Django's own settings keys.
_KEYS = {"host": "HOST", "port": "PORT", "user": "USER", "password": "PASSWORD"}


def _parse_dsn(dsn: str) -> Dict[str, str]:
    # psycopg2 is what both settings modules run on; its libpq parser takes key=value and URLs.
    from psycopg2.extensions import parse_dsn

    return {k: v for k, v in parse_dsn(dsn).items() if v != ""}


def databases(engine: str, name: str, options: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """Django's two test aliases, ``default`` and ``other``, on one server."""
    params = _parse_dsn(os.environ.get("FASTPOOL_TEST_DSN") or DEFAULT_DSN)
    params.pop("dbname", None)  # the test databases are named after NAME, not the DSN's dbname
    base: Dict[str, Any] = {"ENGINE": engine}
    for key, setting in _KEYS.items():
        if key in params:
            base[setting] = params.pop(key)
    # Anything else in the DSN (sslmode, connect_timeout, ...) goes to psycopg2.connect().
    base_options = {**params, **options}
    return {
        "default": {**base, "NAME": name, "OPTIONS": dict(base_options)},
        "other": {**base, "NAME": f"{name}_other", "OPTIONS": dict(base_options)},
    }



def common_settings() -> Dict[str, Any]:
    """The settings both settings modules share: every setting of the sdist's own
    ``tests/test_sqlite.py`` but its DATABASES, and the outcome-recording runner for compare.sh.

    Read from the sdist being run (runtests.py's directory is first on ``sys.path``), not
    copied: the test settings change between releases (Django 6.0 dropped
    ``DEFAULT_AUTO_FIELD = "django.db.models.AutoField"`` when ``BigAutoField`` became the
    default; a copy of 5.2's made 6.x's tests of that default fail on both backends alike).
    """
    import test_sqlite

    settings = {k: v for k, v in vars(test_sqlite).items() if k.isupper() and k != "DATABASES"}
    # compare.sh: record every test's outcome (runtests.py keeps a TEST_RUNNER the settings set).
    if os.environ.get("FASTPOOL_DJANGO_OUTCOMES"):
        settings["TEST_RUNNER"] = "fastpool_suite_runner.OutcomeRecordingRunner"
    return settings
