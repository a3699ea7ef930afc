"""PEP 249 compliance: Stuart Bishop's DB-API 2.0 test suite, run with ``driver = fastpool``.

The suite (``dbapi20.py``, public domain) and its two-phase-commit companion ship in psycopg2's
source distribution, not in its wheels, so this module fetches the sdist of the installed
psycopg2 version with pip at test time (``pip download --no-binary :all: --no-deps``), caches
it under ``${XDG_CACHE_HOME:-~/.cache}/fastpool/``, extracts the test files next to it, and
imports them. Nothing is committed to the repository.

No network (pip fails): the module is skipped with pip's error -- except in CI (``CI`` set) or
with ``FASTPOOL_REQUIRE_DBAPI20=1``, where it fails instead: the suite must run there.

The subclasses mirror psycopg2's own driver stub, ``tests/test_psycopg2_dbapi20.py`` of the same
sdist (``test_psycopg2_dbapi20_stub_unchanged`` checks that it still overrides exactly what we
mirror):

* ``test_callproc``: only the fetch is checked, not callproc()'s return value, as psycopg2 does
  (its callproc returns the parameters unchanged; the generic test does not check OUT
  parameters anyway);
* ``test_nextset``: psycopg2 does not implement ``nextset()`` -- skipped (psycopg2: ``pass``);
* ``test_setoutputsize``: psycopg2's ``setoutputsize()`` is a no-op, there is nothing
  driver-specific to test -- skipped (psycopg2: ``pass``; ``test_setoutputsize_basic`` runs);
* the two-phase-commit suite needs ``max_prepared_transactions > 0`` (psycopg2 skips it
  otherwise, ``skip_if_tpc_disabled``); when the shared server has 0 it runs on a private
  throwaway server configured for it (the shared server is never reconfigured), and is skipped
  only if that cannot start either.

Our own additions: the tables get a per-run prefix (the suite's documented ``table_prefix``
hook), so concurrent runs on one database do not collide; and each class runs on one fastpool
core (``FASTPOOL_IMPL`` narrows it as for the rest of the suite), by pointing the module's
process-wide pools at that core's Pool class for the duration of the class.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import unittest
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, Tuple

import psycopg2
import pytest

import fastpool
import fastpool.pool
from fastpool.pool import pool_class

PSYCOPG2_VERSION = psycopg2.__version__.split()[0]  # "2.9.9 (dt dec pq3 ext lo64)" -> "2.9.9"
SUITE_FILES = ("dbapi20.py", "dbapi20_tpc.py", "test_psycopg2_dbapi20.py")
#: what psycopg2's stub (test_psycopg2_dbapi20.py) overrides, and we mirror
MIRRORED_OVERRIDES = {
    "DatabaseAPI20Test": {"test_callproc", "test_setoutputsize", "test_nextset"},
    "TwoPhaseCommitTests": {"connect"},
}
IMPLS = ("c", "python")
IMPL_IDS = {"c": "c", "python": "py"}


# -- fetching the suite -------------------------------------------------------------------------


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    root = Path(base) / "fastpool"
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError:  # read-only or missing home: fall back to a per-user temp dir
        root = Path(tempfile.gettempdir()) / f"fastpool-cache-{os.getuid()}"
        root.mkdir(parents=True, exist_ok=True)
    return root


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock file: two test runs must not download/extract at the same time."""
    import fcntl

    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _pip_download(version: str, dest: Path) -> Path:
    """``pip download`` psycopg2's sdist into ``dest``; raise RuntimeError with pip's output."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
        "--disable-pip-version-check", "--no-input", "--timeout", "30",
        f"psycopg2=={version}", "-d", str(dest),
    ]
    env = dict(os.environ, PIP_NO_INPUT="1")
    out = _run(cmd, env)
    if out is not None and "pg_config" in out and shutil.which("pg_config") is None:
        # pip prepares an sdist's metadata even for `download`, which runs psycopg2's setup.py,
        # which insists on pg_config (libpq's dev files). We only want the test files inside:
        # give that metadata step a stub pg_config instead of requiring libpq-dev.
        with tempfile.TemporaryDirectory(prefix="fastpool-pgconfig-stub-") as stub_dir:
            stub = Path(stub_dir) / "pg_config"
            stub.write_text(f"#!/bin/sh\necho {stub_dir}\n")
            stub.chmod(0o755)
            env["PATH"] = stub_dir + os.pathsep + env.get("PATH", "")
            out = _run(cmd, env)
    if out is not None:
        raise RuntimeError(f"`{' '.join(cmd[2:])}` failed:\n{out[-3000:]}")
    found = sorted(dest.glob(f"psycopg2-{version}.tar.gz")) or sorted(dest.glob("psycopg2-*.tar.gz"))
    if not found:
        raise RuntimeError(f"pip download succeeded but left no psycopg2 sdist in {dest}")
    return found[0]


def _run(cmd: list, env: Dict[str, str]) -> Any:
    """Run ``cmd``; None on success, else its combined output."""
    try:
        proc = subprocess.run(
            cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, timeout=600,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None if proc.returncode == 0 else proc.stdout


def fetch_suite(version: str = PSYCOPG2_VERSION) -> Path:
    """Directory holding dbapi20.py & co from psycopg2 ``version``'s sdist (cached)."""
    root = _cache_root()
    suite_dir = root / f"psycopg2-{version}-tests"
    if all((suite_dir / name).is_file() for name in SUITE_FILES):
        return suite_dir
    with _locked(root / f"psycopg2-{version}.lock"):
        if all((suite_dir / name).is_file() for name in SUITE_FILES):
            return suite_dir  # another run did it while we waited for the lock
        sdist = root / f"psycopg2-{version}.tar.gz"
        if not sdist.is_file():
            with tempfile.TemporaryDirectory(prefix="download-", dir=root) as tmp:
                os.replace(_pip_download(version, Path(tmp)), sdist)
        suite_dir.mkdir(exist_ok=True)
        with tarfile.open(sdist, "r:gz") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers()
                       if m.isfile() and Path(m.name).parent.name == "tests"
                       and Path(m.name).name in SUITE_FILES}
            missing = set(SUITE_FILES) - set(members)
            if missing:
                raise RuntimeError(f"{sdist.name} has no tests/{', tests/'.join(sorted(missing))}")
            for name, member in members.items():
                data = tar.extractfile(member)
                assert data is not None
                tmp_file = suite_dir / f".{name}.{os.getpid()}.tmp"
                tmp_file.write_bytes(data.read())
                os.replace(tmp_file, suite_dir / name)  # atomic: readers never see half a file
    return suite_dir


