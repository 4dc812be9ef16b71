"""Every endpoint of the emulator, held strictly to Podium's vendored OpenAPI documents.

Strict means: every documented property present (null where empty) and nothing undocumented, at every
depth (``openapi.strict``), with only the documents' known looseness fixed (list ``data`` is an array,
a paginated list's ``metadata`` carries ``nextCursor``, an error's ``code`` is a string). The capability
fields (``deletedAt``, ``mergedIntoUid``) and endpoints (merge, restore) are required when the
capabilities are on and refused when they are off. Requests go over raw HTTP, not through the client.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from podium_client import openapi
from podium_client.corpus import AUCKLAND, LOCATIONS, ORGANIZATION_UID, POPUP, SYDNEY
from podium_client.emulator import EmulatorServer, EmulatorState
from podium_client.emulator.api import ROUTES
from podium_client.webhooks import verify
from tests.fixtures_emulator import WebhookReceiver, auth, make_contact

ALL_CAPABILITIES = "merge,restore,soft-delete"
SECRET = "whsec_schema"

OAUTH_SCHEMA = {
    "type": "object",
    "properties": {
        "access_token": {"type": "string"},
        "refresh_token": {"type": "string"},
        "expires_in": {"type": "integer"},
    },
}


def _is_contact(schema: dict[str, Any]) -> bool:
    props = schema.get("properties", {})
    return "channels" in props and "phoneNumbers" in props


def _with_capability_fields(node: Any) -> None:
    """Add deletedAt / mergedIntoUid to every contact object schema inside `node`."""
    if isinstance(node, dict):
        if _is_contact(node):
            node["properties"].update(copy.deepcopy(openapi.CAPABILITY_CONTACT_PROPERTIES))
        for value in node.values():
            _with_capability_fields(value)
    elif isinstance(node, list):
        for item in node:
            _with_capability_fields(item)


def contact_schema(capabilities: bool) -> dict[str, Any]:
    schema = openapi.schema_for("contact")
    schema.pop("nullable", None)
    if capabilities:
        _with_capability_fields(schema)
    return openapi.strict(schema)


def delivery_schema(capabilities: bool) -> dict[str, Any]:
    """A webhook delivery body as CONTRACT.md reads it (before and/or after; metadata all present)."""
    contact = contact_schema(capabilities)
    meta = openapi.strict(
        {
            "type": "object",
            "properties": {
                "eventType": {
                    "type": "string",
                    "enum": list(openapi.schema_for("webhook")["properties"]["eventTypes"]["items"]["enum"]),
                },
                "eventUid": {"type": "string", "format": "uuid"},
                "timestamp": {"type": "string", "format": "date-time"},
                "organizationUid": {"type": "string", "format": "uuid"},
                "locationUid": {"type": "string", "format": "uuid", "nullable": True},
            },
        }
    )
    data = {"type": "object", "properties": {"before": contact, "after": contact}, "additionalProperties": False,
            "minProperties": 1}  # fmt: skip
    return {"type": "object", "properties": {"data": data, "metadata": meta}, "required": ["data", "metadata"],
            "additionalProperties": False}  # fmt: skip


class Strict:
    """Calls the emulator and holds every answer to its strict schema; remembers the routes covered."""

    def __init__(self, server: EmulatorServer, capabilities: bool) -> None:
        self.server = server
        self.capabilities = capabilities
        self.covered: set[str] = set()
        self._cache: dict[tuple[str, str, int], Any] = {}

    def schema(self, method: str, template: str, status: int) -> Any:
        key = (method, template, status)
        if key not in self._cache:
            if status >= 400:
                schema = openapi.error_schema()
            elif template == "/oauth/token":
                schema = OAUTH_SCHEMA
            elif template in ("/v4/contacts/{uid}/merge", "/v4/contacts/{uid}/restore"):
                schema = openapi.response_schema("GET", "/v4/contacts/{identifier}")
            else:
                schema = openapi.response_schema(method, template)
            if self.capabilities:
                _with_capability_fields(schema)
            self._cache[key] = openapi.validator(openapi.strict(schema))
        return self._cache[key]

    def call(
        self, method: str, template: str, path: str | None = None, status: int = 200, *,
        headers: dict[str, str] | None = None, **kwargs: Any,
    ) -> Any:  # fmt: skip
        url = self.server.url + (path if path is not None else template)
        resp = requests.request(method, url, headers=headers if headers is not None else auth(self.server),
                                timeout=10, **kwargs)  # fmt: skip
        assert resp.status_code == status, f"{method} {url}: {resp.status_code} {resp.text[:500]}"
        body = resp.json()
        errors = openapi.validate(body, self.schema(method, template, status))
        assert not errors, f"{method} {template} ({status}) breaks the documented schema:\n" + "\n".join(
            errors[:20]
        )
        if status < 400:
            self.covered.add(f"{method} {template}")
        return body


@pytest.fixture(params=["published", "capabilities"])
def caps(request: pytest.FixtureRequest) -> bool:
    return bool(request.param == "capabilities")


@pytest.fixture
def org(
    caps: bool, emulator_factory: Callable[..., EmulatorServer], demo_corpus: tuple[list[str], dict[str, str]]
) -> EmulatorServer:
    state = EmulatorState.from_lines(demo_corpus[0], seed=3, capabilities=ALL_CAPABILITIES if caps else None)
    state.add_contact(make_contact(name="Known Phone", phones=["0499 000 111"], emails=["known@example.com"],
                                   tags=["vip"], attributes=[("birthday", "1990-01-01")],
                                   address={"addressLine1": "1 George St", "city": "Sydney"}))  # fmt: skip
    state.add_contact(make_contact(name="Second", phones=["0499 000 222"], conversations=2))
    state.add_contact(
        make_contact(name="Pop-up", locations=[POPUP], phones=["0499 000 333"], conversations=0)
    )
    return emulator_factory(state)


def test_every_endpoint_answers_exactly_the_documented_shapes(
    org: EmulatorServer, caps: bool, webhook_receiver: WebhookReceiver
) -> None:
    s = Strict(org, caps)

    # Locations: paginated with cursors to the end, one by one, updatedAfter.
    page = s.call("GET", "/v4/locations", params={"limit": 3})
    assert len(page["data"]) == 3 and page["metadata"]["nextCursor"] and page["metadata"]["totalItems"] == 4
    last = s.call("GET", "/v4/locations", params={"cursor": page["metadata"]["nextCursor"]})
    assert [loc["uid"] for loc in last["data"]] == [POPUP] and last["metadata"]["nextCursor"] is None
    assert last["data"][0]["addressDetails"]["country"] is None
    for loc in page["data"] + last["data"]:
        assert s.call("GET", "/v4/locations/{uid}", f"/v4/locations/{loc['uid']}")["data"] == loc
    assert s.call("GET", "/v4/locations", params={"updatedAfter": "2099-01-01T00:00:00Z"})["data"] == []
    org_body = s.call("GET", "/v4/organizations/{uid}", f"/v4/organizations/{ORGANIZATION_UID}")
    assert org_body["data"]["uid"] == ORGANIZATION_UID

    # Contacts: the whole organization page by page (every demo contact held to the schema).
    listed: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 100}
    while True:
        body = s.call("GET", "/v4/contacts", params=params)
        listed.extend(body["data"])
        if not body["metadata"]["nextCursor"]:
            break
        params = {"limit": 100, "cursor": body["metadata"]["nextCursor"]}
    assert len(listed) == len(org.state)
    assert any(len(c["locations"]) == 2 for c in listed) and any(c["address"] for c in listed)
    assert all(("deletedAt" in c) is caps for c in listed)
    s.call("GET", "/v4/contacts", params={"updated_at": "2025-06-01T00:00:00Z"})

    # Tags and attribute definitions of the organization.
    tags = s.call("GET", "/v4/contact_tags")["data"]
    assert {"vip", "newsletter"} <= {t["label"] for t in tags}
    tag = s.call("POST", "/v4/contact_tags", json={"label": "schema-test", "description": "made by a test"})[
        "data"
    ]
    s.call("GET", "/v4/contact_tags/{uid}", f"/v4/contact_tags/{tag['uid']}")
    s.call(
        "PATCH", "/v4/contact_tags/{uid}", f"/v4/contact_tags/{tag['uid']}", json={"description": "changed"}
    )
    attrs = s.call("GET", "/v4/contact_attributes")["data"]
    assert "birthday" in {a["label"] for a in attrs}
    attr = s.call("POST", "/v4/contact_attributes",
                  json={"label": "member number", "dataType": "STRING", "ownerResourceType": "ORGANIZATION"})["data"]  # fmt: skip
    s.call("GET", "/v4/contact_attributes/{uid}", f"/v4/contact_attributes/{attr['uid']}")
    s.call(
        "PATCH",
        "/v4/contact_attributes/{uid}",
        f"/v4/contact_attributes/{attr['uid']}",
        json={"isEncrypted": False},
    )

    # Webhooks, registered before the writes so deliveries follow them.
    hook = s.call("POST", "/v4/webhooks", json={"url": webhook_receiver.url, "eventTypes": ["contact.updated", "contact.created"],
                                                 "secret": SECRET, "organizationUid": ORGANIZATION_UID})["data"]  # fmt: skip
    assert s.call("GET", "/v4/webhooks")["data"] == [hook]
    s.call("GET", "/v4/webhooks/{uid}", f"/v4/webhooks/{hook['uid']}")
    s.call("PUT", "/v4/webhooks/{uid}", f"/v4/webhooks/{hook['uid']}",
           json={"eventTypes": ["contact.updated", "contact.created", "contact.deleted"]})  # fmt: skip

    # Contact reads and writes by each kind of identifier.
    known = org.state.find("known@example.com")
    assert known is not None
    conversation = listed[0]["conversations"][0]["uid"] if listed[0]["conversations"] else None
    for identifier in ("+61499000111", "KNOWN@example.com", conversation):
        if identifier:
            s.call("GET", "/v4/contacts/{identifier}", f"/v4/contacts/{identifier}")
    created = s.call("POST", "/v4/contacts", status=202,
                     json={"name": "New Person", "locations": [AUCKLAND], "phoneNumber": "+64211234567",
                           "tags": [tag["uid"]], "attributes": [{"uid": attr["uid"], "value": "M-1"}],
                           "address": {"addressLine1": "9 Queen St", "country": "NZ"}})  # fmt: skip
    assert created["data"] == {"identifier": "+64211234567"}
    ident = "/v4/contacts/+61499000111"
    s.call(
        "PATCH",
        "/v4/contacts/{identifier}",
        ident,
        202,
        json={"name": "Known Person", "email": "second@example.com"},
    )
    s.call("POST", "/v4/contacts/{identifier}/tags/{uid}", f"{ident}/tags/{tag['uid']}", 202)
    s.call("DELETE", "/v4/contacts/{identifier}/tags/{uid}", f"{ident}/tags/{tag['uid']}", 202)
    s.call(
        "POST",
        "/v4/contacts/{identifier}/attributes/{uid}",
        f"{ident}/attributes/{attr['uid']}",
        202,
        json={"value": "M-2"},
    )
    s.call(
        "PATCH",
        "/v4/contacts/{identifier}/attributes/{uid}",
        f"{ident}/attributes/{attr['uid']}",
        202,
        json={"value": "M-3"},
    )
    s.call("DELETE", "/v4/contacts/{identifier}/attributes/{uid}", f"{ident}/attributes/{attr['uid']}", 202)
    out = s.call(
        "POST",
        "/v4/contacts/campaigns/opt_out",
        json={"channel": {"type": "PHONE", "identifier": "+61499000111"}},
    )
    assert all(not c["marketingOptedInLocationUids"] for c in out["data"]["channels"] if c["type"] == "PHONE")
    s.call("POST", "/v4/contacts/campaigns/opt_in", json={"channel": {"type": "PHONE", "identifier": "+61499000111"},
                                                           "locationUid": SYDNEY})  # fmt: skip
    s.call("DELETE", "/v4/contact_attributes/{uid}", f"/v4/contact_attributes/{attr['uid']}")
    s.call("DELETE", "/v4/contacts/{identifier}", "/v4/contacts/+61499000222", 202)

    # Part 2, only with the capabilities.
    popup = org.state.find("+61499000333")
    second = org.state.get(org.state.deleted()[-1]["uid"]) if caps else None
    if caps:
        assert popup is not None and second is not None and second["deletedAt"]
        hidden: list[dict[str, Any]] = []
        params = {"includeDeleted": "true", "limit": 100}
        while params:
            body = s.call("GET", "/v4/contacts", params=params)
            hidden.extend(c for c in body["data"] if c["deletedAt"])
            params = {"cursor": body["metadata"]["nextCursor"]} if body["metadata"]["nextCursor"] else {}
        assert [c["uid"] for c in hidden] == [second["uid"]]
        s.call("GET", "/v4/contacts/{identifier}", f"/v4/contacts/{second['uid']}")
        s.call("POST", "/v4/contacts/{uid}/restore", f"/v4/contacts/{second['uid']}/restore")
        merged = s.call("POST", "/v4/contacts/{uid}/merge", f"/v4/contacts/{known['uid']}/merge",
                        json={"duplicateUids": [second["uid"]]})  # fmt: skip
        assert merged["data"]["uid"] == known["uid"] and merged["data"]["deletedAt"] is None
    else:
        for action in ("merge", "restore"):
            s.call("POST", "/v4/contacts/{uid}/" + action, f"/v4/contacts/{known['uid']}/{action}", 404,
                   json={"duplicateUids": [listed[0]["uid"]]})  # fmt: skip

    s.call("DELETE", "/v4/webhooks/{uid}", f"/v4/webhooks/{hook['uid']}")
    token = s.call("POST", "/oauth/token", headers={}, json={"client_id": "dev-client", "client_secret": "dev-secret",
                   "grant_type": "refresh_token", "refresh_token": "dev-refresh"})  # fmt: skip
    assert token["expires_in"] == 36_000

    served = {r.name for r in ROUTES if caps or not r.capability} | {"POST /oauth/token"}
    assert served - s.covered == set()

    # Deliveries made meanwhile follow the reading of CONTRACT.md, signed.
    assert org.flush_webhooks(10)
    check = openapi.validator(delivery_schema(caps))
    assert webhook_receiver.deliveries
    for delivery in webhook_receiver.deliveries:
        verify(SECRET, delivery.body, delivery.headers)
        errors = openapi.validate(json.loads(delivery.body), check)
        assert not errors, "\n".join(errors[:20])


def test_webhook_delivery_bodies_follow_the_contract(
    caps: bool, emulator_factory: Callable[..., EmulatorServer], webhook_receiver: WebhookReceiver
) -> None:
    """Every contact event's body: `data.before` and/or `data.after` (strict contacts) and full metadata."""
    state = EmulatorState(capabilities=ALL_CAPABILITIES if caps else None, organization_uid=ORGANIZATION_UID)
    for loc in LOCATIONS:
        state.add_location(loc)
    primary = state.add_contact(
        make_contact(phones=["0411 000 001"], tags=["vip"], address={"city": "Sydney"})
    )
    dup = state.add_contact(make_contact(phones=["0411 000 002"], locations=[SYDNEY, AUCKLAND]))
    server = emulator_factory(state, webhook_url=webhook_receiver.url, webhook_secret=SECRET)
    s = Strict(server, caps)
    s.call(
        "POST",
        "/v4/contacts",
        status=202,
        json={"name": "New", "locations": [POPUP], "email": "new@example.com"},
    )
    s.call("PATCH", "/v4/contacts/{identifier}", "/v4/contacts/+61411000001", 202, json={"name": "Renamed"})
    s.call("PATCH", "/v4/contacts/{identifier}", "/v4/contacts/+61411000001", 202, json={"name": "Renamed"})
    if caps:
        s.call(
            "POST",
            "/v4/contacts/{uid}/merge",
            f"/v4/contacts/{primary['uid']}/merge",
            json={"duplicateUids": [dup["uid"]]},
        )
    s.call("DELETE", "/v4/contacts/{identifier}", "/v4/contacts/new@example.com", 202)
    assert server.flush_webhooks(10)
    check = openapi.validator(delivery_schema(caps))
    events = []
    for delivery in webhook_receiver.deliveries:
        verify(SECRET, delivery.body, delivery.headers)
        body = json.loads(delivery.body)
        assert openapi.validate(body, check) == [], body
        events.append((body["metadata"]["eventType"], sorted(body["data"])))
    expected = [
        ("contact.created", ["after"]),
        ("contact.updated", ["after", "before"]),
        ("contact.unchanged", ["after", "before"]),
    ]
    if caps:
        expected += [("contact.merged", ["after", "before"]), ("contact.updated", ["after", "before"])]
        expected += [
            ("contact.deleted", ["after", "before"])
        ]  # soft-delete: the contact is still there, hidden
    else:
        expected += [("contact.deleted", ["before"])]
    assert events == expected


