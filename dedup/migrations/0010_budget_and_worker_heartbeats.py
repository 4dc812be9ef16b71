"""The shared Podium budget without Redis (``RateBudget``) and the workers' heartbeats (``WorkerHeartbeat``)."""

from __future__ import annotations

import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('dedup', '0009_realtime_webhooks_api_tokens_policy_version'),
    ]

    operations = [
        migrations.CreateModel(
            name='RateBudget',
            fields=[
                ('key', models.CharField(max_length=64, primary_key=True, serialize=False)),
                ('tat', models.FloatField(default=0.0, help_text='when the next request may start (epoch seconds)')),
                ('blocked_until', models.FloatField(default=0.0, help_text="end of Podium's last rate_limit (epoch seconds)")),
                ('last_now', models.FloatField(default=0.0)),
                ('last_start', models.FloatField(default=0.0)),
                ('last_granted', models.BooleanField(default=False)),
                ('granted', models.BigIntegerField(default=0)),
                ('rate_limited', models.BigIntegerField(default=0)),
            ],
        ),
        migrations.CreateModel(
            name='WorkerHeartbeat',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('name', models.CharField(help_text='host:pid of the worker process', max_length=200, unique=True)),
                ('host', models.CharField(max_length=200)),
                ('pid', models.PositiveIntegerField()),
                ('cluster', models.CharField(blank=True, default='', help_text='host:pid of its qcluster', max_length=200)),
                ('started_at', models.DateTimeField(default=django.utils.timezone.now)),
                ('beat_at', models.DateTimeField(db_index=True, default=django.utils.timezone.now)),
                ('task', models.CharField(blank=True, default='', max_length=200)),
                ('task_started_at', models.DateTimeField(blank=True, null=True)),
                ('tasks_done', models.PositiveIntegerField(default=0)),
                ('stopped_at', models.DateTimeField(blank=True, null=True)),
            ],
        ),
    ]
