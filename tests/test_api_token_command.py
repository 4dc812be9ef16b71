"""``manage.py api_token create|list|revoke``: the token printed once, hashed at rest, audited."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from dedup.api_tokens import hash_token
from dedup.lookup import forget_locations
from dedup.models import ApiToken, AuditEvent
from podium_client.corpus import AUCKLAND, SYDNEY
from tests.realtime_helpers import seed_locations

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _locations() -> None:
    forget_locations()
    seed_locations()


def run(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("api_token", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_create_prints_the_token_once_and_stores_only_its_hash() -> None:
    out, err = run("create", "--name", "Booking widget", "--locations", SYDNEY, AUCKLAND)
    token = out.strip()
    assert token.startswith("pdk_") and "\n" not in token
    assert "shown once" in err
    row = ApiToken.objects.get()
    assert row.name == "Booking widget" and row.location_uids == sorted([SYDNEY, AUCKLAND])
    assert row.token_hash == hash_token(token)
    assert not ApiToken.objects.filter(token_hash=token).exists()
    listing, _ = run("list")
    assert token not in listing and row.prefix in listing and "active" in listing
    response = Client().get(
        f"/api/v1/lookup?phone=0412345678&location={SYDNEY}", HTTP_AUTHORIZATION=f"Bearer {token}"
    )
    assert response.status_code == 200


def test_create_json() -> None:
    out, _ = run("create", "--name", "CRM", "--locations", f"{SYDNEY},{AUCKLAND}", "--json")
    data = json.loads(out)
    assert (
        data["name"] == "CRM"
        and data["token"].startswith("pdk_")
        and data["locations"] == sorted([SYDNEY, AUCKLAND])
    )
    listed = json.loads(run("list", "--json")[0])
    assert listed[0]["id"] == data["id"] and "token" not in listed[0]


def test_revoke_stops_the_token_and_is_audited() -> None:
    token = json.loads(run("create", "--name", "CRM", "--locations", SYDNEY, "--json")[0])
    out, _ = run("revoke", str(token["id"]))
    assert "revoked" in out
    assert "was revoked already" in run("revoke", str(token["id"]))[0]
    response = Client().get(
        f"/api/v1/lookup?phone=0412345678&location={SYDNEY}", HTTP_AUTHORIZATION=f"Bearer {token['token']}"
    )
    assert response.status_code == 401
    events = list(
        AuditEvent.objects.filter(event_type__startswith="api_token.").values_list("event_type", "actor")
    )
    assert events == [("api_token.created", "worker:cli"), ("api_token.revoked", "worker:cli")]
    assert "revoked" in run("list")[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["create", "--name", "X", "--locations", "nowhere"], "no such location"),
        (["create", "--name", "  ", "--locations", SYDNEY], "name"),
        (["revoke", "999"], "no token #999"),
    ],
)
def test_mistakes_are_command_errors(args: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        run(*args)
    assert not ApiToken.objects.exists()
