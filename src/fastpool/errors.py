"""The pool's exceptions.

They subclass ``psycopg2.OperationalError`` (as psycopg_pool's do for psycopg 3), so code that
already catches ``psycopg2.OperationalError`` or ``psycopg2.Error`` around database work also
catches a pool that could not supply a connection.
"""

from psycopg2 import InterfaceError, OperationalError


class PoolError(OperationalError):
    """Base class of the pool's *operational* errors: it could not supply a connection (now)."""


class PoolTimeout(PoolError):
    """No connection could be obtained within the timeout."""


class PoolClosed(PoolError):
    """The pool is closed (or was closed while waiting)."""


class TooManyRequests(PoolError):
    """More than ``max_waiting`` callers are already waiting."""


class PoolMisuse(InterfaceError):
    """The pool was used wrongly: ``putconn`` of a connection that is not from this pool, or was
    already returned, or is held by someone else (``with pool.connection()``, a
    ``fastpool.connect()`` connection, a Django connection).

    A programming error, not a database condition: deliberately *not* an ``OperationalError``
    (nor a :class:`PoolError`), so code that retries on ``OperationalError`` does not retry a
    bug. It is a ``psycopg2.InterfaceError`` (PEP 249: an error of the interface, not of the
    database), so ``except psycopg2.Error`` still sees it.
    """


class ConnectionRejected(PoolError):
    """The server refused a new connection for a reason no retry can fix (SQLSTATE class 28 or
    3D: unknown role or database, failed authentication, no ``pg_hba.conf`` entry): raised at
    once to the callers waiting for that connection instead of a ``PoolTimeout`` later."""


__all__ = ["PoolError", "PoolTimeout", "PoolClosed", "TooManyRequests", "PoolMisuse", "ConnectionRejected"]
