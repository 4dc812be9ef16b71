"""How an audit event's hash is computed, and the keys it is computed with.

Two versions of the chain exist:

- **1, unkeyed** (events written before keying): ``SHA-256(prev_hash | content)``. Anyone with write access
  to the database could recompute these after an edit, so they are trusted only as far as a keyed event
  that follows them covers them.
- **2, keyed** (every event written now): ``HMAC-SHA-256(chain key, "v2" | prev_hash | content)``. The key
  comes from the ``AUDIT_HMAC_KEY`` environment variable and is never stored in the database, so someone
  who can edit the table cannot recompute a valid hash for an edited or forged event.

The migration that introduced keying appended one keyed event ("audit.chain_keyed") after the last
unkeyed one, sealing the unkeyed prefix: its keyed hash covers the prefix's last hash, which covers
everything before it. Old hashes are kept as they were, so exports taken before keying still match.

Separate keys are derived from ``AUDIT_HMAC_KEY`` for the chain and for checkpoints, so neither kind of
MAC can be replayed as the other. The key id (a fingerprint of the key, safe to show) tells whether a
checkpoint was made with this deployment's key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from typing import Any, Protocol

from django.conf import settings

GENESIS = "0" * 64
UNKEYED = 1
KEYED = 2
CURRENT_VERSION = KEYED


class ChainedEvent(Protocol):
    """What the hash covers; an ``AuditEvent``, or its historical model in a migration."""

    created_at: datetime
    event_type: str
    actor: str
    actor_user_id: int | None
    cluster_ref: str
    operation_ref: int | None
    location_uids: Any
    subjects: str
    payload: Any
    prev_hash: str
    chain_version: int


def _derived_key(purpose: bytes) -> bytes:
    return hmac.new(str(settings.AUDIT_HMAC_KEY).encode(), purpose, hashlib.sha256).digest()


def chain_key() -> bytes:
    """The key event hashes are computed with (derived from ``AUDIT_HMAC_KEY``)."""
    return _derived_key(b"dedup audit chain")


def checkpoint_key() -> bytes:
    """The key checkpoints are signed with (derived from ``AUDIT_HMAC_KEY``)."""
    return _derived_key(b"dedup audit checkpoint")


def key_id() -> str:
    """A fingerprint of ``AUDIT_HMAC_KEY``: names the key without revealing it."""
    return _derived_key(b"dedup audit key id").hex()[:16]


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def content_of(event: ChainedEvent) -> dict[str, Any]:
    """The fields the hash covers, in a canonical JSON-ready form."""
    return {
        "created_at": _iso(event.created_at),
        "event_type": event.event_type,
        "actor": event.actor,
        "actor_user_id": event.actor_user_id,
        "cluster_ref": event.cluster_ref,
        "operation_ref": event.operation_ref,
        "location_uids": event.location_uids,
        "subjects": event.subjects,
        "payload": event.payload,
    }


def event_hash(event: ChainedEvent) -> str:
    """The hash ``event`` must carry for its version, content and predecessor."""
    body = json.dumps(content_of(event), sort_keys=True, separators=(",", ":"), default=str)
    if event.chain_version == UNKEYED:
        return hashlib.sha256(f"{event.prev_hash}|{body}".encode()).hexdigest()
    if event.chain_version == KEYED:
        return hmac.new(chain_key(), f"v2|{event.prev_hash}|{body}".encode(), hashlib.sha256).hexdigest()
    raise ValueError(f"unknown audit chain version {event.chain_version!r}")


def sign(document: dict[str, Any]) -> str:
    """The checkpoint signature of ``document`` (canonical JSON, HMAC with the checkpoint key)."""
    body = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hmac.new(checkpoint_key(), body.encode(), hashlib.sha256).hexdigest()


def same(a: str, b: str) -> bool:
    """Constant-time comparison of two hex digests."""
    return hmac.compare_digest(a.encode(), b.encode())
