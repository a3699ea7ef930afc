"""``fastpool.Pool``: the policy around the core ring.

The core (``_core.py``, compiled or interpreted) owns slots, states, the free list, the
waiter queue and the clock, and implements ``getconn``/``putconn`` fast paths. This module owns
every decision: how to connect and when to retry, how long to wait, when a connection is too old
or too idle, how to reset one, what to log. The core calls back into it only on slow paths:

========================  ======================================================================
``_on_miss``              no idle connection: wait (thread or greenlet) for a handoff
``_healthy_for_handout``  a connection idle for a while: health check before hand-out
``_on_return``            a returned connection that is not clean, too old, or the pool shrank
``_retire``               close a connection and free its slot
``_grow``                 someone waits and size < max_size: make a connection in the background
``_on_checkout``          (only with ``leak_timeout``) remember who took the connection
``_on_reclaim``           a borrowed connection was garbage-collected: say so
========================  ======================================================================
"""

from __future__ import annotations

import collections
import functools
import inspect
import itertools
import logging
import math
import os
import random
import time
import traceback
import weakref
from time import monotonic
from typing import TYPE_CHECKING, Any, Callable, Dict, Generic, List, Optional, Tuple, Union

import psycopg2
import psycopg2.extensions
from psycopg2.extensions import get_wait_callback as _get_wait_callback

from . import _impl, _original, fork, green as _green, health, rejection, reset as _reset, timings
from ._states import CLOSED, CLOSED_POOL, ENQUEUED, FAILED, RETRY
from .conninfo import ConnInfo, Scrubber, conninfo_problem, describe
from .errors import ConnectionRejected, PoolClosed, PoolError, PoolMisuse, PoolTimeout, TooManyRequests
from . import tracking
from .options import (  # noqa: F401 - the size constants are also read as fastpool.pool.X
    DEFAULT_MAX_SIZE,
    DEFAULT_MIN_SIZE,
    MAX_DEFAULT,
    MAX_POOL_SIZE,
    MAX_WAITING_LIMIT,
    MIN_DEFAULT,
    check_options,
    check_sizes,
    positive_seconds,
)
from .green import _eventlet_wait_callback, _gevent_wait_callback
from .tracking import tracked_class
from .workers import Workers

if TYPE_CHECKING:
    from typing_extensions import Self, TypeVar

    # What the policy needs from the core, declared once: the core's stub (_core.pyi), which
    # stubtest checks against both cores (tests/test_typing.py). At run time the core is mixed
    # in per instance instead (see Pool.__new__).
    from ._core import Core as _DeclaredCore

    #: the connection type of a pool; psycopg2's connection unless told otherwise
    ConnT = TypeVar("ConnT", default=psycopg2.extensions.connection)
else:
    from typing import TypeVar

    _DeclaredCore = object
    ConnT = TypeVar("ConnT")

logger = logging.getLogger("fastpool")

#: ``max_lifetime`` is shortened by up to this fraction per connection so that connections made
#: together (prewarm, a burst) do not all expire in the same maintenance tick.
LIFETIME_JITTER = 0.05
#: reconnect backoff: first retry after INITIAL s, doubling up to MAX s, +-JITTER of randomness so
#: that many processes restarted together do not reconnect in lockstep. The cap keeps recovery
#: after a server restart within a couple of seconds while still bounding attempts to ~1/s.
BACKOFF_INITIAL = 0.1
BACKOFF_MAX = 2.0
BACKOFF_JITTER = 0.1
#: seconds between maintenance runs (expiry, max_idle, min_size refill, leak scan).
MAINTENANCE_INTERVAL = 1.0
#: seconds a waiter's check of a connection handed straight to it may take even when the
#: waiter's own deadline is closer (see _check_handoff).
HANDOFF_CHECK_MIN = 1.0
#: libpq connect_timeout (seconds) used when neither conninfo nor kwargs set one: a connect to a
#: black-holed host must not hold a worker forever.
DEFAULT_CONNECT_TIMEOUT = 10
#: connections made at once to serve waiters (prewarm and min_size refills are not limited).
#: Each one made re-checks whether waiters are still uncovered, so the pool grows with demand
#: that outlasts a connect, not with a momentary queue that returns serve in a few ms anyway;
#: waiters are still served by whichever comes first, a return or the new connection.
GROW_CONCURRENCY = 1
#: a single wait on a lock or a hub timer is at most this long; longer (even infinite) timeouts
#: wait in several steps (lock.acquire() rejects timeouts beyond threading.TIMEOUT_MAX).
WAIT_STEP = 3600.0



_counter = itertools.count(1)
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _call_weakly(ref: "weakref.ref[Any]", method: str, *args: Any) -> None:
    """A background task of a pool that may be gone: timers and workers hold the pool only
    weakly, so a pool dropped without close() is collected (its __del__ closes its connections
    and ends its threads) instead of living on through its own maintenance timer."""
    pool = ref()
    if pool is not None:
        getattr(pool, method)(*args)


class _ConnectionBlock(Generic[ConnT]):
    """``with pool.connection() as conn``: commit on success, rollback on error, always return.

    The borrow is *held* (see the core's ``_hold``): a ``pool.putconn(conn)`` inside the block
    raises ``PoolMisuse``, and the block's own return can never give back a later borrower's
    connection."""

    __slots__ = ("_pool", "_timeout", "_conn", "_token")

    def __init__(self, pool: "Pool[ConnT]", timeout: Optional[float]) -> None:
        self._pool = pool
        self._timeout = timeout
        self._conn: Any = None
        self._token = 0

    def __enter__(self) -> ConnT:
        conn = self._pool.getconn(self._timeout)
        try:
            self._token = self._pool._hold(conn)
        except BaseException:
            self._pool.putconn(conn)
            raise
        self._conn = conn
        return conn

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        conn, self._conn = self._conn, None
        token, self._token = self._token, 0
        try:
            if not getattr(conn, "closed", False):
                if exc_type is None:
                    conn.commit()  # psycopg2: no round trip when no transaction is open
                else:
                    try:
                        conn.rollback()
                    except Exception:
                        pass  # the original error matters more; putconn discards a broken conn
        finally:
            self._pool._putconn_held(conn, token)


