"""Greenlets: how a caller waits, and how psycopg2 stops blocking the hub.

Waiting (decided at every wait, never at import, so a pool made before monkey-patching still
cooperates):

* a greenlet running under a gevent hub parks on a gevent hub ``Waiter``, under an eventlet hub
  on the hub's own switch: the hub keeps running every other greenlet. The machinery is made
  once per hub (``_GeventParking`` / ``_EventletParking``), and all the timed waits of a hub
  share one hub timer (``_Deadlines``) instead of arming one each;
* a greenlet with no hub (plain ``greenlet`` code that switches by hand) yields to its parent and
  re-checks when switched back to, so it can never block the thread that must run the holder;
* anything else is an OS thread: at ``max_size`` it first yields the GIL a few times and retries
  (``spin``, against lock convoys), then blocks on a lock (gevent/eventlet-patched locks
  cooperate).

Nothing here is keyed by thread id: every greenlet of a thread shares it.

psycopg2 green I/O: psycopg2 blocks in libpq unless a wait callback is registered
(``psycopg2.extensions.set_wait_callback``). With ``green="auto"`` the pool registers its own
cooperative callback -- the first time it connects or waits after gevent or eventlet has patched
``socket`` -- unless one is already registered (psycogreen's, say, is kept; the one
``eventlet.monkey_patch()`` registers by itself is replaced by fastpool's equivalent one).
``green=True`` registers it whenever gevent or eventlet is imported; ``green=False`` never.
"""

from __future__ import annotations

import sys
import time
from time import monotonic
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Tuple

import collections
import functools
import os
import select
import weakref

import psycopg2
from psycopg2 import extensions

from . import _original
from .waiting import Wait, thread_waiter
from .workers import WORKER_THREADS


_get_gevent_hub: Optional[Callable[[], Any]] = None
# eventlet.hubs' per-thread holder of the hub, known once a hub parked a greenlet (hub_parking)
_eventlet_local: Any = None
_getcurrent: Optional[Callable[[], Any]] = None
# The real thread id, looked up once: under gevent every lookup through _original costs a dict
# probe, and the hot paths below ask on every wait and every query.
_get_ident: Callable[[], int] = _original._original("get_ident")


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


def _current_greenlet() -> Any:
    """The running greenlet, or None if the greenlet module was never imported."""
    global _getcurrent
    if _getcurrent is None:
        greenlet = sys.modules.get("greenlet")
        if greenlet is None:
            return None
        _getcurrent = greenlet.getcurrent
    return _getcurrent()


def hub_kind() -> Optional[str]:
    """"gevent", "eventlet", "greenlet" (a bare greenlet, no hub) or None (a plain thread)."""
    current = _current_greenlet()
    if current is None:
        return None
    hub = _gevent_hub()
    if hub is not None and current is not hub:
        return "gevent"
    hub = _eventlet_hub()
    if hub is not None and current is not getattr(hub, "greenlet", None):
        return "eventlet"
    if current.parent is not None:
        return "greenlet"
    return None


def hub_parking() -> Optional["_Deadlines"]:
    """The parking of the hub the running greenlet waits in (gevent or eventlet), or None: an
    OS thread, a bare greenlet, or a hub's own greenlet (they wait as ``make_waiter`` says).
    The pool parks a greenlet on it with its core's ``Park`` (see ``Pool._on_miss``)."""
    global _eventlet_local
    if _getcurrent is not None and _get_gevent_hub is not None:
        # The gevent case first, inlined: it runs for every wait of a greenlet.
        hub = _get_gevent_hub()
        if hub is not None and _getcurrent() is not hub:
            try:
                parking: Optional[_Deadlines] = hub._fastpool_parking
            except AttributeError:  # the hub's first wait
                return _gevent_parking(hub)
            return parking
    if _eventlet_local is not None:
        # The eventlet case, inlined too, once this thread's hub has its parking.
        hub = getattr(_eventlet_local, "hub", None)
        if hub is not None:
            parking = hub.__dict__.get("_fastpool_parking")
            if parking is not None and _getcurrent() is not hub.greenlet:  # type: ignore[misc]
                return parking
    current = _current_greenlet()
    if current is None:
        return None
    hub = _gevent_hub()
    if hub is not None and current is not hub:
        return _gevent_parking(hub)
    hub = _eventlet_hub()
    if hub is not None and current is not getattr(hub, "greenlet", None):
        parking = getattr(hub, "_fastpool_parking", None)
        if parking is None:
            parking = hub._fastpool_parking = _EventletParking(hub)
            _eventlet_local = sys.modules["eventlet.hubs"]._threadlocal
        return parking
    return None


def make_waiter(waiter_cls: Any) -> Tuple[Any, Wait]:
    """A waiter for a caller that ``hub_parking`` found no hub for (see the module docstring)."""
    current = _current_greenlet()
    if current is not None and current.parent is not None:
        return _bare_greenlet_waiter(waiter_cls)
    return thread_waiter(waiter_cls)


