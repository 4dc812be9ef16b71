"""Detection: clusters from the index, scored by policy, with stable ids and recorded supersedes."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from dedup.detection import cluster_to_dict, detect, member_records
from dedup.models import AuditEvent, Cluster, Policy, ReviewDecision
from podium_client import Contact as PodiumContact
from tests.index_helpers import contact
from tests.index_helpers import index as write_index

pytestmark = pytest.mark.django_db


def index(*contacts: PodiumContact) -> None:
    write_index(*contacts)


def open_clusters() -> list[Cluster]:
    return list(Cluster.objects.filter(status=Cluster.OPEN).order_by("cluster_id"))


def only_open_cluster() -> Cluster:
    clusters = open_clusters()
    assert len(clusters) == 1, [c.cluster_id for c in clusters]
    return clusters[0]


def uids(cluster: Cluster) -> list[str]:
    return sorted(cluster.members.values_list("contact__uid", flat=True))


def test_one_customer_typed_four_ways_is_one_auto_mergeable_cluster() -> None:
    index(
        contact("ct_a", name="Maria Garcia", phones=("+61 412 345 678",)),
        contact("ct_b", name="GARCIA, Maria", phones=("0412 345 678",)),
        contact("ct_c", name="Mrs. María García", phones=("(04) 1234-5678",), tags=("vip",)),
        contact("ct_d", name="maria garcia", phones=("+61412345678",)),
        contact("ct_other", name="Jose Lopez", phones=("0413 000 000",)),
    )
    summary = detect()
    cluster = only_open_cluster()
    assert summary.created == 1 and summary.auto == 1 and summary.clusters_open == 1
    assert uids(cluster) == ["ct_a", "ct_b", "ct_c", "ct_d"]
    assert cluster.kind == Cluster.AUTO and cluster.auto_merge
    assert cluster.confidence == Decimal("0.80")
    assert cluster.natural_keys == ["+61412345678"]
    assert cluster.location is not None and cluster.location.uid == "loc_sydney"
    assert list(cluster.locations.values_list("uid", flat=True)) == ["loc_sydney"]
    assert cluster.member_count == 4 and len(cluster.pair_scores) == 6
    assert {"a", "b", "score", "reasons", "conflict"} <= set(cluster.pair_scores[0])
    # The richest record survives (the tag makes ct_c the most populated).
    assert cluster.suggested_primary_uid == "ct_c"


def test_a_household_on_one_phone_goes_to_review_with_the_conflict_explained() -> None:
    index(
        contact("ct_a", name="Maria Garcia", phones=("0412 345 678",), emails=("home@example.com",), tags=("vip",)),
        contact("ct_b", name="Jose Garcia", phones=("0412345678",), emails=("home@example.com",), tags=("vip",)),
    )
    detect()
    cluster = only_open_cluster()
    assert cluster.kind == Cluster.REVIEW and not cluster.auto_merge
    assert "conflicting_names" in cluster.reasons
    assert cluster.pair_scores[0]["conflict"] is True
    assert "different_names" in cluster.pair_scores[0]["reasons"]


def test_a_missing_name_is_no_evidence_either_way() -> None:
    index(contact("ct_a", name=None, phones=("0412 345 678",)), contact("ct_b", phones=("0412345678",)))
    detect()
    cluster = only_open_cluster()
    assert cluster.confidence == Decimal("0.60") and cluster.kind == Cluster.REVIEW
    assert not cluster.pair_scores[0]["conflict"] and "below_threshold" in cluster.reasons
    policy = Policy.current()
    policy.auto_merge_threshold = Decimal("0.60")
    policy.save()
    summary = detect()
    assert summary.refreshed == 1 and summary.created == 0
    refreshed = only_open_cluster()
    # Even when the score clears the threshold, an unconfirmed name is no evidence of one person: a
    # household member saved without a name looks exactly like this, so a person decides.
    assert refreshed.cluster_id == cluster.cluster_id and refreshed.kind == Cluster.REVIEW
    assert "below_threshold" not in refreshed.reasons and "name_unconfirmed" in refreshed.reasons


def test_a_nameless_household_member_sharing_email_and_tags_is_not_merged_automatically() -> None:
    index(
        contact("ct_a", name="Maria Garcia", phones=("0412 345 678",), emails=("home@example.com",), tags=("vip",)),
        contact("ct_b", name=None, phones=("0412345678",), emails=("home@example.com",), tags=("vip",)),
    )
    detect()
    cluster = only_open_cluster()
    assert cluster.confidence == Decimal("0.80")
    assert cluster.kind == Cluster.REVIEW and not cluster.auto_merge
    assert "name_unconfirmed" in cluster.reasons


def test_soft_deleted_and_merged_contacts_never_join() -> None:
    gone = datetime(2025, 5, 1, tzinfo=UTC)
    index(
        contact("ct_a", phones=("0412 345 678",)),
        contact("ct_b", phones=("0412345678",), deleted_at=gone),
        contact("ct_c", phones=("0412345678",), deleted_at=gone, merged_into_uid="ct_a"),
    )
    assert detect().clusters_open == 0 and not Cluster.objects.exists()


def test_a_contact_with_two_phones_joins_every_cluster_it_touches() -> None:
    index(
        contact("ct_a", phones=("0412 345 678",)),
        contact("ct_b", phones=("0412345678", "02 9876 5432")),
        contact("ct_c", phones=("(02) 9876-5432",)),
    )
    detect()
    cluster = only_open_cluster()
    assert uids(cluster) == ["ct_a", "ct_b", "ct_c"]
    assert cluster.natural_keys == ["+61298765432", "+61412345678"]


def test_email_joins_clusters_only_when_policy_makes_it_a_secondary_key() -> None:
    index(
        contact("ct_a", phones=("0412 345 678",), emails=("maria@example.com",)),
        contact("ct_b", phones=("0499 999 999",), emails=(" Maria@Example.com",)),
    )
    assert detect().clusters_open == 0
    policy = Policy.current()
    policy.email_secondary_key = True
    policy.save()
    detect()
    cluster = only_open_cluster()
    assert cluster.natural_keys == ["maria@example.com"] and cluster.kind == Cluster.REVIEW
    assert "same_email_only" in cluster.pair_scores[0]["reasons"]


def test_the_same_number_across_locations_is_a_cross_location_cluster_for_review() -> None:
    index(
        contact("ct_syd", name="Maria Garcia", phones=("0412 345 678",)),
        contact("ct_akl", locations=("loc_auckland",), name="Maria Garcia", phones=("+61 412 345 678",)),
    )
    detect()
    cluster = only_open_cluster()
    assert cluster.cross_location and cluster.location is None and cluster.kind == Cluster.CROSS
    assert not cluster.auto_merge and "cross_location" in cluster.reasons
    assert sorted(cluster.locations.values_list("uid", flat=True)) == ["loc_auckland", "loc_sydney"]
    assert cluster_to_dict(cluster)["locationUid"] is None
    policy = Policy.current()
    policy.cross_location_auto_merge = True
    policy.save()
    detect()
    assert only_open_cluster().auto_merge


def test_cluster_ids_are_stable_while_membership_holds_and_a_change_supersedes() -> None:
    index(contact("ct_a", phones=("0412 345 678",)), contact("ct_b", phones=("0412345678",)))
    detect()
    first = only_open_cluster()
    again = detect()
    assert (again.unchanged, again.created, again.refreshed) == (1, 0, 0)
    assert only_open_cluster().cluster_id == first.cluster_id

    index(contact("ct_c", phones=("+61412345678",)))
    summary = detect()
    assert (summary.created, summary.superseded) == (1, 1)
    new = only_open_cluster()
    assert uids(new) == ["ct_a", "ct_b", "ct_c"] and new.cluster_id != first.cluster_id
    first.refresh_from_db()
    assert first.status == Cluster.SUPERSEDED and first.superseded_by_id == new.pk
    event = AuditEvent.objects.get(event_type="cluster.superseded", cluster_ref=first.cluster_id)
    assert event.payload["supersededBy"] == new.cluster_id

    # ct_c leaves: the original membership is proposed again under its old id.
    index(contact("ct_c", phones=("0499 000 111",), updated_at=datetime(2025, 7, 1, tzinfo=UTC)))
    summary = detect(keys=["+61412345678"])
    assert (summary.reopened, summary.superseded) == (1, 1)
    assert only_open_cluster().cluster_id == first.cluster_id


def test_a_cluster_in_a_persons_hands_is_never_rewritten() -> None:
    index(contact("ct_a", phones=("0412 345 678",)), contact("ct_b", phones=("0412345678",)))
    detect()
    approved = only_open_cluster()
    Cluster.objects.filter(pk=approved.pk).update(status=Cluster.APPROVED)
    index(contact("ct_c", phones=("+61412345678",)))
    summary = detect()
    assert summary.superseded == 0 and summary.created == 1
    approved.refresh_from_db()
    assert approved.status == Cluster.APPROVED and uids(approved) == ["ct_a", "ct_b"]
    assert uids(only_open_cluster()) == ["ct_a", "ct_b", "ct_c"]
    # The same membership as a held cluster is not proposed twice.
    Cluster.objects.filter(status=Cluster.OPEN).delete()
    index(contact("ct_c", phones=("0499 000 111",), updated_at=datetime(2025, 7, 1, tzinfo=UTC)))
    assert detect().held == 1 and not open_clusters()


def test_different_people_are_never_proposed_together_again() -> None:
    index(
        contact("ct_a", name="Maria Garcia", phones=("0412 345 678",)),
        contact("ct_b", name="Jose Garcia", phones=("0412345678",)),
        contact("ct_c", name="Maria Garcia", phones=("+61412345678",)),
    )
    detect()
    household = only_open_cluster()
    ReviewDecision.objects.create(decision=ReviewDecision.DIFFERENT_PEOPLE, uid_a="ct_a", uid_b="ct_b")
    ReviewDecision.objects.create(decision=ReviewDecision.DIFFERENT_PEOPLE, uid_a="ct_b", uid_b="ct_c")
    summary = detect()
    assert summary.superseded == 1
    cluster = only_open_cluster()
    assert uids(cluster) == ["ct_a", "ct_c"] and cluster.kind == Cluster.AUTO
    household.refresh_from_db()
    assert household.status == Cluster.SUPERSEDED and household.superseded_by_id == cluster.pk


def test_detection_scoped_to_keys_reads_only_the_connected_contacts() -> None:
    index(
        contact("ct_a", phones=("0412 345 678",)),
        contact("ct_b", phones=("0412345678", "02 9876 5432")),
        contact("ct_c", phones=("(02) 9876-5432",)),
        contact("ct_x", phones=("0400 000 001",)),
        contact("ct_y", phones=("0400000001",)),
    )
    summary = detect(keys=["+61412345678"])
    assert summary.clusters_open == 1 and summary.active_contacts == 3
    assert [uids(c) for c in open_clusters()] == [["ct_a", "ct_b", "ct_c"]]
    assert detect(locations=["loc_sydney"]).created == 1
    assert detect(locations=["loc_auckland"]).clusters_open == 0
    assert len(open_clusters()) == 2


def test_member_records_and_the_ndjson_shape() -> None:
    index(
        contact(
            "ct_a", name="Maria Garcia", phones=("0412 345 678", "call me"), emails=("M@Example.com",),
            tags=("vip",), attributes=(("birthday", "1990-01-01"),), address="1 George St", marketing_opted_in=False,
        ),
        contact("ct_b", name="Maria Garcia", phones=("0412345678", "+61 412 345 678")),
    )  # fmt: skip
    detect()
    cluster = only_open_cluster()
    records = member_records(cluster)
    assert [r.uid for r in records] == ["ct_a", "ct_b"]
    a, b = records
    assert a.phone_channels() == (("0412 345 678", "+61412345678"), ("call me", None))
    assert a.raw_emails == ("M@Example.com",) and a.tags == ("vip",) and a.address == "1 George St"
    assert a.marketing_opt_out and a.attributes == (("birthday", "1990-01-01"),)
    assert b.phones == ("+61412345678", "+61412345678")  # two spellings of one number
    data = cluster_to_dict(cluster)
    assert list(data) == [
        "clusterId", "naturalKeys", "locationUid", "crossLocation", "kind", "confidence", "autoMerge", "status",
        "suggestedPrimaryUid", "reasons", "members",
    ]  # fmt: skip
    assert data["locationUid"] == "loc_sydney" and data["confidence"] == 0.8 and data["autoMerge"] is True
    assert data["members"][0] == {
        "contactUid": "ct_a", "locationUid": "loc_sydney", "name": "Maria Garcia", "fieldCount": 7,
        "updatedAt": "2025-01-01T09:00:00Z", "marketingOptOut": True, "smsOptOut": False, "emailOptOut": False,
    }  # fmt: skip


def test_members_sharing_a_location_are_within_it_even_when_their_homes_differ() -> None:
    # Podium lists this customer at Sydney (home) and Burleigh; the duplicate was created at Burleigh.
    index(
        contact("ct_both", locations=("loc_sydney", "loc_burleigh"), name="Maria Garcia", phones=("0412 345 678",)),
        contact("ct_bur", locations=("loc_burleigh",), name="GARCIA, Maria", phones=("+61 412 345 678",)),
    )
    summary = detect()
    cluster = only_open_cluster()
    assert summary.cross == 0 and not cluster.cross_location
    assert cluster.kind == Cluster.AUTO and cluster.auto_merge  # a within-location cluster may auto-merge
    assert cluster.location is not None and cluster.location.uid == "loc_burleigh"
    assert sorted(cluster.locations.values_list("uid", flat=True)) == ["loc_burleigh", "loc_sydney"]
    assert cluster_to_dict(cluster)["locationUid"] == "loc_burleigh"
    # Stable: detecting again finds the same cluster unchanged.
    assert detect().unchanged == 1


def test_members_with_no_location_in_common_are_cross_location() -> None:
    index(
        contact("ct_syd", locations=("loc_sydney",), name="Maria Garcia", phones=("0412 345 678",)),
        contact("ct_both", locations=("loc_burleigh", "loc_auckland"), name="Maria Garcia", phones=("0412345678",)),
    )
    detect()
    cluster = only_open_cluster()
    assert cluster.cross_location and cluster.kind == Cluster.CROSS and not cluster.auto_merge
    assert sorted(cluster.locations.values_list("uid", flat=True)) == ["loc_auckland", "loc_burleigh", "loc_sydney"]


def test_a_group_is_within_a_location_only_when_every_member_is_in_it() -> None:
    index(
        contact("ct_both", locations=("loc_sydney", "loc_burleigh"), name="Maria Garcia", phones=("0412 345 678",)),
        contact("ct_syd", locations=("loc_sydney",), name="Maria Garcia", phones=("0412345678",)),
        contact("ct_bur", locations=("loc_burleigh",), name="Maria Garcia", phones=("+61412345678",)),
    )
    detect()
    clusters = {tuple(uids(c)): c for c in open_clusters()}
    # Sydney's two are one customer at Sydney; the Burleigh-only contact joins them only across locations.
    assert set(clusters) == {("ct_both", "ct_syd"), ("ct_both", "ct_bur", "ct_syd")}
    within, cross = clusters[("ct_both", "ct_syd")], clusters[("ct_both", "ct_bur", "ct_syd")]
    assert not within.cross_location and within.location is not None and within.location.uid == "loc_sydney"
    assert cross.cross_location and not cross.auto_merge


def test_a_contact_moving_into_the_other_location_turns_a_cross_cluster_into_a_within_one() -> None:
    index(
        contact("ct_syd", locations=("loc_sydney",), phones=("0412 345 678",)),
        contact("ct_bur", locations=("loc_burleigh",), phones=("0412345678",)),
    )
    detect()
    cross = only_open_cluster()
    assert cross.cross_location
    index(contact("ct_bur", locations=("loc_burleigh", "loc_sydney"), phones=("0412345678",),
                  updated_at=datetime(2025, 7, 1, tzinfo=UTC)))  # fmt: skip
    summary = detect()
    within = only_open_cluster()
    assert summary.superseded == 1 and not within.cross_location and within.location is not None
    assert within.location.uid == "loc_sydney"
    cross.refresh_from_db()
    assert cross.status == Cluster.SUPERSEDED and cross.superseded_by_id == within.pk
