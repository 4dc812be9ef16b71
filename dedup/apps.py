"""App configuration for the dedup product."""

from __future__ import annotations

from django.apps import AppConfig


class DedupConfig(AppConfig):
    name = "dedup"
    verbose_name = "Podium contact dedup"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Worker-start hook: reconcile unfinished merges whenever a django-q2 worker starts.
        from dedup import worker_hooks  # noqa: F401
