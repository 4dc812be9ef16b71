"""Detection with its writes overlapped (rows sent from a thread while the next batch is scored, the
next batch's members read one batch ahead) writes exactly what the one-step-at-a-time path writes, and
every cluster it writes carries the verdicts of the domain rules (``assess_cluster``,
``choose_primary``) for its members as indexed."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from django.db import connection

from dedup import detection
from dedup.detect import writing
from dedup.detect.records import load_member_records
from dedup.models import AuditEvent, Cluster, ClusterLocation, ClusterMember, Policy
from dedup.scanning import start_scan
from dedup.scoring import assess_cluster
from dedup.survivorship import choose_primary
from podium_client.corpus import generate_corpus

pytest_plugins = ["tests.merge_helpers"]  # pg_flushable

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]




def dump() -> list[tuple[object, ...]]:
    """Every cluster row with its member and location rows, row ids included."""
    members: dict[int, list[tuple[object, ...]]] = {}
    for row in ClusterMember.objects.values_list("cluster_id", "contact_id", "location_id", "updated_at_when_scored"):
        members.setdefault(row[0], []).append(row[1:])
    locations: dict[int, list[int]] = {}
    for cluster_id, location_id in ClusterLocation.objects.values_list("cluster_id", "location_id"):
        locations.setdefault(cluster_id, []).append(location_id)
    rows: list[tuple[object, ...]] = []
    for c in Cluster.objects.order_by("pk"):
        rows.append(
            (
                c.pk, c.cluster_id, c.status, c.kind, c.confidence, c.auto_merge, c.cross_location, c.location_id,
                json.dumps(c.natural_keys), json.dumps(c.reasons), json.dumps(c.pair_scores), c.member_count,
                c.suggested_primary_uid, c.policy_version, c.superseded_by_id,
                sorted(members.get(c.pk, []), key=repr), sorted(locations.get(c.pk, [])),
            )
        )  # fmt: skip
    return rows


def empty_clusters() -> None:
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE dedup_clustermember, dedup_cluster_locations, dedup_cluster CASCADE")
        cursor.execute("SELECT setval(pg_get_serial_sequence('dedup_cluster', 'id'), 1, false)")


def run(monkeypatch: pytest.MonkeyPatch, overlapped: bool) -> tuple[list[tuple[object, ...]], int]:
    monkeypatch.setattr(writing, "SEND_IN_BACKGROUND", overlapped)
    monkeypatch.setattr(detection, "READ_AHEAD", overlapped)
    empty_clusters()
    events = AuditEvent.objects.count()
    detection.detect(workers=0)
    return dump(), AuditEvent.objects.count() - events


def test_overlapped_writes_match_the_step_by_step_path_and_the_rules(
    pg_flushable: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines, _truth = generate_corpus(600, 11)
    path = tmp_path / "corpus.ndjson"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    start_scan(from_file=str(path), run_async=False)
    monkeypatch.setattr(detection, "BATCH_GROUPS", 7)  # many batches, each one written behind the next
    monkeypatch.setattr(writing, "BULK_LOAD_MIN_GROUPS", 0)  # and the indexes built after loading

    reference, reference_events = run(monkeypatch, overlapped=False)
    overlapped, overlapped_events = run(monkeypatch, overlapped=True)
    assert len(reference) > 7 * 10
    assert overlapped == reference
    assert overlapped_events == reference_events

    # The rows against the rules themselves, member by member as indexed.
    policy = Policy.current()
    for cluster in Cluster.objects.filter(status=Cluster.OPEN).prefetch_related("members"):
        ids = [m.contact_id for m in cluster.members.all()]
        records = sorted(load_member_records(ids).values(), key=lambda r: r.uid)
        assessment = assess_cluster(
            records, threshold=policy.auto_merge_threshold,
            allow_cross_location_auto=policy.cross_location_auto_merge, use_email_key=policy.email_secondary_key,
        )  # fmt: skip
        context = cluster.cluster_id
        assert cluster.confidence == Decimal(f"{assessment.confidence:.2f}"), context
        assert cluster.auto_merge == assessment.auto_merge, context
        assert cluster.suggested_primary_uid == choose_primary(records).uid, context
        expected_pairs = [
            {"a": p.uid_a, "b": p.uid_b, "score": p.score, "reasons": list(p.reasons), "conflict": p.conflict}
            for _key, p in sorted(assessment.pairs.items())
        ]
        assert cluster.pair_scores == expected_pairs, context
        if not cluster.cross_location:
            assert cluster.reasons == list(assessment.reasons), context


def test_a_failed_write_in_the_background_fails_the_run_and_leaves_nothing(
    pg_flushable: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines, _truth = generate_corpus(200, 3)
    path = tmp_path / "corpus.ndjson"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    start_scan(from_file=str(path), run_async=False)
    empty_clusters()
    monkeypatch.setattr(detection, "BATCH_GROUPS", 5)
    sent = 0
    real = writing._send_copies

    def failing(raw: object, copies: list[tuple[str, str]], started: object) -> None:
        nonlocal sent
        sent += 1
        if sent == 3:
            raise RuntimeError("the connection broke")
        real(raw, copies, started)  # type: ignore[arg-type]

    monkeypatch.setattr(writing, "_send_copies", failing)
    with pytest.raises(RuntimeError, match="the connection broke"):
        detection.detect(workers=0)
    assert not Cluster.objects.exists()
    assert not ClusterMember.objects.exists()


def test_a_whole_index_read_tunes_only_its_own_transaction(pg_flushable: None) -> None:
    """The whole-index read lets the planner use parallel workers, in a transaction of its own: the
    settings end with it, a caller's transaction is left as it was, and what is read is the same."""
    from django.db import transaction
    from django.test.utils import CaptureQueriesContext

    from dedup.detect.reading import read_shared
    from tests.index_helpers import contact
    from tests.index_helpers import index as write_index

    write_index(
        contact("ct_a", name="Maria Garcia", phones=("+61412345678",)),
        contact("ct_b", name="Maria Garcia", phones=("0412 345 678", "+61400000001")),
        contact("ct_c", name="Tom Lee", phones=("+61400000001",)),
        contact("ct_d", name="Solo", phones=("+61400000009",)),
    )

    def setting() -> str:
        with connection.cursor() as cursor:
            cursor.execute("SHOW parallel_setup_cost")
            return str(cursor.fetchone()[0])

    default = setting()
    with CaptureQueriesContext(connection) as own:
        alone = read_shared(["PHONE"])
    with transaction.atomic(), CaptureQueriesContext(connection) as inside:
        within = read_shared(["PHONE"])
        assert setting() == default
    assert list(alone) == list(within) and alone.id_of == within.id_of
    assert sorted(uid for uid, _location, _keys in alone) == ["ct_a", "ct_b", "ct_c"]
    tuned = [q["sql"] for q in own.captured_queries if q["sql"].startswith("SET LOCAL")]
    assert not [q["sql"] for q in inside.captured_queries if q["sql"].startswith("SET LOCAL")]
    assert tuned and setting() == default
