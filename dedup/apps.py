"""App configuration for the dedup product."""

from __future__ import annotations

from django.apps import AppConfig


class DedupConfig(AppConfig):
    name = "dedup"
    verbose_name = "Podium contact dedup"
    default_auto_field = "django.db.models.BigAutoField"
