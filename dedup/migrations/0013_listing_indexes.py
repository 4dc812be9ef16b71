"""Indexes for the Deleted contacts and Uncategorized pages: their order read off an index, not sorted."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('dedup', '0012_contact_name_trigram'),
    ]

    operations = [
        migrations.AddIndex(
            model_name='contact',
            index=models.Index(condition=models.Q(('deleted_at__isnull', False), models.Q(('merged_into_uid', ''), _negated=True), _connector='OR'), fields=['-deleted_at', '-id'], name='contact_retired_order'),
        ),
        migrations.AddIndex(
            model_name='uncategorizedphone',
            index=models.Index(fields=['-first_seen_at', '-id'], name='uncat_newest'),
        ),
    ]
