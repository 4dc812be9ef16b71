"""The dashboard's tallies of active contacts and open clusters (``dedup.tallies``); triggers on PostgreSQL."""

from __future__ import annotations

from typing import Any

from django.db import migrations, models


def add_triggers(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return  # SQLite counts live (dedup.tallies.kept_by_database)
    from dedup.tallies import CLUSTER_TRIGGER_SQL, CONTACT_TRIGGER_SQL, SEED_SQL

    with schema_editor.connection.cursor() as cursor:
        # One execute per script: plpgsql bodies hold semicolons, and nothing here has a placeholder.
        cursor.execute(CONTACT_TRIGGER_SQL)
        cursor.execute(CLUSTER_TRIGGER_SQL)
        cursor.execute(SEED_SQL)


def drop_triggers(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    from dedup.tallies import DROP_TRIGGERS_SQL

    with schema_editor.connection.cursor() as cursor:
        cursor.execute(DROP_TRIGGERS_SQL)


class Migration(migrations.Migration):

    dependencies = [
        ("dedup", "0011_cluster_references_unchecked"),
    ]

    operations = [
        migrations.CreateModel(
            name="ContactTally",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("location_id", models.BigIntegerField(help_text="the contact's home location")),
                ("location_uids", models.TextField(help_text="the contact's location_uids as JSON text")),
                ("n", models.BigIntegerField()),
            ],
            options={"indexes": [models.Index(fields=["location_id"], name="contacttally_loc")]},
        ),
        migrations.CreateModel(
            name="ClusterTally",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("location_id", models.BigIntegerField()),
                ("kind", models.CharField(max_length=6)),
                ("n", models.BigIntegerField()),
            ],
            options={"indexes": [models.Index(fields=["location_id", "kind"], name="clustertally_loc_kind")]},
        ),
        migrations.RunPython(add_triggers, drop_triggers),
    ]
