"""Login rate limiting: too many failed sign-ins for one username, or from one address, lock it out a while.

Failures are rows in ``LoginAttempt`` (so every web process sees the same count). The limits are per
username (someone guessing one person's password) and per address (someone trying many usernames); the
address limit is higher because an office shares one. A successful sign-in clears that username's
failures. The address is ``REMOTE_ADDR``: behind a proxy, configure the proxy to set it, never trust a
client-supplied header here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from django.http import HttpRequest
from django.utils import timezone

from dedup.models import LoginAttempt

logger = logging.getLogger(__name__)

WINDOW = timedelta(minutes=15)
MAX_FAILURES_PER_USERNAME = 5
MAX_FAILURES_PER_ADDRESS = 20
# Keep the table small: rows older than this are deleted when a new failure is written.
RETENTION = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a sign-in may be attempted now and, if not, for how long it stays locked."""

    allowed: bool
    retry_after_seconds: int = 0

    @property
    def message(self) -> str:
        minutes = max(1, (self.retry_after_seconds + 59) // 60)
        return (
            "Too many failed sign-in attempts. For your security, sign-in is paused for this account or "
            f"address. Try again in about {minutes} minute{'s' if minutes != 1 else ''}, or ask an admin."
        )


def client_address(request: HttpRequest) -> str | None:
    address = request.META.get("REMOTE_ADDR") or None
    return address


def _normalize(username: str) -> str:
    return username.strip().casefold()[:150]


def check(username: str, address: str | None) -> Verdict:
    """May this username try to sign in from this address now?"""
    since = timezone.now() - WINDOW
    recent = LoginAttempt.objects.filter(attempted_at__gte=since)
    blocking: list[LoginAttempt] = []
    by_user = list(recent.filter(username=_normalize(username)).order_by("-attempted_at")[:MAX_FAILURES_PER_USERNAME])
    if len(by_user) >= MAX_FAILURES_PER_USERNAME:
        blocking.append(by_user[-1])
    if address:
        by_address = list(
            recent.filter(ip_address=address).order_by("-attempted_at")[:MAX_FAILURES_PER_ADDRESS]
        )
        if len(by_address) >= MAX_FAILURES_PER_ADDRESS:
            blocking.append(by_address[-1])
    if not blocking:
        return Verdict(True)
    # Locked until the oldest failure that counts toward the limit leaves the window.
    unlock_at = max(a.attempted_at for a in blocking) + WINDOW
    return Verdict(False, max(int((unlock_at - timezone.now()).total_seconds()), 1))


def record_failure(username: str, address: str | None) -> None:
    now = timezone.now()
    LoginAttempt.objects.filter(attempted_at__lt=now - RETENTION).delete()
    LoginAttempt.objects.create(username=_normalize(username), ip_address=address, attempted_at=now)
    logger.warning("failed sign-in for a username from %s", address or "an unknown address")


def record_success(username: str) -> None:
    LoginAttempt.objects.filter(username=_normalize(username)).delete()
