"""The webhook at Podium: register it, ask Podium about it, remove it; and its health for the dashboard.

One organization webhook for the contact events, pointing at ``/podium/webhooks/``. Registering again
replaces the earlier one (at Podium and here). The secret comes from ``PODIUM_WEBHOOK_SECRET`` when set,
else a fresh one is generated and stored encrypted (``dedup.realtime.secrets``); it is never logged.
Podium disables a webhook after about 8 hours of failed deliveries; the every-minute sweep asks Podium
about it every 15 minutes, the dashboard shows what it said, and the scheduled incremental scan catches
up whatever was not delivered.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Sum
from django.utils import timezone

from dedup import audit
from dedup.models import WebhookDelivery, WebhookRefusal, WebhookRegistration
from dedup.podium import get_client
from dedup.realtime.secrets import (
    SecretUnreadable,
    active_registration,
    decrypt,
    encrypt,
    generate_secret,
    key_source,
)
from podium_client import PodiumClient
from podium_client.errors import NotFoundError, PodiumError
from podium_client.types import CONTACT_EVENT_TYPES, Webhook

logger = logging.getLogger("dedup.webhooks")

EVENT_TYPES = sorted(CONTACT_EVENT_TYPES)
CHECK_EVERY = timedelta(minutes=15)


class RegistrationError(Exception):
    """The webhook could not be registered or removed (the message says why, without the secret)."""


def _validate_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise RegistrationError(f"{url!r} is not an http(s) URL")
    if not parts.path.rstrip("/").endswith("podium/webhooks"):
        raise RegistrationError(f"{url!r} does not end in /podium/webhooks/ (the receiver's path)")
    return url


def register(
    url: str, *, actor: str = "cli", actor_user_id: int | None = None, client: PodiumClient | None = None,
    organization_uid: str | None = None,
) -> WebhookRegistration:  # fmt: skip
    """Register the organization webhook for every contact event at ``url``; replaces an earlier one."""
    _validate_url(url)
    env_secret = settings.PODIUM_WEBHOOK_SECRET
    secret = env_secret or generate_secret()
    own = client is None
    podium = client or get_client()
    previous = active_registration()
    try:
        org = organization_uid or next(
            (loc.organization_uid for loc in podium.list_locations() if loc.organization_uid), None
        )
        if not org:
            raise RegistrationError(
                "Podium names no organization for these credentials; pass --organization UID"
            )
        replaced = []
        for hook in podium.list_webhooks():
            if (previous is not None and hook.uid == previous.podium_uid) or hook.url == url:
                podium.delete_webhook(hook.uid)
                replaced.append(hook.uid)
        created = podium.create_webhook(url, EVENT_TYPES, secret, organization_uid=org)
    except PodiumError as exc:
        raise RegistrationError(f"Podium refused: {exc}") from exc
    finally:
        if own:
            podium.close()
    with transaction.atomic():
        now = timezone.now()
        WebhookRegistration.objects.filter(active=True).update(active=False, removed_at=now)
        registration = WebhookRegistration.objects.create(
            podium_uid=created.uid, url=url, event_types=list(created.event_types or EVENT_TYPES),
            organization_uid=org,
            secret_source=WebhookRegistration.ENVIRONMENT if env_secret else WebhookRegistration.STORED,
            secret_encrypted="" if env_secret else encrypt(secret),
            podium_state=WebhookRegistration.DISABLED if created.disabled else WebhookRegistration.ENABLED,
            checked_at=now, registered_by=actor,
        )  # fmt: skip
        audit.record(
            "webhook.registered",
            actor=actor,
            actor_user_id=actor_user_id,
            payload={
                "url": url, "podiumUid": created.uid, "eventTypes": registration.event_types,
                "secretSource": registration.secret_source,
                "encryptionKeyFrom": key_source() if not env_secret else None, "replaced": replaced,
            },
        )  # fmt: skip
    logger.info(
        "webhook %s registered at Podium for %s (secret: %s)", created.uid, url, registration.secret_source
    )
    return registration


def unregister(
    *, actor: str = "cli", actor_user_id: int | None = None, client: PodiumClient | None = None
) -> WebhookRegistration | None:
    """Remove the active webhook at Podium and here; None when none was registered."""
    registration = active_registration()
    if registration is None:
        return None
    own = client is None
    podium = client or get_client()
    try:
        if registration.podium_uid:
            try:
                podium.delete_webhook(registration.podium_uid)
            except NotFoundError:
                logger.info("webhook %s was already gone at Podium", registration.podium_uid)
    except PodiumError as exc:
        raise RegistrationError(f"Podium refused: {exc}") from exc
    finally:
        if own:
            podium.close()
    with transaction.atomic():
        WebhookRegistration.objects.filter(pk=registration.pk).update(active=False, removed_at=timezone.now())
        audit.record(
            "webhook.unregistered", actor=actor, actor_user_id=actor_user_id,
            payload={"url": registration.url, "podiumUid": registration.podium_uid},
        )  # fmt: skip
    registration.refresh_from_db()
    return registration


def refresh_from_podium(client: PodiumClient | None = None) -> Webhook | None:
    """Ask Podium about the active webhook and record its state (enabled, disabled, missing)."""
    registration = active_registration()
    if registration is None:
        return None
    own = client is None
    podium = client or get_client()
    try:
        found = next((hook for hook in podium.list_webhooks() if hook.uid == registration.podium_uid), None)
    finally:
        if own:
            podium.close()
    if found is None:
        state = WebhookRegistration.MISSING
    else:
        state = WebhookRegistration.DISABLED if found.disabled else WebhookRegistration.ENABLED
    WebhookRegistration.objects.filter(pk=registration.pk).update(
        podium_state=state, checked_at=timezone.now()
    )
    if state != WebhookRegistration.ENABLED:
        logger.warning(
            "webhook %s is %s at Podium: deliveries stopped; the incremental scan catches up, register again",
            registration.podium_uid, state,
        )  # fmt: skip
    return found


def refresh_if_due(now: datetime | None = None) -> bool:
    """Ask Podium about the webhook when it was not asked for ``CHECK_EVERY`` (the sweep calls this)."""
    now = now or timezone.now()
    registration = active_registration()
    if registration is None or (registration.checked_at and now - registration.checked_at < CHECK_EVERY):
        return False
    try:
        refresh_from_podium()
    except PodiumError as exc:
        logger.warning("could not ask Podium about the webhook: %s", exc)
        return False
    return True


@dataclass
class Health:
    """The webhook's health as the dashboard shows it."""

    registration: WebhookRegistration | None
    secret_problem: str
    last_delivery: dict[str, Any] | None
    by_status: dict[str, int]
    refusals: dict[str, int]
    pending: int
    window_hours: int = 24

    @property
    def deliveries(self) -> int:
        return sum(self.by_status.values())

    @property
    def failures(self) -> int:
        return self.by_status.get(WebhookDelivery.FAILED, 0)

    @property
    def refused(self) -> int:
        return sum(self.refusals.values())

    @property
    def receiving(self) -> bool:
        """Registered, enabled as far as we know, and a secret to check signatures with."""
        reg = self.registration
        return bool(reg and reg.podium_state in (WebhookRegistration.ENABLED, WebhookRegistration.UNKNOWN)
                    and not self.secret_problem)  # fmt: skip


