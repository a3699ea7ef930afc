"""fastpool: a fast, bounded, greenlet-safe PostgreSQL connection pool for psycopg2.

The package is also a PEP 249 (DB-API 2.0) module over process-wide pools::

    import fastpool as db
    con = db.connect("dbname=app", max_size=5)   # pooled; con.close() returns it
"""

from psycopg2 import (  # PEP 249's names: psycopg2's own objects, as fastpool.dbapi uses them
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

from ._impl import impl as __impl__
from .dbapi import PooledConnection, apilevel, close_all, connect, paramstyle, pool_for, threadsafety
from .errors import ConnectionRejected, PoolClosed, PoolError, PoolMisuse, PoolTimeout, TooManyRequests
from .metrics import prometheus_text
from .pool import Pool, pool_class

__version__ = "0.1.0"

__all__ = [
    "Pool",
    "PoolError",
    "PoolTimeout",
    "PoolClosed",
    "TooManyRequests",
    "PoolMisuse",
    "ConnectionRejected",
    "pool_class",
    "prometheus_text",
    "__impl__",
    "__version__",
    # PEP 249
    "apilevel",
    "threadsafety",
    "paramstyle",
    "connect",
    "pool_for",
    "close_all",
    "PooledConnection",
    "Warning",
    "Error",
    "InterfaceError",
    "DatabaseError",
    "DataError",
    "OperationalError",
    "IntegrityError",
    "InternalError",
    "ProgrammingError",
    "NotSupportedError",
    "STRING",
    "BINARY",
    "NUMBER",
    "DATETIME",
    "ROWID",
    "Date",
    "Time",
    "Timestamp",
    "DateFromTicks",
    "TimeFromTicks",
    "TimestampFromTicks",
    "Binary",
]
