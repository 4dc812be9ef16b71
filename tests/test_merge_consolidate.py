"""The consolidate strategy's own paths: Podium's published API only, duplicates retired with DELETE.

A duplicate whose conversations move onto the primary may have nothing left that reaches it alone, so it
first gets a *retirement handle* (an email on the reserved ``.invalid`` domain) that is read back before
anything moves. The primary is written and verified before any DELETE; each duplicate is looked at once
more after its data was carried and is not deleted if it changed meanwhile.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from django.contrib.auth.models import User

from dedup.merge import approve_cluster, merge_all_auto, resolve_operation, run_operation
from dedup.models import AuditEvent, Cluster, Contact, MergeOperation
from podium_client import APIConnectionError, InvalidRequestError
from tests.merge_helpers import BURLEIGH, consent_problems, missing_on

if TYPE_CHECKING:
    from tests.merge_helpers import MergeEnv

pytest_plugins = ["tests.merge_helpers"]
pytestmark = pytest.mark.django_db

HANDLE_DOMAIN = "@dedup-retire.invalid"


def _approved(env: MergeEnv, user: User, uids: list[str], **kwargs: Any) -> MergeOperation:
    env.index()
    return approve_cluster(env.cluster(uids), user=user, run_async=True, **kwargs)


def test_duplicates_get_a_retirement_handle_read_back_before_anything_moves(
    consolidate_env: MergeEnv, manager: User
) -> None:
    uids = consolidate_env.maria()
    before = {uid: consolidate_env.alive(uid) for uid in uids}
    op = _approved(consolidate_env, manager, uids)
    client = consolidate_env.client()
    op = run_operation(op.pk, client=client)
    assert op.state == MergeOperation.PATCHED, op.last_error

    handles = op.steps["retireBy"]
    assert set(handles) == {"ct_m2", "ct_m3"} and all(h.endswith(HANDLE_DOMAIN) for h in handles.values())
    names = [name for name, _args in client.calls]
    first_move = next(
        i for i, (n, a) in enumerate(client.calls) if n == "update_contact" and "conversationUid" in a[1]
    )
    for uid, handle in handles.items():
        set_at = client.calls.index(("update_contact", (before[uid].conversation_uids[0], {"email": handle})))
        assert client.calls[set_at + 1] == ("get_contact", (handle,)), "read back by the handle at once"
        assert set_at < first_move
        assert ("delete_contact", (handle,)) in client.calls
    assert names.index("delete_contact") > names.index("opt_out_phone"), (
        "the primary first, then the retirement"
    )
    deleted = consolidate_env.deleted()
    assert set(deleted) == {"ct_m2", "ct_m3"} and not any(d["soft"] for d in consolidate_env.state.deleted())
    # What DELETE removed is what was carried: each duplicate's last JSON is on the survivor.
    survivor = consolidate_env.alive("ct_m1")
    for uid, last in deleted.items():
        assert missing_on(survivor, last) == [] and missing_on(survivor, before[uid]) == [], uid
    assert HANDLE_DOMAIN not in "".join(survivor.emails)
    assert consolidate_env.stats()["ambiguous_identifier_uses"] == 0


def test_a_duplicate_reached_by_an_address_only_it_holds_needs_no_handle(
    consolidate_env: MergeEnv, manager: User
) -> None:
    # Its email cannot be carried (the primary has one): a loss a person accepts; it still reaches it alone.
    pair = consolidate_env.pair(emails=["sam.work@example.com"])
    consolidate_env.edit(pair[0], add_email="sam@example.com")
    op = _approved(consolidate_env, manager, pair, accept_losses=True)
    client = consolidate_env.client()
    op = run_operation(op.pk, client=client)
    assert op.state == MergeOperation.PATCHED, op.last_error
    assert op.steps["retireBy"] == {pair[1]: "sam.work@example.com"}
    assert ("delete_contact", ("sam.work@example.com",)) in client.calls
    assert not any("retire-" in str(args) for _n, args in client.calls)
    assert [loss["field"] for loss in op.accepted_losses] == ["email"]


def test_a_handle_podium_ignores_stops_the_merge_before_anything_moves(
    consolidate_env: MergeEnv, manager: User, admin_user: User
) -> None:
    uids = consolidate_env.maria()
    before = {uid: consolidate_env.alive(uid) for uid in uids}
    op = _approved(consolidate_env, manager, uids)
    client = consolidate_env.client()
    real = client.real

    def ignore_handles(identifier: str, fields: dict[str, Any]) -> Any:
        if str(fields.get("email", "")).endswith(HANDLE_DOMAIN):
            return identifier  # 202, and nothing happens
        return real("update_contact", identifier, fields)

    client.instead["update_contact"] = ignore_handles
    op = run_operation(op.pk, client=client)

    assert (op.state, op.error_code) == (MergeOperation.UNRECONCILABLE, "ERR_DEDUP_012")
    assert "does not reach it" in op.last_error
    assert not client.called("delete_contact") and not client.called("attach_tag")
    assert not [a for a in client.called("update_contact") if "conversationUid" in a[1]]
    for uid, member in before.items():
        live = consolidate_env.alive(uid)
        assert live.conversation_uids == member.conversation_uids, "nothing moved"

    # A person settles it; the consent the merge required is put on the primary first.
    op = resolve_operation(
        op, user=admin_user, resolution="abandoned", note="left as three contacts", client=client
    )
    assert op.state == MergeOperation.FAILED_PERMANENT and op.cluster.status == Cluster.FAILED
    assert op.evidence["consentForced"]["held"] is True
    assert consent_problems(before.values(), consolidate_env.alive("ct_m1")) == []


def test_a_handle_that_replaced_the_duplicates_email_is_undone_and_the_merge_stops(
    consolidate_env: MergeEnv, manager: User
) -> None:
    uids = consolidate_env.maria()
    op = _approved(consolidate_env, manager, uids)
    client = consolidate_env.client()
    real = client.real

    def replace_email(identifier: str, fields: dict[str, Any]) -> Any:
        result = real("update_contact", identifier, fields)
        if (
            str(fields.get("email", "")).endswith(HANDLE_DOMAIN)
            and identifier in consolidate_env.alive("ct_m2").conversation_uids
        ):
            # A tenant whose PATCH replaces the email: the duplicate's own address is gone.
            consolidate_env.edit("ct_m2", remove_channel="maria.412345678@example.com")
        return result

    client.instead["update_contact"] = replace_email
    op = run_operation(op.pk, client=client)

    assert op.state == MergeOperation.UNRECONCILABLE
    assert "replaced" in op.last_error and "maria.412345678@example.com" not in op.last_error
    assert "maria.412345678@example.com" in consolidate_env.alive("ct_m2").emails, "put back"
    assert not client.called("delete_contact")
    assert not [a for a in client.called("update_contact") if "conversationUid" in a[1]]


def test_conversations_the_tenant_does_not_move_stop_the_merge_before_any_delete(
    consolidate_env: MergeEnv, manager: User
) -> None:
    uids = consolidate_env.maria()
    op = _approved(consolidate_env, manager, uids)
    client = consolidate_env.client()
    real = client.real
    client.instead["update_contact"] = lambda identifier, fields: (
        identifier if "conversationUid" in fields else real("update_contact", identifier, fields)
    )
    op = run_operation(op.pk, client=client)

    assert op.state == MergeOperation.FAILED_PERMANENT and "conversations_not_moved" in op.last_error
    assert "nothing was deleted" in op.last_error
    moving = [c for uid in ("ct_m2", "ct_m3") for c in consolidate_env.alive(uid).conversation_uids]
    assert sorted(op.evidence["conversations"]) == sorted(moving) and len(moving) == 3
    assert not client.called("delete_contact") and consolidate_env.deleted() == {}
    cluster = Cluster.objects.get(pk=op.cluster_id)
    assert (cluster.status, cluster.kind, cluster.auto_merge) == (Cluster.OPEN, Cluster.REVIEW, False)
    assert "conversations_not_moved" in cluster.reasons
    assert all(Contact.objects.get(uid=uid).is_active for uid in uids)


@pytest.mark.parametrize("change", ["tag", "transactional_opt_out"])
def test_a_duplicate_changed_after_its_data_was_carried_is_not_deleted(
    consolidate_env: MergeEnv, manager: User, rescans: list[dict[str, Any]], change: str
) -> None:
    uids = consolidate_env.maria()
    op = _approved(consolidate_env, manager, uids)
    client = consolidate_env.client()
    edits: dict[str, Any] = {"add_tag": "late"} if change == "tag" else {"transactional_opt_out": True}
    # A person edits ct_m3 in Podium while its data is being written onto the primary.
    client.before["opt_out_phone"] = lambda phone: consolidate_env.edit("ct_m3", **edits)

    op = run_operation(op.pk, client=client)

    assert (op.state, op.error_code) == (MergeOperation.RE_INDEX_REQUIRED, "ERR_DEDUP_011")
    assert "ct_m3 changed in Podium after its data was carried" in op.last_error
    assert "it was not deleted" in op.last_error
    assert consolidate_env.retired("ct_m2") and not consolidate_env.retired("ct_m3")
    assert Contact.objects.get(uid="ct_m3").is_active, "a live contact again in the index"
    assert rescans[-1]["reason"] == "changed_during_merge" and rescans[-1]["contact_uids"] == ["ct_m3"]


def test_a_delete_whose_answer_was_lost_counts_as_done(consolidate_env: MergeEnv, manager: User) -> None:
    pair = consolidate_env.pair()
    op = _approved(consolidate_env, manager, pair)
    client = consolidate_env.client()
    server = consolidate_env.server

    def drop_the_answer(identifier: str) -> None:
        server.drop_after_commit_rate = 1.0
        try:
            client.real("delete_contact", identifier)
        finally:
            server.drop_after_commit_rate = 0.0

    client.instead["delete_contact"] = drop_the_answer
    op = run_operation(op.pk, client=client)
    assert op.state == MergeOperation.PATCHED, op.last_error
    assert op.steps["retired"] == {pair[1]: "deleted"}
    assert server.stats()["drops"] == 1
    assert not AuditEvent.objects.filter(operation_ref=op.pk, event_type="merge.deferred").exists()


def test_a_delete_that_cannot_be_sent_is_retried_from_its_announced_intent(
    consolidate_env: MergeEnv, manager: User
) -> None:
    pair = consolidate_env.pair()
    op = _approved(consolidate_env, manager, pair)
    client = consolidate_env.client()

    def refuse(identifier: str) -> None:
        raise APIConnectionError("connection refused")

    client.instead["delete_contact"] = refuse
    op = run_operation(op.pk, client=client)
    assert op.state == MergeOperation.MERGED and op.steps["deleting"] == pair[1]
    assert not consolidate_env.retired(pair[1])
    del client.instead["delete_contact"]
    op = run_operation(op.pk, client=client)
    assert op.state == MergeOperation.PATCHED and consolidate_env.retired(pair[1])


def test_a_member_nothing_reaches_alone_cannot_be_consolidated(
    consolidate_env: MergeEnv, manager: User
) -> None:
    # No conversation, no email, and its number is the primary's: the published API cannot reach it.
    pair = consolidate_env.pair(conversations=0)
    consolidate_env.index()
    cluster = consolidate_env.cluster(pair)
    assert merge_all_auto(actor="nightly") == []
    cluster.refresh_from_db()
    assert "cannot_carry" in cluster.reasons and not cluster.auto_merge
    refused = AuditEvent.objects.get(event_type="merge.refused", cluster_ref=cluster.cluster_id)
    assert any(pair[1] in b and "cannot reach it" in b for b in refused.payload["blockers"])
    assert consolidate_env.stats()["requests"] == 0


def test_a_member_retired_by_another_merge_meanwhile_supersedes_the_cluster(
    consolidate_env: MergeEnv, manager: User
) -> None:
    from dedup.merge.decisions import _snapshot_basis
    from dedup.merge.planning import member_records, plan_for

    consolidate_env.add("ct_s1", phones=["0411 111 111"], tags=["a"], address="1 George St")
    consolidate_env.add("ct_s2", phones=["0411111111", "0422 222 222"])
    consolidate_env.add("ct_s3", phones=["0422222222"], locations=[BURLEIGH], tags=["b"])
    consolidate_env.index()
    within = consolidate_env.cluster(["ct_s1", "ct_s2"])
    cross = consolidate_env.cluster(["ct_s2", "ct_s3"], auto=False)
    first = approve_cluster(within, user=manager, run_async=True, accept_losses=True)
    # Planned while ct_s2 was live (two detections racing could leave that behind).
    plan = plan_for(cross, member_records(cross))
    later = MergeOperation.objects.create(
        cluster=cross, primary_uid=plan.primary_uid, duplicate_uids=list(plan.duplicate_uids), plan=plan.to_dict(),
        member_snapshot=_snapshot_basis(cross, plan, {}),
    )  # fmt: skip
    Cluster.objects.filter(pk=cross.pk).update(status=Cluster.APPROVED)
    assert run_operation(first.pk, client=consolidate_env.client()).state == MergeOperation.PATCHED
    requests = consolidate_env.stats()["requests"]

    later = run_operation(later.pk, client=consolidate_env.client())

    assert (later.state, later.error_code) == (MergeOperation.FAILED_PERMANENT, "ERR_DEDUP_007")
    assert later.cluster.status == Cluster.SUPERSEDED, "left for the next scan, not sent to review"
    assert consolidate_env.stats()["requests"] == requests, "the index knew: no call"


def test_a_member_whose_conversation_moved_elsewhere_has_changed(
    consolidate_env: MergeEnv, manager: User
) -> None:
    pair = consolidate_env.pair()
    op = _approved(consolidate_env, manager, pair)
    other = consolidate_env.add("ct_other", phones=["0499 999 999"])
    # In Podium, someone moved the duplicate's only conversation to another contact.
    consolidate_env.state.patch(
        consolidate_env.alive(other).conversation_uids[0],
        {"conversationUid": consolidate_env.alive(pair[1]).conversation_uids[0]},
    )
    op = run_operation(op.pk, client=consolidate_env.client())
    assert (op.state, op.error_code) == (MergeOperation.RE_INDEX_REQUIRED, "ERR_DEDUP_011")
    assert op.evidence["drift"] == {pair[1]: {"reached": "ct_other"}}
    assert op.cluster.status == Cluster.SUPERSEDED


def test_a_conversation_gone_during_the_write_back_means_the_members_changed(
    consolidate_env: MergeEnv, manager: User, rescans: list[dict[str, Any]]
) -> None:
    pair = consolidate_env.pair()
    op = _approved(consolidate_env, manager, pair)
    client = consolidate_env.client()
    # Someone deletes the duplicate in Podium (its conversation with it) just before it is moved.
    client.before["attach_tag"] = lambda *args: None
    moving = consolidate_env.alive(pair[1]).conversation_uids[0]
    client.before["update_contact"] = lambda identifier, fields: (
        fields.get("conversationUid") == moving and consolidate_env.state.delete(moving)
    )
    op = run_operation(op.pk, client=client)
    assert (op.state, op.error_code) == (MergeOperation.RE_INDEX_REQUIRED, "ERR_DEDUP_011")
    assert "during the write-back; nothing was deleted" in op.last_error
    assert op.cluster.status == Cluster.SUPERSEDED and rescans[-1]["reason"] == "changed_during_merge"
    assert not client.called("delete_contact")


def test_a_write_podium_refuses_for_good_sends_the_cluster_to_review(
    consolidate_env: MergeEnv, manager: User
) -> None:
    uids = consolidate_env.maria()
    op = _approved(consolidate_env, manager, uids)
    client = consolidate_env.client()

    def refuse(*args: Any) -> None:
        raise InvalidRequestError("tag not allowed", http_status=400, code="invalid_request_values")

    client.instead["attach_tag"] = refuse
    op = run_operation(op.pk, client=client)
    assert op.state == MergeOperation.FAILED_PERMANENT and "write_back_refused" in op.cluster.reasons
    assert "Podium refused the write-back (400 invalid_request_values)" in op.last_error
    assert not client.called("delete_contact") and all(not consolidate_env.retired(uid) for uid in uids)
