"""The pool's exceptions.

They subclass ``psycopg2.OperationalError`` (as psycopg_pool's do for psycopg 3), so code that
already catches ``psycopg2.OperationalError`` or ``psycopg2.Error`` around database work also
catches a pool that could not supply a connection.
"""

from psycopg2 import OperationalError


class PoolError(OperationalError):
    """Base class of every error raised by the pool itself (including putconn misuse)."""


class PoolTimeout(PoolError):
    """No connection could be obtained within the timeout."""


class PoolClosed(PoolError):
    """The pool is closed (or was closed while waiting)."""


class TooManyRequests(PoolError):
    """More than ``max_waiting`` callers are already waiting."""


__all__ = ["PoolError", "PoolTimeout", "PoolClosed", "TooManyRequests"]
