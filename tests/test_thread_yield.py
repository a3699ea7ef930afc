"""An OS thread that misses yields the GIL a bounded number of times before it queues.

Why (see ``fastpool.green.spin``): with more threads than connections, queueing at once turns
every checkout into two OS thread switches (a lock convoy); yielding lets the holders, which
are runnable threads waiting for the GIL, return their connections to the free list first.

The yield itself is replaced here by a stand-in that records calls and, where a test needs it,
plays the holder returning its connection "while we yield": the mechanism is tested without
relying on how the OS schedules threads.
"""

from __future__ import annotations

from typing import Any, List

import pytest

import fastpool
from fastpool import green


def test_a_missing_thread_takes_a_connection_returned_while_it_yields(make_pool: Any,
                                                                     monkeypatch: Any) -> None:
    pool = make_pool(min_size=1, max_size=1)
    held = pool.getconn(timeout=5)
    calls: List[int] = []

    def holder_runs_meanwhile() -> None:
        calls.append(1)
        if len(calls) == 2:
            pool.putconn(held)  # the holder got the GIL during our second yield

    monkeypatch.setattr(green, "_sched_yield", holder_runs_meanwhile)
    before = pool.stats()["requests_queued"]
    conn = pool.getconn(timeout=2)  # without the yield: queued, nobody returns, PoolTimeout
    assert conn is held
    assert len(calls) == 2
    assert pool.stats()["requests_queued"] == before, "it queued although a connection came back"
    pool.putconn(conn)


def test_the_yield_is_bounded_then_the_thread_queues(make_pool: Any, monkeypatch: Any) -> None:
    pool = make_pool(min_size=1, max_size=1)
    held = pool.getconn(timeout=5)
    calls: List[int] = []
    monkeypatch.setattr(green, "_sched_yield", lambda: calls.append(1))
    before = pool.stats()["requests_queued"]
    with pytest.raises(fastpool.PoolTimeout):
        pool.getconn(timeout=0.2)
    assert len(calls) == green.SPIN_YIELDS
    assert pool.stats()["requests_queued"] == before + 1  # served in order once queued
    pool.putconn(held)


def test_no_yield_while_the_pool_can_still_grow(make_pool: Any, monkeypatch: Any) -> None:
    # A miss below max_size must start a connection at once (the waiter's enqueue does).
    pool = make_pool(min_size=0, max_size=2)
    calls: List[int] = []
    monkeypatch.setattr(green, "_sched_yield", lambda: calls.append(1))
    conn = pool.getconn(timeout=5)
    assert calls == []
    pool.putconn(conn)
