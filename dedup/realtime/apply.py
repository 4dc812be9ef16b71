"""Applying stored webhook deliveries to the index, then re-detecting the natural keys they touched.

``drain()`` (the django-q2 task the receiver enqueues) takes the stored deliveries in batches, oldest
first. One batch is one transaction, and drains never overlap (a PostgreSQL advisory lock; SQLite's
IMMEDIATE transactions), so each delivery is applied at most once: its row leaves ``received`` in the
same transaction that writes the index. Per contact the rule is *newest wins*:

* a delivery carrying the contact after the change (``created``, ``updated``, ``unchanged``, a soft
  delete or merge with ``data.after``) is indexed when its ``updatedAt`` is newer than what the index
  holds (and than the contact's deletion, if the index has it deleted); a contact the index does not
  hold yet is created;
* a deletion carrying only ``data.before`` marks the contact deleted at the event's time, unless the
  index already holds a newer version; an unknown contact is indexed as deleted, so an older delivery
  arriving later cannot bring it back;
* anything older is ``stale``: kept as a row, applied to nothing.

After the batch commits, ``dedup.detection.detect`` runs on the touched contacts and on every natural key
they held before or hold now (a contact that left a key leaves its cluster), so the review queue shows
the change within seconds. A detection that fails leaves the deliveries ``applied``; ``sweep()`` (every
minute) re-detects them, drains deliveries whose enqueue was lost, and prunes old rows.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from django.db import connection, transaction
from django.dispatch import receiver
from django.utils import timezone
from django_q.signals import post_spawn

from dedup.detection import detect
from dedup.indexing import IndexWriter, PreparedContact, prepare_contact, unstorable_reason
from dedup.models import Contact, ContactKey, Policy, WebhookDelivery, WebhookDrainFlag, WebhookRefusal
from podium_client.errors import MalformedResponse
from podium_client.types import CONTACT_EVENT_TYPES, WebhookEvent, format_timestamp
from podium_client.types import Contact as PodiumContact

logger = logging.getLogger("dedup.webhooks")

#: Deliveries applied in one transaction (and re-detected together).
BATCH = 500
#: A delivery still ``received`` this long after it arrived lost its enqueue: the sweep drains it.
STUCK_AFTER = timedelta(seconds=30)
#: Rows of settled deliveries are kept this long (Podium retries for about 8 hours; repeats within
#: the window are recognised by their key).
KEEP_SETTLED = timedelta(days=7)
KEEP_FAILED = timedelta(days=30)
SWEEP_SCHEDULE_NAME = "dedup: webhook sweep"
ACTOR = "system:webhook"

# An arbitrary constant naming the advisory lock that serializes drains.
_DRAIN_LOCK = 0xDE7E11
_DELETION_EVENTS = frozenset({"contact.deleted", "contact.merged"})


@dataclass
class DrainSummary:
    """What a drain did, by outcome."""

    deliveries: int = 0
    applied: int = 0
    stale: int = 0
    ignored: int = 0
    failed: int = 0
    redetected: int = 0
    batches: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class _Stored(NamedTuple):
    """What the index holds for a contact: its row id, Podium's ``updatedAt``, when it left Podium."""

    pk: int | None
    updated_at: datetime | None
    deleted_at: datetime | None


@dataclass
class _Change:
    delivery_id: int
    event_type: str
    contact: PodiumContact
    version: datetime
    tombstone: bool


@dataclass
class _Settled:
    status: str
    outcome: str = ""
    contact_id: int | None = None
    natural_keys: tuple[str, ...] = ()


# --- the task ------------------------------------------------------------------------------------------


def drain_task() -> dict[str, int]:
    """The django-q2 task the receiver enqueues."""
    return drain().as_dict()


def drain(limit: int = BATCH, actor: str = ACTOR) -> DrainSummary:
    """Apply every stored ``received`` delivery, batch by batch, re-detecting after each batch."""
    summary = DrainSummary()
    # Before reading: a delivery stored from now on enqueues a drain of its own (dedup.realtime.receiver).
    WebhookDrainFlag.objects.filter(pk=1, requested=True).update(requested=False)
    while True:
        applied = _apply_batch(limit, summary)
        if applied is None:
            return summary
        summary.batches += 1
        if applied:
            summary.redetected += redetect(applied, actor)


