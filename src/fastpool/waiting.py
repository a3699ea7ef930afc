"""How a plain OS thread blocks while the pool is exhausted: on a lock of its own, released by
whoever hands it a connection.

:mod:`fastpool.green` picks the waiter at every wait (never at import) and uses this one for a
thread with no greenlet hub. The lock is taken from ``_thread`` as it is at that moment, on
purpose: a caller's wait is the one place fastpool blocks cooperatively, so in a process that
gevent or eventlet patched it is their lock, which waits through the thread's hub (its other
greenlets keep running) instead of blocking the thread (the threading rule: :mod:`fastpool._original`).
"""

from __future__ import annotations

import _thread
from typing import Any, Callable, Optional, Tuple

Wait = Callable[[Optional[float]], bool]


def thread_waiter(waiter_cls: Any) -> Tuple[Any, Wait]:
    """A waiter (of the core's ``Waiter`` class) woken by releasing a lock its thread blocks on."""
    lock = _thread.allocate_lock()
    lock.acquire()

    def wait(timeout: Optional[float]) -> bool:
        if timeout is None:
            return lock.acquire()
        return lock.acquire(True, max(0.0, timeout))

    return waiter_cls(lock.release), wait

