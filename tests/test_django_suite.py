"""Django's own test suite (from the sdist of the installed Django) on ENGINE "django_fastpool".

Runs tests/django_suite/run.sh, which downloads the sdist with pip once (cached) and runs its
runtests.py on the backend-heavy labels. It must pass as the stock backend does: the only extra
skips are the 5 tests (6 with hold="transaction") the backend declares inapplicable (DatabaseFeatures.django_test_skips).
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


@pytest.mark.slow
def test_django_own_suite_passes_on_django_fastpool(dsn: str) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "FASTPOOL_TEST_DSN": dsn}
    proc = subprocess.run(
        ["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=900
    )
    out = proc.stdout + proc.stderr
    tail = "\n".join(out.splitlines()[-60:])
    assert proc.returncode == 0, f"Django's suite failed on django_fastpool:\n{tail}"
    ran = re.search(r"Ran (\d+) tests", out)
    assert ran and int(ran.group(1)) > 1000, tail
    assert re.search(r"^OK\b", out, re.MULTILINE), tail
    print(f"\nDjango {django.get_version()}: {ran.group(0)}; " + re.search(r"^OK.*$", out, re.MULTILINE).group(0))
