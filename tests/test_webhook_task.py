"""The webhook task: stored deliveries applied to the index (newest wins, each once), keys re-detected."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

import pytest
from django.utils import timezone

from dedup.models import Cluster, Contact, ContactKey, WebhookDelivery
from dedup.realtime import apply
from dedup.realtime.apply import drain, sweep
from podium_client.corpus import SYDNEY
from tests.fixtures_emulator import make_contact
from tests.realtime_helpers import event_body, seed_locations

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 5, 1, 9, 0, tzinfo=UTC)


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def store(body: bytes) -> WebhookDelivery:
    """A delivery as the receiver stores it (without enqueuing the drain)."""
    return WebhookDelivery.objects.create(
        delivery_key="sha256:" + hashlib.sha256(body).hexdigest(), body=body.decode()
    )


def contact(
    uid: str, minutes: int, name: str = "Maria Garcia", phones: tuple[str, ...] = ("0412 345 678",), **kw: Any
) -> dict[str, Any]:
    return make_contact(uid=uid, name=name, phones=phones, created_at=T0, updated_at=at(minutes), **kw)


def open_clusters_of(uid: str) -> list[Cluster]:
    return list(Cluster.objects.filter(status=Cluster.OPEN, members__contact__uid=uid))


@pytest.fixture(autouse=True)
def _locations() -> None:
    seed_locations()


def test_a_created_contact_is_indexed_and_its_duplicate_cluster_appears_at_once() -> None:
    store(event_body("contact.created", after=contact("u-a", 0)))
    store(event_body("contact.created", after=contact("u-b", 1, phones=("+61 412 345 678",))))
    summary = drain()
    assert summary.applied == 2 and summary.redetected == 2
    assert set(Contact.objects.values_list("uid", flat=True)) == {"u-a", "u-b"}
    (cluster,) = open_clusters_of("u-a")
    assert sorted(m.contact.uid for m in cluster.members.all()) == ["u-a", "u-b"]
    assert cluster.natural_keys == ["+61412345678"]
    assert set(WebhookDelivery.objects.values_list("status", flat=True)) == {WebhookDelivery.DONE}


def test_a_delivery_for_a_contact_not_in_the_index_creates_it_even_when_it_says_updated_or_unchanged() -> (
    None
):
    store(event_body("contact.updated", before=contact("u-1", 0), after=contact("u-1", 5, name="Maria G")))
    store(event_body("contact.unchanged", before=contact("u-2", 3), after=contact("u-2", 3)))
    drain()
    assert dict(Contact.objects.values_list("uid", "name")) == {"u-1": "Maria G", "u-2": "Maria Garcia"}


def test_out_of_order_pair_the_newer_wins() -> None:
    store(event_body("contact.created", after=contact("u-1", 0)))
    drain()
    newer = store(event_body("contact.updated", after=contact("u-1", 10, name="Newer Name")))
    drain()
    older = store(event_body("contact.updated", after=contact("u-1", 5, name="Older Name")))
    drain()
    row = Contact.objects.get(uid="u-1")
    assert row.name == "Newer Name" and row.updated_at == at(10)
    newer.refresh_from_db()
    older.refresh_from_db()
    assert newer.status == WebhookDelivery.DONE
    assert older.status == WebhookDelivery.STALE and "older than the index" in older.outcome


def test_out_of_order_within_one_batch_the_newest_wins_and_the_rest_are_stale() -> None:
    ids = [
        store(event_body("contact.updated", after=contact("u-1", m, name=f"v{m}"))).pk for m in (7, 3, 9, 1)
    ]
    drain()
    assert Contact.objects.get(uid="u-1").name == "v9"
    status = dict(WebhookDelivery.objects.filter(pk__in=ids).values_list("pk", "status"))
    assert [status[i] for i in ids] == ["stale", "stale", "done", "stale"]


def test_a_deletion_marks_the_contact_and_its_cluster_goes() -> None:
    store(event_body("contact.created", after=contact("u-a", 0)))
    store(event_body("contact.created", after=contact("u-b", 1)))
    drain()
    (cluster,) = open_clusters_of("u-a")
    store(event_body("contact.deleted", before=contact("u-b", 1), at=at(20)))
    drain()
    assert Contact.objects.get(uid="u-b").deleted_at == at(20)
    cluster.refresh_from_db()
    assert cluster.status == Cluster.SUPERSEDED
    assert not open_clusters_of("u-a")


def test_a_deletion_arriving_before_the_creation_is_not_undone_by_it() -> None:
    store(event_body("contact.deleted", before=contact("u-x", 2), at=at(30)))
    drain()
    row = Contact.objects.get(uid="u-x")
    assert row.deleted_at == at(30)
    late = store(event_body("contact.created", after=contact("u-x", 2)))
    drain()
    late.refresh_from_db()
    assert late.status == WebhookDelivery.STALE
    assert Contact.objects.get(uid="u-x").deleted_at == at(30)


def test_an_older_update_after_a_deletion_does_not_bring_the_contact_back() -> None:
    store(event_body("contact.created", after=contact("u-1", 0)))
    drain()
    store(event_body("contact.deleted", before=contact("u-1", 0), at=at(15)))
    store(event_body("contact.updated", after=contact("u-1", 10, name="Edited Before Deletion")))
    drain()
    row = Contact.objects.get(uid="u-1")
    assert row.deleted_at == at(15) and row.name == "Maria Garcia"


def test_a_merge_event_with_after_marks_the_contact_merged() -> None:
    store(event_body("contact.created", after=contact("u-a", 0)))
    store(event_body("contact.created", after=contact("u-b", 0)))
    drain()
    merged = {**contact("u-b", 12), "deletedAt": "2026-05-01T09:12:00Z", "mergedIntoUid": "u-a"}
    store(event_body("contact.merged", before=contact("u-b", 0), after=merged))
    drain()
    row = Contact.objects.get(uid="u-b")
    assert row.merged_into_uid == "u-a" and row.deleted_at == at(12)
    assert not open_clusters_of("u-a")


def test_a_contact_that_changes_its_phone_leaves_its_cluster_and_the_rest_stay_together() -> None:
    for uid in ("u-a", "u-b", "u-c"):
        store(event_body("contact.created", after=contact(uid, 0)))
    drain()
    (old,) = open_clusters_of("u-a")
    store(event_body("contact.updated", after=contact("u-a", 5, phones=("0499 888 777",))))
    drain()
    old.refresh_from_db()
    assert old.status == Cluster.SUPERSEDED
    assert not open_clusters_of("u-a")
    (rest,) = open_clusters_of("u-b")
    assert sorted(m.contact.uid for m in rest.members.all()) == ["u-b", "u-c"]
    assert set(ContactKey.objects.filter(contact__uid="u-a").values_list("key", flat=True)) == {
        "+61499888777"
    }


def test_each_delivery_is_applied_once_even_when_drained_again() -> None:
    store(event_body("contact.created", after=contact("u-1", 0)))
    first = drain()
    second = drain()
    assert first.applied == 1 and second.deliveries == 0
    row = WebhookDelivery.objects.get()
    assert row.status == WebhookDelivery.DONE and row.body == ""


def test_unreadable_and_foreign_deliveries_are_kept_apart() -> None:
    broken = store(b'{"data": {"after": {"uid": 5}}, "metadata": {"eventType": "contact.created"}}')
    foreign = store(b'{"data": {}, "metadata": {"eventType": "conversation.created"}}')
    drain()
    broken.refresh_from_db()
    foreign.refresh_from_db()
    assert broken.status == WebhookDelivery.FAILED and broken.body  # kept to look at
    assert foreign.status == WebhookDelivery.IGNORED
    assert not Contact.objects.exists()


def test_a_failed_detection_leaves_the_delivery_applied_and_the_sweep_finishes_it() -> None:
    store(event_body("contact.created", after=contact("u-a", 0)))
    store(event_body("contact.created", after=contact("u-b", 0)))
    with mock.patch.object(apply, "detect", side_effect=RuntimeError("database went away")):
        drain()
    assert set(WebhookDelivery.objects.values_list("status", flat=True)) == {WebhookDelivery.APPLIED}
    assert not Cluster.objects.exists()
    sweep(now=timezone.now() + timedelta(minutes=2))
    assert set(WebhookDelivery.objects.values_list("status", flat=True)) == {WebhookDelivery.DONE}
    assert len(open_clusters_of("u-a")) == 1


def test_the_sweep_drains_deliveries_whose_enqueue_was_lost_and_prunes_old_rows() -> None:
    stuck = store(event_body("contact.created", after=contact("u-1", 0)))
    WebhookDelivery.objects.filter(pk=stuck.pk).update(received_at=timezone.now() - timedelta(minutes=5))
    old = store(event_body("contact.created", after=contact("u-2", 0)))
    WebhookDelivery.objects.filter(pk=old.pk).update(
        status=WebhookDelivery.DONE, received_at=timezone.now() - timedelta(days=8)
    )
    result = sweep()
    assert result["drained"]["applied"] == 1 and result["pruned"] == 1
    assert Contact.objects.filter(uid="u-1").exists()
    assert not WebhookDelivery.objects.filter(pk=old.pk).exists()


def test_a_contact_at_a_location_the_index_does_not_know_is_still_indexed() -> None:
    store(
        event_body(
            "contact.created", after=make_contact(uid="u-new", locations=("loc-unknown",), updated_at=T0)
        )
    )
    drain()
    assert Contact.objects.get(uid="u-new").location.uid == "loc-unknown"


def test_sydney_contacts_keep_their_region() -> None:
    store(
        event_body(
            "contact.created", after=make_contact(uid="u-s", locations=(SYDNEY,), phones=("(02) 9876 5432",))
        )
    )
    drain()
    assert list(ContactKey.objects.filter(contact__uid="u-s").values_list("key", flat=True)) == [
        "+61298765432"
    ]


def test_a_worker_start_schedules_the_every_minute_sweep() -> None:
    from django_q.models import Schedule

    apply.ensure_sweep_schedule_at_worker_start(sender=None, proc_name="w1")
    apply.ensure_sweep_schedule_at_worker_start(sender=None, proc_name="w2")
    (schedule,) = Schedule.objects.filter(name=apply.SWEEP_SCHEDULE_NAME)
    assert schedule.func == "dedup.realtime.apply.sweep" and schedule.minutes == 1 and schedule.repeats == -1
