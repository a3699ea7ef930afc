"""Which ``Pool(...)`` options are valid, and what the size options mean.

Every option is checked before the pool touches anything (no thread, no slot, no connection), and
an error names the option. ``fastpool.Pool.__init__`` calls :func:`check_options`; ``resize()``
and ``wait()`` use the same checks.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Optional, Tuple

from . import health, reset as _reset
from .conninfo import validate_conninfo

#: default bounds when neither min_size nor max_size is given.
DEFAULT_MIN_SIZE = 1
DEFAULT_MAX_SIZE = 10
#: largest max_size accepted: PostgreSQL itself caps max_connections at 2**18 - 1 (and the
#: ring preallocates max_size slots, so an absurd value must fail here, clearly).
MAX_POOL_SIZE = 2**18 - 1
#: largest max_waiting accepted (the ring counts waiters in a C int).
MAX_WAITING_LIMIT = 2**31 - 1


class _Default(int):
    """A size default: equal to its value (and shown as it by help()), but recognisably not
    given by the caller (see resolve_sizes)."""


MIN_DEFAULT: int = _Default(DEFAULT_MIN_SIZE)
MAX_DEFAULT: int = _Default(DEFAULT_MAX_SIZE)


def positive_seconds(name: str, value: Any, *, allow_inf: bool = False) -> float:
    """``value`` as a float number of seconds > 0 (infinite only with ``allow_inf``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not value > 0 or (math.isinf(value) and not allow_inf):
        raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
    return float(value)


def int_at_least(name: str, value: Any, minimum: int) -> int:
    """``value`` if it is an int (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, not {value}")
    return value


def check_sizes(min_size: Any, max_size: Any) -> None:
    """Explicit bounds (``resize()``, or both given to the constructor)."""
    int_at_least("min_size", min_size, 0)
    int_at_least("max_size", max_size, 1)
    if max_size > MAX_POOL_SIZE:
        raise ValueError(
            f"max_size must be <= {MAX_POOL_SIZE} (PostgreSQL's own limit on connections), not {max_size}"
        )
    if min_size > max_size:
        raise ValueError(f"min_size ({min_size}) must not exceed max_size ({max_size})")


def resolve_sizes(min_size: Any, max_size: Any) -> Tuple[int, int]:
    """(min_size, max_size) from the constructor's arguments.

    ``max_size=None`` means what it means in psycopg_pool: a fixed pool, ``max_size = min_size``.
    ``min_size=N`` (N >= 1) *without* max_size is refused: psycopg_pool reads it as a fixed pool
    of N, fastpool's default max_size is 10, and guessing wrong either way misjudges how many
    server connections a process may open. Neither given: 1..10.
    """
    if type(max_size) is _Default:
        if type(min_size) is _Default:
            return DEFAULT_MIN_SIZE, DEFAULT_MAX_SIZE
        int_at_least("min_size", min_size, 0)
        if min_size > 0:
            raise ValueError(
                f"min_size={min_size} without max_size is ambiguous: psycopg_pool makes it a fixed pool "
                f"of {min_size}, fastpool's default max_size is {DEFAULT_MAX_SIZE}; pass max_size "
                f"(max_size=None or max_size={min_size} for psycopg_pool's meaning)"
            )
        return 0, DEFAULT_MAX_SIZE
    if type(min_size) is _Default:
        min_size = DEFAULT_MIN_SIZE
    if max_size is None:
        int_at_least("min_size", min_size, 0)
        if min_size == 0:
            raise ValueError("max_size=None means max_size = min_size (as in psycopg_pool), "
                             "so min_size must be >= 1")
        max_size = min_size
    check_sizes(min_size, max_size)
    return min_size, max_size


class Checked(NamedTuple):
    """What :func:`check_options` derived from the arguments (the rest are used as given)."""

    min_size: int
    max_size: int
    timeout: float
    health_check: Optional[health.Vet]  # None: no health check before a hand-out
    check_after: float  # idle seconds before the health check runs


def check_options(
    conninfo: Any,
    *,
    connect: Any,
    kwargs: Any,
    min_size: Any,
    max_size: Any,
    timeout: Any,
    max_waiting: Any,
    max_lifetime: Any,
    max_idle: Any,
    reconnect_timeout: Any,
    reconnect_failed: Any,
    configure: Any,
    reset: Any,
    check: Any,
    leak_timeout: Any,
    green: Any,
    name: Any,
) -> Checked:
    """Check every ``Pool(...)`` option (TypeError/ValueError naming it), in signature order."""
    validate_conninfo(conninfo)
    if connect is not None and not callable(connect):
        raise TypeError("connect must be a callable(conninfo, **kwargs) returning a connection")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise TypeError(f"kwargs must be a dict of connection parameters, not {type(kwargs).__name__}")
    min_size, max_size = resolve_sizes(min_size, max_size)
    timeout = positive_seconds("timeout", timeout, allow_inf=True)
    int_at_least("max_waiting", max_waiting, 0)
    if max_waiting > MAX_WAITING_LIMIT:
        raise ValueError(f"max_waiting must be <= {MAX_WAITING_LIMIT}, not {max_waiting}")
    positive_seconds("max_lifetime", max_lifetime, allow_inf=True)
    positive_seconds("max_idle", max_idle, allow_inf=True)
    positive_seconds("reconnect_timeout", reconnect_timeout, allow_inf=True)
    callbacks: Tuple[Tuple[str, Optional[Callable[..., Any]]], ...] = (
        ("reconnect_failed", reconnect_failed), ("configure", configure),
    )
    for opt, fn in callbacks:
        if fn is not None and not callable(fn):
            raise TypeError(f"{opt} must be a callable or None")
    _reset.check_mode(reset)
    health_check, check_after = health.make_vet(check)
    if leak_timeout is not None:
        positive_seconds("leak_timeout", leak_timeout)
    if green not in ("auto", True, False):
        raise ValueError(f"green must be 'auto', True or False, not {green!r}")
    if name is not None and not isinstance(name, str):
        raise TypeError("name must be a str")
    return Checked(min_size, max_size, timeout, health_check, check_after)
