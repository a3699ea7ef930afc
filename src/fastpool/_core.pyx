# cython: language_level=3
"""The compiled ring: slots, states, free list, handoff queue, clock, counters.

Same algorithm, states and invariants as the pure-Python twin ``_core_py`` (read its docstring);
this file only differs in how a transition is made atomic.

Atomicity. Every transition below is a run of C statements that calls no Python code and
releases nothing, so under the GIL no other thread or greenlet can observe or interleave with
it: no lock is taken on the fast path. Python code (probes, the policy's hooks, waking a
waiter, dropping a reference that could run a destructor) is only ever called *between*
transitions, on a slot the caller owns (IN_USE or RESERVED). The states stay explicit so the
same invariants could be kept with C atomics on a free-threaded CPython.

Misuse fails loudly: ``putconn`` of a foreign or already-returned connection raises
``self.misuse_error`` and changes nothing. Held borrows (``_hold``/``_putconn_held``): see the
twin's docstring.
"""

from cpython.mem cimport PyMem_Realloc, PyMem_Free
from cpython.object cimport PyObject_RichCompareBool, Py_EQ
from cpython.ref cimport PyObject
from cpython.weakref cimport PyWeakref_GetObject

cdef extern from "Python.h":
    # 3.9+: calls obj.name() without materialising a bound-method object.
    object PyObject_CallMethodNoArgs(object obj, object name)
    object PyObject_CallOneArg(object func, object arg)

cdef extern from *:
    """
    #include "structmember.h"

    /* descr.__get__(obj, type(obj)) straight through the slot: no MRO walk, no dict probe.
       Only called for an obj whose type is exactly the class descr was resolved on (checked by
       the caller), so a member's own type check (a subtype walk) is skipped: its value is read
       at its offset. */
    static PyObject *fastpool_descr_get(PyObject *descr, PyObject *obj) {
        if (Py_TYPE(descr) == &PyMemberDescr_Type) {
            PyMemberDef *m = ((PyMemberDescrObject *)descr)->d_member;
            char *addr = (char *)obj + m->offset;
            if (!(m->flags & READ_RESTRICTED)) {
                PyObject *v;
                switch (m->type) {
                case T_OBJECT_EX:
                    v = *(PyObject **)addr;
                    if (v != NULL) { Py_INCREF(v); return v; }
                    break;  /* unset: the generic path raises AttributeError */
                case T_OBJECT:
                    v = *(PyObject **)addr;
                    if (v == NULL) v = Py_None;
                    Py_INCREF(v);
                    return v;
                case T_INT:
                    return PyLong_FromLong(*(int *)addr);
                case T_LONG:
                    return PyLong_FromLong(*(long *)addr);
                }
            }
        }
        descrgetfunc f = Py_TYPE(descr)->tp_descr_get;
        return f(descr, obj, (PyObject *)Py_TYPE(obj));
    }

    /* fn(obj) for a probe method; a C method without arguments (psycopg2's
       get_transaction_status) is called straight, its receiver's type being exact (see above). */
    static PyObject *fastpool_call_probe(PyObject *fn, PyObject *obj) {
        if (Py_TYPE(fn) == &PyMethodDescr_Type) {
            PyMethodDef *m = ((PyMethodDescrObject *)fn)->d_method;
            if ((m->ml_flags & (METH_VARARGS | METH_KEYWORDS | METH_NOARGS | METH_O
                                | METH_FASTCALL | METH_METHOD | METH_CLASS | METH_STATIC))
                    == METH_NOARGS)
                return m->ml_meth(obj, NULL);
        }
        return PyObject_CallOneArg(fn, obj);
    }

    /* All pre-resolved probes ((descriptor or function, expected, is_call), ...) hold for conn?
       1 yes, 0 no, -1 error. Borrowed references throughout: this runs on every clean return,
       so the per-probe cost is a slot call and a pointer compare. An empty list expected (a
       message box that must be empty) is a size test, not a rich comparison. */
    static int fastpool_probes_hold(PyObject *probes, PyObject *conn) {
        Py_ssize_t i, n = PyTuple_GET_SIZE(probes);
        for (i = 0; i < n; i++) {
            PyObject *p = PyTuple_GET_ITEM(probes, i);
            PyObject *fn = PyTuple_GET_ITEM(p, 0), *expected = PyTuple_GET_ITEM(p, 1);
            PyObject *value;
            int ok;
            if (PyTuple_GET_ITEM(p, 2) == Py_True)
                value = fastpool_call_probe(fn, conn);
            else
                value = fastpool_descr_get(fn, conn);
            if (value == NULL)
                return -1;
            if (value == expected)
                ok = 1;
            else if (PyList_CheckExact(value) && PyList_CheckExact(expected)
                     && PyList_GET_SIZE(expected) == 0)
                ok = PyList_GET_SIZE(value) == 0;
            else
                ok = PyObject_RichCompareBool(value, expected, Py_EQ);
            Py_DECREF(value);
            if (ok != 1)
                return ok;
        }
        return 1;
    }
    """
    object fastpool_descr_get(object descr, object obj)
    int fastpool_probes_hold(object probes, object conn) except -1
