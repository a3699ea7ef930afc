"""Greenlets: how a caller waits, and how psycopg2 stops blocking the hub.

Waiting (decided at every wait, never at import, so a pool made before monkey-patching still
cooperates):

* a greenlet running under a gevent hub waits on a gevent semaphore, under an eventlet hub on
  an eventlet semaphore: the hub keeps running every other greenlet;
* a greenlet with no hub (plain ``greenlet`` code that switches by hand) yields to its parent and
  re-checks when switched back to, so it can never block the thread that must run the holder;
* anything else is an OS thread and blocks on a lock (gevent/eventlet-patched locks cooperate).

Nothing here is keyed by thread id: every greenlet of a thread shares it.

psycopg2 green I/O: psycopg2 blocks in libpq unless a wait callback is registered
(``psycopg2.extensions.set_wait_callback``). With ``green="auto"`` the pool registers its own
cooperative callback -- the first time it connects or waits after gevent or eventlet has patched
``socket`` -- unless one is already registered (psycogreen's, say). ``green=True`` registers it
whenever gevent or eventlet is imported; ``green=False`` never.
"""

from __future__ import annotations

import sys
from time import monotonic
from typing import Any, Callable, Optional, Tuple

import select

import psycopg2
from psycopg2 import extensions

from . import _original
from .waiting import Wait, thread_waiter
from .workers import WORKER_THREADS

#: seconds between re-checks for a waiter that cannot be woken directly (eventlet without
#: monkey-patching woken from a real thread): bounds the extra latency of that rare case.
CROSS_THREAD_POLL = 0.01


def _gevent_hub() -> Any:
    gevent = sys.modules.get("gevent")
    if gevent is None:
        return None
    try:
        from gevent._hub_local import get_hub_if_exists
    except ImportError:  # pragma: no cover - very old gevent
        return None
    return get_hub_if_exists()


def _eventlet_hub() -> Any:
    hubs = sys.modules.get("eventlet.hubs")
    if hubs is None:
        return None
    return getattr(hubs._threadlocal, "hub", None)


def hub_kind() -> Optional[str]:
    """"gevent", "eventlet", "greenlet" (a bare greenlet, no hub) or None (a plain thread)."""
    greenlet = sys.modules.get("greenlet")
    if greenlet is None:
        return None
    current = greenlet.getcurrent()
    hub = _gevent_hub()
    if hub is not None and current is not hub:
        return "gevent"
    hub = _eventlet_hub()
    if hub is not None and current is not getattr(hub, "greenlet", None):
        return "eventlet"
    if current.parent is not None:
        return "greenlet"
    return None


def make_waiter(waiter_cls: Any) -> Tuple[Any, Wait]:
    """A waiter for the current execution context (see the module docstring)."""
    kind = hub_kind()
    if kind == "gevent":
        return _gevent_waiter(waiter_cls)
    if kind == "eventlet":
        return _eventlet_waiter(waiter_cls)
    if kind == "greenlet":
        return _bare_greenlet_waiter(waiter_cls)
    return thread_waiter(waiter_cls)


def _gevent_waiter(waiter_cls: Any) -> Tuple[Any, Wait]:
    from gevent.lock import Semaphore

    sem = Semaphore(0)
    hub = _gevent_hub()

    def wake() -> None:
        if _gevent_hub() is hub:
            sem.release()
        else:
            # Woken from another OS thread (a native background worker): gevent objects are
            # not thread-safe, so let the waiter's own hub do the release.
            hub.loop.run_callback_threadsafe(sem.release)

    def wait(timeout: Optional[float]) -> bool:
        return sem.acquire(timeout=None if timeout is None else max(0.0, timeout))

    return waiter_cls(wake), wait


