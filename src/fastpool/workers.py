"""Background work for a pool: connecting, retrying with backoff, maintenance, watchdogs.

A small timer heap served by up to a few daemon OS threads. Connecting is slow (a TCP and auth
round trip, or a ``connect_timeout`` against a dead host), so it never runs in a caller's thread
and never while holding a slot a caller could have used; several threads let one stuck connect
not delay the others nor the maintenance tick.

The threads and locks are always real OS ones (:mod:`fastpool._original`), whatever gevent or
eventlet patched and whenever: queries a worker runs still cooperate through psycopg2's wait
callback (each OS thread gets its own hub), and waking a greenlet from here goes through its hub's
thread-safe path (:mod:`fastpool.green`). Each idle thread sleeps on a lock of its own, acquired
with a timeout: a minimal condition variable made only of real locks.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from time import monotonic
from typing import Any, Callable, Dict, List, Optional, Set

#: a scheduled call: [when, seq, fn (None once cancelled), args]
Entry = List[Any]

from . import _original

logger = logging.getLogger("fastpool")

#: threads per pool: enough that one connect stuck in connect_timeout does not stall refills.
DEFAULT_THREADS = 3

#: OS thread ids of every fastpool worker thread: there, psycopg2 waits natively, never through a
#: gevent/eventlet hub (see green.py: creating a hub in a second OS thread of a patched process
#: can deadlock on the import locks, and a worker has no greenlets to yield to anyway).
WORKER_THREADS: Set[int] = set()


class Workers:
    """Run callables now or at a monotonic time, on up to ``nthreads`` daemon threads."""

    def __init__(self, name: str, nthreads: int = DEFAULT_THREADS) -> None:
        self._name = name
        self._nthreads = nthreads
        self._reset_state()

    def _reset_state(self) -> None:
        self._lock = _original.allocate_lock()
        # entries are [when, seq, fn, args]; cancel() blanks fn (lazy deletion)
        self._heap: List[Entry] = []
        self._ncancelled = 0  # blank entries still in the heap
        self._seq = itertools.count()
        self._nthreads_started = 0
        self._sleepers: List[Any] = []  # one real lock per idle thread, held until woken
        # one real lock per live thread (released when it exits) -> that thread's ident
        self._running: Dict[Any, Optional[int]] = {}
        self._stopping = False

    def submit(self, fn: Callable[..., Any], *args: Any) -> Optional[Entry]:
        return self.schedule_at(0.0, fn, *args)

    def schedule(self, delay: float, fn: Callable[..., Any], *args: Any) -> Optional[Entry]:
        return self.schedule_at(monotonic() + delay, fn, *args)

    def try_submit(self, fn: Callable[..., Any], *args: Any) -> Optional[Entry]:
        """submit(), unless that would block: for finalizers and other code that may run while
        this very thread holds the lock (None then; the caller must have a fallback)."""
        return self.schedule_at(0.0, fn, *args, blocking=False)

    def schedule_at(
        self, when: float, fn: Callable[..., Any], *args: Any, blocking: bool = True
    ) -> Optional[Entry]:
        """Run ``fn(*args)`` at monotonic time ``when``; returns a handle for :meth:`cancel`."""
        entry = [when, next(self._seq), fn, args]
        start = False
        if not self._lock.acquire(blocking):
            return None
        try:
            if self._stopping:
                return None
            heapq.heappush(self._heap, entry)
            if not self._sleepers and self._nthreads_started < self._nthreads:
                # Start a thread only when none is idle: most pools need one.
                self._nthreads_started += 1
                start = True
            elif self._sleepers and (when <= monotonic() or self._heap[0] is entry):
                # Wake one sleeper when this entry is due now (bursts of connects run in
                # parallel) or is the new earliest; a sleeper's timeout covers later ones.
                self._sleepers.pop().release()
        finally:
            self._lock.release()
        if start:
            running = _original.allocate_lock()
            running.acquire()
            with self._lock:
                self._running[running] = None
            _original.start_new_thread(self._run, (running,))
        return entry

    #: compact the heap when this many cancelled entries are in it and they are most of it:
    #: watchdogs are scheduled and cancelled on every guarded round trip, seconds ahead.
    COMPACT_AT = 100

    def cancel(self, entry: Optional[Entry]) -> None:
        """Forget a scheduled call."""
        if entry is None or entry[2] is None:
            return
        with self._lock:
            if entry[2] is None:
                return
            entry[2] = None
            entry[3] = ()
            self._ncancelled += 1
            if self._ncancelled > self.COMPACT_AT and 2 * self._ncancelled > len(self._heap):
                self._heap = [e for e in self._heap if e[2] is not None]
                heapq.heapify(self._heap)
                self._ncancelled = 0

    def _run(self, running: Any) -> None:
        ident = _original.get_ident()
        WORKER_THREADS.add(ident)
        with self._lock:
            self._running[running] = ident
        try:
            while True:
                with self._lock:
                    if self._stopping:
                        return
                    t = monotonic()
                    if self._heap and self._heap[0][0] <= t:
                        _, _, fn, args = heapq.heappop(self._heap)
                        if fn is None:
                            self._ncancelled -= 1
                            continue  # cancelled
                    else:
                        timeout = self._heap[0][0] - t if self._heap else -1
                        bell = _original.allocate_lock()
                        bell.acquire()
                        self._sleepers.append(bell)
                        fn = None
                if fn is None:
                    bell.acquire(True, timeout)  # released by schedule_at/stop, or times out
                    with self._lock:
                        if bell in self._sleepers:
                            self._sleepers.remove(bell)
                    continue
                try:
                    fn(*args)
                except BaseException:
                    # A background task must never kill its thread, not even with a
                    # BaseException raised by user code it runs (a reset or conninfo callable's
                    # CancelledError or SystemExit): the pool would be left a thread short.
                    logger.exception("fastpool %s: background task %r failed", self._name, fn)
                fn = args = None
        finally:
            WORKER_THREADS.discard(ident)
            running.release()

    def stop(self, timeout: Optional[float] = None) -> bool:
        """Drop pending tasks, let running ones finish; True if every thread ended in time."""
        with self._lock:
            self._stopping = True
            self._heap.clear()
            self._ncancelled = 0
            for bell in self._sleepers:
                bell.release()
            self._sleepers.clear()
            running = list(self._running.items())
        deadline = None if timeout is None else monotonic() + timeout
        me = _original.get_ident()
        ok = True
        for lock, ident in running:
            if ident == me:
                continue  # stop() called from one of our own tasks: it ends when the task returns
            left = -1 if deadline is None else max(0.0, deadline - monotonic())
            if lock.acquire(True, left):
                lock.release()
            else:
                ok = False
        return ok

    def after_fork_in_child(self) -> None:
        """Threads do not survive fork(): start over with none (and no inherited tasks)."""
        self._reset_state()
