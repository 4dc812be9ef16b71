"""Key the audit chain (HMAC), sealing the events written before; sign-in lockout moves to django-axes.

Existing audit events keep their unkeyed SHA-256 hashes (``chain_version`` 1): rewriting them would need
the append-only trigger lifted and would make every export taken before this migration disagree with the
log. Instead one keyed event, "audit.chain_keyed", is appended after them: its HMAC covers the last
unkeyed hash, so none of the earlier events can be changed afterwards without the key. Every event
written from now on is keyed (``chain_version`` 2). Adding the column writes no row (PostgreSQL 11+
stores the default in the catalogue), so the append-only trigger is never involved.

``LoginAttempt`` is dropped: failed sign-ins are django-axes' ``AccessAttempt`` now (its own migrations).
A lockout in progress at upgrade time is forgotten, which is at most 15 minutes of failures.
"""

from __future__ import annotations

from typing import Any

from django.db import migrations, models


def seal(apps: Any, schema_editor: Any) -> None:
    from dedup.audit import seal_unkeyed_events

    seal_unkeyed_events(apps.get_model("dedup", "AuditEvent"))


class Migration(migrations.Migration):
    dependencies = [
        ("dedup", "0005_merge_strategies"),
    ]

    operations = [
        migrations.DeleteModel(name="LoginAttempt"),
        # Existing rows are unkeyed (1); the model's default for new rows is keyed (2).
        migrations.AddField(
            model_name="auditevent",
            name="chain_version",
            field=models.PositiveSmallIntegerField(default=1),
            preserve_default=False,
        ),
        migrations.AlterField(
            model_name="auditevent",
            name="chain_version",
            field=models.PositiveSmallIntegerField(
                default=2, help_text="1: unkeyed SHA-256 (before keying); 2: HMAC-SHA-256"
            ),
        ),
        # Appending only: never reversed (a keyed event stays in the log).
        migrations.RunPython(seal, migrations.RunPython.noop),
    ]
