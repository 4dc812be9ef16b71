"""One merge end to end against the emulator over HTTP: plan, re-read, merge, write-back, verify, index."""

from __future__ import annotations

import json
import logging
from io import StringIO
from typing import TYPE_CHECKING, Any

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command

from dedup import merging
from dedup.audit import verify_chain
from dedup.merging import ClusterBusyError, MergeRefused, approve_cluster, run_operation
from dedup.models import AuditEvent, Cluster, Contact, MergeOperation, ReviewDecision
from podium_client import Contact as PodiumContact
from podium_client import MergeOutcomeUnknown, ServerError

if TYPE_CHECKING:
    from tests.merge_helpers import MergeEnv

pytest_plugins = ["tests.merge_helpers"]
pytestmark = pytest.mark.django_db


def _events(op: MergeOperation) -> list[str]:
    return list(AuditEvent.objects.filter(operation_ref=op.pk).order_by("id").values_list("event_type", flat=True))


def test_a_merge_keeps_every_opt_out_and_everything_only_the_duplicates_held(
    merge_env: MergeEnv, manager: User
) -> None:
    uids = merge_env.maria()
    merge_env.index()
    cluster = merge_env.cluster(uids)

    op = approve_cluster(cluster, user=manager, run_async=False)

    assert op.state == MergeOperation.PATCHED, op.last_error
    assert op.primary_uid == "ct_m1" and op.duplicate_uids == ["ct_m2", "ct_m3"]
    primary = merge_env.live("ct_m1")
    assert primary.sms_opt_out and primary.marketing_opt_out and not primary.email_opt_out
    assert {t.casefold() for t in primary.tags} == {"vip", "newsletter"}
    identifiers = {c.identifier for c in primary.channels}
    assert "02 9876 5432" in identifiers and "maria@example.com" in identifiers
    assert {(a.label, a.value) for a in primary.attributes} == {("birthday", "1990-01-01"), ("loyalty", "gold")}
    for dup in ("ct_m2", "ct_m3"):
        live = merge_env.live(dup)
        assert live.merged_into_uid == "ct_m1" and live.deleted_at is not None
    stats = merge_env.server.stats()
    assert stats["merges"] == 1 and stats["hard_delete_attempts"] == 0

    cluster.refresh_from_db()
    assert cluster.status == Cluster.MERGED
    assert ReviewDecision.objects.filter(cluster=cluster, decision=ReviewDecision.APPROVE, decided_by=manager).exists()
    # The index follows: duplicates merged away, the primary with its new opt-outs and channels.
    assert set(Contact.objects.filter(merged_into_uid="ct_m1").values_list("uid", flat=True)) == {"ct_m2", "ct_m3"}
    indexed = Contact.objects.get(uid="ct_m1")
    assert indexed.sms_opt_out and indexed.marketing_opt_out
    assert indexed.updated_at == primary.updated_at
    assert "+61298765432" in set(indexed.keys.values_list("key", flat=True))

    assert _events(op) == ["merge.planned", "merge.merging", "merge.merged", "merge.patched"]
    planned = AuditEvent.objects.get(operation_ref=op.pk, event_type="merge.planned")
    assert planned.actor == "user:alice"
    assert planned.payload["optOutsBefore"]["ct_m2"]["smsOptOut"] is True
    assert planned.payload["optOutsUnion"] == {"marketingOptOut": True, "smsOptOut": True, "emailOptOut": False}
    patched = AuditEvent.objects.get(operation_ref=op.pk, event_type="merge.patched")
    assert patched.payload["from"] == "merged" and patched.payload["to"] == "patched"
    assert patched.payload["writtenBack"]["smsOptOut"] is True
    assert "emailOptOut" not in patched.payload["writtenBack"], "a False opt-out is never sent"
    assert patched.payload["requestIds"], "Podium request ids are kept"
    assert all(e.location_uids == ["loc_sydney"] for e in AuditEvent.objects.filter(operation_ref=op.pk))
    assert verify_chain().ok


