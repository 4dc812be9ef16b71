"""Detection's bulk paths at thousands of clusters: creating (COPY on PostgreSQL, ``executemany`` on
SQLite, several batches), superseding and reopening with one audit append each, the chain intact."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dedup import detection
from dedup.audit import verify_chain
from dedup.detection import detect
from dedup.models import AuditEvent, Cluster, ClusterLocation, ClusterMember
from podium_client import Contact as PodiumContact
from tests.index_helpers import contact, index

pytestmark = pytest.mark.django_db

PAIRS = 2400


def phone(i: int) -> str:
    return f"+6141{i:07d}"


def pair(i: int, *, split: bool = False, stamp: datetime) -> list[PodiumContact]:
    """Two contacts sharing a phone (or, with ``split``, the second one on a number of its own)."""
    second_phone = f"+6142{i:07d}" if split else phone(i)
    return [
        contact(f"ct_{i:05d}_a", name=f"Person {i}", phones=(phone(i),), updated_at=stamp),
        contact(f"ct_{i:05d}_b", name=f"Person {i}", phones=(second_phone,), updated_at=stamp),
    ]


def test_thousands_of_clusters_are_created_superseded_and_reopened_in_bulk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(detection, "BATCH_GROUPS", 1000)  # several batches, the last one partial
    first = datetime(2025, 3, 1, tzinfo=UTC)
    index(*(c for i in range(PAIRS) for c in pair(i, stamp=first)))

    created = detect()
    assert created.created == created.clusters_open == created.auto == PAIRS
    assert Cluster.objects.filter(status=Cluster.OPEN).count() == PAIRS
    assert ClusterMember.objects.count() == 2 * PAIRS and ClusterLocation.objects.count() == PAIRS
    sample = Cluster.objects.get(members__contact__uid="ct_01234_a")
    assert sorted(sample.members.values_list("contact__uid", flat=True)) == ["ct_01234_a", "ct_01234_b"]
    assert sample.natural_keys == [phone(1234)] and sample.pair_scores[0]["score"] == 0.8
    assert sample.members.get(contact__uid="ct_01234_a").updated_at_when_scored == first
    assert list(sample.locations.values_list("uid", flat=True)) == ["loc_sydney"]

    again = detect()
    assert again.unchanged == PAIRS and again.created == again.refreshed == again.superseded == 0

    # Every other pair splits: its cluster is superseded, one audit event each, the chain intact.
    later = first + timedelta(days=1)
    split = [i for i in range(PAIRS) if i % 2 == 0]
    index(*(c for i in split for c in pair(i, split=True, stamp=later)))
    events_before = AuditEvent.objects.count()
    gone = detect()
    assert gone.superseded == len(split) and gone.unchanged == PAIRS - len(split)
    assert Cluster.objects.filter(status=Cluster.SUPERSEDED).count() == len(split)
    superseded = AuditEvent.objects.filter(event_type="cluster.superseded", id__gt=0).order_by("id")
    assert superseded.count() == len(split) == AuditEvent.objects.count() - events_before
    event = superseded.get(cluster_ref=sample.cluster_id) if 1234 in split else superseded.first()
    assert event is not None and event.payload["reason"] == "no longer a duplicate group"
    assert event.location_uids == ["loc_sydney"]
    status = verify_chain()
    assert status.ok, status.describe()

    # The pairs join again: the same ids, so the superseded rows are reopened (and audited).
    index(*(c for i in split for c in pair(i, stamp=later + timedelta(days=1))))
    back = detect()
    assert back.reopened == len(split) and back.created == 0
    assert Cluster.objects.filter(status=Cluster.OPEN).count() == PAIRS
    assert AuditEvent.objects.filter(event_type="cluster.reopened").count() == len(split)
    assert ClusterMember.objects.count() == 2 * PAIRS
    status = verify_chain()
    assert status.ok, status.describe()


def index_names() -> set[str]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename IN (%s, %s, %s)",
            [Cluster._meta.db_table, ClusterMember._meta.db_table, ClusterLocation._meta.db_table],
        )
        return {row[0] for row in cursor.fetchall()}


@pytest.mark.postgres
def test_a_first_detection_builds_the_cluster_indexes_after_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    from dedup.detect import writing

    monkeypatch.setattr(writing, "BULK_LOAD_MIN_GROUPS", 100)
    stamp = datetime(2025, 3, 1, tzinfo=UTC)
    index(*(c for i in range(300) for c in pair(i, stamp=stamp)))
    before = index_names()
    assert {"cluster_queue_order_loc", "cluster_loc_status", "uniq_cluster_member"} <= before

    timings = detect().timings
    assert "index_build" in timings  # the secondary indexes were dropped and built again
    assert index_names() == before
    assert Cluster.objects.filter(status=Cluster.OPEN).count() == 300 == ClusterLocation.objects.count()
    assert ClusterMember.objects.count() == 600

    # Not on a table that holds clusters: those are written row by row into the indexes.
    index(*(c for i in range(300, 420) for c in pair(i, stamp=stamp)))
    again = detect()
    assert again.created == 120 and "index_build" not in again.timings
    assert index_names() == before
