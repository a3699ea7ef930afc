# The compiled ring's layout (see _core.pyx for the algorithm and invariants).

# The state numbers of fastpool/_states.py as C constants (folded into the code, no global
# lookup); tests/test_core_ring.py::test_state_numbers_agree checks they are the same numbers.
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


cdef class Waiter:
    cdef public int state
    cdef public object conn
    cdef public object wake
    cdef public double idle
    cdef object __weakref__


cdef class Core:
    # slots: C arrays of length _cap, plus Python lists for the objects
    cdef int _cap
    cdef int *_state
    cdef double *_expiry
    cdef double *_last_used
    cdef double *_checkout
    cdef long *_gen
    cdef Py_ssize_t *_keys
    cdef long *_holder           # token of the wrapper holding the borrow (0: none)
    cdef long _leases            # last token handed out by _hold
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
    # opt-in timing hooks (None: off), see _core_set_timers
    cdef object _wait_hook
    cdef object _use_hook
    cdef int _grow_limit
    # probes and the alive check pre-resolved on one connection class (see _core_set_type)
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

    cdef inline void _push_free(self, int slot)
    cdef inline int _pop_free(self)
    cdef list _free_list(self)
    cdef void _set_free_list(self, list slots)
    cdef int _grow_capacity(self, int capacity) except -1
    cdef object _held(self, int slot)
    cdef int _borrowed_slot(self, object conn) except -1
    cdef int _put(self, int slot, object conn) except -1
    cdef object _try_get_c(self, object timeout, double *spent)
    cdef inline void _checkout_slot(self, int slot, double t)
    cdef Waiter _restore_slot(self, int slot, double t)
    cdef void _forget(self, int slot)
    cdef void _abandon(self, int slot, object conn)
    cdef int _dispatch_grow(self, list slots) except -1
    cdef void _unreserve(self, int slot)
    cdef int _reserve_slot(self)
    cdef list _grow_slots(self)
    cdef list _end_waiters(self, int state)
    cdef void _compact_waiters(self)
