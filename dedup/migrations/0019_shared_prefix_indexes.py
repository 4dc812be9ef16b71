"""Drop the indexes whose column already leads a composite index (each cost an insertion per row written).

The model state changes as ``makemigrations`` wrote it, but the database only drops indexes: altering
the foreign keys would drop and re-check their constraints (on SQLite, copy whole tables), which a
million contacts make slow for nothing. Django names a foreign key's index the same way on every
backend, so the names are computed, not copied.
"""

import django.db.models.deletion
from django.db import migrations, models

# (model, column) whose single-column index goes; the composite index that serves it instead:
_SERVED = [
    ("contact", "location_id"),  # contact_loc_deleted (location_id, deleted_at)
    ("contactkey", "contact_id"),  # uniq_contact_key (contact_id, kind, key)
    ("contactlocation", "contact_id"),  # uniq_contact_location (contact_id, location_id)
    ("contactlocation", "location_id"),  # contactloc_loc_contact (location_id, contact_id)
    ("uncategorizedphone", "contact_id"),  # uniq_uncategorized_phone (contact_id, raw)
    ("uncategorizedphone", "location_id"),  # uncat_loc_code (location_id, code)
]


def _indexes(apps, schema_editor):
    for model_name, column in _SERVED:
        table = apps.get_model("dedup", model_name)._meta.db_table
        yield table, column, schema_editor._create_index_name(table, [column])


def drop_indexes(apps, schema_editor):
    for _table, _column, name in _indexes(apps, schema_editor):
        schema_editor.execute(f"DROP INDEX IF EXISTS {schema_editor.quote_name(name)}")


def restore_indexes(apps, schema_editor):
    for table, column, name in _indexes(apps, schema_editor):
        q = schema_editor.quote_name
        schema_editor.execute(f"CREATE INDEX IF NOT EXISTS {q(name)} ON {q(table)} ({q(column)})")


class Migration(migrations.Migration):
    dependencies = [
        ("dedup", "0018_open_cross_index"),
    ]

    operations = [
        # contactkey_key (key) is served by contactkey_key_loc (key, location_id).
        migrations.RemoveIndex(model_name="contactkey", name="contactkey_key"),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="contact",
                    name="location",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="contacts",
                        to="dedup.location",
                    ),
                ),
                migrations.AlterField(
                    model_name="contactkey",
                    name="contact",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="keys",
                        to="dedup.contact",
                    ),
                ),
                migrations.AlterField(
                    model_name="contactlocation",
                    name="contact",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="contact_locations",
                        to="dedup.contact",
                    ),
                ),
                migrations.AlterField(
                    model_name="contactlocation",
                    name="location",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="dedup.location",
                    ),
                ),
                migrations.AlterField(
                    model_name="uncategorizedphone",
                    name="contact",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="uncategorized_phones",
                        to="dedup.contact",
                    ),
                ),
                migrations.AlterField(
                    model_name="uncategorizedphone",
                    name="location",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="dedup.location",
                    ),
                ),
            ],
            database_operations=[migrations.RunPython(drop_indexes, restore_indexes)],
        ),
    ]
