"""Pure-Python twin of :mod:`fastpool._core` (same API, same states, same tests).

The mechanism, shared by both cores
-----------------------------------
The ring holds ``capacity`` slots. Each slot has an explicit state:

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

Each transition is a critical section. In the C core a ``def`` method that
calls no Python code is atomic under the GIL; here a plain lock stands in for
that. Python code (probes, policy hooks, waking a waiter) always runs *between*
transitions, on a slot the caller owns (IN_USE or RESERVED), never inside one.

Misuse fails loudly: returning a connection that is not from this pool, or one
already returned, raises ``self.misuse_error``.

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
from time import monotonic as now
from typing import Any, Callable, List, Optional, Tuple

from . import _original
from ._states import (
    CANCELLED,
    CLOSED,
    CLOSED_POOL,
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
    WAITING,
)

INF = math.inf
#: getconn calls between two _on_tick() policy calls (see _core.pyx).
TICK_EVERY = 1024
#: cancelled waiters tolerated in the queue beyond twice the live ones before it is compacted.
COMPACT_SLACK = 64


class Waiter:
    """One blocked getconn. ``wake`` is the policy's primitive (thread lock or greenlet)."""

    __slots__ = ("state", "conn", "wake", "idle", "__weakref__")

    def __init__(self, wake: Callable[[], Any]) -> None:
        self.state = WAITING
        self.conn: Any = None
        self.wake = wake
        #: once HANDED: seconds since the connection last proved itself (returned clean, reset
        #: or checked); -1.0 for a new connection the policy already checked when it made it.
        #: The policy's health check decides from it, as for an idle connection.
        self.idle = 0.0


