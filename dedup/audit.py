"""Appending to and verifying the keyed, hash-chained audit log, and checkpoints of its head.

Every event's hash covers the previous event's hash and is keyed with ``AUDIT_HMAC_KEY`` (see
``dedup.auditchain``), so the chain can only be extended, and only by the product. Appends are
serialized (an advisory lock on PostgreSQL; SQLite's write lock does it there) so two workers never
link to the same predecessor.

The chain alone cannot show that events were removed from its end, nor that the key was used to rewrite
it. A *checkpoint* anchors the head outside the database: the last event's id and hash and the number of
events, signed; an auditor exports one (``verify_audit --export-checkpoint FILE``) and keeps it, and
``verify_audit --checkpoint FILE`` later fails if that event is gone or changed or the log is shorter.
An empty log never verifies: every deployment records its first user's creation.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import connection, transaction
from django.utils import timezone

from dedup import auditchain
from dedup.models import AuditEvent

# An arbitrary constant naming the audit chain's advisory lock.
_AUDIT_LOCK_ID = 0x0AD17


def actor_for(user: AbstractBaseUser | AnonymousUser | None, worker: str | None = None) -> tuple[str, int | None]:
    """The actor string and user id recorded on an event: ``user:NAME``, ``worker:NAME`` or ``system``."""
    if user is not None and getattr(user, "is_authenticated", False):
        return f"user:{user.get_username()}", user.pk
    if worker:
        return f"worker:{worker}", None
    return "system", None


def _json_ready(value: Any) -> Any:
    # Store exactly what the hash covers: the JSON round-trip turns tuples into lists, Decimals and
    # datetimes into strings, as the database will return them.
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def record(
    event_type: str,
    *,
    actor: str = "system",
    actor_user_id: int | None = None,
    cluster_ref: str = "",
    operation_ref: int | None = None,
    location_uids: Iterable[str] = (),
    contact_uids: Iterable[str] = (),
    natural_keys: Iterable[str] = (),
    payload: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one event to the chain and return it. Runs in (or opens) a transaction."""
    subjects = sorted({*contact_uids, *natural_keys})
    # No savepoint inside a caller's transaction: an event that fails to append must fail the
    # caller's whole step anyway, and the savepoint's two round trips are most of an append's cost.
    with transaction.atomic(savepoint=False):
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_AUDIT_LOCK_ID])
        last = AuditEvent.objects.order_by("-id").values_list("hash", flat=True).first()
        event = AuditEvent(
            created_at=timezone.now(),
            event_type=event_type,
            actor=actor,
            actor_user_id=actor_user_id,
            cluster_ref=cluster_ref,
            operation_ref=operation_ref,
            location_uids=sorted(set(location_uids)),
            subjects=f" {' '.join(subjects)} " if subjects else "",
            payload=_json_ready(payload or {}),
            prev_hash=last or AuditEvent.GENESIS,
            chain_version=auditchain.CURRENT_VERSION,
        )
        event.hash = event.compute_hash()
        event.save()
    return event


@dataclass(frozen=True)
class PendingEvent:
    """One event for ``record_many``: the arguments ``record`` takes."""

    event_type: str
    actor: str = "system"
    actor_user_id: int | None = None
    cluster_ref: str = ""
    operation_ref: int | None = None
    location_uids: tuple[str, ...] = ()
    contact_uids: tuple[str, ...] = ()
    natural_keys: tuple[str, ...] = ()
    payload: dict[str, Any] | None = None


# Events inserted per statement by ``record_many`` (far below SQLite's parameter limit at 11 columns).
_BULK_EVENTS = 80


