"""Webhook signing and verification, and the emulator's signed deliveries to a real receiver."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable

import pytest

from podium_client import Channel, PodiumClient, WebhookSignatureError
from podium_client.emulator import EmulatorServer
from podium_client.webhooks import (
    SIGNATURE_HEADER,
    compute_signature,
    parse_webhook,
    sign_webhook,
    verify_webhook,
)
from tests.fixtures_emulator import WebhookReceiver, empty_state, make_contact

SECRET = "whsec_test"
BODY = b'{"id":"evt_1","type":"contact.updated"}'


def test_signature_format_and_value() -> None:
    header = sign_webhook(SECRET, BODY, t=1_700_000_000)
    assert header == f"t=1700000000,v1={compute_signature(SECRET, BODY, 1_700_000_000)}"
    expected = hmac.new(SECRET.encode(), b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert header.endswith(expected)


def test_verify_accepts_a_good_signature() -> None:
    now = time.time()
    verify_webhook(SECRET, BODY, sign_webhook(SECRET, BODY, int(now)), now=now)
    verify_webhook(SECRET, BODY.decode(), sign_webhook(SECRET, BODY), tolerance=300)


@pytest.mark.parametrize(
    ("body", "header"),
    [
        (BODY + b" ", None),
        (BODY, "t=1,v1=" + "0" * 64),
        (BODY, ""),
        (BODY, "v1=abc"),
        (BODY, "t=notanumber,v1=abc"),
        (BODY, "garbage"),
    ],
    ids=["tampered-body", "wrong-mac", "empty", "no-timestamp", "bad-timestamp", "garbage"],
)
def test_verify_refuses_bad_deliveries(body: bytes, header: str | None) -> None:
    good = sign_webhook(SECRET, BODY)
    with pytest.raises(WebhookSignatureError):
        verify_webhook(SECRET, body, good if header is None else header)


def test_verify_refuses_wrong_secret_and_stale_timestamps() -> None:
    with pytest.raises(WebhookSignatureError, match="does not match"):
        verify_webhook("other", BODY, sign_webhook(SECRET, BODY))
    stale = sign_webhook(SECRET, BODY, t=int(time.time()) - 301)
    with pytest.raises(WebhookSignatureError, match="tolerance"):
        verify_webhook(SECRET, BODY, stale)


def test_verify_accepts_any_of_several_signatures() -> None:
    t = int(time.time())
    header = f"t={t},v1={compute_signature('old-secret', BODY, t)},v1={compute_signature(SECRET, BODY, t)}"
    verify_webhook(SECRET, BODY, header)


def test_emulator_delivers_signed_events_for_every_mutation(
    emulator_factory: Callable[..., EmulatorServer],
    podium_factory: Callable[..., PodiumClient],
    webhook_receiver: WebhookReceiver,
) -> None:
    state = empty_state()
    state.add_contact(make_contact("ct_0000001_aaaaaa", phones=["0412 345 678"]))
    server = emulator_factory(state, webhook_url=webhook_receiver.url, webhook_secret=SECRET)
    client = podium_factory(server)

    created = client.create_contact("loc_sydney", name="Maria", channels=[Channel.phone("+61412345678")])
    client.update_contact(created.uid, {"smsOptOut": True})
    client.delete_contact(created.uid)
    client.restore_contact(created.uid)
    client.merge("ct_0000001_aaaaaa", [created.uid])

    deliveries = webhook_receiver.wait_for(6)
    events = [parse_webhook(SECRET, d.body, d.headers[SIGNATURE_HEADER]) for d in deliveries]
    assert [e.type for e in events] == [
        "contact.created",
        "contact.updated",
        "contact.deleted",
        "contact.restored",
        "contact.merged",
        "contact.updated",
    ]
    assert all(d.headers["Content-Type"] == "application/json" for d in deliveries)
    assert len({e.id for e in events}) == 6
    created_event, updated, deleted, restored, merged, primary_updated = events
    assert created_event.before is None and created_event.after is not None
    assert created_event.after.uid == created.uid
    assert updated.before is not None and not updated.before.sms_opt_out
    assert updated.after is not None and updated.after.sms_opt_out
    assert deleted.after is not None and deleted.after.is_deleted
    assert restored.after is not None and not restored.after.is_deleted
    assert merged.after is not None and merged.after.merged_into_uid == "ct_0000001_aaaaaa"
    assert merged.after.uid == created.uid
    assert primary_updated.after is not None and primary_updated.after.uid == "ct_0000001_aaaaaa"
    # The raw body is the wire shape; re-serializing it would not verify, so consumers keep it raw.
    assert json.loads(deliveries[0].body)["data"]["before"] is None
    assert server.flush_webhooks(5)
    assert server.stats()["webhooks_sent"] == 6


def test_a_slow_subscriber_never_slows_the_api(
    emulator_factory: Callable[..., EmulatorServer], podium_factory: Callable[..., PodiumClient]
) -> None:
    slow = WebhookReceiver(delay=0.3).start()
    try:
        server = emulator_factory(empty_state(), webhook_url=slow.url, webhook_secret=SECRET)
        client = podium_factory(server)
        started = time.monotonic()
        for i in range(3):
            client.create_contact("loc_sydney", name=f"Person {i}")
        assert time.monotonic() - started < 0.25
        slow.wait_for(3, timeout=5)
    finally:
        slow.stop()


def test_failed_deliveries_are_retried_then_counted(
    emulator_factory: Callable[..., EmulatorServer], podium_factory: Callable[..., PodiumClient]
) -> None:
    failing = WebhookReceiver(status=500).start()
    try:
        server = emulator_factory(empty_state(), webhook_url=failing.url, webhook_secret=SECRET)
        podium_factory(server).create_contact("loc_sydney", name="Person")
        failing.wait_for(3)
        assert server.flush_webhooks(5)
        assert server.stats()["webhooks_failed"] == 1
        # Redeliveries are the same event: consumers deduplicate by id.
        ids = {json.loads(d.body)["id"] for d in failing.deliveries}
        assert len(ids) == 1
    finally:
        failing.stop()


def test_no_webhooks_without_a_url(emulator: EmulatorServer, podium: PodiumClient) -> None:
    podium.create_contact("loc_sydney", name="Quiet")
    assert emulator.flush_webhooks(1)
    assert emulator.stats()["webhooks_sent"] == 0