def redetect(delivery_ids: list[int], actor: str = ACTOR) -> int:
    """Re-detect the contacts and natural keys of applied deliveries, then mark them done.

    Returns how many were settled; 0 when detection failed (they stay ``applied`` for the sweep).
    """
    rows = list(
        WebhookDelivery.objects.filter(pk__in=delivery_ids, status=WebhookDelivery.APPLIED).values_list(
            "pk", "contact_id", "natural_keys"
        )
    )
    if not rows:
        return 0
    keys = sorted({key for _pk, _cid, row_keys in rows for key in row_keys or ()})
    contact_ids = sorted({cid for _pk, cid, _keys in rows if cid is not None})
    try:
        found = detect(keys=keys, contact_ids=contact_ids, actor=actor)
    except Exception:  # noqa: BLE001 - the index is written; the sweep re-detects these deliveries
        logger.exception("webhook: re-detection of %d delivery(ies) failed; the sweep retries", len(rows))
        return 0
    done = WebhookDelivery.objects.filter(
        pk__in=[pk for pk, _c, _k in rows], status=WebhookDelivery.APPLIED
    ).update(status=WebhookDelivery.DONE, done_at=timezone.now())
    logger.info(
        "webhook: %d delivery(ies) applied and re-detected (%d contact(s), %d key(s)): %d open cluster(s) around them",
        done, len(contact_ids), len(keys), found.clusters_open,
    )  # fmt: skip
    return done


# --- one batch -------------------------------------------------------------------------------------------


def _claim(limit: int) -> list[tuple[int, str, datetime]]:
    """The oldest ``received`` deliveries, for this transaction alone."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_DRAIN_LOCK])
    # SQLite: the transaction is IMMEDIATE (dedup.envconfig), so it holds the write lock already.
    return list(
        WebhookDelivery.objects.filter(status=WebhookDelivery.RECEIVED)
        .order_by("id")
        .values_list("id", "body", "received_at")[:limit]
    )


def _apply_batch(limit: int, summary: DrainSummary) -> list[int] | None:
    """Apply one batch in one transaction; the applied deliveries' ids (None when there was nothing)."""
    with transaction.atomic():
        rows = _claim(limit)
        if not rows:
            return None
        settled: dict[int, _Settled] = {}
        changes = [
            c for c in (_parse(pk, body, received, settled) for pk, body, received in rows) if c is not None
        ]
        if changes:
            _apply_changes(changes, settled)
        _settle(settled)
    for item in settled.values():
        summary.deliveries += 1
        if item.status == WebhookDelivery.APPLIED:
            summary.applied += 1
        elif item.status == WebhookDelivery.STALE:
            summary.stale += 1
        elif item.status == WebhookDelivery.IGNORED:
            summary.ignored += 1
        else:
            summary.failed += 1
    return [pk for pk, item in settled.items() if item.status == WebhookDelivery.APPLIED]


def _parse(pk: int, body: str, received_at: datetime, settled: dict[int, _Settled]) -> _Change | None:
    """The change a delivery carries; None (and its settled outcome) when it carries none."""
    try:
        wire: Any = json.loads(body)
    except ValueError:
        settled[pk] = _Settled(WebhookDelivery.FAILED, "the body is not JSON")
        return None
    metadata = wire.get("metadata") if isinstance(wire, dict) else None
    event_type = metadata.get("eventType") if isinstance(metadata, dict) else None
    if isinstance(event_type, str) and event_type not in CONTACT_EVENT_TYPES:
        settled[pk] = _Settled(WebhookDelivery.IGNORED, f"{event_type[:60]} is not a contact event")
        return None
    try:
        event = WebhookEvent.from_wire(wire)
    except MalformedResponse as exc:
        settled[pk] = _Settled(WebhookDelivery.FAILED, exc.message[:300])
        return None
    contact = event.contact
    if contact is None:
        settled[pk] = _Settled(WebhookDelivery.FAILED, "the event carries neither data.before nor data.after")
        return None
    tombstone = event.after is None and event.event_type in _DELETION_EVENTS
    if event.after is not None:
        version = event.after.updated_at or event.occurred_at or received_at
    else:
        version = event.occurred_at or contact.updated_at or received_at
    return _Change(pk, event.event_type, contact, version, tombstone)


