"""The audit chain is keyed and anchored: each way someone with write access to the database could rewrite
the log is detected, with the key kept out of the database and a checkpoint kept out of the server.

Tampering is done below the ORM, with PostgreSQL's append-only trigger switched off, as an attacker with
the database's owner rights would.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test import override_settings

from dedup import audit, auditchain
from dedup.audit import Checkpoint, CheckpointError, seal_unkeyed_events, take_checkpoint, verify_chain
from dedup.models import AuditEvent
from tests.audit_guard import lift_for_the_flush

pytestmark = pytest.mark.django_db

OTHER_KEY = "an-attackers-guess-at-the-key-0123456789abcdef"


@contextmanager
def tampering() -> Iterator[Any]:
    """A raw cursor with the append-only trigger off (PostgreSQL), as a database owner could."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET session_replication_role = replica")
        try:
            yield cursor
        finally:
            if connection.vendor == "postgresql":
                cursor.execute("SET session_replication_role = DEFAULT")


def sha256_hash(event: AuditEvent, prev_hash: str) -> str:
    """What the unkeyed (version 1) chain would make the hash: anyone can compute it."""
    body = json.dumps(auditchain.content_of(event), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"{prev_hash}|{body}".encode()).hexdigest()


def hmac_hash(event: AuditEvent, prev_hash: str, key: str) -> str:
    """A keyed hash computed with ``key`` the way the product derives its chain key."""
    with override_settings(AUDIT_HMAC_KEY=key):
        event.prev_hash = prev_hash
        return auditchain.event_hash(event)


def rewrite(events: list[AuditEvent], rehash: Any, version: int = auditchain.KEYED) -> None:
    """Store each event's (edited) payload with hashes recomputed by ``rehash(event, prev_hash)``."""
    prev = AuditEvent.objects.filter(id__lt=events[0].pk).order_by("-id").values_list("hash", flat=True).first()
    prev = prev or auditchain.GENESIS
    with tampering() as cursor:
        for event in events:
            event.chain_version = version
            new_hash = rehash(event, prev)
            cursor.execute(
                "UPDATE dedup_auditevent SET payload = %s, prev_hash = %s, hash = %s, chain_version = %s WHERE id = %s",
                [json.dumps(event.payload), prev, new_hash, version, event.pk],
            )
            prev = new_hash


def delete_ids(ids: list[int]) -> None:
    with tampering() as cursor:
        for pk in ids:
            cursor.execute("DELETE FROM dedup_auditevent WHERE id = %s", [pk])


def append_raw(prev_hash: str, hash_: str, version: int, payload: dict[str, Any]) -> None:
    with tampering() as cursor:
        cursor.execute(
            "INSERT INTO dedup_auditevent (created_at, event_type, actor, actor_user_id, cluster_ref, operation_ref,"
            " location_uids, subjects, payload, prev_hash, hash, chain_version)"
            " VALUES (CURRENT_TIMESTAMP, 'merge.patched', 'user:alice', NULL, '', NULL, '[]', '', %s, %s, %s, %s)",
            [json.dumps(payload), prev_hash, hash_, version],
        )


@pytest.fixture
def log() -> list[AuditEvent]:
    """Six events, as the product writes them."""
    for i in range(6):
        audit.record("merge.patched", actor="user:alice", contact_uids=[f"ct_{i}"],
                     payload={"optOutsUnion": {"smsOptOut": True}, "n": i})
    return list(AuditEvent.objects.order_by("id"))


def verify_command(*args: str) -> tuple[int, str]:
    out = StringIO()
    try:
        call_command("verify_audit", *args, stdout=out)
    except SystemExit as exited:
        return int(exited.code or 0), out.getvalue()
    return 0, out.getvalue()


