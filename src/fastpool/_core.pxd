# C types for _core.py when Cython compiles it (pure-Python mode: this file augments the .py;
# the interpreter never reads it). The algorithm, the states and the atomicity argument are in
# _core.py; this file only says how each name is laid out in C.

cimport cython
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.object cimport PyObject
from cpython.pythread cimport PyThread_get_thread_ident
from cpython.weakref cimport PyWeakref_GetObject
from libc.math cimport INFINITY
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

# The numbers of fastpool/_states.py as C constants (folded into the code, no global lookup);
# tests/test_core_ring.py::test_state_numbers_agree checks they are the same numbers.
cdef enum SlotState:
    EMPTY = 0
    CONNECTING = 1
    IDLE = 2
    IN_USE = 3
    RESERVED = 4

cdef enum WaiterState:
    WAITING = 0
    HANDED = 1
    DONE = 2
    CANCELLED = 3
    CLOSED = 4
    FAILED = 5

cdef enum EnqueueResult:
    ENQUEUED = 0
    RETRY = 1
    FULL = 2
    CLOSED_POOL = 3

cdef enum Tuning:
    TICK_EVERY = 1024
    COMPACT_SLACK = 64


cdef inline double _clock() noexcept nogil:
    # CLOCK_MONOTONIC is what time.monotonic() reads on Linux, so core and policy times compare.
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


cdef inline unsigned long _thread_ident() noexcept:
    # the real thread id, what _thread.get_ident() returns, without a call through Python
    return PyThread_get_thread_ident()

cdef inline Py_ssize_t _address(object o) noexcept:
    # id(o) without making a Python int: the key of the address -> slot map.
    return <Py_ssize_t><void *>o


cdef inline void *_realloc(void *p, size_t n) except NULL:
    cdef void *q = PyMem_Realloc(p, n)
    if q == NULL:
        raise MemoryError()
    return q


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


cdef class Waiter:
    cdef public int state
    cdef public object conn
    cdef public object wake
    cdef public double idle
    cdef object __weakref__


cdef class Deadlines:
    cdef public object _at
    cdef public object _parks
    cdef public double _armed_at
    cdef public object _now
    cdef public Py_ssize_t _compact_at
    cdef public unsigned long owner
    cdef public object getcurrent
    cdef public object switch
    cdef public object call_soon
    cdef public object call_soon_threadsafe
    # cpdef: a Park calls it in C; a Python subclass (a test's scripted hub) may still override it
    @cython.locals(n=cython.Py_ssize_t)
    cpdef bint add(self, double deadline, object park) except -1


# final: nothing subclasses a wait, so the core calls resume() and _park() straight in C
@cython.final
cdef class Park:
    cdef Deadlines _hub
    cdef object _me
    cdef public bint parked
    cpdef resume(self, object woken)
    @cython.locals(now=cython.double)
    cpdef bint wait_until(self, double deadline, double step) except -1
    @cython.locals(timer=object)
    cdef bint _park(self, double deadline, double now) except -1

cpdef _resume_woken(Park park)
@cython.locals(park=Park, w=Waiter)
cpdef Waiter _park_waiter(Deadlines hub)

cdef class _DeadCallback:
    cdef object dead
    cdef int slot


cdef class Core:
    # slots: C arrays of length _cap, plus Python lists for the objects
    cdef int _cap
    cdef int *_state
    cdef double *_expiry
    cdef double *_last_used
    cdef double *_checkout
    cdef long *_gen
    cdef Py_ssize_t *_keys
    cdef long *_holder
    cdef long _leases
    cdef list _conns
    cdef list _wrefs
    # free list: ring buffer of slot numbers
    cdef int *_free
    cdef int _fhead
    cdef int _nfree
    cdef bint _lifo
    cdef dict _slot_of
    cdef object _waiters
    cdef public object _dead
    # gauges
    cdef int _max
    cdef int _size
    cdef int _nconnecting
    cdef int _nwaiting
    cdef bint _closed
    cdef long _generation
    cdef int _ticks
    # policy knobs
    cdef double _check_after
    cdef tuple _probes
    cdef object _alive_attr
    cdef bint _always_slow
    cdef bint _track
    cdef object _slot_attr
    cdef object _wait_hook
    cdef object _use_hook
    cdef int _grow_limit
    cdef object _fast_type
    cdef tuple _fast_probes
    cdef object _fast_alive
    # counters
    cdef long _requests_num
    cdef long _requests_queued
    cdef long _returns_bad
    cdef long _connections_lost
    cdef long _connections_reclaimed
    cdef double _usage

    # noexcept: the ring's own C steps cannot fail, and the fast path then checks no error
    # after each of them.
    cdef _init_ring(self)
    @cython.locals(i=cython.int, old=cython.int)
    cdef int _grow_capacity(self, int capacity) except -1
    cdef inline void _push_free(self, int slot) noexcept
    @cython.locals(slot=cython.int)
    cdef inline int _pop_free(self) noexcept
    @cython.locals(i=cython.int)
    cdef list _free_list(self)
    @cython.locals(s=cython.int)
    cdef void _set_free_list(self, list slots)
    cdef object _held(self, int slot)
    @cython.locals(slot=cython.int, t=cython.double, t0=cython.double, idle=cython.double, start=cython.double, budget=cython.double,
                   remaining=cython.double, dead=cython.bint, timed=cython.bint, checked_out=cython.bint, closed=cython.bint, w=Waiter)
    cdef object _take(self, object timeout, bint block)
    cdef inline void _checkout_slot(self, int slot, double t) noexcept
    @cython.locals(slot=cython.int, t=cython.double)
    cdef int _put_held(self, object conn, long token) except -1
    @cython.locals(slot=cython.int)
    cdef int _borrowed_slot(self, object conn) except -1
    @cython.locals(t=cython.double)
    cdef inline double _begin_return(self, int slot, object conn) noexcept
    @cython.locals(slow=cython.bint, used=cython.double, restored=cython.bint, probe=tuple, w=Waiter)
    cdef int _put(self, int slot, object conn, double t) except -1
    @cython.locals(w=Waiter)
    cdef Waiter _restore_slot(self, int slot, double t)
    cdef void _forget(self, int slot)
    cdef void _abandon(self, int slot, object conn)
    @cython.locals(i=cython.Py_ssize_t, j=cython.Py_ssize_t)
    cdef int _dispatch_grow(self, list slots) except -1
    cdef void _unreserve(self, int slot)
    @cython.locals(slot=cython.int)
    cdef int _reserve_slot(self)
    @cython.locals(s=cython.int)
    cdef list _grow_slots(self)
    @cython.locals(w=Waiter)
    cdef list _end_waiters(self, int state)
    @cython.locals(x=Waiter)
    cdef void _compact_waiters(self)
