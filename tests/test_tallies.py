"""The dashboard's tallies (``dedup.tallies``) stay equal to a live count through scans, merges and rescans.

On PostgreSQL the figures come from rows the database's triggers append; on SQLite they are counted
live. Either way they must equal the straightforward count of what each person sees.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.db.models import Count

from dedup import access, tallies
from dedup.merge import approve_cluster, reject_cluster
from dedup.models import Cluster, ClusterTally, Contact, ContactKey, ContactTally, Location, ScanRun
from dedup.scanning import start_scan
from tests.dashboard_base import (
    BURLEIGH,
    SYDNEY,
    ensure_locations,
    ensure_role_groups,
    index_contacts,
    make_user,
    person,
)
from tests.scanned_corpus import ScannedCorpus


def _live_within() -> dict[tuple[int, str], int]:
    rows = Cluster.objects.filter(status=Cluster.OPEN, location__isnull=False).order_by()
    return {(r["location_id"], r["kind"]): r["n"] for r in rows.values("location_id", "kind").annotate(n=Count("id"))}


def _assert_right(*users: Any) -> None:
    for user in users:
        live = access.contacts_visible_to(user).filter(deleted_at__isnull=True, merged_into_uid="").count()
        assert tallies.active_contacts(user) == live, user
        ids = access.visible_location_ids(user)
        expected = {k: n for k, n in _live_within().items() if ids is None or k[0] in ids}
        assert tallies.open_within_counts(ids) == expected, user
    homes = Contact.objects.filter(deleted_at__isnull=True, merged_into_uid="").order_by().values("location_id")
    every = list(Location.objects.values_list("pk", flat=True))
    assert tallies.active_contacts_by_home(every) == {r["location_id"]: r["n"] for r in homes.annotate(n=Count("id"))}
    if tallies.kept_by_database():
        # The figures came from the triggers' rows, not from a live count.
        assert ContactTally.objects.exists()
        assert ClusterTally.objects.exists() == bool(_live_within())


def _rescan() -> None:
    run = start_scan(full=True, run_async=False, actor="test")
    assert run.state == ScanRun.SUCCEEDED, run.error_message


def test_the_tallies_follow_scans_merges_rejections_and_rescans(scanned_corpus: ScannedCorpus) -> None:
    boss = scanned_corpus.boss
    first = Location.objects.order_by("pk").first()
    assert first is not None
    manager = make_user("tally_manager", "manager", [first])
    _assert_right(boss, manager)
    assert tallies.active_contacts(boss) == Contact.objects.filter(deleted_at__isnull=True, merged_into_uid="").count() > 0

    # A merge retires its duplicates and closes its cluster.
    auto = scanned_corpus.auto_clusters()[0]
    before_contacts = tallies.active_contacts(boss)
    operation = approve_cluster(auto, user=boss, run_async=False)
    operation.refresh_from_db()
    assert operation.state == "patched", operation.last_error
    assert tallies.active_contacts(boss) == before_contacts - len(operation.duplicate_uids)
    _assert_right(boss, manager)

    # A rejection closes one more.
    review = Cluster.objects.filter(status=Cluster.OPEN).exclude(pk=auto.pk).order_by("pk").first()
    assert review is not None
    reject_cluster(review, user=boss, note="different people")
    _assert_right(boss, manager)

    # A member of an open cluster loses its phone in Podium: the rescan supersedes or dissolves that cluster.
    open_cluster = Cluster.objects.filter(status=Cluster.OPEN, location__isnull=False).order_by("-member_count", "pk")[0]
    member = open_cluster.members.select_related("contact").order_by("pk")[0]
    for raw in ContactKey.objects.filter(contact=member.contact, kind=ContactKey.PHONE).values_list("raw", flat=True):
        scanned_corpus.server.state.podium_edit(member.contact.uid, {"remove_channel": raw})
    _rescan()
    open_cluster.refresh_from_db()
    assert open_cluster.status != Cluster.OPEN
    _assert_right(boss, manager)

    # The scan folded the rows its statements appended: one per group is left.
    if tallies.kept_by_database():
        groups = ContactTally.objects.values("location_id", "location_uids").distinct().count()
        assert ContactTally.objects.count() == groups

    # Recounting from scratch gives the same figures the triggers kept.
    kept = (tallies.active_contacts(boss), tallies.open_within_counts(None))
    tallies.rebuild()
    assert (tallies.active_contacts(boss), tallies.open_within_counts(None)) == kept


@pytest.mark.django_db
def test_a_contact_of_two_granted_locations_counts_once_and_deleting_it_counts() -> None:
    ensure_role_groups()
    sydney, burleigh = ensure_locations(SYDNEY, BURLEIGH)
    both = make_user("both_manager", "manager", [sydney, burleigh])
    only_burleigh = make_user("burleigh_only", "manager", [burleigh])
    index_contacts([
        person("ct_t0001_aaaaaa", [SYDNEY, BURLEIGH], "Aroha Ngata", phones=["0412 000 001"]),
        person("ct_t0002_bbbbbb", SYDNEY, "José García", phones=["0412 000 002"]),
    ])  # fmt: skip
    assert tallies.active_contacts(both) == 2
    assert tallies.active_contacts(only_burleigh) == 1  # homed at Sydney, also Burleigh's customer
    _assert_right(both, only_burleigh)
    Contact.objects.filter(uid="ct_t0001_aaaaaa").update(merged_into_uid="ct_t0002_bbbbbb")
    assert tallies.active_contacts(both) == 1
    assert tallies.active_contacts(only_burleigh) == 0
    Contact.objects.filter(uid="ct_t0002_bbbbbb").delete()
    assert tallies.active_contacts(both) == 0
    _assert_right(both, only_burleigh)


@pytest.mark.django_db
def test_reading_folds_the_appended_rows_without_changing_the_sums(monkeypatch: pytest.MonkeyPatch) -> None:
    ensure_role_groups()
    admin = make_user("tally_admin", "admin")
    ensure_locations(SYDNEY)
    for n in range(5):
        index_contacts([person(f"ct_t1{n:03d}_cccccc", SYDNEY, f"Person {n}", phones=[f"0412 000 1{n:02d}"])])
        Contact.objects.filter(uid=f"ct_t1{n:03d}_cccccc").update(name=f"Renamed {n}")  # a no-op for the count
    monkeypatch.setattr(tallies, "COMPACT_SLACK", 0)
    assert tallies.active_contacts(admin) == 5
    if tallies.kept_by_database():
        # Five inserts appended five rows for one group; the read folded them into one.
        assert ContactTally.objects.count() == 1
    assert tallies.active_contacts(admin) == 5
