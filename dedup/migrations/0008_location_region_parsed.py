"""Remember the region each location's contacts were parsed with, so a region change re-parses them.

Existing locations are taken to have been parsed with the region they have now (it is what every scan
used); a scan, or the re-parse an admin's region change starts, brings any later difference back in step.
"""

from __future__ import annotations

from typing import Any

from django.db import migrations, models


def parsed_with_current_region(apps: Any, schema_editor: Any) -> None:
    Location = apps.get_model("dedup", "Location")
    Location.objects.update(region_parsed=models.F("country"))


class Migration(migrations.Migration):
    dependencies = [
        ("dedup", "0007_one_schedule_per_name"),
    ]

    operations = [
        migrations.AddField(
            model_name="location",
            name="region_parsed",
            field=models.CharField(
                blank=True,
                default="",
                help_text="the region the index last parsed this location's contacts with; differs from the "
                "region in force until they are re-parsed",
                max_length=2,
            ),
        ),
        migrations.AlterField(
            model_name="scanrun",
            name="kind",
            field=models.CharField(
                choices=[("full", "Full"), ("incremental", "Incremental"), ("file", "Export file"), ("reparse", "Re-parse")],
                default="full",
                max_length=12,
            ),
        ),
        migrations.RunPython(parsed_with_current_region, migrations.RunPython.noop),
    ]
