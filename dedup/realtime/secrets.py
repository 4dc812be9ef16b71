"""The webhook secret: taken from the environment, or generated at registration and stored encrypted.

Stored secrets are Fernet tokens (AES-128-CBC + HMAC-SHA256, ``cryptography``) under a key derived with
HKDF-SHA256 from ``PODIUM_WEBHOOK_ENCRYPTION_KEY`` when it is set, else from ``SECRET_KEY``. Someone who
reads the database without the key cannot forge deliveries. Changing the key makes the stored secret
unreadable: ``podium_webhook status`` says so, and ``podium_webhook register`` makes a new one. A secret is
never logged or printed.
"""

from __future__ import annotations

import base64
import functools
import logging
import secrets

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings

from dedup.models import WebhookRegistration

logger = logging.getLogger(__name__)

_HKDF_INFO = b"podium-dedup webhook secret v1"


class SecretUnreadable(Exception):
    """The stored secret does not decrypt with the configured key (the key changed)."""


def generate_secret() -> str:
    """A fresh webhook secret: 32 random bytes, URL-safe text."""
    return secrets.token_urlsafe(32)


def key_source() -> str:
    """Which setting the encryption key is derived from (for status output; never the key)."""
    return "PODIUM_WEBHOOK_ENCRYPTION_KEY" if settings.PODIUM_WEBHOOK_ENCRYPTION_KEY else "SECRET_KEY"


@functools.lru_cache(maxsize=4)
def _fernet(material: str) -> Fernet:
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(
        material.encode("utf-8")
    )
    return Fernet(base64.urlsafe_b64encode(derived))


def _cipher() -> Fernet:
    return _fernet(settings.PODIUM_WEBHOOK_ENCRYPTION_KEY or settings.SECRET_KEY)


def encrypt(secret: str) -> str:
    """The secret as stored (a Fernet token)."""
    return _cipher().encrypt(secret.encode("utf-8")).decode("ascii")


@functools.lru_cache(maxsize=8)
def _decrypt(token: str, material: str) -> str:
    try:
        return _fernet(material).decrypt(token.encode("ascii")).decode("utf-8")
    except (InvalidToken, ValueError):
        raise SecretUnreadable(
            "the stored webhook secret does not decrypt with the configured key "
            f"({key_source()} changed?); run `manage.py podium_webhook register` again"
        ) from None


def decrypt(token: str) -> str:
    """The stored secret in clear; raises SecretUnreadable when the key changed."""
    return _decrypt(token, settings.PODIUM_WEBHOOK_ENCRYPTION_KEY or settings.SECRET_KEY)


def active_registration() -> WebhookRegistration | None:
    """The webhook registered now, if any."""
    return WebhookRegistration.objects.filter(active=True).first()


def receiver_secrets() -> list[str]:
    """The secrets a delivery may be signed with: the environment's, and the active registration's.

    Decrypting is cached by ciphertext; the registration row is read each time (one indexed query), so a
    new registration takes effect at once in every process.
    """
    found: list[str] = []
    if settings.PODIUM_WEBHOOK_SECRET:
        found.append(settings.PODIUM_WEBHOOK_SECRET)
    token = (
        WebhookRegistration.objects.filter(active=True, secret_source=WebhookRegistration.STORED)
        .values_list("secret_encrypted", flat=True)
        .first()
    )
    if token:
        try:
            found.append(decrypt(token))
        except SecretUnreadable as exc:
            # The environment's secret may still serve; without one every delivery is refused (401).
            logger.warning("webhook: %s", exc)
    return found