def record_many(events: Iterable[PendingEvent]) -> list[AuditEvent]:
    """Append many events to the chain at once, in order; the same links and hashes ``record`` makes.

    The chain's head is read once under the lock and each event links to the one before it, so a
    thousand superseded clusters cost a few inserts instead of a thousand round trips of ``record``.
    """
    pending = list(events)
    if not pending:
        return []
    with transaction.atomic(savepoint=False):
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_AUDIT_LOCK_ID])
        prev = AuditEvent.objects.order_by("-id").values_list("hash", flat=True).first() or AuditEvent.GENESIS
        built: list[AuditEvent] = []
        for item in pending:
            subjects = sorted({*item.contact_uids, *item.natural_keys})
            event = AuditEvent(
                created_at=timezone.now(),
                event_type=item.event_type,
                actor=item.actor,
                actor_user_id=item.actor_user_id,
                cluster_ref=item.cluster_ref,
                operation_ref=item.operation_ref,
                location_uids=sorted(set(item.location_uids)),
                subjects=f" {' '.join(subjects)} " if subjects else "",
                payload=_json_ready(item.payload or {}),
                prev_hash=prev,
                chain_version=auditchain.CURRENT_VERSION,
            )
            event.hash = prev = event.compute_hash()
            built.append(event)
        # One statement per slice, rows in chain order: ids follow the order of the VALUES list, so
        # walking the chain by id meets each event right after its predecessor.
        for start in range(0, len(built), _BULK_EVENTS):
            AuditEvent.objects.bulk_create(built[start : start + _BULK_EVENTS])
    return built


@dataclass(frozen=True)
class ChainStatus:
    """The result of verifying the chain: ``ok``, how many events were checked, the first broken link."""

    ok: bool
    checked: int
    broken_event_id: int | None = None
    problem: str = ""
    checkpoint_note: str = ""

    def describe(self) -> str:
        if self.ok:
            return f"audit chain intact: {self.checked} events verified{self.checkpoint_note}"
        if self.broken_event_id is None:
            return f"audit chain BROKEN: {self.problem}"
        return f"audit chain BROKEN at event #{self.broken_event_id}: {self.problem}"


class CheckpointError(ValueError):
    """A checkpoint file cannot be read, or its signature does not hold."""