def test_events_are_keyed_with_the_key_from_the_environment(log: list[AuditEvent]) -> None:
    first = log[0]
    assert first.chain_version == auditchain.KEYED
    assert first.hash != sha256_hash(first, auditchain.GENESIS)
    derived = hmac.new(b"k" * 40, b"dedup audit chain", hashlib.sha256).digest()
    with override_settings(AUDIT_HMAC_KEY="k" * 40):
        body = json.dumps(auditchain.content_of(first), sort_keys=True, separators=(",", ":"), default=str)
        expected = hmac.new(derived, f"v2|{first.prev_hash}|{body}".encode(), hashlib.sha256).hexdigest()
        assert auditchain.event_hash(first) == expected
    assert verify_chain().ok
    # A deployment started with another key cannot vouch for the log, and says why.
    with override_settings(AUDIT_HMAC_KEY=OTHER_KEY):
        status = verify_chain()
    assert not status.ok and status.broken_event_id == first.pk and "AUDIT_HMAC_KEY" in status.problem


def test_an_edit_with_every_later_hash_recomputed_is_detected_without_the_key(log: list[AuditEvent]) -> None:
    edited = log[2:]
    edited[0].payload = {**edited[0].payload, "optOutsUnion": {"smsOptOut": False}}
    # The old, unkeyed recipe ...
    rewrite(edited, sha256_hash)
    status = verify_chain()
    assert not status.ok and status.broken_event_id == log[2].pk and "keyed hash" in status.problem
    # ... and HMAC with a guessed key both fail at the edited event.
    rewrite(edited, lambda e, prev: hmac_hash(e, prev, OTHER_KEY))
    status = verify_chain()
    assert not status.ok and status.broken_event_id == log[2].pk
    code, out = verify_command()
    assert code == 1 and f"BROKEN at event #{log[2].pk}" in out


def test_downgrading_events_to_the_unkeyed_recipe_is_detected(log: list[AuditEvent]) -> None:
    # Marking the rewritten events as legacy (version 1) so SHA-256 would be accepted for them:
    rewrite(log[2:], sha256_hash, version=auditchain.UNKEYED)
    status = verify_chain()
    assert not status.ok and status.broken_event_id == log[2].pk and "unkeyed event after keyed" in status.problem
    # ... and the whole log, so no keyed event precedes them: nothing seals them.
    rewrite(log, sha256_hash, version=auditchain.UNKEYED)
    status = verify_chain()
    assert not status.ok and "no keyed event seals" in status.problem


def test_a_forged_event_appended_at_the_end_is_detected(log: list[AuditEvent]) -> None:
    head = log[-1]
    forged = AuditEvent(created_at=head.created_at, event_type="merge.patched", actor="user:alice", location_uids=[],
                        subjects="", payload={"forged": True}, chain_version=auditchain.KEYED)
    append_raw(head.hash, hmac_hash(forged, head.hash, OTHER_KEY), auditchain.KEYED, {"forged": True})
    status = verify_chain()
    forged_id = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first()
    assert not status.ok and status.broken_event_id == forged_id


def test_a_forged_unkeyed_event_appended_at_the_end_is_detected(log: list[AuditEvent]) -> None:
    head = log[-1]
    append_raw(head.hash, "f" * 64, auditchain.UNKEYED, {"forged": True})
    status = verify_chain()
    assert not status.ok and "unkeyed event after keyed" in status.problem


def test_deleting_the_last_events_is_detected_by_a_checkpoint(log: list[AuditEvent], tmp_path: Path) -> None:
    kept = tmp_path / "checkpoint.json"
    code, out = verify_command("--export-checkpoint", str(kept))
    assert code == 0 and "checkpoint written" in out
    checkpoint = Checkpoint.from_json(kept.read_text())
    assert checkpoint.count == AuditEvent.objects.count() == len(log) + 1  # its own export is recorded
    tail = list(AuditEvent.objects.order_by("-id").values_list("id", flat=True)[:2])
    delete_ids(tail)
    # The remaining chain links up, so without the anchor a shortened log looks whole ...
    assert verify_chain().ok
    # ... the checkpoint shows it is not.
    code, out = verify_command("--checkpoint", str(kept))
    assert code == 1
    assert f"the checkpoint's event #{checkpoint.last_id} is gone" in out and "truncated" in out


