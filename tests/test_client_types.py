"""The wire mapping: typed objects to and from the contract's JSON, and malformed input."""

from __future__ import annotations

import copy
import io
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from podium_client import Attribute, Channel, Contact, Location, MalformedResponse, WebhookEvent
from podium_client import types as wire

CONTACT: dict[str, Any] = {
    "uid": "ct_0000123_9f2a1c",
    "locationUid": "loc_sydney",
    "name": "Maria Garcia",
    "channels": [
        {"type": "PHONE", "identifier": "0412 345 678"},
        {"type": "EMAIL", "identifier": "maria@example.com"},
    ],
    "tags": [{"label": "vip"}],
    "attributes": [{"label": "birthday", "value": "1990-01-01"}],
    "address": None,
    "marketingOptOut": False,
    "smsOptOut": True,
    "emailOptOut": False,
    "createdAt": "2026-05-01T10:00:00Z",
    "updatedAt": "2026-05-10T08:00:00.123456Z",
    "deletedAt": None,
    "mergedIntoUid": None,
    "conversationCount": 3,
}


def test_contact_round_trips_exactly() -> None:
    contact = Contact.from_wire(CONTACT, request_id="req_1")
    assert contact.to_wire() == CONTACT
    assert contact.request_id == "req_1"
    assert "request_id" not in contact.to_wire() and "requestId" not in contact.to_wire()


def test_contact_fields_are_typed() -> None:
    contact = Contact.from_wire(CONTACT)
    assert contact.channels == (Channel.phone("0412 345 678"), Channel.email("maria@example.com"))
    assert contact.phones == ("0412 345 678",)
    assert contact.emails == ("maria@example.com",)
    assert contact.tags == ("vip",)
    assert contact.attributes == (Attribute("birthday", "1990-01-01"),)
    assert contact.sms_opt_out is True and contact.marketing_opt_out is False
    assert contact.created_at == datetime(2026, 5, 1, 10, 0, tzinfo=UTC)
    assert contact.updated_at.tzinfo is UTC and contact.updated_at.microsecond == 123456
    assert contact.deleted_at is None and not contact.is_deleted
    assert contact.request_id is None


def test_request_id_does_not_take_part_in_equality() -> None:
    assert Contact.from_wire(CONTACT, "req_a") == Contact.from_wire(CONTACT, "req_b")


def test_timestamps_are_normalized_to_utc() -> None:
    data = dict(CONTACT, createdAt="2026-05-01T20:00:00+10:00", updatedAt="2026-05-01T10:00:00")
    contact = Contact.from_wire(data)
    assert contact.created_at == datetime(2026, 5, 1, 10, 0, tzinfo=UTC)
    assert contact.created_at.tzinfo is UTC
    assert contact.updated_at.tzinfo is UTC
    assert wire.format_timestamp(datetime(2026, 5, 1, 20, 0, tzinfo=timezone(timedelta(hours=10)))) == (
        "2026-05-01T10:00:00Z"
    )


def test_deleted_and_merged_contact() -> None:
    data = dict(CONTACT, deletedAt="2026-05-11T00:00:00Z", mergedIntoUid="ct_0000001_aaaaaa")
    contact = Contact.from_wire(data)
    assert contact.is_deleted
    assert contact.merged_into_uid == "ct_0000001_aaaaaa"
    assert contact.to_wire() == data


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda d: d.pop("updatedAt"), "missing field 'updatedAt'"),
        (lambda d: d.pop("uid"), "missing field 'uid'"),
        (lambda d: d.update(name=5), "wrong type"),
        (lambda d: d.update(marketingOptOut="no"), "wrong type"),
        (lambda d: d.update(conversationCount="3"), "wrong type"),
        (lambda d: d.update(channels={"type": "PHONE"}), "ct_0000123_9f2a1c"),
        (lambda d: d.update(channels=[{"type": "PHONE"}]), "missing field 'identifier'"),
        (lambda d: d.update(channels=[{"type": "PHONE", "identifier": 412345678}]), "channel"),
        (lambda d: d.update(tags=["vip"]), "ct_0000123_9f2a1c"),
        (lambda d: d.update(tags=[{"label": 1}]), "tag label"),
        (lambda d: d.update(attributes=[{"label": "x", "value": 1}]), "attribute"),
        (lambda d: d.update(createdAt="yesterday"), "bad value"),
        (lambda d: d.update(createdAt=None), "bad value"),
        (lambda d: d.update(deletedAt=12), "bad value"),
        (lambda d: d.update(mergedIntoUid=7), "wrong type"),
    ],
)
def test_malformed_contact_raises_malformed_response(mutate: Any, fragment: str) -> None:
    data = copy.deepcopy(CONTACT)
    mutate(data)
    with pytest.raises(MalformedResponse) as info:
        Contact.from_wire(data)
    assert fragment in str(info.value)


@pytest.mark.parametrize("value", [None, [], "contact", 42, [CONTACT]])
def test_non_object_contact_is_malformed(value: Any) -> None:
    with pytest.raises(MalformedResponse):
        Contact.from_wire(value)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(sorted(CONTACT)), value=_json_values, drop=st.booleans())
