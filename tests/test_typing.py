"""Type checking is part of the suite: ``mypy --strict`` over ``src/fastpool`` and a user's script
(tests/typing/user_script.py) is clean, the misuse in tests/typing/rejected.py is caught, and
stubtest holds ``_core.pyi`` (the core's declared contract) true for both cores.

Needs mypy and types-psycopg2 (the ``test`` extra). Without them these tests skip, unless
``FASTPOOL_TYPING=require`` (CI's py311 lane: .ci/run), where they fail instead;
``FASTPOOL_TYPING=skip`` skips them (CI's other lanes).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Set, Tuple

import pytest

import fastpool
from fastpool import _impl

ROOT = Path(__file__).resolve().parent.parent
TYPING = ROOT / "tests" / "typing"
ALLOWLIST = TYPING / "stubtest-allowlist.txt"
REQUIRED = os.environ.get("FASTPOOL_TYPING") == "require"
if os.environ.get("FASTPOOL_TYPING") == "skip":  # .ci/run: one lane type-checks, not each
    pytest.skip("FASTPOOL_TYPING=skip", allow_module_level=True)

try:
    import mypy  # noqa: F401
except ImportError:
    if REQUIRED:
        raise
    pytest.skip("mypy is not installed (pip install -e '.[test]')", allow_module_level=True)


def run_mypy(*args: str, env: Any = None) -> Tuple[int, str]:
    # No cache, read or written: another version's cache cannot answer for this tree.
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--cache-dir", os.devnull,
         "--config-file", str(ROOT / "pyproject.toml"),
         *args],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=600,
    )
    return proc.returncode, proc.stdout + proc.stderr


def run_stubtest(module: str, *args: str, env: Any = None) -> Tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", module, "--mypy-config-file",
         str(ROOT / "pyproject.toml"), *args],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=600,
    )
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.slow
def test_mypy_strict_is_clean_on_the_package_and_a_users_script() -> None:
    rc, out = run_mypy("src/fastpool", str(TYPING / "user_script.py"))
    assert rc == 0, out


@pytest.mark.slow
def test_mypy_rejects_misuse_of_the_public_api() -> None:
    path = TYPING / "rejected.py"
    expected: Set[Tuple[int, str]] = set()
    for n, line in enumerate(path.read_text().splitlines(), 1):
        m = re.search(r"# E: ([\w-]+)\s*$", line)
        if m:
            expected.add((n, m.group(1)))
    assert len(expected) >= 5
    rc, out = run_mypy(str(path))
    got = {(int(m.group(1)), m.group(2))
           for m in re.finditer(r"rejected\.py:(\d+): error: .*\[([\w-]+)\]$", out, re.M)}
    assert rc == 1, out
    assert got == expected, out


@pytest.mark.slow
def test_stubtest_compiled_core() -> None:
    try:
        import fastpool._core  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"the compiled core is not built: {exc}")
    rc, out = run_stubtest("fastpool._core", "--allowlist", str(ALLOWLIST), "--ignore-unused-allowlist")
    assert rc == 0, out


@pytest.mark.slow
def test_stubtest_python_core_against_the_same_stub(tmp_path: Path) -> None:
    # One contract for both cores: the twin is checked against _core.pyi itself, presented to
    # stubtest as the stub of fastpool._core_py.
    stubs = tmp_path / "fastpool"
    stubs.mkdir()
    (stubs / "__init__.pyi").write_text("")
    # ... less @disjoint_base: a C class's instance layout, which a Python class has not.
    stub = (ROOT / "src" / "fastpool" / "_core.pyi").read_text().replace("@disjoint_base\n", "")
    (stubs / "_core_py.pyi").write_text(stub)
    env = {**os.environ, "MYPYPATH": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "fastpool._core_py",
         "--allowlist", str(ALLOWLIST), "--ignore-unused-allowlist"],
        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_users_script_runs(impl: str, dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """What mypy accepted also works, on both cores."""
    monkeypatch.setattr(_impl, "impl", impl)
    monkeypatch.syspath_prepend(str(TYPING))
    import user_script

    user_script.main(dsn)
    fastpool.close_all()