def _eventlet_waiter(waiter_cls: Any) -> Tuple[Any, Wait]:
    from eventlet import patcher
    from eventlet.semaphore import Semaphore

    get_ident = patcher.original("_thread").get_ident
    sem = Semaphore(0)
    owner = get_ident()
    w = waiter_cls(None)

    def wake() -> None:
        # eventlet has no thread-safe callback: from another OS thread, leave it to the
        # waiter's periodic re-check (the handoff is already recorded in w.state).
        if get_ident() == owner:
            sem.release()

    def wait(timeout: Optional[float]) -> bool:
        deadline = None if timeout is None else monotonic() + max(0.0, timeout)
        while True:
            left = CROSS_THREAD_POLL if deadline is None else min(CROSS_THREAD_POLL, deadline - monotonic())
            if left <= 0:
                return False
            if sem.acquire(timeout=left) or w.state != 0:  # 0 = WAITING
                return True

    w.wake = wake
    return w, wait


def _bare_greenlet_waiter(waiter_cls: Any) -> Tuple[Any, Wait]:
    import greenlet

    me = greenlet.getcurrent()
    w = waiter_cls(lambda: None)  # the handoff is recorded in w.state; nothing to wake

    def wait(timeout: Optional[float]) -> bool:
        deadline = None if timeout is None else monotonic() + max(0.0, timeout)
        while w.state == 0:  # WAITING
            if deadline is not None and monotonic() >= deadline:
                return False
            # No hub to run the holder: hand control to our parent, re-check when resumed.
            me.parent.switch()
        return True

    return w, wait


# -- psycopg2 wait callback ------------------------------------------------------------------------
def _patched(kind: str) -> bool:
    if kind == "gevent":
        monkey = sys.modules.get("gevent.monkey")
        return monkey is not None and monkey.is_module_patched("socket")
    patcher = sys.modules.get("eventlet.patcher")
    return patcher is not None and patcher.is_monkey_patched("socket")


def _native_wait(conn: Any) -> None:
    """Block this OS thread until libpq can proceed (a fastpool worker thread: no hub here)."""
    while True:
        state = conn.poll()
        if state == extensions.POLL_OK:
            return
        if state == extensions.POLL_READ:
            _wait_fd(conn.fileno(), select.POLLIN)
        elif state == extensions.POLL_WRITE:
            _wait_fd(conn.fileno(), select.POLLOUT)
        else:
            raise psycopg2.OperationalError(f"unexpected result from poll(): {state!r}")


def _wait_fd(fd: int, events: int) -> None:
    p = _original.poll()
    p.register(fd, events | select.POLLERR | select.POLLHUP)
    p.poll()


def _gevent_wait_callback(conn: Any) -> None:
    if _original.get_ident() in WORKER_THREADS:
        return _native_wait(conn)
    from gevent.socket import wait_read, wait_write

    while True:
        state = conn.poll()
        if state == extensions.POLL_OK:
            return
        if state == extensions.POLL_READ:
            wait_read(conn.fileno())
        elif state == extensions.POLL_WRITE:
            wait_write(conn.fileno())
        else:
            raise psycopg2.OperationalError(f"unexpected result from poll(): {state!r}")


def _eventlet_wait_callback(conn: Any) -> None:
    if _original.get_ident() in WORKER_THREADS:
        return _native_wait(conn)
    from eventlet.hubs import trampoline

    while True:
        state = conn.poll()
        if state == extensions.POLL_OK:
            return
        if state == extensions.POLL_READ:
            trampoline(conn.fileno(), read=True)
        elif state == extensions.POLL_WRITE:
            trampoline(conn.fileno(), write=True)
        else:
            raise psycopg2.OperationalError(f"unexpected result from poll(): {state!r}")


_CALLBACKS = {"gevent": _gevent_wait_callback, "eventlet": _eventlet_wait_callback}


def ensure_wait_callback(green: Any) -> Optional[str]:
    """Register fastpool's cooperative wait callback if ``green`` asks for it and none is set.
    Returns the hub it was registered for (or None)."""
    if green is False or extensions.get_wait_callback() is not None:
        return None
    for kind in ("gevent", "eventlet"):
        if kind not in sys.modules:
            continue
        if green is True or _patched(kind):
            extensions.set_wait_callback(_CALLBACKS[kind])
            return kind
    return None


def is_fastpool_callback(cb: Optional[Callable[..., Any]]) -> bool:
    return cb in _CALLBACKS.values()