def test_any_corruption_is_parsed_or_malformed_never_another_error(key: str, value: Any, drop: bool) -> None:
    data = copy.deepcopy(CONTACT)
    if drop:
        del data[key]
    else:
        data[key] = value
    try:
        contact = Contact.from_wire(data)
    except MalformedResponse:
        return
    # What parses must round-trip to the same JSON types.
    assert isinstance(contact.to_wire(), dict)


def test_location_round_trip_and_malformed() -> None:
    data = {"uid": "loc_sydney", "name": "Sydney CBD", "country": "AU"}
    assert Location.from_wire(data).to_wire() == data
    with pytest.raises(MalformedResponse, match="missing field 'country'"):
        Location.from_wire({"uid": "loc_x", "name": "X"})
    with pytest.raises(MalformedResponse):
        Location.from_wire({"uid": "loc_x", "name": None, "country": "AU"})
    with pytest.raises(MalformedResponse):
        Location.from_wire("loc_x")


def test_page_and_envelope_parsing() -> None:
    page = wire.parse_contact_page({"data": [CONTACT], "metadata": {"nextCursor": "abc"}}, "req_9")
    assert isinstance(page, list) and page.next_cursor == "abc" and page[0].request_id == "req_9"
    assert wire.parse_contact_page({"data": [], "metadata": {"nextCursor": None}}).next_cursor is None
    bad: Any
    for bad in (
        None,
        {"data": {}},
        {"data": []},
        {"data": [], "metadata": {}},
        {"data": [], "metadata": {"nextCursor": 5}},
        {"metadata": {"nextCursor": None}},
    ):
        with pytest.raises(MalformedResponse):
            wire.parse_contact_page(bad)
    with pytest.raises(MalformedResponse, match="'data'"):
        wire.parse_contact_response({"contact": CONTACT})


def test_error_body_parsing_never_raises() -> None:
    assert wire.parse_error_body({"error": {"code": "x", "message": "m", "uid": "u"}}) == ("x", "m", "u")
    assert wire.parse_error_body(b"<html>502</html>") == (None, None, None)
    assert wire.parse_error_body({"error": "boom"}) == (None, None, None)
    assert wire.parse_error_body({"error": {"code": 5}}) == (None, None, None)


def test_fields_to_wire_accepts_typed_values_and_refuses_unknown_fields() -> None:
    body = wire.fields_to_wire(
        {
            "tags": ["vip", {"label": "loyalty"}],
            "channels": [Channel.phone("0412 345 678"), {"type": "EMAIL", "identifier": "a@example.com"}],
            "attributes": [Attribute("birthday", "1990-01-01")],
            "marketingOptOut": True,
            "name": "Maria",
        }
    )
    assert body == {
        "tags": [{"label": "vip"}, {"label": "loyalty"}],
        "channels": [
            {"type": "PHONE", "identifier": "0412 345 678"},
            {"type": "EMAIL", "identifier": "a@example.com"},
        ],
        "attributes": [{"label": "birthday", "value": "1990-01-01"}],
        "marketingOptOut": True,
        "name": "Maria",
    }
    with pytest.raises(ValueError, match="uid"):
        wire.fields_to_wire({"uid": "ct_x"})
    with pytest.raises(ValueError, match="marketing_opt_out"):
        wire.fields_to_wire({"marketing_opt_out": True})


def test_export_lines_round_trip() -> None:
    loc = Location("loc_auckland", "Auckland", "NZ")
    contact = Contact.from_wire(CONTACT)
    text = wire.location_export_line(loc) + "\n\n" + wire.contact_export_line(contact) + "\n"
    assert json.loads(wire.location_export_line(loc))["object"] == "location"
    assert list(wire.iter_export(io.StringIO(text))) == [loc, contact]
    with pytest.raises(MalformedResponse, match="line 2"):
        list(wire.iter_export(io.StringIO(text.replace("\n\n", "\n{broken\n"))))


def test_webhook_event_round_trip() -> None:
    data = {
        "id": "evt_1",
        "type": "contact.updated",
        "createdAt": "2026-05-10T08:00:00Z",
        "data": {"before": CONTACT, "after": dict(CONTACT, smsOptOut=False)},
    }
    event = WebhookEvent.from_wire(data)
    assert event.before is not None and event.after is not None
    assert event.before.sms_opt_out and not event.after.sms_opt_out
    assert event.to_wire() == data
    with pytest.raises(MalformedResponse, match="unknown type"):
        WebhookEvent.from_wire(dict(data, type="contact.exploded"))
    with pytest.raises(MalformedResponse):
        WebhookEvent.from_wire({"id": "evt_1"})


def test_podium_client_never_imports_django() -> None:
    code = (
        "import sys, podium_client, podium_client.emulator, podium_client.emulator.cli, podium_client.corpus, "
        "podium_client.webhooks; "
        "sys.exit(1 if any(m == 'django' or m.startswith('django.') for m in sys.modules) else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], check=False)
    assert result.returncode == 0
