"""Django test-suite settings: both aliases on ``ENGINE: "django_fastpool"`` (psycopg2 + fastpool).

Used by tests/django_suite/run.sh; see fastpool_suite_db.py for where the server comes from.
``FASTPOOL_DJANGO_NAME`` (default ``django_fp``) names the test databases ``test_<NAME>`` and
``test_<NAME>_other``.
"""

import os

from fastpool_suite_db import common_settings, databases

globals().update(common_settings())

DATABASES = databases(
    "django_fastpool",
    os.environ.get("FASTPOOL_DJANGO_NAME", "django_fp"),
    {"pool": {"max_size": int(os.environ.get("FASTPOOL_DJANGO_POOL_MAX", "4")),
              # FASTPOOL_DJANGO_HOLD: OPTIONS["pool"]["hold"] ("request" or "transaction")
              **({"hold": os.environ["FASTPOOL_DJANGO_HOLD"]} if os.environ.get("FASTPOOL_DJANGO_HOLD") else {})}},
)

# The 5 tests of behaviour django_fastpool replaces by design (persistent connections under
# CONN_MAX_AGE, psycopg2 refusing pooling; a 6th with the default OPTIONS["pool"]["hold"] =
# "transaction": connection.connection is None once the last cursor closed) are skipped by the
# backend itself, with the reason, through DatabaseFeatures.django_test_skips (base.py).