class Core:
    """Slots, states, free list, waiter queue, clock and counters. No policy, no PostgreSQL."""

    #: raised on misuse of putconn; the policy layer overrides it with its PoolError.
    misuse_error: type = ValueError

    def _core_setup(self, capacity: int, lifo: bool = True) -> None:
        self._lock = _original.allocate_lock()
        self._cap = 0
        self._state: List[int] = []
        self._conns: List[Any] = []
        self._wrefs: List[Any] = []
        self._expiry: List[float] = []
        self._last_used: List[float] = []
        self._checkout: List[float] = []
        self._gen: List[int] = []
        self._keys: List[int] = []  # id() of each slot's connection, the key of _slot_of
        self._holder: List[int] = []  # token of the wrapper holding the borrow (0: none)
        self._leases = 0  # last token handed out by _hold
        self._free: List[int] = []
        self._fhead = 0
        self._nfree = 0
        self._slot_of: dict = {}
        self._waiters: deque = deque()
        self._dead: deque = deque()
        self._lifo = bool(lifo)
        self._max = 0
        self._size = 0
        self._nconnecting = 0
        self._nwaiting = 0
        self._closed = True  # until _open_core()
        self._ticks = TICK_EVERY
        self._generation = 0
        # Policy knobs (set by the policy layer).
        self._check_after = INF  # idle seconds after which _vet() runs at checkout
        self._probes: tuple = ()  # ((attr, expected, is_call), ...) all must hold for a fast return
        self._alive_attr: Optional[str] = None  # attribute that must be falsy at checkout ("closed")
        self._always_slow = False  # every return goes through _on_return (e.g. reset="discard")
        self._track = False  # call _on_checkout(slot) after every checkout
        self._slot_attr: Optional[str] = None  # see _core_set_slot_attr
        self._wait_hook: Optional[Callable[[float], None]] = None  # see _core_set_timers
        self._use_hook: Optional[Callable[[float], None]] = None
        self._grow_limit = 2**31 - 1  # see _core_set_grow_limit
        # Counters.
        self._requests_num = 0
        self._requests_queued = 0
        self._returns_bad = 0
        self._connections_lost = 0
        self._connections_reclaimed = 0
        self._usage = 0.0
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

    def _core_set_timers(
        self, wait_hook: Optional[Callable[[float], None]], use_hook: Optional[Callable[[float], None]]
    ) -> None:
        """Opt-in per-event timings; see the compiled core's docstring."""
        self._wait_hook = wait_hook
        self._use_hook = use_hook

    def _core_set_type(self, cls: Optional[type]) -> None:
        """The compiled core pre-resolves probes on this class; the twin needs nothing."""

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

    # -- clock ---------------------------------------------------------------------------------
    @staticmethod
    def _now() -> float:
        return now()

    # -- free list (call with the lock held) ---------------------------------------------------
    def _push_free(self, slot: int) -> None:
        self._free[(self._fhead + self._nfree) % self._cap] = slot
        self._nfree += 1

    def _pop_free(self) -> int:
        if not self._nfree:
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

    def _grow_capacity(self, capacity: int) -> None:
        if capacity <= self._cap:
            return
        order = self._free_list()
        extra = capacity - self._cap
        self._state += [EMPTY] * extra
        self._conns += [None] * extra
        self._wrefs += [None] * extra
        self._expiry += [INF] * extra
        self._last_used += [0.0] * extra
        self._checkout += [0.0] * extra
        self._gen += [0] * extra
        self._keys += [0] * extra
        self._holder += [0] * extra
        self._free = [0] * capacity
        self._cap = capacity
        self._set_free_list(order)

    # -- identity ------------------------------------------------------------------------------
    def _holds(self, slot: int, conn: Any) -> bool:
        c = self._conns[slot]
        if c is None and self._wrefs[slot] is not None:
            c = self._wrefs[slot]()
        return c is conn

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
        spent = [0.0]
        hook = self._wait_hook  # read once: another thread may (un)subscribe meanwhile
        t0 = now() if hook is not None else 0.0
        conn = self._try_get(timeout, spent)
        if conn is None:
            conn = self._on_miss(timeout, spent[0])  # the policy reports the waits it serves
        elif hook is not None:
            hook(now() - t0)
        return conn

    def _try_get(self, timeout: Optional[float] = None, spent: Optional[List[float]] = None) -> Any:
        """An idle, vetted connection now (IN_USE), or None. Health checks spend the caller's
        time: they stop at its deadline, and ``spent[0]`` says how much of it is gone."""
        start = budget = None
        while True:
            vet = dead = False
            with self._lock:
                slot = -1 if self._closed else self._pop_free()
                if slot < 0:
                    break
                t = now()
                if start is None:
                    start = t
                conn = self._conns[slot]
                if self._alive_attr is not None and getattr(conn, self._alive_attr):
                    dead = True
                    self._connections_lost += 1
                idle = t - self._last_used[slot]
                if dead or t >= self._expiry[slot]:
                    self._state[slot] = RESERVED
                elif idle >= self._check_after:
                    self._state[slot] = RESERVED
                    vet = True
                else:
                    self._checkout_locked(slot, t)
                    if not self._track:
                        return conn
            if vet:
                # Outside the lock: the slot is RESERVED, so it is ours alone.
                if budget is None:
                    budget = timeout if timeout is not None else self._default_timeout()
                remaining = start + budget - t
                if remaining <= 0:
                    # The caller's time is up: put this one back, untested and still idle.
                    with self._lock:
                        w = None if self._closed else self._restore_locked(slot, self._last_used[slot])
                        closed = self._closed
                    if closed:
                        self._retire(slot, conn)
                    elif w is not None:
                        w.wake()
                    break
                try:
                    ok = self._vet(conn, idle, remaining)
                except BaseException:
                    self._abandon(slot, conn)  # interrupted (KeyboardInterrupt, greenlet kill)
                    raise
                if not ok:
                    with self._lock:
                        self._connections_lost += 1
                    self._retire(slot, conn)
                    continue
                with self._lock:
                    self._checkout_locked(slot, now())
            elif self._state[slot] == RESERVED:
                self._retire(slot, conn)  # dead or past its lifetime
                continue
            if self._track:
                self._on_checkout(slot)
            return conn
        if spent is not None and start is not None:
            spent[0] = now() - start
        return None

    def _checkout_locked(self, slot: int, t: float) -> None:
        self._state[slot] = IN_USE
        self._checkout[slot] = t
        if self._wrefs[slot] is not None:
            # Keep only the weak reference while borrowed: a borrower that drops the
            # connection lets the weakref callback reclaim the slot.
            self._conns[slot] = None

    # -- return: the fast path -----------------------------------------------------------------
    def putconn(self, conn: Any) -> None:
        """Return a connection: straight to the first waiter or the free list when it is clean."""
        if self._dead:
            self._drain_dead()
        with self._lock:
            slot = self._borrowed_slot_locked(conn)
            if self._holder[slot]:
                raise self.misuse_error(
                    "putconn(): this connection is held by `with pool.connection()`, a "
                    "fastpool.connect() connection or a Django connection; end or close that instead"
                )
            slow, used = self._put_locked(slot, conn)
        self._put(slot, conn, slow, used)

    def _putconn_held(self, conn: Any, token: int) -> None:
        """Return a connection taken with :meth:`_hold` (by the holder of ``token`` only)."""
        if self._dead:
            self._drain_dead()
        with self._lock:
            slot = self._borrowed_slot_locked(conn)
            if token <= 0 or self._holder[slot] != token:
                raise self.misuse_error("putconn(): this connection was already returned to the pool")
            self._holder[slot] = 0
            slow, used = self._put_locked(slot, conn)
        self._put(slot, conn, slow, used)

    def _hold(self, conn: Any) -> int:
        """Mark a connection the caller just borrowed as held by one wrapper: returns the token
        that :meth:`_putconn_held` needs; a bare ``putconn`` of it raises until then."""
        with self._lock:
            slot = self._borrowed_slot_locked(conn)
            if self._holder[slot]:
                raise self.misuse_error("this connection is already held by another wrapper")
            self._leases += 1
            self._holder[slot] = self._leases
            return self._leases

    def _borrowed_slot_locked(self, conn: Any) -> int:
        slot = -1
        if self._slot_attr is not None:
            hint = getattr(conn, self._slot_attr, None)  # a hint; identity decides below
            if isinstance(hint, int) and 0 <= hint < self._cap:
                slot = hint
        if slot < 0:
            slot = self._slot_of.get(id(conn), -1)
        if slot < 0 or not self._holds(slot, conn):
            raise self.misuse_error("putconn(): this connection does not belong to this pool")
        if self._state[slot] != IN_USE:
            raise self.misuse_error("putconn(): this connection was already returned to the pool")
        return slot

    def _put_locked(self, slot: int, conn: Any) -> Tuple[bool, float]:
        """IN_USE -> RESERVED: from here the slot is ours until restored or released. Returns
        (must take the slow path whatever the probes say, seconds the connection was used)."""
        self._state[slot] = RESERVED
        self._conns[slot] = conn
        t = now()
        used = t - self._checkout[slot]
        self._usage += used
        return (
            self._always_slow
            or self._closed
            or t >= self._expiry[slot]
            or self._gen[slot] != self._generation
            or self._size > self._max
        ), used

    def _put(self, slot: int, conn: Any, slow: bool, used: float) -> None:
        """The rest of a return, on a RESERVED slot: probes, then restore or the slow path."""
        if not slow:
            try:
                for name, expected, is_call in self._probes:
                    value = getattr(conn, name)
                    if is_call:
                        value = value()
                    if value != expected:
                        slow = True
                        break
            except Exception:
                slow = True  # a probe that fails says the connection is not clean
        try:
            if slow:
                self._on_return(slot, conn)
            elif not self._restore(slot):
                self._retire(slot, conn)
        except BaseException:
            self._abandon(slot, conn)
            raise
        hook = self._use_hook
        if hook is not None:
            hook(used)

    # -- transitions used by the policy layer --------------------------------------------------
    def _restore(self, slot: int) -> bool:
        """RESERVED -> handed to the first live waiter, or IDLE on the free list.
        False (slot stays RESERVED) if the pool is closed: the caller must retire it."""
        with self._lock:
            if self._closed:
                return False
            w = self._restore_locked(slot, now())
        if w is not None:
            w.wake()
        return True

    def _restore_locked(self, slot: int, t: float) -> Optional[Waiter]:
        self._last_used[slot] = t
        while self._waiters:
            w = self._waiters.popleft()
            if w.state != WAITING:
                continue  # cancelled or closed: lazily dropped here
            w.state = HANDED
            w.conn = self._conns[slot]
            w.idle = now() - t  # > 0 only when restored untested (see _try_get)
            self._nwaiting -= 1
            self._checkout_locked(slot, t)
            return w
        self._state[slot] = IDLE
        self._push_free(slot)
        return None

    def _release(self, slot: int) -> None:
        """RESERVED -> EMPTY: the policy closed (or lost) this slot's connection."""
        with self._lock:
            self._forget_locked(slot)
            grow = self._grow_slots_locked()
        self._dispatch_grow(grow)

    def _forget_locked(self, slot: int) -> None:
        # Only our own entry: after a reclaim, a new connection may live at the same address.
        if self._slot_of.get(self._keys[slot], -1) == slot:
            del self._slot_of[self._keys[slot]]
        self._keys[slot] = 0
        self._holder[slot] = 0
        self._state[slot] = EMPTY
        self._conns[slot] = None
        self._wrefs[slot] = None
        self._expiry[slot] = INF
        self._size -= 1

    def _abandon(self, slot: int, conn: Any) -> None:
        """A policy hook raised (even KeyboardInterrupt or GreenletExit) while the slot was ours:
        close the connection and free the slot, so an interrupted caller never strands it."""
        try:
            self._retire(slot, conn)
        except BaseException:
            pass
        with self._lock:
            if self._state[slot] == RESERVED and self._holds(slot, conn):
                self._forget_locked(slot)

    def _dispatch_grow(self, slots: List[int]) -> None:
        """Hand reserved CONNECTING slots to the policy; if interrupted, the slots not yet handed
        over go back to EMPTY instead of staying reserved for ever."""
        i = 0
        try:
            for i, s in enumerate(slots):
                self._grow(s)
        except BaseException:
            for s in slots[i:]:
                self._fill_failed(s)
            raise

    def _reserve(self) -> int:
        """EMPTY -> CONNECTING if there is room; returns the slot or -1."""
        with self._lock:
            return self._reserve_locked()

    def _reserve_locked(self) -> int:
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

    def _grow_slots_locked(self) -> List[int]:
        """Reserve one CONNECTING slot per waiter not yet covered by a connection being made,
        with at most ``grow_limit`` connections being made at once (see _core_set_grow_limit)."""
        slots = []
        while (
            self._nwaiting > self._nconnecting
            and self._nconnecting < self._grow_limit
            and self._size < self._max
            and not self._closed
        ):
            s = self._reserve_locked()
            if s < 0:
                break
            slots.append(s)
        return slots

    def _fill(self, slot: int, conn: Any, expiry: float) -> Optional[bool]:
        """CONNECTING -> IDLE (or straight to a waiter) with a new connection.
        False if the pool closed meanwhile: the slot is freed and the caller closes ``conn``.
        None if drain() ran since the attempt started: the caller closes ``conn`` and connects
        again; the slot stays CONNECTING, now in the current generation."""
        try:
            wref = weakref.ref(conn, self._make_dead_cb(slot))
        except TypeError:
            wref = None  # not weak-referenceable: no reclaim for this connection type
        with self._lock:
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
            self._slot_of[id(conn)] = slot
            self._keys[slot] = id(conn)
            if self._slot_attr is not None:
                try:
                    setattr(conn, self._slot_attr, slot)
                except (AttributeError, TypeError):
                    pass  # the address map still works
            w = self._restore_locked(slot, now())
            if w is not None:
                w.idle = -1.0  # new: the policy checked it when it made it, if it checks new ones
            # One connect in flight has ended: if waiters are still uncovered, the next starts.
            grow = self._grow_slots_locked()
        if w is not None:
            w.wake()
        self._dispatch_grow(grow)
        return True

    def _unborrow(self, slot: int, conn: Any) -> bool:
        """IN_USE -> RESERVED for the policy (a handed-over connection that failed its check):
        the caller retires it. False if the slot does not hold ``conn`` in use."""
        with self._lock:
            if self._state[slot] != IN_USE or not self._holds(slot, conn) or self._holder[slot]:
                return False
            self._state[slot] = RESERVED
            self._conns[slot] = conn
            return True

    def _fill_failed(self, slot: int) -> None:
        """CONNECTING -> EMPTY after a failed connection attempt (the policy decides on retries)."""
        with self._lock:
            if self._state[slot] != CONNECTING:
                return
            self._nconnecting -= 1
            self._state[slot] = EMPTY
            self._size -= 1

    def _make_dead_cb(self, slot: int) -> Callable[[Any], None]:
        dead = self._dead

        def dead_cb(ref: Any, slot: int = slot) -> None:
            # Runs at an arbitrary point (GC): only record it; _drain_dead does the transition.
            dead.append((slot, ref))

        return dead_cb

    def _drain_dead(self) -> int:
        """Reclaim IN_USE slots whose connection was garbage-collected without being returned."""
        n = 0
        grow: List[int] = []
        while self._dead:
            slot, ref = self._dead.popleft()
            with self._lock:
                if self._wrefs[slot] is not ref or self._state[slot] != IN_USE:
                    continue
                self._usage += now() - self._checkout[slot]
                self._forget_locked(slot)
                self._connections_reclaimed += 1
                n += 1
                grow += self._grow_slots_locked()
            self._on_reclaim(slot)
        self._dispatch_grow(grow)
        return n

    def _enqueue(self, w: Waiter, max_waiting: int) -> int:
        """Queue a waiter: ENQUEUED, RETRY (a connection became free meanwhile), FULL, or
        CLOSED_POOL (closed since the caller last looked)."""
        with self._lock:
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
            grow = self._grow_slots_locked()
        self._dispatch_grow(grow)
        return ENQUEUED

    def _claim(self, w: Waiter) -> Any:
        """Finish a waiter exactly once: its connection if it was handed one, else None."""
        with self._lock:
            if w.state == HANDED:
                w.state = DONE
                conn, w.conn = w.conn, None
                return conn
            if w.state == WAITING:
                w.state = CANCELLED
                self._nwaiting -= 1
                if len(self._waiters) > 2 * self._nwaiting + COMPACT_SLACK:
                    # Cancelled waiters are normally dropped lazily by the next handoff; with
                    # the pool exhausted no handoff comes, so drop them here (amortised O(1):
                    # at least half the queue goes), or timed-out waiters pile up without bound.
                    self._waiters = deque(x for x in self._waiters if x.state == WAITING)
            return None

    def _take_idle(self, expired_at: float, idle_before: float, keep: int) -> List[Tuple[int, Any]]:
        """IDLE -> RESERVED for the policy: connections expired at ``expired_at``, and the
        longest-idle ones used before ``idle_before`` while more than ``keep`` remain."""
        taken = []
        with self._lock:
            kept = []
            size = self._size
            for slot in self._free_list():  # oldest first
                if self._expiry[slot] <= expired_at or (
                    self._last_used[slot] <= idle_before and size > keep
                ):
                    self._state[slot] = RESERVED
                    taken.append((slot, self._conns[slot]))
                    size -= 1
                else:
                    kept.append(slot)
            self._set_free_list(kept)
        return taken

    def _slot_current(self, slot: int) -> bool:
        """Whether a RESERVED slot's connection may go back: same generation, within its
        lifetime, and the pool not above max_size."""
        with self._lock:
            return (
                self._gen[slot] == self._generation
                and now() < self._expiry[slot]
                and self._size <= self._max
            )

    def _slot_for(self, conn: Any) -> int:
        return self._slot_of.get(id(conn), -1)

    def _count_lost(self) -> None:
        with self._lock:
            self._connections_lost += 1

    def _take_all_idle(self) -> List[Tuple[int, Any]]:
        return self._take_idle(INF, INF, 0)

    def _in_use_since(self, before: float) -> List[int]:
        """Slots borrowed before ``before`` (leak detection)."""
        with self._lock:
            return [s for s in range(self._cap) if self._state[s] == IN_USE and self._checkout[s] <= before]

    def _close_core(self) -> List[Waiter]:
        """Mark closed and fail every waiter; returns the waiters to wake."""
        with self._lock:
            self._closed = True
            return self._end_waiters(CLOSED)

    def _fail_waiters(self) -> List[Waiter]:
        """Fail every waiter (the policy knows no connection can be made for them); returns the
        waiters to wake. The pool stays open; later getconn calls queue as usual."""
        with self._lock:
            return self._end_waiters(FAILED)

    def _end_waiters(self, state: int) -> List[Waiter]:
        # Caller holds self._lock. Every live waiter ends in ``state`` (CLOSED or FAILED);
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
        with self._lock:
            self._grow_capacity(max_size)
            self._max = max_size
            grow = self._grow_slots_locked()
        self._dispatch_grow(grow)

    def _bump_generation(self) -> None:
        with self._lock:
            self._generation += 1

    def _reset_after_fork(self) -> List[Any]:
        """In a forked child: forget every inherited connection (returned for the policy to
        neutralise, never to close) and start empty."""
        inherited = [c for c in self._conns if c is not None]
        for r in self._wrefs:
            c = r() if r is not None else None
            if c is not None and all(c is not x for x in inherited):
                inherited.append(c)
        self._lock = _original.allocate_lock()
        cap, lifo = self._cap, self._lifo
        self._cap = 0
        self._state, self._conns, self._wrefs, self._holder = [], [], [], []
        self._expiry, self._last_used, self._checkout, self._gen, self._keys = [], [], [], [], []
        self._slot_of = {}
        self._waiters = deque()
        self._dead.clear()
        self._fhead = self._nfree = 0
        self._size = self._nconnecting = self._nwaiting = 0
        self._lifo = lifo
        self._grow_capacity(cap)
        return inherited

    # -- introspection -------------------------------------------------------------------------
    def _counts(self) -> dict:
        with self._lock:
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
        with self._lock:
            self._requests_num = self._requests_queued = self._returns_bad = 0
            self._connections_lost = self._connections_reclaimed = 0
            self._usage = 0.0

    def _count_bad_return(self) -> None:
        with self._lock:
            self._returns_bad += 1

    def _slot_states(self) -> List[int]:
        with self._lock:
            return list(self._state)

    def _check_invariants(self) -> None:
        """Raise AssertionError if the ring's invariants do not hold (tests call this)."""
        with self._lock:
            free = self._free_list()
            assert len(free) == len(set(free)), "a slot is on the free list twice"
            idle = [s for s in range(self._cap) if self._state[s] == IDLE]
            assert sorted(free) == sorted(idle), f"free list {free} != IDLE slots {idle}"
            assert self._size == sum(1 for s in self._state if s != EMPTY), "size mismatch"
            assert self._nconnecting == sum(1 for s in self._state if s == CONNECTING)
            assert self._nwaiting == sum(1 for w in self._waiters if w.state == WAITING)

    # -- policy hooks (overridden by fastpool.pool) --------------------------------------------
    def _on_miss(self, timeout: Optional[float], spent: float) -> Any:  # pragma: no cover - policy
        raise NotImplementedError

    def _default_timeout(self) -> float:
        return 30.0

    def _on_return(self, slot: int, conn: Any) -> None:  # pragma: no cover - policy
        raise NotImplementedError

    def _vet(self, conn: Any, idle: float, remaining: float) -> bool:
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
