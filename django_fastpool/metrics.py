"""The ``FASTPOOL_METRICS`` setting: export every fastpool pool's metrics without code.

::

    INSTALLED_APPS = [..., "django_fastpool"]
    FASTPOOL_METRICS = ["prometheus", "opentelemetry"]   # either or both
    # or with options for fastpool.prometheus.Collector / fastpool.otel.instrument, e.g. the
    # opt-in per-event histograms (each costs a call per getconn/putconn):
    FASTPOOL_METRICS = {"prometheus": {"histograms": True}, "opentelemetry": {"histograms": True}}

* ``"prometheus"``: a :class:`fastpool.prometheus.Collector` over every pool of the process in
  ``prometheus_client.REGISTRY`` (the default registry that ``django-prometheus`` and
  ``prometheus_client``'s own exposition serve).
* ``"opentelemetry"``: :func:`fastpool.otel.instrument` on the global MeterProvider (configure
  the provider before Django starts, as the OpenTelemetry SDK asks).

Pools are named ``django:<alias>``. Both need ``pip install 'fastpool[metrics]'``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

EXPORTERS = ("prometheus", "opentelemetry")

#: what setup_from_settings() registered in this process (it is idempotent)
registered: List[Any] = []


def setup_from_settings() -> List[Any]:
    """Register what ``settings.FASTPOOL_METRICS`` asks for, once per process."""
    setting = getattr(settings, "FASTPOOL_METRICS", None) or []
    wanted: Dict[str, Dict[str, Any]]
    if isinstance(setting, Mapping):
        wanted = {}
        for name, options in setting.items():
            if not isinstance(options, Mapping):
                raise ImproperlyConfigured(
                    f"FASTPOOL_METRICS[{name!r}] must be a dict of options, not {options!r}")
            wanted[name] = dict(options)
    elif isinstance(setting, (list, tuple)):
        wanted = {name: {} for name in setting}
    else:
        raise ImproperlyConfigured(
            f"FASTPOOL_METRICS must be a list of {', '.join(map(repr, EXPORTERS))} (or a dict of "
            f"them to options), not {setting!r}")
    unknown = [w for w in wanted if w not in EXPORTERS]
    if unknown:
        raise ImproperlyConfigured(
            f"FASTPOOL_METRICS: unknown exporter(s) {unknown!r}; choose from {', '.join(map(repr, EXPORTERS))}")
    if registered:
        return registered
    try:
        if "prometheus" in wanted:
            from prometheus_client import REGISTRY

            from fastpool.prometheus import Collector

            collector = _make("prometheus", Collector, wanted["prometheus"])
            try:
                REGISTRY.register(collector)
            except ValueError as exc:  # the same names are registered already
                collector.close()
                raise ImproperlyConfigured(
                    f"FASTPOOL_METRICS['prometheus']: {exc} (a fastpool Collector is registered "
                    f"already: drop it or the setting, or give one a prefix)") from exc
            registered.append(collector)
        if "opentelemetry" in wanted:
            from fastpool import otel

            registered.append(_make("opentelemetry", otel.instrument, wanted["opentelemetry"]))
    except ImportError as exc:
        raise ImproperlyConfigured(
            f"FASTPOOL_METRICS needs the metrics extra: pip install 'fastpool[metrics]' ({exc})") from exc
    return registered


def _make(name: str, factory: Any, options: Dict[str, Any]) -> Any:
    try:
        return factory(**options)
    except (TypeError, ValueError) as exc:
        raise ImproperlyConfigured(f"FASTPOOL_METRICS[{name!r}]: {exc}") from exc
