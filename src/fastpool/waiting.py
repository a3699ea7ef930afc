"""How a caller blocks while the pool is exhausted.

The waiter is chosen at wait time, not import time: an OS thread blocks on a lock. (Greenlet
hubs are handled by :mod:`fastpool.green` once it exists; a gevent-patched ``_thread`` lock already
cooperates with the hub.)
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


make_waiter = thread_waiter
