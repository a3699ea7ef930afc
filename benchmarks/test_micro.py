"""Single-thread micro-benchmarks under pytest-benchmark: fastpool against every peer, one run.

    pytest benchmarks/ --benchmark-autosave            # save a run (.benchmarks/)
    pytest benchmarks/ --benchmark-compare             # compare with the last saved run
    pytest benchmarks/ -k cycle --benchmark-group-by=group

* ``cycle``: ``getconn`` + ``putconn`` with no query, 1,000 per timed call, so the time shown in
  microseconds is the cost of *one* cycle in nanoseconds (the timer's and pytest-benchmark's own
  per-call overhead is spread over the 1,000; a single ~150 ns cycle would otherwise be lost in it).
* ``select``: ``with pool.connection(): SELECT 1`` (the peer's idiomatic equivalent: commit on
  success, connection returned), beside the same work on a plain psycopg2 connection (``raw``).

What stays custom (``python -m fastpool bench``, ``bench_cycle.py``, ``bench_green.py``): the
8-threads-on-4-connections throughput, the 1000-greenlet gevent/eventlet scenarios and the
interleaved repeats. pytest-benchmark times one callable on one thread, best for a short call;
those scenarios measure the *aggregate* rate of many threads or greenlets over a fixed wall time,
need each contender in its own monkey-patched process (gevent's patching cannot be undone within
one pytest process), and interleave the contenders repeat by repeat so that a noisy neighbour on a
shared machine hits them all alike.
"""

from __future__ import annotations

from typing import Any, Iterator

import psycopg2
import pytest

from fastpool_bench import peers

CYCLES = 1000
NAMES = [spec.name for spec in peers.SPECS]


@pytest.fixture(params=NAMES)
def pool(request: pytest.FixtureRequest, dsn: str) -> Iterator[Any]:
    spec = peers.get_spec(request.param)
    if not spec.available():
        pytest.skip(peers.describe_missing(spec))
    adapter = spec.make(dsn, size=1)
    try:
        yield adapter
    finally:
        adapter.close()


@pytest.mark.benchmark(group="cycle: getconn+putconn, no query (us per 1000 = ns per cycle)")
def test_cycle(benchmark: Any, pool: Any) -> None:
    get, put = pool.get, pool.put

    def thousand_cycles() -> None:
        for _ in range(CYCLES):
            put(get())

    benchmark(thousand_cycles)


def _select_one(conn: Any) -> None:
    cur = conn.cursor()
    cur.execute("SELECT 1")
    cur.fetchone()
    cur.close()


@pytest.mark.benchmark(group="select: with pool.connection(): SELECT 1")
def test_select(benchmark: Any, pool: Any) -> None:
    def cycle() -> None:
        with pool.connection() as conn:
            _select_one(conn)

    benchmark(cycle)


@pytest.mark.benchmark(group="select: with pool.connection(): SELECT 1")
def test_select_raw_connection(benchmark: Any, dsn: str) -> None:
    """The floor of the select group: the same work on one plain psycopg2 connection."""
    conn = psycopg2.connect(dsn)
    try:
        def cycle() -> None:
            _select_one(conn)
            conn.commit()

        benchmark(cycle)
    finally:
        conn.close()
