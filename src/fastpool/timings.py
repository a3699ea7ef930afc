"""Per-event timings for histogram exporters (opt-in): how long each request waited for a
connection, how long each borrower kept one, how long each connect took.

``stats()`` keeps sums (``requests_wait_ms``, ``usage_ms``, ``connections_ms``); a histogram
needs every observation. Nothing is observed until a listener subscribes (``fastpool.otel`` and
``fastpool.prometheus`` do, with ``histograms=True``): until then the core's fast paths pay one pointer compare each. With a listener, each
observation is one Python call per listener on the borrowing thread, after the slot is settled.

Where each observation comes from:

* ``connection_waited``: every successful ``getconn``. A request served from the idle stack is
  timed by the core around its fast path (health check included); a request that queued is
  timed by the policy from the miss to the handoff. Failed requests (PoolTimeout,
  TooManyRequests, PoolClosed) are not waits: they are counted by ``stats()``.
* ``connection_used``: every ``putconn`` that gets past the ownership checks (a misuse raises
  first), from checkout to return. A borrowed connection that was garbage-collected without
  being returned is not observed (``stats()["connections_reclaimed"]`` counts it).
* ``connection_created``: every successful connect, including ``configure``.

Listeners are held strongly (they are exporters); pools never are: a pool installs the
process-wide listeners when it is made (:func:`install`), and :func:`subscribe` updates the pools
alive now.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, List, Optional, Protocol, Tuple

from . import fork

logger = logging.getLogger("fastpool")

__all__ = ["TimingListener", "subscribe", "unsubscribe", "BUCKETS"]

#: histogram bucket bounds (seconds) both exporters use: a hand-out from the idle stack takes
#: microseconds, a queued wait or a connect milliseconds to seconds, a borrow anything.
BUCKETS = (0.00001, 0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
           1.0, 2.5, 5.0, 10.0, 30.0)


class TimingListener(Protocol):
    """What a listener implements; ``pool_name`` is ``Pool.name``, durations in seconds.
    Called on the borrowing thread: keep it short, and it must not block."""

    def connection_waited(self, pool_name: str, seconds: float) -> None: ...

    def connection_used(self, pool_name: str, seconds: float) -> None: ...

    def connection_created(self, pool_name: str, seconds: float) -> None: ...


#: listeners for every pool, present and future
_everywhere: List[TimingListener] = []


def subscribe(listener: TimingListener, pools: Optional[Iterable[Any]] = None) -> None:
    """Send ``listener`` the timings of ``pools`` (None: every pool of the process, including
    pools made later)."""
    for method in ("connection_waited", "connection_used", "connection_created"):
        if not callable(getattr(listener, method, None)):
            raise TypeError(f"listener must have a {method}(pool_name, seconds) method")
    if pools is None:
        if listener not in _everywhere:
            _everywhere.append(listener)
        targets = fork.tracked_pools()
    else:
        targets = list(pools)
        for pool in targets:
            own = pool._timing_listeners
            if listener not in own:
                pool._timing_listeners = own + (listener,)
    for pool in targets:
        install(pool)


def unsubscribe(listener: TimingListener, pools: Optional[Iterable[Any]] = None) -> None:
    """Stop sending ``listener`` timings (of ``pools``, or of every pool when None)."""
    if pools is None:
        if listener in _everywhere:
            _everywhere.remove(listener)
        targets = fork.tracked_pools()
    else:
        targets = list(pools)
    for pool in targets:
        pool._timing_listeners = tuple(x for x in pool._timing_listeners if x is not listener)
        install(pool)


def install(pool: Any) -> None:
    """(Re)build ``pool``'s hooks from its listeners and the process-wide ones (Pool.__init__
    calls this for a new pool)."""
    listeners = tuple(_everywhere) + tuple(
        x for x in pool._timing_listeners if x not in _everywhere
    )
    waited, used, created = _hooks(pool.name, listeners)
    pool._created_hook = created
    pool._waited_hook = waited
    pool._core_set_timers(waited, used)


Hook = Optional[Callable[[float], None]]


def _hooks(name: str, listeners: Tuple[TimingListener, ...]) -> Tuple[Hook, Hook, Hook]:
    """One closure per kind; they hold the pool's name and the listeners, never the pool, so a
    dropped pool is still collected."""
    if not listeners:
        return None, None, None

    def fan_out(method: str) -> Callable[[float], None]:
        calls = [getattr(x, method) for x in listeners]

        def hook(seconds: float) -> None:
            for call in calls:
                try:
                    call(name, seconds)
                except Exception:  # an exporter's bug must never fail a getconn/putconn
                    _report(call)

        return hook

    return fan_out("connection_waited"), fan_out("connection_used"), fan_out("connection_created")


_reported: "set[str]" = set()


def _report(call: Any) -> None:
    key = repr(call)
    if key not in _reported:  # once per listener method: a broken exporter must not flood logs
        _reported.add(key)
        logger.exception("fastpool: timing listener %s raised (reported once)", key)
