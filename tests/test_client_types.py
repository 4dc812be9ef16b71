"""The wire mapping, fed Podium's own OpenAPI documents: their examples and the edge shapes they allow.

Example objects are built from the vendored documents (``podium_client/openapi/``): each documented
property takes its own ``example``, else an example the same document gives a property of that name
(the request bodies carry ``name``, ``email``, ``phoneNumber``, the address parts, ...), else a value
of its declared type. Only the few properties Podium gives no example for anywhere are filled by hand
(``GAPS``). From that example the tests derive the edge shapes the documents allow: every nullable field
null, every field missing, several locations, an email-only contact, undocumented extra fields, and
a wrong type at every documented path (a ``MalformedResponse`` naming that path).
"""

from __future__ import annotations

import copy
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from podium_client import (
    Address,
    Attribute,
    Channel,
    Contact,
    Location,
    MalformedResponse,
    Tag,
    WebhookEvent,
    consent_flags,
    openapi,
)
from podium_client import types as wire

ZERO = "00000000-0000-0000-0000-000000000000"
DOC_TIME = datetime(2015, 1, 23, 23, 50, 7, tzinfo=UTC)

#: Properties no document gives an example for, anywhere (keyed by their path, `[]` for list items).
GAPS: dict[str, Any] = {
    "channels[].type": "PHONE",
    "channels[].label": "mobile",
    "tags[].label": "priority",
    "attributes[].dataType": "STRING",
    "attributes[].ownerResource.type": "ORGANIZATION",
}
_TYPE_FILLER: dict[str, Any] = {"string": "text", "boolean": False, "integer": 0, "number": 0.0}
_FORMAT_FILLER = {"date-time": "2015-01-23T23:50:07Z", "uuid": ZERO}
_SINGULAR = {"phoneNumbers": "phoneNumber", "emails": "email"}


