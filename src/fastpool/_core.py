"""The ring: slots, states, free list, handoff queue, clock and counters. No policy, no PostgreSQL.

One source, two cores. Cython compiles this file (pure-Python mode, C types from ``_core.pxd``)
into the extension ``fastpool._core``; the interpreter runs the same file as ``fastpool._core_py``
(see ``_core_py.py``), and as ``fastpool._core`` where no compiler built the extension. What
differs between the two is switched on ``cython.compiled``, right below the imports.

The mechanism
-------------
The ring holds ``capacity`` slots. Each slot has an explicit state (numbers in ``_states.py``):

=========== ==================================================================
EMPTY       no connection; free capacity
CONNECTING  reserved for a connection the policy layer is creating
IDLE        holds a connection that sits on the free list
IN_USE      its connection is held by a borrower (the ring keeps only a weak
            reference, so a borrower that drops it lets the slot be reclaimed)
RESERVED    held by the policy layer: being reset, vetted or closed
=========== ==================================================================

Invariants (checked by ``_check_invariants`` in the tests):

* ``size`` == number of slots not EMPTY, and a slot is only ever taken out of
  EMPTY while ``size < max_size``: the pool never exceeds ``max_size``.
* Every IDLE slot is on the free list exactly once; no other slot is on it.
* ``nwaiting`` == number of waiters in state WAITING.

The free list is a ring buffer of slot numbers: LIFO pops the newest (hot
connections stay hot and idle ones age out), FIFO the oldest. Waiters form a
FIFO queue; a returned connection is *handed directly* to the first live waiter
(no thundering herd, no barging). A waiter finishes exactly once through
``_claim``: it either takes the connection it was handed or is marked
cancelled, so a waiter that timed out can never swallow a connection.

Misuse fails loudly: returning a connection that is not from this pool, or one
already returned, raises ``self.misuse_error`` and changes nothing.

Held borrows. A bare ``putconn(conn)`` names only the connection object, so a
stale second ``putconn`` by A after B borrowed the same connection looks exactly
like B's own. A wrapper that owns one borrow (``with pool.connection()``, a
DB-API connection, a Django connection) therefore *holds* it: ``_hold(conn)``
records a fresh token in the slot's ``holder`` and ``_putconn_held(conn, token)``
is the only way to return it. While a slot is held, a bare ``putconn`` raises,
and a token from an earlier borrow never matches a later one. The fast path pays
one integer compare in ``putconn``; ``getconn`` is unchanged.
"""

from __future__ import annotations

import math
import weakref
from collections import deque
from itertools import compress
from time import monotonic as _monotonic
from typing import Any, Callable, List, Optional, Tuple

try:
    import cython
except ImportError:  # Cython is only needed to build: the interpreter runs this file without it
    from types import SimpleNamespace

    cython = SimpleNamespace(compiled=False)

from . import _original

#: True in the extension Cython built from this file, False where the interpreter runs it.
COMPILED = cython.compiled

# Atomicity: every transition of the ring (a slot's state, the free list, the waiter queue, the
# gauges) runs inside ``with _atomic(self):``, and no Python code that could block, re-enter the
# ring or run a destructor is called inside one. Python code (probes, the policy's hooks, waking
# a waiter, dropping a reference) only runs *between* transitions, on a slot the caller owns
# (IN_USE or RESERVED).
# - Compiled: a transition is a run of C statements that calls no Python code and releases
#   nothing, so under the GIL no other thread or greenlet can observe or interleave with it, and
#   ``_atomic`` (Cython's critical_section) compiles to nothing: the fast path takes no lock. On a
#   free-threaded CPython the same statement is a real per-object critical section, and the
#   states stay explicit for that.
# - Interpreted: a thread switch can happen between any two bytecodes, so ``_atomic`` is a real
#   OS lock (never a monkey-patched one: see _original), one per core; sections never nest.
# The C helpers (clock, address, probes) are declared in _core.pxd; their Python stand-ins follow.
if cython.compiled:
    from cython import critical_section as _atomic
else:
    from time import monotonic as _clock

    from ._states import (
        CANCELLED,
        CLOSED,
        CLOSED_POOL,
        COMPACT_SLACK,
        CONNECTING,
        DONE,
        EMPTY,
        ENQUEUED,
        FAILED,
        FULL,
        HANDED,
        IDLE,
        IN_USE,
        RESERVED,
        RETRY,
        TICK_EVERY,
        WAITING,
    )

    INFINITY = math.inf
    _address = id
    # the real thread id (gevent may patch the threading module's, never this one)
    _thread_ident = _original._original("get_ident")

    def _atomic(core: Core) -> Any:
        return core._ring_lock


# The numbers this core runs with, by name: tests/test_core_ring.py::test_state_numbers_agree
# checks that the compiled core's C enums (_core.pxd) are those of _states.py.
_NUMBERS = {
    "EMPTY": EMPTY, "CONNECTING": CONNECTING, "IDLE": IDLE, "IN_USE": IN_USE, "RESERVED": RESERVED,
    "WAITING": WAITING, "HANDED": HANDED, "DONE": DONE, "CANCELLED": CANCELLED, "CLOSED": CLOSED,
    "FAILED": FAILED, "ENQUEUED": ENQUEUED, "RETRY": RETRY, "FULL": FULL, "CLOSED_POOL": CLOSED_POOL,
    "TICK_EVERY": TICK_EVERY, "COMPACT_SLACK": COMPACT_SLACK,
}


# What _grow_slots returns when there is nothing to reserve (every enqueue of a pool at
# max_size): one shared empty list, not a new one each time. Its callers only read it.
_NO_SLOTS: List[int] = []


class Waiter:
    """One blocked getconn. ``wake`` is the policy's primitive (thread lock or greenlet)."""

    if not cython.compiled:
        __slots__ = ("state", "conn", "wake", "idle", "__weakref__")

    def __init__(self, wake: Callable[[], Any]) -> None:
        self.state = WAITING
        self.conn = None
        self.wake = wake
        #: once HANDED: seconds since the connection last proved itself (returned clean, reset
        #: or checked); -1.0 for a new connection the policy already checked when it made it.
        #: The policy's health check decides from it, as for an idle connection.
        self.idle = 0.0