def test_the_plan_is_committed_before_any_call(merge_env: MergeEnv, manager: User) -> None:
    uids = merge_env.maria()
    merge_env.index()
    op = approve_cluster(merge_env.cluster(uids), user=manager, run_async=True)
    assert op.state == MergeOperation.PENDING
    assert merge_env.server.stats()["requests"] == 0
    op.refresh_from_db()
    assert op.plan["optOuts"]["smsOptOut"] is True
    assert set(op.member_snapshot) == set(uids)
    assert op.cluster.status == Cluster.APPROVED
    finished = run_operation(op.pk, client=merge_env.client())
    assert finished.state == MergeOperation.PATCHED


def test_a_reviewer_may_choose_the_primary_of_a_review_cluster_only(merge_env: MergeEnv, manager: User) -> None:
    uids = merge_env.maria()
    merge_env.add("ct_x1", phones=["0400 000 001"])
    merge_env.add("ct_x2", phones=["0400000001"])
    merge_env.index()
    review = merge_env.cluster(uids, auto=False)
    auto = merge_env.cluster(["ct_x1", "ct_x2"])

    with pytest.raises(MergeRefused, match="cannot be chosen"):
        approve_cluster(auto, user=manager, primary_uid="ct_x2", run_async=False)
    op = approve_cluster(review, user=manager, primary_uid="ct_m3", run_async=False)
    assert op.state == MergeOperation.PATCHED and op.primary_uid == "ct_m3"
    assert op.plan["chosenBy"] == "person"
    assert merge_env.live("ct_m1").merged_into_uid == "ct_m3"
    primary = merge_env.live("ct_m3")
    assert primary.sms_opt_out and primary.marketing_opt_out
    assert ReviewDecision.objects.filter(decision=ReviewDecision.CHANGE_PRIMARY, primary_uid="ct_m3").exists()


def test_acting_on_a_decided_cluster_is_a_visible_conflict(merge_env: MergeEnv, manager: User) -> None:
    uids = merge_env.maria()
    merge_env.index()
    cluster = merge_env.cluster(uids)
    approve_cluster(cluster, user=manager, run_async=True)
    bob = User.objects.create_user("bob")
    with pytest.raises(ClusterBusyError, match="already approved by alice") as caught:
        approve_cluster(cluster, user=bob, run_async=False)
    assert caught.value.cluster.pk == cluster.pk
    with pytest.raises(ClusterBusyError):
        merging.reject_cluster(cluster, user=bob)
    conflict = AuditEvent.objects.filter(event_type="merge.conflict").latest("id")
    assert conflict.actor == "user:bob" and conflict.cluster_ref == cluster.cluster_id


def test_two_clusters_sharing_a_contact_never_merge_at_once(merge_env: MergeEnv, manager: User) -> None:
    merge_env.add("ct_s1", phones=["0411 111 111"])
    merge_env.add("ct_s2", phones=["0411111111", "0422 222 222"])
    merge_env.add("ct_s3", phones=["0422222222"], location_uid="loc_burleigh")
    merge_env.index()
    within = merge_env.cluster(["ct_s1", "ct_s2"])
    cross = merge_env.cluster(["ct_s2", "ct_s3"], auto=False)
    approve_cluster(within, user=manager, run_async=True)
    with pytest.raises(ClusterBusyError, match="shares a contact"):
        approve_cluster(cross, user=manager, run_async=False)
    assert AuditEvent.objects.filter(event_type="merge.conflict", cluster_ref=cross.cluster_id).exists()


def test_reject_remembers_every_pair_as_different_people(merge_env: MergeEnv, manager: User) -> None:
    uids = merge_env.maria()
    merge_env.index()
    cluster = merge_env.cluster(uids, auto=False)
    merging.reject_cluster(cluster, user=manager, note="three sisters")
    cluster.refresh_from_db()
    assert cluster.status == Cluster.REJECTED
    pairs = set(
        ReviewDecision.objects.filter(decision=ReviewDecision.DIFFERENT_PEOPLE).values_list("uid_a", "uid_b")
    )
    assert pairs == {("ct_m1", "ct_m2"), ("ct_m1", "ct_m3"), ("ct_m2", "ct_m3")}
    event = AuditEvent.objects.get(event_type="cluster.rejected")
    assert event.payload["note"] == "three sisters" and len(event.payload["differentPeople"]) == 3
    with pytest.raises(ClusterBusyError, match="already rejected by alice"):
        merging.reject_cluster(cluster, user=manager)