def test_events_after_a_checkpoint_verify_against_it(log: list[AuditEvent], tmp_path: Path) -> None:
    kept = tmp_path / "checkpoint.json"
    assert verify_command("--export-checkpoint", str(kept))[0] == 0
    audit.record("cluster.rejected", actor="user:bob")
    code, out = verify_command("--checkpoint", str(kept))
    assert code == 0 and "holds" in out


def test_a_rewrite_with_the_key_itself_is_detected_by_a_checkpoint(log: list[AuditEvent]) -> None:
    checkpoint = take_checkpoint()
    # Someone holding the key recomputes a flawless chain after an edit: only the anchor can tell.
    edited = log[1:]
    edited[0].payload = {"rewritten": True}
    rewrite(edited, lambda e, prev: hmac_hash(e, prev, settings.AUDIT_HMAC_KEY))
    assert verify_chain().ok
    status = verify_chain(checkpoint=checkpoint)
    assert not status.ok and status.broken_event_id == log[-1].pk and "rewritten" in status.problem


def test_deleting_events_before_the_checkpoint_and_relinking_is_detected(log: list[AuditEvent]) -> None:
    checkpoint = take_checkpoint()
    delete_ids([log[0].pk])
    # Relinking the rest from the genesis with the key: the count up to the checkpoint's event differs.
    rewrite(log[1:], lambda e, prev: hmac_hash(e, prev, settings.AUDIT_HMAC_KEY))
    status = verify_chain(checkpoint=checkpoint)
    assert not status.ok


def test_an_empty_log_never_verifies(log: list[AuditEvent], tmp_path: Path) -> None:
    kept = tmp_path / "checkpoint.json"
    kept.write_text(take_checkpoint().to_json())
    delete_ids([e.pk for e in log])
    status = verify_chain()
    assert not status.ok and "the log is empty" in status.describe()
    code, out = verify_command()
    assert code == 1 and "intact" not in out
    code, out = verify_command("--checkpoint", str(kept))
    assert code == 1 and "BROKEN" in out


def test_a_changed_or_foreign_checkpoint_file_is_refused(log: list[AuditEvent], tmp_path: Path) -> None:
    checkpoint = take_checkpoint()
    document = json.loads(checkpoint.to_json())
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps({**document, "count": 2, "last_id": log[1].pk, "last_hash": log[1].hash}))
    with pytest.raises(CheckpointError, match="edited"):
        Checkpoint.from_json(edited.read_text())
    code, out = verify_command("--checkpoint", str(edited))
    assert code == 1 and "NOT VERIFIED" in out and "edited" in out
    with override_settings(AUDIT_HMAC_KEY=OTHER_KEY):
        foreign = take_checkpoint().to_json()
    with pytest.raises(CheckpointError, match="another audit key"):
        Checkpoint.from_json(foreign)
    with pytest.raises(CheckpointError, match="not an audit checkpoint"):
        Checkpoint.from_json("{}")
    with pytest.raises(CheckpointError, match="not an audit checkpoint"):
        Checkpoint.from_json("not json")


def test_a_checkpoint_holds_no_secret(log: list[AuditEvent]) -> None:
    text = take_checkpoint().to_json()
    assert "dev-only-audit-key" not in text
    assert set(json.loads(text)) == {"format", "last_id", "last_hash", "count", "created_at", "key_id", "signature"}


def _unkeyed_log(n: int) -> list[AuditEvent]:
    """Events as the product wrote them before keying: SHA-256, version 1."""
    prev = auditchain.GENESIS
    events = []
    for i in range(n):
        event = AuditEvent(event_type="scan.started", actor="system", location_uids=[], subjects="",
                           payload={"n": i}, prev_hash=prev, chain_version=auditchain.UNKEYED)
        event.hash = sha256_hash(event, prev)
        event.save()
        events.append(event)
        prev = event.hash
    return events


