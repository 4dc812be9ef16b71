"""Sign-in lockout, on django-axes: the lockout key, the per-address limit and when a lockout ends.

django-axes records failed sign-ins (in the database, so every web process sees the same count), refuses a
locked sign-in before the password is checked, and answers 429 through ``views.accounts.locked_out``. This
module holds what is this product's policy rather than the library's:

- **The key.** A username is locked by its *identity*, not its spelling: Django's sign-in form strips it
  and applies NFKC (``ｍｇｒＢ`` signs in as ``mgrB``), so the lockout key is the same NFKC form,
  case-folded (so ``MGRB`` and ``mgrB`` share one counter; usernames are looked up exactly, so case-folding
  is the stricter side: it can only merge counters, never split one).
- **Two limits.** Five failures lock a username; an address is locked after twenty, because an office
  shares one address. Axes compares a single count with a single limit, so the address count is scaled to
  the username limit (see ``LoginLimitHandler.get_failures``).
- **A success clears that username's failures only**, never the address's: signing in to one's own
  account must not reset the counter of someone trying other people's.

The address is ``REMOTE_ADDR``: behind a proxy, configure the proxy to set it; a client-supplied header is
never trusted here.
"""

from __future__ import annotations

import math
import unicodedata
from datetime import datetime, timedelta
from typing import Any

from axes.handlers.database import AxesDatabaseHandler
from axes.helpers import get_cool_off
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import QuerySet, Sum
from django.http import HttpRequest
from django.utils import timezone

# AccessAttempt.username holds at most this many characters; case-folding can lengthen a name.
_KEY_LENGTH = 255
# Normalizing converges in one or two passes for real names; the bound only guards against a pathological
# string that would not.
_KEY_PASSES = 4


def lockout_key(raw: str | None) -> str | None:
    """The username as the lockout counts it: NFKC, stripped (as Django's sign-in form cleans it), case-folded.

    Repeated to a fixed point, because each step can undo another (NFKC turns ``¯`` into a space and a
    combining mark, so a stripped name can gain a blank to strip; case-folding can produce a character
    NFKC changes), so the key of what was typed and of what the form passes on are the same.
    """
    if raw is None:
        return None
    text = str(raw).replace("\x00", "")
    for _ in range(_KEY_PASSES):
        folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).strip().casefold()).strip()
        if folded == text:
            break
        text = folded
    return text[:_KEY_LENGTH]


def lockout_username(request: HttpRequest, credentials: dict[str, Any] | None) -> str | None:
    """``AXES_USERNAME_CALLABLE``: the lockout key of the username being signed in with."""
    field = get_user_model().USERNAME_FIELD
    if credentials:
        return lockout_key(credentials.get(field))
    return lockout_key(request.POST.get(field))


def client_address(request: HttpRequest) -> str | None:
    """``AXES_CLIENT_IP_CALLABLE``: the connecting address, never a client-supplied forwarding header."""
    return request.META.get("REMOTE_ADDR") or None


class LoginLimitHandler(AxesDatabaseHandler):
    """Axes' database handler with a limit per lockout parameter and a success that clears only its username."""

    def _attempts(self, request: HttpRequest, credentials: dict[str, Any] | None) -> tuple[QuerySet[Any], QuerySet[Any]]:
        by_username, by_address = self.get_user_attempts(request, credentials)
        return by_username, by_address

    def get_failures(self, request: HttpRequest, credentials: dict[str, Any] | None = None) -> int:
        # Axes locks when this reaches AXES_FAILURE_LIMIT (the per-username limit). The address count is
        # scaled so that it reaches that limit exactly when the address reaches its own, higher one:
        # floor(n * U / A) >= U  iff  n >= A.
        by_username, by_address = self._attempts(request, credentials)
        per_username = _sum_failures(by_username)
        per_address = _sum_failures(by_address)
        return max(per_username, per_address * settings.AXES_FAILURE_LIMIT // settings.LOGIN_ADDRESS_FAILURE_LIMIT)

    def reset_user_attempts(self, request: HttpRequest, credentials: dict[str, Any] | None = None) -> int:
        by_username, _ = self._attempts(request, credentials)
        count, _ = by_username.delete()
        return count

    def reset_attempts(
        self, *, ip_address: str | None = None, username: str | None = None, ip_or_username: bool = False
    ) -> int:
        # ``axes_reset_username mgrB`` (and the other reset tools) name a person as they spell it.
        return super().reset_attempts(
            ip_address=ip_address, username=lockout_key(username), ip_or_username=ip_or_username
        )

    def retry_after_seconds(self, request: HttpRequest, credentials: dict[str, Any] | None) -> int:
        """How long until this sign-in is allowed again: when enough failures leave the window."""
        now: datetime = getattr(request, "axes_attempt_time", None) or timezone.now()
        cool_off = get_cool_off(request) or timedelta(0)
        unlock = now
        by_username, by_address = self._attempts(request, credentials)
        for attempts, limit in (
            (by_username, settings.AXES_FAILURE_LIMIT),
            (by_address, settings.LOGIN_ADDRESS_FAILURE_LIMIT),
        ):
            # Axes counts a row's failures until its latest failure leaves the window; the lock ends when
            # the rows still counting sum below the limit. Each row holds one failure at least.
            total = 0
            for attempt_time, failures in attempts.order_by("-attempt_time").values_list(
                "attempt_time", "failures_since_start"
            )[:limit]:
                total += failures
                if total >= limit:
                    unlock = max(unlock, attempt_time + cool_off)
                    break
        return max(1, math.ceil((unlock - now).total_seconds()))


def _sum_failures(attempts: QuerySet[Any]) -> int:
    return int(attempts.aggregate(n=Sum("failures_since_start"))["n"] or 0)
