"""Celery worker integration: one call, ``fastpool.contrib.celery.setup(app)``.

Put it next to the pool, in the module the worker imports (``celery -A proj worker``)::

    import fastpool
    import fastpool.contrib.celery
    from celery import Celery

    app = Celery("proj", broker="redis://127.0.0.1:6379/0")
    pool = fastpool.Pool(DSN, min_size=0, max_size=5)
    fastpool.contrib.celery.setup(app)

    @app.task
    def count_users() -> int:
        with pool.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM users")
            return cur.fetchone()[0]

What each signal handler does, and why
--------------------------------------
``worker_process_init`` (prefork only; runs in each new pool child right after the fork)
    The after-fork reset itself is *automatic*: every fastpool pool registers an
    ``os.register_at_fork`` hook (see :mod:`fastpool.fork`) that, in the child, detaches the
    inherited sockets (so the child can never end the parent's or a sibling's sessions) and
    starts the pool empty. By the time Celery sends this signal that has already happened, so
    the handler only *verifies* it -- if the process was forked without Python's fork hooks
    running (a fork made from C), it performs the reset itself. Either way the reset starts
    refilling ``min_size``, so a child with ``min_size > 0`` prewarms before its first task.
    When the reset already ran, the handler does nothing.

``worker_process_shutdown`` (prefork only; runs in each pool child as it exits)
    Closes every live pool of the child, bounded by ``close_timeout``. Billiard ends children
    with ``os._exit``, which skips ``atexit`` and finalizers: without this the server only sees
    the sockets vanish ("unexpected EOF on client connection") and background threads die
    mid-work.

``worker_shutdown`` (every pool type; runs in the main worker process on shutdown)
    Closes every live pool of the main process (with ``-P gevent``/``threads``/``solo`` the
    process that runs the tasks), bounded by ``close_timeout``.

``task_postrun`` (only when Django is installed; acts only when its settings are configured)
    Calls ``django.db.close_old_connections()`` after each task, as Django does at the end of a
    request: a connection that is broken, or past ``CONN_MAX_AGE``, is closed -- which, with a
    fastpool-backed database backend, returns it to the pool instead of keeping it pinned to an
    idle worker. Celery's own Django fixup closes connections around tasks too; running both is
    harmless (closing an already-closed Django connection is a no-op). Eager tasks
    (``task_always_eager`` / ``apply()``) are skipped, as the fixup does, because they run inside
    the caller's request and may be inside its transaction.

Celery's worker signals are process-wide, so the handlers serve every app in the process.
:func:`setup` may be called any number of times (each handler is connected once, by
``dispatch_uid``); importing this module has no side effects and does not import Celery.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from time import monotonic
from typing import Any, List, Optional

from .. import _original, fork

logger = logging.getLogger("fastpool")

__all__ = ["setup", "pools", "close_all", "DEFAULT_CLOSE_TIMEOUT"]

#: seconds (in total, for all pools of the process) that shutdown waits for pools to close.
DEFAULT_CLOSE_TIMEOUT = 5.0

_UID = "fastpool.contrib.celery."
_state_lock = _original.allocate_lock()  # the threading rule: fastpool._original
_close_timeout = DEFAULT_CLOSE_TIMEOUT
_setup_pid: Optional[int] = None  # the process where setup() ran (a fresh interpreter sets its own)


def pools() -> List[Any]:
    """The live (not closed) fastpool pools of this process."""
    return fork.live_pools()


def close_all(timeout: float = DEFAULT_CLOSE_TIMEOUT) -> int:
    """Close every live pool of this process within ``timeout`` seconds in total.

    Returns the number of pools closed. Errors are logged, never raised: this runs while a
    worker shuts down, where an exception would only hide the real exit reason.
    """
    deadline = monotonic() + max(0.0, timeout)
    closed = 0
    for pool in pools():
        try:
            pool.close(timeout=max(0.0, deadline - monotonic()))
            closed += 1
        except Exception:
            logger.exception("fastpool: closing pool %r failed", getattr(pool, "name", pool))
    return closed


# -- signal handlers -------------------------------------------------------------------------------
def _on_worker_process_init(**_: Any) -> None:
    pid = os.getpid()
    if pid != _setup_pid and fork.last_reset_pid != pid and pools():
        # Forked, but Python's at-fork hooks did not run in this process (a fork made from C):
        # the pools still hold the parent's sockets. Reset them now, exactly as the hook would
        # (this also refills min_size).
        logger.warning("fastpool: after-fork hooks did not run in worker process %d; resetting", pid)
        fork._after_fork_in_child()


def _shutdown(signal_name: str) -> None:
    t0 = monotonic()
    n = close_all(_close_timeout)
    if n:
        logger.info("fastpool: %s: closed %d pool(s) in process %d in %.3f s",
                    signal_name, n, os.getpid(), monotonic() - t0)


def _on_worker_process_shutdown(**_: Any) -> None:
    _shutdown("worker_process_shutdown")


def _on_worker_shutdown(**_: Any) -> None:
    _shutdown("worker_shutdown")


def _on_task_postrun(sender: Any = None, task: Any = None, **_: Any) -> None:
    task = task if task is not None else sender
    request = getattr(task, "request", None)
    if request is not None and getattr(request, "is_eager", False):
        return
    try:
        from django.conf import settings
    except ImportError:
        return
    if not settings.configured:
        return
    from django.db import close_old_connections

    close_old_connections()


# -- the one call ----------------------------------------------------------------------------------
def setup(app: Any = None, *, close_timeout: float = DEFAULT_CLOSE_TIMEOUT) -> None:
    """Connect fastpool to Celery's worker signals (idempotent; see the module docstring).

    ``app``: the Celery app, optional. Celery's worker signals are process-wide, so the handlers
    serve every app of the process whatever is passed; it is accepted so that the call reads
    ``setup(app)`` next to the app's definition.

    ``close_timeout``: seconds, in total for all pools of a process, that
    ``worker_shutdown``/``worker_process_shutdown`` give the pools to close (the last call wins).

    Raises ImportError with an install hint if Celery is not installed.
    """
    global _close_timeout, _setup_pid
    if isinstance(close_timeout, bool) or not isinstance(close_timeout, (int, float)) or close_timeout < 0:
        raise ValueError(f"close_timeout must be a number of seconds >= 0, not {close_timeout!r}")
    try:
        from celery import signals
    except ImportError as exc:
        raise ImportError(
            "fastpool.contrib.celery needs Celery: pip install 'fastpool[celery]'"
        ) from exc
    if app is not None and not hasattr(app, "tasks"):
        raise TypeError(f"app must be a celery.Celery application, not {type(app).__name__}")

    with _state_lock:
        _close_timeout = float(close_timeout)
        if _setup_pid is None:
            _setup_pid = os.getpid()

    # weak=False: the handlers are module functions, but be explicit that they must live on.
    signals.worker_process_init.connect(_on_worker_process_init, weak=False,
                                        dispatch_uid=_UID + "worker_process_init")
    signals.worker_process_shutdown.connect(_on_worker_process_shutdown, weak=False,
                                            dispatch_uid=_UID + "worker_process_shutdown")
    signals.worker_shutdown.connect(_on_worker_shutdown, weak=False,
                                    dispatch_uid=_UID + "worker_shutdown")
    if importlib.util.find_spec("django") is not None:
        signals.task_postrun.connect(_on_task_postrun, weak=False,
                                     dispatch_uid=_UID + "task_postrun")