def _lock_and_read(uids: list[str]) -> dict[str, _Stored]:
    """What the index holds for these contacts, their rows locked until the batch commits."""
    rows = Contact.objects.filter(uid__in=uids).order_by("pk")
    if connection.features.has_select_for_update:
        rows = rows.select_for_update()
    return {uid: _Stored(pk, updated, deleted) for pk, uid, updated, deleted in rows.values_list(
        "pk", "uid", "updated_at", "deleted_at"
    )}  # fmt: skip


def _applies(change: _Change, stored: _Stored | None) -> bool:
    """Newest wins: does this change carry something newer than what the index holds?"""
    if stored is None:
        return True
    if change.tombstone:
        return stored.deleted_at is None and (
            stored.updated_at is None or change.version >= stored.updated_at
        )
    if stored.updated_at is not None and change.version <= stored.updated_at:
        return False
    return stored.deleted_at is None or change.version > stored.deleted_at


def _after(change: _Change, stored: _Stored | None) -> _Stored:
    pk = stored.pk if stored is not None else None
    if change.tombstone:
        return _Stored(pk, stored.updated_at if stored else change.contact.updated_at, change.version)
    return _Stored(pk, change.version, change.contact.deleted_at)


def _apply_changes(changes: list[_Change], settled: dict[int, _Settled]) -> None:
    by_uid: dict[str, list[_Change]] = defaultdict(list)
    for change in changes:
        by_uid[change.contact.uid].append(change)
    stored = _lock_and_read(sorted(by_uid))
    winners: list[_Change] = []
    for uid, group in by_uid.items():
        state = stored.get(uid)
        winner: _Change | None = None
        # In order of version (a deletion after an update of the same instant), then of arrival.
        for change in sorted(group, key=lambda c: (c.version, c.tombstone, c.delivery_id)):
            if _applies(change, state):
                if winner is not None:
                    settled[winner.delivery_id] = _Settled(
                        WebhookDelivery.STALE, "superseded by a newer delivery of the same contact"
                    )
                winner, state = change, _after(change, state)
            else:
                newest = (
                    max((t for t in (state.updated_at, state.deleted_at) if t), default=None)
                    if state
                    else None
                )
                settled[change.delivery_id] = _Settled(
                    WebhookDelivery.STALE,
                    f"older than the index ({format_timestamp(newest) if newest else 'deleted'})",
                )
        if winner is not None:
            winners.append(winner)
    if not winners:
        return
    known_ids = [s.pk for s in stored.values() if s.pk is not None]
    old_keys: dict[int, set[str]] = defaultdict(set)
    for contact_id, key in ContactKey.objects.filter(contact_id__in=known_ids).values_list(
        "contact_id", "key"
    ):
        old_keys[contact_id].add(key)

    writer = IndexWriter(Policy.current().default_region)
    to_write: list[tuple[_Change, PreparedContact]] = []
    now = timezone.now()
    for change in winners:
        row = stored.get(change.contact.uid)
        if change.tombstone and row is not None and row.pk is not None:
            Contact.objects.filter(pk=row.pk).update(deleted_at=change.version, indexed_at=now)
            settled[change.delivery_id] = _Settled(
                WebhookDelivery.APPLIED, "", row.pk, tuple(sorted(old_keys.get(row.pk, ())))
            )
            continue
        prepared = _prepare(writer, change, settled)
        if prepared is not None:
            to_write.append((change, prepared))
    if not to_write:
        return
    result = writer.write([p for _c, p in to_write])
    for (change, prepared), contact_id in zip(to_write, result.contact_ids, strict=True):
        keys = old_keys.get(contact_id, set()) | {k.key for k in prepared.keys}
        settled[change.delivery_id] = _Settled(WebhookDelivery.APPLIED, "", contact_id, tuple(sorted(keys)))


