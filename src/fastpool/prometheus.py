"""A ``prometheus_client`` collector for fastpool pools (``pip install fastpool[metrics]``).

::

    from prometheus_client import REGISTRY
    from fastpool.prometheus import Collector

    REGISTRY.register(Collector())            # every pool of the process, present and future
    REGISTRY.register(Collector([pool_a]))    # or these pools only

Each scrape reads ``stats()`` of each pool, so the values are the pool's own (no second set of
counters to drift): the names, types and units are :data:`fastpool.metrics.METRICS`, the same
table :func:`fastpool.prometheus_text` renders, with a ``pool`` label (the pool's name).

With ``histograms=True`` it also exports three histograms (seconds) from per-event
observations (``fastpool.timings``; each getconn and putconn then makes one Python call that
takes a lock and bumps a bucket: ~3 us each on the shared 2-core box under load, where a whole
getconn+putconn takes ~0.7 us):
``fastpool_connection_wait_seconds`` (each successful getconn), ``fastpool_connection_use_seconds``
(each putconn: borrowed time) and ``fastpool_connection_create_seconds`` (each connect). Without
it, borrowing is untouched and the ``*_seconds_total`` counters give the averages.

The collector holds pools by weak reference: a dropped pool is garbage-collected and leaves the
exposition; so does a closed one.
"""

from __future__ import annotations

import bisect
import logging
import os
import weakref
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Set, Tuple, Union

try:
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric as _PromMetric,
        UnknownMetricFamily,
    )
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "fastpool.prometheus needs prometheus_client: pip install 'fastpool[metrics]'"
    ) from exc

from . import _original, fork, timings
from .metrics import METRICS, Family, _as_list, check_labels, check_prefix, families

__all__ = ["Collector"]

logger = logging.getLogger("fastpool")


class Collector:  # a prometheus_client custom collector: collect() (and describe()) is the protocol
    """Metric families from ``stats()`` of ``pools`` (a Pool or an iterable of Pools; None, the
    default: every pool of the process that is not closed, at each scrape).

    ``prefix``: metric name prefix (``""`` for none); ``labels``: constant labels added to every
    sample, e.g. ``{"service": "web"}``. Two live pools with the same name would make two
    identical series: the first is exposed, the other skipped with a warning. ``histograms``:
    also export the wait/use/create histograms (see the module docstring); :meth:`close` stops
    their observations.
    """

    def __init__(
        self,
        pools: Union[Any, Iterable[Any], None] = None,
        *,
        prefix: str = "fastpool",
        labels: Optional[Mapping[str, Any]] = None,
        histograms: bool = False,
    ) -> None:
        if not isinstance(histograms, bool):
            raise TypeError(f"histograms must be True or False, not {histograms!r}")
        self._stem = check_prefix(prefix)
        self._extra = check_labels(labels)
        listed = None if pools is None else _as_list(pools)
        self._refs: Optional[List["weakref.ref[Any]"]] = (
            None if listed is None else [weakref.ref(p) for p in listed]
        )
        self._warned: Set[str] = set()
        self._histograms: Optional[_Histograms] = None
        if histograms:
            self._histograms = _Histograms(timings.BUCKETS)
            timings.subscribe(self._histograms, listed)

    def close(self) -> None:
        """Stop the histograms' observations (the pools' fast paths are untouched again)."""
        if self._histograms is not None:
            timings.unsubscribe(self._histograms)
            for pool in fork.tracked_pools():
                timings.unsubscribe(self._histograms, [pool])

    def pools(self) -> List[Any]:
        """The pools a scrape reads now: alive, not closed, first of each name."""
        if self._refs is None:
            candidates = fork.live_pools()
        else:
            candidates = [p for p in (r() for r in self._refs) if p is not None and not p.closed]
        seen: Set[str] = set()
        out = []
        for p in candidates:
            if p.name in seen:
                if p.name not in self._warned:
                    self._warned.add(p.name)
                    logger.warning("fastpool.prometheus: two live pools are named %r; exposing "
                                   "only the first (give pools unique names)", p.name)
                continue
            seen.add(p.name)
            out.append(p)
        return out

    def collect(self) -> Iterator[_PromMetric]:
        pools = self.pools()
        for fam in families(pools, self._stem, self._extra):
            yield _to_prometheus(fam)
        if self._histograms is not None:
            names = [p.name for p in pools]
            self._histograms.forget_all_but(names)  # dropped/closed pools: rows go too
            yield from self._histograms.families(self._stem, names, self._extra)

    def describe(self) -> Iterator[_PromMetric]:
        """The families this collector exports (no samples): lets a registry reject a second
        collector with the same names at ``register()`` instead of at scrape time."""
        for metric in METRICS.values():
            yield _to_prometheus(Family(self._stem + metric.name, metric, []))
        if self._histograms is not None:
            yield from self._histograms.families(self._stem, [], self._extra)


