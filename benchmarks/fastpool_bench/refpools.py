"""Reference pools for the greenlet benchmarks: yardsticks, not products.

``FairQueue`` is the least a first-come-first-served pool can do on a hub's own primitives: a
free list and a FIFO of parked greenlets; a return hands the connection straight to the oldest
waiter (it never goes back to the free list, so a greenlet that has not waited cannot barge in
ahead of one that has).  No timeout, no cancellation, no health check, no reset, no size
accounting: whatever a real fair pool costs beyond this is its own code, and whatever this
costs beyond the hub's barging ``Queue`` is the price of fairness itself.

One source for ``benchmarks/bench_green_checkout.py`` (no database) and the full greenlet
scenario (:mod:`fastpool_bench.green`).  Import it only after the process is monkey-patched.
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Deque, Iterable


class FairQueue:
    """FIFO hand-off of connections between greenlets of one hub (gevent or eventlet).

    ``get()`` takes a free connection only when nobody is queued; otherwise it parks the caller
    at the back of the queue.  ``put(conn)`` wakes the oldest parked greenlet *with* ``conn``.
    The wake-up goes through the hub's callback queue (never a direct switch from the returning
    greenlet) so the returner keeps running, as with the hub's ``Queue``.
    """

    def __init__(self, hub: str, conns: Iterable[Any]):
        self.free: Deque[Any] = collections.deque(conns)
        self.waiters: Deque[Any] = collections.deque()
        if hub == "gevent":
            self.get, self.put = self._gevent_pair()
        elif hub == "eventlet":
            self.get, self.put = self._eventlet_pair()
        else:
            raise ValueError(f"unknown hub {hub!r}")

    def _gevent_pair(self) -> "tuple[Callable[[], Any], Callable[[Any], None]]":
        from gevent.hub import Waiter, get_hub

        free, waiters = self.free, self.waiters
        hub = get_hub()
        run_callback = hub.loop.run_callback

        def get() -> Any:
            if free and not waiters:
                return free.pop()
            w = Waiter(hub)
            waiters.append(w)
            return w.get()  # parks in the hub until a put() hands us a connection

        def put(conn: Any) -> None:
            if waiters:
                run_callback(waiters.popleft().switch, conn)
            else:
                free.append(conn)

        return get, put

    def _eventlet_pair(self) -> "tuple[Callable[[], Any], Callable[[Any], None]]":
        from eventlet.hubs import get_hub
        from greenlet import getcurrent

        free, waiters = self.free, self.waiters

        def get() -> Any:
            if free and not waiters:
                return free.pop()
            waiters.append(getcurrent())
            return get_hub().switch()  # back here with the connection put() passed on

        def put(conn: Any) -> None:
            if waiters:
                get_hub().schedule_call_global(0, waiters.popleft().switch, conn)
            else:
                free.append(conn)

        return get, put