def test_error_answers_are_podiums_envelope(org: EmulatorServer, caps: bool) -> None:
    s = Strict(org, caps)
    cases: list[tuple[str, str, int, str, dict[str, Any]]] = [
        ("GET", "/v4/contacts", 400, "invalid_request_values", {"params": {"limit": 101}}),
        ("GET", "/v4/contacts", 400, "invalid_request_values", {"params": {"updated_at": "2025-01-01"}}),
        ("GET", "/v4/contacts", 400, "invalid_cursor", {"params": {"cursor": "bm90LWEtY3Vyc29y"}}),
        (
            "PATCH",
            "/v4/contacts/+61499000111",
            400,
            "invalid_request_values",
            {"json": {"phoneNumber": "0499"}},
        ),
        ("PATCH", "/v4/contacts/+61499000111", 400, "bad_request", {"data": b"{not json"}),
        ("POST", "/v4/contacts", 400, "invalid_request_values", {"json": {"name": "No Locations"}}),
        ("GET", "/v4/contacts/nobody@example.com", 404, "resource_not_found", {}),
        ("GET", "/v4/contact_tags/00000000-0000-4000-8000-00000000dead", 404, "resource_not_found", {}),
        ("GET", "/v5/contacts", 404, "route_not_found", {}),
        ("GET", "/v4/contacts", 401, "unauthenticated", {"headers": {"Authorization": "Bearer wrong"}}),
        ("GET", "/v4/contacts", 401, "unauthenticated", {"headers": {}}),
    ]
    for method, path, status, code, kwargs in cases:
        body = s.call(method, path, path, status, **kwargs)
        assert body["code"] == code, (method, path, body)
    org.configure(scopes=["read_contacts"])
    assert s.call("GET", "/v4/locations", status=403)["code"] == "unauthorized"
    assert (
        s.call("PATCH", "/v4/contacts/{identifier}", "/v4/contacts/+61499000111", 403, json={"name": "x"})[
            "code"
        ]
        == "unauthorized"
    )
    org.configure(scopes=["read_locations"], rate_limit=1, rate_window_s=60)
    s.call("GET", "/v4/locations")
    resp = requests.get(org.url + "/v4/locations", headers=auth(org), timeout=5)
    assert resp.status_code == 429 and resp.headers["Retry-After"]
    assert not openapi.validate(resp.json(), s.schema("GET", "/v4/locations", 429))
    assert resp.json()["code"] == "rate_limit"