_COMPACT_MIN = 1024  # Deadlines entries before the first compaction


def _is_parked(park: Any) -> bool:
    return park.parked


class Deadlines:
    """A hub's parking: one hub timer for all the pool waits of one hub, instead of one timer
    per wait, and the hub primitives a ``Park`` needs.

    Waits are appended in the order they start; a pool's default timeout is the same for every
    caller, so their deadlines arrive in nondecreasing order and the earliest is always at the
    head: a single timer, armed for the head, is enough. A wait whose deadline would be earlier
    than the tail's (a caller passing a shorter timeout) is refused (``add`` returns False) and
    gets a timer of its own. An entry is finished when its wait is no longer ``parked`` (woken,
    timed out, cancelled). ``add`` only appends (every wait pays for it); finished entries are
    dropped when the timer fires (the pool serves first come, first served, so they gather at
    the head) and by a compaction at C speed once the queue reaches twice the live waits (at
    least ``_COMPACT_MIN``): the queue stays bounded, in amortised O(1) a wait. Deadlines and
    waits are kept in two deques (no tuple per wait).

    It lives in the core, not in ``fastpool.green``, so that compiled, a wait's ``add`` and the
    ``Park``'s reads of ``switch``/``getcurrent``/``call_soon`` are C (each wait paid an
    interpreted frame and attribute lookups for them). The hub-specific subclasses are
    ``fastpool.green._GeventParking`` / ``_EventletParking``: they set ``switch`` (park the
    current greenlet; returns the value it is switched back in with), ``call_soon(fn, arg)``
    (runs ``fn(arg)`` in the hub; from the hub's thread ``owner`` only) and
    ``call_soon_threadsafe(fn, arg)`` (from any thread), and define ``_arm(delay)`` (a hub
    timer calling ``_fire``), ``timer(delay, park)`` / ``cancel(timer)`` (a wait's own timer).

    Runs only in the hub's own OS thread (waits and the timer callback both do).
    """

    if not cython.compiled:
        __slots__ = ("_at", "_parks", "_armed_at", "_now", "_compact_at", "owner", "getcurrent",
                     "switch", "call_soon", "call_soon_threadsafe")

    def __init__(self) -> None:
        #: the hub's OS thread: call_soon from that thread only, call_soon_threadsafe from others
        self.owner = _thread_ident()
        #: the running greenlet (greenlet is imported: a hub exists)
        import greenlet

        self.getcurrent = greenlet.getcurrent
        self.switch = None
        self.call_soon = None
        self.call_soon_threadsafe = None
        self._at = deque()
        self._parks = deque()
        self._armed_at = INFINITY  # the earliest deadline a timer is armed for (inf: none)
        self._now = _monotonic
        self._compact_at = _COMPACT_MIN

    def add(self, deadline: float, park: Any) -> bool:
        """Queue ``park``'s ``deadline``; False if it is earlier than the tail's (the caller
        arms a timer of its own)."""
        at = self._at
        n = len(at)
        if n >= self._compact_at:
            self._compact()
            at = self._at
            n = len(at)
        if n and deadline < at[n - 1]:  # (no negative index: the core compiles without wraparound)
            return False
        at.append(deadline)
        self._parks.append(park)
        if deadline < self._armed_at:
            # No timer yet, or only one for a later deadline (every earlier wait finished and a
            # shorter timeout came next): arm one for this deadline. A later timer still armed
            # fires harmlessly (nothing due).
            self._armed_at = deadline
            self._arm(max(0.0, deadline - self._now()))
        return True

    def _compact(self) -> None:
        """Drop the finished entries, in amortised O(1): the next compaction waits until the
        queue has doubled again. Entries are not dropped one by one as waits finish (that
        would cost every wait a few more steps): they go here, at C speed, and when the timer
        fires. Called before the new wait is parked, so it is not mistaken for a finished one."""
        live = list(map(_is_parked, self._parks))
        self._at = deque(compress(self._at, live))
        self._parks = deque(compress(self._parks, live))
        self._compact_at = max(_COMPACT_MIN, 2 * len(self._parks))

    def _fire(self) -> None:
        """Timer callback (in the hub): expire due waits, re-arm for the next live one."""
        self._armed_at = INFINITY
        at, parks = self._at, self._parks
        now = self._now()
        while parks:
            park = parks[0]
            if not park.parked:
                parks.popleft()
                at.popleft()
            elif at[0] <= now:
                parks.popleft()
                at.popleft()
                # Switches into that greenlet (it cancels itself in the core); meanwhile other
                # waits may add entries and arm a timer.
                park.resume(False)
                at, parks = self._at, self._parks  # a compaction may have replaced them
                now = self._now()
            else:
                if at[0] < self._armed_at:  # not already covered by a timer armed meanwhile
                    self._armed_at = at[0]
                    self._arm(at[0] - now)
                return

    def _arm(self, delay: float) -> None:
        """Arm a hub timer that calls ``_fire`` after ``delay`` seconds."""
        raise NotImplementedError

    def timer(self, delay: float, park: Any) -> Any:
        """A wait's own timer: ``park.resume(False)`` after ``delay`` seconds."""
        raise NotImplementedError

    def cancel(self, timer: Any) -> None:
        """Cancel a timer ``timer()`` made."""
        raise NotImplementedError