def health(now: datetime | None = None) -> Health:
    """Registration, last delivery, deliveries by outcome and refusals in the last day, backlog."""
    now = now or timezone.now()
    since = now - timedelta(hours=24)
    registration = active_registration()
    problem = ""
    if registration is None and settings.PODIUM_WEBHOOK_SECRET == "":
        problem = "no secret: register the webhook or set PODIUM_WEBHOOK_SECRET"
    elif registration is not None and registration.secret_source == WebhookRegistration.STORED:
        try:
            decrypt(registration.secret_encrypted)
        except SecretUnreadable as exc:
            problem = str(exc)
    elif registration is not None and not settings.PODIUM_WEBHOOK_SECRET:
        problem = "registered with PODIUM_WEBHOOK_SECRET, which is not set in this process"
    by_status = dict(
        WebhookDelivery.objects.filter(received_at__gte=since)
        .order_by()
        .values_list("status")
        .annotate(n=Count("id"))
        .values_list("status", "n")
    )
    refusals = {
        reason: int(total or 0)
        for reason, total in WebhookRefusal.objects.filter(
            hour__gte=since.replace(minute=0, second=0, microsecond=0)
        )
        .order_by()
        .values_list("reason")
        .annotate(total=Sum("count"))
        .values_list("reason", "total")
    }
    last = (
        WebhookDelivery.objects.order_by("-id")
        .values("received_at", "event_type", "status", "outcome")
        .first()
    )
    pending = WebhookDelivery.objects.filter(
        status__in=(WebhookDelivery.RECEIVED, WebhookDelivery.APPLIED)
    ).count()
    return Health(registration, problem, dict(last) if last else None, by_status, refusals, pending)