@cache
def documented_examples(document: str) -> dict[str, Any]:
    """Every property example of one document, by property name (the first one met wins)."""
    found: dict[str, Any] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            props = node.get("properties")
            if isinstance(props, dict):
                for key, sub in props.items():
                    if isinstance(sub, dict) and "example" in sub:
                        found.setdefault(key, sub["example"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(openapi.document(document))
    return found


def example_of(schema: dict[str, Any], document: str, path: str = "", key: str = "") -> Any:
    """An instance of `schema` made of the document's own examples (see the module docstring)."""
    if path in GAPS:
        return GAPS[path]
    if "example" in schema:
        return copy.deepcopy(schema["example"])
    kind = schema.get("type")
    if kind == "object":
        return {
            name: example_of(sub, document, f"{path}.{name}" if path else name, name)
            for name, sub in schema.get("properties", {}).items()
        }
    if kind == "array":
        return [example_of(schema["items"], document, path + "[]", key)]
    known = documented_examples(document)
    if key in known or _SINGULAR.get(key) in known:
        return copy.deepcopy(known.get(key, known.get(_SINGULAR.get(key, ""))))
    if "enum" in schema:
        return schema["enum"][0]
    if kind == "string" and schema.get("format") in _FORMAT_FILLER:
        return _FORMAT_FILLER[schema["format"]]
    return _TYPE_FILLER.get(kind or "")


def documented_paths(
    schema: dict[str, Any], prefix: tuple[str | int, ...] = ()
) -> Iterator[tuple[tuple[str | int, ...], dict[str, Any]]]:
    """Every documented property path of an object schema (list items as index 0), with its schema."""
    for name, sub in schema.get("properties", {}).items():
        here = (*prefix, name)
        yield here, sub
        if sub.get("type") == "object":
            yield from documented_paths(sub, here)
        elif sub.get("type") == "array":
            yield (*here, 0), sub["items"]
            if sub["items"].get("type") == "object":
                yield from documented_paths(sub["items"], (*here, 0))


def client_path(path: tuple[str | int, ...]) -> str:
    """The way MalformedResponse spells a path: ``channels[0].identifier``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def at(obj: Any, path: tuple[str | int, ...]) -> tuple[Any, str | int]:
    """The container holding `path`'s last step, and that step."""
    for part in path[:-1]:
        obj = obj[part]
    return obj, path[-1]


CONTACT_SCHEMA = openapi.schema_for("contact")
LOCATION_SCHEMA = openapi.schema_for("location")


def example_contact() -> dict[str, Any]:
    """A contact made of the contacts document's examples."""
    contact = example_of(CONTACT_SCHEMA, "contacts")
    assert isinstance(contact, dict)
    return contact


def example_location() -> dict[str, Any]:
    """A location made of the accounts document's examples."""
    location = example_of(LOCATION_SCHEMA, "accounts")
    assert isinstance(location, dict)
    return location


def strict_contact_schema() -> dict[str, Any]:
    schema = openapi.schema_for("contact")
    schema.pop("nullable", None)
    return openapi.strict(schema)


# --- the documents' own example ----------------------------------------------------------------------


def test_the_example_is_a_strictly_documented_contact() -> None:
    # The builder is not vacuous: every documented field is there with a documented type, nothing else.
    assert openapi.validate(example_contact(), strict_contact_schema()) == []
    assert openapi.validate(example_location(), openapi.strict(LOCATION_SCHEMA)) == []


def test_the_documented_example_contact_reads_into_typed_objects() -> None:
    contact = Contact.from_wire(example_contact(), request_id="req_doc")
    assert contact.uid == ZERO and contact.name == "John Doe"
    assert contact.location_uids == (ZERO,) and contact.location_uid == ZERO
    assert contact.organization_uid == ZERO
    assert contact.channels == (
        Channel("PHONE", "+15555555555", "mobile", (ZERO,), DOC_TIME, DOC_TIME, DOC_TIME),
    )
    # phoneNumbers and the channels are merged: the channel's number first, then the listed one.
    assert contact.phone_numbers == ("+18884441234",)
    assert contact.phones == ("+15555555555", "+18884441234")
    assert contact.emails == ("john.doe@podium.com",)
    assert contact.tags == (Tag(ZERO, "priority", "High priority contacts"),)
    assert contact.attributes == (
        Attribute(ZERO, "Internal Contact ID", "Brown eyes", "STRING", "ORGANIZATION", ZERO),
    )
    assert contact.address == Address("123 Main St", "Apt 101", "Lehi", "UT", "84043", "US")
    assert contact.conversation_uids == (ZERO,)
    assert contact.created_at == contact.updated_at == DOC_TIME
    assert contact.deleted_at is None and contact.merged_into_uid is None and not contact.is_hidden
    assert contact.request_id == "req_doc"
    # The example's channel is opted in at the contact's location and opted out of transactional texts.
    assert consent_flags(contact).to_wire() == {
        "marketingOptOut": False,
        "smsOptOut": True,
        "emailOptOut": False,
    }


def test_a_parsed_contact_writes_back_a_strictly_documented_object() -> None:
    contact = Contact.from_wire(example_contact())
    out = contact.to_wire()
    assert openapi.validate(out, strict_contact_schema()) == []
    # phoneNumbers written back hold every phone of the contact (the channel's too); the rest is as read.
    assert out["phoneNumbers"] == ["+15555555555", "+18884441234"]
    assert Contact.from_wire(out).to_wire() == out
    assert {k: v for k, v in out.items() if k != "phoneNumbers"} == {
        k: v for k, v in example_contact().items() if k != "phoneNumbers"
    }
    with_caps = contact.to_wire(capability_fields=True)
    assert with_caps["deletedAt"] is None and with_caps["mergedIntoUid"] is None
    assert "deletedAt" not in out


def test_the_documented_example_location_reads_its_region_from_address_details() -> None:
    location = Location.from_wire(example_location())
    assert location == Location(ZERO, "Podium", "BR", "Podium, Inc.", ZERO, False, DOC_TIME)


# --- edge shapes the documents allow ---------------------------------------------------------------


def _null_every_nullable(node: Any, schema: dict[str, Any]) -> Any:
    if schema.get("nullable"):
        return None
    if isinstance(node, dict):
        props = schema.get("properties", {})
        return {k: _null_every_nullable(v, props.get(k, {})) for k, v in node.items()}
    if isinstance(node, list):
        return [_null_every_nullable(v, schema.get("items", {})) for v in node]
    return node


def test_every_nullable_field_null() -> None:
    data = _null_every_nullable(example_contact(), CONTACT_SCHEMA | {"nullable": False})
    assert data["name"] is None and data["tags"] == [None] and data["channels"][0]["label"] is None
    contact = Contact.from_wire(data)
    assert contact.name is None and contact.address is None
    assert contact.phone_numbers == () and contact.email_addresses == ()
    # A null tag or attribute entry is nothing to keep.
    assert contact.tags == () and contact.attributes == ()
    channel = contact.channels[0]
    assert (channel.label, channel.transactional_opted_out_at, channel.created_at) == (None, None, None)
    # A channel of no type is kept (its consent counts) but is neither a phone nor an email.
    assert channel.type == "" and channel.identifier == "+15555555555"
    assert contact.phones == () and contact.emails == ()

    location = Location.from_wire(_null_every_nullable(example_location(), LOCATION_SCHEMA))
    assert (location.name, location.country, location.display_name) == (ZERO, None, None)
    assert location.archived is False and location.updated_at is None


# The two fields without which there is nothing to read; every other documented field may be missing.
REQUIRED_BY_THE_CLIENT = {"uid", "channels[0].identifier"}


@pytest.mark.parametrize(
    "path", [p for p, _ in documented_paths(CONTACT_SCHEMA) if not isinstance(p[-1], int)], ids=client_path
)
def test_any_documented_contact_field_may_be_missing(path: tuple[str | int, ...]) -> None:
    data = example_contact()
    holder, last = at(data, path)
    del holder[last]
    if client_path(path) in REQUIRED_BY_THE_CLIENT:
        with pytest.raises(MalformedResponse, match=rf"field '{client_path(path)}'".replace("[", r"\[")):
            Contact.from_wire(data)
        return
    contact = Contact.from_wire(data)
    assert contact.uid == ZERO


def test_a_contact_with_nothing_but_its_uid() -> None:
    contact = Contact.from_wire({"uid": ZERO})
    assert contact == Contact(ZERO)
    assert contact.phones == contact.emails == contact.location_uids == ()
    assert consent_flags(contact).to_wire() == {
        "marketingOptOut": False,
        "smsOptOut": False,
        "emailOptOut": False,
    }
    assert Location.from_wire({"uid": ZERO}) == Location(ZERO, ZERO)


def test_a_contact_of_several_locations_keeps_them_in_order() -> None:
    data = example_contact()
    uids = ["7b3c8a3e-0000-4000-8000-000000000001", ZERO, "7b3c8a3e-0000-4000-8000-000000000002"]
    data["locations"] = [{"uid": u} for u in uids]
    data["channels"][0]["marketingOptedInLocationUids"] = uids[:2]
    contact = Contact.from_wire(data)
    assert contact.location_uids == tuple(uids) and contact.location_uid == uids[0]
    # Opted in at two of its three locations: not opted in everywhere, so the marketing flag is up.
    assert consent_flags(contact).marketing_opt_out is True


def test_an_email_only_contact() -> None:
    data = example_contact()
    data["phoneNumbers"] = []
    data["channels"] = [
        {
            **data["channels"][0],
            "type": "EMAIL",
            "identifier": "john.doe@podium.com",
            "transactionalOptedOutAt": None,
        }
    ]
    contact = Contact.from_wire(data)
    assert contact.phones == ()
    assert contact.emails == ("john.doe@podium.com",)
    assert [c.type for c in contact.channels] == ["EMAIL"]
    assert consent_flags(contact).to_wire() == {
        "marketingOptOut": False,
        "smsOptOut": False,
        "emailOptOut": False,
    }


def _every_object(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _every_object(value)
    elif isinstance(node, list):
        for value in node:
            yield from _every_object(value)


@pytest.mark.parametrize("extra", [None, "text", 7, {"nested": [1, {"deeper": True}]}, ["a", None]])
def test_undocumented_fields_are_tolerated_at_every_depth(extra: Any) -> None:
    data = example_contact()
    for obj in list(_every_object(data)):
        obj["podiumAddedThisLater"] = extra
    assert Contact.from_wire(data) == Contact.from_wire(example_contact())
    location = example_location()
    for obj in list(_every_object(location)):
        obj["podiumAddedThisLater"] = extra
    assert Location.from_wire(location) == Location.from_wire(example_location())


_WRONG: dict[str, Any] = {"string": 12345, "array": "text", "object": "text", "boolean": "yes"}


def _wrong_typed(schema: dict[str, Any], document: str) -> list[tuple[str | int, ...]]:
    return [p for p, sub in documented_paths(schema) if sub.get("type") in _WRONG]


@pytest.mark.parametrize("path", _wrong_typed(CONTACT_SCHEMA, "contacts"), ids=client_path)
def test_a_wrong_type_anywhere_in_a_contact_is_malformed_and_named(path: tuple[str | int, ...]) -> None:
    data = example_contact()
    holder, last = at(data, path)
    schema = dict(documented_paths(CONTACT_SCHEMA))[path]
    holder[last] = _WRONG[schema["type"]]
    with pytest.raises(MalformedResponse) as info:
        Contact.from_wire(data)
    assert f"field '{client_path(path)}'" in info.value.message
    if path != ("uid",):
        assert ZERO in info.value.message
    assert info.value.body is data


@pytest.mark.parametrize("value", ["yesterday", "2015-13-45T99:00:00Z", ""])
def test_a_timestamp_that_is_not_one_is_malformed(value: str) -> None:
    data = example_contact()
    data["channels"][0]["transactionalOptedOutAt"] = value
    with pytest.raises(MalformedResponse, match=r"channels\[0\].transactionalOptedOutAt"):
        Contact.from_wire(data)


# Location fields the product reads are type-checked; the others are left to the tenant probe's report.
LOCATION_FIELDS_READ = {"uid", "name", "displayName", "organizationUid", "archived", "updatedAt", "addressDetails",
                        "addressDetails.country"}  # fmt: skip


@pytest.mark.parametrize("path", _wrong_typed(LOCATION_SCHEMA, "accounts"), ids=client_path)
def test_a_wrong_type_in_a_location(path: tuple[str | int, ...]) -> None:
    data = example_location()
    holder, last = at(data, path)
    holder[last] = _WRONG[dict(documented_paths(LOCATION_SCHEMA))[path]["type"]]
    if client_path(path) not in LOCATION_FIELDS_READ:
        assert Location.from_wire(data).uid == ZERO
        return
    with pytest.raises(MalformedResponse) as info:
        Location.from_wire(data)
    assert f"field '{client_path(path)}'" in info.value.message


@pytest.mark.parametrize(
    ("details", "region"),
    [({"country": "AU"}, "AU"), ({"country": "nz"}, "NZ"), ({"country": " US "}, "US"), ({"country": "Australia"}, None),
     ({"country": ""}, None), ({"country": None}, None), ({}, None), (None, None)],
)  # fmt: skip
def test_a_locations_region_is_an_iso_code_from_address_details_or_unknown(
    details: dict[str, Any] | None, region: str | None
) -> None:
    data = {**example_location(), "addressDetails": details}
    assert Location.from_wire(data).country == region


@pytest.mark.parametrize("value", [None, [], "contact", 42, [example_contact()]])
def test_a_contact_that_is_not_an_object_is_malformed(value: Any) -> None:
    with pytest.raises(MalformedResponse, match="must be an object"):
        Contact.from_wire(value)


# --- timestamps, identity, capability fields ---------------------------------------------------------


def test_timestamps_are_read_as_utc() -> None:
    data = {**example_contact(), "createdAt": "2026-05-01T20:00:00+10:00", "updatedAt": "2026-05-01T10:00:00"}
    data["channels"][0]["updatedAt"] = "2026-05-10T08:00:00.123456Z"
    contact = Contact.from_wire(data)
    assert contact.created_at == contact.updated_at == datetime(2026, 5, 1, 10, 0, tzinfo=UTC)
    assert contact.created_at is not None and contact.created_at.tzinfo is UTC
    stamp = contact.channels[0].updated_at
    assert stamp is not None and stamp.microsecond == 123456
    assert wire.format_timestamp(datetime(2026, 5, 1, 20, 0, tzinfo=timezone(timedelta(hours=10)))) == (
        "2026-05-01T10:00:00Z"
    )
    assert (
        wire.format_filter_timestamp(datetime(2026, 5, 1, 10, 0, 0, 999999, tzinfo=UTC))
        == "2026-05-01T10:00:00Z"
    )


def test_the_request_id_takes_no_part_in_equality_or_the_wire() -> None:
    a, b = Contact.from_wire(example_contact(), "req_a"), Contact.from_wire(example_contact(), "req_b")
    assert a == b and a.request_id == "req_a"
    assert "request_id" not in a.to_wire() and "requestId" not in a.to_wire()


def test_capability_fields_are_read_when_a_tenant_sends_them() -> None:
    data = {
        **example_contact(),
        "deletedAt": "2026-05-11T00:00:00Z",
        "mergedIntoUid": "11111111-0000-4000-8000-000000000001",
    }
    contact = Contact.from_wire(data)
    assert contact.is_hidden and contact.merged_into_uid == "11111111-0000-4000-8000-000000000001"
    assert contact.deleted_at == datetime(2026, 5, 11, tzinfo=UTC)
    assert contact.to_wire(capability_fields=True)["deletedAt"] == "2026-05-11T00:00:00Z"
    assert Contact.from_wire({**example_contact(), "deletedAt": None, "mergedIntoUid": ""}).is_hidden is False
    with pytest.raises(MalformedResponse, match="'mergedIntoUid'"):
        Contact.from_wire({**example_contact(), "mergedIntoUid": 7})


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=6,
)
_PATHS = [p for p, _ in documented_paths(CONTACT_SCHEMA)]


@settings(max_examples=400, deadline=None)
@given(path=st.sampled_from(_PATHS), value=_json_values, drop=st.booleans())
def test_any_corruption_is_read_or_malformed_never_another_error(
    path: tuple[str | int, ...], value: Any, drop: bool
) -> None:
    data = example_contact()
    holder, last = at(data, path)
    if drop and isinstance(last, str):
        del holder[last]
    else:
        holder[last] = value
    try:
        contact = Contact.from_wire(data)
    except MalformedResponse as exc:
        assert "field '" in exc.message
        return
    # What reads writes back in a form that reads again to the same wire object.
    out = contact.to_wire()
    assert Contact.from_wire(out).to_wire() == out
    assert (
        Contact.from_wire(out).phones == contact.phones
        and Contact.from_wire(out).channels == contact.channels
    )


# --- envelopes ----------------------------------------------------------------------------------------


def test_a_page_with_one_malformed_contact_reads_the_rest_into_rejected() -> None:
    good = [example_contact() for _ in range(3)]
    for i, c in enumerate(good):
        c["uid"] = f"{i:08d}-0000-4000-8000-000000000000"
    bad = {**example_contact(), "uid": "bad00000-0000-4000-8000-000000000000", "channels": "+15555555555"}
    page = wire.parse_contact_page(
        {"data": [good[0], bad, good[1], 7, good[2]], "metadata": {"nextCursor": "abc"}}, "req_9"
    )
    assert [c.uid for c in page] == [c["uid"] for c in good]
    assert page.next_cursor == "abc" and page.request_id == "req_9" and page[0].request_id == "req_9"
    assert [item for item, _ in page.rejected] == [bad, 7]
    assert "field 'channels'" in page.rejected[0][1].message and bad["uid"] in page.rejected[0][1].message


@pytest.mark.parametrize(
    "metadata", [None, {}, {"nextCursor": None}, {"nextCursor": ""}, {"url": "https://x/"}]
)
def test_no_next_cursor_means_the_last_page(metadata: dict[str, Any] | None) -> None:
    body: dict[str, Any] = {"data": []}
    if metadata is not None:
        body["metadata"] = metadata
    assert wire.parse_contact_page(body).next_cursor is None
    assert wire.parse_location_page(body).next_cursor is None


@pytest.mark.parametrize(
    "body",
    [None, [], {"data": {}}, {"data": "x"}, {"metadata": {"nextCursor": None}}, {"data": [], "metadata": "m"},
     {"data": [], "metadata": {"nextCursor": 5}}],
)  # fmt: skip
def test_a_malformed_envelope_fails_the_page(body: Any) -> None:
    with pytest.raises(MalformedResponse):
        wire.parse_contact_page(body)


def test_one_object_envelopes() -> None:
    assert wire.parse_contact_response({"data": example_contact(), "metadata": {"url": "u"}}).uid == ZERO
    with pytest.raises(MalformedResponse, match="'data'"):
        wire.parse_contact_response(example_contact())
    assert wire.parse_write_identifier({"data": {"identifier": "+15555555555"}}) == "+15555555555"
    assert wire.parse_write_identifier({"data": {}}) is None and wire.parse_write_identifier(None) is None
    for bad in ({"data": "x"}, {"data": {"identifier": 5}}, {"identifier": "x"}):
        with pytest.raises(MalformedResponse):
            wire.parse_write_identifier(bad)
    tags = wire.parse_tag_list({"data": [{"uid": ZERO, "label": "vip"}, {"uid": None, "label": "no uid"}]})
    assert tags == [Tag(ZERO, "vip")]


# --- request bodies --------------------------------------------------------------------------------


def test_request_bodies_follow_the_documented_request_schemas() -> None:
    create = wire.contact_create_body(
        "John Doe", [ZERO], phone_number="+18884441234", email="john.doe@podium.com",
        address=Address("123 Main St", city="Lehi"), attributes=[(ZERO, "Brown eyes")],
    )  # fmt: skip
    assert openapi.validate(create, openapi.request_schema("POST", "/v4/contacts") or {}) == []
    patch = wire.contact_patch_body({"name": "J", "address": Address(city="Lehi"), "locations": iter([ZERO]),
                                     "conversationUid": ZERO})  # fmt: skip
    assert openapi.validate(patch, openapi.request_schema("PATCH", "/v4/contacts/{identifier}") or {}) == []
    assert patch["locations"] == [ZERO] and patch["address"]["city"] == "Lehi"
    opt_out = wire.opt_out_body("+15555555555")
    assert (
        openapi.validate(opt_out, openapi.request_schema("POST", "/v4/contacts/campaigns/opt_out") or {})
        == []
    )


@pytest.mark.parametrize("fields", [{"uid": ZERO}, {"tags": ["vip"]}, {"marketingOptOut": True}, {}])
def test_a_patch_of_fields_podium_does_not_accept_is_refused_before_any_call(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        wire.contact_patch_body(fields)


# --- export files and webhook events -----------------------------------------------------------------


def test_export_lines_round_trip_and_the_old_shape_is_refused() -> None:
    location = example_location()
    contact = Contact.from_wire(example_contact())
    text = wire.location_export_line(location) + "\n\n" + wire.contact_export_line(example_contact()) + "\n"
    assert json.loads(wire.contact_export_line(contact)) == contact.to_wire()
    assert list(wire.iter_export(io.StringIO("\ufeff" + text))) == [Location.from_wire(location), contact]
    with pytest.raises(MalformedResponse, match="line 2"):
        list(wire.iter_export(io.StringIO(text.replace("\n\n", "\n{broken\n"))))
    old_contact = {"uid": "ct_1", "locationUid": "loc_sydney", "smsOptOut": False, "channels": []}
    with pytest.raises(wire.OldExportShape, match="locationUid") as info:
        wire.parse_export_line(json.dumps(old_contact))
    assert "expected Podium's v4 export" in info.value.message
    with pytest.raises(wire.OldExportShape, match="top-level 'country'"):
        wire.parse_export_line(
            json.dumps({"object": "location", "uid": "loc_1", "name": "X", "country": "AU"})
        )


def test_a_webhook_event_carries_documented_contacts() -> None:
    before = example_contact()
    after = {**example_contact(), "name": "Jane Doe"}
    body = {"data": {"before": before, "after": after},
            "metadata": {"eventType": "contact.updated", "eventUid": ZERO, "timestamp": "2026-05-10T08:00:00Z",
                         "organizationUid": ZERO, "locationUid": None, "podiumAddedThisLater": 1}}  # fmt: skip
    event = WebhookEvent.from_wire(body)
    assert event.event_type == "contact.updated" and event.event_uid == ZERO
    assert event.before is not None and event.after is not None and event.contact is event.after
    assert (event.before.name, event.after.name) == ("John Doe", "Jane Doe")
    deleted = WebhookEvent.from_wire(
        {"data": {"before": before}, "metadata": {"eventType": "contact.deleted"}}
    )
    assert (
        deleted.after is None and deleted.contact == Contact.from_wire(before) and deleted.event_uid is None
    )
    bads: list[Any] = [
        {**body, "metadata": {"eventType": "review.created"}},
        {"data": {}},
        {"metadata": {}},
        [],
    ]
    for bad in bads:
        with pytest.raises(MalformedResponse):
            WebhookEvent.from_wire(bad)
    with pytest.raises(MalformedResponse, match="'name'"):
        WebhookEvent.from_wire({**body, "data": {"after": {**after, "name": 5}}})


def test_podium_client_never_imports_django() -> None:
    code = (
        "import sys, podium_client, podium_client.emulator, podium_client.emulator.cli, podium_client.corpus, "
        "podium_client.webhooks, podium_client.probe; "
        "sys.exit(1 if any(m == 'django' or m.startswith('django.') for m in sys.modules) else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], check=False
    )
    assert result.returncode == 0
