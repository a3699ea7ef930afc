"""Small helpers the test modules share (fixtures live in conftest.py).

Imported as ``from helpers import ...``: pytest puts this directory on ``sys.path`` (the tests
are not a package), as it does for conftest.py.
"""

from __future__ import annotations

import time
from typing import Any, Callable


def wait_until(pred: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01) -> Any:
    """Poll ``pred`` until it returns a truthy value or ``timeout`` seconds pass; return its last
    value. Tests wait on conditions, never on a fixed sleep: on a loaded machine only the
    timeout stretches, and a condition that holds early ends the wait at once."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def select_one(conn: Any) -> int:
    """One round trip on ``conn`` (``SELECT 1``)."""
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        return int(cur.fetchone()[0])


def pid_of(conn: Any) -> int:
    """The server process of ``conn``: libpq knows it, so no query and no transaction."""
    return int(conn.get_backend_pid())


def count_rows(admin: Any, table: str) -> int:
    with admin.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table}")
        return int(cur.fetchone()[0])


def _consistent(st: dict) -> bool:
    return (st["requests_waiting"] == 0 and st["pool_available"] == st["pool_size"]
            and st["pool_size"] <= st["pool_max"])


def assert_consistent(pool: Any) -> None:
    """Nobody waits, every connection is idle, and the pool is within max_size (once the
    background work -- prewarm, replacement -- has settled)."""
    wait_until(lambda: _consistent(pool.stats()), timeout=3)
    st = pool.stats()
    assert st["requests_waiting"] == 0, st
    assert st["pool_available"] == st["pool_size"], st
    assert st["pool_size"] <= st["pool_max"], st