#: An OS thread that finds no idle connection first gives up the GIL this many times, retrying
#: after each, before it queues (see spin). Bounded: a few time slices at most.
SPIN_YIELDS = 4


def spin(try_get: Callable[[float], Any], deadline: float, at_max: Callable[[], bool]) -> Any:
    """An OS thread's short detour before it queues: yield the GIL and retry, a few times.

    Why: with more threads than connections, the holders are usually runnable threads waiting
    for the GIL, not for the database. A thread that queues at once blocks on a lock; the next
    return hands the connection to it (first come, first served) and the returning thread, now
    without one, queues in turn: every checkout then costs two OS thread switches (a lock
    convoy). Yielding instead lets the holders run on and return their connections to the
    free list, where the yielding thread finds one. Greenlets never spin (in a hub it would only
    barge ahead of the queue), nor does a thread while the pool can still grow (``at_max()``
    False: queueing starts a connection at once) or once its deadline has passed; after
    ``SPIN_YIELDS`` tries the thread queues and is served in order from then on.
    """
    current = _current_greenlet()
    if current is not None and (current.parent is not None or hub_kind() is not None):
        return None  # a greenlet (a hub's, or a bare one with a parent to yield to)
    if not at_max():
        return None
    for _ in range(SPIN_YIELDS):
        _sched_yield()  # releases the GIL
        left = deadline - monotonic()
        if left <= 0:
            return None
        conn = try_get(left)
        if conn is not None:
            return conn
    return None


# os.sched_yield releases the GIL around the syscall (and gevent never patches it).
_sched_yield: Callable[[], None] = getattr(os, "sched_yield", None) or (lambda: time.sleep(0))


def _core_deadlines() -> Any:
    """The parkings' base: the compiled core's ``Deadlines`` where it loads (its ``Park`` takes
    no other), else the interpreted one (the interpreted ``Park`` takes either)."""
    from . import _core

    base = getattr(_core, "Deadlines", None)
    if base is None:  # a compiled core built from an older source: not used by any pool anyway
        from . import _core_py

        base = getattr(_core_py, "Deadlines")  # (defined by the source it executes)
    return base


#: One hub timer for all the pool waits of one hub, and the hub primitives of a wait: the core's
#: ``Deadlines`` (``fastpool._core``; see there), subclassed per hub kind below.
if TYPE_CHECKING:
    from ._core import Deadlines as _Deadlines
else:
    _Deadlines = _core_deadlines()
_COMPACT_MIN: int = sys.modules[_Deadlines.__module__]._COMPACT_MIN


def _gevent_parking(hub: Any) -> "_GeventParking":
    """The hub's ``_GeventParking``, made at its first use."""
    parking: Optional[_GeventParking] = hub.__dict__.get("_fastpool_parking")
    if parking is None:
        parking = hub._fastpool_parking = _GeventParking(hub)
    return parking


class _GeventParking(_Deadlines):
    """Per-hub gevent machinery, made once per hub (see _Deadlines)."""

    __slots__ = ("_hub", "_loop", "io")

    def __init__(self, hub: Any) -> None:
        super().__init__()
        self._hub = hub
        self._loop = hub.loop
        self.call_soon = self._loop.run_callback
        self.call_soon_threadsafe = self._loop.run_callback_threadsafe
        #: park the current greenlet; returns the value it is switched back in with
        self.switch = hub.switch
        # fd -> (weak ref to the connection, read watcher, write watcher) for the psycopg2 wait
        # callback: made once per connection instead of once per round trip (what
        # gevent.socket.wait_read does). Never reused for another connection that gets the same
        # fd number: libev registers an fd with the kernel only when a watcher is new or its
        # events change, so a restarted watcher of a closed socket would wait on the new socket
        # without the kernel ever reporting it (a query that never wakes: tests/test_green.py
        # ::test_gevent_reused_fd_does_not_hang). gevent's own sockets make new watchers too.
        self.io: Dict[int, Tuple[Any, Any, Any]] = {}

    def watchers(self, fd: int, conn: Any) -> Tuple[Any, Any, Any]:
        loop = self._loop
        try:
            ref = weakref.ref(conn)
        except TypeError:  # not weak-referenceable: fresh watchers for this wait, not cached
            return (None, loop.io(fd, 1), loop.io(fd, 2))
        w = self.io[fd] = (ref, loop.io(fd, 1), loop.io(fd, 2))
        return w

    def _arm(self, delay: float) -> None:
        self._loop.timer(delay).start(self._fire)

    def timer(self, delay: float, park: Any) -> Any:
        timer = self._loop.timer(delay)
        timer.start(park.resume, False)
        return timer

    def cancel(self, timer: Any) -> None:
        timer.close()


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


