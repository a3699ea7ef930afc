"""Pool statistics in the Prometheus text exposition format (version 0.0.4).

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
    name: str  # without the prefix
    type: str  # "gauge" | "counter"
    divisor: int  # the stats() value is divided by this (ms -> s: 1000)
    help: str


#: stats() key -> how it is exposed.
METRICS: Dict[str, Metric] = {
    "pool_min": Metric("pool_min", "gauge", 1, "Configured minimum number of connections (min_size)."),
    "pool_max": Metric("pool_max", "gauge", 1, "Configured maximum number of connections (max_size)."),
    "pool_size": Metric("pool_size", "gauge", 1,
                        "Connections the pool holds now: idle, in use and being opened."),
    "pool_available": Metric("pool_available", "gauge", 1, "Idle connections ready to be handed out."),
    "requests_waiting": Metric("requests_waiting", "gauge", 1, "Requests waiting for a connection now."),
    "requests_num": Metric("requests_total", "counter", 1, "Connection requests (getconn calls)."),
    "requests_queued": Metric("requests_queued_total", "counter", 1,
                              "Requests that had to wait because no connection was idle."),
    "requests_wait_ms": Metric("requests_wait_seconds_total", "counter", 1000,
                               "Total time requests spent waiting for a connection."),
    "requests_errors": Metric("requests_errors_total", "counter", 1,
                              "Requests that failed (timeout, too many waiting, pool closed)."),
    "returns_bad": Metric("returns_bad_total", "counter", 1,
                          "Connections returned broken or not resettable, and discarded."),
    "connections_num": Metric("connections_total", "counter", 1, "Connections opened to the server."),
    "connections_ms": Metric("connections_seconds_total", "counter", 1000,
                             "Total time spent opening connections."),
    "connections_errors": Metric("connections_errors_total", "counter", 1, "Failed connection attempts."),
    "connections_lost": Metric("connections_lost_total", "counter", 1,
                               "Idle connections found dead by a health check."),
    "connections_reclaimed": Metric("connections_reclaimed_total", "counter", 1,
                                    "Borrowed connections garbage-collected without being returned."),
    "usage_ms": Metric("usage_seconds_total", "counter", 1000,
                       "Total time connections were checked out."),
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
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
    extra = _check_labels(labels)
    stem = f"{prefix}_" if prefix else ""

    # Collect per family first: the format wants each family's samples together, after its
    # HELP and TYPE lines, once.
    families: Dict[str, Tuple[str, str, List[str]]] = {}
    for p in pools:
        label_text = _label_text([("pool", p.name), *extra])
        for key, value in p.stats().items():
            metric = METRICS.get(key)
            if metric is None:  # a stat this module does not know yet: still exposed
                metric = Metric(key, "untyped", 1, f"fastpool stats() value {key!r}.")
            name = stem + metric.name
            if not _METRIC_NAME.match(name):
                raise ValueError(f"invalid metric name {name!r} (check prefix)")
            fam = families.setdefault(name, (metric.type, metric.help, []))
            fam[2].append(f"{name}{label_text} {_number(value / metric.divisor if metric.divisor != 1 else value)}")

    out: List[str] = []
    for name, (mtype, help_, samples) in families.items():
        out.append(f"# HELP {name} {_escape_help(help_)}")
        out.append(f"# TYPE {name} {mtype}")
        out.extend(samples)
    return "\n".join(out) + "\n" if out else ""


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


def _check_labels(labels: Optional[Mapping[str, Any]]) -> List[Tuple[str, str]]:
    if not labels:
        return []
    out = []
    for k, v in labels.items():
        if not isinstance(k, str) or not _LABEL_NAME.match(k) or k.startswith("__"):
            raise ValueError(f"invalid Prometheus label name {k!r}")
        if k == "pool":
            raise ValueError("the 'pool' label is set by prometheus_text itself")
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