from libc.math cimport INFINITY
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

import weakref
from collections import deque

#: getconn calls between two _on_tick() policy calls: the policy gets a cheap periodic look at
#: the world (e.g. monkey-patching that happened after the pool was made) off the hot path.
DEF TICK_EVERY = 1024
#: cancelled waiters tolerated in the queue beyond twice the live ones before it is compacted.
DEF COMPACT_SLACK = 64


cdef inline double _clock() noexcept nogil:
    # CLOCK_MONOTONIC is what time.monotonic() reads on Linux, so core and policy times compare.
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


cdef class Waiter:
    """One blocked getconn. ``wake`` is the policy's primitive (thread lock or greenlet)."""

    def __init__(self, wake):
        self.state = WAITING
        self.conn = None
        self.wake = wake
        self.idle = 0.0  # see the twin's Waiter.idle


cdef class _DeadCallback:
    """Weakref callback: records that a borrowed connection died (runs at arbitrary points)."""
    cdef object dead
    cdef int slot

    def __init__(self, dead, int slot):
        self.dead = dead
        self.slot = slot

    def __call__(self, ref):
        self.dead.append((self.slot, ref))


cdef class Core:
    """Slots, states, free list, waiter queue, clock and counters. No policy, no PostgreSQL."""

    misuse_error = ValueError

    def __cinit__(self, *args, **kwargs):
        self._cap = 0
        self._state = NULL
        self._expiry = NULL
        self._last_used = NULL
        self._checkout = NULL
        self._gen = NULL
        self._keys = NULL
        self._holder = NULL
        self._leases = 0
        self._free = NULL
        self._conns = []
        self._wrefs = []
        self._slot_of = {}
        self._waiters = deque()
        self._dead = deque()
        self._closed = True
        self._ticks = TICK_EVERY
        self._check_after = INFINITY
        self._probes = ()
        self._alive_attr = None
        self._grow_limit = 2147483647  # see _core_set_grow_limit

    def __dealloc__(self):
        PyMem_Free(self._state)
        PyMem_Free(self._expiry)
        PyMem_Free(self._last_used)
        PyMem_Free(self._checkout)
        PyMem_Free(self._gen)
        PyMem_Free(self._keys)
        PyMem_Free(self._holder)
        PyMem_Free(self._free)

    def _core_setup(self, int capacity, lifo=True):
        self._lifo = bool(lifo)
        self._grow_capacity(capacity)
        self._max = capacity

    def _core_configure(self, double check_after, tuple probes, alive_attr, always_slow, track):
        self._check_after = check_after
        self._probes = probes
        self._alive_attr = alive_attr
        self._always_slow = bool(always_slow)
        self._track = bool(track)
        self._fast_type = None  # probes changed: _core_set_type() must resolve them again
        self._fast_probes = None
        self._fast_alive = None

    def _core_set_timers(self, wait_hook, use_hook):
        """Opt-in per-event timings (None: off, the default; then each costs one pointer
        compare). ``wait_hook(seconds)`` after a checkout served without queueing (the policy
        reports queued ones), ``use_hook(seconds)`` after each return: borrowed time. Both run
        on the caller's thread after the slot is settled and must not raise."""
        self._wait_hook = wait_hook
        self._use_hook = use_hook

    def _core_set_type(self, cls):
        """All connections are expected to be of class ``cls`` (None: no expectation). For
        objects of exactly that class, the probes and the alive check use descriptors resolved
        once on ``cls`` instead of a full attribute lookup per call; any other object still
        gets the generic lookups, so a stray type is only slower, never wrong."""
        cdef list fast = []
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

    def _core_set_slot_attr(self, name):
        """Connections have a writable attribute ``name`` (None: they do not): the ring stores
        each one's slot number there, so putconn finds it without the address map."""
        self._slot_attr = name

    def _core_set_grow_limit(self, int limit):
        """Waiters make the ring reserve connections only while fewer than ``limit`` are being
        made; each one made (``_fill``) re-checks. A policy knob: how fast demand grows the pool."""
        self._grow_limit = limit

    def _open_core(self):
        self._closed = False

    def _core_closed(self):
        return self._closed

    @staticmethod
    def _now():
        return _clock()

    # -- storage -------------------------------------------------------------------------------
    cdef int _grow_capacity(self, int capacity) except -1:
        cdef int i, old = self._cap
        cdef list order
        if capacity <= old:
            return 0
        order = self._free_list()
        # Realloc every array first; only then publish the new capacity.
        self._state = <int *>_realloc(self._state, capacity * sizeof(int))
        self._expiry = <double *>_realloc(self._expiry, capacity * sizeof(double))
        self._last_used = <double *>_realloc(self._last_used, capacity * sizeof(double))
        self._checkout = <double *>_realloc(self._checkout, capacity * sizeof(double))
        self._gen = <long *>_realloc(self._gen, capacity * sizeof(long))
        self._keys = <Py_ssize_t *>_realloc(self._keys, capacity * sizeof(Py_ssize_t))
        self._holder = <long *>_realloc(self._holder, capacity * sizeof(long))
        self._free = <int *>_realloc(self._free, capacity * sizeof(int))
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

    # -- free list -----------------------------------------------------------------------------
    cdef inline void _push_free(self, int slot):
        self._free[(self._fhead + self._nfree) % self._cap] = slot
        self._nfree += 1

    cdef inline int _pop_free(self):
        cdef int slot
        if self._nfree == 0:
            return -1
        self._nfree -= 1
        if self._lifo:
            return self._free[(self._fhead + self._nfree) % self._cap]
        slot = self._free[self._fhead]
        self._fhead = (self._fhead + 1) % self._cap
        return slot

    cdef list _free_list(self):
        cdef int i
        return [self._free[(self._fhead + i) % self._cap] for i in range(self._nfree)]

    cdef void _set_free_list(self, list slots):
        cdef int s
        self._fhead = 0
        self._nfree = 0
        for s in slots:
            self._push_free(s)

    # -- identity ------------------------------------------------------------------------------
    cdef object _held(self, int slot):
        cdef PyObject *p
        c = self._conns[slot]
        if c is None:
            r = self._wrefs[slot]
            if r is not None:
                p = PyWeakref_GetObject(r)  # borrowed; Py_None once the referent is gone
                c = <object>p
        return c

    # -- hand-out: the fast path ---------------------------------------------------------------
    def getconn(self, timeout=None):
        """Take an idle connection, or block via the policy's ``_on_miss`` until one is handed over."""
        if timeout is not None and not timeout > 0:
            raise ValueError(f"getconn(): timeout must be a positive number of seconds, not {timeout!r}")
        self._requests_num += 1
        self._ticks -= 1
        if self._ticks <= 0:
            self._ticks = TICK_EVERY
            self._on_tick()
        cdef double spent = 0.0, t0 = 0.0
        # Another thread may (un)subscribe while _try_get_c runs Python code: call the hook only
        # if t0 was taken and it is still set (a C bint, not a local object: no refcounting).
        cdef bint timed = self._wait_hook is not None
        if timed:
            t0 = _clock()
        conn = self._try_get_c(timeout, &spent)
        if conn is None:
            conn = self._on_miss(timeout, spent)  # the policy reports the waits it serves
        elif timed and self._wait_hook is not None:
            self._wait_hook(_clock() - t0)
        return conn

    def _try_get(self, timeout=None):
        """An idle, vetted connection now (IN_USE), or None."""
        cdef double spent = 0.0
        return self._try_get_c(timeout, &spent)

    cdef object _try_get_c(self, object timeout, double *spent):
        # Health checks spend the caller's time: they stop at its deadline (start + timeout, or
        # the pool's default), and ``spent`` tells _on_miss how much of it is gone.
        cdef int slot
        cdef double t, idle, start = -1.0, budget = -1.0, remaining
        cdef bint dead
        while True:
            if self._closed:
                break
            slot = self._pop_free()
            if slot < 0:
                break
            # Transition IDLE -> RESERVED: the slot is ours; Python may run from here on.
            self._state[slot] = RESERVED
            t = _clock()
            if start < 0:
                start = t
            conn = self._conns[slot]
            if self._fast_alive is not None and type(conn) is self._fast_type:
                dead = bool(fastpool_descr_get(self._fast_alive, conn))
            else:
                dead = self._alive_attr is not None and bool(getattr(conn, self._alive_attr))
            if dead or t >= self._expiry[slot]:
                if dead:
                    self._connections_lost += 1
                self._retire(slot, conn)
                continue
            idle = t - self._last_used[slot]
            if idle >= self._check_after:
                if budget < 0:
                    budget = timeout if timeout is not None else self._default_timeout()
                remaining = start + budget - t
                if remaining <= 0:
                    # The caller's time is up: put this one back, untested and still idle.
                    if self._closed:
                        self._retire(slot, conn)
                    else:
                        w = self._restore_slot(slot, self._last_used[slot])
                        if w is not None:
                            w.wake()
                    break
                try:
                    ok = self._vet(conn, idle, remaining)
                except BaseException:
                    self._abandon(slot, conn)  # interrupted (KeyboardInterrupt, greenlet kill)
                    raise
                if not ok:
                    self._connections_lost += 1
                    self._retire(slot, conn)
                    continue
                t = _clock()
            self._checkout_slot(slot, t)
            if self._track:
                self._on_checkout(slot)
            return conn
        if start >= 0:
            spent[0] = _clock() - start
        return None

    cdef inline void _checkout_slot(self, int slot, double t):
        self._state[slot] = IN_USE
        self._checkout[slot] = t
        if self._wrefs[slot] is not None:
            # Keep only the weak reference while borrowed: a borrower that drops the
            # connection lets the weakref callback reclaim the slot. The caller holds a
            # reference, so this never runs a destructor.
            self._conns[slot] = None

    # -- return: the fast path -----------------------------------------------------------------
    def putconn(self, conn):
        """Return a connection: straight to the first waiter or the free list when it is clean."""
        cdef int slot
        if self._dead:
            self._drain_dead()
        slot = self._borrowed_slot(conn)
        if self._holder[slot]:
            raise self.misuse_error(
                "putconn(): this connection is held by `with pool.connection()`, a "
                "fastpool.connect() connection or a Django connection; end or close that instead"
            )
        self._put(slot, conn)

    def _putconn_held(self, conn, long token):
        """Return a connection taken with ``_hold`` (by the holder of ``token`` only)."""
        cdef int slot
        if self._dead:
            self._drain_dead()
        slot = self._borrowed_slot(conn)
        if token <= 0 or self._holder[slot] != token:
            raise self.misuse_error("putconn(): this connection was already returned to the pool")
        self._holder[slot] = 0
        self._put(slot, conn)

    def _hold(self, conn):
        """Mark a connection the caller just borrowed as held by one wrapper: returns the token
        that ``_putconn_held`` needs; a bare ``putconn`` of it raises until then."""
        cdef int slot = self._borrowed_slot(conn)
        if self._holder[slot]:
            raise self.misuse_error("this connection is already held by another wrapper")
        self._leases += 1
        self._holder[slot] = self._leases
        return self._leases

    cdef int _borrowed_slot(self, object conn) except -1:
        # The slot of a borrowed (IN_USE) connection of this pool, or misuse_error.
        cdef int slot = -1
        if self._slot_attr is not None:
            # The pool's own connection class carries its slot number: an attribute read
            # instead of an address -> slot lookup (a PyLong and a dict probe). It is only a
            # hint: the identity check below still decides.
            hint = getattr(conn, self._slot_attr, None)
            if hint is not None:
                slot = hint
                if slot >= self._cap:
                    slot = -1
        if slot < 0:
            slot = self._slot_of.get(<Py_ssize_t><void *>conn, -1)
        if slot < 0 or self._held(slot) is not conn:
            raise self.misuse_error("putconn(): this connection does not belong to this pool")
        if self._state[slot] != IN_USE:
            raise self.misuse_error("putconn(): this connection was already returned to the pool")
        return slot

    cdef int _put(self, int slot, object conn) except -1:
        # The return proper; the caller checked that ``slot`` holds ``conn`` IN_USE and ran no
        # Python code since.
        cdef double t
        cdef bint slow
        cdef tuple probe
        cdef double used
        # Transition IN_USE -> RESERVED: from here the slot is ours until restored or released.
        self._state[slot] = RESERVED
        self._conns[slot] = conn
        t = _clock()
        used = t - self._checkout[slot]
        self._usage += used
        slow = (
            self._always_slow
            or self._closed
            or t >= self._expiry[slot]
            or self._gen[slot] != self._generation
            or self._size > self._max
        )
        if not slow:
            try:
                if type(conn) is self._fast_type:
                    # identity first: expected values are small ints, None, bools and []
                    slow = not fastpool_probes_hold(self._fast_probes, conn)
                else:
                    for probe in self._probes:
                        if probe[2]:
                            value = PyObject_CallMethodNoArgs(conn, probe[0])
                        else:
                            value = getattr(conn, <str>probe[0])
                        if value is not probe[1] and not PyObject_RichCompareBool(value, probe[1], Py_EQ):
                            slow = True
                            break
            except Exception:
                slow = True  # a probe that fails says the connection is not clean
        if slow or self._closed:
            # (closed: probes are Python code; close() may have run meanwhile and already
            # closed the idle connections, so this one must not go back on the free list.)
            try:
                if slow:
                    self._on_return(slot, conn)
                else:
                    self._retire(slot, conn)
            except BaseException:
                self._abandon(slot, conn)
                raise
        else:
            w = self._restore_slot(slot, t)
            if w is not None:
                w.wake()
        # (check and call are adjacent C statements: no other thread can unset it in between)
        if self._use_hook is not None:
            self._use_hook(used)
        return 0

    def _unborrow(self, int slot, conn):
        """IN_USE -> RESERVED for the policy (a handed-over connection that failed its check):
        the caller retires it. False if the slot does not hold ``conn`` in use."""
        if self._state[slot] != IN_USE or self._held(slot) is not conn or self._holder[slot]:
            return False
        self._state[slot] = RESERVED
        self._conns[slot] = conn
        return True

    # -- transitions used by the policy layer --------------------------------------------------
    def _restore(self, int slot):
        """RESERVED -> handed to the first live waiter, or IDLE on the free list.
        False (slot stays RESERVED) if the pool is closed: the caller must retire it."""
        if self._closed:
            return False
        w = self._restore_slot(slot, _clock())
        if w is not None:
            w.wake()
        return True

    cdef Waiter _restore_slot(self, int slot, double t):
        # Callers handle `closed` first (putconn routes a closed pool to _on_return).
        cdef Waiter w
        self._last_used[slot] = t
        while self._nwaiting:
            w = <Waiter>self._waiters.popleft()
            if w.state != WAITING:
                continue  # cancelled or closed: lazily dropped here
            w.state = HANDED
            w.conn = self._conns[slot]
            w.idle = _clock() - t  # > 0 only when restored untested (see _try_get_c)
            self._nwaiting -= 1
            self._checkout_slot(slot, t)
            return w
        # Cancelled waiters may remain queued behind nwaiting == 0; they are skipped later.
        self._state[slot] = IDLE
        self._push_free(slot)
        return None

    def _release(self, int slot):
        """RESERVED -> EMPTY: the policy closed (or lost) this slot's connection."""
        self._forget(slot)
        self._dispatch_grow(self._grow_slots())

    cdef void _abandon(self, int slot, object conn):
        # A policy hook raised (even KeyboardInterrupt or GreenletExit) while the slot was ours:
        # close the connection and free the slot, so an interrupted caller never strands it.
        try:
            self._retire(slot, conn)
        except BaseException:
            pass
        if self._state[slot] == RESERVED and self._held(slot) is conn:
            self._forget(slot)

    cdef int _dispatch_grow(self, list slots) except -1:
        # Hand each reserved CONNECTING slot to the policy; if that is interrupted, the slots
        # not yet handed over go back to EMPTY instead of staying reserved for ever.
        cdef Py_ssize_t i = 0, j
        try:
            for i in range(len(slots)):
                self._grow(slots[i])
        except BaseException:
            for j in range(i, len(slots)):
                self._unreserve(<int>slots[j])
            raise
        return 0

    cdef void _unreserve(self, int slot):
        if self._state[slot] == CONNECTING:
            self._nconnecting -= 1
            self._state[slot] = EMPTY
            self._size -= 1

    cdef void _forget(self, int slot):
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

    def _reserve(self):
        """EMPTY -> CONNECTING if there is room; returns the slot or -1."""
        return self._reserve_slot()

    cdef int _reserve_slot(self):
        cdef int slot
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

    cdef list _grow_slots(self):
        """Reserve one CONNECTING slot per waiter not yet covered by a connection being made,
        with at most ``grow_limit`` connections being made at once (see _core_set_grow_limit)."""
        cdef list slots = []
        cdef int s
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

    def _fill(self, int slot, conn, double expiry):
        """CONNECTING -> IDLE (or straight to a waiter) with a new connection.
        False if the pool closed meanwhile: the slot is freed and the caller closes ``conn``.
        None if drain() ran since the attempt started: the caller closes ``conn`` and connects
        again; the slot stays CONNECTING, now in the current generation."""
        # Keyed by address, not by the object: a key would be a strong reference and the
        # weakref-based reclaim of dropped connections could never fire. putconn re-checks
        # identity, so a reused address cannot be mistaken for ours.
        cdef Py_ssize_t key = <Py_ssize_t><void *>conn
        try:
            wref = weakref.ref(conn, _DeadCallback(self._dead, slot))
        except TypeError:
            wref = None  # not weak-referenceable: no reclaim for this connection type
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
        # One connect in flight has ended: if waiters are still uncovered, the next starts.
        grow = self._grow_slots()
        if w is not None:
            w.idle = -1.0  # new: the policy checked it when it made it, if it checks new ones
            w.wake()
        self._dispatch_grow(grow)
        return True

    def _fill_failed(self, int slot):
        """CONNECTING -> EMPTY after a failed connection attempt (the policy decides on retries)."""
        self._unreserve(slot)

    def _drain_dead(self):
        """Reclaim IN_USE slots whose connection was garbage-collected without being returned."""
        cdef int slot, n = 0
        cdef list grow = []
        while self._dead:
            slot, ref = self._dead.popleft()
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

    def _enqueue(self, Waiter w, int max_waiting):
        """Queue a waiter: ENQUEUED, RETRY (a connection became free meanwhile), FULL, or
        CLOSED_POOL (closed since the caller last looked)."""
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
        self._dispatch_grow(self._grow_slots())
        return ENQUEUED

    def _claim(self, Waiter w):
        """Finish a waiter exactly once: its connection if it was handed one, else None."""
        if w.state == HANDED:
            w.state = DONE
            conn = w.conn
            w.conn = None
            return conn
        if w.state == WAITING:
            w.state = CANCELLED
            self._nwaiting -= 1
            if len(self._waiters) > 2 * self._nwaiting + COMPACT_SLACK:
                # Cancelled waiters are normally dropped lazily by the next handoff; with the
                # pool exhausted no handoff comes, so drop them here (amortised O(1): at least
                # half the queue goes), or timed-out waiters pile up without bound.
                self._compact_waiters()
        return None

    cdef void _compact_waiters(self):
        cdef object live = deque()
        cdef Waiter x
        for x in self._waiters:
            if x.state == WAITING:
                live.append(x)
        self._waiters = live

    def _take_idle(self, double expired_at, double idle_before, int keep):
        """IDLE -> RESERVED for the policy: connections expired at ``expired_at``, and the
        longest-idle ones used before ``idle_before`` while more than ``keep`` remain."""
        cdef list taken = [], kept = []
        cdef int slot, size = self._size
        for slot in self._free_list():  # oldest first
            if self._expiry[slot] <= expired_at or (self._last_used[slot] <= idle_before and size > keep):
                self._state[slot] = RESERVED
                taken.append((slot, self._conns[slot]))
                size -= 1
            else:
                kept.append(slot)
        self._set_free_list(kept)
        return taken

    def _take_all_idle(self):
        return self._take_idle(INFINITY, INFINITY, 0)

    def _slot_current(self, int slot):
        """Whether a RESERVED slot's connection may go back: same generation, within its
        lifetime, and the pool not above max_size."""
        return (
            self._gen[slot] == self._generation
            and _clock() < self._expiry[slot]
            and self._size <= self._max
        )

    def _slot_for(self, conn):
        return self._slot_of.get(<Py_ssize_t><void *>conn, -1)

    def _count_lost(self):
        self._connections_lost += 1

    def _count_bad_return(self):
        self._returns_bad += 1

    def _in_use_since(self, double before):
        """Slots borrowed before ``before`` (leak detection)."""
        cdef int s
        return [s for s in range(self._cap) if self._state[s] == IN_USE and self._checkout[s] <= before]

    def _close_core(self):
        """Mark closed and fail every waiter; returns the waiters to wake."""
        self._closed = True
        return self._end_waiters(CLOSED)

    def _fail_waiters(self):
        """Fail every waiter (the policy knows no connection can be made for them); returns the
        waiters to wake. The pool stays open; later getconn calls queue as usual."""
        return self._end_waiters(FAILED)

    cdef list _end_waiters(self, int state):
        # Every live waiter ends in ``state`` (CLOSED or FAILED); cancelled leftovers are dropped.
        cdef Waiter w
        cdef list ended = []
        while self._waiters:
            w = <Waiter>self._waiters.popleft()
            if w.state == WAITING:
                w.state = state
                self._nwaiting -= 1
                ended.append(w)
        return ended

    def _set_max(self, int max_size):
        self._grow_capacity(max_size)
        self._max = max_size
        self._dispatch_grow(self._grow_slots())

    def _bump_generation(self):
        self._generation += 1

    def _reset_after_fork(self):
        """In a forked child: forget every inherited connection (returned for the policy to
        neutralise, never to close) and start empty."""
        cdef int i
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
    def _counts(self):
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

    def _reset_counters(self):
        self._requests_num = self._requests_queued = self._returns_bad = 0
        self._connections_lost = self._connections_reclaimed = 0
        self._usage = 0.0

    def _slot_states(self):
        cdef int i
        return [self._state[i] for i in range(self._cap)]

    def _check_invariants(self):
        """Raise AssertionError if the ring's invariants do not hold (tests call this)."""
        cdef int i
        free = self._free_list()
        assert len(free) == len(set(free)), "a slot is on the free list twice"
        idle = [i for i in range(self._cap) if self._state[i] == IDLE]
        assert sorted(free) == sorted(idle), f"free list {free} != IDLE slots {idle}"
        assert self._size == sum(1 for i in range(self._cap) if self._state[i] != EMPTY), "size mismatch"
        assert self._nconnecting == sum(1 for i in range(self._cap) if self._state[i] == CONNECTING)
        assert self._nwaiting == sum(1 for w in self._waiters if (<Waiter>w).state == WAITING)

    # -- policy hooks (overridden by fastpool.pool) --------------------------------------------
    def _on_miss(self, timeout, spent):
        raise NotImplementedError

    def _default_timeout(self):
        return 30.0

    def _on_return(self, slot, conn):
        raise NotImplementedError

    def _vet(self, conn, idle, remaining):
        return True

    def _retire(self, slot, conn):
        raise NotImplementedError

    def _grow(self, slot):
        raise NotImplementedError

    def _on_checkout(self, slot):
        pass

    def _on_reclaim(self, slot):
        pass

    def _on_tick(self):
        pass


def _data_descriptor(cls, name):
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


cdef void *_realloc(void *p, size_t n) except NULL:
    cdef void *q = PyMem_Realloc(p, n)
    if q == NULL:
        raise MemoryError()
    return q


# The C enums' numbers by name, for tests/test_core_ring.py::test_state_numbers_agree.
_C_STATES = {
    "EMPTY": EMPTY, "CONNECTING": CONNECTING, "IDLE": IDLE, "IN_USE": IN_USE, "RESERVED": RESERVED,
    "WAITING": WAITING, "HANDED": HANDED, "DONE": DONE, "CANCELLED": CANCELLED, "CLOSED": CLOSED,
    "FAILED": FAILED, "ENQUEUED": ENQUEUED, "RETRY": RETRY, "FULL": FULL, "CLOSED_POOL": CLOSED_POOL,
}