def test_strict_schema_catches_missing_and_undocumented_fields(
    demo_corpus: tuple[list[str], dict[str, str]],
) -> None:
    """The strict check is not vacuous: a contact missing a field or carrying an old one fails it."""
    contact = json.loads(demo_corpus[0][5])
    check = openapi.validator(contact_schema(False))
    assert openapi.validate(contact, check) == []
    missing = {k: v for k, v in contact.items() if k != "address"}
    assert any("address" in e for e in openapi.validate(missing, check))
    old = {**contact, "locationUid": SYDNEY}
    assert any("locationUid" in e for e in openapi.validate(old, check))
    bare = {**contact, "channels": [{"type": "PHONE", "identifier": "0412 345 678"}]}
    assert any("marketingOptedInLocationUids" in e for e in openapi.validate(bare, check))
    extras = {**contact, "deletedAt": None, "mergedIntoUid": None}
    assert openapi.validate(extras, check) != []
    assert openapi.validate(extras, openapi.validator(contact_schema(True))) == []


def _routes(caps: bool) -> Iterator[str]:
    return (r.name for r in ROUTES if caps or not r.capability)


def test_the_emulator_serves_what_podium_documents_and_nothing_else() -> None:
    """Each published route the emulator serves is a documented operation; only capability routes are not."""
    documented = {f"{m} {p}" for _, m, p, _ in openapi.operations()}
    capability = {r.name for r in ROUTES if r.capability}
    assert set(_routes(False)) <= documented
    assert capability.isdisjoint(documented)
    contact_ops = {f"{m} {p}" for doc, m, p, _ in openapi.operations() if doc == "contacts"}
    assert contact_ops <= set(_routes(False)), "every documented contacts operation is served"
