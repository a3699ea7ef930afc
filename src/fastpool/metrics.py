"""Pool statistics for Prometheus: the metric table, and the text exposition format (0.0.4).

:data:`METRICS` is the one definition of every exported name, type and unit; both
:func:`prometheus_text` (no dependency) and :class:`fastpool.prometheus.Collector` (for a
``prometheus_client`` registry) render it. OpenTelemetry follows its own semantic conventions
instead: see ``fastpool.otel``.

::

    from fastpool import prometheus_text

    def metrics_view(request):                     # any web framework
        return HttpResponse(prometheus_text([pool_a, pool_b]),
                            content_type="text/plain; version=0.0.4; charset=utf-8")

Gauges are the pool's current state; everything else is a counter since the pool was made,
named ``*_total``; durations are converted from ``stats()``'s milliseconds to seconds (the
Prometheus base unit). Use ``stats()``-based scraping only: ``pop_stats()`` resets the counters,
which Prometheus would read as a counter reset.
"""

from __future__ import annotations

import math
import re
from typing import Any, Dict, Iterable, List, Mapping, NamedTuple, Optional, Tuple, Union

__all__ = ["prometheus_text", "METRICS", "CONTENT_TYPE"]

#: the Content-Type to serve prometheus_text() with.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metric(NamedTuple):
    name: str  # without the prefix; a counter's ends in _total, a duration's in _seconds[_total]
    type: str  # "gauge" | "counter"
    divisor: int  # the stats() value is divided by this (ms -> s: 1000)
    help: str
    unit: str = ""  # Prometheus base unit in the name ("seconds"), "" for plain counts


#: stats() key -> how it is exposed.
METRICS: Dict[str, Metric] = {
    "pool_min": Metric("pool_min", "gauge", 1, "Configured minimum number of connections (min_size)."),
    "pool_max": Metric("pool_max", "gauge", 1, "Configured maximum number of connections (max_size)."),
    "pool_size": Metric("pool_size", "gauge", 1,
                        "Connections the pool holds now: idle, in use and being opened."),
    "pool_available": Metric("pool_available", "gauge", 1, "Idle connections ready to be handed out."),
    "pool_used": Metric("pool_used", "gauge", 1,
                        "Connections borrowed, or being reset or health-checked."),
    "requests_waiting": Metric("requests_waiting", "gauge", 1, "Requests waiting for a connection now."),
    "requests_num": Metric("requests_total", "counter", 1, "Connection requests (getconn calls)."),
    "requests_queued": Metric("requests_queued_total", "counter", 1,
                              "Requests that had to wait because no connection was idle."),
    "requests_wait_ms": Metric("requests_wait_seconds_total", "counter", 1000,
                               "Total time requests spent waiting for a connection, timed-out waits included.",
                               "seconds"),
    "requests_errors": Metric("requests_errors_total", "counter", 1,
                              "Requests that failed (timeout, too many waiting, pool closed)."),
    "requests_timeouts": Metric("requests_timeouts_total", "counter", 1,
                                "Requests that failed with PoolTimeout."),
    "returns_bad": Metric("returns_bad_total", "counter", 1,
                          "Connections returned broken or not resettable, and discarded."),
    "connections_num": Metric("connections_total", "counter", 1,
                              "Connection attempts to the server, failed ones included."),
    "connections_ms": Metric("connections_seconds_total", "counter", 1000,
                             "Total time spent opening connections.", "seconds"),
    "connections_errors": Metric("connections_errors_total", "counter", 1, "Failed connection attempts."),
    "connections_lost": Metric("connections_lost_total", "counter", 1,
                               "Idle connections found dead by a health check."),
    "connections_reclaimed": Metric("connections_reclaimed_total", "counter", 1,
                                    "Borrowed connections garbage-collected without being returned."),
    "usage_ms": Metric("usage_seconds_total", "counter", 1000,
                       "Total time connections were checked out.", "seconds"),
}

