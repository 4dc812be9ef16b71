"""Many open auto clusters at once, bulk-inserted in the index's v4 shape (the real indexer would take minutes
for thousands): every member has its location, per-channel consent and a conversation of its own."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from django.db import transaction

from dedup.clustering import stable_cluster_id
from dedup.models import Cluster, ClusterMember, Contact, ContactKey, ContactLocation, Location
from dedup.names import normalize_name

_WHEN = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


def bulk_auto_clusters(location: Location, n: int, *, start: int = 0, name: str = "Maria Garcia") -> list[Cluster]:
    """``n`` open auto clusters of two members each at ``location``, every pair sharing a phone and the name."""
    contacts: list[Contact] = []
    keys: list[tuple[int, str, str]] = []
    for i in range(start, start + n):
        e164 = f"+6141{i:07d}"
        for m, raw in enumerate((e164, "04" + e164[4:])):
            uid = f"ct_q{location.pk:02d}{i:07d}{m}_bulk"
            contacts.append(Contact(
                uid=uid, location=location, location_uids=[location.uid], name=name,
                normalized_name=normalize_name(name),
                channels=[{"type": "PHONE", "identifier": raw, "label": None,
                           "marketingOptedInLocationUids": [location.uid], "transactionalOptedOutAt": None}],
                # A conversation of its own: the published API reaches each member alone through it.
                conversations=[f"conv-{uid}"], conversation_count=1,
                field_count=2, updated_at=_WHEN, created_at=_WHEN,
            ))
            keys.append((len(contacts) - 1, e164, raw))
    with transaction.atomic():
        created = Contact.objects.bulk_create(contacts, batch_size=500)
        ContactLocation.objects.bulk_create(
            [ContactLocation(contact=c, location=location) for c in created], batch_size=500
        )
        ContactKey.objects.bulk_create(
            [ContactKey(contact=created[i], location=location, kind="PHONE", key=k, raw=r) for i, k, r in keys],
            batch_size=500,
        )
        clusters = Cluster.objects.bulk_create(
            [
                Cluster(
                    cluster_id=stable_cluster_id([created[j].uid, created[j + 1].uid]),
                    natural_keys=[keys[j][1]], location=location, kind=Cluster.AUTO, confidence=Decimal("0.80"),
                    auto_merge=True, status=Cluster.OPEN, reasons=["auto_merge_eligible"],
                    pair_scores=[{"a": created[j].uid, "b": created[j + 1].uid, "score": 0.8,
                                  "reasons": ["same_phone", "same_name"], "conflict": False}],
                    member_count=2, suggested_primary_uid=created[j].uid,
                )
                for j in range(0, len(created), 2)
            ],
            batch_size=500,
        )
        ClusterMember.objects.bulk_create(
            [
                ClusterMember(cluster=cl, contact=created[2 * k + m], location=location, updated_at_when_scored=_WHEN)
                for k, cl in enumerate(clusters) for m in (0, 1)
            ],
            batch_size=500,
        )
        through = Cluster.locations.through
        through.objects.bulk_create(
            [through(cluster_id=cl.pk, location_id=location.pk) for cl in clusters], batch_size=500
        )
    return clusters