def _to_prometheus(fam: Family) -> _PromMetric:
    metric = fam.metric
    names = [k for k, _ in fam.samples[0][0]] if fam.samples else None
    out: _PromMetric
    if metric.type == "counter":
        # prometheus_client appends _total itself and wants the unit as the name's suffix
        out = CounterMetricFamily(fam.name[: -len("_total")], metric.help, labels=names,
                                       unit=metric.unit)
    elif metric.type == "gauge":
        out = GaugeMetricFamily(fam.name, metric.help, labels=names, unit=metric.unit)
    else:
        out = UnknownMetricFamily(fam.name, metric.help, labels=names)
    for pairs, value in fam.samples:
        out.add_metric([v for _, v in pairs], value)
    return out


#: histogram name (after the prefix) -> (timings kind, help)
HISTOGRAMS = {
    "connection_wait_seconds": ("waited", "Time each successful request took to get a connection."),
    "connection_use_seconds": ("used", "Time each connection was borrowed, checkout to return."),
    "connection_create_seconds": ("created", "Time each new connection took to open (with configure)."),
}


class _Histograms:
    """A fastpool.timings listener that keeps bucket counts per pool name (holds no pool)."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self._bounds = tuple(bounds)
        # a real OS lock held for a few statements: never across a greenlet switch (a forked
        # child gets a new one: another thread may have held it at fork time)
        self._lock = _original.allocate_lock()
        # (kind, pool name) -> [count per bucket (last: above every bound)..., sum]
        self._data: Dict[Tuple[str, str], List[float]] = {}
        _all_histograms.add(self)

    def _observe(self, kind: str, pool_name: str, seconds: float) -> None:
        i = bisect.bisect_left(self._bounds, seconds)  # first bound >= seconds: "le" semantics
        with self._lock:
            row = self._data.get((kind, pool_name))
            if row is None:
                row = self._data[(kind, pool_name)] = [0.0] * (len(self._bounds) + 2)
            row[i] += 1
            row[-1] += seconds

    def connection_waited(self, pool_name: str, seconds: float) -> None:
        self._observe("waited", pool_name, seconds)

    def connection_used(self, pool_name: str, seconds: float) -> None:
        self._observe("used", pool_name, seconds)

    def connection_created(self, pool_name: str, seconds: float) -> None:
        self._observe("created", pool_name, seconds)

    def forget_all_but(self, names: List[str]) -> None:
        keep = set(names)
        with self._lock:
            for key in [k for k in self._data if k[1] not in keep]:
                del self._data[key]

    def families(self, stem: str, names: List[str], extra: List[Tuple[str, str]]) -> Iterator[_PromMetric]:
        for suffix, (kind, help_) in HISTOGRAMS.items():
            fam = HistogramMetricFamily(stem + suffix, help_, labels=["pool", *(k for k, _ in extra)],
                                        unit="seconds")
            for name in names:  # pools alive now: a dropped pool's rows are not exported
                with self._lock:
                    row = list(self._data.get((kind, name)) or [0.0] * (len(self._bounds) + 2))
                buckets, running = [], 0.0
                for bound, n in zip((*map(_bound, self._bounds), "+Inf"), row[:-1]):
                    running += n
                    buckets.append((bound, running))
                fam.add_metric([name, *(v for _, v in extra)], buckets, sum_value=row[-1])
            yield fam


def _bound(value: float) -> str:
    return repr(float(value))


_all_histograms: "weakref.WeakSet[_Histograms]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for h in list(_all_histograms):
        h._lock = _original.allocate_lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
