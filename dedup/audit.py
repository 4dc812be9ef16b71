"""Appending to and verifying the hash-chained audit log.

Every event's hash covers the previous event's hash, so the chain can only be extended. Appends are
serialized (an advisory lock on PostgreSQL; SQLite's write lock does it there) so two workers never
link to the same predecessor.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import connection, transaction
from django.utils import timezone

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
        )
        event.hash = event.compute_hash()
        event.save()
    return event


@dataclass(frozen=True)
class ChainStatus:
    """The result of verifying the chain: ``ok``, how many events were checked, the first broken link."""

    ok: bool
    checked: int
    broken_event_id: int | None = None
    problem: str = ""

    def describe(self) -> str:
        if self.ok:
            return f"audit chain intact: {self.checked} events verified"
        return f"audit chain BROKEN at event #{self.broken_event_id}: {self.problem}"


def verify_chain(batch_size: int = 5000) -> ChainStatus:
    """Walk the whole chain in order and name the first event whose link or content does not hold."""
    expected_prev = AuditEvent.GENESIS
    checked = 0
    last_id = 0
    while True:
        batch = list(AuditEvent.objects.filter(id__gt=last_id).order_by("id")[:batch_size])
        if not batch:
            return ChainStatus(ok=True, checked=checked)
        for event in batch:
            if event.prev_hash != expected_prev:
                return ChainStatus(False, checked, event.pk, "its predecessor is missing or was changed")
            if event.compute_hash() != event.hash:
                return ChainStatus(False, checked, event.pk, "its content does not match its hash")
            expected_prev = event.hash
            checked += 1
            last_id = event.pk
