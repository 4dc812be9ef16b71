"""The merge's audit trail, for each strategy: an event for every step with what an auditor needs; the
decisions, refusals, conflicts and restores on the same tamper-evident chain; no PII in the logs."""

from __future__ import annotations

import json
import logging
import re
from io import StringIO
from typing import TYPE_CHECKING, Any

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import connection, transaction

from dedup.audit import verify_chain
from dedup.merge import approve_cluster, merge_all_auto, reject_cluster, run_operation
from dedup.merge.restoring import restore_contact
from dedup.models import AuditEvent, MergeOperation
from podium_client import ServerError

if TYPE_CHECKING:
    from tests.merge_helpers import MergeEnv

pytest_plugins = ["tests.merge_helpers"]
pytestmark = pytest.mark.django_db

STEP_KEYS = {
    "from",
    "to",
    "strategy",
    "primaryUid",
    "duplicateUids",
    "optOutsBefore",
    "optOutsUnion",
    "requests",
}


def test_every_step_is_an_event_with_actor_state_change_consent_and_requests(
    merge_env: MergeEnv, manager: User
) -> None:
    uids = merge_env.maria()
    merge_env.index()
    op = approve_cluster(merge_env.cluster(uids), user=manager, run_async=False)
    assert op.state == MergeOperation.PATCHED
    events = list(AuditEvent.objects.filter(operation_ref=op.pk).order_by("id"))
    assert [(e.payload["from"], e.payload["to"]) for e in events] == [
        (None, "pending"), ("pending", "merging"), ("merging", "merged"), ("merged", "patched"),
    ]  # fmt: skip
    for event in events:
        assert event.cluster_ref == op.cluster.cluster_id
        assert set(event.subjects.split()) >= {"ct_m1", "ct_m2", "ct_m3"}
        assert "+61412345678" in event.subjects, "searchable by natural key"
        assert event.payload["optOutsUnion"] == {
            "marketingOptOut": True,
            "smsOptOut": False,
            "emailOptOut": False,
        }
        assert event.payload["optOutsBefore"]["ct_m3"]["marketingOptOut"] is True
        assert event.payload["strategy"] == merge_env.strategy
        assert event.location_uids == sorted(
            {loc for uid in uids for loc in merge_env.alive("ct_m1").location_uids}
        )
    assert events[0].actor == "user:alice" and events[0].actor_user_id == manager.pk
    assert all(e.actor.startswith("worker:") for e in events[1:])
    assert all(STEP_KEYS <= set(e.payload) for e in events[1:])
    # Requests counted step by step; the last event carries the operation's total.
    counts = [e.payload["requests"] for e in events[1:]]
    assert counts == sorted(counts) and counts[-1] == op.request_count == merge_env.stats()["requests"]
    planned = events[0].payload
    assert planned["writeBack"]["optOutPhones"] == ["+61412345678"]
    assert planned["writeBack"]["tags"] == [
        {"uid": planned["writeBack"]["tags"][0]["uid"], "label": "Newsletter"}
    ]
    written = events[2].payload if not merge_env.native else events[3].payload
    assert (
        written["verified"] is True
        and {"call": "campaigns/opt_out", "phone": "+61••••••678"} in written["writtenBack"]
    )
    assert verify_chain().ok


def test_decisions_refusals_conflicts_failures_and_restores_are_all_on_the_chain(
    merge_env: MergeEnv, manager: User, admin_user: User
) -> None:
    uids = merge_env.maria()
    rejected = merge_env.pair("ct_r", number="0433 333 333")
    lossy = merge_env.pair("ct_l", number="0444 444 444", address="9 Other Rd")
    merge_env.index()
    op = approve_cluster(merge_env.cluster(uids), user=manager, run_async=False)
    reject_cluster(merge_env.cluster(rejected, auto=False), user=manager, note="twins")
    merge_env.cluster(lossy)
    merge_all_auto(actor="nightly")
    restore_contact("ct_m3", user=admin_user, different_people=True)

    kinds = set(AuditEvent.objects.values_list("event_type", flat=True))
    assert {
        "merge.planned",
        "merge.patched",
        "cluster.rejected",
        "merge.refused",
        "merge.batch",
        "contact.restored",
    } <= kinds
    refused = AuditEvent.objects.get(event_type="merge.refused")
    assert refused.payload["losses"][0]["value"] == "9 Other Rd" and refused.actor == "worker:nightly"
    assert AuditEvent.objects.filter(
        event_type="contact.restored", operation_ref=op.pk, actor="user:root"
    ).exists()
    status = verify_chain()
    assert status.ok and status.checked == AuditEvent.objects.count()


def _tamper(event: AuditEvent, payload: dict[str, Any]) -> None:
    """Change a stored event behind the model's back (what an attacker with database access would do)."""
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # The append-only trigger must be bypassed deliberately, as a superuser.
            cursor.execute("SET LOCAL session_replication_role = replica")
        cursor.execute(
            "UPDATE dedup_auditevent SET payload = %s WHERE id = %s", [json.dumps(payload), event.pk]
        )


def test_verify_audit_names_the_first_tampered_merge_event(merge_env: MergeEnv, manager: User) -> None:
    uids = merge_env.maria()
    merge_env.index()
    op = approve_cluster(merge_env.cluster(uids), user=manager, run_async=False)
    patched = AuditEvent.objects.get(operation_ref=op.pk, event_type="merge.patched")
    merged = AuditEvent.objects.get(operation_ref=op.pk, event_type="merge.merged")
    # Pretend the marketing opt-out was never part of the union: the kind of edit that hides a compliance bug.
    _tamper(
        patched,
        {**patched.payload, "optOutsUnion": {**patched.payload["optOutsUnion"], "marketingOptOut": False}},
    )
    _tamper(merged, {**merged.payload, "requests": 0})

    out = StringIO()
    with pytest.raises(SystemExit) as exited:
        call_command("verify_audit", stdout=out)
    assert exited.value.code == 1
    assert f"BROKEN at event #{merged.pk}" in out.getvalue()


def test_logs_never_carry_a_full_phone_or_email(
    merge_env: MergeEnv, manager: User, admin_user: User, caplog: pytest.LogCaptureFixture
) -> None:
    uids = merge_env.maria()
    merge_env.index()
    op = approve_cluster(merge_env.cluster(uids), user=manager, run_async=True)
    client = merge_env.client()
    client.instead["opt_out_phone"] = lambda phone: None  # the consent does not stick: a compliance incident

    def fail_once(*args: Any) -> None:
        del client.before["get_contact"]
        raise ServerError("unavailable", http_status=503)

    with caplog.at_level(logging.DEBUG):
        op = run_operation(op.pk, client=client)
        assert op.state == MergeOperation.COMPLIANCE_FAILED and "+61••••••678" in op.last_error
        del client.instead["opt_out_phone"]
        client.before["get_contact"] = fail_once  # Podium unavailable: a deferral
        op = run_operation(op.pk, client=client)
        op = run_operation(op.pk, client=client)
        restore_contact("ct_m2", user=admin_user, client=client)
    assert op.state == MergeOperation.PATCHED, op.last_error
    text = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith(("dedup", "podium_client")))
    assert "COMPLIANCE" in text
    digits = re.sub(r"\D", "", text)
    for number in ("0412345678", "412345678"):
        assert number not in digits, f"a phone number reached the log: {number}"
    assert "maria.412345678@example.com" not in text and "@example.com" not in text
