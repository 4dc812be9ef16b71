"""A whole-index detection scores with the members' keys its read found (``scoring_keys``): the
clusters it writes are the ones it writes when the database gathers every key of every member."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from hypothesis import given, settings
from hypothesis import strategies as st

from dedup import detection
from dedup.clustering import build_clusters
from dedup.detect.reading import batch_phones, held_keys
from dedup.models import Cluster, ClusterLocation, ClusterMember, Policy
from dedup.scanning import start_scan
from podium_client.corpus import generate_corpus
from tests.index_helpers import contact, index

pytestmark = pytest.mark.django_db

GONE = datetime(2025, 1, 1, tzinfo=UTC)


def clusters() -> dict[str, tuple[object, ...]]:
    """Every cluster by its id, with what scoring decided and its members (no row ids)."""
    uid_of_member: dict[int, list[str]] = {}
    for cluster_pk, uid in ClusterMember.objects.values_list("cluster_id", "contact__uid"):
        uid_of_member.setdefault(cluster_pk, []).append(uid)
    locations: dict[int, list[int]] = {}
    for cluster_pk, location_id in ClusterLocation.objects.values_list("cluster_id", "location_id"):
        locations.setdefault(cluster_pk, []).append(location_id)
    return {
        c.cluster_id: (
            c.status, c.kind, c.confidence, c.auto_merge, c.cross_location, c.location_id,
            json.dumps(c.natural_keys), json.dumps(c.reasons), json.dumps(c.pair_scores),
            c.suggested_primary_uid, sorted(uid_of_member.get(c.pk, [])), sorted(locations.get(c.pk, [])),
        )  # fmt: skip
        for c in Cluster.objects.all()
    }


def detect_with(monkeypatch: pytest.MonkeyPatch, keys_from_read: bool) -> tuple[dict[str, tuple[object, ...]], int]:
    """Detection from empty cluster tables; returns its clusters and how many key reads it made."""
    monkeypatch.setattr(detection, "KEYS_FROM_READ", keys_from_read)
    ClusterMember.objects.all().delete()
    ClusterLocation.objects.all().delete()
    Cluster.objects.all().delete()
    with CaptureQueriesContext(connection) as queries:
        detection.detect(workers=0)
    # What gathers a member's phones: the aggregate on PostgreSQL, a read of every kind of key on
    # SQLite (the path with the phones given reads emails only).
    key_reads = sum(
        1
        for q in queries.captured_queries
        if "array_agg(key)" in q["sql"]
        or (
            q["sql"].startswith("SELECT contact_id, kind, key FROM dedup_contactkey")
            and "kind = 'EMAIL'" not in q["sql"]
        )
    )
    return clusters(), key_reads


@pytest.mark.parametrize(("email_joins", "batch_groups"), [(False, 5000), (True, 7), (False, 7)])
def test_keys_from_the_read_score_as_every_key_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, email_joins: bool, batch_groups: int
) -> None:
    # One batch (a contact's location group and its cross-location group scored together), or many.
    monkeypatch.setattr(detection, "BATCH_GROUPS", batch_groups)
    lines, _truth = generate_corpus(400, 5)
    path = tmp_path / "corpus.ndjson"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    start_scan(from_file=str(path), run_async=False)
    index(
        # Two people sharing only an email, with a third contact on it that is soft-deleted, and one
        # sharing a phone with a merged contact: only active contacts join, all of them score.
        contact("ct_mail_a", name="Ana Ruiz", phones=("+61491570001",), emails=("ana@example.com",)),
        contact("ct_mail_b", name="Ana Ruiz", phones=("+61491570001", "+61491570002"), emails=("ANA@example.com",)),
        contact("ct_mail_c", name="A. Ruiz", phones=("+61491570002",)),
        contact("ct_mail_d", name="Ana Ruiz", emails=("ana@example.com",), deleted_at=GONE),
        contact("ct_mail_e", name="Ana Ruiz", phones=("+61491570002",), merged_into_uid="ct_mail_a"),
        contact("ct_mail_f", name="Bo Li", phones=("+61491570003",), emails=("bo@example.com",)),
        contact("ct_mail_g", name="Bo Li", phones=("+61491570004",), emails=("bo@example.com",)),
        contact("ct_mail_h", name="Bo Li", phones=("+61491570003", "+61491570004")),
    )
    policy = Policy.current()
    policy.email_secondary_key = email_joins
    policy.save()

    every_key, every_key_reads = detect_with(monkeypatch, keys_from_read=False)
    from_read, from_read_reads = detect_with(monkeypatch, keys_from_read=True)
    assert len(every_key) > 100
    assert from_read == every_key
    assert every_key_reads > 0 and from_read_reads == 0
    # The email the two Ana Ruiz share counts in their pair's score either way.
    ana = next(c for c in from_read.values() if "ct_mail_a" in c[10])  # type: ignore[operator]
    pairs = json.loads(str(ana[8]))
    assert any("same_email" in p["reasons"] for p in pairs if {p["a"], p["b"]} == {"ct_mail_a", "ct_mail_b"})


KEYS = ["+61400000001", "+61400000002", "+61400000003", "+64210000004", "ana@example.com", "bo@example.com"]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["loc_a", "loc_b"]), st.sets(st.sampled_from(KEYS), min_size=1, max_size=3)),
        min_size=2,
        max_size=12,
    ),
    st.sets(st.tuples(st.integers(0, 11), st.integers(0, 11)), max_size=3),
)
def test_masks_give_each_pair_the_phones_it_shares(
    contacts: list[tuple[str, set[str]]], apart: set[tuple[int, int]]
) -> None:
    """Whatever the keys, locations and "different people" pairs, the phones a batch's masks give two
    members of a group have one in common exactly when the two contacts' keys do."""
    rows = [(f"ct_{i:02d}", location, tuple(sorted(keys))) for i, (location, keys) in enumerate(contacts)]
    keys_of = {uid: keys for uid, _location, keys in rows}
    excluded = [(f"ct_{a:02d}", f"ct_{b:02d}") for a, b in apart if a != b]
    groups = build_clusters(rows, cross_location=False, excluded_pairs=excluded)
    groups += build_clusters(rows, cross_location=True, excluded_pairs=excluded)
    id_of = {uid: i for i, (uid, _location, _keys) in enumerate(rows)}
    member_ids = [tuple(id_of[uid] for uid in g.member_uids) for g in groups]
    phones = batch_phones(groups, member_ids, [held_keys(g, keys_of) for g in groups])
    for group, ids in zip(groups, member_ids, strict=True):
        for a, b in itertools.combinations(zip(group.member_uids, ids, strict=True), 2):
            every = {k for k in keys_of[a[0]] if "@" not in k} & set(keys_of[b[0]])
            assert bool(set(phones[a[1]]) & set(phones[b[1]])) == bool(every), (group, a, b)
            assert set(phones[a[1]]) <= set(keys_of[a[0]]) and not any("@" in k for k in phones[a[1]])
