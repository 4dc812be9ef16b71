"""The webhook receiver against the emulator's real deliveries: signatures, replays, order, bursts, limits.

Deliveries are captured as the emulator sends them (signed with its webhook's secret) and replayed to
``POST /podium/webhooks/``; one test points the emulator at a live test server instead. Background tasks
run inline in tests, so a stored delivery is applied before the receiver answers.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import pytest
from django.core.cache import cache
from django.test import Client

from dedup.models import Cluster, Contact, WebhookDelivery, WebhookRefusal
from dedup.realtime import receiver
from dedup.realtime.apply import drain
from podium_client import PodiumClient
from podium_client.corpus import ORGANIZATION_UID, SYDNEY
from podium_client.emulator import EmulatorServer
from podium_client.types import CONTACT_EVENT_TYPES
from tests.fixtures_emulator import empty_state
from tests.realtime_helpers import (  # noqa: F401  (audit_flushable is a fixture)
    SECRET,
    Capture,
    audit_flushable,
    post_delivery,
    seed_locations,
    signed_headers,
)

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _setup(settings: Any) -> Iterator[None]:
    settings.PODIUM_WEBHOOK_SECRET = SECRET
    cache.clear()
    seed_locations()
    yield
    cache.clear()


@pytest.fixture
def capture() -> Iterator[Capture]:
    server = Capture()
    yield server
    server.stop()


@pytest.fixture
def podium_with_webhook(
    emulator_factory: Callable[..., EmulatorServer],
    podium_factory: Callable[..., PodiumClient],
    capture: Capture,
) -> tuple[EmulatorServer, PodiumClient]:
    """An emulator with the four demo locations, no contacts, and a webhook (secret SECRET) to `capture`."""
    server = emulator_factory(empty_state())
    client = podium_factory(server)
    client.create_webhook(capture.url, sorted(CONTACT_EVENT_TYPES), SECRET, organization_uid=ORGANIZATION_UID)
    return server, client


def create_in_podium(client: PodiumClient, name: str, phone: str) -> None:
    client.create_contact(name, [SYDNEY], phone_number=phone)


def test_a_real_delivery_with_a_good_signature_is_stored_applied_and_answered_2xx(
    podium_with_webhook: tuple[EmulatorServer, PodiumClient], capture: Capture
) -> None:
    _server, podium = podium_with_webhook
    create_in_podium(podium, "Maria Garcia", "+61412345678")
    (delivery,) = capture.wait_for(1)
    assert "podium-signature" in {k.lower() for k in delivery.headers}
    response = post_delivery(Client(), delivery.body, delivery.headers)
    assert response.status_code == 202
    row = WebhookDelivery.objects.get()
    assert row.delivery_key == "event:" + json.loads(delivery.body)["metadata"]["eventUid"]
    assert row.status == WebhookDelivery.DONE and row.event_type == "contact.created"
    assert Contact.objects.get().name == "Maria Garcia"


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param(
            lambda body, headers: (body, signed_headers(body, secret="not-the-secret")), id="wrong-secret"
        ),
        pytest.param(lambda body, headers: (body.replace(b"Maria", b"Mario"), headers), id="tampered-body"),
        pytest.param(
            lambda body, headers: (body, signed_headers(body, timestamp=int((time.time() - 600) * 1000))),
            id="stale",
        ),
        pytest.param(
            lambda body, headers: (body, signed_headers(body, timestamp=int((time.time() + 600) * 1000))),
            id="future",
        ),
        pytest.param(lambda body, headers: (body, {}), id="unsigned"),
        pytest.param(
            lambda body, headers: (body, {**headers, "podium-signature": "00" * 32}), id="signature-of-zeros"
        ),
    ],
)
def test_a_delivery_that_does_not_verify_is_refused_401_counted_and_logged_without_its_body(
    podium_with_webhook: tuple[EmulatorServer, PodiumClient],
    capture: Capture,
    spoil: Callable[[bytes, dict[str, str]], tuple[bytes, dict[str, str]]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    _server, podium = podium_with_webhook
    create_in_podium(podium, "Maria Garcia", "+61412345678")
    (delivery,) = capture.wait_for(1)
    body, headers = spoil(delivery.body, {k.lower(): v for k, v in delivery.headers.items()})
    with caplog.at_level(logging.INFO, logger="dedup.webhooks"):
        response = post_delivery(Client(), body, headers)
    assert response.status_code == 401
    assert not WebhookDelivery.objects.exists() and not Contact.objects.exists()
    assert sum(WebhookRefusal.objects.values_list("count", flat=True)) == 1
    logged = caplog.text
    assert "refused" in logged
    assert "Maria" not in logged and "412345678" not in logged and "Mario" not in logged


def test_timestamps_in_seconds_are_accepted_too() -> None:
    from tests.fixtures_emulator import make_contact
    from tests.realtime_helpers import event_body

    body = event_body("contact.created", after=make_contact(uid="u-sec"))
    response = post_delivery(Client(), body, signed_headers(body, timestamp=int(time.time())))
    assert response.status_code == 202
    assert Contact.objects.filter(uid="u-sec").exists()


def test_a_replayed_delivery_is_answered_200_and_not_applied_again(
    podium_with_webhook: tuple[EmulatorServer, PodiumClient], capture: Capture
) -> None:
    _server, podium = podium_with_webhook
    create_in_podium(podium, "Maria Garcia", "+61412345678")
    (delivery,) = capture.wait_for(1)
    client = Client()
    assert post_delivery(client, delivery.body, delivery.headers).status_code == 202
    indexed_at = Contact.objects.get().indexed_at
    with mock.patch("dedup.realtime.apply.IndexWriter.write") as write:
        again = post_delivery(client, delivery.body, delivery.headers)
        # Re-signed now (a fresh timestamp): still the same event, still not applied again.
        fresh = post_delivery(client, delivery.body, signed_headers(delivery.body))
    assert again.status_code == 200 and again.json() == {"status": "duplicate"}
    assert fresh.status_code == 200
    write.assert_not_called()
    assert WebhookDelivery.objects.count() == 1
    assert Contact.objects.get().indexed_at == indexed_at


def test_duplicates_without_an_event_uid_are_recognised_by_their_body() -> None:
    from tests.fixtures_emulator import make_contact
    from tests.realtime_helpers import event_body

    body = event_body("contact.created", after=make_contact(uid="u-nouid"), event_uid=None)
    client = Client()
    assert post_delivery(client, body).status_code == 202
    assert post_delivery(client, body).status_code == 200
    (row,) = WebhookDelivery.objects.all()
    assert row.delivery_key.startswith("sha256:")


def test_an_out_of_order_pair_of_real_deliveries_keeps_the_newer(
    podium_with_webhook: tuple[EmulatorServer, PodiumClient], capture: Capture
) -> None:
    _server, podium = podium_with_webhook
    create_in_podium(podium, "Maria Garcia", "+61412345678")
    podium.update_contact("+61412345678", {"name": "Maria First Edit"})
    podium.update_contact("+61412345678", {"name": "Maria Second Edit"})
    created, first, second = capture.wait_for(3)
    client = Client()
    for delivery in (created, second, first):  # the second edit arrives before the first
        assert post_delivery(client, delivery.body, delivery.headers).status_code == 202
    assert Contact.objects.get().name == "Maria Second Edit"
    statuses = dict(WebhookDelivery.objects.values_list("delivery_key", "status"))
    first_key = "event:" + json.loads(first.body)["metadata"]["eventUid"]
    assert statuses[first_key] == WebhookDelivery.STALE


def test_a_real_deletion_is_applied_and_the_cluster_goes(
    podium_with_webhook: tuple[EmulatorServer, PodiumClient], capture: Capture
) -> None:
    _server, podium = podium_with_webhook
    create_in_podium(podium, "Maria Garcia", "+61412345678")
    podium.create_contact("Maria Garcia", [SYDNEY], email="maria@example.com")
    # A second contact with the same number, spelled nationally (the emulator's upsert would merge an
    # identical E.164, so the second gets the number by an edit in Podium).
    deliveries = capture.wait_for(2)
    uid_b = json.loads(deliveries[1].body)["data"]["after"]["uid"]
    podium_edit = {"add_phone": "0412 345 678"}
    _server.state.podium_edit(uid_b, podium_edit)
    podium.delete_contact("maria@example.com")
    deliveries = capture.wait_for(4)
    client = Client()
    for delivery in deliveries[:3]:
        post_delivery(client, delivery.body, delivery.headers)
    assert Cluster.objects.filter(status=Cluster.OPEN).count() == 1
    post_delivery(client, deliveries[3].body, deliveries[3].headers)
    assert json.loads(deliveries[3].body)["metadata"]["eventType"] == "contact.deleted"
    assert Contact.objects.get(uid=uid_b).deleted_at is not None
    assert not Cluster.objects.filter(status=Cluster.OPEN).exists()


def test_a_burst_of_1000_real_deliveries_none_lost_each_applied_once(
    podium_with_webhook: tuple[EmulatorServer, PodiumClient], capture: Capture, settings: Any
) -> None:
    # The test client posts faster than Podium's one-at-a-time sender: lift the flood limit.
    settings.PODIUM_WEBHOOK_RATE_LIMIT = "100000/m"
    server, _podium = podium_with_webhook
    # 1,000 contacts written in Podium: 500 numbers, each held by two contacts (500 clusters to find).
    for i in range(1000):
        server.state.create({"name": f"Person {i // 2}", "locations": [SYDNEY], "email": f"p{i}@example.com"})
    deliveries = capture.wait_for(1000, timeout=60)
    for i, delivery in enumerate(deliveries):
        uid = json.loads(delivery.body)["data"]["after"]["uid"]
        server.state.podium_edit(uid, {"add_phone": f"0412 {i // 2:06d}"})
    edits = capture.wait_for(2000, timeout=60)[1000:]
    client = Client()
    # The worker is busy elsewhere while the burst arrives: the receiver only stores and answers.
    with mock.patch.object(receiver, "enqueue_drain") as enqueue:
        started = time.perf_counter()
        answers = [post_delivery(client, d.body, d.headers).status_code for d in [*deliveries, *edits]]
        elapsed = time.perf_counter() - started
    assert answers == [202] * 2000
    assert enqueue.call_count == 1  # one drain, waiting, reads them all
    assert elapsed / 2000 < 0.05, f"{elapsed / 2000 * 1000:.1f} ms per delivery"
    summary = drain()
    assert summary.deliveries == 2000 and summary.applied == 2000 and summary.failed == 0
    assert Contact.objects.count() == 1000
    assert WebhookDelivery.objects.filter(status=WebhookDelivery.DONE).count() == 2000
    assert Cluster.objects.filter(status=Cluster.OPEN).count() == 500
    # Podium repeats them all: nothing is stored or applied twice.
    with mock.patch.object(receiver, "enqueue_drain") as enqueue:
        repeats = [post_delivery(client, d.body, d.headers).status_code for d in deliveries[:200]]
    assert repeats == [200] * 200 and enqueue.call_count == 0
    assert drain().deliveries == 0
    assert WebhookDelivery.objects.count() == 2000


def test_a_body_over_the_limit_is_refused_413(settings: Any) -> None:
    settings.PODIUM_WEBHOOK_MAX_BODY_BYTES = 1000
    body = b'{"data": {}, "metadata": {"eventType": "contact.created", "pad": "' + b"x" * 2000 + b'"}}'
    response = post_delivery(Client(), body)
    assert response.status_code == 413
    assert not WebhookDelivery.objects.exists()
    assert WebhookRefusal.objects.get().reason == WebhookRefusal.TOO_LARGE


def test_over_the_rate_limit_is_refused_429_with_retry_after(settings: Any) -> None:
    from tests.fixtures_emulator import make_contact
    from tests.realtime_helpers import event_body

    settings.PODIUM_WEBHOOK_RATE_LIMIT = "3/m"
    client = Client()
    codes = [
        post_delivery(client, event_body("contact.created", after=make_contact())).status_code
        for _ in range(5)
    ]
    assert codes == [202, 202, 202, 429, 429]
    refused = post_delivery(client, event_body("contact.created", after=make_contact()))
    assert 1 <= int(refused["Retry-After"]) <= 60
    assert WebhookRefusal.objects.get(reason=WebhookRefusal.RATE_LIMITED).count == 3


def test_without_any_secret_every_delivery_is_refused(settings: Any) -> None:
    from tests.fixtures_emulator import make_contact
    from tests.realtime_helpers import event_body

    settings.PODIUM_WEBHOOK_SECRET = ""
    response = post_delivery(Client(), event_body("contact.created", after=make_contact()))
    assert response.status_code == 401
    assert not WebhookDelivery.objects.exists()


def test_get_is_not_allowed() -> None:
    assert Client().get("/podium/webhooks/").status_code == 405


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("audit_flushable")
def test_the_emulator_delivers_to_a_live_server_and_the_review_queue_shows_the_new_cluster(
    live_server: Any,
    emulator_factory: Callable[..., EmulatorServer],
    podium_factory: Callable[..., PodiumClient],
) -> None:
    seed_locations()
    server = emulator_factory(empty_state())
    podium = podium_factory(server)
    podium.create_webhook(
        live_server.url + "/podium/webhooks/",
        sorted(CONTACT_EVENT_TYPES),
        SECRET,
        organization_uid=ORGANIZATION_UID,
    )
    podium.create_contact("Maria Garcia", [SYDNEY], phone_number="+61412345678")
    identifier = podium.create_contact("Maria Garcia", [SYDNEY], email="maria@example.com")
    assert identifier is not None
    server.state.podium_edit(podium.get_contact(identifier).uid, {"add_phone": "0412 345 678"})
    assert server.flush_webhooks(timeout=20)
    assert server.stats()["webhooks_sent"] == 3
    (cluster,) = Cluster.objects.filter(status=Cluster.OPEN)
    assert cluster.member_count == 2 and cluster.natural_keys == ["+61412345678"]


def test_a_burst_enqueues_one_drain_while_one_is_waiting_and_a_new_one_once_it_started() -> None:
    from tests.fixtures_emulator import make_contact
    from tests.realtime_helpers import event_body

    client = Client()
    with mock.patch("django_q.tasks.async_task") as async_task:
        for _ in range(5):
            assert (
                post_delivery(client, event_body("contact.created", after=make_contact())).status_code == 202
            )
        assert async_task.call_count == 1  # the queued drain will read all five
        drain()
        assert Contact.objects.count() == 5
        post_delivery(client, event_body("contact.created", after=make_contact()))
        assert async_task.call_count == 2  # stored after the drain started: a drain of its own


def test_a_lost_enqueue_is_caught_up_by_the_sweep() -> None:
    from datetime import timedelta

    from django.utils import timezone

    from dedup.realtime.apply import sweep
    from tests.fixtures_emulator import make_contact
    from tests.realtime_helpers import event_body

    with mock.patch("django_q.tasks.async_task", side_effect=ConnectionError("broker down")):
        assert (
            post_delivery(
                Client(), event_body("contact.created", after=make_contact(uid="u-lost"))
            ).status_code
            == 202
        )
    assert WebhookDelivery.objects.get().status == WebhookDelivery.RECEIVED
    sweep(now=timezone.now() + timedelta(minutes=1))
    assert WebhookDelivery.objects.get().status == WebhookDelivery.DONE
    assert Contact.objects.filter(uid="u-lost").exists()