def test_change_primary_is_for_review_clusters(merge_env: MergeEnv, manager: User) -> None:
    uids = merge_env.maria()
    merge_env.add("ct_x1", phones=["0400 000 001"])
    merge_env.add("ct_x2", phones=["0400000001"])
    merge_env.index()
    review = merge_env.cluster(uids, auto=False)
    auto = merge_env.cluster(["ct_x1", "ct_x2"])
    merging.change_primary(review, user=manager, primary_uid="ct_m2")
    review.refresh_from_db()
    assert review.primary_uid == "ct_m2"
    with pytest.raises(MergeRefused):
        merging.change_primary(auto, user=manager, primary_uid="ct_x2")
    with pytest.raises(MergeRefused, match="not a member"):
        merging.change_primary(review, user=manager, primary_uid="ct_x1")


def test_drift_since_indexing_aborts_and_queues_a_rescan(
    merge_env: MergeEnv, manager: User, rescans: list[dict[str, Any]]
) -> None:
    uids = merge_env.maria()
    merge_env.index()
    cluster = merge_env.cluster(uids)
    merge_env.state.patch("ct_m2", {"tags": [{"label": "changed"}]})

    op = approve_cluster(cluster, user=manager, run_async=False)

    assert op.state == MergeOperation.RE_INDEX_REQUIRED and op.error_code == "ERR_DEDUP_011"
    assert op.cluster.status == Cluster.SUPERSEDED  # the rescan reopens it with fresh stamps
    assert "ct_m2" in op.evidence["drift"]
    assert merge_env.server.stats()["merges"] == 0
    assert merge_env.live("ct_m2").deleted_at is None
    assert AuditEvent.objects.filter(event_type="merge.re_index_required", operation_ref=op.pk).exists()
    assert rescans == [
        {"keys": ["+61298765432", "+61412345678"], "reason": "updated_at_drift", "actor": op_actor(op),
         "contact_uids": ["ct_m2"]}
    ]


def op_actor(op: MergeOperation) -> str:
    return str(AuditEvent.objects.filter(operation_ref=op.pk).latest("id").actor)


def test_a_duplicate_gone_before_the_merge_is_dropped_and_the_rest_merge(merge_env: MergeEnv, manager: User) -> None:
    uids = merge_env.maria()
    merge_env.index()
    op = approve_cluster(merge_env.cluster(uids), user=manager, run_async=True)
    client = merge_env.client()

    def delete_m3_once(primary: str, dups: list[str]) -> None:
        if len(client.merges) == 1:
            merge_env.state.delete("ct_m3")

    client.before_merge = delete_m3_once
    op = run_operation(op.pk, client=client)

    assert op.state == MergeOperation.PATCHED, op.last_error
    assert op.duplicate_uids == ["ct_m2"]
    assert client.merges == [("ct_m1", ["ct_m2", "ct_m3"]), ("ct_m1", ["ct_m2"])]
    primary = merge_env.live("ct_m1")
    # The dropped member's opt-out stays in the union: a merge never loses one.
    assert primary.marketing_opt_out and primary.sms_opt_out
    dropped = AuditEvent.objects.get(operation_ref=op.pk, event_type="merge.duplicate_dropped")
    assert dropped.payload["dropped"] == ["ct_m3"]


def test_when_fewer_than_two_remain_the_merge_stops_with_a_reason(merge_env: MergeEnv, manager: User) -> None:
    merge_env.add("ct_a", phones=["0411 111 111"], tags=["x"])
    merge_env.add("ct_b", phones=["0411111111"])
    merge_env.index()
    op = approve_cluster(merge_env.cluster(["ct_a", "ct_b"]), user=manager, run_async=True)
    client = merge_env.client()
    client.before_merge = lambda p, d: merge_env.state.delete("ct_b")
    op = run_operation(op.pk, client=client)
    assert op.state == MergeOperation.FAILED_PERMANENT and op.error_code == "ERR_DEDUP_006"
    assert "fewer than two members remain" in op.last_error
    assert op.cluster.status == Cluster.SUPERSEDED  # left for the next scan to re-evaluate


