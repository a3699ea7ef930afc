"""Pools across ``fork()``: the child starts empty and never touches the parent's sockets.

A forked child inherits the parent's pooled connections: the same sockets, shared with the
parent. If the child closed one -- or merely garbage-collected it -- psycopg2's ``PQfinish``
would send a Terminate message down the shared socket and end the *parent's* session. So in the
child every inherited connection first has its socket descriptor replaced by ``/dev/null``
(``dup2``; the parent's descriptor is untouched), and only then is it closed: libpq's goodbye
goes nowhere. The child's pool then makes connections of its own.

This runs automatically (``os.register_at_fork``) for every open pool: gunicorn ``--preload``,
Celery's prefork pool and ``multiprocessing`` with the fork start method need no user code.
"""

from __future__ import annotations

import logging
import os
import weakref
from typing import Any, List, Optional

logger = logging.getLogger("fastpool")

_pools: "weakref.WeakSet[Any]" = weakref.WeakSet()
_registered = False
#: the process in which the after-fork reset last ran (None: never, this is not a forked child
#: or no pool existed yet when it forked)
last_reset_pid: Optional[int] = None


def track(pool: Any) -> None:
    """Remember ``pool`` so that a forked child resets it."""
    global _registered
    _pools.add(pool)
    if not _registered and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _registered = True


def neutralise(conn: Any) -> None:
    """Detach an inherited connection from the shared socket, then close it harmlessly."""
    try:
        fd = conn.fileno()
    except Exception:
        fd = -1
    if fd >= 0:
        devnull = os.open(os.devnull, os.O_RDWR)
        try:
            os.dup2(devnull, fd)
        finally:
            os.close(devnull)
    try:
        conn.close()
    except Exception:
        pass


def tracked_pools() -> List[Any]:
    """Every pool of this process not yet garbage-collected: open, closed or not yet opened."""
    return list(_pools)


def live_pools() -> List[Any]:
    """The pools of this process that are not closed."""
    out = []
    for pool in list(_pools):
        try:
            if not pool.closed:
                out.append(pool)
        except Exception:  # a half-constructed pool
            continue
    return out


def _after_fork_in_child() -> None:
    global last_reset_pid
    last_reset_pid = os.getpid()
    for pool in list(_pools):
        try:
            pool._after_fork_in_child()
        except Exception:  # never let one pool break the child
            logger.exception("fastpool: resetting pool %r after fork failed", getattr(pool, "name", pool))
