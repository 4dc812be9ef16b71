"""Indexes in the order the list pages read (deleted contacts, uncategorized phones, merges) and the queue's
indexes with the location, so a manager's page is filtered on the index alone."""

from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('dedup', '0013_contact_name_trigram'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name='cluster',
            name='cluster_status_kind_conf',
        ),
        migrations.RemoveIndex(
            model_name='cluster',
            name='cluster_queue_order',
        ),
        migrations.AddIndex(
            model_name='cluster',
            index=models.Index(fields=['status', 'kind', 'confidence', 'id', 'location'], name='cluster_kind_queue_order'),
        ),
        migrations.AddIndex(
            model_name='cluster',
            index=models.Index(fields=['status', 'confidence', 'id', 'location'], name='cluster_queue_order_loc'),
        ),
        migrations.AddIndex(
            model_name='contact',
            index=models.Index(condition=models.Q(('deleted_at__isnull', False), models.Q(('merged_into_uid', ''), _negated=True), _connector='OR'), fields=['-deleted_at', '-id'], name='contact_retired_order'),
        ),
        migrations.AddIndex(
            model_name='mergeoperation',
            index=models.Index(fields=['-created_at', '-id'], name='mergeop_newest'),
        ),
        migrations.AddIndex(
            model_name='mergeoperation',
            index=models.Index(fields=['state', '-created_at', '-id'], name='mergeop_state_newest'),
        ),
        migrations.AddIndex(
            model_name='uncategorizedphone',
            index=models.Index(fields=['-first_seen_at', '-id'], name='uncat_newest'),
        ),
    ]
