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

import collections
import os
import select

import psycopg2
from psycopg2 import extensions

from . import _original
from .waiting import Wait, thread_waiter
from .workers import WORKER_THREADS


_get_gevent_hub: Optional[Callable[[], Any]] = None


def _gevent_hub() -> Any:
    """This OS thread's gevent hub, or None (never creates one)."""
    global _get_gevent_hub
    if _get_gevent_hub is None:
        if "gevent" not in sys.modules:
            return None
        try:
            from gevent._hub_local import get_hub_if_exists
        except ImportError:  # pragma: no cover - very old gevent
            return None
        _get_gevent_hub = get_hub_if_exists
    return _get_gevent_hub()


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


_TIMED_OUT = object()


def _gevent_waiter(waiter_cls: Any) -> Tuple[Any, Wait]:
    # gevent's low-level hub Waiter and a raw loop timer: the cheapest way to park a greenlet
    # (a Semaphore plus a Timeout object per wait cost several times more, and with 1000
    # greenlets sharing 10 connections that CPU is taken from the queries).
    from gevent.hub import Waiter as HubWaiter

    hub = _gevent_hub()
    parked = HubWaiter(hub)
    owner = _original.get_ident()
    loop = hub.loop

    def wake() -> None:
        if _original.get_ident() == owner:
            loop.run_callback(parked.switch, None)
        else:
            # From another OS thread (a fastpool worker): gevent objects are not thread-safe,
            # so let the waiter's own hub make the switch.
            loop.run_callback_threadsafe(parked.switch, None)

    def wait(timeout: Optional[float]) -> bool:
        timer = None
        if timeout is not None:
            timer = loop.timer(max(0.0, timeout))
            timer.start(parked.switch, _TIMED_OUT)
        try:
            return parked.get() is not _TIMED_OUT
        finally:
            if timer is not None:
                timer.close()

    return waiter_cls(wake), wait


class _EventletDoorbell:
    """Wakes greenthreads of one eventlet hub from other OS threads: eventlet has no thread-safe
    call, so the ringing thread queues the call and writes a byte to a pipe that a greenthread
    of the hub reads (one pipe per hub, not per waiter)."""

    def __init__(self) -> None:
        import eventlet

        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self._pending: "collections.deque[Callable[[], Any]]" = collections.deque()
        eventlet.spawn_n(self._serve)

    def _serve(self) -> None:
        from eventlet.hubs import trampoline

        while True:
            trampoline(self._r, read=True)
            try:
                os.read(self._r, 4096)
            except BlockingIOError:
                pass
            while self._pending:
                self._pending.popleft()()

    def ring(self, fn: Callable[[], Any]) -> None:
        self._pending.append(fn)  # deque.append is atomic: safe from any thread
        try:
            os.write(self._w, b"x")
        except BlockingIOError:
            pass  # the pipe is full: the reader is already due to run


def _eventlet_waiter(waiter_cls: Any) -> Tuple[Any, Wait]:
    # The hub's own switch and timers (what eventlet's Event does), not a Semaphore plus a
    # Timeout object per wait: with 1000 greenthreads that CPU is taken from the queries.
    import greenlet

    hub = _eventlet_hub()
    doorbell = getattr(hub, "_fastpool_doorbell", None)
    if doorbell is None:
        doorbell = hub._fastpool_doorbell = _EventletDoorbell()
    me = greenlet.getcurrent()
    owner = _original.get_ident()
    parked = [False]  # True only while this greenthread sits in wait()'s hub.switch()

    def resume(value: Any) -> None:
        # Runs in the hub: switch in only if still parked here (a wake after a timeout, or a
        # timeout after a wake, must not jump into unrelated code).
        if parked[0]:
            parked[0] = False
            me.switch(value)

    def wake() -> None:
        if _original.get_ident() == owner:
            hub.schedule_call_global(0, resume, None)
        else:
            doorbell.ring(lambda: hub.schedule_call_global(0, resume, None))

    def wait(timeout: Optional[float]) -> bool:
        timer = None
        if timeout is not None:
            timer = hub.schedule_call_global(max(0.0, timeout), resume, _TIMED_OUT)
        parked[0] = True
        try:
            return hub.switch() is not _TIMED_OUT
        finally:
            parked[0] = False
            if timer is not None:
                timer.cancel()

    return waiter_cls(wake), wait


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


def _drive(conn: Any, wait_read: Callable[[int], Any], wait_write: Callable[[int], Any]) -> None:
    """psycopg2's wait-callback protocol: poll() until OK, waiting on the socket as told."""
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


def _native_wait_fd(events: int) -> Callable[[int], None]:
    # A fastpool worker thread has no hub: block it on the real poll().
    def wait(fd: int) -> None:
        p = _original.poll()
        p.register(fd, events | select.POLLERR | select.POLLHUP)
        p.poll()

    return wait


_native_read, _native_write = _native_wait_fd(select.POLLIN), _native_wait_fd(select.POLLOUT)


def _gevent_wait_callback(conn: Any) -> None:
    if _original.get_ident() in WORKER_THREADS:
        return _drive(conn, _native_read, _native_write)
    from gevent.socket import wait_read, wait_write

    _drive(conn, wait_read, wait_write)


def _eventlet_wait_callback(conn: Any) -> None:
    if _original.get_ident() in WORKER_THREADS:
        return _drive(conn, _native_read, _native_write)
    from eventlet.hubs import trampoline

    _drive(conn, lambda fd: trampoline(fd, read=True), lambda fd: trampoline(fd, write=True))


_CALLBACKS = {"gevent": _gevent_wait_callback, "eventlet": _eventlet_wait_callback}


class _WorkerSafe:
    """Wraps a wait callback registered by someone else (psycogreen's, eventlet's): fastpool's
    own worker threads wait natively (a hub created in a second OS thread of a patched process
    can deadlock on the import locks), every other caller gets the original callback."""

    __slots__ = ("inner",)

    def __init__(self, inner: Callable[[Any], Any]) -> None:
        self.inner = inner

    def __call__(self, conn: Any) -> Any:
        if _original.get_ident() in WORKER_THREADS:
            return _drive(conn, _native_read, _native_write)
        return self.inner(conn)


def ensure_wait_callback(green: Any) -> Optional[str]:
    """Register fastpool's cooperative wait callback if ``green`` asks for it and none is set.
    Returns the hub it was registered for (or None). A callback registered by someone else is
    kept, wrapped so that fastpool's worker threads never go through it (whatever ``green``)."""
    current = extensions.get_wait_callback()
    if current is not None:
        if current not in _CALLBACKS.values() and not isinstance(current, _WorkerSafe):
            extensions.set_wait_callback(_WorkerSafe(current))
        return None
    if green is False:
        return None
    for kind in ("gevent", "eventlet"):
        if kind not in sys.modules:
            continue
        if green is True or _patched(kind):
            extensions.set_wait_callback(_CALLBACKS[kind])
            return kind
    return None


def is_fastpool_callback(cb: Optional[Callable[..., Any]]) -> bool:
    return cb in _CALLBACKS.values() or isinstance(cb, _WorkerSafe)
