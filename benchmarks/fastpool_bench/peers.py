"""Uniform adapters over fastpool and the connection pools it is compared with.

Every benchmark (``python -m fastpool bench``, ``benchmarks/*.py``) drives pools
through the same small interface, so that a peer is configured in one place and
every scenario measures it the same way::

    from fastpool_bench import peers
    for spec in peers.SPECS:              # in display order
        if not spec.available():          # import failed: spec.note says why
            continue
        pool = spec.make(dsn, size=4)     # opened and filled with `size` connections
        c = pool.get(); pool.put(c)       # the pool's own bound methods where it has them
        with pool.connection() as conn:   # commit on success, rollback on error, returned
            ...
        pool.close()

``get`` and ``put`` are, wherever the peer allows it, the pool's *own* bound
methods (or an unbound method of the connection proxy, for pools whose idiom is
``proxy.close()``), never a Python wrapper, so a tight ``put(get())`` loop measures
the pool and not the adapter.  ``connection()`` is the peer's idiomatic context
manager where it has one (fastpool, psycopg_pool); elsewhere a small class-based
context manager with the same semantics (commit on success, rollback on error,
always return the connection).

Each pool is configured to *block* when empty rather than raise, where the peer
can do that (DBUtils ``blocking=True``, SQLAlchemy ``max_overflow=0, timeout=30``,
psycopg_pool ``min_size=max_size``).  psycopg2's ThreadedConnectionPool cannot
block: it raises ``PoolError("connection pool exhausted")``.

No adapter does anything about greenlets: a gevent/eventlet benchmark must install
its own psycopg2 wait callback for the peers that need one (fastpool_bench.green does).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

DEFAULT_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=test"


class TxContext:
    """``with``-block over a get/put pair: commit on success, rollback on error.

    Class-based (no generator) so its own overhead stays well under a microsecond.
    """

    __slots__ = ("_get", "_put", "_conn")

    def __init__(self, get: Callable[[], Any], put: Callable[[Any], Any]):
        self._get = get
        self._put = put
        self._conn = None

    def __enter__(self):
        self._conn = conn = self._get()
        return conn

    def __exit__(self, exc_type, exc, tb):
        conn = self._conn
        self._conn = None
        try:
            if exc_type is None:
                conn.commit()
            else:
                conn.rollback()
        finally:
            self._put(conn)
        return False


class Adapter:
    """One opened pool behind the uniform interface.

    Attributes: ``name`` (spec name), ``driver`` ("psycopg2" or "psycopg"),
    ``get()``, ``put(conn)``, ``connection()``, ``close()``, ``raw`` (the pool object).
    """

    def __init__(self, name: str, driver: str, raw: Any, get: Callable, put: Callable,
                 connection: Optional[Callable] = None, close: Optional[Callable] = None):
        self.name = name
        self.driver = driver
        self.raw = raw
        self.get = get
        self.put = put
        self._connection = connection
        self._close = close

    def connection(self):
        if self._connection is not None:
            return self._connection()
        return TxContext(self.get, self.put)

    def close(self) -> None:
        if self._close is not None:
            self._close()

    def __repr__(self) -> str:
        return f"<Adapter {self.name} over {type(self.raw).__module__}.{type(self.raw).__name__}>"


# --------------------------------------------------------------------------------------
# The toy baseline: what a careful programmer writes in ten lines of Python.


class ToyPool:
    """deque + threading.Lock; blocks on a Condition (sharing the lock) when empty.

    The fast path takes only the C-level lock; the Condition is touched only when a
    thread actually has to wait, tracked by a waiter counter.  No health check, no
    reset on return: it is the floor for "a lock and a deque in Python".
    """

    def __init__(self, dsn: str, size: int, connect: Optional[Callable] = None):
        if connect is None:
            import psycopg2

            connect = psycopg2.connect
        self._free = deque(connect(dsn) for _ in range(size))
        self._all = list(self._free)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._waiting = 0

    def getconn(self):
        with self._lock:
            while not self._free:
                self._waiting += 1
                try:
                    self._cond.wait()
                finally:
                    self._waiting -= 1
            return self._free.pop()

    def putconn(self, conn) -> None:
        # Deliberately no health check or reset: this is the floor of "a lock and a
        # deque in Python", not a production pool.
        with self._lock:
            self._free.append(conn)
            if self._waiting:
                self._cond.notify()

    def closeall(self) -> None:
        for conn in self._all:
            conn.close()


# --------------------------------------------------------------------------------------
# Specs: how to probe (import + version) and open each peer.


@dataclass
class Spec:
    name: str                       # short, stable key (used in JSON)
    label: str                      # human name for tables
    driver: str                     # "psycopg2" or "psycopg"
    _probe: Callable[[], str]       # imports what is needed, returns a version string
    _make: Callable[..., Adapter]   # (dsn, size, **options) -> opened Adapter
    version: Optional[str] = None
    note: Optional[str] = None
    _probed: bool = field(default=False, repr=False)

    def available(self) -> bool:
        if not self._probed:
            self._probed = True
            try:
                self.version = self._probe()
            except Exception as exc:  # ImportError, or pool_class("c") refusing
                self.note = f"skipped: {type(exc).__name__}: {exc}"
        return self.note is None

    def make(self, dsn: str = DEFAULT_DSN, size: int = 4, **options) -> Adapter:
        if not self.available():
            raise RuntimeError(f"{self.name} is not available ({self.note})")
        return self._make(dsn, size, **options)


# fastpool ------------------------------------------------------------------------------


def _fastpool_probe(impl: str) -> Callable[[], str]:
    def probe() -> str:
        import fastpool
        from fastpool.pool import pool_class

        cls = pool_class(impl)  # raises if that core is not built
        version = getattr(fastpool, "__version__", "?")
        return f"{version} ({impl} core, {cls.__module__}.{cls.__qualname__})"

    return probe


def _fastpool_make(impl: str) -> Callable[..., Adapter]:
    def make(dsn: str, size: int, **options) -> Adapter:
        from fastpool.pool import pool_class

        cls = pool_class(impl)
        pool = cls(dsn, min_size=size, max_size=size, open=True, **options)
        pool.wait()
        return Adapter(f"fastpool-{impl}", "psycopg2", pool, pool.getconn, pool.putconn,
                       connection=pool.connection, close=pool.close)

    return make


# psycopg_pool (psycopg 3) ----------------------------------------------------------------


def _psycopg_pool_probe() -> str:
    import psycopg
    import psycopg_pool

    return f"{psycopg_pool.__version__} (psycopg {psycopg.__version__}, libpq {psycopg.pq.version()})"


def _psycopg_pool_make(dsn: str, size: int, **options) -> Adapter:
    from psycopg_pool import ConnectionPool

    options.setdefault("timeout", 30.0)
    pool = ConnectionPool(dsn, min_size=size, max_size=size, open=True, **options)
    pool.wait()
    return Adapter("psycopg_pool", "psycopg", pool, pool.getconn, pool.putconn,
                   connection=pool.connection, close=pool.close)


# SQLAlchemy QueuePool, used directly over psycopg2 -------------------------------------


def _sqlalchemy_probe() -> str:
    import sqlalchemy
    import sqlalchemy.pool  # noqa: F401

    return sqlalchemy.__version__


def _sqlalchemy_make(dsn: str, size: int, **options) -> Adapter:
    import psycopg2
    from sqlalchemy.pool import QueuePool

    options.setdefault("timeout", 30.0)
    pool = QueuePool(lambda: psycopg2.connect(dsn), pool_size=size, max_overflow=0,
                     pre_ping=False, **options)
    # Fill the pool so no benchmark pays for connecting.
    held = [pool.connect() for _ in range(size)]
    for fairy in held:
        fairy.close()
    # SQLAlchemy's idiom is fairy = pool.connect(); fairy.close() returns it.  Using the
    # unbound close of the fairy's class keeps a Python wrapper out of the loop.
    put = type(held[0]).close
    return Adapter("sqlalchemy", "psycopg2", pool, pool.connect, put, close=pool.dispose)


# DBUtils PooledDB over psycopg2 ----------------------------------------------------------


def _dbutils_probe() -> str:
    import dbutils
    import dbutils.pooled_db  # noqa: F401

    return dbutils.__version__


def _dbutils_make(dsn: str, size: int, **options) -> Adapter:
    import psycopg2
    from dbutils.pooled_db import PooledDB, PooledDedicatedDBConnection

    pool = PooledDB(psycopg2, mincached=size, maxcached=size, maxshared=0,
                    maxconnections=size, blocking=True, dsn=dsn, **options)
    # DBUtils' idiom: con = pool.connection(); con.close() returns it to the pool.
    return Adapter("dbutils", "psycopg2", pool, pool.connection,
                   PooledDedicatedDBConnection.close, close=pool.close)


# psycopg2.pool.ThreadedConnectionPool ------------------------------------------------------


def _psycopg2_probe() -> str:
    import psycopg2
    import psycopg2.pool  # noqa: F401

    return psycopg2.__version__.split()[0]


def _psycopg2_make(dsn: str, size: int, **options) -> Adapter:
    from psycopg2.pool import ThreadedConnectionPool

    pool = ThreadedConnectionPool(size, size, dsn, **options)
    return Adapter("psycopg2_pool", "psycopg2", pool, pool.getconn, pool.putconn,
                   close=pool.closeall)


# Toy -------------------------------------------------------------------------------------


def _toy_probe() -> str:
    import psycopg2  # noqa: F401

    return "n/a (fastpool_bench.peers.ToyPool)"


def _toy_make(dsn: str, size: int, **options) -> Adapter:
    pool = ToyPool(dsn, size, **options)
    return Adapter("toy", "psycopg2", pool, pool.getconn, pool.putconn, close=pool.closeall)


SPECS: list[Spec] = [
    Spec("fastpool-c", "fastpool (C core)", "psycopg2", _fastpool_probe("c"), _fastpool_make("c")),
    Spec("fastpool-python", "fastpool (python core)", "psycopg2",
         _fastpool_probe("python"), _fastpool_make("python")),
    Spec("psycopg_pool", "psycopg_pool.ConnectionPool", "psycopg", _psycopg_pool_probe,
         _psycopg_pool_make),
    Spec("sqlalchemy", "SQLAlchemy QueuePool", "psycopg2", _sqlalchemy_probe, _sqlalchemy_make),
    Spec("dbutils", "DBUtils PooledDB", "psycopg2", _dbutils_probe, _dbutils_make),
    Spec("psycopg2_pool", "psycopg2 ThreadedConnectionPool", "psycopg2", _psycopg2_probe,
         _psycopg2_make),
    Spec("toy", "deque + threading.Lock (toy)", "psycopg2", _toy_probe, _toy_make),
]

BY_NAME: dict[str, Spec] = {s.name: s for s in SPECS}

# What to install for a peer whose import fails.
PIP = {"psycopg_pool": "psycopg-pool 'psycopg[binary]'", "sqlalchemy": "SQLAlchemy",
       "dbutils": "DBUtils"}


def describe_missing(spec: Spec) -> str:
    """Why ``spec`` is skipped, for humans: "not installed (pip install ...)" or its note."""
    if (spec.note or "").startswith("skipped: ModuleNotFoundError") and spec.name in PIP:
        return f"not installed (pip install {PIP[spec.name]})"
    return spec.note or "skipped"


def get_spec(name: str) -> Spec:
    return BY_NAME[name]


def make(name: str, dsn: str = DEFAULT_DSN, size: int = 4, **options) -> Adapter:
    """Open peer ``name`` with ``size`` connections (min = max = size)."""
    return BY_NAME[name].make(dsn, size, **options)


def available(names: Optional[list[str]] = None) -> list[Spec]:
    """The specs (all, or those named) whose imports succeed, in display order."""
    specs = SPECS if names is None else [BY_NAME[n] for n in names]
    return [s for s in specs if s.available()]
