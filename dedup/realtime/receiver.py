"""Receiving a Podium webhook delivery: verify it, store it under its delivery key, enqueue the work.

Everything here is quick (one signature check, one insert, one enqueue) so Podium gets its 2xx in
milliseconds; applying the delivery to the index is ``dedup.realtime.apply``'s job, in a worker. A
delivery refused here (unsigned, badly signed, stale, too large, rate limited) is counted per hour and
reason and logged without its body.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from dedup.models import WebhookDelivery, WebhookDrainFlag, WebhookRefusal
from dedup.realtime.secrets import receiver_secrets
from podium_client.errors import WebhookSignatureError
from podium_client.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify

logger = logging.getLogger("dedup.webhooks")

DRAIN_TASK = "dedup.realtime.apply.drain_task"


@dataclass(frozen=True)
class Answer:
    """What the receiver answers Podium: a status and a small JSON body (never the delivery's data)."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def delivery_key_of(raw: bytes, parsed: Any) -> str:
    """``event:<metadata.eventUid>`` when the body names its event, else ``sha256:<hex of the raw body>``.

    A repeated delivery of one event has the same key either way (Podium re-sends the same bytes).
    """
    metadata = parsed.get("metadata") if isinstance(parsed, dict) else None
    event_uid = metadata.get("eventUid") if isinstance(metadata, dict) else None
    if isinstance(event_uid, str) and event_uid.strip() and len(event_uid) <= 90:
        return "event:" + event_uid.strip()
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def _summary_of(parsed: Any) -> tuple[str, str]:
    """(event type, contact uid) for the delivery's row, whatever shape the body has."""
    if not isinstance(parsed, dict):
        return "", ""
    metadata = parsed.get("metadata")
    event_type = metadata.get("eventType") if isinstance(metadata, dict) else None
    data = parsed.get("data")
    uid = None
    if isinstance(data, dict):
        for side in ("after", "before"):
            contact = data.get(side)
            if isinstance(contact, dict) and isinstance(contact.get("uid"), str):
                uid = contact["uid"]
                break
    return (event_type if isinstance(event_type, str) else "")[:40], (uid or "")[:64]


def record_refusal(reason: str) -> None:
    """Count one refused delivery in this hour's row for ``reason``."""
    now = timezone.now()
    hour = now.replace(minute=0, second=0, microsecond=0)
    rows = WebhookRefusal.objects.filter(hour=hour, reason=reason)
    if rows.update(count=F("count") + 1, last_at=now):
        return
    try:
        with transaction.atomic():
            WebhookRefusal.objects.create(hour=hour, reason=reason, count=1, last_at=now)
    except IntegrityError:
        rows.update(count=F("count") + 1, last_at=now)


def refuse(status: int, reason: str, message: str, size: int, client: str, **headers: str) -> Answer:
    """Count, log (without the body) and answer a refusal."""
    record_refusal(reason)
    logger.warning(
        "webhook delivery refused (%s, %d): %s; %d bytes from %s", reason, status, message, size, client
    )
    return Answer(status, {"error": reason}, dict(headers))


def accept(raw: bytes, headers: Any, client: str = "") -> Answer:
    """Verify a delivery's signature, store it once, enqueue the work; the answer for Podium.

    401 when it is unsigned, stale or does not match any current secret (none configured refuses all);
    202 when stored; 200 when its delivery key was seen before (a repeat: not applied again).
    """
    if not headers.get(TIMESTAMP_HEADER) or not headers.get(SIGNATURE_HEADER):
        return refuse(401, WebhookRefusal.UNSIGNED, "no podium-timestamp/podium-signature", len(raw), client)
    secrets = receiver_secrets()
    if not secrets:
        return refuse(
            401, WebhookRefusal.BAD_SIGNATURE,
            "no webhook secret is configured (run `manage.py podium_webhook register` or set PODIUM_WEBHOOK_SECRET)",
            len(raw), client,
        )  # fmt: skip
    problem: WebhookSignatureError | None = None
    for secret in secrets:
        try:
            verify(secret, raw, headers, tolerance_s=settings.PODIUM_WEBHOOK_TOLERANCE_S)
        except WebhookSignatureError as exc:
            problem = exc
            continue
        problem = None
        break
    if problem is not None:
        return refuse(401, WebhookRefusal.BAD_SIGNATURE, problem.message, len(raw), client)

    try:
        parsed: Any = json.loads(raw)
    except ValueError:
        parsed = None
    key = delivery_key_of(raw, parsed)
    event_type, contact_uid = _summary_of(parsed)
    readable = isinstance(parsed, dict)
    try:
        # One transaction, one commit (durable before Podium hears 2xx): the delivery, and the request
        # for a drain when none is waiting.
        with transaction.atomic():
            delivery = WebhookDelivery.objects.create(
                delivery_key=key,
                event_type=event_type,
                contact_uid=contact_uid,
                status=WebhookDelivery.RECEIVED if readable else WebhookDelivery.FAILED,
                outcome="" if readable else "the body is not a JSON object",
                body=raw.decode("utf-8", errors="backslashreplace").replace("\x00", "\\x00"),
            )
            wanted = readable and request_drain()
    except IntegrityError:
        logger.info("webhook delivery %s repeated; already stored", key)
        return Answer(200, {"status": "duplicate"})
    if wanted:
        enqueue_drain()
    elif not readable:
        logger.warning("webhook delivery #%s is not a JSON object; kept as failed", delivery.pk)
    return Answer(202, {"status": "accepted", "delivery": delivery.pk})


def request_drain() -> bool:
    """Flag that a drain is wanted; True when none was waiting (then the caller enqueues one).

    A drain clears the flag before it reads the stored deliveries, so a delivery stored while one waits is
    read by it, and one stored after it started flips the flag again and gets a drain of its own.
    """
    now = timezone.now()
    flags = WebhookDrainFlag.objects.filter(pk=1)
    if flags.filter(requested=False).update(requested=True, requested_at=now):
        return True
    if flags.exists():
        return False  # a drain is waiting already
    try:
        with transaction.atomic():
            WebhookDrainFlag.objects.create(pk=1, requested=True, requested_at=now)
    except IntegrityError:
        return False  # created meanwhile by another receiver, which enqueues
    return True


def enqueue_drain() -> None:
    """Ask a worker to apply what is stored. A lost enqueue only delays: the every-minute sweep drains
    what was stored and clears the flag."""
    from django_q.tasks import async_task

    try:
        async_task(DRAIN_TASK, task_name="webhook drain", group="webhooks", save=False)
    except Exception:  # noqa: BLE001 - the delivery is stored; the every-minute sweep applies it
        logger.exception("could not enqueue the webhook drain; the sweep will apply the delivery")