def test_a_primary_gone_before_the_merge_is_skipped(merge_env: MergeEnv, manager: User) -> None:
    merge_env.add("ct_a", phones=["0411 111 111"], tags=["x"])
    merge_env.add("ct_b", phones=["0411111111"])
    merge_env.index()
    op = approve_cluster(merge_env.cluster(["ct_a", "ct_b"]), user=manager, run_async=True)
    client = merge_env.client()
    client.before_merge = lambda p, d: merge_env.state.delete("ct_a")
    op = run_operation(op.pk, client=client)
    assert op.state == MergeOperation.FAILED_PERMANENT and op.error_code == "ERR_DEDUP_007"
    assert op.cluster.status == Cluster.SUPERSEDED
    assert merge_env.live("ct_b").deleted_at is None


def test_409_backs_off_then_waits_as_conflict_pending(merge_env: MergeEnv, manager: User) -> None:
    uids = merge_env.maria()
    merge_env.index()
    op = approve_cluster(merge_env.cluster(uids), user=manager, run_async=True)
    merge_env.state.merge_begin("ct_m2", ["ct_m3"], False)  # someone else's merge holds them in flight
    client = merge_env.client()
    op = run_operation(op.pk, client=client)
    assert op.state == MergeOperation.CONFLICT_PENDING and op.error_code == "ERR_DEDUP_008"
    assert len(client.merges) == merging.TIMINGS.conflict_attempts
    assert op.next_attempt_at is not None
    merge_env.state.merge_abort("ct_m2", ["ct_m3"])
    counts = merging.resume_operations(client=client)
    assert counts[MergeOperation.PATCHED] == 1
    op.refresh_from_db()
    assert op.state == MergeOperation.PATCHED and merge_env.server.stats()["merges"] == 1


def test_422_moves_the_cluster_to_cross_location_review(merge_env: MergeEnv, manager: User) -> None:
    merge_env.server.block_cross_location = True
    merge_env.add("ct_a", phones=["0411 111 111"], tags=["x"])
    merge_env.add("ct_b", phones=["0411111111"], location_uid="loc_burleigh")
    merge_env.index()
    cluster = merge_env.cluster(["ct_a", "ct_b"], auto=False)
    op = approve_cluster(cluster, user=manager, run_async=False)
    assert op.state == MergeOperation.FAILED_PERMANENT and op.error_code == "ERR_DEDUP_009"
    cluster.refresh_from_db()
    assert (cluster.status, cluster.kind, cluster.auto_merge) == (Cluster.OPEN, Cluster.CROSS, False)
    assert merge_env.live("ct_b").deleted_at is None


def test_a_lost_merge_response_is_reconciled_not_repeated(merge_env: MergeEnv, manager: User) -> None:
    uids = merge_env.maria()
    merge_env.index()
    op = approve_cluster(merge_env.cluster(uids), user=manager, run_async=True)
    client = merge_env.client()

    def applied_then_lost(primary: str, dups: list[str]) -> PodiumContact:
        client.real_merge(primary, dups)
        raise MergeOutcomeUnknown(primary, dups, "connection reset after sending")

    client.merge_override = applied_then_lost
    op = run_operation(op.pk, client=client)
    assert op.state == MergeOperation.PATCHED, op.last_error
    assert merge_env.server.stats()["merges"] == 1
    assert len(client.merges) == 1
    assert "merge.reconciled" in _events(op)
    assert merge_env.live("ct_m1").sms_opt_out


def test_an_emulator_drop_after_commit_on_the_merge_is_reconciled(merge_env: MergeEnv, manager: User) -> None:
    uids = merge_env.maria()
    merge_env.index()
    op = approve_cluster(merge_env.cluster(uids), user=manager, run_async=True)
    client = merge_env.client()

    def drop_it(primary: str, dups: list[str]) -> PodiumContact:
        merge_env.server.drop_after_commit_rate = 1.0
        try:
            return client.real_merge(primary, dups)
        finally:
            merge_env.server.drop_after_commit_rate = 0.0

    client.merge_override = drop_it
    op = run_operation(op.pk, client=client)
    assert op.state == MergeOperation.PATCHED, op.last_error
    assert merge_env.server.stats()["merges"] == 1


