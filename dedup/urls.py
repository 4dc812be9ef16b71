"""URL routes. Views live in ``dedup.views``; this file only maps paths."""

from __future__ import annotations

from django.contrib import admin
from django.urls import path

from dedup.health import healthz

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
]
