"""The merge's audit trail: an event for every step with what an auditor needs; tamper-evident; no PII in logs."""

from __future__ import annotations

import logging
import re
from io import StringIO
from typing import TYPE_CHECKING, Any

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import connection, transaction

from dedup.audit import verify_chain
from dedup.merging import approve_cluster, reject_cluster, run_operation
from dedup.models import AuditEvent, MergeOperation
from dedup.restoring import restore_contact
from podium_client import Contact as PodiumContact

if TYPE_CHECKING:
    from tests.merge_helpers import MergeEnv

pytest_plugins = ["tests.merge_helpers"]
pytestmark = pytest.mark.django_db

STEP_KEYS = {"from", "to", "primaryUid", "duplicateUids", "optOutsBefore", "optOutsUnion", "requestIds"}


def _merge_maria(env: MergeEnv, user: User) -> MergeOperation:
    uids = env.maria()
    env.index()
    return approve_cluster(env.cluster(uids), user=user, run_async=False)


def test_every_step_is_an_event_with_actor_state_change_opt_outs_and_request_ids(
    merge_env: MergeEnv, manager: User
) -> None:
    uids = merge_env.maria()
    merge_env.state.patch("ct_m2", {"attributes": [{"label": "birthday", "value": "1991-02-02"}]})
    merge_env.index()
    op = approve_cluster(merge_env.cluster(uids), user=manager, run_async=False)
    events = list(AuditEvent.objects.filter(operation_ref=op.pk).order_by("id"))
    assert [(e.payload["from"], e.payload["to"]) for e in events] == [
        (None, "pending"), ("pending", "merging"), ("merging", "merged"), ("merged", "patched"),
    ]
    for event in events:
        assert event.cluster_ref == op.cluster.cluster_id
        assert event.created_at is not None
        assert set(event.subjects.split()) >= {"ct_m1", "ct_m2", "ct_m3"}
        assert "+61412345678" in event.subjects  # searchable by natural key
        assert event.payload["optOutsUnion"] == {"marketingOptOut": True, "smsOptOut": True, "emailOptOut": False}
        assert event.payload["optOutsBefore"]["ct_m3"]["marketingOptOut"] is True
    assert events[0].actor == "user:alice" and events[0].actor_user_id == manager.pk
    assert all(e.actor.startswith("worker:") for e in events[1:])
    assert all(STEP_KEYS <= set(e.payload) for e in events[1:])
    # Request ids of Podium's answers, step by step: the re-reads, the merge, the PATCH and read-back.
    assert len(events[1].payload["requestIds"]) == 3
    assert len(events[2].payload["requestIds"]) == 1
    assert len(events[3].payload["requestIds"]) == 2
    assert set(op.request_ids) == {r for e in events for r in e.payload.get("requestIds", [])}
    patched = events[3].payload
    assert patched["writtenBack"]["marketingOptOut"] is True and patched["verified"] is True
    conflict = {"field": "attribute:birthday", "kept": "1990-01-01", "dropped": "1991-02-02", "fromUid": "ct_m2"}
    assert patched["conflicts"] == [conflict] and events[0].payload["conflicts"] == [conflict]
    assert verify_chain().ok


def test_decisions_conflicts_failures_and_restores_are_all_on_the_chain(
    merge_env: MergeEnv, manager: User, admin_user: User
) -> None:
    op = _merge_maria(merge_env, manager)
    merge_env.add("ct_r1", phones=["0433 333 333"], tags=["a"])
    merge_env.add("ct_r2", phones=["0433333333"])
    merge_env.index(["ct_r1", "ct_r2"])
    reject_cluster(merge_env.cluster(["ct_r1", "ct_r2"], auto=False), user=manager, note="twins")
    restore_contact("ct_m3", user=admin_user, different_people=True)
    kinds = set(AuditEvent.objects.values_list("event_type", flat=True))
    assert {"merge.planned", "merge.patched", "cluster.rejected", "contact.restored"} <= kinds
    status = verify_chain()
    assert status.ok and status.checked == AuditEvent.objects.count()
    assert AuditEvent.objects.filter(event_type="contact.restored", operation_ref=op.pk).exists()


def _tamper(event: AuditEvent, payload: dict[str, Any]) -> None:
    """Change a stored event behind the model's back (what an attacker with database access would do)."""
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # The append-only trigger must be bypassed deliberately, as a superuser.
            cursor.execute("SET LOCAL session_replication_role = replica")
        cursor.execute(
            "UPDATE dedup_auditevent SET payload = %s WHERE id = %s",
            [__import__("json").dumps(payload), event.pk],
        )


def test_verify_audit_names_the_first_tampered_merge_event(merge_env: MergeEnv, manager: User) -> None:
    op = _merge_maria(merge_env, manager)
    patched = AuditEvent.objects.get(operation_ref=op.pk, event_type="merge.patched")
    later = AuditEvent.objects.get(operation_ref=op.pk, event_type="merge.merged")
    # Pretend the SMS opt-out was never part of the union: the kind of edit that hides a compliance bug.
    forged = dict(patched.payload)
    forged["optOutsUnion"] = {**forged["optOutsUnion"], "smsOptOut": False}
    _tamper(patched, forged)
    forged_earlier = dict(later.payload)
    forged_earlier["requestIds"] = []
    _tamper(later, forged_earlier)

    out = StringIO()
    with pytest.raises(SystemExit) as exited:
        call_command("verify_audit", stdout=out)
    assert exited.value.code == 1
    assert f"BROKEN at event #{later.pk}" in out.getvalue()


def test_logs_never_carry_a_full_phone_or_email(
    merge_env: MergeEnv, manager: User, caplog: pytest.LogCaptureFixture
) -> None:
    uids = merge_env.maria()
    merge_env.index()
    op = approve_cluster(merge_env.cluster(uids), user=manager, run_async=True)
    client = merge_env.client()

    def drop_channels(uid: str, body: dict[str, Any]) -> PodiumContact:
        return client.real_update(uid, {k: v for k, v in body.items() if k != "channels"})

    client.patch_override = drop_channels
    with caplog.at_level(logging.DEBUG):
        op = run_operation(op.pk, client=client)
        client.patch_override = None
        run_operation(op.pk, client=client)
    assert op.state == MergeOperation.COMPLIANCE_FAILED and "02 9876 5432" in op.last_error
    text = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("dedup"))
    assert "COMPLIANCE" in text
    digits = re.sub(r"\D", "", text)
    for number in ("0412345678", "412345678", "0298765432", "298765432"):
        assert number not in digits, f"a phone number reached the log: {number}"
    assert "maria@example.com" not in text
