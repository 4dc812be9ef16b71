"""Signing and verifying Podium webhook deliveries (`Podium-Signature: t=<unix>,v1=<hex>`)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

from podium_client.errors import MalformedResponse, WebhookSignatureError
from podium_client.types import WebhookEvent

SIGNATURE_HEADER = "Podium-Signature"


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


def compute_signature(secret: str | bytes, body: str | bytes, t: int) -> str:
    """Hex HMAC-SHA256 of `"<t>.<raw body>"` with the shared secret."""
    message = str(t).encode("ascii") + b"." + _as_bytes(body)
    return hmac.new(_as_bytes(secret), message, hashlib.sha256).hexdigest()


def sign_webhook(secret: str | bytes, body: str | bytes, t: int | None = None) -> str:
    """The `Podium-Signature` header value for `body`, timestamped `t` (default: now)."""
    if t is None:
        t = int(time.time())
    return f"t={t},v1={compute_signature(secret, body, t)}"


def verify_webhook(
    secret: str | bytes,
    body: str | bytes,
    header: str | None,
    tolerance: float = 300,
    now: float | None = None,
) -> None:
    """Check a delivery's `Podium-Signature` against the raw body; raises WebhookSignatureError.

    The body must be the raw bytes as received (re-serialized JSON would not match). A timestamp
    further than `tolerance` seconds from now is refused, which bounds replays. Several `v1`
    entries are accepted (one may be made with a secret being rotated out).
    """
    if not header:
        raise WebhookSignatureError("missing Podium-Signature header")
    t_value: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            try:
                t_value = int(value)
            except ValueError:
                raise WebhookSignatureError("Podium-Signature timestamp is not an integer") from None
        elif key == "v1":
            signatures.append(value)
    if t_value is None or not signatures:
        raise WebhookSignatureError("Podium-Signature lacks t= or v1=")
    current = time.time() if now is None else now
    if abs(current - t_value) > tolerance:
        raise WebhookSignatureError("Podium-Signature timestamp is outside the tolerance window")
    expected = compute_signature(secret, body, t_value)
    if not any(hmac.compare_digest(expected, candidate) for candidate in signatures):
        raise WebhookSignatureError("Podium-Signature does not match the body")


def parse_webhook(
    secret: str | bytes, body: str | bytes, header: str | None, tolerance: float = 300
) -> WebhookEvent:
    """Verify a delivery and parse it into a WebhookEvent.

    Raises WebhookSignatureError when the signature fails and MalformedResponse when the verified
    body is not an event.
    """
    verify_webhook(secret, body, header, tolerance)
    try:
        payload = json.loads(body)
    except ValueError:
        raise MalformedResponse("webhook body is not JSON") from None
    return WebhookEvent.from_wire(payload)
