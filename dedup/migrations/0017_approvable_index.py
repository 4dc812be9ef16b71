"""A partial index of the open auto-mergeable clusters, which "approve all matching" counts."""

from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('dedup', '0016_audit_locations_gin'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddIndex(
            model_name='cluster',
            index=models.Index(condition=models.Q(('auto_merge', True), ('kind', 'auto'), ('status', 'open')), fields=['location', 'id'], name='cluster_approvable'),
        ),
    ]
