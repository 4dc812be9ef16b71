"""On PostgreSQL, a GIN index on the audit log's location uids: a manager's audit page is an index scan.

``access.audit_events_visible_to`` asks ``location_uids ?| array[…]`` there (any of the manager's
locations is an element of the event's list); SQLite keeps its text match and needs no index at its sizes.
"""

from __future__ import annotations

from typing import Any

from django.db import migrations

INDEX = "auditevent_location_uids_gin"


def add_index(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"CREATE INDEX IF NOT EXISTS {INDEX} ON dedup_auditevent USING gin (location_uids)")


def drop_index(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP INDEX IF EXISTS {INDEX}")


class Migration(migrations.Migration):

    dependencies = [
        ("dedup", "0015_merge_operation_location"),
    ]

    operations = [
        migrations.RunPython(add_index, drop_index),
    ]
