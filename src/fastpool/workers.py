"""Background work for a pool: connecting, retrying with backoff, maintenance.

A small timer heap served by a few daemon threads. Connecting is slow (a TCP and auth round trip,
or a ``connect_timeout`` against a dead host), so it never runs in a caller's thread and never
while holding a slot a caller could have used; several threads let one stuck connect not delay
the others nor the maintenance tick.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from time import monotonic
from typing import Any, Callable, List, Optional

logger = logging.getLogger("fastpool")

#: threads per pool: enough that one connect stuck in connect_timeout does not stall refills.
DEFAULT_THREADS = 3


class Workers:
    """Run callables now or at a monotonic time, on up to ``nthreads`` daemon threads."""

    def __init__(self, name: str, nthreads: int = DEFAULT_THREADS) -> None:
        self._name = name
        self._nthreads = nthreads
        self._cond = threading.Condition(threading.Lock())
        # entries are [when, seq, fn, args]; cancel() blanks fn (lazy deletion)
        self._heap: List[list] = []
        self._seq = itertools.count()
        self._threads: List[threading.Thread] = []
        self._stopping = False
        self._idle = 0

    def submit(self, fn: Callable[..., Any], *args: Any) -> Optional[list]:
        return self.schedule_at(0.0, fn, *args)

    def schedule(self, delay: float, fn: Callable[..., Any], *args: Any) -> Optional[list]:
        return self.schedule_at(monotonic() + delay, fn, *args)

    def schedule_at(self, when: float, fn: Callable[..., Any], *args: Any) -> Optional[list]:
        """Run ``fn(*args)`` at monotonic time ``when``; returns a handle for :meth:`cancel`."""
        entry = [when, next(self._seq), fn, args]
        with self._cond:
            if self._stopping:
                return None
            heapq.heappush(self._heap, entry)
            # Start a thread only when every running one is busy: most pools need one.
            if self._idle == 0 and len(self._threads) < self._nthreads:
                t = threading.Thread(
                    target=self._run, name=f"fastpool-{self._name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(t)
                t.start()
            # Waking a sleeping thread costs a context switch: needed when this entry is due
            # now (so bursts of connects run in parallel) or is the new earliest; a sleeper's
            # timeout already covers every later one (watchdog deadlines, mostly).
            if when <= monotonic() or self._heap[0] is entry:
                self._cond.notify()
        return entry

    def cancel(self, entry: Optional[list]) -> None:
        """Forget a scheduled call (it stays in the heap, blank, until its time comes)."""
        if entry is not None:
            entry[2] = None
            entry[3] = ()

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stopping:
                        return
                    t = monotonic()
                    if self._heap and self._heap[0][0] <= t:
                        _, _, fn, args = heapq.heappop(self._heap)
                        if fn is None:
                            continue  # cancelled
                        break
                    self._idle += 1
                    try:
                        self._cond.wait(self._heap[0][0] - t if self._heap else None)
                    finally:
                        self._idle -= 1
            try:
                fn(*args)
            except Exception:  # a background task must never kill its thread
                logger.exception("fastpool %s: background task %r failed", self._name, fn)

    def stop(self, timeout: Optional[float] = None) -> bool:
        """Drop pending tasks, let running ones finish; True if every thread ended in time."""
        with self._cond:
            self._stopping = True
            self._heap.clear()
            self._cond.notify_all()
            threads = list(self._threads)
        deadline = None if timeout is None else monotonic() + timeout
        me = threading.current_thread()
        for t in threads:
            if t is me:
                continue
            t.join(None if deadline is None else max(0.0, deadline - monotonic()))
        return not any(t.is_alive() for t in threads if t is not me)

    def after_fork_in_child(self) -> None:
        """Threads do not survive fork(): start over with none (and no inherited tasks)."""
        self._cond = threading.Condition(threading.Lock())
        self._heap = []
        self._threads = []
        self._idle = 0
