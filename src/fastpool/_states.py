"""The core's numbers, named once for both cores, the policy (``pool.py``) and the tests.

The compiled core cannot read Python globals at no cost, so ``_core.pxd`` declares the same
numbers as C enums; ``tests/test_core_ring.py::test_state_numbers_agree`` fails if the two
ever differ. What each slot state means: the docstring of ``_core.py``.
"""

from typing import Final

# Slot states.
EMPTY: Final = 0
CONNECTING: Final = 1
IDLE: Final = 2
IN_USE: Final = 3
RESERVED: Final = 4

# Waiter states: WAITING until the core hands it a connection (HANDED, then DONE once claimed),
# or it ends without one: CANCELLED (timed out or interrupted), CLOSED (the pool closed),
# FAILED (no connection can be made for it).
WAITING: Final = 0
HANDED: Final = 1
DONE: Final = 2
CANCELLED: Final = 3
CLOSED: Final = 4
FAILED: Final = 5

# What ``_enqueue`` returns.
ENQUEUED: Final = 0  # queued: wait for a handoff
RETRY: Final = 1  # a connection became free meanwhile: try to take it
FULL: Final = 2  # max_waiting callers already wait
CLOSED_POOL: Final = 3  # the pool closed since the caller last looked

# Tuning of the ring.
TICK_EVERY: Final = 1024  # getconn calls between two _on_tick() policy calls (a cheap periodic look)
COMPACT_SLACK: Final = 64  # cancelled waiters tolerated beyond twice the live ones before compacting
