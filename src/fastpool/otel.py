"""OpenTelemetry metrics for fastpool pools (``pip install fastpool[metrics]``).

::

    import fastpool.otel
    fastpool.otel.instrument()                 # every pool, global MeterProvider
    fastpool.otel.instrument([pool], meter_provider=provider, histograms=True)

Names, units and attributes follow the OpenTelemetry semantic conventions for database client
connection pools (https://opentelemetry.io/docs/specs/semconv/database/database-metrics/,
"Connection pools"), release 1.44.0 as generated in ``opentelemetry-semantic-conventions``
0.66b2 (``opentelemetry.semconv._incubating.metrics.db_metrics``): the ``db.client.connection.*``
names, which replaced ``db.client.connections.*`` in 2024 (semantic-conventions PRs #966,
#1125). The conventions are still experimental: a later change renames
``db.client.connection.max`` to ``db.client.connection.limit`` (semantic-conventions PR #4073),
not in the Python package yet; fastpool follows the Python package. Every instrument carries
``db.client.connection.pool.name`` = ``Pool.name``:

==========================================  =================  ==============================
``db.client.connection.count``              UpDownCounter (o)  ``db.client.connection.state``
                                                               ``idle`` (``pool_available``)
                                                               or ``used`` (``pool_used``)
``db.client.connection.max``                UpDownCounter (o)  ``max_size``
``db.client.connection.idle.min``           UpDownCounter (o)  ``min_size`` (kept open, idle
                                                               or borrowed: the closest knob)
``db.client.connection.pending_requests``   UpDownCounter (o)  ``requests_waiting``
``db.client.connection.timeouts``           Counter (o)        ``requests_timeouts``
``db.client.connection.create_time``        Histogram, s       each connect (incl. configure)
``db.client.connection.wait_time``          Histogram, s       each successful getconn
``db.client.connection.use_time``           Histogram, s       each putconn: borrowed time
==========================================  =================  ==============================

(o): observable, read from ``stats()`` at each collection, so they equal what ``stats()`` says.
``db.client.connection.idle.max`` is not reported: fastpool has no cap on idle connections other
than ``max_size`` (already ``.max``); ``max_idle`` is a time, not a count.

The histograms need one observation per event (``fastpool.timings``), so they are opt-in
(``histograms=True``): then each getconn and each putconn calls the SDK's ``Histogram.record``,
which costs far more than the pool itself (measured on the shared 2-core box under load: ~35 us
per record, against ~0.7 us for a whole getconn+putconn); without them the pool's fast paths are
untouched (one pointer compare each). They are exact with two stated limits:
a connection reclaimed by the garbage collector (never returned) has no ``use_time``, and a
failed request has no ``wait_time`` (it is counted: ``.timeouts``, ``stats()``).

Pools are held by weak reference: a dropped pool is collected and leaves the metrics.
"""

from __future__ import annotations

import weakref
from typing import Any, Dict, Iterable, Iterator, List, Optional, Union

try:
    from opentelemetry import metrics as _otel
    from opentelemetry.metrics import CallbackOptions, Observation
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "fastpool.otel needs opentelemetry-api: pip install 'fastpool[metrics]'"
    ) from exc

from . import __version__, _original, fork, timings
from .metrics import _as_list

__all__ = ["instrument", "Instrumentation"]

POOL_NAME = "db.client.connection.pool.name"
STATE = "db.client.connection.state"
#: the instruments' names (see the module docstring for the conventions followed)
COUNT = "db.client.connection.count"
MAX = "db.client.connection.max"
IDLE_MIN = "db.client.connection.idle.min"
PENDING_REQUESTS = "db.client.connection.pending_requests"
TIMEOUTS = "db.client.connection.timeouts"
CREATE_TIME = "db.client.connection.create_time"
WAIT_TIME = "db.client.connection.wait_time"
USE_TIME = "db.client.connection.use_time"

#: advisory histogram buckets (seconds; the SDK's defaults, 0..10000, suit milliseconds); a View
#: overrides them
BUCKETS = timings.BUCKETS


class Instrumentation:
    """One :func:`instrument` call: :meth:`close` stops reporting its pools."""

    def __init__(self, meters: "_Meters", pools: Optional[List["weakref.ref[Any]"]],
                 histograms: bool) -> None:
        self._meters = meters
        self._refs = pools
        self.histograms = histograms
        self.closed = False

    def pools(self) -> List[Any]:
        """The pools reported now: alive and not closed."""
        if self.closed:
            return []
        if self._refs is None:
            return fork.live_pools()
        return [p for p in (r() for r in self._refs) if p is not None and not p.closed]

    def subscribed(self) -> Optional[List[Any]]:
        """The pools whose timings to observe: None for every pool; else the listed ones still
        alive, open or not (a pool instrumented before open() reports its first connects)."""
        if self._refs is None:
            return None
        return [p for p in (r() for r in self._refs) if p is not None]

    def close(self) -> None:
        """Stop reporting these pools (OpenTelemetry has no way to remove an instrument: they
        stay, with no observations from this call)."""
        if not self.closed:
            self.closed = True
            self._meters.remove(self)