class _EventletParking(_Deadlines):
    """Per-hub eventlet machinery: the hub's own switch and timers (what eventlet's Event does),
    not a Semaphore plus a Timeout object per wait (see _Deadlines)."""

    __slots__ = ("_hub", "_doorbell")

    def __init__(self, hub: Any) -> None:
        super().__init__()
        self._hub = hub
        self.switch = hub.switch
        # call_soon(fn, arg) is schedule_call_global(0, fn, arg): a partial, no frame per wake
        self.call_soon = functools.partial(hub.schedule_call_global, 0)
        self.call_soon_threadsafe = self._call_soon_threadsafe
        # Made here, in the hub's thread (it spawns its reader greenthread), before any other
        # thread could need it.
        self._doorbell = _EventletDoorbell()

    def _call_soon_threadsafe(self, fn: Callable[[Any], Any], arg: Any) -> None:
        self._doorbell.ring(lambda: self._hub.schedule_call_global(0, fn, arg))

    def _arm(self, delay: float) -> None:
        self._hub.schedule_call_global(delay, self._fire)

    def timer(self, delay: float, park: Any) -> Any:
        return self._hub.schedule_call_global(delay, park.resume, False)

    def cancel(self, timer: Any) -> None:
        timer.cancel()


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


_gevent_io: Optional[Tuple[Callable[[int], Any], Callable[[int], Any]]] = None
_POLL_OK, _POLL_READ, _POLL_WRITE = extensions.POLL_OK, extensions.POLL_READ, extensions.POLL_WRITE


def _gevent_wait_callback(conn: Any) -> None:
    # Runs on every round trip of every query: nothing here may cost more than it must (the
    # gevent functions are looked up once, not imported per call).
    global _gevent_io
    if _get_ident() in WORKER_THREADS:
        return _drive(conn, _native_read, _native_write)
    hub = _get_gevent_hub() if _get_gevent_hub is not None else _gevent_hub()
    if hub is None or _current_greenlet() is hub:
        # No hub in this thread yet, or called from the hub itself: gevent's own functions.
        if _gevent_io is None:
            from gevent.socket import wait_read, wait_write

            _gevent_io = (wait_read, wait_write)
        return _drive(conn, *_gevent_io)
    try:
        parking = hub._fastpool_parking
    except AttributeError:  # the hub's first wait
        parking = _gevent_parking(hub)
    fd = conn.fileno()
    watchers = parking.io.get(fd)
    if watchers is None or watchers[0]() is not conn:  # first wait of this connection
        watchers = parking.watchers(fd, conn)
    wait = hub.wait  # start the watcher, switch to the hub, stop the watcher (even if killed)
    while True:
        state = conn.poll()
        if state == _POLL_OK:
            return
        if state == _POLL_READ:
            wait(watchers[1])
        elif state == _POLL_WRITE:
            wait(watchers[2])
        else:
            raise psycopg2.OperationalError(f"unexpected result from poll(): {state!r}")


def _eventlet_read(fd: int) -> None:
    _trampoline(fd, read=True)


def _eventlet_write(fd: int) -> None:
    _trampoline(fd, write=True)


_trampoline: Any = None


def _eventlet_wait_callback(conn: Any) -> None:
    global _trampoline
    if _get_ident() in WORKER_THREADS:
        return _drive(conn, _native_read, _native_write)
    if _trampoline is None:
        from eventlet.hubs import trampoline

        _trampoline = trampoline
    _drive(conn, _eventlet_read, _eventlet_write)


_CALLBACKS = {"gevent": _gevent_wait_callback, "eventlet": _eventlet_wait_callback}


class _WorkerSafe:
    """Wraps a wait callback registered by someone else (psycogreen's, eventlet's): fastpool's
    own worker threads wait natively (a hub created in a second OS thread of a patched process
    can deadlock on the import locks), every other caller gets the original callback."""

    __slots__ = ("inner",)

    def __init__(self, inner: Callable[[Any], Any]) -> None:
        self.inner = inner

    def __call__(self, conn: Any) -> Any:
        if _get_ident() in WORKER_THREADS:
            return _drive(conn, _native_read, _native_write)
        return self.inner(conn)


def ensure_wait_callback(green: Any) -> Optional[str]:
    """Register fastpool's cooperative wait callback if ``green`` asks for it and none is set.
    Returns the hub it was registered for (or None). A callback registered by someone else is
    kept, wrapped so that fastpool's worker threads never go through it (whatever ``green``)."""
    current = extensions.get_wait_callback()
    if current is _gevent_wait_callback or current is _eventlet_wait_callback or (
        current.__class__ is _WorkerSafe
    ):
        return None  # the common case, on every wait: already settled
    if current is not None:
        if green is not False and _is_eventlets_own(current):
            # eventlet.monkey_patch() registers this one by itself (nobody chose it): fastpool's
            # does the same trampolining, and waits natively in worker threads without a
            # wrapper around every round trip.
            extensions.set_wait_callback(_eventlet_wait_callback)
            return "eventlet"
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


def _is_eventlets_own(cb: Any) -> bool:
    return (getattr(cb, "__module__", None) == "eventlet.support.psycopg2_patcher"
            and getattr(cb, "__name__", None) == "eventlet_wait_callback")


def is_fastpool_callback(cb: Optional[Callable[..., Any]]) -> bool:
    return cb in _CALLBACKS.values() or isinstance(cb, _WorkerSafe)
