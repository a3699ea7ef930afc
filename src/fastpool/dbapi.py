"""fastpool as a PEP 249 (DB-API 2.0) module: ``import fastpool as db; db.connect(...)``.

``connect()`` returns a pooled connection: a thin wrapper around a psycopg2 connection taken from
a process-wide pool, one per (connection parameters, pool options). ``close()`` gives it back
(and closes the cursors it made, so none can run on a connection that belongs to someone else
now). Everything else -- cursors, commit/rollback, autocommit, ``with conn:``, the exception
classes as connection attributes -- is psycopg2's own, so ``except psycopg2.Error`` keeps
working. Any use after ``close()`` raises ``InterfaceError``. A pooled connection dropped without
``close()`` goes back to the pool when it is garbage-collected.
"""

from __future__ import annotations

import weakref
from typing import Any, Dict, Optional, Tuple

import psycopg2
from psycopg2 import (  # noqa: F401  (re-exported: the same classes as psycopg2's)
    BINARY,
    DATETIME,
    NUMBER,
    ROWID,
    STRING,
    Binary,
    DatabaseError,
    DataError,
    Date,
    DateFromTicks,
    Error,
    IntegrityError,
    InterfaceError,
    InternalError,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
    Time,
    TimeFromTicks,
    Timestamp,
    TimestampFromTicks,
    Warning,
)
from psycopg2.extensions import TRANSACTION_STATUS_INERROR, TRANSACTION_STATUS_INTRANS, make_dsn
from psycopg2.extensions import cursor as _pg_cursor

from . import _original
from .conninfo import conninfo_problem

apilevel = "2.0"
#: as psycopg2: threads may share the module and connections (not cursors).
threadsafety = 2
paramstyle = "pyformat"

#: Pool keyword arguments; every other keyword of connect() is a connection parameter.
POOL_OPTIONS = frozenset(
    {
        "min_size", "max_size", "timeout", "max_waiting", "max_lifetime", "max_idle",
        "reconnect_timeout", "reconnect_failed", "configure", "reset", "check", "leak_timeout",
        "green", "name", "lifo",
    }
)

_pools: Dict[Tuple[Any, ...], Any] = {}
# A real lock, never held across I/O (the threading rule, fastpool._original): Pool() only
# schedules its connects.
_pools_lock = _original.allocate_lock()
_cursor_classes: Dict[type, type] = {}


def _pooled_cursor_class(base: type) -> type:
    """``base`` (a psycopg2 cursor class) whose ``connection`` is the PooledConnection, so a
    cursor cannot reach the raw connection after it went back to the pool."""
    cls = _cursor_classes.get(base)
    if cls is None:
        cls = type(
            f"Pooled{base.__name__[0].upper()}{base.__name__[1:]}",
            (base,),
            {
                "__slots__": ("_fastpool_connection",),
                "__module__": __name__,
                "connection": property(
                    lambda self: self._fastpool_connection, doc="The PooledConnection that made this cursor."
                ),
            },
        )
        _cursor_classes[base] = cls
    return cls


def _split(dsn: Optional[str], kwargs: Dict[str, Any]) -> Tuple[str, Dict[str, Any], Dict[str, Any]]:
    problem = conninfo_problem(dsn) if isinstance(dsn, str) else None
    if problem is not None:
        # As psycopg2.connect() would, but without quoting the dsn: it may hold a password.
        raise ProgrammingError(f"invalid dsn: {problem}")
    # ``timeout`` is how long this one call may wait (connect() passes it to getconn()), not a
    # property of the pool: were it part of the pool's key, each distinct value would make a
    # pool of its own, with its own connections and threads.
    pool_options = {k: v for k, v in kwargs.items() if k in POOL_OPTIONS and k != "timeout"}
    params = {k: v for k, v in kwargs.items() if k not in POOL_OPTIONS}
    # psycopg2.connect() semantics: keyword parameters are merged into the dsn; factories stay
    # keyword arguments of the connect call.
    connect_kwargs: Dict[str, Any] = {
        k: params.pop(k) for k in ("connection_factory", "cursor_factory") if k in params
    }
    return make_dsn(dsn or "", **params), connect_kwargs, pool_options


def _key(dsn: str, connect_kwargs: Dict[str, Any], pool_options: Dict[str, Any]) -> Tuple[Any, ...]:
    def freeze(d: Dict[str, Any]) -> Tuple[Any, ...]:
        return tuple(sorted((k, v if _hashable(v) else id(v)) for k, v in d.items()))

    return (dsn, freeze(connect_kwargs), freeze(pool_options))


def _hashable(v: Any) -> bool:
    try:
        hash(v)
    except TypeError:
        return False
    return True


