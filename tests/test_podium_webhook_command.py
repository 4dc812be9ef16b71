"""``manage.py podium_webhook register|status|unregister`` against the emulator; the secret at rest; health."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from io import StringIO
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.core.cache import cache
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from dedup.models import AuditEvent, Contact, WebhookRegistration
from dedup.realtime import registration
from dedup.realtime.secrets import decrypt
from dedup.roles import ROLE_NAMES
from podium_client import PodiumClient
from podium_client.corpus import SYDNEY
from podium_client.emulator import EmulatorServer
from tests.fixtures_emulator import empty_state
from tests.realtime_helpers import Capture, post_delivery, seed_locations

pytestmark = pytest.mark.django_db

URL = "https://dedup.example.com/podium/webhooks/"


@pytest.fixture
def server(emulator_factory: Callable[..., EmulatorServer], settings: Any) -> EmulatorServer:
    emulator = emulator_factory(empty_state())
    settings.PODIUM_BASE_URL = emulator.url
    settings.PODIUM_ACCESS_TOKEN = emulator.token
    settings.PODIUM_WEBHOOK_SECRET = ""
    cache.clear()
    seed_locations()
    return emulator


@pytest.fixture
def capture() -> Iterator[Capture]:
    c = Capture()
    yield c
    c.stop()


def run(*args: str) -> str:
    out = StringIO()
    call_command("podium_webhook", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_register_creates_an_organization_webhook_with_a_secret_stored_encrypted(
    server: EmulatorServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        out = run("register", "--url", URL)
    (hook,) = server.hub.webhooks()
    assert hook["url"] == URL and hook["organizationUid"] and hook["locationUid"] is None
    assert sorted(hook["eventTypes"]) == sorted(
        ["contact.created", "contact.updated", "contact.deleted", "contact.merged", "contact.unchanged"]
    )
    secret = hook["secret"]
    assert secret and len(secret) >= 40
    row = WebhookRegistration.objects.get(active=True)
    assert row.podium_uid == hook["uid"] and row.secret_source == WebhookRegistration.STORED
    assert secret not in row.secret_encrypted and decrypt(row.secret_encrypted) == secret
    assert secret not in out and secret not in caplog.text
    assert "stored encrypted (key derived from SECRET_KEY)" in out
    event = AuditEvent.objects.get(event_type="webhook.registered")
    assert secret not in json.dumps(event.payload)


def test_the_key_can_be_a_dedicated_setting_and_another_key_cannot_read_the_secret(
    server: EmulatorServer, settings: Any
) -> None:
    settings.PODIUM_WEBHOOK_ENCRYPTION_KEY = "a-dedicated-key-for-webhook-secrets"
    out = run("register", "--url", URL)
    assert "PODIUM_WEBHOOK_ENCRYPTION_KEY" in out
    assert WebhookRegistration.objects.get(active=True).secret_encrypted
    settings.PODIUM_WEBHOOK_ENCRYPTION_KEY = "another-key"
    status = json.loads(run("status", "--json"))
    assert "does not decrypt" in status["secretProblem"]


def test_a_secret_from_the_environment_is_used_and_not_stored(server: EmulatorServer, settings: Any) -> None:
    settings.PODIUM_WEBHOOK_SECRET = "env-secret-0123456789-0123456789"
    run("register", "--url", URL)
    (hook,) = server.hub.webhooks()
    assert hook["secret"] == "env-secret-0123456789-0123456789"
    row = WebhookRegistration.objects.get(active=True)
    assert row.secret_source == WebhookRegistration.ENVIRONMENT and row.secret_encrypted == ""


def test_registering_again_replaces_the_webhook(server: EmulatorServer) -> None:
    run("register", "--url", URL)
    first = WebhookRegistration.objects.get(active=True)
    run("register", "--url", URL)
    (hook,) = server.hub.webhooks()
    second = WebhookRegistration.objects.get(active=True)
    assert hook["uid"] == second.podium_uid != first.podium_uid
    first.refresh_from_db()
    assert not first.active and first.removed_at is not None


def test_deliveries_signed_with_the_generated_secret_are_accepted(
    server: EmulatorServer, capture: Capture, podium_factory: Callable[..., PodiumClient]
) -> None:
    run("register", "--url", capture.url)
    podium_factory(server).create_contact("Maria Garcia", [SYDNEY], phone_number="+61412345678")
    (delivery,) = capture.wait_for(1)
    assert post_delivery(Client(), delivery.body, delivery.headers).status_code == 202
    assert Contact.objects.get().name == "Maria Garcia"


def test_status_reports_podium_disabling_the_webhook(server: EmulatorServer) -> None:
    run("register", "--url", URL)
    row = WebhookRegistration.objects.get(active=True)
    server.hub.update(row.podium_uid, {"disabled": True})
    out = run("status")
    assert "Disabled by Podium" in out
    assert WebhookRegistration.objects.get(active=True).podium_state == WebhookRegistration.DISABLED
    assert json.loads(run("status", "--json"))["podiumState"] == "disabled"


def test_unregister_removes_it_at_podium(server: EmulatorServer) -> None:
    run("register", "--url", URL)
    out = run("unregister")
    assert "removed webhook" in out and server.hub.webhooks() == []
    assert not WebhookRegistration.objects.filter(active=True).exists()
    assert run("unregister").strip() == "no webhook was registered"
    assert "no webhook registered" in run("status")


def test_a_url_that_is_not_the_receiver_is_refused(server: EmulatorServer) -> None:
    with pytest.raises(CommandError, match="podium/webhooks"):
        run("register", "--url", "https://dedup.example.com/elsewhere")
    with pytest.raises(CommandError, match="http"):
        run("register", "--url", "ftp://dedup.example.com/podium/webhooks/")
    assert server.hub.webhooks() == []


def test_the_health_page_shows_registration_deliveries_and_refusals(
    server: EmulatorServer, capture: Capture, podium_factory: Callable[..., PodiumClient]
) -> None:
    admin = User.objects.create_user(username="boss", password="pw-123456789")
    admin.groups.add(Group.objects.get(name=ROLE_NAMES["admin"]))
    client = Client()
    client.force_login(admin)
    page = client.get("/webhooks/").content.decode()
    assert "Not registered" in page and "incremental scan" in page
    run("register", "--url", capture.url)
    podium_factory(server).create_contact("Maria Garcia", [SYDNEY], phone_number="+61412345678")
    (delivery,) = capture.wait_for(1)
    post_delivery(Client(), delivery.body, delivery.headers)
    post_delivery(Client(), delivery.body + b" ", delivery.headers)  # tampered: refused
    state = registration.health()
    assert state.receiving and state.deliveries == 1 and state.refused == 1 and state.failures == 0
    page = client.get("/webhooks/").content.decode()
    assert "Receiving" in page and "1 bad_signature" in page and "contact.created" in page
    WebhookRegistration.objects.filter(active=True).update(podium_state=WebhookRegistration.DISABLED)
    assert "Podium disabled it" in client.get("/webhooks/").content.decode()
    assert client.post("/webhooks/check/").status_code == 302
    assert WebhookRegistration.objects.get(active=True).podium_state == WebhookRegistration.ENABLED


@pytest.mark.parametrize("role", ["manager", "auditor"])
def test_only_admins_see_the_webhook_page(server: EmulatorServer, role: str) -> None:
    user = User.objects.create_user(username="someone", password="pw-123456789")
    user.groups.add(Group.objects.get(name=ROLE_NAMES[role]))
    client = Client()
    client.force_login(user)
    assert client.get("/webhooks/").status_code == 403
    assert client.post("/webhooks/check/").status_code == 403


def test_make_run_points_the_emulators_webhook_at_the_local_server(server: EmulatorServer) -> None:
    from dedup.management.commands.run_product import Command

    command = Command(stdout=StringIO(), stderr=StringIO())
    command._register_webhook(8123)
    (hook,) = server.hub.webhooks()
    assert hook["url"] == "http://127.0.0.1:8123/podium/webhooks/"
    assert WebhookRegistration.objects.get(active=True).registered_by == "system:make-run"
    command._register_webhook(8123)  # a restart replaces it
    assert len(server.hub.webhooks()) == 1