class Park:
    """One greenlet's wait on its hub: the core's waiter wakes it, a deadline expires it.

    Mechanism only (the pool keeps the policy: errors, metrics, health checks). ``hub`` is the
    hub's parking, a ``Deadlines`` (``fastpool.green._GeventParking`` / ``_EventletParking``).
    It lives in the core so that, compiled, a wait runs no interpreted frame but the hub's own.

    The park is the waiter's ``wake``: calling it (the core does, once) resumes the greenlet
    from the hub. One object a wait besides the core's waiter, no bound method, no closure, no
    timer of its own in the common case: a wait lives as long as the queue ahead of it, so what
    it allocates is promoted to the oldest garbage-collector generation, and enough promotions
    trigger full collections (measured: with 1000 greenlets on 10 connections they cost more
    CPU than the rest of the pool).

    ``parked`` is True only while the greenlet sits in the hub switch of ``_park``: a resume
    (a wake, a deadline) switches into it only then, so a late one -- after a timeout, a kill,
    or a wake that lost the race -- can never jump into unrelated code. The greenlet is held
    only while parked (a finished wait may stay a while in the hub's deadline queue: it must
    not keep a finished request's greenlet alive). Nothing here refers back to the waiter: no
    reference cycle, nothing left for the collector.
    """

    if not cython.compiled:
        __slots__ = ("_hub", "_me", "parked")

    def __init__(self, hub: Any) -> None:
        self._hub = hub
        self._me = None
        self.parked = False

    @staticmethod
    def waiter_for(hub: Any) -> Waiter:
        """A core ``Waiter`` whose ``wake`` is a new ``Park`` on ``hub``: what a greenlet's
        wait takes, made in one call (no argument tuple and ``__init__`` per object)."""
        return _park_waiter(hub)

    def __call__(self) -> None:
        """The core's wake: resume the greenlet from its hub (this may run in another OS thread,
        a fastpool worker that made a connection; hub objects are not thread-safe, so the
        waiter's own hub makes the switch)."""
        hub = self._hub
        if _thread_ident() == hub.owner:
            hub.call_soon(_resume_woken, self)
        else:
            hub.call_soon_threadsafe(_resume_woken, self)

    def resume(self, woken: Any) -> None:
        """In the hub: switch the parked greenlet in; ``woken`` False for an expired deadline."""
        if self.parked:
            self.parked = False
            self._me.switch(woken)

    def wait(self, timeout: Optional[float]) -> bool:
        """One park: until woken (True) or ``timeout`` seconds (None: no limit) pass (False)."""
        now = _clock()
        if timeout is None:
            return self._park(INFINITY, now)
        return self._park(now + max(0.0, timeout), now)

    def wait_until(self, deadline: float, step: float) -> bool:
        """Park until woken (True) or the monotonic ``deadline`` passes (False). A deadline more
        than ``step`` seconds away (a huge or infinite timeout) is waited for in steps: no hub
        timer takes an infinite delay."""
        while True:
            now = _clock()
            if deadline - now <= step:
                return self._park(deadline, now)
            if self._park(now + step, now):
                return True

    def _park(self, deadline: float, now: float) -> bool:
        hub = self._hub
        timer = None
        if deadline != INFINITY and not hub.add(deadline, self):
            # Earlier than the hub's queue tail (a shorter timeout than the waits ahead): a
            # timer of its own.
            timer = hub.timer(max(0.0, deadline - now), self)
        self._me = hub.getcurrent()
        self.parked = True
        try:
            return hub.switch() is not False
        finally:
            self.parked = False
            self._me = None
            if timer is not None:
                hub.cancel(timer)


def _park_waiter(hub: Any) -> Waiter:
    # (Park.waiter_for; a module function for its C types, see _core.pxd)
    park = Park.__new__(Park)
    park._hub = hub
    park._me = None
    park.parked = False
    w = Waiter.__new__(Waiter)
    w.state = WAITING
    w.conn = None
    w.wake = park
    w.idle = 0.0
    return w


def _resume_woken(park: Park) -> None:
    """What a wake asks the hub to call: ``park.resume(True)``, through one module function
    instead of a bound method made per wake."""
    park.resume(True)


class _DeadCallback:
    """Weakref callback: records that a borrowed connection died. It runs at arbitrary points
    (garbage collection), so it only records; ``_drain_dead`` makes the transition."""

    def __init__(self, dead: deque, slot: int) -> None:
        self.dead = dead
        self.slot = slot

    def __call__(self, ref: Any) -> None:
        self.dead.append((self.slot, ref))