def test_a_merge_nobody_can_explain_goes_to_a_person_with_the_evidence(
    merge_env: MergeEnv, manager: User, admin_user: User
) -> None:
    uids = merge_env.maria()
    merge_env.add("ct_other", phones=["0499 999 999"])
    merge_env.index()
    op = approve_cluster(merge_env.cluster(uids), user=manager, run_async=True)
    client = merge_env.client()

    def lost_while_someone_merged_elsewhere(primary: str, dups: list[str]) -> PodiumContact:
        merge_env.state.merge("ct_other", ["ct_m3"])
        raise MergeOutcomeUnknown(primary, dups, "timeout")

    client.merge_override = lost_while_someone_merged_elsewhere
    op = run_operation(op.pk, client=client)
    assert op.state == MergeOperation.UNRECONCILABLE and op.error_code == "ERR_DEDUP_012"
    assert op.evidence["duplicates"]["ct_m3"]["mergedIntoUid"] == "ct_other"
    assert merging.resume_operations(client=client)["waiting_for_person"] == 1
    op.refresh_from_db()
    assert op.state == MergeOperation.UNRECONCILABLE

    with pytest.raises(ValueError):
        merging.resolve_operation(op, user=admin_user, resolution="merged_manually", note="")
    with pytest.raises(MergeRefused, match="only compliance_failed or conflict_pending"):
        merging.retry_operation(op, user=admin_user)
    op = merging.resolve_operation(op, user=admin_user, resolution="abandoned", note="left as two contacts")
    assert op.state == MergeOperation.FAILED_PERMANENT and op.evidence["resolution"] == "abandoned"
    assert op.cluster.status == Cluster.FAILED
    # Closing the case never leaves an opt-out lost: the plan's union is forced onto the primary first.
    primary = merge_env.live("ct_m1")
    assert primary.sms_opt_out and primary.marketing_opt_out
    assert op.evidence["optOutsForced"]["held"] is True
    assert AuditEvent.objects.filter(event_type="merge.resolved", actor="user:root").exists()


