"""Emptying the test database after a transactional test, past the audit log's TRUNCATE guard.

Migration 0002 refuses TRUNCATE of audit events on PostgreSQL, and TRUNCATE is how pytest-django empties
the database after a ``transaction=True`` test. A fixture calls ``lift_for_the_flush()`` after its
``yield``: the guard is switched off for that flush only and on again when the flush ends (a flush emits
``post_migrate``), so every other test runs with it. Production never lifts it.
"""

from __future__ import annotations

from typing import Any

from django.db import connection
from django.db.models.signals import post_migrate

_DISPATCH_UID = "tests.audit_guard.on_again"


def lift_for_the_flush() -> None:
    """Switch the TRUNCATE guard off until the next flush has run (PostgreSQL; nothing elsewhere)."""
    if connection.vendor != "postgresql":
        return

    def on_again(**kwargs: Any) -> None:
        with connection.cursor() as cursor:
            cursor.execute("ALTER TABLE dedup_auditevent ENABLE TRIGGER dedup_audit_no_truncate")
        post_migrate.disconnect(dispatch_uid=_DISPATCH_UID)

    post_migrate.connect(on_again, weak=False, dispatch_uid=_DISPATCH_UID)
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE dedup_auditevent DISABLE TRIGGER dedup_audit_no_truncate")
