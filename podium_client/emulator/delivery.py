"""Webhooks: registration (`/v4/webhooks`) and delivery of contact events, as Podium does it.

A delivery body is `{"data": {"before"?: contact, "after"?: contact}, "metadata": {"eventType",
"eventUid", "timestamp", "organizationUid", "locationUid"}}`, signed with `podium-timestamp` and
`podium-signature` when the webhook has a secret. Deliveries go out from one background thread, so a
request never waits on a subscriber. A failed delivery is retried with exponential backoff
(`retry_base_s` * 2^n, capped) up to `max_attempts` times; meanwhile later events for that webhook
wait behind it (Podium pauses them too); after the last failure the webhook is disabled and its
pending events are dropped.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import requests

from podium_client.emulator.errors import invalid_values, not_found
from podium_client.emulator.shapes import dumps, fmt_us, now_us
from podium_client.webhooks import sign

logger = logging.getLogger("podium_client.emulator")

CONTACT_EVENTS = (
    "contact.created",
    "contact.updated",
    "contact.deleted",
    "contact.merged",
    "contact.unchanged",
)
DEFAULT_MAX_ATTEMPTS = 15
# 15 attempts spaced 1.76 s * 2^n span about 8 hours, like Podium's schedule.
DEFAULT_RETRY_BASE_S = 1.76
DEFAULT_RETRY_CAP_S = 4 * 3600.0


@dataclass
class _Runtime:
    pending: collections.deque[tuple[str, bytes]] = field(default_factory=collections.deque)
    attempts: int = 0
    next_at: float = 0.0
    busy: bool = False


class WebhookHub:
    """The organization's webhooks and the thread that delivers their events."""

    def __init__(
        self,
        organization_uid: Callable[[], str],
        location_exists: Callable[[str], bool],
        new_uid: Callable[[], str],
        count: Callable[[str, int], None],
    ) -> None:
        self._organization_uid = organization_uid
        self._location_exists = location_exists
        self._new_uid = new_uid
        self._count = count
        self.retry_base_s = DEFAULT_RETRY_BASE_S
        self.retry_cap_s = DEFAULT_RETRY_CAP_S
        self.max_attempts = DEFAULT_MAX_ATTEMPTS
        self.timeout_s = 5.0
        self._cond = threading.Condition()
        self._webhooks: dict[str, dict[str, Any]] = {}
        self._runtime: dict[str, _Runtime] = {}
        self._thread: threading.Thread | None = None
        self._stopping = False

    # --- registration (the API) ----------------------------------------------------------------------

    def create(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """`POST /v4/webhooks` (body already schema-valid). `organizationUid` wins over `locationUid`."""
        url = body.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise invalid_values("url", "a webhook needs an http(s) URL")
        org, location = body.get("organizationUid"), body.get("locationUid")
        if org is None and location is None:
            raise invalid_values("organizationUid", "one of organizationUid or locationUid is required")
        if org is not None:
            if org != self._organization_uid():
                raise invalid_values("organizationUid", "not this organization")
            location = None
        elif not isinstance(location, str) or not self._location_exists(location):
            raise invalid_values("locationUid", f"unknown location {location}")
        stamp = fmt_us(now_us())
        uid = self._new_uid()
        webhook: dict[str, Any] = {
            "uid": uid, "url": url, "eventTypes": list(dict.fromkeys(body["eventTypes"])),
            "secret": body.get("secret"), "locationUid": location, "organizationUid": org,
            "disabled": False, "createdAt": stamp, "updatedAt": stamp,
        }  # fmt: skip
        with self._cond:
            self._webhooks[uid] = webhook
            self._runtime[uid] = _Runtime()
            return dict(webhook)

    def get(self, uid: str) -> dict[str, Any]:
        """`GET /v4/webhooks/{uid}`."""
        with self._cond:
            webhook = self._webhooks.get(uid)
            if webhook is None:
                raise not_found("webhook")
            return dict(webhook)

    def webhooks(self) -> list[dict[str, Any]]:
        """`GET /v4/webhooks`."""
        with self._cond:
            return [dict(w) for w in self._webhooks.values()]

    def update(self, uid: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """`PUT /v4/webhooks/{uid}`: fields given change, others stay; `disabled: false` re-enables."""
        if "url" in body and not (
            isinstance(body["url"], str) and body["url"].startswith(("http://", "https://"))
        ):
            raise invalid_values("url", "a webhook needs an http(s) URL")
        with self._cond:
            webhook = self._webhooks.get(uid)
            if webhook is None:
                raise not_found("webhook")
            for key in ("url", "eventTypes", "secret", "disabled"):
                if key in body:
                    webhook[key] = body[key]
            if body.get("disabled") is False:
                runtime = self._runtime[uid]
                runtime.attempts, runtime.next_at = 0, 0.0
            webhook["updatedAt"] = fmt_us(now_us())
            self._cond.notify_all()
            return dict(webhook)

    def delete(self, uid: str) -> dict[str, Any]:
        """`DELETE /v4/webhooks/{uid}`: its pending deliveries are dropped."""
        with self._cond:
            webhook = self._webhooks.pop(uid, None)
            if webhook is None:
                raise not_found("webhook")
            self._runtime.pop(uid, None)
            self._cond.notify_all()
            return webhook

    # --- events ----------------------------------------------------------------------------------------

    def on_event(
        self, event: str, before: bytes | None, after: bytes | None, at_us: int, locations: tuple[str, ...]
    ) -> None:
        """Queue one contact event for every enabled webhook subscribed to it (called in commit order)."""
        if not self._webhooks:
            return  # most writes in tests and benches: nobody listens, build nothing
        event_uid = str(uuid.uuid4())
        parts = []
        if before is not None:
            parts.append(b'"before":' + before)
        if after is not None:
            parts.append(b'"after":' + after)
        data = b'{"data":{' + b",".join(parts) + b'},"metadata":'
        with self._cond:
            for uid, webhook in self._webhooks.items():
                if webhook["disabled"] or event not in webhook["eventTypes"]:
                    continue
                scope = webhook["locationUid"]
                if scope is not None and scope not in locations:
                    continue
                metadata = {
                    "eventType": event, "eventUid": event_uid, "timestamp": fmt_us(at_us),
                    "organizationUid": self._organization_uid(),
                    "locationUid": scope if scope is not None else (locations[0] if locations else None),
                }  # fmt: skip
                self._runtime[uid].pending.append((event_uid, data + dumps(metadata).encode() + b"}"))
            self._cond.notify_all()

    # --- the sender --------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the delivery thread."""
        with self._cond:
            if self._thread is not None:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="podium-emulator-webhooks", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the delivery thread (pending deliveries stay queued)."""
        with self._cond:
            thread, self._thread = self._thread, None
            self._stopping = True
            self._cond.notify_all()
        if thread is not None:
            thread.join(timeout)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until no enabled webhook has a delivery pending; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._outstanding():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def _outstanding(self) -> bool:
        return any(
            (rt.pending or rt.busy) and not self._webhooks[uid]["disabled"]
            for uid, rt in self._runtime.items()
            if uid in self._webhooks
        )

    def _next_job(self) -> tuple[str, str, str | None, bytes] | float | None:
        """A due delivery `(webhook uid, url, secret, body)`, else seconds until one is due, else None."""
        now = time.monotonic()
        soonest: float | None = None
        for uid, webhook in self._webhooks.items():
            runtime = self._runtime[uid]
            if webhook["disabled"] or not runtime.pending or runtime.busy:
                continue
            if runtime.next_at <= now:
                runtime.busy = True
                return uid, webhook["url"], webhook["secret"], runtime.pending[0][1]
            wait = runtime.next_at - now
            soonest = wait if soonest is None else min(soonest, wait)
        return soonest

    def _run(self) -> None:
        session = requests.Session()
        try:
            while True:
                with self._cond:
                    if self._stopping:
                        return
                    job = self._next_job()
                    if not isinstance(job, tuple):
                        self._cond.wait(job)
                        continue
                uid, url, secret, body = job
                ok = self._post(session, url, secret, body)
                with self._cond:
                    self._settle(uid, ok)
                    self._cond.notify_all()
        finally:
            session.close()

    def _post(self, session: requests.Session, url: str, secret: str | None, body: bytes) -> bool:
        headers = {"Content-Type": "application/json"}
        if secret:
            headers.update(sign(secret, body))
        try:
            resp = session.post(url, data=body, headers=headers, timeout=self.timeout_s)
        except requests.RequestException as exc:
            logger.warning("emulator webhook delivery failed (%s)", type(exc).__name__)
            return False
        if 200 <= resp.status_code < 300:
            return True
        logger.warning("emulator webhook delivery answered %d", resp.status_code)
        return False

    def _settle(self, uid: str, ok: bool) -> None:
        runtime = self._runtime.get(uid)
        webhook = self._webhooks.get(uid)
        if runtime is None or webhook is None:
            return  # deleted while its delivery was in flight
        runtime.busy = False
        if ok:
            runtime.pending.popleft()
            runtime.attempts, runtime.next_at = 0, 0.0
            self._count("webhooks_sent", 1)
            return
        runtime.attempts += 1
        self._count("webhook_attempts_failed", 1)
        if runtime.attempts >= self.max_attempts:
            self._count("webhooks_failed", len(runtime.pending))
            self._count("webhooks_disabled", 1)
            runtime.pending.clear()
            runtime.attempts = 0
            webhook["disabled"] = True
            webhook["updatedAt"] = fmt_us(now_us())
            return
        delay = min(self.retry_cap_s, self.retry_base_s * 2 ** (runtime.attempts - 1))
        runtime.next_at = time.monotonic() + delay
