"""``INSTALLED_APPS += ["django_fastpool"]``: optional, for what needs Django's app registry.

Today that is metrics with no code: ``FASTPOOL_METRICS = ["prometheus", "opentelemetry"]``
registers fastpool's collectors when Django starts (see ``django_fastpool.metrics``). The
database backend itself (``ENGINE``) works without the app.
"""

from __future__ import annotations

from django.apps import AppConfig


class FastpoolConfig(AppConfig):
    name = "django_fastpool"
    verbose_name = "fastpool"

    def ready(self) -> None:
        from . import metrics

        metrics.setup_from_settings()
