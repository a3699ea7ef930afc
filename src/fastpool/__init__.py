"""fastpool: a fast, bounded, greenlet-safe PostgreSQL connection pool for psycopg2."""

from ._impl import impl as __impl__
from .errors import PoolClosed, PoolError, PoolTimeout, TooManyRequests
from .pool import Pool, pool_class

__version__ = "0.1.0"

__all__ = [
    "Pool",
    "PoolError",
    "PoolTimeout",
    "PoolClosed",
    "TooManyRequests",
    "pool_class",
    "__impl__",
    "__version__",
]
