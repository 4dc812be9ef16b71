"""The lookup API: every spelling finds the same contact, tokens are scoped and revocable, bad input is 400."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from django.contrib.auth.models import Group, User
from django.core.cache import cache
from django.test import Client

from dedup.api_tokens import create_token, hash_token, revoke_token
from dedup.detection import detect
from dedup.indexing import IndexWriter, prepare_contact
from dedup.lookup import forget_locations
from dedup.models import ApiToken, AuditEvent, Location, LocationGrant, Policy
from dedup.roles import ROLE_NAMES
from podium_client.corpus import AUCKLAND, BURLEIGH, SYDNEY
from podium_client.types import Contact as PodiumContact
from tests.fixtures_emulator import make_contact
from tests.realtime_helpers import seed_locations

pytestmark = pytest.mark.django_db

URL = "/api/v1/lookup"


@pytest.fixture(autouse=True)
def _setup() -> Iterator[None]:
    cache.clear()
    forget_locations()
    seed_locations()
    yield
    cache.clear()


def index(*contacts: dict[str, Any]) -> None:
    writer = IndexWriter(Policy.current().default_region)
    prepared = []
    for wire in contacts:
        contact = PodiumContact.from_wire(wire)
        prepared.append(prepare_contact(contact, writer.region_for(contact.location_uid or "")))
    writer.write(prepared)


def token_for(*locations: str, name: str = "Front desk") -> str:
    return create_token(name, list(locations), actor="worker:test").token


def get(token: str | None, **params: str) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    query = "&".join(f"{k}={quote(v)}" for k, v in params.items())
    return Client().get(f"{URL}?{query}", headers=headers)


@pytest.fixture
def maria() -> None:
    """Two Marias at Sydney on one number (a cluster), another contact on it at Auckland."""
    index(
        make_contact(uid="s-maria-1", name="Maria Garcia", phones=("0412 345 678",), emails=("maria@example.com",),
                     updated_at="2026-05-01T10:00:00Z"),
        make_contact(uid="s-maria-2", name="Maria Garcia", phones=("+61 412 345 678",),
                     updated_at="2026-05-02T10:00:00Z"),
        make_contact(uid="a-maria", name="Maria G", locations=(AUCKLAND,), phones=("+61412345678",)),
    )  # fmt: skip
    detect()


SPELLINGS = ["0412 345 678", "+61 412 345 678", "(04) 1234 5678", "0412-345-678", "+61412345678", "61412345678",
             "0011 61 412 345 678", " 61412345678"]  # fmt: skip


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_every_spelling_of_a_number_finds_the_same_contact_and_cluster(maria: None, spelling: str) -> None:
    token = token_for(SYDNEY)
    response = get(token, phone=spelling, location=SYDNEY)
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["query"]["naturalKey"] == "+61412345678"
    assert body["contact"]["uid"] == "s-maria-1"  # the cluster's would-be primary: most fields
    assert [m["uid"] for m in body["matches"]] == ["s-maria-1", "s-maria-2"]
    assert body["wouldDuplicate"] is True
    cluster = body["cluster"]
    assert cluster["id"].startswith("cl_") and cluster["status"] == "open"
    assert cluster["memberUids"] == ["s-maria-1", "s-maria-2"] and cluster["primaryUid"] == "s-maria-1"


def test_an_unencoded_plus_still_reads_as_an_international_number(maria: None) -> None:
    token = token_for(SYDNEY)
    response = Client().get(
        f"{URL}?phone=+61412345678&location={SYDNEY}", HTTP_AUTHORIZATION=f"Bearer {token}"
    )
    assert response.json()["contact"]["uid"] == "s-maria-1"


def test_a_number_nobody_holds_would_not_duplicate() -> None:
    token = token_for(SYDNEY)
    body = get(token, phone="0499 000 111", location=SYDNEY).json()
    assert body == {
        "query": {"kind": "phone", "naturalKey": "+61499000111", "location": SYDNEY, "region": "AU"},
        "contact": None, "matches": [], "cluster": None, "wouldDuplicate": False,
    }  # fmt: skip


def test_a_single_holder_is_the_canonical_contact_without_a_cluster() -> None:
    index(make_contact(uid="only", phones=("0412 000 999",)))
    body = get(token_for(SYDNEY), phone="+61 412 000 999", location=SYDNEY).json()
    assert body["contact"]["uid"] == "only" and body["cluster"] is None and body["wouldDuplicate"] is True


def test_email_lookup_is_case_insensitive(maria: None) -> None:
    body = get(token_for(SYDNEY), email="  Maria@Example.COM ", location=SYDNEY).json()
    assert body["query"] == {
        "kind": "email",
        "naturalKey": "maria@example.com",
        "location": SYDNEY,
        "region": "AU",
    }
    assert [m["uid"] for m in body["matches"]] == ["s-maria-1"]


def test_deleted_and_merged_contacts_are_not_matches(maria: None) -> None:
    from dedup.models import Contact

    Contact.objects.filter(uid="s-maria-2").update(merged_into_uid="s-maria-1")
    body = get(token_for(SYDNEY), phone="0412345678", location=SYDNEY).json()
    assert [m["uid"] for m in body["matches"]] == ["s-maria-1"]


def test_a_token_of_sydney_cannot_see_auckland(maria: None) -> None:
    token = token_for(SYDNEY)
    response = get(token, phone="+61412345678", location=AUCKLAND)
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"
    assert "a-maria" not in response.content.decode()
    # Auckland's own token sees its contact, and nothing of Sydney's.
    body = get(token_for(AUCKLAND), phone="+61412345678", location=AUCKLAND).json()
    assert [m["uid"] for m in body["matches"]] == ["a-maria"] and body["cluster"] is None


def test_a_token_of_two_locations_sees_both() -> None:
    index(make_contact(uid="b-1", locations=(BURLEIGH,), phones=("0412 111 222",)))
    token = token_for(SYDNEY, BURLEIGH)
    assert get(token, phone="0412 111 222", location=BURLEIGH).json()["contact"]["uid"] == "b-1"
    assert get(token, phone="0412 111 222", location=SYDNEY).json()["contact"] is None


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"location": SYDNEY}, "bad_request"),
        ({"phone": "0412 345 678"}, "bad_request"),
        ({"phone": "0412 345 678", "email": "a@b.c", "location": SYDNEY}, "bad_request"),
        ({"phone": "call me maybe", "location": SYDNEY}, "invalid_phone"),
        ({"phone": "0412", "location": SYDNEY}, "invalid_phone"),
        ({"phone": "9" * 400, "location": SYDNEY}, "bad_request"),
        ({"email": "not-an-email", "location": SYDNEY}, "invalid_email"),
        ({"phone": "0412 345 678", "location": "no-such-location"}, "unknown_location"),
        ({"phone": "0412 345 678", "location": "x" * 80}, "bad_request"),
    ],
)
def test_bad_input_is_400_with_a_json_error(params: dict[str, str], code: str) -> None:
    response = get(token_for(SYDNEY), **params)
    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert body["error"] == code and body["message"]


@pytest.mark.parametrize(
    "header",
    [None, "Bearer", "Bearer nope", "Basic dXNlcjpwdw==", "Bearer pdk_" + "x" * 43, "bearer pdk_"],
)
def test_a_missing_or_unknown_token_is_401(header: str | None) -> None:
    extra = {"Authorization": header} if header is not None else {}
    response = Client().get(f"{URL}?phone=0412345678&location={SYDNEY}", headers=extra)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert response.json()["error"] == "unauthenticated"


def test_a_revoked_token_is_401_at_once(maria: None) -> None:
    issued = create_token("Kiosk", [SYDNEY], actor="worker:test")
    assert get(issued.token, phone="0412345678", location=SYDNEY).status_code == 200
    assert revoke_token(issued.row, actor="worker:test") is True
    assert get(issued.token, phone="0412345678", location=SYDNEY).status_code == 401
    assert revoke_token(issued.row, actor="worker:test") is False


def test_tokens_are_hashed_at_rest_and_their_creation_and_revocation_audited() -> None:
    issued = create_token("Kiosk", [SYDNEY], actor="worker:test")
    row = ApiToken.objects.get()
    assert row.token_hash == hash_token(issued.token) and issued.token not in row.token_hash
    assert issued.token.startswith("pdk_") and len(issued.token) >= 40
    revoke_token(row, actor="worker:test")
    events = list(AuditEvent.objects.filter(event_type__startswith="api_token.").order_by("id"))
    assert [e.event_type for e in events] == ["api_token.created", "api_token.revoked"]
    assert all(issued.token not in str(e.payload) for e in events)


def test_lookups_are_rate_limited_per_token(settings: Any, maria: None) -> None:
    settings.API_LOOKUP_RATE_LIMIT = "3/m"
    busy, other = token_for(SYDNEY, name="Busy"), token_for(SYDNEY, name="Other")
    codes = [get(busy, phone="0412345678", location=SYDNEY).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    limited = get(busy, phone="0412345678", location=SYDNEY)
    assert limited.json()["error"] == "rate_limit" and int(limited["Retry-After"]) >= 1
    assert get(other, phone="0412345678", location=SYDNEY).status_code == 200


def test_a_lookup_costs_a_fixed_handful_of_queries(maria: None, django_assert_max_num_queries: Any) -> None:
    token = token_for(SYDNEY)
    get(token, phone="0412345678", location=SYDNEY)  # last_used_at is written on the first use only
    with django_assert_max_num_queries(8):
        assert get(token, phone="0412345678", location=SYDNEY).status_code == 200


# --- the admins' token page ----------------------------------------------------------------------------------


def person(username: str, role: str, *locations: str) -> Client:
    user = User.objects.create_user(username=username, password="pw-123456789")
    user.groups.add(Group.objects.get(name=ROLE_NAMES[role]))
    for uid in locations:
        LocationGrant.objects.create(user=user, location=Location.objects.get(uid=uid))
    client = Client()
    client.force_login(user)
    return client


def test_an_admin_creates_a_token_in_the_dashboard_sees_it_once_and_revokes_it(maria: None) -> None:
    admin = person("boss", "admin")
    response = admin.post("/api-tokens/", {"name": "Booking widget", "locations": [SYDNEY]})
    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    token = response.context["issued"].token
    assert token in response.content.decode()
    assert get(token, phone="0412345678", location=SYDNEY).status_code == 200
    listing = admin.get("/api-tokens/").content.decode()
    assert "Booking widget" in listing and token not in listing
    row = ApiToken.objects.get()
    assert admin.post(f"/api-tokens/{row.pk}/revoke/").status_code == 302
    assert get(token, phone="0412345678", location=SYDNEY).status_code == 401
    creator = AuditEvent.objects.get(event_type="api_token.created")
    assert creator.actor == "user:boss"


def test_a_token_needs_a_location() -> None:
    admin = person("boss", "admin")
    response = admin.post("/api-tokens/", {"name": "Nowhere"})
    assert response.status_code == 400 and not ApiToken.objects.exists()


@pytest.mark.parametrize("role", ["manager", "auditor"])
def test_only_admins_manage_tokens(role: str) -> None:
    client = person("someone", role, SYDNEY)
    assert client.get("/api-tokens/").status_code == 403
    assert client.post("/api-tokens/", {"name": "x", "locations": [SYDNEY]}).status_code == 403
    assert not ApiToken.objects.exists()


def test_anonymous_is_sent_to_sign_in() -> None:
    response = Client().get("/api-tokens/")
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]