def pool_for(dsn: Optional[str] = None, **kwargs: Any) -> Any:
    """The process-wide Pool that ``connect(dsn, **kwargs)`` draws from (created on first use)."""
    from .pool import Pool

    dsn_, connect_kwargs, pool_options = _split(dsn, kwargs)
    key = _key(dsn_, connect_kwargs, pool_options)
    pool = _pools.get(key)
    if pool is None or pool.closed:
        with _pools_lock:
            pool = _pools.get(key)
            if pool is None or pool.closed:
                pool_options.setdefault("min_size", 0)
                pool = Pool(dsn_, kwargs=connect_kwargs or None, **pool_options)
                _pools[key] = pool
    return pool


def connect(dsn: Optional[str] = None, **kwargs: Any) -> "PooledConnection":
    """A pooled psycopg2 connection; ``close()`` returns it to the pool.

    Keywords that are :class:`fastpool.Pool` options (``max_size``, ``max_lifetime``, ...)
    configure the pool; ``timeout`` is how long this call may wait for a connection (it does not
    make a pool of its own); all others are connection parameters, as for ``psycopg2.connect``.
    """
    pool = pool_for(dsn, **kwargs)
    timeout = kwargs.get("timeout")
    conn = pool.getconn(timeout)
    try:
        token = pool._hold(conn)  # only close() can return it (see Pool.connection)
    except BaseException:
        pool.putconn(conn)
        raise
    return PooledConnection(pool, conn, token)


def close_all() -> None:
    """Close every pool made by connect()/pool_for() in this process."""
    with _pools_lock:
        pools = list(_pools.values())
        _pools.clear()
    for p in pools:
        p.close()


class PooledConnection:
    """A psycopg2 connection on loan from a pool (see the module docstring)."""

    __slots__ = ("_pool", "_conn", "_token", "_cursors", "__weakref__")

    def __init__(self, pool: Any, conn: Any, token: int = 0) -> None:
        object.__setattr__(self, "_pool", pool)
        object.__setattr__(self, "_conn", conn)
        object.__setattr__(self, "_token", token)
        object.__setattr__(self, "_cursors", weakref.WeakSet())

    def _live(self) -> Any:
        conn = self._conn
        if conn is None:
            raise InterfaceError("connection already closed (returned to its pool)")
        return conn

    # -- PEP 249 -----------------------------------------------------------------------------
    def close(self) -> None:
        """Give the connection back to the pool. Idempotent."""
        conn = self._conn
        if conn is None:
            return
        object.__setattr__(self, "_conn", None)
        self._close_cursors()
        try:
            # PEP 249: closing implies a rollback. Done here, quietly: the pool would do it too,
            # but it warns, since for a pool a returned open transaction is usually a bug.
            if conn.get_transaction_status() in (TRANSACTION_STATUS_INTRANS, TRANSACTION_STATUS_INERROR):
                conn.rollback()
        except Exception:
            pass  # a broken connection: putconn discards it
        self._put(conn)

    def _put(self, conn: Any) -> None:
        if self._token:
            self._pool._putconn_held(conn, self._token)
        else:
            self._pool.putconn(conn)

    def _close_cursors(self) -> None:
        for cur in list(self._cursors):
            try:
                cur.close()
            except Exception:
                pass

    def commit(self) -> None:
        self._live().commit()

    def rollback(self) -> None:
        self._live().rollback()

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        conn = self._live()
        base = kwargs.get("cursor_factory") or conn.cursor_factory or _pg_cursor
        kwargs["cursor_factory"] = _pooled_cursor_class(base)
        cur = conn.cursor(*args, **kwargs)
        cur._fastpool_connection = self
        self._cursors.add(cur)
        return cur

    @property
    def closed(self) -> int:
        """Non-zero once closed (returned), like psycopg2's ``closed``."""
        conn = self._conn
        return 1 if conn is None else conn.closed

    @property
    def autocommit(self) -> bool:
        return bool(self._live().autocommit)

    @autocommit.setter
    def autocommit(self, value: bool) -> None:
        self._live().autocommit = value

    @property
    def pool(self) -> Any:
        return self._pool

    def __enter__(self) -> "PooledConnection":
        self._live()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        # As psycopg2: end the transaction, keep the connection open.
        conn = self._live()
        if exc_type is None:
            conn.commit()
        else:
            conn.rollback()

    # -- everything else is psycopg2's ----------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        return getattr(self._live(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("autocommit",):
            object.__setattr__(self, name, value)
        else:
            setattr(self._live(), name, value)

    def __del__(self) -> None:
        conn = self._conn
        if conn is not None:
            # Dropped without close(): close its cursors and return it from a worker (a
            # finalizer must not do network I/O itself).
            self._close_cursors()
            self._pool._return_later(conn, self._token)

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else "open"
        return f"<fastpool.PooledConnection {state} pool={self._pool.name!r}>"