class Pool(Generic[ConnT], _DeclaredCore):
    """A bounded pool of PostgreSQL connections (psycopg2 by default), safe across threads and
    greenlets::

        pool = fastpool.Pool("dbname=app", max_size=10)
        with pool.connection() as conn:   # committed on success, rolled back on error, returned
            ...
        conn = pool.getconn(timeout=None); ...; pool.putconn(conn)

    Generic over the connection type: ``Pool[MyConnection](dsn, kwargs={"connection_factory":
    MyConnection})``, or inferred from ``connect=`` (default: ``psycopg2.extensions.connection``).

    Options (keyword-only but ``conninfo``; durations in seconds; README "Options" has the long
    form, ``TypeError``/``ValueError`` naming the option if one is invalid):

    conninfo: libpq string or URL, or a callable returning one (called at every connect).
    connect: ``callable(conninfo, **kwargs)`` returning a connection (default psycopg2.connect).
    kwargs: extra connect arguments; ``connect_timeout=10`` is added if none is set.
    min_size, max_size: connections kept open / never exceeded (default 1 and 10); ``max_size=
        None`` means ``max_size = min_size``; ``min_size`` given alone is refused (ambiguous).
    timeout: default ``getconn()`` wait before ``PoolTimeout`` (``inf``: as long as it takes).
    max_waiting: callers allowed to wait at once (0: unbounded), beyond it ``TooManyRequests``.
    max_lifetime: replace a connection after this long (-5 % jitter each).
    max_idle: close idle connections above ``min_size`` after this long.
    reconnect_timeout, reconnect_failed: retry a failing server this long, then call
        ``reconnect_failed(pool)`` once.
    configure: ``callable(conn)`` run on every new connection.
    reset: on return: ``"auto"`` (undo what the borrower changed), ``"discard"`` (DISCARD ALL
        every time), ``"rollback"``, a ``callable(conn)``, or None.
    check: health check before every hand-out: ``"auto"``, ``"ping"``, a callable, or None.
    leak_timeout: warn with the taker's stack when a connection is held longer than this.
    green: gevent/eventlet cooperation, ``"auto"``, True or False.
    name: shows in logs, errors and repr. open: open now (else call ``open()``).
    lifo: hand out the most recently used idle connection (False: FIFO).

    ``getconn(timeout=None)`` and ``putconn(conn)`` are the core's own methods (C, or the
    pure-Python twin: ``FASTPOOL_IMPL``), bound directly for speed: ``Pool(...)`` returns an
    instance of a hidden subclass that mixes in the core (:func:`pool_class`); it is still a
    ``fastpool.Pool`` whichever core runs. This class holds the policy: every decision the core
    delegates (the hooks in the module docstring) and everything slow.
    """

    _Waiter: Any
    _Park: Any
    _core_impl: str
    # per-event timings for histogram exporters; set by fastpool.timings, None while nobody
    # listens (class defaults: a pool is reachable by timings.subscribe as soon as it is tracked)
    _timing_listeners: Tuple[Any, ...] = ()
    _created_hook: Optional[Callable[[float], None]] = None
    _waited_hook: Optional[Callable[[float], None]] = None

    if TYPE_CHECKING:
        # The core's methods, typed for this pool's connections (at run time they are the
        # core's, unwrapped: a Python method in between would double the cycle's cost).
        def getconn(self, timeout: Optional[float] = None) -> ConnT:
            """A connection: an idle one at once, else wait up to ``timeout`` (None: the
            pool's) for one; ``PoolTimeout``, ``TooManyRequests`` or ``PoolClosed`` if not."""

        def putconn(self, conn: ConnT) -> None:
            """Give back a connection from ``getconn``; ``PoolMisuse`` if it is not one."""

    def __new__(cls, *args: Any, **kwargs: Any) -> "Pool[ConnT]":
        # Pool(...) or a user's subclass of it: the same class with the selected core mixed in
        # (a class that has a core already, from pool_class() or _with_core(), keeps it).
        if getattr(cls, "_core_impl", None) is None:
            cls = _with_core(cls, _impl.impl)
        return super().__new__(cls)  # the core's __new__ (C: allocates the ring's struct)

    def __init__(
        self,
        conninfo: ConnInfo = "",
        *,
        connect: Optional[Callable[..., ConnT]] = None,
        kwargs: Optional[Dict[str, Any]] = None,
        min_size: int = MIN_DEFAULT,
        max_size: Optional[int] = MAX_DEFAULT,
        timeout: float = 30.0,
        max_waiting: int = 0,
        max_lifetime: float = 3600.0,
        max_idle: float = 600.0,
        reconnect_timeout: float = 300.0,
        reconnect_failed: Optional[Callable[["Pool[ConnT]"], None]] = None,
        configure: Optional[Callable[[ConnT], None]] = None,
        reset: Union[str, Callable[[ConnT], None], None] = "auto",
        check: Union[str, Callable[[ConnT], Any], None] = "auto",
        leak_timeout: Optional[float] = None,
        green: Union[str, bool] = "auto",
        name: Optional[str] = None,
        open: bool = True,
        lifo: bool = True,
    ) -> None:
        checked = check_options(
            conninfo, connect=connect, kwargs=kwargs, min_size=min_size, max_size=max_size,
            timeout=timeout, max_waiting=max_waiting, max_lifetime=max_lifetime, max_idle=max_idle,
            reconnect_timeout=reconnect_timeout, reconnect_failed=reconnect_failed,
            configure=configure, reset=reset, check=check, leak_timeout=leak_timeout, green=green,
            name=name,
        )
        # Nothing was touched before this line: an invalid option leaves no thread or slot.
        self._conninfo = conninfo
        self._connect_fn: Callable[..., Any] = connect or psycopg2.connect
        self._kwargs = self._connect_kwargs(conninfo, connect, kwargs, reset)
        self._min = checked.min_size
        self._timeout = checked.timeout
        self._max_waiting = max_waiting
        self._max_lifetime = float(max_lifetime)
        self._max_idle = float(max_idle)
        self._reconnect_timeout = float(reconnect_timeout)
        self._reconnect_failed = reconnect_failed
        self._configure = configure
        self._reset_mode = reset
        self._check_after_option = checked.check_after  # idle seconds before the health check
        self._health_check = checked.health_check
        self._check_name = repr(check) if isinstance(check, str) or check is None else "<callable>"
        self._leak_timeout = leak_timeout
        self._green = green
        self.name: str = name or f"pool-{next(_counter)}"
        self._scrubber = Scrubber()
        self._scrubber.learn(conninfo if isinstance(conninfo, str) else None, self._kwargs)
        self._init_bookkeeping()
        self._init_core(checked.max_size, lifo)
        self._start_background()
        if open:
            self.open()

    @staticmethod
    def _connect_kwargs(
        conninfo: ConnInfo, connect: Optional[Callable[..., Any]], kwargs: Optional[Dict[str, Any]],
        reset: Any,
    ) -> Dict[str, Any]:
        """What ``connect`` is called with besides the conninfo."""
        out = dict(kwargs or {})
        if connect is None:
            # Our own connections record what a borrower changed in one flag (see tracking.py);
            # with reset="auto" their cursors also flag session-changing statements.
            out["connection_factory"] = tracked_class(
                out.get("connection_factory") or psycopg2.extensions.connection,
                session=reset == "auto",
            )
        if (
            connect is None
            and "connect_timeout" not in out
            and not (isinstance(conninfo, str) and "connect_timeout" in conninfo)
        ):
            out["connect_timeout"] = DEFAULT_CONNECT_TIMEOUT
        return out

    def _init_bookkeeping(self) -> None:
        """The policy's own state: reset settings, counters, reconnect backoff, leak tracking."""
        self._defaults: Dict[str, Any] = {}
        self._reset_every_return = self._reset_mode == "discard" or callable(self._reset_mode)
        self._probes_set = False
        self._opened = False
        # guards the policy's own bookkeeping, never the fast path; a real OS lock, never held
        # across a greenlet switch. Not "_lock": the Python core had a lock of that name (now
        # _ring_lock), and one attribute for both made the policy's lock the core's (holding it
        # while calling into the core deadlocked): tests/test_pool_layers.py keeps names apart.
        self._policy_lock = _original.allocate_lock()
        # stats kept by the policy (the core counts the fast-path ones)
        self._requests_wait = 0.0
        self._requests_errors = 0
        self._requests_timeouts = 0
        self._connections_num = 0
        self._connections_time = 0.0
        self._connections_errors = 0
        # reconnect backoff state
        self._fail_since: Optional[float] = None
        self._give_up_at = math.inf
        # after reconnect_failed: no new attempts until a request needs a connection
        self._gave_up = False
        self._next_attempt = 0.0
        self._delay = 0.0
        self._probe_in_flight = False
        self._last_error: Optional[str] = None
        # "SQLSTATE: message" of the last attempt if the server refused it for good (see
        # rejection.py); cleared by the next connection made
        self._rejected: Optional[str] = None
        # (connection, hold token) given back by finalizers (see _return_later); not the core's
        # _dead, which are connections collected without being given back at all
        self._finalizer_returns: "collections.deque[Tuple[Any, int]]" = collections.deque()
        # leak tracking
        self._takers: Dict[int, Any] = {}
        self._warned: Dict[int, Any] = {}

    def _init_core(self, max_size: int, lifo: bool) -> None:
        """Size the core's ring and hand it the knobs known before any connection exists."""
        self._core_setup(max_size, lifo)
        self._core_set_grow_limit(GROW_CONCURRENCY)
        self._configure_core((), "closed")

    def _start_background(self) -> None:
        """Worker threads (which hold the pool weakly), fork and timing hooks."""
        self._weakself = weakref.ref(self)
        self._workers = Workers(self.name)  # connects (may block for connect_timeout), returns
        # Timers (watchdogs, maintenance) get a thread of their own that never connects, so a
        # few connects hanging on a dead host cannot delay a watchdog.
        self._timers = Workers(self.name + "-timers", nthreads=1)
        fork.track(self)
        timings.install(self)

    # -- lifecycle ------------------------------------------------------------------------------
    def open(self, wait: bool = False, timeout: float = 30.0) -> None:
        """Start the pool: prewarm ``min_size`` connections in the background."""
        with self._policy_lock:
            already = self._opened
            if already and self._core_closed():
                raise PoolClosed(f"pool {self.name!r} was closed and cannot be reopened")
            if not already:
                self._opened = True
                self._open_core()
        if not already:
            self._ensure_min()
            self._schedule_maintenance(MAINTENANCE_INTERVAL)
        if wait:
            # also when it was open already: wait=True promises min_size ready on return
            self.wait(timeout)

    def wait(self, timeout: float = 30.0) -> None:
        """Block until ``min_size`` connections are ready; PoolTimeout if not within ``timeout``."""
        positive_seconds("timeout", timeout, allow_inf=True)
        deadline = monotonic() + timeout
        pause = 0.001
        while True:
            if self._core_closed():
                raise PoolClosed(f"pool {self.name!r} is closed")
            c = self._counts()
            if c["size"] - c["connecting"] >= self._min:
                return
            if self._rejected is not None:
                raise self._rejection()
            left = deadline - monotonic()
            if left <= 0:
                raise PoolTimeout(
                    f"pool {self.name!r} not ready after {timeout:g} s: "
                    f"{c['size'] - c['connecting']}/{self._min} connections{self._last_error_text()}"
                )
            time.sleep(min(pause, left))
            pause = min(pause * 2, 0.05)

    def close(self, timeout: float = 5.0) -> None:
        """Close the pool: waiters get PoolClosed, idle connections close now, borrowed ones when
        returned; background threads are given ``timeout`` seconds to finish."""
        with self._policy_lock:
            self._opened = True  # a closed pool can never be opened
        if self._core_closed():
            return
        for w in self._close_core():
            w.wake()
        for slot, conn in self._take_all_idle():
            self._retire(slot, conn)
        deadline = monotonic() + timeout
        self._timers.stop(timeout)
        self._workers.stop(max(0.0, deadline - monotonic()))

    @property
    def closed(self) -> bool:
        return self._core_closed()

    def __enter__(self) -> Self:
        if not self._opened:
            self.open()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        # Dropped without close(): nobody can be waiting or hold a reference to us any more
        # (a waiter's frame would), so close the idle connections and end the threads now
        # instead of leaving server sessions and OS threads behind.
        try:
            if not self._opened or self._core_closed():
                return
            self._close_core()
            for slot, conn in self._take_all_idle():
                try:
                    conn.close()
                except Exception:
                    pass
                self._release(slot)
            self._workers.stop(0)
            self._timers.stop(0)
        except Exception:
            pass

    # -- background tasks hold the pool weakly (see _call_weakly) --------------------------------
    def _submit(self, method: str, *args: Any) -> None:
        self._workers.schedule_at(0.0, _call_weakly, self._weakself, method, *args)

    def _submit_at(self, when: float, method: str, *args: Any) -> None:
        self._workers.schedule_at(when, _call_weakly, self._weakself, method, *args)

    def _schedule_maintenance(self, delay: float) -> None:
        self._timers.schedule(delay, _call_weakly, self._weakself, "_maintain")

    def _after_fork_in_child(self) -> None:
        """In a forked child (see fork.py): forget and neutralise inherited connections, start
        over with fresh locks, threads and connections of our own."""
        inherited = self._reset_after_fork()
        for conn in inherited:
            fork.neutralise(conn)
        self._policy_lock = _original.allocate_lock()
        self._probe_in_flight = False
        self._takers.clear()
        self._warned.clear()
        self._workers.after_fork_in_child()
        self._timers.after_fork_in_child()
        if self._opened and not self._core_closed():
            self._ensure_min()
            self._schedule_maintenance(MAINTENANCE_INTERVAL)

    # -- borrowing ------------------------------------------------------------------------------
    def connection(self, timeout: Optional[float] = None) -> _ConnectionBlock[ConnT]:
        """Context manager: a connection, committed on success, rolled back on error, returned."""
        return _ConnectionBlock(self, timeout)

    def _on_miss(self, timeout: Optional[float], spent: float = 0.0) -> Any:
        """No idle connection could be handed out: queue and wait for a direct handoff, for what
        is left of the caller's timeout (``spent`` went on health checks already).

        One frame and one copy of the logic for every caller; only how the caller parks
        differs. A greenlet under a gevent or eventlet hub (nearly every checkout when greenlets
        outnumber connections) parks on the core's ``Park``: compiled, its stepped wait costs
        no interpreted frame. An OS thread first spins a little (``green.spin``), and a thread or
        a bare greenlet then blocks on what ``green.make_waiter`` gives, in steps. The promises:
        first come, first served; the caller's timeout, stepped if huge or infinite;
        ``max_waiting``; PoolClosed while waiting; a connection handed to a caller that is
        cancelled or killed goes back; the health check of a handed connection after
        ``check_after``; wait metrics and hooks; leak tracking."""
        if self._core_closed():
            raise PoolClosed(f"pool {self.name!r} is {'closed' if self._opened else 'not open yet'}")
        if self._dead:
            self._drain_dead()
        start = monotonic() - spent
        wait_for = self._timeout if timeout is None else timeout
        deadline = start + wait_for
        parking = _green.hub_parking()
        wait: Optional[Callable[[float], bool]] = None
        if parking is not None:
            callback = _get_wait_callback()
            if callback is not _gevent_wait_callback and callback is not _eventlet_wait_callback:
                _green.ensure_wait_callback(self._green)  # first wait after patching, or someone else's
            waiter = self._Park.waiter_for(parking)
        else:
            _green.ensure_wait_callback(self._green)
            conn = _green.spin(self._try_get, deadline, self._at_max)  # OS threads only
            if conn is not None:
                self._count_wait(monotonic() - start)
                return conn
            waiter, wait = _green.make_waiter(self._Waiter)
        while True:
            try:
                r = self._enqueue(waiter, self._max_waiting)
            except BaseException:
                # Interrupted while queueing: unregister, and pass on anything handed over.
                conn = self._claim(waiter)
                if conn is not None:
                    self.putconn(conn)
                raise
            if r != RETRY:
                break
            # Never queued: the same waiter serves the next attempt.
            conn = self._try_get(max(deadline - monotonic(), 1e-6))
            if conn is not None:  # a connection became free between the miss and the enqueue
                hook = self._waited_hook
                if hook is not None:
                    hook(monotonic() - start)
                return conn
        if r != ENQUEUED:
            raise self._not_queued(r)
        try:
            if wait is None:
                waiter.wake.wait_until(deadline, WAIT_STEP)
            else:
                while True:
                    # In steps: a huge or infinite timeout means "as long as it takes", and no
                    # lock takes an infinite timeout.
                    left = deadline - monotonic()
                    if wait(min(left, WAIT_STEP)) or left <= WAIT_STEP:
                        break
        except BaseException:
            # Cancelled (greenlet kill, KeyboardInterrupt, a timeout exception): a connection
            # handed over meanwhile must go back, not vanish with this caller.
            conn = self._claim(waiter)
            self._requests_wait += monotonic() - start
            if conn is not None:
                self.putconn(conn)
            raise
        conn = self._claim(waiter)
        if conn is None:
            self._requests_wait += monotonic() - start  # psycopg_pool's meaning: every wait counts
            raise self._no_handoff(waiter, wait_for)
        if self._health_check is not None and not self._check_handoff(conn, waiter.idle, deadline):
            # Discarded; a replacement is on its way (the discard freed a slot): wait again for
            # what is left of the caller's time.
            return self._on_miss(timeout, monotonic() - start)
        self._count_wait(monotonic() - start)
        if self._leak_timeout is not None:
            self._on_checkout(self._slot_for(conn))
        return conn

    def _not_queued(self, r: int) -> PoolError:
        """The error for an enqueue that was refused (``r``: CLOSED_POOL or FULL)."""
        if r == CLOSED_POOL:  # close() ran since the caller's check
            return PoolClosed(f"pool {self.name!r} is closed")
        self._requests_errors += 1
        return TooManyRequests(
            f"pool {self.name!r}: {self._max_waiting} requests already waiting (max_waiting)"
        )

    def _count_wait(self, waited: float) -> None:
        self._requests_wait += waited
        hook = self._waited_hook
        if hook is not None:
            hook(waited)

    def _no_handoff(self, waiter: Any, wait_for: float) -> PoolError:
        """The error for a waiter that got no connection: closed, refused, or timed out."""
        self._requests_errors += 1
        if waiter.state == CLOSED:
            return PoolClosed(f"pool {self.name!r} was closed while waiting for a connection")
        if waiter.state == FAILED:  # the attempt made for us was refused for good
            return self._rejection()
        self._requests_timeouts += 1
        c = self._counts()
        return PoolTimeout(
            f"couldn't get a connection after {wait_for:g} s (pool {self.name!r}: "
            f"size {c['size']}/{c['max']}, {c['idle']} idle, {c['waiting']} waiting)"
            f"{self._last_error_text()}"
        )

    def _at_max(self) -> bool:
        c = self._counts()
        return c["size"] >= c["max"]

    def _return_later(self, conn: Any, token: int = 0) -> None:
        """Return ``conn`` from a finalizer: it may run anywhere, even while this thread holds
        one of our locks, so take none: queue it (a deque append is atomic) and ask a worker to
        drain the queue if that can be done without blocking; otherwise the next tick does.
        ``token``: the wrapper's hold token (see ``_hold``), 0 for a bare borrow."""
        self._finalizer_returns.append((conn, token))
        self._workers.try_submit(_call_weakly, self._weakself, "_drain_finalizer_returns")

    def _drain_finalizer_returns(self) -> None:
        while self._finalizer_returns:
            try:
                conn, token = self._finalizer_returns.popleft()
            except IndexError:
                return
            try:
                if token:
                    self._putconn_held(conn, token)
                else:
                    self.putconn(conn)
            except PoolMisuse:
                pass  # already returned, or not ours any more: nothing to give back

    def _on_tick(self) -> None:
        """Every ~1000 checkouts (from the core): notice gevent/eventlet patching done after the
        pool was made, and reclaim dropped connections."""
        _green.ensure_wait_callback(self._green)
        if self._dead:
            self._drain_dead()
        if self._finalizer_returns:
            self._workers.try_submit(_call_weakly, self._weakself, "_drain_finalizer_returns")

    # -- health ----------------------------------------------------------------------------------
    def _healthy_for_handout(self, conn: Any, idle: float, remaining: float) -> bool:
        """The health check before a hand-out (the core calls it for idle connections,
        ``_check_handoff`` for direct handoffs). False: the caller discards the connection."""
        if self._health_check is None:
            return True
        ok = self._health_check(conn, idle, functools.partial(self._with_watchdog, limit=remaining))
        if not ok:
            logger.warning("pool %r: discarding a connection that failed its health check (check=%s)",
                           self.name, self._check_name)
        return ok

    def _check_handoff(self, conn: Any, idle: float, deadline: float) -> bool:
        """The same check for a connection handed straight to this waiter (``idle``: seconds
        since it last proved itself; -1 for a new one, already checked in ``_new_connection``).
        False: it failed, and was discarded."""
        if self._health_check is None or idle < 0 or idle < self._check_after_option:
            return True  # "auto": handed over straight from a return, it has just proved itself
        slot = self._slot_for(conn)
        # The waiter was served in time; its check may overrun the caller's deadline a little
        # rather than have a healthy connection discarded because the clock ran out.
        remaining = max(deadline - monotonic(), HANDOFF_CHECK_MIN)
        try:
            ok = self._healthy_for_handout(conn, idle, remaining)
        except BaseException:
            # Interrupted (greenlet kill, KeyboardInterrupt): never strand the slot.
            if self._unborrow(slot, conn):
                self._retire(slot, conn)
            raise
        if ok:
            return True
        self._count_lost()
        if self._unborrow(slot, conn):
            self._retire(slot, conn)
        return False

    def _check_new(self, conn: Any) -> None:
        """``check="ping"`` or a callable: a new connection is checked before anyone gets it. A
        failure counts as a failed connection attempt (logged, reconnect backoff, named in
        ``PoolTimeout``), so a check that always fails cannot churn connections. ``"auto"``
        does not check new ones: the handshake and ``configure`` were the round trip."""
        if self._health_check is None or self._check_after_option > 0:
            return
        if not self._health_check(conn, 0.0, self._with_watchdog):
            raise PoolError(f"a new connection failed its health check (check={self._check_name})")

    def _default_timeout(self) -> float:
        return self._timeout

    def _with_watchdog(self, fn: Callable[[Any], Any], conn: Any, limit: Optional[float] = None) -> Any:
        """``fn(conn)`` under a watchdog: a round trip to a frozen server cannot hang the caller
        beyond min(ROUND_TRIP_TIMEOUT, timeout, limit). False if the watchdog fired."""
        seconds = min(health.ROUND_TRIP_TIMEOUT, self._timeout, limit if limit is not None else math.inf)
        dog = health.Watchdog(self._timers, conn, seconds)
        try:
            result = fn(conn)
        finally:
            in_time = dog.finish()
        return result if in_time else False

    # -- return ---------------------------------------------------------------------------------
    def _on_return(self, slot: int, conn: Any) -> None:
        """Slow return path: the connection differs from a clean one, or must be retired."""
        if self._core_closed() or not self._slot_current(slot):
            self._retire(slot, conn)
            return
        why: Optional[str]
        try:
            why = self._with_watchdog(
                lambda c: _reset.reset_connection(
                    c, self._defaults, self._reset_mode, self.name, self._configure
                ),
                conn,
            )
            if why is False:  # the watchdog fired
                why = f"its reset took longer than {health.ROUND_TRIP_TIMEOUT:g} s"
        except Exception as exc:
            why = "its reset failed: " + self._scrubber.scrub(
                str(exc).strip() or type(exc).__name__
            )
        if why is not None:
            # psycopg_pool logs the connections it closes on return at WARNING too.
            logger.warning("pool %r: discarding a returned connection: %s", self.name, why)
            self._count_bad_return()
            self._retire(slot, conn)
        elif not self._restore(slot):
            self._retire(slot, conn)  # closed meanwhile

    def _retire(self, slot: int, conn: Any) -> None:
        """Close a connection the pool owns (RESERVED slot) and free the slot."""
        try:
            conn.close()
        except Exception:
            pass
        self._takers.pop(slot, None)
        self._release(slot)
        if not self._core_closed():
            self._ensure_min()

    # -- growing ----------------------------------------------------------------------------------
    def _grow(self, slot: int) -> None:
        self._submit("_connect_slot", slot)

    def _ensure_min(self) -> None:
        """Start connections until size reaches min_size (each fills a CONNECTING slot); not
        after reconnect_failed gave up, until a request needs a connection again."""
        while not self._gave_up:
            c = self._counts()
            if c["size"] >= self._min:
                return
            slot = self._reserve()
            if slot < 0:
                return
            self._grow(slot)

    def _still_wanted(self) -> bool:
        c = self._counts()
        # this slot is one of c["size"]; it is wanted if someone waits or min_size needs it
        return c["waiting"] > 0 or c["size"] <= self._min

    def _connect_slot(self, slot: int) -> None:
        """Background: fill one CONNECTING slot, honouring the pool-wide reconnect backoff."""
        if self._core_closed():
            self._fill_failed(slot)
            return
        if self._gave_up:
            # reconnect_timeout ran out and reconnect_failed fired: only a waiting request
            # starts a new round of attempts (as in psycopg_pool), nothing else retries.
            if self._counts()["waiting"] == 0:
                self._fill_failed(slot)
                return
            with self._policy_lock:
                self._gave_up = False
        now = monotonic()
        probing = False
        with self._policy_lock:
            if self._fail_since is not None:
                # During a failure streak only one attempt is in flight at a time and it waits
                # for the backoff: a dead server sees ~1 attempt per delay, not one per slot.
                if self._probe_in_flight or now < self._next_attempt:
                    # parked until the backoff allows; re-checked at most ~10 times a second
                    retry_at = max(self._next_attempt, now + 0.1)
                    self._submit_at(retry_at, "_connect_slot", slot)
                    return
                self._probe_in_flight = probing = True
        try:
            conn = self._new_connection()
        except BaseException as exc:
            # Any failure, even a BaseException from connect= or a conninfo callable
            # (CancelledError, KeyboardInterrupt, SystemExit raised by user code in this
            # worker): free or retry the slot, never leave it CONNECTING with a dead thread.
            self._connect_failed(slot, exc)
            return
        finally:
            if probing:
                with self._policy_lock:
                    self._probe_in_flight = False
        with self._policy_lock:
            self._fail_since = None
            self._give_up_at = math.inf
            self._gave_up = False
            self._delay = 0.0
            self._last_error = None
            self._rejected = None
        expiry = self._now() + self._max_lifetime * (1.0 - LIFETIME_JITTER * random.random())
        filled = self._fill(slot, conn, expiry)
        if not filled:
            try:
                conn.close()  # closed meanwhile, or drained while connecting
            except Exception:
                pass
            if filled is None:
                # drain() ran during the attempt: this connection may reach the old server.
                self._submit("_connect_slot", slot)

    def _connect_failed(self, slot: int, exc: BaseException) -> None:
        msg = self._scrubber.scrub(str(exc).strip() or type(exc).__name__)
        sqlstate = rejection.permanent_sqlstate(exc)
        now = monotonic()
        give_up = False
        with self._policy_lock:
            self._connections_errors += 1
            # One warning per distinct error of a failure streak, not one per retry.
            repeated = msg == self._last_error
            self._last_error = msg
            self._rejected = f"{sqlstate}: {msg}" if sqlstate else None
            gave_up_already = self._gave_up
            if gave_up_already:
                pass  # an attempt that was in flight when we gave up: no new streak
            elif self._fail_since is None:
                self._fail_since = now
                self._give_up_at = now + self._reconnect_timeout
            if not gave_up_already and now >= self._give_up_at:
                give_up = self._gave_up = True
                self._fail_since = None
                self._give_up_at = math.inf
                self._delay = 0.0
            elif not gave_up_already:
                self._delay = BACKOFF_INITIAL if not self._delay else min(self._delay * 2, BACKOFF_MAX)
                delay = self._delay * (1 + BACKOFF_JITTER * (2 * random.random() - 1))
                # The last attempt is made at the deadline itself, so reconnect_failed fires
                # on time rather than up to one backoff step late.
                self._next_attempt = min(now + delay, self._give_up_at)
        logger.log(logging.DEBUG if repeated else logging.WARNING,
                   "pool %r: connection attempt failed%s: %s", self.name,
                   " (will retry with backoff)" if sqlstate is None else
                   f" (SQLSTATE {sqlstate}: a configuration error)", msg)
        if sqlstate is not None and self._no_live_connection():
            # Retrying cannot help the callers waiting now: tell them at once. With a live
            # connection (say the password was rotated under a running pool) its return serves
            # them, so they keep waiting. The pool keeps its min_size attempts going with
            # backoff, so it recovers once the configuration is fixed.
            for w in self._fail_waiters():
                w.wake()
        if give_up or gave_up_already or self._core_closed() or not self._still_wanted():
            self._fill_failed(slot)
            if give_up:
                logger.error("pool %r: could not reconnect for %g s; giving up",
                             self.name, self._reconnect_timeout)
                if self._reconnect_failed is not None:
                    try:
                        self._reconnect_failed(self)
                    except Exception:
                        logger.exception("pool %r: reconnect_failed callback raised", self.name)
            return
        self._submit_at(self._next_attempt, "_connect_slot", slot)

    def _new_connection(self) -> Any:
        _green.ensure_wait_callback(self._green)
        with self._policy_lock:
            self._connections_num += 1  # attempts, failed ones included (psycopg_pool's meaning)
        conninfo = self._conninfo() if callable(self._conninfo) else self._conninfo
        if callable(self._conninfo):
            # Checked before libpq sees it: libpq's errors would quote pieces of a bad one.
            problem = conninfo_problem(conninfo) if isinstance(conninfo, str) else "not a str"
            if problem is not None:
                raise PoolError(f"the conninfo callable returned an invalid conninfo: {problem}")
            self._scrubber.learn(conninfo)
        t0 = monotonic()
        conn = self._connect_fn(conninfo, **self._kwargs)
        if conn is None or not callable(getattr(conn, "cursor", None)) or not callable(
            getattr(conn, "close", None)
        ):
            close = getattr(conn, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:
                    pass
            raise PoolError(
                f"connect returned {type(conn).__name__}, not a DB-API connection (with cursor() "
                f"and close()); connect must return a connection or raise"
            )
        try:
            if self._configure is not None:
                self._configure(conn)
            status = getattr(conn, "get_transaction_status", None)
            if status is not None and status() != _reset.IDLE:
                raise PoolError(
                    "configure() left the connection inside a transaction; commit or roll back in it"
                )
            # What configure() set is the baseline, not a borrower's change.
            if hasattr(conn, tracking.DIRTY):
                setattr(conn, tracking.DIRTY, tracking.CLEAN)
            _reset.clear_messages(conn)
            if not self._probes_set:
                self._adopt_defaults(conn)
            self._check_new(conn)
        except BaseException:
            try:
                conn.close()
            except Exception:
                pass
            raise
        took = monotonic() - t0
        with self._policy_lock:
            self._connections_time += took
        hook = self._created_hook
        if hook is not None:
            hook(took)
        return conn

    def _adopt_defaults(self, conn: Any) -> None:
        """The first connection tells what a clean connection looks like."""
        with self._policy_lock:
            if self._probes_set:
                return
            self._defaults = _reset.capture(conn)
            probes = _reset.probes_for(conn, self._defaults, self._reset_mode is not None)
            # reset="auto" on connections whose cursors cannot flag session changes (connect=
            # made them): every return resets, as with "discard".
            self._reset_every_return = self._reset_mode == "discard" or callable(self._reset_mode) or (
                self._reset_mode == "auto" and not tracking.tracks_session(conn)
            )
            self._configure_core(probes, "closed" if hasattr(conn, "closed") else None)
            self._core_set_type(type(conn))
            self._core_set_slot_attr(tracking.SLOT if tracking.is_tracked(conn) else None)
            self._probes_set = True

    def _configure_core(
        self, probes: Tuple[Tuple[str, Any, bool], ...], alive_attr: Optional[str]
    ) -> None:
        """Hand the core this pool's policy knobs (probes are known once a connection exists)."""
        self._core_configure(
            self._check_after_option,
            probes,
            alive_attr,
            self._reset_every_return,
            self._leak_timeout is not None,
        )

    def _no_live_connection(self) -> bool:
        c = self._counts()
        return c["size"] - c["connecting"] == 0

    def _rejection(self) -> ConnectionRejected:
        # read once: a connection made meanwhile clears it
        detail = self._rejected or f"?: {self._last_error}"
        return ConnectionRejected(
            f"pool {self.name!r}: the server refused the connection (SQLSTATE {detail}); "
            "a configuration error, not retried for this request"
        )

    def _last_error_text(self) -> str:
        err = self._last_error
        return f"; last connection error: {err}" if err else ""

    # -- maintenance -----------------------------------------------------------------------------
    def _maintain(self) -> None:
        if self._core_closed():
            return
        try:
            _green.ensure_wait_callback(self._green)
            if self._dead:
                self._drain_dead()
            if self._finalizer_returns:
                self._drain_finalizer_returns()
            now = self._now()
            for slot, conn in self._take_idle(now, now - self._max_idle, self._min):
                self._retire(slot, conn)
            self._ensure_min()
            if self._leak_timeout is not None:
                self._scan_leaks(now, self._leak_timeout)
        finally:
            self._schedule_maintenance(self._maintenance_interval())

    def _maintenance_interval(self) -> float:
        interval = MAINTENANCE_INTERVAL
        if self._leak_timeout is not None:
            interval = min(interval, max(0.05, self._leak_timeout / 2))
        return min(interval, max(0.05, self._max_idle / 2))

    def _on_checkout(self, slot: int) -> None:
        # Only with leak_timeout: the stack costs a few microseconds, so it is opt-in. fastpool's
        # own frames are dropped by file, not by count: the compiled core has no Python frame.
        stack = traceback.extract_stack()
        while stack and stack[-1].filename.startswith(_PACKAGE_DIR):
            stack.pop()
        self._takers[slot] = stack

    def _scan_leaks(self, now: float, leak_timeout: float) -> None:
        for slot in self._in_use_since(now - leak_timeout):
            stack = self._takers.get(slot)
            if stack is None or self._warned.get(slot) is stack:
                continue
            self._warned[slot] = stack
            logger.warning(
                "pool %r: a connection has been checked out for more than %g s (leak_timeout); "
                "taken at:\n%s", self.name, self._leak_timeout, "".join(traceback.format_list(stack)),
            )

    def _on_reclaim(self, slot: int) -> None:
        stack = self._takers.pop(slot, None)
        where = ("; taken at:\n" + "".join(traceback.format_list(stack))) if stack else ""
        logger.warning(
            "pool %r: a connection was garbage-collected without being returned; "
            "its slot was reclaimed%s", self.name, where,
        )
        if not self._core_closed():
            self._ensure_min()

    # -- administration --------------------------------------------------------------------------
    def resize(self, min_size: int, max_size: Optional[int] = None) -> None:
        """Change the bounds; ``max_size=None`` means ``max_size = min_size``, as in psycopg_pool.
        Shrinking closes excess idle connections now and borrowed ones as they come back;
        growing serves waiters at once."""
        if max_size is None:
            max_size = min_size
        check_sizes(min_size, max_size)
        self._min = min_size
        self._set_max(max_size)
        for slot, conn in self._take_idle(-math.inf, math.inf, max_size):
            self._retire(slot, conn)
        self._ensure_min()

    def check(self) -> None:
        """Ping every idle connection now; discard and replace the dead ones."""
        for slot, conn in self._take_all_idle():
            if self._with_watchdog(health.ping, conn):
                if not self._restore(slot):
                    self._retire(slot, conn)
            else:
                logger.warning("pool %r: discarding an idle connection that failed check()", self.name)
                self._count_lost()
                self._retire(slot, conn)
        self._ensure_min()

    def drain(self) -> None:
        """Replace every connection: idle ones now, borrowed ones when returned, those still
        connecting as soon as they connect (e.g. after a failover or a credential rotation)."""
        self._bump_generation()
        for slot, conn in self._take_all_idle():
            self._retire(slot, conn)
        self._ensure_min()

    # -- stats -------------------------------------------------------------------------------------
    def stats(self) -> Dict[str, int]:
        """Counters and gauges (names as in psycopg_pool)."""
        c = self._counts()
        return {
            "pool_min": self._min,
            "pool_max": c["max"],
            "pool_size": c["size"],
            "pool_available": c["idle"],
            # borrowed, or being reset or health-checked: neither idle nor still connecting
            "pool_used": c["size"] - c["idle"] - c["connecting"],
            "requests_waiting": c["waiting"],
            "requests_num": c["requests_num"],
            "requests_queued": c["requests_queued"],
            "requests_wait_ms": int(self._requests_wait * 1000),
            "requests_errors": self._requests_errors,
            "requests_timeouts": self._requests_timeouts,
            "returns_bad": c["returns_bad"],
            "connections_num": self._connections_num,
            "connections_ms": int(self._connections_time * 1000),
            "connections_errors": self._connections_errors,
            "connections_lost": c["connections_lost"],
            "connections_reclaimed": c["connections_reclaimed"],
            "usage_ms": c["usage_ms"],
        }

    def pop_stats(self) -> Dict[str, int]:
        """Like stats(), then reset the counters (gauges are not counters and stay)."""
        out = self.stats()
        self._reset_counters()
        with self._policy_lock:
            self._requests_wait = 0.0
            self._requests_errors = 0
            self._requests_timeouts = 0
            self._connections_num = 0
            self._connections_time = 0.0
            self._connections_errors = 0
        return out

    @property
    def min_size(self) -> int:
        return self._min

    @property
    def max_size(self) -> int:
        return self._counts()["max"]

    @property
    def timeout(self) -> float:
        return self._timeout

    @property
    def max_waiting(self) -> int:
        return self._max_waiting

    @property
    def max_lifetime(self) -> float:
        return self._max_lifetime

    @property
    def max_idle(self) -> float:
        return self._max_idle

    @property
    def reconnect_timeout(self) -> float:
        return self._reconnect_timeout

    def __repr__(self) -> str:
        c = self._counts()
        conninfo = describe(self._conninfo, self._kwargs)
        state = "not open" if not self._opened else ("closed" if self._core_closed() else "open")
        return (
            f"<fastpool.Pool {self.name!r} {state} conninfo={conninfo!r} size={c['size']}/{c['max']} "
            f"idle={c['idle']} waiting={c['waiting']} core={self._core_impl}>"
        )


# help() and inspect show __init__'s options, not __new__'s (*args, **kwargs).
Pool.__signature__ = inspect.signature(Pool.__init__).replace(  # type: ignore[attr-defined]
    parameters=list(inspect.signature(Pool.__init__).parameters.values())[1:]
)

# Pool (or a user's subclass of it) with a core mixed in, per (class, core): see Pool.__new__.
_with_core_cache: Dict[Tuple[type, str], type] = {}


def _with_core(cls: type, impl: str) -> type:
    """``cls`` with the core ``impl`` ("c" or "python") mixed in after it.

    The core's methods (``getconn``/``putconn``: C functions on the C core) are found on the
    instance's own class, not wrapped: a Python method in between costs more than the C
    core's whole cycle. The policy (``cls``) comes first in the MRO, so its hooks replace the
    core's defaults."""
    key = (cls, impl)
    made = _with_core_cache.get(key)
    if made is None:
        core = _impl.load(impl)
        made = type(
            cls.__name__,
            (cls, core.Core),
            {
                "__module__": cls.__module__,
                "__qualname__": cls.__qualname__,
                "__doc__": cls.__doc__,
                "misuse_error": PoolMisuse,
                "_Waiter": core.Waiter,
                "_Park": core.Park,
                "_core_impl": impl,
            },
        )
        _with_core_cache[key] = made
    return made


def pool_class(impl: str) -> "type[Pool[Any]]":
    """``fastpool.Pool`` on the core ``impl`` ("c" or "python") whatever ``FASTPOOL_IMPL`` says;
    tests run both. Its instances are ``fastpool.Pool`` instances."""
    return _with_core(Pool, impl)
