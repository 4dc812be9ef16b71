"""App configuration for the dedup product."""

from __future__ import annotations

from django.apps import AppConfig


class DedupConfig(AppConfig):
    name = "dedup"
    verbose_name = "Podium contact dedup"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Worker-start hooks: reconcile unfinished merges, keep the periodic incremental scan scheduled at
        # the policy's interval, schedule the webhook sweep, and stop promptly on SIGTERM, whenever a
        # django-q2 worker starts.
        from dedup import schedule, worker_hooks, workers  # noqa: F401
        from dedup.realtime import apply  # noqa: F401  (schedules the webhook sweep at worker start)
