"""A partial index of the open cross-location clusters, which the dashboard and the queue count live."""

from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('dedup', '0017_approvable_index'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddIndex(
            model_name='cluster',
            index=models.Index(condition=models.Q(('location__isnull', True), ('status', 'open')), fields=['id'], name='cluster_open_cross'),
        ),
    ]