def test_a_write_back_that_fails_is_a_compliance_incident_retried_until_it_holds(
    merge_env: MergeEnv, manager: User, caplog: pytest.LogCaptureFixture
) -> None:
    uids = merge_env.maria()
    merge_env.index()
    op = approve_cluster(merge_env.cluster(uids), user=manager, run_async=True)
    client = merge_env.client()

    def fail(uid: str, body: dict[str, object]) -> PodiumContact:
        raise ServerError("PATCH failed", http_status=500)

    client.patch_override = fail
    with caplog.at_level(logging.ERROR, logger="dedup.merging"):
        op = run_operation(op.pk, client=client)
    assert op.state == MergeOperation.COMPLIANCE_FAILED and op.error_code == "ERR_DEDUP_010"
    assert op.next_attempt_at is not None
    assert any("COMPLIANCE" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    assert op.cluster.status == Cluster.MERGING
    assert not merge_env.live("ct_m1").sms_opt_out  # Podium's merge dropped it; the incident is open
    # The duplicates are merged away in the index already: no proposal can take them meanwhile.
    assert set(Contact.objects.filter(merged_into_uid="ct_m1").values_list("uid", flat=True)) == {"ct_m2", "ct_m3"}

    with pytest.raises(MergeRefused, match="only unreconcilable"):
        merging.resolve_operation(op, user=manager, resolution="abandoned", note="give up")
    client.patch_override = None
    merging.resume_operations(client=client)
    op.refresh_from_db()
    assert op.state == MergeOperation.PATCHED
    assert merge_env.live("ct_m1").sms_opt_out and merge_env.server.stats()["merges"] == 1


def test_a_write_back_that_does_not_stick_is_not_verified(merge_env: MergeEnv, manager: User) -> None:
    uids = merge_env.maria()
    merge_env.index()
    op = approve_cluster(merge_env.cluster(uids), user=manager, run_async=True)
    client = merge_env.client()

    def ignore_opt_outs(uid: str, body: dict[str, object]) -> PodiumContact:
        kept = {k: v for k, v in body.items() if not k.endswith("OptOut")}
        return client.real_update(uid, kept)

    client.patch_override = ignore_opt_outs
    op = run_operation(op.pk, client=client)
    assert op.state == MergeOperation.COMPLIANCE_FAILED
    assert "smsOptOut is off" in op.last_error
    client.patch_override = None
    op = merging.retry_operation(op, user=manager, run_async=False)
    assert op.state == MergeOperation.PATCHED


def test_podium_unavailable_keeps_the_operation_resumable(merge_env: MergeEnv, manager: User) -> None:
    uids = merge_env.maria()
    merge_env.index()
    op = approve_cluster(merge_env.cluster(uids), user=manager, run_async=True)
    merge_env.server.fail_rate = 1.0
    op = run_operation(op.pk, client=merge_env.client())
    assert op.state == MergeOperation.PENDING and op.next_attempt_at is not None
    assert AuditEvent.objects.filter(operation_ref=op.pk, event_type="merge.deferred").exists()
    merge_env.server.fail_rate = 0.0
    merging.resume_operations()
    op.refresh_from_db()
    assert op.state == MergeOperation.PATCHED


def test_cli_dry_run_prints_the_plan_and_calls_nothing(merge_env: MergeEnv) -> None:
    uids = merge_env.maria()
    merge_env.index()
    cluster = merge_env.cluster(uids)
    out = StringIO()
    call_command("merge", "--cluster", cluster.cluster_id, "--dry-run", stdout=out)
    text = out.getvalue()
    assert merge_env.server.stats()["requests"] == 0
    assert not MergeOperation.objects.exists()
    assert "primary      ct_m1" in text and "union        marketingOptOut, smsOptOut" in text
    assert "merge(ct_m1)" in text and "update_contact(ct_m1)" in text
    last = json.loads(text.strip().splitlines()[-1])
    assert last == {"operations": merging.operation_summary()}
    plan_line = json.loads(text.strip().splitlines()[-2])
    assert plan_line["plan"]["optOutUnion"]["smsOptOut"] is True


def test_cli_merges_one_cluster_inline_and_explains_errors(merge_env: MergeEnv) -> None:
    uids = merge_env.maria()
    merge_env.index()
    cluster = merge_env.cluster(uids)
    out = StringIO()
    call_command("merge", "--cluster", cluster.cluster_id, stdout=out)
    last = json.loads(out.getvalue().strip().splitlines()[-1])
    assert last["operations"]["patched"] == 1
    assert AuditEvent.objects.filter(event_type="merge.planned", actor="worker:cli").exists()
    with pytest.raises(CommandError, match="is merged, not open"):
        call_command("merge", "--cluster", cluster.cluster_id, stdout=StringIO())
    with pytest.raises(CommandError, match="unknown cluster"):
        call_command("merge", "--cluster", "cl_nope", stdout=StringIO())


def test_cli_all_auto_dry_run_then_merge(merge_env: MergeEnv) -> None:
    merge_env.maria()
    merge_env.add("ct_x1", phones=["0400 000 001"], tags=["a"])
    merge_env.add("ct_x2", phones=["0400000001"], email_opt_out=True)
    merge_env.index()
    merge_env.cluster(["ct_m1", "ct_m2", "ct_m3"])
    merge_env.cluster(["ct_x1", "ct_x2"])
    out = StringIO()
    call_command("merge", "--all-auto", "--dry-run", stdout=out)
    assert out.getvalue().count('"dryRun":true') == 2 and merge_env.server.stats()["requests"] == 0
    out = StringIO()
    call_command("merge", "--all-auto", stdout=out)
    assert json.loads(out.getvalue().strip().splitlines()[-1])["operations"]["patched"] == 2
    assert merge_env.live("ct_x1").email_opt_out
    out = StringIO()
    call_command("merge", "--resume", stdout=out)
    assert json.loads(out.getvalue().strip().splitlines()[-1])["operations"]["patched"] == 2


def test_approve_many_reports_refusals_without_failing_the_batch(merge_env: MergeEnv, manager: User) -> None:
    merge_env.maria()
    merge_env.add("ct_x1", phones=["0400 000 001"], tags=["a"])
    merge_env.add("ct_x2", phones=["0400000001"])
    merge_env.index()
    first = merge_env.cluster(["ct_m1", "ct_m2", "ct_m3"])
    second = merge_env.cluster(["ct_x1", "ct_x2"])
    merging.reject_cluster(second, user=manager)
    batch = merging.approve_many([first, second], user=manager)
    progress = merging.batch_progress(batch)
    assert progress["total"] == 1 and progress["running"] == 1
    assert [r["clusterId"] for r in progress["refused"]] == [second.cluster_id]
    op = batch.operations.get()
    run_operation(op.pk, client=merge_env.client())
    progress = merging.batch_progress(batch)
    assert (progress["done"], progress["failed"], progress["running"]) == (1, 0, 0)
