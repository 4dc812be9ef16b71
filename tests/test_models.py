"""The data model's constraints hold in the database itself, on SQLite and on PostgreSQL."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import IntegrityError, connection, transaction
from django.db.utils import DatabaseError

from dedup import audit
from dedup.models import (
    AuditEvent,
    AuditImmutableError,
    Cluster,
    ClusterMember,
    Contact,
    ContactKey,
    Location,
    MergeOperation,
    Policy,
    ReviewDecision,
    ScanRun,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def sydney() -> Location:
    return Location.objects.create(uid="loc_sydney", name="Sydney CBD", country="AU")


@pytest.fixture
def contact(sydney: Location) -> Contact:
    return Contact.objects.create(uid="ct_0000001_aaaaaa", location=sydney, name="Maria Garcia")


def test_one_active_scan_per_scope() -> None:
    ScanRun.objects.create(scope_key="all", state=ScanRun.RUNNING)
    with pytest.raises(IntegrityError), transaction.atomic():
        ScanRun.objects.create(scope_key="all", state=ScanRun.QUEUED)
    # Finished runs do not hold the scope, and other scopes are free.
    ScanRun.objects.create(scope_key="all", state=ScanRun.SUCCEEDED)
    ScanRun.objects.create(scope_key="loc:loc_sydney", state=ScanRun.RUNNING)


def test_a_contact_key_is_unique_per_contact(contact: Contact, sydney: Location) -> None:
    ContactKey.objects.create(contact=contact, location=sydney, kind="PHONE", key="+61412345678", raw="0412 345 678")
    with pytest.raises(IntegrityError), transaction.atomic():
        ContactKey.objects.create(contact=contact, location=sydney, kind="PHONE", key="+61412345678", raw="+61412345678")


def test_different_people_pairs_are_stored_sorted_and_once() -> None:
    ReviewDecision.objects.create(decision=ReviewDecision.DIFFERENT_PEOPLE, uid_a="ct_a", uid_b="ct_b")
    with pytest.raises(IntegrityError), transaction.atomic():
        ReviewDecision.objects.create(decision=ReviewDecision.DIFFERENT_PEOPLE, uid_a="ct_a", uid_b="ct_b")
    with pytest.raises(IntegrityError), transaction.atomic():
        ReviewDecision.objects.create(decision=ReviewDecision.DIFFERENT_PEOPLE, uid_a="ct_z", uid_b="ct_c")
    assert ReviewDecision.sorted_pair("ct_z", "ct_c") == ("ct_c", "ct_z")
    # Other decisions carry no pair rule.
    ReviewDecision.objects.create(decision=ReviewDecision.APPROVE)
    ReviewDecision.objects.create(decision=ReviewDecision.APPROVE)


def test_one_live_merge_operation_per_cluster(contact: Contact, sydney: Location) -> None:
    cluster = Cluster.objects.create(cluster_id="cl_1", location=sydney)
    ClusterMember.objects.create(cluster=cluster, contact=contact, location=sydney)
    MergeOperation.objects.create(cluster=cluster, primary_uid=contact.uid, state=MergeOperation.MERGING)
    with pytest.raises(IntegrityError), transaction.atomic():
        MergeOperation.objects.create(cluster=cluster, primary_uid=contact.uid)
    # Once the first is terminal, a new one may start.
    MergeOperation.objects.filter(cluster=cluster).update(state=MergeOperation.RE_INDEX_REQUIRED)
    MergeOperation.objects.create(cluster=cluster, primary_uid=contact.uid)


def test_policy_defaults_and_threshold_range() -> None:
    policy = Policy.current()
    assert policy.default_region == "AU"
    assert policy.auto_merge_threshold == Decimal("0.80")
    assert policy.cross_location_auto_merge is False and policy.email_secondary_key is False
    assert policy.scan_interval_minutes == 240
    assert Policy.current().pk == policy.pk
    with pytest.raises(IntegrityError), transaction.atomic():
        Policy.objects.filter(pk=policy.pk).update(auto_merge_threshold=Decimal("0.10"))


def test_cluster_primary_is_the_reviewers_choice_only_for_review_clusters(sydney: Location) -> None:
    review = Cluster(cluster_id="cl_r", suggested_primary_uid="a", chosen_primary_uid="b", auto_merge=False)
    auto = Cluster(cluster_id="cl_a", suggested_primary_uid="a", chosen_primary_uid="b", auto_merge=True)
    assert review.primary_uid == "b"
    assert auto.primary_uid == "a"


def test_audit_events_refuse_update_and_delete_through_the_orm() -> None:
    event = audit.record("scan.started", actor="worker:test", payload={"n": 1})
    event.payload = {"n": 2}
    with pytest.raises(AuditImmutableError):
        event.save()
    with pytest.raises(AuditImmutableError):
        event.delete()
    with pytest.raises(AuditImmutableError):
        AuditEvent.objects.filter(pk=event.pk).update(actor="someone else")
    with pytest.raises(AuditImmutableError):
        AuditEvent.objects.all().delete()
    assert AuditEvent.objects.get(pk=event.pk).payload == {"n": 1}


@pytest.mark.postgres
def test_postgres_trigger_refuses_raw_update_and_delete() -> None:
    audit.record("scan.started", actor="worker:test")
    for sql in ("UPDATE dedup_auditevent SET actor = 'x'", "DELETE FROM dedup_auditevent"):
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute(sql)
    assert AuditEvent.objects.filter(actor="worker:test").count() == 1


def test_audit_chain_links_and_detects_tampering() -> None:
    first = audit.record("a", actor="system", contact_uids=["ct_1"], natural_keys=["+61412345678"])
    second = audit.record("b", actor="system", payload={"when": Decimal("0.8")})
    assert second.prev_hash == first.hash and first.prev_hash == AuditEvent.GENESIS
    assert first.subjects == " +61412345678 ct_1 "
    status = audit.verify_chain()
    assert status.ok and status.checked == 2
    # Tamper below the ORM (on PostgreSQL the trigger must be bypassed to do it at all).
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("ALTER TABLE dedup_auditevent DISABLE TRIGGER dedup_audit_append_only")
        cursor.execute("UPDATE dedup_auditevent SET actor = 'mallory' WHERE id = %s", [first.pk])
        if connection.vendor == "postgresql":
            cursor.execute("ALTER TABLE dedup_auditevent ENABLE TRIGGER dedup_audit_append_only")
    broken = audit.verify_chain()
    assert not broken.ok and broken.broken_event_id == first.pk
    assert f"#{first.pk}" in broken.describe()


def test_scan_run_progress_figures() -> None:
    from datetime import timedelta

    from django.utils import timezone

    run = ScanRun(scope_key="all", state=ScanRun.RUNNING, contacts_seen=500, contacts_total=1000)
    run.started_at = timezone.now() - timedelta(seconds=10)
    assert run.progress == 0.5
    assert 45 <= run.rate <= 55
    assert run.eta_seconds is not None and 8 <= run.eta_seconds <= 12


def test_a_contact_belongs_to_each_of_its_locations_once(contact: Contact, sydney: Location) -> None:
    from dedup.models import ContactLocation

    ContactLocation.objects.create(contact=contact, location=sydney)
    with pytest.raises(IntegrityError), transaction.atomic():
        ContactLocation.objects.create(contact=contact, location=sydney)
    assert contact.all_location_uids == ["loc_sydney"]  # a row indexed before v4: its home alone
    contact.location_uids = ["loc_sydney", "loc_burleigh"]
    assert contact.all_location_uids == ["loc_sydney", "loc_burleigh"]


def test_a_locations_region_comes_from_podium_then_the_admin_then_the_default() -> None:
    podium = Location.objects.create(uid="loc_a", name="A", podium_country="NZ", region_override="AU", country="NZ")
    admin = Location.objects.create(uid="loc_b", name="B", region_override="NZ", country="NZ")
    default = Location.objects.create(uid="loc_c", name="C", country="AU")
    assert [loc.region_source for loc in (podium, admin, default)] == ["podium", "admin", "default"]
    assert [loc.needs_region for loc in (podium, admin, default)] == [False, False, True]
    assert Location.effective_region("", "nz", "AU") == "NZ" and Location.effective_region("", "", "us") == "US"
    # A new location has no contact parsed with another region; a changed one has until re-parsed.
    assert default.region_parsed == "AU" and not default.needs_reparse
    default.country = "NZ"
    assert default.needs_reparse


def test_a_rejected_record_keeps_any_text_once_escaped(db: None) -> None:
    from dedup.models import RejectedRecord

    run = ScanRun.objects.create(scope_key="all", state=ScanRun.SUCCEEDED, rejected_count=1)
    record = RejectedRecord.objects.create(scan_run=run, line_number=3, reason="not UTF-8 text", raw="Jos\\xe9")
    assert str(record) == "rejected line 3" and list(run.rejected.all()) == [record]
    # Deleting a scan run deletes what it set aside.
    run.delete()
    assert not RejectedRecord.objects.exists()


def test_index_tables_location_references_are_kept_by_the_application(contact: Contact, sydney: Location) -> None:
    """The index tables' location references go unchecked by the database (a first load pays no
    locking query per row for them); the references to the contact stay checked, and deleting a
    location still follows Django's on_delete rules."""
    from django.db.models import ForeignKey, Model, ProtectedError

    from dedup.models import ContactLocation, UncategorizedPhone

    def checked(model: type[Model], name: str) -> bool:
        # What the migration recorded of the field (``db_constraint`` is left out when it is True).
        field = model._meta.get_field(name)
        assert isinstance(field, ForeignKey)
        return bool(field.deconstruct()[3].get("db_constraint", True))

    for model in (Contact, ContactKey, ContactLocation, UncategorizedPhone):
        assert not checked(model, "location")
        assert model is Contact or checked(model, "contact")
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT conrelid::regclass::text, confrelid::regclass::text FROM pg_constraint "
                "WHERE contype = 'f' AND conrelid = ANY(%s::regclass[])",
                [["dedup_contact", "dedup_contactkey", "dedup_contactlocation", "dedup_uncategorizedphone"]],
            )
            referenced = sorted(cursor.fetchall())
        assert referenced == [
            ("dedup_contactkey", "dedup_contact"),
            ("dedup_contactlocation", "dedup_contact"),
            ("dedup_uncategorizedphone", "dedup_contact"),
        ]
    # A key of a contact that does not exist is still refused by the database (at the check the
    # commit would make: the constraints are deferred), a key of a location that does not exist not.
    with pytest.raises(IntegrityError), transaction.atomic():
        ContactKey.objects.create(contact_id=contact.pk + 10_000, location=sydney, kind="PHONE", key="+61400000000")
        connection.check_constraints()
    with transaction.atomic():
        ContactKey.objects.create(contact=contact, location_id=sydney.pk + 10_000, kind="PHONE", key="+61400000001")
        connection.check_constraints()
        transaction.set_rollback(True)
    with pytest.raises(ProtectedError):
        sydney.delete()
    assert Location.objects.filter(pk=sydney.pk).exists()