def _prepare(writer: IndexWriter, change: _Change, settled: dict[int, _Settled]) -> PreparedContact | None:
    contact = change.contact
    home = contact.location_uid
    region = writer.region_for(home) if home else writer.default_region
    try:
        prepared = prepare_contact(contact, region)
    except ValueError as exc:
        settled[change.delivery_id] = _Settled(WebhookDelivery.FAILED, str(exc)[:300])
        return None
    problem = unstorable_reason(prepared)
    if problem is not None:
        settled[change.delivery_id] = _Settled(WebhookDelivery.FAILED, problem[:300])
        return None
    if change.tombstone:
        # A deletion of a contact the index never held: indexed as deleted, so an older delivery of
        # it arriving later cannot bring it back.
        prepared = prepared._replace(deleted_at=change.version)
    return prepared


def _settle(settled: dict[int, _Settled]) -> None:
    """Write each delivery's outcome; bodies are dropped unless the delivery failed (to look at it)."""
    now = timezone.now()
    rows = []
    for pk, item in settled.items():
        row = WebhookDelivery(
            pk=pk, status=item.status, outcome=item.outcome[:300], contact_id=item.contact_id,
            natural_keys=list(item.natural_keys), applied_at=now if item.status == WebhookDelivery.APPLIED else None,
            done_at=None if item.status == WebhookDelivery.APPLIED else now,
        )  # fmt: skip
        rows.append(row)
    WebhookDelivery.objects.bulk_update(
        rows, ["status", "outcome", "contact_id", "natural_keys", "applied_at", "done_at"], batch_size=500
    )
    WebhookDelivery.objects.filter(pk__in=list(settled)).exclude(status=WebhookDelivery.FAILED).update(
        body=""
    )


# --- the sweep -------------------------------------------------------------------------------------------


def sweep(now: datetime | None = None) -> dict[str, Any]:
    """Every minute: drain what a lost enqueue left, re-detect what a failed detection left, prune."""
    now = now or timezone.now()
    result: dict[str, Any] = {}
    if WebhookDelivery.objects.filter(
        status=WebhookDelivery.RECEIVED, received_at__lt=now - STUCK_AFTER
    ).exists():
        result["drained"] = drain().as_dict()
    stuck = list(
        WebhookDelivery.objects.filter(status=WebhookDelivery.APPLIED, applied_at__lt=now - STUCK_AFTER)
        .order_by("id")
        .values_list("pk", flat=True)[:BATCH]
    )
    if stuck:
        result["redetected"] = redetect(stuck)
    settled = [WebhookDelivery.DONE, WebhookDelivery.STALE, WebhookDelivery.IGNORED]
    pruned, _ = WebhookDelivery.objects.filter(
        status__in=settled, received_at__lt=now - KEEP_SETTLED
    ).delete()
    pruned_failed, _ = WebhookDelivery.objects.filter(
        status=WebhookDelivery.FAILED, received_at__lt=now - KEEP_FAILED
    ).delete()
    WebhookRefusal.objects.filter(hour__lt=now - KEEP_FAILED).delete()
    result["pruned"] = pruned + pruned_failed
    from dedup.realtime.registration import refresh_if_due

    result["checked"] = refresh_if_due(now)
    return result


def ensure_sweep_schedule() -> None:
    """Create the every-minute schedule of ``sweep`` if it does not exist."""
    from django_q.models import Schedule

    Schedule.objects.get_or_create(
        name=SWEEP_SCHEDULE_NAME,
        defaults={
            "func": "dedup.realtime.apply.sweep",
            "schedule_type": Schedule.MINUTES,
            "minutes": 1,
            "repeats": -1,
        },
    )


@receiver(post_spawn, dispatch_uid="dedup.realtime.ensure_sweep_schedule")
def ensure_sweep_schedule_at_worker_start(sender: Any, proc_name: str = "", **kwargs: Any) -> None:
    """django-q2 ``post_spawn``: make sure the webhook sweep is scheduled."""
    try:
        ensure_sweep_schedule()
    except Exception:  # noqa: BLE001 - a worker must start even if this fails; the next start retries
        logger.exception("could not schedule the webhook sweep at the start of worker %s", proc_name)