def instrument(
    pools: Union[Any, Iterable[Any], None] = None,
    *,
    meter_provider: Optional[Any] = None,
    histograms: bool = False,
) -> Instrumentation:
    """Report ``pools`` (a Pool or an iterable of Pools; None, the default: every pool of the
    process, including pools made later) to ``meter_provider`` (None: the global one).

    ``histograms=True`` adds create/wait/use_time, one SDK call per event (see the module
    docstring); off, only the observable instruments, read at collection: no cost to borrowing.
    Calling it again for the same provider adds to the same instruments.
    """
    if not isinstance(histograms, bool):
        raise TypeError(f"histograms must be True or False, not {histograms!r}")
    refs = None if pools is None else [weakref.ref(p) for p in _as_list(pools)]
    provider = meter_provider if meter_provider is not None else _otel.get_meter_provider()
    with _lock:
        meters = _by_provider.get(id(provider))
        if meters is None or meters.provider is not provider:
            meters = _by_provider[id(provider)] = _Meters(provider)
        inst = Instrumentation(meters, refs, histograms)
        meters.add(inst)
    return inst


# A real lock, as every lock of fastpool (the threading rule, fastpool._original): what it
# guards calls the SDK's own short sections, never I/O.
_lock = _original.allocate_lock()
#: one set of instruments per MeterProvider: the SDK hands back the first instrument of a name
#: and ignores the callbacks of a second one, so every instrument() call for a provider shares
#: them (id -> _Meters; the provider itself is kept, so the id cannot be reused meanwhile)
_by_provider: Dict[int, "_Meters"] = {}


class _Meters:
    """The instruments of one MeterProvider and the timing listener feeding its histograms."""

    def __init__(self, provider: Any) -> None:
        self.provider = provider
        self.sources: List[Instrumentation] = []
        self._attrs: Dict[str, Dict[str, str]] = {}
        meter = provider.get_meter("fastpool", __version__)
        meter.create_observable_up_down_counter(
            COUNT, [self._count], unit="{connection}",
            description="The number of connections that are currently in state described by the state attribute")
        meter.create_observable_up_down_counter(
            MAX, [self._gauge("pool_max")], unit="{connection}",
            description="The maximum number of open connections allowed")
        meter.create_observable_up_down_counter(
            IDLE_MIN, [self._gauge("pool_min")], unit="{connection}",
            description="The minimum number of idle open connections allowed")
        meter.create_observable_up_down_counter(
            PENDING_REQUESTS, [self._gauge("requests_waiting")],
            unit="{request}",
            description="The number of current pending requests for an open connection")
        meter.create_observable_counter(
            TIMEOUTS, [self._gauge("requests_timeouts")], unit="{timeout}",
            description="The number of connection timeouts that have occurred trying to obtain a "
                        "connection from the pool")
        self._create = _histogram(meter, CREATE_TIME,
                                  "The time it took to create a new connection")
        self._wait = _histogram(meter, WAIT_TIME,
                                "The time it took to obtain an open connection from the pool")
        self._use = _histogram(meter, USE_TIME,
                               "The time between borrowing a connection and returning it to the pool")
        self.listener = _Listener(self)

    # -- sources ---------------------------------------------------------------------------------
    def add(self, inst: Instrumentation) -> None:
        self.sources.append(inst)
        if inst.histograms:
            timings.subscribe(self.listener, inst.subscribed())

    def remove(self, inst: Instrumentation) -> None:
        with _lock:
            if inst in self.sources:
                self.sources.remove(inst)
            # Re-derive the subscriptions from the sources left (two may cover one pool).
            timings.unsubscribe(self.listener)
            for pool in fork.tracked_pools():
                timings.unsubscribe(self.listener, [pool])
            for src in self.sources:
                if src.histograms:
                    timings.subscribe(self.listener, src.subscribed())

    def pools(self) -> Iterator[Any]:
        seen = set()
        for src in list(self.sources):
            for p in src.pools():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield p

    def attrs(self, name: str) -> Dict[str, str]:
        a = self._attrs.get(name)
        if a is None:
            a = self._attrs[name] = {POOL_NAME: name}
        return a

    # -- observable callbacks ----------------------------------------------------------------------
    def _count(self, options: CallbackOptions) -> Iterator[Observation]:
        for p in self.pools():
            s = p.stats()
            yield Observation(s["pool_available"], {POOL_NAME: p.name, STATE: "idle"})
            yield Observation(s["pool_used"], {POOL_NAME: p.name, STATE: "used"})

    def _gauge(self, key: str) -> Any:
        def callback(options: CallbackOptions) -> Iterator[Observation]:
            for p in self.pools():
                yield Observation(p.stats()[key], self.attrs(p.name))

        return callback


def _histogram(meter: Any, name: str, description: str) -> Any:
    try:
        return meter.create_histogram(name, unit="s", description=description,
                                      explicit_bucket_boundaries_advisory=BUCKETS)
    except TypeError:  # opentelemetry-api < 1.23: no advisory; the SDK's defaults or a View
        return meter.create_histogram(name, unit="s", description=description)


class _Listener:
    """fastpool.timings listener -> the three histograms (holds no pool)."""

    def __init__(self, meters: _Meters) -> None:
        self._attrs = meters.attrs
        self._create = meters._create.record
        self._wait = meters._wait.record
        self._use = meters._use.record

    def connection_created(self, pool_name: str, seconds: float) -> None:
        self._create(seconds, self._attrs(pool_name))

    def connection_waited(self, pool_name: str, seconds: float) -> None:
        self._wait(seconds, self._attrs(pool_name))

    def connection_used(self, pool_name: str, seconds: float) -> None:
        self._use(seconds, self._attrs(pool_name))

