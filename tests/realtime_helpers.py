"""Helpers of the real-time tests (webhooks, lookup API): delivery bodies, signing, a capturing server.

``event_body`` builds a delivery body in the emulator's shape (``{"data": {before, after}, "metadata":
{eventType, eventUid, timestamp, organizationUid, locationUid}}``); ``Capture`` is a tiny HTTP server an
emulator's webhook points at, keeping each delivery's raw bytes and headers so a test can replay Podium's
real, signed deliveries to the receiver; ``post_delivery`` posts one to ``/podium/webhooks/``.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.test import Client

from dedup.indexing import IndexWriter
from dedup.models import Policy
from podium_client.corpus import LOCATIONS, ORGANIZATION_UID
from podium_client.types import Location as PodiumLocation
from podium_client.webhooks import sign
from tests.audit_guard import lift_for_the_flush

SECRET = "test-webhook-secret-0123456789abcdef"
RECEIVER = "/podium/webhooks/"


def seed_locations() -> None:
    """The demo locations in the index (Sydney and Burleigh AU, Auckland NZ, the pop-up without country)."""
    IndexWriter(Policy.current().default_region).ensure_locations(
        PodiumLocation.from_wire(loc) for loc in LOCATIONS
    )


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_body(
    event_type: str,
    *,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    event_uid: str | None = "auto",
    at: datetime | None = None,
) -> bytes:
    """A contact delivery's raw body, as the emulator sends it."""
    data: dict[str, Any] = {}
    if before is not None:
        data["before"] = before
    if after is not None:
        data["after"] = after
    contact = after or before or {}
    locations = contact.get("locations") or [{}]
    metadata: dict[str, Any] = {
        "eventType": event_type,
        "timestamp": stamp(at or datetime.now(UTC)),
        "organizationUid": ORGANIZATION_UID,
        "locationUid": locations[0].get("uid"),
    }
    if event_uid is not None:
        metadata["eventUid"] = str(uuid.uuid4()) if event_uid == "auto" else event_uid
    return json.dumps({"data": data, "metadata": metadata}, separators=(",", ":")).encode()


def signed_headers(body: bytes, secret: str = SECRET, timestamp: int | None = None) -> dict[str, str]:
    return sign(secret, body, timestamp)


def post_delivery(client: Client, body: bytes, headers: dict[str, str] | None = None) -> Any:
    """POST a delivery to the receiver with Podium's headers (signed with SECRET unless given)."""
    headers = signed_headers(body) if headers is None else headers
    sent = {name: value for name, value in headers.items() if name.lower() not in ("content-type", "content-length", "host")}
    return client.post(RECEIVER, data=body, content_type="application/json", headers=sent)


@dataclass
class Captured:
    body: bytes
    headers: dict[str, str]


class Capture:
    """Records the deliveries an emulator's webhook makes (answers 200)."""

    def __init__(self) -> None:
        self.deliveries: list[Captured] = []
        self._cond = threading.Condition()
        capture = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return None

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with capture._cond:
                    capture.deliveries.append(Captured(body, dict(self.headers.items())))
                    capture._cond.notify_all()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/podium/webhooks/"

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Captured]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.deliveries) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"expected {count} deliveries, got {len(self.deliveries)}")
                self._cond.wait(left)
            return list(self.deliveries)

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()




@pytest.fixture
def audit_flushable(transactional_db: None) -> Iterator[None]:
    """Let pytest-django empty PostgreSQL after a transactional (live-server) test despite the audit guard.

    Migration 0002 refuses TRUNCATE of audit events, which is how the test database is emptied after a
    transactional test: the guard is switched off just for that flush and back on right after it (the
    flush emits ``post_migrate``), so every other test runs with it.
    """
    yield
    lift_for_the_flush()
