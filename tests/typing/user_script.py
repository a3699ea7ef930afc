"""What a user's code does with fastpool, written as a user would: ``mypy --strict`` must accept
it and infer the types asserted here, and it runs against a real server
(tests/test_typing.py runs both)."""

from __future__ import annotations

import sys
from typing import Any, Dict, List, assert_type

import psycopg2
import psycopg2.extensions

import fastpool


class MyConnection(psycopg2.extensions.connection):
    """A connection_factory class, as users subclass psycopg2's connection."""


def make_connection(conninfo: str, **kwargs: Any) -> MyConnection:
    return MyConnection(psycopg2.extensions.make_dsn(conninfo, **kwargs))


def on_give_up(pool: fastpool.Pool[psycopg2.extensions.connection]) -> None:
    print(f"{pool.name} gave up", file=sys.stderr)


def configure(conn: psycopg2.extensions.connection) -> None:
    conn.autocommit = False


def main(dsn: str) -> None:
    pool = fastpool.Pool(dsn, min_size=1, max_size=4, timeout=10.0, max_waiting=0,
                         max_lifetime=3600.0, max_idle=600.0, reconnect_timeout=30.0,
                         reconnect_failed=on_give_up, configure=configure, reset="auto",
                         check="auto", leak_timeout=None, green="auto", name="user-script")
    assert_type(pool, fastpool.Pool[psycopg2.extensions.connection])
    assert isinstance(pool, fastpool.Pool)

    conn = pool.getconn(timeout=5)
    assert_type(conn, psycopg2.extensions.connection)
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
    pool.putconn(conn)

    with pool.connection(timeout=5.0) as conn2:
        assert_type(conn2, psycopg2.extensions.connection)

    stats: Dict[str, int] = pool.stats()
    assert stats["pool_max"] == pool.max_size == 4
    assert_type(pool.pop_stats(), Dict[str, int])
    assert_type(pool.closed, bool)
    assert_type(pool.name, str)
    assert_type(pool.timeout, float)
    pool.resize(1, 3)
    pool.check()
    pool.drain()
    pool.wait(timeout=10.0)
    pool.close(timeout=5.0)

    # the connection type: explicit, or inferred from connect=
    explicit = fastpool.Pool[MyConnection](dsn, kwargs={"connection_factory": MyConnection},
                                           min_size=0, max_size=1)
    assert_type(explicit.getconn(), MyConnection)
    with fastpool.Pool(dsn, connect=make_connection, max_size=1) as inferred:
        assert_type(inferred, fastpool.Pool[MyConnection])
        with inferred.connection() as mine:
            assert_type(mine, MyConnection)
            assert isinstance(mine, MyConnection)
    explicit.close()

    errors: List[type[fastpool.PoolError]] = [
        fastpool.PoolTimeout, fastpool.PoolClosed, fastpool.TooManyRequests,
    ]
    try:
        pool.getconn()
    except fastpool.PoolClosed as exc:
        assert isinstance(exc, tuple(errors))

    # PEP 249 over process-wide pools
    con = fastpool.connect(dsn, max_size=2)
    cur2 = con.cursor()
    cur2.execute("SELECT 1")
    con.close()
    assert_type(fastpool.__impl__, str)


if __name__ == "__main__":
    main(sys.argv[1])