def _import(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _must_run() -> bool:
    return (os.environ.get("FASTPOOL_REQUIRE_DBAPI20", "") not in ("", "0")
            or os.environ.get("CI", "").lower() not in ("", "0", "false"))


try:
    SUITE_DIR = fetch_suite()
    dbapi20 = _import(SUITE_DIR / "dbapi20.py", "fastpool_tests_dbapi20")
    dbapi20_tpc = _import(SUITE_DIR / "dbapi20_tpc.py", "fastpool_tests_dbapi20_tpc")
except Exception as exc:  # no network, no pip, a changed sdist layout...
    reason = f"DB-API 2.0 suite unavailable (psycopg2 {PSYCOPG2_VERSION} sdist): {exc}"
    if _must_run():
        pytest.fail(reason + "\n(CI / FASTPOOL_REQUIRE_DBAPI20: this suite must run)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


# -- running it on each core ------------------------------------------------------------------


def _selected_impls() -> Tuple[str, ...]:
    wanted = os.environ.get("FASTPOOL_IMPL", "").strip()
    return (wanted,) if wanted in IMPLS else IMPLS


@contextlib.contextmanager
def pools_on_core(impl: str) -> Iterator[None]:
    """fastpool.connect() makes its process-wide pools with fastpool.pool.Pool, looked up at
    each pool creation; point it at ``impl``'s Pool class, starting and ending with no pools."""
    cls = pool_class(impl)  # raises if the C core cannot be imported: a build bug, not a skip
    fastpool.close_all()
    saved = fastpool.pool.Pool
    fastpool.pool.Pool = cls
    try:
        yield
    finally:
        fastpool.pool.Pool = saved
        fastpool.close_all()


@pytest.fixture(scope="class")
def _fastpool_driver(request: pytest.FixtureRequest, dsn: str) -> Iterator[None]:
    cls = request.cls
    cls.connect_args = (dsn,)
    with pools_on_core(cls.fastpool_impl):
        yield


class _ModernAliases:
    # dbapi20.py predates Python 3.12, which removed these unittest aliases.
    failUnless = unittest.TestCase.assertTrue
    assertEquals = unittest.TestCase.assertEqual


def _table_ddl(prefix: str) -> Dict[str, str]:
    return {
        "table_prefix": prefix,
        "ddl1": f"create table {prefix}booze (name varchar(20))",
        "ddl2": f"create table {prefix}barflys (name varchar(20))",
        "xddl1": f"drop table {prefix}booze",
        "xddl2": f"drop table {prefix}barflys",
    }


def _dbapi20_test_callproc(self: Any) -> None:
    # As psycopg2's stub: callproc()'s return value is not DB-API's (it returns the parameters
    # unchanged), so check only the result set it produced.
    con = self._connect()
    try:
        cur = con.cursor()
        if self.lower_func and hasattr(cur, "callproc"):
            cur.callproc(self.lower_func, ("FOO",))
            r = cur.fetchall()
            self.assertEqual(len(r), 1, "callproc produced no result set")
            self.assertEqual(len(r[0]), 1, "callproc produced invalid result set")
            self.assertEqual(r[0][0], "foo", "callproc produced invalid results")
    finally:
        con.close()


def _dbapi20_test_setoutputsize(self: Any) -> None:
    self.skipTest("psycopg2's setoutputsize() is a no-op: nothing driver-specific to test "
                  "(psycopg2's own stub overrides it the same way)")


def _dbapi20_test_nextset(self: Any) -> None:
    self.skipTest("psycopg2 does not implement nextset() (psycopg2's own stub overrides it the same way)")


def _dbapi20_test_driver_is_fastpool(self: Any) -> None:
    # Not in the suite: make sure the suite really exercised fastpool, on the intended core.
    con = self._connect()
    try:
        self.assertIsInstance(con, fastpool.PooledConnection)
        self.assertEqual(con.pool._core_impl, self.fastpool_impl)
    finally:
        con.close()


def _max_prepared_transactions(dsn: str) -> int:
    con = psycopg2.connect(dsn)
    try:
        with con.cursor() as cur:
            cur.execute("SHOW max_prepared_transactions")
            return int(cur.fetchone()[0])
    finally:
        con.close()


@pytest.fixture(scope="module")
def _tpc_dsn(dsn: str) -> Iterator[str]:
    """A server with two-phase commit enabled: the shared one if it is, else a private one
    (the shared server is never reconfigured or restarted)."""
    if _max_prepared_transactions(dsn) > 0:
        yield dsn
        return
    try:
        import conftest  # tests/conftest.py, already imported by pytest under this name

        server = conftest.PrivateServer()
    except Exception as exc:
        pytest.skip(f"two-phase commit: the shared server has max_prepared_transactions = 0 and "
                    f"no private server could be started ({exc!r})")
    try:
        with open(server.pgdata / "postgresql.conf", "a") as conf:
            conf.write("max_prepared_transactions = 10\n")
        server.restart()
        yield server.dsn
    finally:
        server.cleanup()


@pytest.fixture(scope="class")
def _fastpool_tpc_driver(request: pytest.FixtureRequest, _tpc_dsn: str) -> Iterator[None]:
    cls = request.cls
    cls.connect_args = (_tpc_dsn,)
    with pools_on_core(cls.fastpool_impl):
        yield


def _tpc_connect(self: Any) -> Any:
    return fastpool.connect(*self.connect_args)


def _make_classes() -> Dict[str, type]:
    classes: Dict[str, type] = {}
    prefix = f"dbapi20test_{uuid.uuid4().hex[:8]}_"
    for impl in _selected_impls():
        suffix = IMPL_IDS[impl]
        name = f"TestDBAPI20_{suffix}"
        attrs: Dict[str, Any] = {
            "__module__": __name__,
            "__qualname__": name,
            "__doc__": f"Stuart Bishop's DatabaseAPI20Test with driver = fastpool (core {impl}).",
            "driver": fastpool,
            "connect_args": (),  # (dsn,) set by the _fastpool_driver fixture
            "connect_kw_args": {},
            "lower_func": "lower",
            "fastpool_impl": impl,
            "test_callproc": _dbapi20_test_callproc,
            "test_setoutputsize": _dbapi20_test_setoutputsize,
            "test_nextset": _dbapi20_test_nextset,
            "test_fastpool_driver": _dbapi20_test_driver_is_fastpool,
            **_table_ddl(prefix + suffix + "_"),
        }
        cls = type(name, (_ModernAliases, dbapi20.DatabaseAPI20Test), attrs)
        classes[name] = pytest.mark.usefixtures("_fastpool_driver")(cls)

        name = f"TestDBAPI20TPC_{suffix}"
        attrs = {
            "__module__": __name__,
            "__qualname__": name,
            "__doc__": f"The DB-API two-phase-commit suite with driver = fastpool (core {impl}).",
            "driver": fastpool,
            "connect_args": (),
            "fastpool_impl": impl,
            "connect": _tpc_connect,
        }
        cls = type(name, (_ModernAliases, dbapi20_tpc.TwoPhaseCommitTests), attrs)
        # slow: _tpc_dsn starts a private server when the shared one has no prepared transactions
        classes[name] = pytest.mark.slow(pytest.mark.usefixtures("_fastpool_tpc_driver")(cls))
    return classes


# Only the subclasses are module globals: a bare DatabaseAPI20Test here would be collected too.
globals().update(_make_classes())


def test_psycopg2_dbapi20_stub_unchanged() -> None:
    """psycopg2's own stub still overrides exactly what the classes above mirror."""
    tree = ast.parse((SUITE_DIR / "test_psycopg2_dbapi20.py").read_text())
    seen: Dict[str, set] = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        for base in node.bases:
            base_name = base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", None)
            if base_name in MIRRORED_OVERRIDES:
                seen[base_name] = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
    assert seen == MIRRORED_OVERRIDES, (
        f"psycopg2 {PSYCOPG2_VERSION}'s tests/test_psycopg2_dbapi20.py now overrides {seen}; "
        f"update the mirrored overrides in {__file__}"
    )
