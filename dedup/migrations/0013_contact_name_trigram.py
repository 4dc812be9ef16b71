"""On PostgreSQL, a trigram index on ``Contact.normalized_name`` so a name search is an index scan.

The queue's and Deleted contacts' name search is ``normalized_name LIKE '%word%'`` (``queue.name_search_q``):
without this index PostgreSQL reads a million names per search. ``pg_trgm`` ships with PostgreSQL and is a
trusted extension (a database owner may create it). Where it cannot be created the search still works,
only slower, so the migration says so and goes on. SQLite has no such index and needs none at its sizes.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import DatabaseError, migrations, transaction

logger = logging.getLogger(__name__)

INDEX = "contact_normname_trgm"


def add_index(apps: Any, schema_editor: Any) -> None:
    connection = schema_editor.connection
    if connection.vendor != "postgresql":
        return
    try:
        with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
            cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    except DatabaseError as exc:
        logger.warning("pg_trgm is not available (%s): name searches will read every contact", exc)
        return
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE INDEX IF NOT EXISTS {INDEX} ON dedup_contact USING gin (normalized_name gin_trgm_ops)"
        )


def drop_index(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP INDEX IF EXISTS {INDEX}")


class Migration(migrations.Migration):

    dependencies = [
        ("dedup", "0012_dashboard_tallies"),
    ]

    operations = [
        migrations.RunPython(add_index, drop_index),
    ]
