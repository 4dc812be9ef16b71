"""One django-q2 schedule per name among the product's own (``dedup: …``): a unique index, not a check.

Workers create the scan and merge-retry schedules when they start; two starting together both found
none and both inserted, and every later start failed on ``MultipleObjectsReturned``. The duplicates
such a race left are removed first (the oldest of each name stays). The index is partial so schedules
an admin adds under other names are not constrained.

The index is raw SQL on django-q2's table, so it comes after django-q2's own migrations: on SQLite a
later ``AlterField`` on ``Schedule`` would rebuild the table without it (``tests/test_schedules.py``
checks it is there).
"""

from __future__ import annotations

from typing import Any

from django.db import migrations

INDEX = "dedup_q_schedule_one_per_name"
PREFIX = "dedup:"


def drop_duplicate_schedules(apps: Any, schema_editor: Any) -> None:
    Schedule = apps.get_model("django_q", "Schedule")
    seen: set[str] = set()
    for pk, name in Schedule.objects.filter(name__startswith=PREFIX).order_by("name", "id").values_list("id", "name"):
        if name in seen:
            Schedule.objects.filter(pk=pk).delete()
        seen.add(name)


class Migration(migrations.Migration):

    dependencies = [
        ("dedup", "0006_keyed_audit_chain_and_axes_lockout"),
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
    ]

    operations = [
        migrations.RunPython(drop_duplicate_schedules, migrations.RunPython.noop),
        migrations.RunSQL(
            f"CREATE UNIQUE INDEX {INDEX} ON django_q_schedule (name) WHERE name LIKE '{PREFIX}%'",
            f"DROP INDEX {INDEX}",
        ),
    ]
