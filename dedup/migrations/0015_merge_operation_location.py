"""Each merge carries its cluster's own location (filled in for the merges already made)."""

from typing import Any

import django.db.models.deletion
from django.db import migrations, models


def backfill(apps: Any, schema_editor: Any) -> None:
    # One statement, the same on SQLite and PostgreSQL; a cross-location cluster's merges stay empty.
    schema_editor.execute(
        "UPDATE dedup_mergeoperation SET location_id = "
        "(SELECT location_id FROM dedup_cluster WHERE dedup_cluster.id = dedup_mergeoperation.cluster_id)"
    )


class Migration(migrations.Migration):

    dependencies = [
        ('dedup', '0014_listing_and_queue_indexes'),
    ]

    operations = [
        migrations.AddField(
            model_name='mergeoperation',
            name='location',
            field=models.ForeignKey(blank=True, help_text="the cluster's own location (empty for a cross-location cluster), copied when created so the history is filtered by location without reading every cluster (access.operations_visible_to)", null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='dedup.location'),
        ),
        migrations.RunPython(backfill, migrations.RunPython.noop),
    ]
