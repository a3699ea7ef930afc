"""The README's Python snippets run as written (the quick start on the test server)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _snippet(section: str) -> str:
    """The first ```python block after the heading ``section``."""
    text = README.read_text()
    start = text.index(f"\n## {section}")
    match = re.compile(r"```python\n(.*?)```", re.S).search(text, start)
    assert match, f"no python snippet under '## {section}'"
    return match.group(1)


def test_quick_start_runs_on_the_test_server(dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = _snippet("Quick start")
    conninfo = '"host=127.0.0.1 dbname=app user=app"'
    assert conninfo in code, "the quick start's conninfo changed: update this test"
    # Only the server differs: the README's role "app" need not exist here.
    exec(compile(code.replace(conninfo, repr(dsn)), "README.md:quick-start", "exec"), {})
    out = capsys.readouterr().out
    assert "datetime" in out and "pool_size" in out, out


def test_celery_snippet_runs_as_written() -> None:
    pytest.importorskip("celery")
    pytest.importorskip("redis", reason="fastpool[celery] must bring the client of its redis:// broker")
    namespace: Dict[str, Any] = {"__name__": "proj.tasks"}
    exec(compile(_snippet("Celery"), "README.md:celery", "exec"), namespace)
    try:
        assert namespace["count_users"].name.endswith("count_users")
        assert namespace["app"].conf.broker_url.startswith("redis://")
    finally:
        namespace["pool"].close()
