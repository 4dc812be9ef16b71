"""Restoring a contact a merge retired, for each strategy: every field back, at least the merge's consent.

With the ``restore`` capability (native) Podium un-hides the contact; on the published API alone
(consolidate) it is re-created from the snapshot its merge kept — name, phone, email, address,
locations, tags, attributes — its conversations are moved back, and the new uid is recorded beside the
old one. A contact restored three times is a restore loop (``ERR_DEDUP_013``); "different people" is
remembered.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from django.contrib.auth.models import User

from dedup.merge import approve_cluster, restore_loop_contacts
from dedup.merge.restoring import RestoreError, RestoreLoopError, restore_contact
from dedup.models import AuditEvent, Cluster, Contact, MergeOperation, RestoreRecord, ReviewDecision
from podium_client import Contact as PodiumContact
from podium_client import ServerError
from tests.merge_helpers import consent_problems, flags, missing_on

if TYPE_CHECKING:
    from tests.merge_helpers import MergeEnv

pytest_plugins = ["tests.merge_helpers"]
pytestmark = pytest.mark.django_db


def _merge(env: MergeEnv, user: User, uids: list[str], **kwargs: Any) -> MergeOperation:
    env.index()
    op = approve_cluster(env.cluster(uids), user=user, run_async=False, **kwargs)
    assert op.state == MergeOperation.PATCHED, op.last_error
    return op


def _restored(env: MergeEnv, record: RestoreRecord) -> PodiumContact:
    return env.alive(record.new_uid or record.contact_uid)


def test_a_restored_duplicate_has_every_field_back_and_at_least_the_merge_consent(
    merge_env: MergeEnv, manager: User, admin_user: User, rescans: list[dict[str, Any]]
) -> None:
    uids = merge_env.maria()
    merge_env.edit("ct_m1", set_attribute=["tier", "gold"])  # stays the richest: the primary
    merge_env.edit("ct_m3", address={"addressLine1": "7 Beach Rd", "city": "Bondi"}, add_tag="surf",
                   locations=[merge_env.alive("ct_m3").location_uids[0], "85926449-1a82-5628-8a7f-6cfbd0887951"])  # fmt: skip
    before = {uid: merge_env.alive(uid) for uid in uids}
    op = _merge(merge_env, manager, uids, accept_losses=True)

    record = restore_contact("ct_m3", user=admin_user, different_people=True, note="her daughter")

    restored = _restored(merge_env, record)
    member = before["ct_m3"]
    assert record.operation_id == op.pk and record.merged_into_uid == "ct_m1"
    if merge_env.native:
        assert (record.method, record.new_uid) == ("unhidden", "")
        assert restored.uid == "ct_m3" and restored.merged_into_uid is None
        # Un-hiding leaves the conversations with the survivor (Podium moved them in the merge).
        assert missing_on(restored, member) == [f"conversation:{c}" for c in member.conversation_uids]
    else:
        assert record.method == "recreated" and record.new_uid == restored.uid != "ct_m3"
        assert missing_on(restored, member) == [], (
            "name, phone, address, locations, tags, attributes, conversations"
        )
        assert sorted(restored.conversation_uids) == sorted(member.conversation_uids), "moved back"
        assert not set(member.conversation_uids) & set(merge_env.alive("ct_m1").conversation_uids)
        assert restored.address is not None and restored.address.city == "Bondi"
        assert {a.label: a.text for a in restored.attributes} == {"loyalty": "gold"}
        assert record.not_restored == []
    assert restored.name == "Garcia, Maria"
    # At least the consent the merge computed: the number is opted out of marketing everywhere.
    assert consent_problems(before.values(), restored) == []
    assert flags(restored).marketing
    assert consent_problems(before.values(), merge_env.alive("ct_m1")) == [], "the survivor keeps it too"
    assert ReviewDecision.objects.filter(decision=ReviewDecision.DIFFERENT_PEOPLE, uid_b__in=["ct_m1", restored.uid],
                                         uid_a__in=["ct_m1", restored.uid]).exists()  # fmt: skip
    indexed = Contact.objects.get(uid=restored.uid)
    assert indexed.is_active and indexed.marketing_opt_out
    event = AuditEvent.objects.get(event_type="contact.restored")
    assert event.actor == "user:root" and event.operation_ref == op.pk
    assert event.payload["method"] == record.method and event.payload["verified"] is True
    assert event.payload["newUid"] == (record.new_uid or None)
    assert rescans and rescans[-1]["contact_uids"] == [restored.uid]
    assert Cluster.objects.get(pk=op.cluster_id).status == Cluster.SUPERSEDED
    stats = merge_env.stats()
    assert stats["purge_attempts"] == 0 and stats["ambiguous_identifier_uses"] == 0


def test_restoring_what_is_not_retired_is_refused_and_says_why(
    merge_env: MergeEnv, manager: User, admin_user: User
) -> None:
    pair = merge_env.pair()
    merge_env.add("ct_lone", phones=["0433 333 333"])
    _merge(merge_env, manager, pair)
    restore_contact(pair[1], user=admin_user)
    with pytest.raises(RestoreError, match="not deleted or merged|already re-created"):
        restore_contact(pair[1], user=admin_user)
    with pytest.raises(RestoreError, match="not merged away by this product"):
        restore_contact("ct_lone", user=admin_user)
    with pytest.raises(RestoreError, match="not merged away by this product"):
        restore_contact(pair[0], user=admin_user)
    assert RestoreRecord.objects.count() == 1


def test_a_restore_whose_consent_does_not_hold_is_reported_and_can_be_repeated(
    merge_env: MergeEnv, manager: User, admin_user: User
) -> None:
    uids = merge_env.maria()
    _merge(merge_env, manager, uids)
    client = merge_env.client()
    # This tenant opts a returning or added number in for marketing; the restore must withdraw it.
    if merge_env.native:
        hidden = merge_env.live("ct_m3")
        assert hidden is not None and hidden.is_hidden
        merge_env.edit("ct_m3", marketing_opt_in={"locationUids": list(hidden.location_uids)})
    else:

        def opt_in_added_numbers(identifier: str, fields: dict[str, Any]) -> Any:
            result = client.real("update_contact", identifier, fields)
            if "phoneNumber" in fields:
                contact = client.real("get_contact", identifier)
                merge_env.edit(contact.uid, marketing_opt_in={"locationUids": list(contact.location_uids)})
            return result

        client.instead["update_contact"] = opt_in_added_numbers
    client.instead["opt_out_phone"] = lambda phone: None  # answered, but nothing happens

    with pytest.raises(RestoreError, match="weaker than the merge required") as caught:
        restore_contact("ct_m3", user=admin_user, client=client)
    assert caught.value.code == "ERR_DEDUP_010"
    record = RestoreRecord.objects.get(contact_uid="ct_m3")
    assert AuditEvent.objects.get(event_type="contact.restored").payload["verified"] is False
    restored = merge_env.live(record.new_uid or record.contact_uid)
    assert restored is not None and not restored.is_hidden and not flags(restored).marketing

    del client.instead["opt_out_phone"]
    if merge_env.native:
        # Un-hidden already: the repeat finds nothing hidden; consent is put right on the live contact.
        with pytest.raises(RestoreError, match="nothing to restore"):
            restore_contact("ct_m3", user=admin_user, client=client)
    else:
        with pytest.raises(RestoreError, match="already re-created"):
            restore_contact("ct_m3", user=admin_user, client=client)


def test_three_restore_rounds_are_a_loop_that_is_surfaced_not_merged_again(
    merge_env: MergeEnv, manager: User, admin_user: User
) -> None:
    pair = merge_env.pair(marketing_opted_in=False)
    primary, duplicate = pair
    for round_no in range(1, 4):
        op = _merge(merge_env, manager, [primary, duplicate])
        record = restore_contact(duplicate, user=admin_user)
        duplicate = record.new_uid or duplicate
        assert flags(merge_env.alive(duplicate)).marketing, round_no
        assert Cluster.objects.get(pk=op.cluster_id).status == Cluster.SUPERSEDED
    assert restore_loop_contacts() == [duplicate]
    loop = AuditEvent.objects.get(event_type="restore.loop_detected")
    assert loop.payload["rounds"] == 3 and loop.payload["code"] == "ERR_DEDUP_013"
    requests_before = merge_env.stats()["requests"]

    merge_env.index()
    with pytest.raises(RestoreLoopError, match="restored after a merge 3 times") as caught:
        approve_cluster(merge_env.cluster([primary, duplicate]), user=manager, run_async=False)
    assert caught.value.code == "ERR_DEDUP_013"
    refused = caught.value.operation
    assert refused is not None and (refused.state, refused.error_code) == (
        MergeOperation.FAILED_PERMANENT,
        "ERR_DEDUP_013",
    )
    cluster = Cluster.objects.get(pk=refused.cluster_id)
    assert (cluster.status, cluster.kind, cluster.auto_merge) == (Cluster.OPEN, Cluster.REVIEW, False)
    assert "restore_loop" in cluster.reasons
    assert merge_env.stats()["requests"] == requests_before and not merge_env.retired(duplicate)


def test_different_people_at_restore_keeps_the_pair_apart(
    merge_env: MergeEnv, manager: User, admin_user: User
) -> None:
    from dedup.detection import detect

    pair = merge_env.pair()
    _merge(merge_env, manager, pair)
    record = restore_contact(pair[1], user=admin_user, different_people=True, note="father and son")
    restored = record.new_uid or pair[1]
    summary = detect(keys=["+61411111111"])
    assert summary.clusters_open == 0
    assert not Cluster.objects.filter(status=Cluster.OPEN, members__contact__uid=restored).exists()


def test_a_channel_whose_transactional_opt_out_cannot_be_set_is_left_off_a_re_created_contact(
    merge_env: MergeEnv, manager: User, admin_user: User
) -> None:
    # The primary had opted the shared number out of transactional messages; the duplicate had not.
    merge_env.add("ct_p1", name="Sam Lee", phones=["0411 111 111"], tags=["a"], address="2 Pitt St",
                  transactional_opt_out=True)  # fmt: skip
    merge_env.add("ct_p2", name="Sam Lee", phones=["+61411111111"], emails=["sam@example.com"])
    before = merge_env.alive("ct_p2")
    _merge(merge_env, manager, ["ct_p1", "ct_p2"])
    record = restore_contact("ct_p2", user=admin_user)
    restored = _restored(merge_env, record)
    assert restored.phones == () and restored.emails == ("sam@example.com",)
    assert record.not_restored == [
        {"field": "phone", "value": "+61••••••111", "reason": "it opted out of transactional messages, which "
         "Podium's published API cannot set"}
    ]  # fmt: skip
    assert record.method == "recreated" and record.new_uid == restored.uid != "ct_p2"
    if merge_env.native:
        # Un-hiding would bring back the number without its opt-out: it stays hidden, re-created instead.
        assert merge_env.retired("ct_p2")
    assert sorted(restored.conversation_uids) == sorted(before.conversation_uids)
    assert consent_problems([before, merge_env.alive("ct_p1")], restored) == []


@pytest.mark.parametrize("failure", ["create_answer_lost", "after_create"])
def test_a_re_creation_that_failed_half_way_continues_with_the_same_contact(
    consolidate_env: MergeEnv, manager: User, admin_user: User, failure: str
) -> None:
    uids = consolidate_env.maria()
    before = consolidate_env.alive("ct_m3")
    _merge(consolidate_env, manager, uids)
    client = consolidate_env.client()
    server = consolidate_env.server
    if failure == "create_answer_lost":

        def drop_the_answer(*args: Any, **kwargs: Any) -> Any:
            server.drop_after_commit_rate = 1.0  # created, then the connection is reset
            try:
                return client.real("create_contact", *args, **kwargs)
            finally:
                server.drop_after_commit_rate = 0.0

        client.instead["create_contact"] = drop_the_answer
    else:

        def fail(*args: Any, **kwargs: Any) -> None:
            raise ServerError("unavailable", http_status=503)

        client.instead["set_attribute"] = fail
    with pytest.raises(RestoreError, match="failed"):
        restore_contact("ct_m3", user=admin_user, client=client)
    client.instead.clear()

    record = restore_contact("ct_m3", user=admin_user, client=client)

    assert len(client.called("create_contact")) == 1, "never created twice"
    named_like_her = [c for c in consolidate_env.state.contacts() if c["name"] == "Garcia, Maria"]
    assert [c["uid"] for c in named_like_her] == [record.new_uid]
    restored = consolidate_env.alive(record.new_uid)
    assert missing_on(restored, before) == []
    assert consent_problems([before], restored) == []
