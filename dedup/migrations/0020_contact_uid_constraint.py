"""The contact uid is unique through a named constraint instead of ``unique=True``.

The database keeps the very same unique index (``dedup_contact_uid_key``, the name PostgreSQL gave the
``unique=True`` constraint); only the model state says it the other way. On PostgreSQL ``unique=True`` on
a varchar also built ``…_like``, a second index of the uid for ``LIKE 'x%'`` lookups: nothing looks uids up
that way, and at a million contacts every contact written paid for it (an insertion at a random place of
a 70 MB index). It is dropped; going back builds it again.
"""

from django.db import migrations, models


def _like_index(apps, schema_editor):
    table = apps.get_model("dedup", "contact")._meta.db_table
    return schema_editor.quote_name(schema_editor._create_index_name(table, ["uid"], suffix="_like")), table


def drop_like_index(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return  # only PostgreSQL builds the pattern index
    name, _table = _like_index(apps, schema_editor)
    schema_editor.execute(f"DROP INDEX IF EXISTS {name}")


def restore_like_index(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    name, table = _like_index(apps, schema_editor)
    q = schema_editor.quote_name
    schema_editor.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {q(table)} ({q('uid')} varchar_pattern_ops)")


class Migration(migrations.Migration):
    dependencies = [
        ("dedup", "0019_shared_prefix_indexes"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(model_name="contact", name="uid", field=models.CharField(max_length=64)),
                migrations.AddConstraint(
                    model_name="contact",
                    constraint=models.UniqueConstraint(fields=("uid",), name="dedup_contact_uid_key"),
                ),
            ],
            database_operations=[migrations.RunPython(drop_like_index, restore_like_index)],
        ),
    ]
