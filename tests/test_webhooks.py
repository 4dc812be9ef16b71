"""Podium's webhook signing (`podium-timestamp`, `podium-signature`), and the emulator's deliveries."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests

from podium_client import WebhookSignatureError
from podium_client.corpus import AUCKLAND, ORGANIZATION_UID, SYDNEY
from podium_client.emulator import EmulatorServer
from podium_client.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, compute_signature, sign, verify
from tests.fixtures_emulator import WebhookReceiver, auth, empty_state, make_contact

SECRET = "whsec_test"
BODY = b'{"data":{"after":{}},"metadata":{"eventType":"contact.updated"}}'
NOW = 1_700_000_000.0
CONTACT_EVENTS = [
    "contact.created",
    "contact.updated",
    "contact.deleted",
    "contact.merged",
    "contact.unchanged",
]


# --- signing -------------------------------------------------------------------------------------------


def test_sign_gives_podiums_two_headers_over_timestamp_dot_body() -> None:
    headers = sign(SECRET, BODY, timestamp=1_700_000_000_123)
    assert headers[TIMESTAMP_HEADER] == "1700000000123"
    expected = hmac.new(SECRET.encode(), b"1700000000123." + BODY, hashlib.sha256).hexdigest()
    assert headers[SIGNATURE_HEADER] == expected == compute_signature(SECRET, BODY, 1_700_000_000_123)
    assert abs(int(sign(SECRET, BODY)[TIMESTAMP_HEADER]) / 1000 - time.time()) < 5


@pytest.mark.parametrize("timestamp", [1_700_000_000_000, 1_700_000_000], ids=["milliseconds", "seconds"])
def test_verify_accepts_milliseconds_and_seconds(timestamp: int) -> None:
    headers = {TIMESTAMP_HEADER: str(timestamp), SIGNATURE_HEADER: compute_signature(SECRET, BODY, timestamp)}
    verify(SECRET, BODY, headers, 300, now=NOW)
    verify(SECRET, BODY.decode(), (timestamp, headers[SIGNATURE_HEADER]), 300, now=NOW)
    # Header names in any case, a signature in upper-case hex.
    upper = {"Podium-Timestamp": str(timestamp), "Podium-Signature": headers[SIGNATURE_HEADER].upper()}
    verify(SECRET, BODY, upper, 300, now=NOW)


@pytest.mark.parametrize(
    ("body", "headers", "match"),
    [
        (BODY + b" ", None, "does not match"),
        (BODY, {TIMESTAMP_HEADER: "1700000000000", SIGNATURE_HEADER: "0" * 64}, "does not match"),
        (BODY, {TIMESTAMP_HEADER: "1700000000000"}, "missing"),
        (BODY, {SIGNATURE_HEADER: "ab"}, "missing"),
        (BODY, {TIMESTAMP_HEADER: "soon", SIGNATURE_HEADER: "ab"}, "not a Unix time"),
        (BODY, {TIMESTAMP_HEADER: "-5", SIGNATURE_HEADER: "ab"}, "not a Unix time"),
    ],
    ids=["tampered-body", "wrong-mac", "no-signature", "no-timestamp", "bad-timestamp", "negative"],
)
def test_verify_refuses_bad_deliveries(body: bytes, headers: dict[str, str] | None, match: str) -> None:
    good = sign(SECRET, BODY, timestamp=1_700_000_000_000)
    with pytest.raises(WebhookSignatureError, match=match):
        verify(SECRET, body, good if headers is None else headers, 300, now=NOW)


def test_verify_refuses_a_wrong_secret_and_stale_or_future_timestamps() -> None:
    with pytest.raises(WebhookSignatureError, match="does not match"):
        verify("other", BODY, sign(SECRET, BODY, timestamp=1_700_000_000_000), 300, now=NOW)
    for offset_s in (-301, 301):
        headers = sign(SECRET, BODY, timestamp=int((NOW + offset_s) * 1000))
        with pytest.raises(WebhookSignatureError, match="tolerance"):
            verify(SECRET, BODY, headers, 300, now=NOW)
    verify(SECRET, BODY, sign(SECRET, BODY, timestamp=int((NOW - 299) * 1000)), 300, now=NOW)


# --- the emulator's deliveries ------------------------------------------------------------------------------


def _register(server: EmulatorServer, url: str, **body: Any) -> dict[str, Any]:
    payload = {"url": url, "eventTypes": CONTACT_EVENTS, "organizationUid": ORGANIZATION_UID, **body}
    resp = requests.post(server.url + "/v4/webhooks", json=payload, headers=auth(server), timeout=5)
    assert resp.status_code == 200, resp.text
    webhook: dict[str, Any] = resp.json()["data"]
    return webhook


def _send(server: EmulatorServer, method: str, path: str, body: Any = None) -> requests.Response:
    return requests.request(method, server.url + path, json=body, headers=auth(server), timeout=5)


def test_emulator_delivers_signed_events_for_every_change(
    emulator_factory: Callable[..., EmulatorServer], webhook_receiver: WebhookReceiver
) -> None:
    state = empty_state()
    server = emulator_factory(state)
    _register(server, webhook_receiver.url, secret=SECRET)
    _send(
        server,
        "POST",
        "/v4/contacts",
        {"name": "Maria", "locations": [SYDNEY], "phoneNumber": "+61412345678"},
    )
    _send(server, "PATCH", "/v4/contacts/+61412345678", {"name": "Maria Garcia"})
    _send(server, "PATCH", "/v4/contacts/+61412345678", {"name": "Maria Garcia"})
    _send(server, "DELETE", "/v4/contacts/+61412345678")
    deliveries = webhook_receiver.wait_for(4)
    for d in deliveries:
        verify(SECRET, d.body, d.headers, 300)
        assert d.headers["Content-Type"] == "application/json"
        assert int(d.headers[TIMESTAMP_HEADER]) > 1e12  # milliseconds, as in Podium's example
    events = [json.loads(d.body) for d in deliveries]
    assert [e["metadata"]["eventType"] for e in events] == [
        "contact.created", "contact.updated", "contact.unchanged", "contact.deleted",
    ]  # fmt: skip
    created, updated, unchanged, deleted = events
    assert set(created["data"]) == {"after"} and created["data"]["after"]["name"] == "Maria"
    assert updated["data"]["before"]["name"] == "Maria" and updated["data"]["after"]["name"] == "Maria Garcia"
    assert unchanged["data"]["before"] == unchanged["data"]["after"]
    assert set(deleted["data"]) == {"before"} and deleted["data"]["before"]["name"] == "Maria Garcia"
    meta = created["metadata"]
    assert meta["organizationUid"] == ORGANIZATION_UID and meta["locationUid"] == SYDNEY and meta["timestamp"]
    assert len({e["metadata"]["eventUid"] for e in events}) == 4
    assert server.flush_webhooks(5) and server.stats()["webhooks_sent"] == 4


def test_location_webhooks_get_their_location_only_and_no_secret_means_unsigned(
    emulator_factory: Callable[..., EmulatorServer], webhook_receiver: WebhookReceiver
) -> None:
    state = empty_state()
    state.add_contact(make_contact(locations=[SYDNEY], phones=["0411 000 001"]))
    state.add_contact(make_contact(locations=[AUCKLAND, SYDNEY], phones=["+61 411 000 002"]))
    state.add_contact(make_contact(locations=[AUCKLAND], phones=["021 000 0003"]))
    server = emulator_factory(state)
    payload = {"url": webhook_receiver.url, "eventTypes": ["contact.updated"], "locationUid": AUCKLAND}
    resp = _send(server, "POST", "/v4/webhooks", payload)
    assert resp.json()["data"]["organizationUid"] is None and resp.json()["data"]["secret"] is None
    for identifier in ("+61411000001", "+61411000002", "+64210000003"):
        assert _send(server, "PATCH", f"/v4/contacts/{identifier}", {"name": "Changed"}).status_code == 202
    assert server.flush_webhooks(5)
    bodies = [json.loads(d.body) for d in webhook_receiver.deliveries]
    assert [b["data"]["after"]["phoneNumbers"] for b in bodies] == [["+61 411 000 002"], ["021 000 0003"]]
    assert all(b["metadata"]["locationUid"] == AUCKLAND for b in bodies)
    assert all(SIGNATURE_HEADER not in {k.lower() for k in d.headers} for d in webhook_receiver.deliveries)


def test_a_failing_delivery_is_retried_and_later_events_wait_behind_it(
    emulator_factory: Callable[..., EmulatorServer],
) -> None:
    receiver = WebhookReceiver(fail_first=2).start()
    try:
        state = empty_state()
        state.add_contact(make_contact(phones=["0411 000 001"]))
        server = emulator_factory(state, webhook_retry_base_s=0.05)
        _register(server, receiver.url, secret=SECRET)
        for name in ("First", "Second"):
            _send(server, "PATCH", "/v4/contacts/+61411000001", {"name": name})
        assert server.flush_webhooks(5)
        names = [json.loads(d.body)["data"]["after"]["name"] for d in receiver.deliveries]
        assert names == ["First", "First", "First", "Second"]
        gaps = [
            b.received_at - a.received_at
            for a, b in zip(receiver.deliveries, receiver.deliveries[1:], strict=False)
        ]
        assert gaps[0] >= 0.04 and gaps[1] >= 0.09  # backoff doubles
        stats = server.stats()
        assert (
            stats["webhook_attempts_failed"] == 2
            and stats["webhooks_sent"] == 2
            and stats["webhooks_failed"] == 0
        )
    finally:
        receiver.stop()


def test_a_webhook_failing_every_attempt_is_disabled(emulator_factory: Callable[..., EmulatorServer]) -> None:
    receiver = WebhookReceiver(status=500).start()
    try:
        state = empty_state()
        state.add_contact(make_contact(phones=["0411 000 001"]))
        server = emulator_factory(state, webhook_max_attempts=3)
        webhook = _register(server, receiver.url)
        for name in ("First", "Second"):
            _send(server, "PATCH", "/v4/contacts/+61411000001", {"name": name})
        assert server.flush_webhooks(5)
        assert len(receiver.deliveries) == 3  # the first event three times; the second never went out
        assert _send(server, "GET", f"/v4/webhooks/{webhook['uid']}").json()["data"]["disabled"] is True
        stats = server.stats()
        assert (
            stats["webhooks_disabled"] == 1 and stats["webhooks_failed"] == 2 and stats["webhooks_sent"] == 0
        )
        # Disabled: later events are not queued; re-enabling resumes with new events.
        _send(server, "PATCH", "/v4/contacts/+61411000001", {"name": "Third"})
        receiver.status = 200
        _send(server, "PUT", f"/v4/webhooks/{webhook['uid']}", {"disabled": False})
        _send(server, "PATCH", "/v4/contacts/+61411000001", {"name": "Fourth"})
        assert server.flush_webhooks(5)
        assert [json.loads(d.body)["data"]["after"]["name"] for d in receiver.deliveries[3:]] == ["Fourth"]
    finally:
        receiver.stop()


def test_a_slow_subscriber_never_slows_the_api(emulator_factory: Callable[..., EmulatorServer]) -> None:
    slow = WebhookReceiver(delay=0.3).start()
    try:
        server = emulator_factory(empty_state(), webhook_url=slow.url, webhook_secret=SECRET)
        started = time.monotonic()
        for i in range(3):
            _send(server, "POST", "/v4/contacts", {"name": f"Person {i}", "locations": [SYDNEY]})
        assert time.monotonic() - started < 0.25
        slow.wait_for(3, timeout=5)
    finally:
        slow.stop()


def test_the_webhook_url_shortcut_registers_one_organization_webhook(
    emulator_factory: Callable[..., EmulatorServer], webhook_receiver: WebhookReceiver
) -> None:
    server = emulator_factory(empty_state(), webhook_url=webhook_receiver.url, webhook_secret=SECRET)
    hooks = _send(server, "GET", "/v4/webhooks").json()["data"]
    assert [(h["url"], h["organizationUid"], h["secret"], sorted(h["eventTypes"])) for h in hooks] == [
        (webhook_receiver.url, ORGANIZATION_UID, SECRET, sorted(CONTACT_EVENTS))
    ]
    server.configure(webhook_url=None)
    assert _send(server, "GET", "/v4/webhooks").json()["data"] == []


def test_merges_send_contact_merged_per_duplicate(
    emulator_factory: Callable[..., EmulatorServer], webhook_receiver: WebhookReceiver
) -> None:
    state = empty_state(capabilities="merge")
    a, b, c = (state.add_contact(make_contact(conversations=1)) for _ in range(3))
    server = emulator_factory(state)
    _register(server, webhook_receiver.url, secret=SECRET)
    resp = _send(server, "POST", f"/v4/contacts/{a['uid']}/merge", {"duplicateUids": [b["uid"], c["uid"]]})
    assert resp.status_code == 200
    events = [json.loads(d.body) for d in webhook_receiver.wait_for(3)]
    assert [(e["metadata"]["eventType"], e["data"]["after"]["uid"]) for e in events] == [
        ("contact.merged", b["uid"]), ("contact.merged", c["uid"]), ("contact.updated", a["uid"]),
    ]  # fmt: skip
    assert all(e["data"]["after"]["mergedIntoUid"] == a["uid"] for e in events[:2])


def test_webhook_registration_is_validated(emulator_factory: Callable[..., EmulatorServer]) -> None:
    server = emulator_factory(empty_state())
    for body, field in [
        ({"url": "http://x", "eventTypes": []}, "eventTypes"),
        ({"url": "http://x", "eventTypes": ["contact.exploded"]}, "eventTypes"),
        ({"eventTypes": ["contact.updated"], "organizationUid": ORGANIZATION_UID}, "url"),
        ({"url": "ftp://x", "eventTypes": ["contact.updated"], "organizationUid": ORGANIZATION_UID}, "url"),
        ({"url": "http://x", "eventTypes": ["contact.updated"]}, "organizationUid"),
        (
            {
                "url": "http://x",
                "eventTypes": ["contact.updated"],
                "locationUid": "00000000-0000-4000-8000-0000000000aa",
            },
            "locationUid",
        ),
    ]:
        resp = _send(server, "POST", "/v4/webhooks", body)
        assert resp.status_code == 400 and resp.json()["message"].startswith(field), (body, resp.json())
    server.configure(scopes=["read_locations"])
    denied = _send(server, "POST", "/v4/webhooks", {"url": "http://x", "eventTypes": ["contact.updated"],
                                                    "organizationUid": ORGANIZATION_UID})  # fmt: skip
    assert denied.status_code == 403
    assert _send(server, "GET", "/v4/webhooks").status_code == 200  # no scope needed to list