class Core:
    """Slots, states, free list, waiter queue, clock and counters. No policy, no PostgreSQL."""

    #: raised on misuse of putconn; the policy layer overrides it with its own error.
    misuse_error: type = ValueError

    def __cinit__(self, *args: Any, **kwargs: Any) -> None:
        # Compiled: runs before any __init__, so the ring is valid (and empty) whatever the policy
        # does first. Interpreted: never called; _core_setup starts the ring instead.
        self._init_ring()

    def __dealloc__(self) -> None:
        if cython.compiled:  # (interpreted: the lists go with the object)
            PyMem_Free(self._state)
            PyMem_Free(self._expiry)
            PyMem_Free(self._last_used)
            PyMem_Free(self._checkout)
            PyMem_Free(self._gen)
            PyMem_Free(self._keys)
            PyMem_Free(self._holder)
            PyMem_Free(self._free)

    def _init_ring(self) -> None:
        if not cython.compiled:  # (compiled: C arrays, NULL until _grow_capacity)
            self._ring_lock = _original.allocate_lock()
            self._state: Any = []
            self._expiry: Any = []
            self._last_used: Any = []
            self._checkout: Any = []
            self._gen: Any = []
            self._keys: Any = []  # id() of each slot's connection, the key of _slot_of
            self._holder: Any = []  # token of the wrapper holding the borrow (0: none)
            self._free: Any = []
        self._cap = 0
        self._leases = 0  # last token handed out by _hold
        self._conns: List[Any] = []
        self._wrefs: List[Any] = []
        self._fhead = 0
        self._nfree = 0
        self._lifo = True
        self._slot_of: dict = {}
        self._waiters: deque = deque()
        self._dead: deque = deque()
        self._max = 0
        self._size = 0
        self._nconnecting = 0
        self._nwaiting = 0
        self._closed = True  # until _open_core()
        self._generation = 0
        self._ticks = TICK_EVERY
        # Policy knobs (set by the policy layer).
        self._check_after = INFINITY  # idle seconds before _healthy_for_handout() runs at checkout
        self._probes: tuple = ()  # ((attr, expected, is_call), ...) all must hold for a fast return
        self._alive_attr: Optional[str] = None  # attribute that must be falsy at checkout ("closed")
        self._always_slow = False  # every return goes through _on_return (e.g. reset="discard")
        self._track = False  # call _on_checkout(slot) after every checkout
        self._slot_attr: Optional[str] = None  # see _core_set_slot_attr
        self._wait_hook: Optional[Callable[[float], None]] = None  # see _core_set_timers
        self._use_hook: Optional[Callable[[float], None]] = None
        self._grow_limit = 2147483647  # see _core_set_grow_limit
        self._fast_type: Optional[type] = None  # see _core_set_type
        self._fast_probes: Optional[tuple] = None
        self._fast_alive: Any = None
        # Counters.
        self._requests_num = 0
        self._requests_queued = 0
        self._returns_bad = 0
        self._connections_lost = 0
        self._connections_reclaimed = 0
        self._usage = 0.0

    def _core_setup(self, capacity: int, lifo: bool = True) -> None:
        if not cython.compiled:
            self._init_ring()  # (compiled: __cinit__ did)
        self._lifo = bool(lifo)
        self._grow_capacity(capacity)
        self._max = capacity

    def _core_configure(
        self, check_after: float, probes: tuple, alive_attr: Optional[str], always_slow: bool, track: bool
    ) -> None:
        self._check_after = float(check_after)
        self._probes = tuple(probes)
        self._alive_attr = alive_attr
        self._always_slow = bool(always_slow)
        self._track = bool(track)
        self._fast_type = None  # probes changed: _core_set_type() must resolve them again
        self._fast_probes = None
        self._fast_alive = None

    def _core_set_timers(
        self, wait_hook: Optional[Callable[[float], None]], use_hook: Optional[Callable[[float], None]]
    ) -> None:
        """Opt-in per-event timings (None: off, the default; then each costs one pointer
        compare). ``wait_hook(seconds)`` after a checkout served without queueing (the policy
        reports queued ones), ``use_hook(seconds)`` after each return: borrowed time. Both run
        on the caller's thread after the slot is settled and must not raise."""
        self._wait_hook = wait_hook
        self._use_hook = use_hook

    def _core_set_type(self, cls: Optional[type]) -> None:
        """All connections are expected to be of class ``cls`` (None: no expectation). For
        objects of exactly that class, the compiled core's probes and alive check use
        descriptors resolved once on ``cls`` instead of a full attribute lookup per call; any
        other object still gets the generic lookups, so a stray type is only slower, never
        wrong. (Interpreted, the generic lookups are as fast as it gets.)"""
        fast = []
        self._fast_type = None
        self._fast_probes = None
        self._fast_alive = None
        if cls is None:
            return
        for name, expected, is_call in self._probes:
            d = _data_descriptor(cls, name)
            if is_call:
                fn = getattr(cls, name, None)
                if fn is None or d is not None:
                    return
                fast.append((fn, expected, True))
            elif d is None:
                return
            else:
                fast.append((d, expected, False))
        if self._alive_attr is not None:
            self._fast_alive = _data_descriptor(cls, self._alive_attr)
            if self._fast_alive is None:
                return
        self._fast_probes = tuple(fast)
        self._fast_type = cls

    def _core_set_slot_attr(self, name: Optional[str]) -> None:
        """Connections have a writable attribute ``name`` (None: they do not): the ring stores
        each one's slot number there, so putconn finds it without the address map."""
        self._slot_attr = name

    def _core_set_grow_limit(self, limit: int) -> None:
        """Waiters make the ring reserve connections only while fewer than ``limit`` are being
        made; each one made (``_fill``) re-checks. A policy knob: how fast demand grows the pool."""
        self._grow_limit = int(limit)

    def _open_core(self) -> None:
        self._closed = False

    def _core_closed(self) -> bool:
        return self._closed

    @staticmethod
    def _now() -> float:
        return _clock()

    # -- storage -------------------------------------------------------------------------------
    def _grow_capacity(self, capacity: int) -> int:
        old = self._cap
        if capacity <= old:
            return 0
        order = self._free_list()
        if cython.compiled:
            # Realloc every array first; only then publish the new capacity.
            self._state = cython.cast(cython.p_int, _realloc(self._state, capacity * cython.sizeof(cython.int)))
            self._expiry = cython.cast(
                cython.p_double, _realloc(self._expiry, capacity * cython.sizeof(cython.double)))
            self._last_used = cython.cast(
                cython.p_double, _realloc(self._last_used, capacity * cython.sizeof(cython.double)))
            self._checkout = cython.cast(
                cython.p_double, _realloc(self._checkout, capacity * cython.sizeof(cython.double)))
            self._gen = cython.cast(cython.p_long, _realloc(self._gen, capacity * cython.sizeof(cython.long)))
            self._keys = cython.cast(
                cython.p_Py_ssize_t, _realloc(self._keys, capacity * cython.sizeof(cython.Py_ssize_t)))
            self._holder = cython.cast(
                cython.p_long, _realloc(self._holder, capacity * cython.sizeof(cython.long)))
            self._free = cython.cast(cython.p_int, _realloc(self._free, capacity * cython.sizeof(cython.int)))
        else:
            extra = [0] * (capacity - old)
            for array in (self._state, self._expiry, self._last_used, self._checkout, self._gen,
                          self._keys, self._holder, self._free):
                array.extend(extra)
        for i in range(old, capacity):
            self._state[i] = EMPTY
            self._expiry[i] = INFINITY
            self._last_used[i] = 0.0
            self._checkout[i] = 0.0
            self._gen[i] = 0
            self._keys[i] = 0
            self._holder[i] = 0
            self._conns.append(None)
            self._wrefs.append(None)
        self._cap = capacity
        self._set_free_list(order)
        return 0

    # -- free list (inside a transition) -------------------------------------------------------
    def _push_free(self, slot: int) -> None:
        self._free[(self._fhead + self._nfree) % self._cap] = slot
        self._nfree += 1

    def _pop_free(self) -> int:
        if self._nfree == 0:
            return -1
        self._nfree -= 1
        if self._lifo:
            return self._free[(self._fhead + self._nfree) % self._cap]
        slot = self._free[self._fhead]
        self._fhead = (self._fhead + 1) % self._cap
        return slot

    def _free_list(self) -> List[int]:
        """Free slots from oldest to newest push."""
        return [self._free[(self._fhead + i) % self._cap] for i in range(self._nfree)]

    def _set_free_list(self, slots: List[int]) -> None:
        self._fhead = 0
        self._nfree = 0
        for s in slots:
            self._push_free(s)

    # -- identity ------------------------------------------------------------------------------
    def _held(self, slot: int) -> Any:
        """The connection in ``slot``: its strong reference, or the weak one's referent while it
        is borrowed (None once that connection is gone)."""
        c = self._conns[slot]
        if c is None:
            r = self._wrefs[slot]
            if r is not None:
                if cython.compiled:
                    c = cython.cast(object, PyWeakref_GetObject(r))  # borrowed; None once dead
                else:
                    c = r()
        return c

    # -- hand-out: the fast path ---------------------------------------------------------------
    def getconn(self, timeout: Optional[float] = None) -> Any:
        """Take an idle connection, or block via the policy's ``_on_miss`` until one is handed over."""
        if timeout is not None and not timeout > 0:
            raise ValueError(f"getconn(): timeout must be a positive number of seconds, not {timeout!r}")
        self._requests_num += 1  # a counter, not an invariant: a rare lost increment is harmless
        self._ticks -= 1
        if self._ticks <= 0:
            self._ticks = TICK_EVERY
            self._on_tick()
        return self._take(timeout, True)

    def _try_get(self, timeout: Optional[float] = None) -> Any:
        """An idle, vetted connection now (IN_USE), or None."""
        return self._take(timeout, False)

    def _take(self, timeout: Optional[float], block: bool) -> Any:
        # An idle connection, vetted if it idled long enough; on a miss, _on_miss (block) or None.
        # Health checks spend the caller's time: they stop at its deadline (start + timeout, or
        # the pool's default), and _on_miss learns how much of it is gone.
        start = -1.0
        budget = -1.0
        checked_out = False
        # Another thread may (un)subscribe while this runs Python code: the hook is called only
        # if t0 was taken and it is still set.
        timed = block and self._wait_hook is not None
        t0 = _clock() if timed else 0.0
        while True:
            with _atomic(self):
                slot = -1 if self._closed else self._pop_free()
                if slot < 0:
                    break
                # IDLE -> RESERVED: the slot is ours. The alive check below is an attribute
                # read (psycopg2's: a C getter; interpreted, under the lock as ever).
                self._state[slot] = RESERVED
                t = _clock()
                if start < 0:
                    start = t
                conn = self._conns[slot]
                if cython.compiled and self._fast_alive is not None and type(conn) is self._fast_type:
                    dead = bool(fastpool_descr_get(self._fast_alive, conn))
                else:
                    dead = self._alive_attr is not None and bool(getattr(conn, self._alive_attr))
                idle = t - self._last_used[slot]
                if dead:
                    self._connections_lost += 1
                elif t < self._expiry[slot] and idle < self._check_after:
                    # The fast path: RESERVED -> IN_USE within the same transition.
                    self._checkout_slot(slot, t)
                    checked_out = True
            if dead or t >= self._expiry[slot]:
                self._retire(slot, conn)
                continue
            if not checked_out:
                if budget < 0:
                    budget = timeout if timeout is not None else self._default_timeout()
                remaining = start + budget - t
                if remaining <= 0:
                    # The caller's time is up: put this one back, untested and still idle.
                    with _atomic(self):
                        closed = self._closed
                        w = None if closed else self._restore_slot(slot, self._last_used[slot])
                    if closed:
                        self._retire(slot, conn)
                    elif w is not None:
                        w.wake()
                    break
                try:
                    ok = self._healthy_for_handout(conn, idle, remaining)
                except BaseException:
                    self._abandon(slot, conn)  # interrupted (KeyboardInterrupt, greenlet kill)
                    raise
                if not ok:
                    with _atomic(self):
                        self._connections_lost += 1
                    self._retire(slot, conn)
                    continue
                with _atomic(self):
                    self._checkout_slot(slot, _clock())
            if self._track:
                self._on_checkout(slot)
            if timed and self._wait_hook is not None:
                self._wait_hook(_clock() - t0)
            return conn
        if not block:
            return None
        return self._on_miss(timeout, _clock() - start if start >= 0 else 0.0)  # reports its waits

    def _checkout_slot(self, slot: int, t: float) -> None:
        self._state[slot] = IN_USE
        self._checkout[slot] = t
        if self._wrefs[slot] is not None:
            # Keep only the weak reference while borrowed: a borrower that drops the
            # connection lets the weakref callback reclaim the slot. The caller holds a
            # reference, so this never runs a destructor.
            self._conns[slot] = None

    # -- return: the fast path -----------------------------------------------------------------
    def putconn(self, conn: Any) -> None:
        """Return a connection: straight to the first waiter or the free list when it is clean."""
        if self._dead:
            self._drain_dead()
        with _atomic(self):
            slot = self._borrowed_slot(conn)
            if self._holder[slot]:
                raise self.misuse_error(
                    "putconn(): this connection is held by `with pool.connection()`, a "
                    "fastpool.connect() connection or a Django connection; end or close that instead"
                )
            t = self._begin_return(slot, conn)
        self._put(slot, conn, t)

    def _putconn_held(self, conn: Any, token: int) -> None:
        """Return a connection taken with ``_hold`` (by the holder of ``token`` only)."""
        self._put_held(conn, token)

    def _put_held(self, conn: Any, token: int) -> int:
        # (a C function in the compiled core: ``token`` is a C long, compared as such)
        if self._dead:
            self._drain_dead()
        with _atomic(self):
            slot = self._borrowed_slot(conn)
            if token <= 0 or self._holder[slot] != token:
                raise self.misuse_error("putconn(): this connection was already returned to the pool")
            self._holder[slot] = 0
            t = self._begin_return(slot, conn)
        self._put(slot, conn, t)
        return 0

    def _hold(self, conn: Any) -> int:
        """Mark a connection the caller just borrowed as held by one wrapper: returns the token
        that ``_putconn_held`` needs; a bare ``putconn`` of it raises until then."""
        with _atomic(self):
            slot = self._borrowed_slot(conn)
            if self._holder[slot]:
                raise self.misuse_error("this connection is already held by another wrapper")
            self._leases += 1
            self._holder[slot] = self._leases
            return self._leases

    def _borrowed_slot(self, conn: Any) -> int:
        # The slot of a borrowed (IN_USE) connection of this pool, or misuse_error.
        slot = -1
        if self._slot_attr is not None:
            # The pool's own connection class carries its slot number: an attribute read
            # instead of an address -> slot lookup (a PyLong and a dict probe). It is only a
            # hint: the identity check below still decides.
            hint = getattr(conn, self._slot_attr, None)
            if isinstance(hint, int):
                slot = hint
                if slot >= self._cap:
                    slot = -1
        if slot < 0:
            slot = self._slot_of.get(_address(conn), -1)
        if slot < 0 or self._held(slot) is not conn:
            raise self.misuse_error("putconn(): this connection does not belong to this pool")
        if self._state[slot] != IN_USE:
            raise self.misuse_error("putconn(): this connection was already returned to the pool")
        return slot

    def _begin_return(self, slot: int, conn: Any) -> float:
        # IN_USE -> RESERVED: from here the slot is ours until restored or released. Returns the
        # time of the return; the time it was used is counted here.
        self._state[slot] = RESERVED
        self._conns[slot] = conn
        t = _clock()
        self._usage += t - self._checkout[slot]
        return t

    def _put(self, slot: int, conn: Any, t: float) -> int:
        # The rest of a return, on the RESERVED slot: probes, then restore or the slow path.
        used = t - self._checkout[slot]
        slow = (
            self._always_slow
            or self._closed
            or t >= self._expiry[slot]
            or self._gen[slot] != self._generation
            or self._size > self._max
        )
        if not slow:
            try:
                if cython.compiled and type(conn) is self._fast_type:
                    # identity first: expected values are small ints, None, bools and []
                    slow = not fastpool_probes_hold(self._fast_probes, conn)
                else:
                    for probe in self._probes:
                        value = getattr(conn, probe[0])
                        if probe[2]:
                            value = value()
                        if value is not probe[1] and value != probe[1]:
                            slow = True
                            break
            except Exception:
                slow = True  # a probe that fails says the connection is not clean
        restored = False
        if not slow:
            with _atomic(self):
                # The probes were Python code: close() may have run meanwhile and already
                # closed the idle connections, so this one must not go back on the free list.
                restored = not self._closed
                w = self._restore_slot(slot, t) if restored else None
            if w is not None:
                w.wake()
        if not restored:
            try:
                if slow:
                    self._on_return(slot, conn)
                else:
                    self._retire(slot, conn)
            except BaseException:
                self._abandon(slot, conn)
                raise
        hook = self._use_hook
        if hook is not None:
            hook(used)
        return 0

    def _unborrow(self, slot: int, conn: Any) -> bool:
        """IN_USE -> RESERVED for the policy (a handed-over connection that failed its check):
        the caller retires it. False if the slot does not hold ``conn`` in use."""
        with _atomic(self):
            if self._state[slot] != IN_USE or self._held(slot) is not conn or self._holder[slot]:
                return False
            self._state[slot] = RESERVED
            self._conns[slot] = conn
            return True

    # -- transitions used by the policy layer --------------------------------------------------
    def _restore(self, slot: int) -> bool:
        """RESERVED -> handed to the first live waiter, or IDLE on the free list.
        False (slot stays RESERVED) if the pool is closed: the caller must retire it."""
        with _atomic(self):
            if self._closed:
                return False
            w = self._restore_slot(slot, _clock())
        if w is not None:
            w.wake()
        return True

    def _restore_slot(self, slot: int, t: float) -> Optional[Waiter]:
        # Inside a transition; callers handle `closed` first. Returns the waiter to wake.
        self._last_used[slot] = t
        while self._nwaiting:
            w = self._waiters.popleft()
            if w.state != WAITING:
                continue  # cancelled or closed: lazily dropped here
            w.state = HANDED
            w.conn = self._conns[slot]
            w.idle = _clock() - t  # > 0 only when restored untested (see _take)
            self._nwaiting -= 1
            self._checkout_slot(slot, t)
            return w
        # Cancelled waiters may remain queued behind nwaiting == 0; they are skipped later.
        self._state[slot] = IDLE
        self._push_free(slot)
        return None

    def _release(self, slot: int) -> None:
        """RESERVED -> EMPTY: the policy closed (or lost) this slot's connection."""
        with _atomic(self):
            self._forget(slot)
            grow = self._grow_slots()
        self._dispatch_grow(grow)

    def _abandon(self, slot: int, conn: Any) -> None:
        # A policy hook raised (even KeyboardInterrupt or GreenletExit) while the slot was ours:
        # close the connection and free the slot, so an interrupted caller never strands it.
        try:
            self._retire(slot, conn)
        except BaseException:
            pass
        with _atomic(self):
            if self._state[slot] == RESERVED and self._held(slot) is conn:
                self._forget(slot)

    def _dispatch_grow(self, slots: List[int]) -> int:
        # Hand each reserved CONNECTING slot to the policy; if that is interrupted, the slots
        # not yet handed over go back to EMPTY instead of staying reserved for ever.
        i = 0
        try:
            for i in range(len(slots)):
                self._grow(slots[i])
        except BaseException:
            for j in range(i, len(slots)):
                self._fill_failed(slots[j])
            raise
        return 0

    def _unreserve(self, slot: int) -> None:
        if self._state[slot] == CONNECTING:
            self._nconnecting -= 1
            self._state[slot] = EMPTY
            self._size -= 1

    def _forget(self, slot: int) -> None:
        # Dropping the weakref cannot run a destructor; the connection object itself is held
        # by the caller (or already dead).
        # Only our own entry: after a reclaim, a new connection may live at the same address.
        if self._slot_of.get(self._keys[slot], -1) == slot:
            del self._slot_of[self._keys[slot]]
        self._keys[slot] = 0
        self._holder[slot] = 0
        self._state[slot] = EMPTY
        self._conns[slot] = None
        self._wrefs[slot] = None
        self._expiry[slot] = INFINITY
        self._size -= 1

    def _reserve(self) -> int:
        """EMPTY -> CONNECTING if there is room; returns the slot or -1."""
        with _atomic(self):
            return self._reserve_slot()

    def _reserve_slot(self) -> int:
        if self._closed or self._size >= self._max:
            return -1
        for slot in range(self._cap):
            if self._state[slot] == EMPTY:
                self._state[slot] = CONNECTING
                # The generation a connection belongs to is the one its attempt started in: a
                # drain() while it connects makes it stale (it may reach the old server).
                self._gen[slot] = self._generation
                self._size += 1
                self._nconnecting += 1
                return slot
        return -1

    def _grow_slots(self) -> List[int]:
        # Reserve one CONNECTING slot per waiter not yet covered by a connection being made,
        # with at most ``grow_limit`` connections being made at once (see _core_set_grow_limit).
        if self._size >= self._max or self._nwaiting <= self._nconnecting:
            return _NO_SLOTS  # every enqueue of a full pool: no new list
        slots = []
        while (
            self._nwaiting > self._nconnecting
            and self._nconnecting < self._grow_limit
            and self._size < self._max
            and not self._closed
        ):
            s = self._reserve_slot()
            if s < 0:
                break
            slots.append(s)
        return slots

    def _fill(self, slot: int, conn: Any, expiry: float) -> Optional[bool]:
        """CONNECTING -> IDLE (or straight to a waiter) with a new connection.
        False if the pool closed meanwhile: the slot is freed and the caller closes ``conn``.
        None if drain() ran since the attempt started: the caller closes ``conn`` and connects
        again; the slot stays CONNECTING, now in the current generation."""
        # Keyed by address, not by the object: a key would be a strong reference and the
        # weakref-based reclaim of dropped connections could never fire. putconn re-checks
        # identity, so a reused address cannot be mistaken for ours.
        key = _address(conn)
        try:
            wref = weakref.ref(conn, _DeadCallback(self._dead, slot))
        except TypeError:
            wref = None  # not weak-referenceable: no reclaim for this connection type
        with _atomic(self):
            if self._state[slot] != CONNECTING:
                return False  # un-reserved meanwhile (an interrupted grow): caller closes conn
            if not self._closed and self._gen[slot] != self._generation:
                self._gen[slot] = self._generation
                return None
            self._nconnecting -= 1
            if self._closed:
                self._state[slot] = EMPTY
                self._size -= 1
                return False
            self._conns[slot] = conn
            self._wrefs[slot] = wref
            self._expiry[slot] = expiry
            self._slot_of[key] = slot
            self._keys[slot] = key
            if self._slot_attr is not None:
                try:
                    setattr(conn, self._slot_attr, slot)
                except (AttributeError, TypeError):
                    pass  # the address map still works
            w = self._restore_slot(slot, _clock())
            if w is not None:
                w.idle = -1.0  # new: the policy checked it when it made it, if it checks new ones
            # One connect in flight has ended: if waiters are still uncovered, the next starts.
            grow = self._grow_slots()
        if w is not None:
            w.wake()
        self._dispatch_grow(grow)
        return True

    def _fill_failed(self, slot: int) -> None:
        """CONNECTING -> EMPTY after a failed connection attempt (the policy decides on retries)."""
        with _atomic(self):
            self._unreserve(slot)

    def _drain_dead(self) -> int:
        """Reclaim IN_USE slots whose connection was garbage-collected without being returned."""
        n = 0
        grow: List[int] = []
        while self._dead:
            slot, ref = self._dead.popleft()
            with _atomic(self):
                if self._wrefs[slot] is not ref or self._state[slot] != IN_USE:
                    continue
                self._usage += _clock() - self._checkout[slot]
                self._forget(slot)
                self._connections_reclaimed += 1
                n += 1
                grow += self._grow_slots()
            self._on_reclaim(slot)
        self._dispatch_grow(grow)
        return n

    def _enqueue(self, w: Waiter, max_waiting: int) -> int:
        """Queue a waiter: ENQUEUED, RETRY (a connection became free meanwhile), FULL, or
        CLOSED_POOL (closed since the caller last looked)."""
        if not isinstance(w, Waiter):
            raise TypeError(f"_enqueue() takes a Waiter, not {type(w).__name__}")
        with _atomic(self):
            if self._closed:
                return CLOSED_POOL
            if self._nfree:
                return RETRY
            if max_waiting and self._nwaiting >= max_waiting:
                return FULL
            if self._nwaiting == 0:
                self._waiters.clear()  # only cancelled leftovers: don't let them accumulate
            self._waiters.append(w)
            self._nwaiting += 1
            self._requests_queued += 1
            grow = self._grow_slots()
        self._dispatch_grow(grow)
        return ENQUEUED

    def _claim(self, w: Waiter) -> Any:
        """Finish a waiter exactly once: its connection if it was handed one, else None."""
        with _atomic(self):
            if w.state == HANDED:
                w.state = DONE
                conn = w.conn
                w.conn = None
                return conn
            if w.state == WAITING:
                w.state = CANCELLED
                self._nwaiting -= 1
                if len(self._waiters) > 2 * self._nwaiting + COMPACT_SLACK:
                    # Cancelled waiters are normally dropped lazily by the next handoff; with
                    # the pool exhausted no handoff comes, so drop them here (amortised O(1):
                    # at least half the queue goes), or timed-out waiters pile up without bound.
                    self._compact_waiters()
            return None

    def _compact_waiters(self) -> None:
        live = deque()
        for x in self._waiters:
            if x.state == WAITING:
                live.append(x)
        self._waiters = live

    def _take_idle(self, expired_at: float, idle_before: float, keep: int) -> List[Tuple[int, Any]]:
        """IDLE -> RESERVED for the policy: connections expired at ``expired_at``, and the
        longest-idle ones used before ``idle_before`` while more than ``keep`` remain."""
        taken = []
        kept = []
        with _atomic(self):
            size = self._size
            for slot in self._free_list():  # oldest first
                if self._expiry[slot] <= expired_at or (self._last_used[slot] <= idle_before and size > keep):
                    self._state[slot] = RESERVED
                    taken.append((slot, self._conns[slot]))
                    size -= 1
                else:
                    kept.append(slot)
            self._set_free_list(kept)
        return taken

    def _take_all_idle(self) -> List[Tuple[int, Any]]:
        return self._take_idle(INFINITY, INFINITY, 0)

    def _slot_current(self, slot: int) -> bool:
        """Whether a RESERVED slot's connection may go back: same generation, within its
        lifetime, and the pool not above max_size."""
        with _atomic(self):
            return (
                self._gen[slot] == self._generation
                and _clock() < self._expiry[slot]
                and self._size <= self._max
            )

    def _slot_for(self, conn: Any) -> int:
        return self._slot_of.get(_address(conn), -1)

    def _count_lost(self) -> None:
        with _atomic(self):
            self._connections_lost += 1

    def _count_bad_return(self) -> None:
        with _atomic(self):
            self._returns_bad += 1

    def _in_use_since(self, before: float) -> List[int]:
        """Slots borrowed before ``before`` (leak detection)."""
        with _atomic(self):
            return [s for s in range(self._cap) if self._state[s] == IN_USE and self._checkout[s] <= before]

    def _close_core(self) -> List[Waiter]:
        """Mark closed and fail every waiter; returns the waiters to wake."""
        with _atomic(self):
            self._closed = True
            return self._end_waiters(CLOSED)

    def _fail_waiters(self) -> List[Waiter]:
        """Fail every waiter (the policy knows no connection can be made for them); returns the
        waiters to wake. The pool stays open; later getconn calls queue as usual."""
        with _atomic(self):
            return self._end_waiters(FAILED)

    def _end_waiters(self, state: int) -> List[Waiter]:
        # Inside a transition. Every live waiter ends in ``state`` (CLOSED or FAILED);
        # cancelled leftovers are dropped.
        ended = []
        while self._waiters:
            w = self._waiters.popleft()
            if w.state == WAITING:
                w.state = state
                self._nwaiting -= 1
                ended.append(w)
        return ended

    def _set_max(self, max_size: int) -> None:
        with _atomic(self):
            self._grow_capacity(max_size)
            self._max = max_size
            grow = self._grow_slots()
        self._dispatch_grow(grow)

    def _bump_generation(self) -> None:
        with _atomic(self):
            self._generation += 1

    def _reset_after_fork(self) -> List[Any]:
        """In a forked child: forget every inherited connection (returned for the policy to
        neutralise, never to close) and start empty."""
        if not cython.compiled:
            self._ring_lock = _original.allocate_lock()  # another thread may have held it at fork
        inherited = []
        for i in range(self._cap):
            c = self._held(i)
            if c is not None:
                inherited.append(c)
            self._state[i] = EMPTY
            self._conns[i] = None
            self._wrefs[i] = None
            self._keys[i] = 0
            self._holder[i] = 0
            self._expiry[i] = INFINITY
        self._slot_of = {}
        self._waiters = deque()
        self._dead.clear()
        self._fhead = self._nfree = 0
        self._size = self._nconnecting = self._nwaiting = 0
        return inherited

    # -- introspection -------------------------------------------------------------------------
    def _counts(self) -> dict:
        with _atomic(self):
            return {
                "size": self._size,
                "idle": self._nfree,
                "connecting": self._nconnecting,
                "waiting": self._nwaiting,
                "queue": len(self._waiters),  # live and not yet dropped dead waiters
                "max": self._max,
                "requests_num": self._requests_num,
                "requests_queued": self._requests_queued,
                "returns_bad": self._returns_bad,
                "connections_lost": self._connections_lost,
                "connections_reclaimed": self._connections_reclaimed,
                "usage_ms": int(self._usage * 1000),
            }

    def _reset_counters(self) -> None:
        with _atomic(self):
            self._requests_num = self._requests_queued = self._returns_bad = 0
            self._connections_lost = self._connections_reclaimed = 0
            self._usage = 0.0

    def _slot_states(self) -> List[int]:
        with _atomic(self):
            return [self._state[i] for i in range(self._cap)]

    def _check_invariants(self) -> None:
        """Raise AssertionError if the ring's invariants do not hold (tests call this)."""
        with _atomic(self):
            free = self._free_list()
            assert len(free) == len(set(free)), "a slot is on the free list twice"
            idle = [i for i in range(self._cap) if self._state[i] == IDLE]
            assert sorted(free) == sorted(idle), f"free list {free} != IDLE slots {idle}"
            assert self._size == sum(1 for i in range(self._cap) if self._state[i] != EMPTY), "size mismatch"
            assert self._nconnecting == sum(1 for i in range(self._cap) if self._state[i] == CONNECTING)
            assert self._nwaiting == sum(1 for w in self._waiters if w.state == WAITING)

    # -- policy hooks (overridden by fastpool.pool) --------------------------------------------
    def _on_miss(self, timeout: Optional[float], spent: float) -> Any:  # pragma: no cover - policy
        raise NotImplementedError

    def _default_timeout(self) -> float:
        return 30.0

    def _on_return(self, slot: int, conn: Any) -> None:  # pragma: no cover - policy
        raise NotImplementedError

    def _healthy_for_handout(self, conn: Any, idle: float, remaining: float) -> bool:
        return True

    def _retire(self, slot: int, conn: Any) -> None:  # pragma: no cover - policy
        raise NotImplementedError

    def _grow(self, slot: int) -> None:  # pragma: no cover - policy
        raise NotImplementedError

    def _on_checkout(self, slot: int) -> None:
        pass

    def _on_reclaim(self, slot: int) -> None:
        pass

    def _on_tick(self) -> None:
        pass


def _data_descriptor(cls: type, name: str) -> Any:
    """The data descriptor (slot, member, property: has __get__ and __set__) that ``name``
    resolves to on ``cls``, or None if it resolves to anything else."""
    for klass in cls.__mro__:
        d = klass.__dict__.get(name)
        if d is not None:
            t = type(d)
            if hasattr(t, "__get__") and hasattr(t, "__set__"):
                return d
            return None
    return None
