"""Restoring a merged duplicate: live again in Podium, with at least the merge's opt-outs; loops surfaced."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from django.contrib.auth.models import User

from dedup import merging
from dedup.detection import detect
from dedup.merging import approve_cluster, restore_loop_contacts
from dedup.models import AuditEvent, Cluster, Contact, MergeOperation, RestoreRecord, ReviewDecision
from dedup.restoring import RestoreError, RestoreLoopError, restore_contact

if TYPE_CHECKING:
    from tests.merge_helpers import MergeEnv

pytest_plugins = ["tests.merge_helpers"]
pytestmark = pytest.mark.django_db


def test_a_restored_duplicate_is_live_with_at_least_the_merge_opt_outs(
    merge_env: MergeEnv, manager: User, admin_user: User, rescans: list[dict[str, Any]]
) -> None:
    uids = merge_env.maria()
    merge_env.index()
    op = approve_cluster(merge_env.cluster(uids), user=manager, run_async=False)
    assert op.state == MergeOperation.PATCHED

    record = restore_contact("ct_m2", user=admin_user, different_people=True, note="her daughter")

    live = merge_env.live("ct_m2")
    assert live.deleted_at is None and live.merged_into_uid is None
    # ct_m2 had only the SMS opt-out; the merge computed SMS + marketing for the person.
    assert live.sms_opt_out and live.marketing_opt_out and not live.email_opt_out
    assert record.operation_id == op.pk and record.merged_into_uid == "ct_m1"
    assert record.opt_outs_applied == {"marketingOptOut": True, "smsOptOut": True, "emailOptOut": False}
    assert record.marked_different_people
    assert ReviewDecision.objects.filter(
        decision=ReviewDecision.DIFFERENT_PEOPLE, uid_a="ct_m1", uid_b="ct_m2"
    ).exists()
    indexed = Contact.objects.get(uid="ct_m2")
    assert indexed.is_active and indexed.marketing_opt_out
    event = AuditEvent.objects.get(event_type="contact.restored")
    assert event.actor == "user:root" and event.operation_ref == op.pk
    assert event.payload["optOutsBefore"]["marketingOptOut"] is False
    assert event.payload["optOutsAfter"]["marketingOptOut"] is True
    assert event.payload["differentPeople"] == ["ct_m1", "ct_m2"]
    assert event.payload["requestIds"]
    assert rescans and rescans[-1]["contact_uids"] == ["ct_m2"]
    assert merge_env.server.stats()["hard_delete_attempts"] == 0

    # Restoring again what is already live is refused, and says why.
    with pytest.raises(RestoreError, match="not soft-deleted"):
        restore_contact("ct_m2", user=admin_user)
    with pytest.raises(RestoreError, match="unknown"):
        restore_contact("ct_nobody", user=admin_user)


def test_restore_of_a_contact_the_product_did_not_merge_keeps_its_own_opt_outs(
    merge_env: MergeEnv, admin_user: User
) -> None:
    merge_env.add("ct_lone", phones=["0411 111 111"], email_opt_out=True)
    merge_env.state.delete("ct_lone")
    merge_env.index()
    record = restore_contact("ct_lone", user=admin_user)
    assert record.operation is None
    live = merge_env.live("ct_lone")
    assert live.deleted_at is None and live.email_opt_out


def test_a_restore_whose_opt_outs_do_not_stick_is_reported_and_repairable(
    merge_env: MergeEnv, manager: User, admin_user: User
) -> None:
    uids = merge_env.maria()
    merge_env.index()
    approve_cluster(merge_env.cluster(uids), user=manager, run_async=False)
    client = merge_env.client()
    client.patch_override = lambda uid, body: client.get_contact(uid)  # PATCH silently ignored
    with pytest.raises(RestoreError, match="did not hold") as caught:
        restore_contact("ct_m2", user=admin_user, client=client)
    assert caught.value.code == "ERR_DEDUP_010"
    assert merge_env.live("ct_m2").deleted_at is None and not merge_env.live("ct_m2").marketing_opt_out
    client.patch_override = None
    restore_contact("ct_m2", user=admin_user, client=client)  # repairs the opt-outs of the last restore
    assert merge_env.live("ct_m2").marketing_opt_out
    assert AuditEvent.objects.filter(event_type="contact.restore_repaired").exists()


def _merge_again(user: User) -> MergeOperation:
    detect(keys=["+61411111111"])  # the rescan after the restore proposes the pair again
    cluster = Cluster.objects.get(status=Cluster.OPEN, auto_merge=True)
    return approve_cluster(cluster, user=user, run_async=False)


def test_three_restore_rounds_are_a_loop_that_is_surfaced_not_merged_again(
    merge_env: MergeEnv, manager: User, admin_user: User
) -> None:
    merge_env.add("ct_p", name="Sam Lee", phones=["0411 111 111"], tags=["a"], marketing_opt_out=True)
    merge_env.add("ct_d", name="Sam Lee", phones=["0411111111"])
    merge_env.index()
    for round_no in range(1, 4):
        op = _merge_again(manager)
        assert op.state == MergeOperation.PATCHED, (round_no, op.last_error)
        restore_contact("ct_d", user=admin_user)
        assert merge_env.live("ct_d").marketing_opt_out
        op.cluster.refresh_from_db()
        assert op.cluster.status == Cluster.SUPERSEDED
    assert restore_loop_contacts() == ["ct_d"]
    assert AuditEvent.objects.filter(event_type="restore.loop_detected", payload__rounds=3).exists()
    merges_before = merge_env.server.stats()["merges"]

    with pytest.raises(RestoreLoopError, match="restored after a merge 3 times") as caught:
        _merge_again(manager)
    assert caught.value.code == "ERR_DEDUP_013"
    refused = caught.value.operation
    assert refused is not None and refused.state == MergeOperation.FAILED_PERMANENT
    assert refused.error_code == "ERR_DEDUP_013"
    cluster = refused.cluster
    cluster.refresh_from_db()
    assert (cluster.status, cluster.kind, cluster.auto_merge) == (Cluster.OPEN, Cluster.REVIEW, False)
    assert merge_env.server.stats()["merges"] == merges_before
    assert merge_env.live("ct_d").deleted_at is None

    # Should a later detection propose it for automatic merging again (say after a policy change), the
    # automatic path refuses it too, without raising: surfaced as a failed operation.
    detect(keys=["+61411111111"])
    Cluster.objects.filter(pk=cluster.pk).update(auto_merge=True, kind=Cluster.AUTO)
    results = merging.merge_all_auto(actor="test")
    assert [(r.state, r.error_code) for r in results if isinstance(r, MergeOperation)] == [
        (MergeOperation.FAILED_PERMANENT, "ERR_DEDUP_013")
    ]
    assert merge_env.server.stats()["merges"] == merges_before
    assert RestoreRecord.objects.filter(contact_uid="ct_d").count() == 3


def test_different_people_at_restore_keeps_the_pair_apart(
    merge_env: MergeEnv, manager: User, admin_user: User
) -> None:
    merge_env.add("ct_p", name="Sam Lee", phones=["0411 111 111"], tags=["a"])
    merge_env.add("ct_d", name="Sam Lee", phones=["0411111111"], sms_opt_out=True)
    merge_env.index()
    assert _merge_again(manager).state == MergeOperation.PATCHED
    restore_contact("ct_d", user=admin_user, different_people=True, note="father and son")
    summary = detect(keys=["+61411111111"])
    assert summary.clusters_open == 0
    assert not Cluster.objects.filter(status=Cluster.OPEN).exists()
