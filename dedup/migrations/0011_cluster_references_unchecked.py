"""The cluster tables' references are no longer checked by the database (see ``Cluster.location``).

Detection writes hundreds of thousands of cluster, member and location rows in one go, and PostgreSQL
checks every foreign key with one query per row. The many-to-many table behind ``Cluster.locations``
becomes an explicit model (``ClusterLocation``, the same table and columns) so that its references can
be unchecked too; only the state changes for that step, then every constraint is dropped, and the
three indexes that a composite index already covers (each row written costs every index an insert).
"""

from __future__ import annotations

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('dedup', '0010_budget_and_worker_heartbeats'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name='ClusterLocation',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('cluster', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, to='dedup.cluster')),
                        ('location', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, to='dedup.location')),
                    ],
                    options={
                        'db_table': 'dedup_cluster_locations',
                        'unique_together': {('cluster', 'location')},
                    },
                ),
                migrations.AlterField(
                    model_name='cluster',
                    name='locations',
                    field=models.ManyToManyField(blank=True, related_name='clusters_touching', through='dedup.ClusterLocation', to='dedup.location'),
                ),
            ],
        ),
        migrations.AlterField(
            model_name='clusterlocation',
            name='cluster',
            field=models.ForeignKey(db_constraint=False, db_index=False, on_delete=django.db.models.deletion.CASCADE, to='dedup.cluster'),
        ),
        migrations.AlterField(
            model_name='clusterlocation',
            name='location',
            field=models.ForeignKey(db_constraint=False, on_delete=django.db.models.deletion.CASCADE, to='dedup.location'),
        ),
        migrations.AlterField(
            model_name='cluster',
            name='location',
            field=models.ForeignKey(blank=True, db_constraint=False, db_index=False, help_text='empty for a cross-location cluster', null=True, on_delete=django.db.models.deletion.PROTECT, related_name='clusters', to='dedup.location'),
        ),
        migrations.AlterField(
            model_name='cluster',
            name='scan_run',
            field=models.ForeignKey(blank=True, db_constraint=False, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='dedup.scanrun'),
        ),
        migrations.AlterField(
            model_name='clustermember',
            name='cluster',
            field=models.ForeignKey(db_constraint=False, db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='members', to='dedup.cluster'),
        ),
        migrations.AlterField(
            model_name='clustermember',
            name='contact',
            field=models.ForeignKey(db_constraint=False, on_delete=django.db.models.deletion.PROTECT, related_name='memberships', to='dedup.contact'),
        ),
        migrations.AlterField(
            model_name='clustermember',
            name='location',
            field=models.ForeignKey(db_constraint=False, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='dedup.location'),
        ),
    ]