@dataclass(frozen=True)
class Checkpoint:
    """The head of the chain at one moment, signed with the checkpoint key, to be kept outside the database."""

    last_id: int
    last_hash: str
    count: int
    created_at: str
    key_id: str
    signature: str = ""

    FORMAT = "dedup-audit-checkpoint/1"

    def _signed_part(self) -> dict[str, Any]:
        document = asdict(self)
        document.pop("signature")
        document["format"] = self.FORMAT
        return document

    def signed(self) -> Checkpoint:
        return Checkpoint(**{**asdict(self), "signature": auditchain.sign(self._signed_part())})

    def to_json(self) -> str:
        return json.dumps({**self._signed_part(), "signature": self.signature}, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Checkpoint:
        """Read a checkpoint file; ``CheckpointError`` if it is not one or its signature does not hold."""
        try:
            document = json.loads(text)
            if not isinstance(document, dict) or document.get("format") != cls.FORMAT:
                raise ValueError("not a checkpoint")
            checkpoint = cls(
                last_id=int(document["last_id"]),
                last_hash=str(document["last_hash"]),
                count=int(document["count"]),
                created_at=str(document["created_at"]),
                key_id=str(document["key_id"]),
                signature=str(document["signature"]),
            )
        except (ValueError, KeyError, TypeError):
            raise CheckpointError(f"not an audit checkpoint file (expected {cls.FORMAT} JSON)") from None
        if not auditchain.same(auditchain.sign(checkpoint._signed_part()), checkpoint.signature):
            if checkpoint.key_id != auditchain.key_id():
                raise CheckpointError(
                    f"the checkpoint was signed with another audit key (key id {checkpoint.key_id}; this "
                    f"deployment's is {auditchain.key_id()}): set the AUDIT_HMAC_KEY the log was written with"
                )
            raise CheckpointError("the checkpoint's signature does not match its content: the file was edited")
        return checkpoint

    def read_note(self) -> str:
        return f"; checkpoint of {self.created_at} (event #{self.last_id}, {self.count} events) holds"


def take_checkpoint() -> Checkpoint:
    """A signed checkpoint of the chain's current head. Verify the chain first: a checkpoint vouches for it."""
    with transaction.atomic():
        head = AuditEvent.objects.order_by("-id").values_list("id", "hash").first()
        if head is None:
            raise CheckpointError("the audit log is empty: there is no head to checkpoint")
        last_id, last_hash = head
        count = AuditEvent.objects.filter(id__lte=last_id).count()
    return Checkpoint(
        last_id=last_id, last_hash=last_hash, count=count, created_at=timezone.now().isoformat(timespec="seconds"),
        key_id=auditchain.key_id(),
    ).signed()


def write_checkpoint(path: Path) -> Checkpoint:
    """Take a checkpoint and write it to ``path`` (replacing the file whole, never half-written)."""
    checkpoint = take_checkpoint()
    partial = path.with_name(path.name + ".partial")
    partial.write_text(checkpoint.to_json(), encoding="utf-8")
    partial.replace(path)
    return checkpoint


def verify_chain(batch_size: int = 5000, checkpoint: Checkpoint | None = None) -> ChainStatus:
    """Walk the whole chain in order and name the first event whose link, version or keyed hash does not hold.

    Also fails when the log is empty, when unkeyed (legacy) events are not sealed by a keyed one or follow
    one, and, given a ``checkpoint``, when its event is gone or changed or fewer events lead up to it.
    """
    expected_prev = AuditEvent.GENESIS
    checked = 0
    last_id = 0
    keyed_seen = False
    checkpoint_held = False
    while True:
        batch = list(AuditEvent.objects.filter(id__gt=last_id).order_by("id")[:batch_size])
        if not batch:
            break
        for event in batch:
            if event.prev_hash != expected_prev:
                return ChainStatus(False, checked, event.pk, "its predecessor is missing or was changed")
            if event.chain_version == auditchain.UNKEYED and keyed_seen:
                return ChainStatus(False, checked, event.pk, "an unkeyed event after keyed ones: forged")
            if event.chain_version not in (auditchain.UNKEYED, auditchain.KEYED):
                return ChainStatus(False, checked, event.pk, f"unknown chain version {event.chain_version}")
            if not auditchain.same(event.compute_hash(), event.hash):
                if event.chain_version == auditchain.KEYED:
                    return ChainStatus(
                        False, checked, event.pk,
                        "its keyed hash does not match: the event was edited or forged (or AUDIT_HMAC_KEY is "
                        "not the key the log was written with)",
                    )
                return ChainStatus(False, checked, event.pk, "its content does not match its hash")
            keyed_seen = keyed_seen or event.chain_version == auditchain.KEYED
            checked += 1
            if checkpoint is not None and event.pk == checkpoint.last_id:
                if not auditchain.same(event.hash, checkpoint.last_hash):
                    return ChainStatus(False, checked, event.pk,
                                       "it differs from the checkpoint: the log was rewritten up to here")
                if checked != checkpoint.count:
                    return ChainStatus(False, checked, event.pk,
                                       f"{checked} events lead up to it, the checkpoint counted {checkpoint.count}")
                checkpoint_held = True
            expected_prev = event.hash
            last_id = event.pk
    if checked == 0:
        return ChainStatus(False, 0, None, "the log is empty: a deployment's log never is; it was emptied, or "
                                           "this is the wrong database")
    if not keyed_seen:
        return ChainStatus(False, checked, last_id, "the log ends in unkeyed events that no keyed event seals: "
                                                    "forged, or the keyed events after them were removed")
    if checkpoint is not None and not checkpoint_held:
        return ChainStatus(
            False, checked, None,
            f"the checkpoint's event #{checkpoint.last_id} is gone ({checked} events remain, the checkpoint "
            f"counted {checkpoint.count}): the log was truncated",
        )
    return ChainStatus(True, checked, checkpoint_note=checkpoint.read_note() if checkpoint else "")


def seal_unkeyed_events(event_model: Any) -> int | None:
    """Append one keyed event after a log that ends in unkeyed (version 1) events; return its id.

    Run once by the migration that introduced keying, with its historical model. The seal's keyed hash
    covers the last unkeyed hash, which covers every unkeyed event before it, so none of them can be
    changed afterwards without the key. A log that is empty or already ends keyed is left alone.
    """
    last = event_model.objects.order_by("-id").first()
    if last is None or last.chain_version != auditchain.UNKEYED:
        return None
    unkeyed = event_model.objects.filter(chain_version=auditchain.UNKEYED).count()
    seal = event_model(
        created_at=timezone.now(),
        event_type="audit.chain_keyed",
        actor="system",
        actor_user_id=None,
        cluster_ref="",
        operation_ref=None,
        location_uids=[],
        subjects="",
        payload={"unkeyedEvents": unkeyed, "unkeyedHead": last.hash, "keyId": auditchain.key_id()},
        prev_hash=last.hash,
        chain_version=auditchain.KEYED,
    )
    seal.hash = auditchain.event_hash(seal)
    seal.save()
    return int(seal.pk)
