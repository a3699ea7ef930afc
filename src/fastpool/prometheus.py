"""A ``prometheus_client`` collector for fastpool pools (``pip install fastpool[metrics]``).

::

    from prometheus_client import REGISTRY
    from fastpool.prometheus import Collector

    REGISTRY.register(Collector())            # every pool of the process, present and future
    REGISTRY.register(Collector([pool_a]))    # or these pools only

Each scrape reads ``stats()`` of each pool, so the values are the pool's own (no second set of
counters to drift): the names, types and units are :data:`fastpool.metrics.METRICS`, the same
table :func:`fastpool.prometheus_text` renders, with a ``pool`` label (the pool's name).

The collector holds pools by weak reference: a dropped pool is garbage-collected and leaves the
exposition; so does a closed one.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any, Iterable, Iterator, List, Mapping, Optional, Set, Union

try:
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        Metric as _PromMetric,
        UnknownMetricFamily,
    )
    from prometheus_client.registry import Collector as _Base
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "fastpool.prometheus needs prometheus_client: pip install 'fastpool[metrics]'"
    ) from exc

from . import fork
from .metrics import METRICS, Family, _as_list, check_labels, check_prefix, families

__all__ = ["Collector"]

logger = logging.getLogger("fastpool")


class Collector(_Base):
    """Metric families from ``stats()`` of ``pools`` (a Pool or an iterable of Pools; None, the
    default: every pool of the process that is not closed, at each scrape).

    ``prefix``: metric name prefix (``""`` for none); ``labels``: constant labels added to every
    sample, e.g. ``{"service": "web"}``. Two live pools with the same name would make two
    identical series: the first is exposed, the other skipped with a warning.
    """

    def __init__(
        self,
        pools: Union[Any, Iterable[Any], None] = None,
        *,
        prefix: str = "fastpool",
        labels: Optional[Mapping[str, Any]] = None,
    ) -> None:
        self._stem = check_prefix(prefix)
        self._extra = check_labels(labels)
        self._refs: Optional[List["weakref.ref[Any]"]] = (
            None if pools is None else [weakref.ref(p) for p in _as_list(pools)]
        )
        self._warned: Set[str] = set()

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
        for fam in families(self.pools(), self._stem, self._extra):
            yield _to_prometheus(fam)

    def describe(self) -> Iterator[_PromMetric]:
        """The families this collector exports (no samples): lets a registry reject a second
        collector with the same names at ``register()`` instead of at scrape time."""
        for metric in METRICS.values():
            yield _to_prometheus(Family(self._stem + metric.name, metric, []))


def _to_prometheus(fam: Family) -> _PromMetric:
    metric = fam.metric
    names = [k for k, _ in fam.samples[0][0]] if fam.samples else None
    if metric.type == "counter":
        # prometheus_client appends _total itself and wants the unit as the name's suffix
        out: Any = CounterMetricFamily(fam.name[: -len("_total")], metric.help, labels=names,
                                       unit=metric.unit)
    elif metric.type == "gauge":
        out = GaugeMetricFamily(fam.name, metric.help, labels=names, unit=metric.unit)
    else:
        out = UnknownMetricFamily(fam.name, metric.help, labels=names)
    for pairs, value in fam.samples:
        out.add_metric([v for _, v in pairs], value)
    return out
