"""Integrations' bearer tokens for the lookup API: created by admins, scoped to locations, revocable.

A token is ``pdk_`` and 43 characters of ``secrets.token_urlsafe(32)`` (256 random bits). Only its
SHA-256 is stored: with that much entropy a fast hash cannot be brute-forced, and the lookup stays one
indexed equality query per request (a slow password hash would cost more than the whole lookup). The
stored hash is then compared with ``hmac.compare_digest``. The token is shown once, when created.
Creation and revocation are audited.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from dedup import audit
from dedup.models import ApiToken, Location

PREFIX = "pdk_"
# last_used_at is written at most this often per token, so a busy integration costs no write per call.
TOUCH_EVERY = timedelta(minutes=1)


class TokenError(ValueError):
    """A token cannot be created or revoked as asked (the message says why)."""


@dataclass(frozen=True)
class IssuedToken:
    """A token just created: the row, and the token itself (shown once, never stored)."""

    row: ApiToken
    token: str


def hash_token(token: str) -> str:
    """The SHA-256 hex digest kept for a token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(
    name: str, location_uids: Sequence[str], *, actor: str, actor_user_id: int | None = None, user: Any = None
) -> IssuedToken:
    """Create a token for ``name`` that may look up contacts of these locations (all must be indexed)."""
    name = name.strip()
    if not name or len(name) > 100:
        raise TokenError("a token needs a name of 1 to 100 characters")
    wanted = sorted(set(location_uids))
    if not wanted:
        raise TokenError("a token needs at least one location")
    known = set(Location.objects.filter(uid__in=wanted).values_list("uid", flat=True))
    unknown = [uid for uid in wanted if uid not in known]
    if unknown:
        raise TokenError(f"no such location: {', '.join(unknown)}")
    token = PREFIX + secrets.token_urlsafe(32)
    with transaction.atomic():
        row = ApiToken.objects.create(
            name=name, prefix=token[:10], token_hash=hash_token(token), location_uids=wanted,
            created_by=user if getattr(user, "is_authenticated", False) else None,
        )  # fmt: skip
        audit.record(
            "api_token.created",
            actor=actor,
            actor_user_id=actor_user_id,
            location_uids=wanted,
            payload={"token": row.pk, "name": name, "prefix": row.prefix, "locations": wanted},
        )
    return IssuedToken(row, token)


def revoke_token(row: ApiToken, *, actor: str, actor_user_id: int | None = None, user: Any = None) -> bool:
    """Revoke a token (at once, for every process); False when it was revoked already."""
    with transaction.atomic():
        changed = ApiToken.objects.filter(pk=row.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now(), revoked_by=user if getattr(user, "is_authenticated", False) else None
        )
        if changed:
            audit.record(
                "api_token.revoked",
                actor=actor,
                actor_user_id=actor_user_id,
                location_uids=row.location_uids,
                payload={"token": row.pk, "name": row.name, "prefix": row.prefix},
            )
    row.refresh_from_db()
    return bool(changed)


def authenticate(header: str | None) -> ApiToken | None:
    """The active token an ``Authorization: Bearer <token>`` header carries, else None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token.startswith(PREFIX) or len(token) > 200:
        return None
    digest = hash_token(token)
    row = (
        ApiToken.objects.filter(token_hash=digest, revoked_at__isnull=True)
        .only("pk", "name", "prefix", "token_hash", "location_uids", "last_used_at")
        .first()
    )
    if row is None or not hmac.compare_digest(row.token_hash, digest):
        return None
    now = timezone.now()
    if row.last_used_at is None or now - row.last_used_at > TOUCH_EVERY:
        ApiToken.objects.filter(pk=row.pk).update(last_used_at=now)
    return row