_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def prometheus_text(
    pool: Union[Any, Iterable[Any]],
    *,
    prefix: str = "fastpool",
    labels: Optional[Mapping[str, Any]] = None,
) -> str:
    """Render ``pool.stats()`` (or several pools') as Prometheus text exposition.

    ``pool``: a Pool or an iterable of Pools (each sample gets a ``pool="<name>"`` label; names
    must be unique). ``prefix``: metric name prefix (``""`` for none). ``labels``: extra constant
    labels added to every sample, e.g. ``{"service": "web"}``.
    """
    pools = _as_list(pool)
    names = [p.name for p in pools]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"pool names must be unique in one exposition; duplicated: {', '.join(dupes)}")
    stem = check_prefix(prefix)
    extra = check_labels(labels)
    out: List[str] = []
    for fam in families(pools, stem, extra):
        out.append(f"# HELP {fam.name} {_escape_help(fam.metric.help)}")
        out.append(f"# TYPE {fam.name} {fam.metric.type}")
        out.extend(f"{fam.name}{_label_text(pairs)} {_number(value)}" for pairs, value in fam.samples)
    return "\n".join(out) + "\n" if out else ""


class Family(NamedTuple):
    """One metric family: its full name, its definition and one sample per pool."""

    name: str
    metric: Metric
    samples: List[Tuple[List[Tuple[str, str]], float]]  # (label pairs, value in base units)


def families(pools: Iterable[Any], stem: str, extra: List[Tuple[str, str]]) -> List[Family]:
    """``stats()`` of each pool as families in stats() order (gauges first), each family's
    samples together: both text formats want a family's samples after its metadata, once.
    ``stem``: the prefix with its ``_`` (see :func:`check_prefix`); ``extra``: checked labels."""
    out: Dict[str, Family] = {}
    for p in pools:
        pairs = [("pool", p.name), *extra]
        for key, value in p.stats().items():
            metric = METRICS.get(key)
            if metric is None:  # a stat this module does not know yet: still exposed
                metric = Metric(key, "untyped", 1, f"fastpool stats() value {key!r}.")
            name = stem + metric.name
            fam = out.get(name)
            if fam is None:
                fam = out[name] = Family(name, metric, [])
            fam.samples.append((pairs, value / metric.divisor if metric.divisor != 1 else value))
    return list(out.values())


def check_prefix(prefix: Any) -> str:
    """The metric name stem for ``prefix`` (``"fastpool"`` -> ``"fastpool_"``, ``""`` -> ``""``)."""
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
    stem = f"{prefix}_" if prefix else ""
    if stem and not _METRIC_NAME.match(stem):
        raise ValueError(f"invalid metric name prefix {prefix!r}")
    return stem


def _as_list(pool: Any) -> List[Any]:
    if hasattr(pool, "stats") and hasattr(pool, "name"):
        return [pool]
    try:
        pools = list(pool)
    except TypeError:
        raise TypeError(f"expected a Pool or an iterable of Pools, not {type(pool).__name__}") from None
    for p in pools:
        if not (hasattr(p, "stats") and hasattr(p, "name")):
            raise TypeError(f"expected Pools, got a {type(p).__name__}")
    return pools


def check_labels(labels: Optional[Mapping[str, Any]]) -> List[Tuple[str, str]]:
    """``labels`` as (name, value) pairs, each name a valid Prometheus label other than ``pool``."""
    if labels is None:
        return []
    if not isinstance(labels, Mapping):
        raise TypeError(f"labels must be a mapping of label name to value, not {type(labels).__name__}")
    if not labels:
        return []
    out = []
    for k, v in labels.items():
        if not isinstance(k, str) or not _LABEL_NAME.match(k) or k.startswith("__"):
            raise ValueError(f"invalid Prometheus label name {k!r}")
        if k == "pool":
            raise ValueError("the 'pool' label is set by fastpool itself (the pool's name)")
        out.append((k, str(v)))
    return out


def _label_text(pairs: List[Tuple[str, str]]) -> str:
    return "{" + ",".join(f'{k}="{_escape_label(v)}"' for k, v in pairs) + "}"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)
