"""The native strategy's own paths: Podium's ``merge`` capability and every answer its contract names.

400 ``invalid_duplicate_uid`` (drop the gone member, merge the rest), 404 (skip for the next scan), 409
``merge_in_progress`` (back off, then ``conflict_pending``), 422 ``cross_location_merge_blocked``
(cross-location review), a 5xx or a lost answer after the merge may have applied (reconcile from the
duplicates' ``mergedIntoUid``; never merge twice), and a state nobody can explain (a person decides).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from django.contrib.auth.models import User

from dedup.merge import (
    TIMINGS,
    MergeRefused,
    approve_cluster,
    resolve_operation,
    resume_operations,
    retry_operation,
    run_operation,
)
from dedup.models import AuditEvent, Cluster, MergeOperation
from podium_client import InvalidRequestError, MergeOutcomeUnknown, ServerError
from tests.merge_helpers import BURLEIGH, consent_problems, flags, missing_on

if TYPE_CHECKING:
    from tests.merge_helpers import MergeEnv

pytest_plugins = ["tests.merge_helpers"]
pytestmark = pytest.mark.django_db


def _approved(env: MergeEnv, user: User, uids: list[str], **kwargs: Any) -> MergeOperation:
    env.index()
    return approve_cluster(env.cluster(uids, **kwargs), user=user, run_async=True, accept_losses=True)


def _events(op: MergeOperation) -> list[str]:
    return list(
        AuditEvent.objects.filter(operation_ref=op.pk).order_by("id").values_list("event_type", flat=True)
    )


def test_a_duplicate_gone_before_the_merge_call_is_dropped_and_the_rest_merge(
    native_env: MergeEnv, manager: User
) -> None:
    uids = native_env.maria()
    before = {uid: native_env.alive(uid) for uid in uids}
    op = _approved(native_env, manager, uids)
    client = native_env.client()
    client.before["merge"] = lambda primary, dups: (
        # By uid: the duplicate's email is on the primary too by now (written before the merge).
        len(client.called("merge")) == 1 and native_env.state.delete("ct_m2")
    )

    op = run_operation(op.pk, client=client)

    assert op.state == MergeOperation.PATCHED, op.last_error
    assert op.duplicate_uids == ["ct_m3"]
    assert client.called("merge") == [("ct_m1", ["ct_m2", "ct_m3"]), ("ct_m1", ["ct_m3"])]
    dropped = AuditEvent.objects.get(operation_ref=op.pk, event_type="merge.duplicate_dropped")
    assert dropped.payload["dropped"] == ["ct_m2"] and dropped.payload["remaining"] == ["ct_m3"]
    survivor = native_env.alive("ct_m1")
    assert missing_on(survivor, before["ct_m3"]) == []
    # The dropped member's consent still binds the number it shared with the others.
    assert consent_problems(before.values(), survivor) == []
    assert native_env.stats()["merges"] == 1


def test_when_fewer_than_two_remain_the_merge_stops_for_the_next_scan(
    native_env: MergeEnv, manager: User
) -> None:
    pair = native_env.pair()
    op = _approved(native_env, manager, pair)
    client = native_env.client()
    client.before["merge"] = lambda primary, dups: native_env.state.delete(
        native_env.alive(pair[1]).conversation_uids[0]
    )
    op = run_operation(op.pk, client=client)
    assert (op.state, op.error_code) == (MergeOperation.FAILED_PERMANENT, "ERR_DEDUP_006")
    assert "fewer than two members remain" in op.last_error
    assert op.cluster.status == Cluster.SUPERSEDED


def test_a_primary_gone_before_the_merge_call_is_a_404_and_nothing_is_merged(
    native_env: MergeEnv, manager: User, rescans: list[dict[str, Any]]
) -> None:
    pair = native_env.pair()
    op = _approved(native_env, manager, pair)
    client = native_env.client()
    client.before["merge"] = lambda primary, dups: native_env.state.delete(
        native_env.alive(pair[0]).conversation_uids[0]
    )
    op = run_operation(op.pk, client=client)
    assert (op.state, op.error_code) == (MergeOperation.FAILED_PERMANENT, "ERR_DEDUP_007")
    assert op.cluster.status == Cluster.SUPERSEDED
    assert not native_env.retired(pair[1]) and native_env.stats()["merges"] == 0
    assert rescans[-1]["reason"] == "contact_not_found"


def test_409_backs_off_then_waits_as_conflict_pending_and_merges_once_free(
    native_env: MergeEnv, manager: User
) -> None:
    uids = native_env.maria()
    op = _approved(native_env, manager, uids)
    native_env.state.merge_begin("ct_m2", ["ct_m3"], False)  # someone else's merge holds them in flight
    client = native_env.client()
    op = run_operation(op.pk, client=client)
    assert (op.state, op.error_code) == (MergeOperation.CONFLICT_PENDING, "ERR_DEDUP_008")
    assert len(client.called("merge")) == TIMINGS.conflict_attempts
    assert op.next_attempt_at is not None and op.cluster.status == Cluster.MERGING
    with pytest.raises(MergeRefused, match="only unreconcilable"):
        resolve_operation(op, user=manager, resolution="abandoned", note="x")

    native_env.state.merge_abort("ct_m2", ["ct_m3"])
    counts = resume_operations(client=client)
    assert counts[MergeOperation.PATCHED] == 1
    op.refresh_from_db()
    assert op.state == MergeOperation.PATCHED and native_env.stats()["merges"] == 1


def test_a_conflict_pending_merge_can_be_retried_by_a_person(native_env: MergeEnv, manager: User) -> None:
    pair = native_env.pair()
    op = _approved(native_env, manager, pair)
    native_env.state.merge_begin(pair[0], [], False)
    op = run_operation(op.pk, client=native_env.client())
    assert op.state == MergeOperation.CONFLICT_PENDING
    native_env.state.merge_abort(pair[0], [])
    assert retry_operation(op, user=manager, run_async=False).state == MergeOperation.PATCHED


def test_422_moves_the_cluster_to_cross_location_review(native_env: MergeEnv, manager: User) -> None:
    native_env.server.block_cross_location = True
    native_env.add("ct_a", phones=["0411 111 111"], tags=["x"])
    native_env.add("ct_b", phones=["0411111111"], locations=[BURLEIGH], tags=["y"])
    tags_before = {uid: sorted(t.label for t in native_env.alive(uid).tags) for uid in ("ct_a", "ct_b")}
    op = _approved(native_env, manager, ["ct_a", "ct_b"], auto=False)
    op = run_operation(op.pk, client=native_env.client())
    assert (op.state, op.error_code) == (MergeOperation.FAILED_PERMANENT, "ERR_DEDUP_009")
    cluster = Cluster.objects.get(pk=op.cluster_id)
    assert (cluster.status, cluster.kind, cluster.auto_merge) == (Cluster.OPEN, Cluster.CROSS, False)
    assert not native_env.retired("ct_b") and native_env.stats()["merges"] == 0
    # A person may yet find two people: nothing of one was written onto the other before Podium refused.
    assert {uid: sorted(t.label for t in native_env.alive(uid).tags) for uid in ("ct_a", "ct_b")} == tags_before


def test_a_lost_merge_answer_is_reconciled_not_repeated(native_env: MergeEnv, manager: User) -> None:
    uids = native_env.maria()
    before = {uid: native_env.alive(uid) for uid in uids}
    op = _approved(native_env, manager, uids)
    client = native_env.client()

    def applied_then_lost(primary: str, dups: list[str]) -> Any:
        client.real("merge", primary, dups)
        raise MergeOutcomeUnknown(primary, dups, "connection reset after sending")

    client.instead["merge"] = applied_then_lost
    op = run_operation(op.pk, client=client)
    assert op.state == MergeOperation.PATCHED, op.last_error
    assert native_env.stats()["merges"] == 1 and len(client.called("merge")) == 1
    assert "merge.reconciled" in _events(op)
    survivor = native_env.alive("ct_m1")
    assert all(missing_on(survivor, m) == [] for m in before.values())
    assert consent_problems(before.values(), survivor) == []


@pytest.mark.parametrize("fault", ["drop_after_commit", "5xx_once"])
def test_a_merge_whose_outcome_is_unknown_is_reconciled_from_podium(
    native_env: MergeEnv, manager: User, fault: str
) -> None:
    uids = native_env.maria()
    op = _approved(native_env, manager, uids)
    client = native_env.client()
    server = native_env.server

    def faulty(primary: str, dups: list[str]) -> Any:
        if fault == "drop_after_commit":
            server.drop_after_commit_rate = 1.0  # applied, then the connection is reset
        elif len(client.called("merge")) == 1:
            server.configure(fail_next=1, fault_statuses=[500])  # a 500 that promises nothing
        try:
            return client.real("merge", primary, dups)
        finally:
            server.drop_after_commit_rate = 0.0

    client.instead["merge"] = faulty
    op = run_operation(op.pk, client=client)
    assert op.state == MergeOperation.PATCHED, op.last_error
    assert server.stats()["merges"] == 1, "merged exactly once"
    reconciled = AuditEvent.objects.filter(operation_ref=op.pk, event_type="merge.reconciled").latest("id")
    if fault == "drop_after_commit":
        assert "the merge happened" in reconciled.payload["finding"]
    else:
        assert "merging again is safe" in reconciled.payload["finding"]
        assert len(client.called("merge")) == 2


def test_a_merge_nobody_can_explain_goes_to_a_person_with_the_evidence(
    native_env: MergeEnv, manager: User, admin_user: User
) -> None:
    uids = native_env.maria()
    before = {uid: native_env.alive(uid) for uid in uids}
    native_env.add("ct_other", phones=["0499 999 999"])
    op = _approved(native_env, manager, uids)
    client = native_env.client()

    def lost_while_someone_merged_elsewhere(primary: str, dups: list[str]) -> Any:
        native_env.state.merge("ct_other", ["ct_m3"])
        raise MergeOutcomeUnknown(primary, dups, "timeout")

    client.instead["merge"] = lost_while_someone_merged_elsewhere
    op = run_operation(op.pk, client=client)
    assert (op.state, op.error_code) == (MergeOperation.UNRECONCILABLE, "ERR_DEDUP_012")
    assert op.evidence["duplicates"]["ct_m3"]["mergedIntoUid"] == "ct_other"
    assert resume_operations(client=client)["waiting_for_person"] == 1
    op.refresh_from_db()
    assert op.state == MergeOperation.UNRECONCILABLE

    with pytest.raises(ValueError):
        resolve_operation(op, user=admin_user, resolution="merged_manually", note="")
    with pytest.raises(MergeRefused, match="only compliance_failed or conflict_pending"):
        retry_operation(op, user=admin_user)
    op = resolve_operation(
        op, user=admin_user, resolution="abandoned", note="left as two contacts", client=client
    )
    assert op.state == MergeOperation.FAILED_PERMANENT and op.evidence["resolution"] == "abandoned"
    assert op.cluster.status == Cluster.FAILED
    # Closing the case never leaves the primary weaker than the merge required: forced first.
    assert op.evidence["consentForced"]["held"] is True
    assert consent_problems(before.values(), native_env.alive("ct_m1")) == []
    assert flags(native_env.alive("ct_m1")).marketing
    assert AuditEvent.objects.filter(event_type="merge.resolved", actor="user:root").exists()


def test_a_merge_podium_keeps_failing_is_deferred_not_hammered(native_env: MergeEnv, manager: User) -> None:
    pair = native_env.pair()
    op = _approved(native_env, manager, pair)
    client = native_env.client()
    server = native_env.server
    client.before["merge"] = lambda primary, dups: server.configure(fail_next=1, fault_statuses=[500])

    op = run_operation(op.pk, client=client)

    assert op.state == MergeOperation.MERGING and op.next_attempt_at is not None
    assert len(client.called("merge")) == 2, "one retry after reconciling, then backoff"
    assert server.stats()["merges"] == 0
    deferred = AuditEvent.objects.get(operation_ref=op.pk, event_type="merge.deferred")
    assert deferred.payload["reason"] == "retry_later" and "without merging" in deferred.payload["why"]
    del client.before["merge"]
    assert run_operation(op.pk, client=client).state == MergeOperation.PATCHED
    assert server.stats()["merges"] == 1


def test_an_opt_out_answering_with_the_primary_is_the_read_back(native_env: MergeEnv, manager: User) -> None:
    uids = native_env.maria()
    before = {uid: native_env.alive(uid) for uid in uids}
    op = _approved(native_env, manager, uids)
    client = native_env.client()
    op = run_operation(op.pk, client=client)
    assert op.state == MergeOperation.PATCHED
    names = [name for name, _args in client.calls]
    # What the primary lacks is written before the merge (which keeps only the primary's own), consent
    # after it (number-wide); the opt-out's answer is the read-back of both.
    assert names == ["get_contact"] * 3 + [
        "update_contact",
        "attach_tag",
        "set_attribute",
        "merge",
        "opt_out_phone",
    ]
    assert op.request_count == 8
    survivor = native_env.alive("ct_m1")
    assert consent_problems(before.values(), survivor) == []
    assert all(missing_on(survivor, m) == [] for m in before.values())


# --- the write onto the primary before Podium's merge ------------------------------------------------------


def test_a_write_before_the_merge_that_fails_defers_then_the_resume_merges_once_with_nothing_lost(
    native_env: MergeEnv, manager: User
) -> None:
    uids = native_env.maria()
    before = {uid: native_env.alive(uid) for uid in uids}
    op = _approved(native_env, manager, uids)
    client = native_env.client()

    def unavailable(*args: Any) -> None:
        raise ServerError("tags are down", http_status=503)

    client.instead["attach_tag"] = unavailable
    op = run_operation(op.pk, client=client)

    assert op.state == MergeOperation.MERGING and op.next_attempt_at is not None
    assert native_env.stats()["merges"] == 0 and not client.called("merge")
    assert AuditEvent.objects.filter(operation_ref=op.pk, event_type="merge.deferred").exists()

    # The resume reads Podium first: the primary moved by this operation's own write (the name fill
    # landed before the tag failed) is not taken for someone else's change.
    op = run_operation(op.pk, client=native_env.client())
    assert op.state == MergeOperation.PATCHED, op.last_error
    assert native_env.stats()["merges"] == 1
    survivor = native_env.alive("ct_m1")
    assert all(missing_on(survivor, member) == [] for member in before.values())
    assert consent_problems(before.values(), survivor) == []


def test_a_write_before_the_merge_that_podium_refuses_sends_the_cluster_to_review_unmerged(
    native_env: MergeEnv, manager: User
) -> None:
    uids = native_env.maria()
    op = _approved(native_env, manager, uids)
    client = native_env.client()

    def refuse(*args: Any) -> None:
        raise InvalidRequestError("tag not allowed", http_status=400, code="invalid_request_values")

    client.instead["attach_tag"] = refuse
    op = run_operation(op.pk, client=client)

    assert op.state == MergeOperation.FAILED_PERMANENT and "write_back_refused" in op.cluster.reasons
    assert "nothing was merged" in op.last_error
    assert op.cluster.status == Cluster.OPEN and not op.cluster.auto_merge
    assert native_env.stats()["merges"] == 0 and not any(native_env.retired(uid) for uid in uids)
