"""Podium's webhook signing: `podium-timestamp` and `podium-signature` over `"<timestamp>.<raw body>"`.

Podium signs a delivery to a webhook that has a secret with two headers: `podium-timestamp`, a Unix
time (milliseconds in Podium's example; seconds are accepted too), and `podium-signature`, the hex
HMAC-SHA256 of `"<timestamp>.<raw body>"` keyed with the secret. The timestamp is signed exactly as
the header spells it. Parsing the body is the caller's business: verify the raw bytes first.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

from podium_client.errors import WebhookSignatureError

TIMESTAMP_HEADER = "podium-timestamp"
SIGNATURE_HEADER = "podium-signature"
DEFAULT_TOLERANCE_S = 300.0

# A Unix time in seconds passes 10^11 only in the year 5138: anything larger is milliseconds.
_MILLISECONDS_FROM = 100_000_000_000


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


def compute_signature(secret: str | bytes, body: str | bytes, timestamp: str | int) -> str:
    """Hex HMAC-SHA256 of `"<timestamp>.<raw body>"` keyed with `secret`."""
    message = str(timestamp).encode("ascii") + b"." + _as_bytes(body)
    return hmac.new(_as_bytes(secret), message, hashlib.sha256).hexdigest()


def sign(secret: str | bytes, body: str | bytes, timestamp: int | None = None) -> dict[str, str]:
    """The headers Podium sends with a signed delivery of `body`; `timestamp` in Unix milliseconds
    (default: now)."""
    ts = int(time.time() * 1000) if timestamp is None else int(timestamp)
    return {TIMESTAMP_HEADER: str(ts), SIGNATURE_HEADER: compute_signature(secret, body, ts)}


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    for key, candidate in headers.items():
        if key.lower() == name:
            return candidate
    return None


def verify(
    secret: str | bytes,
    body: str | bytes,
    headers_or_values: Mapping[str, str] | tuple[str | int | None, str | None],
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> None:
    """Check a delivery's signature against its raw body; raises WebhookSignatureError.

    `headers_or_values` is the request's headers (any case) or `(timestamp, signature)`. The
    timestamp may be Unix seconds or milliseconds; one further than `tolerance_s` seconds from
    `now` (default: the clock) is refused, which bounds replays. The comparison is constant-time.
    The body must be the bytes as received: re-serialized JSON would not match.
    """
    if isinstance(headers_or_values, tuple):
        raw_ts, signature = headers_or_values
        timestamp = None if raw_ts is None else str(raw_ts)
    else:
        timestamp = _header(headers_or_values, TIMESTAMP_HEADER)
        signature = _header(headers_or_values, SIGNATURE_HEADER)
    if not timestamp or not signature:
        raise WebhookSignatureError(f"missing {TIMESTAMP_HEADER} or {SIGNATURE_HEADER} header")
    timestamp = timestamp.strip()
    if not timestamp.isascii() or not timestamp.isdigit():
        raise WebhookSignatureError(f"{TIMESTAMP_HEADER} is not a Unix time")
    value = int(timestamp)
    seconds = value / 1000 if value >= _MILLISECONDS_FROM else float(value)
    current = time.time() if now is None else now
    if abs(current - seconds) > tolerance_s:
        raise WebhookSignatureError(f"{TIMESTAMP_HEADER} is outside the tolerance window")
    expected = compute_signature(secret, body, timestamp)
    if not hmac.compare_digest(expected.encode("ascii"), signature.strip().lower().encode("utf-8")):
        raise WebhookSignatureError(f"{SIGNATURE_HEADER} does not match the body")