def test_events_written_before_keying_are_sealed_and_then_protected() -> None:
    legacy = _unkeyed_log(4)
    status = verify_chain()
    assert not status.ok and "no keyed event seals" in status.problem  # an unsealed unkeyed log proves nothing
    seal_id = seal_unkeyed_events(AuditEvent)
    assert seal_id is not None
    seal = AuditEvent.objects.get(pk=seal_id)
    assert seal.event_type == "audit.chain_keyed" and seal.prev_hash == legacy[-1].hash
    assert seal.payload["unkeyedEvents"] == 4
    assert seal_unkeyed_events(AuditEvent) is None  # once only
    audit.record("merge.patched", actor="user:alice")
    status = verify_chain()
    assert status.ok and status.checked == 6
    # Editing an unkeyed event and recomputing every unkeyed hash no longer goes unnoticed: the seal covers them.
    legacy[1].payload = {"n": "edited"}
    rewrite(legacy[1:], sha256_hash, version=auditchain.UNKEYED)
    status = verify_chain()
    assert not status.ok and status.broken_event_id == seal.pk


def test_verifying_a_realistic_log_is_quick_enough(log: list[AuditEvent]) -> None:
    import time

    for i in range(3000):
        audit.record("merge.patched", actor="worker:w1", contact_uids=[f"ct_{i}", f"ct_{i + 1}"],
                     natural_keys=["+61412345678"], payload={"optOutsUnion": {"smsOptOut": True}, "step": i})
    started = time.perf_counter()
    status = verify_chain()
    elapsed = time.perf_counter() - started
    assert status.ok and status.checked == 3006
    assert elapsed < 10, elapsed


@pytest.fixture
def audit_table_flushable() -> Iterator[None]:
    """Let the test database be emptied after a transactional test on PostgreSQL despite the TRUNCATE guard."""
    yield
    lift_for_the_flush()


@pytest.mark.django_db(transaction=True)
def test_the_keying_migration_seals_a_log_written_before_it(audit_table_flushable: None) -> None:
    executor = MigrationExecutor(connection)
    graph = executor.loader.graph
    keying = next(node for node in graph.leaf_nodes() + list(graph.nodes)
                  if node[0] == "dedup" and node[1].endswith("_keyed_audit_chain_and_axes_lockout"))
    before = sorted(graph.node_map[keying].parents)[0].key
    leaves = graph.leaf_nodes()
    executor.migrate([before])
    # Events as the product wrote them then, through the model as it was then.
    old_event = executor.loader.project_state([before]).apps.get_model("dedup", "AuditEvent")
    prev = auditchain.GENESIS
    for i in range(3):
        event = old_event(event_type="scan.started", actor="system", location_uids=[], subjects="",
                          payload={"n": i}, prev_hash=prev)
        body = json.dumps({
            "created_at": event.created_at.astimezone(UTC).isoformat(timespec="microseconds"),
            "event_type": event.event_type, "actor": event.actor, "actor_user_id": None, "cluster_ref": "",
            "operation_ref": None, "location_uids": [], "subjects": "", "payload": event.payload,
        }, sort_keys=True, separators=(",", ":"), default=str)
        event.hash = hashlib.sha256(f"{prev}|{body}".encode()).hexdigest()
        event.save()
        prev = event.hash
    old_hashes = list(old_event.objects.order_by("id").values_list("hash", flat=True))

    MigrationExecutor(connection).migrate(leaves)

    events = list(AuditEvent.objects.order_by("id"))
    assert [e.chain_version for e in events] == [1, 1, 1, 2]
    assert [e.hash for e in events[:3]] == old_hashes  # exports taken before still match
    assert events[3].event_type == "audit.chain_keyed" and events[3].prev_hash == old_hashes[-1]
    audit.record("merge.patched", actor="user:alice")
    status = verify_chain()
    assert status.ok and status.checked == 5
