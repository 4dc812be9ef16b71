"""WSGI entry point for production servers."""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

from dedup.envconfig import SettingsError

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dedup.settings")
try:
    application = get_wsgi_application()
except SettingsError as exc:
    # One line in the server's log saying what to set, not a traceback through the settings loader.
    raise SystemExit(f"configuration error: {exc}") from None

from dedup.heap import settle_heap  # noqa: E402  (needs the settings loaded above)

settle_heap()
