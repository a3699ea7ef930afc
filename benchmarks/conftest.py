"""pytest-benchmark micro-benchmarks of fastpool and its peers (``pytest benchmarks/``).

The server: ``FASTPOOL_BENCH_DSN``, else ``FASTPOOL_TEST_DSN``, else the local
``host=127.0.0.1 port=5432 user=postgres dbname=test`` if it answers, else a throwaway embedded
PostgreSQL (``fastpool_bench.server``, the ``embedded`` extra) for the session.
"""

from __future__ import annotations

import os
from typing import Iterator

import psycopg2
import pytest

from fastpool_bench import peers, server


def _answers(dsn: str) -> bool:
    try:
        psycopg2.connect(dsn, connect_timeout=2).close()
    except psycopg2.Error:
        return False
    return True


@pytest.fixture(scope="session")
def dsn() -> Iterator[str]:
    given = os.environ.get("FASTPOOL_BENCH_DSN") or os.environ.get("FASTPOOL_TEST_DSN")
    if given:
        yield given
    elif _answers(peers.DEFAULT_DSN):
        yield peers.DEFAULT_DSN
    else:
        with server.embedded() as srv:
            yield srv.dsn
