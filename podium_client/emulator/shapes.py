"""Podium's v4 objects as the emulator serves them: plain dicts in one canonical key order.

Every documented field is present (null or empty where there is nothing), nothing undocumented is
added, and the key order is fixed so that a contact serialized once can be served, dumped and
compared as a string. Also: the export file's line shapes, and telling the old invented shape from
v4 so a stale file is refused with a message that says what is expected.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

PHONE = "PHONE"
EMAIL = "EMAIL"

CONTACT_FIELDS = (
    "uid", "name", "locations", "organization", "phoneNumbers", "emails", "channels", "tags",
    "attributes", "address", "conversations", "createdAt", "updatedAt",
)  # fmt: skip
#: Served only by tenants with the `merge` or `soft-delete` capability.
CAPABILITY_FIELDS = ("deletedAt", "mergedIntoUid")
CHANNEL_FIELDS = (
    "type", "identifier", "label", "marketingOptedInLocationUids", "transactionalOptedOutAt", "createdAt",
    "updatedAt",
)  # fmt: skip
CONTACT_TAG_FIELDS = ("uid", "label", "description")
CONTACT_ATTRIBUTE_FIELDS = ("uid", "label", "value", "dataType", "ownerResource")
ADDRESS_FIELDS = ("addressLine1", "addressLine2", "city", "state", "postalCode", "country")
LOCATION_FIELDS = (
    "uid", "name", "displayName", "organizationUid", "archived", "archivedAt", "address", "addressDetails",
    "phoneNumber", "podiumPhoneNumber", "createdAt", "updatedAt",
)  # fmt: skip
ADDRESS_DETAILS_FIELDS = (
    "houseNumber", "road", "unit", "city", "state", "stateLongName", "postalCode", "country", "countryLongName",
)  # fmt: skip
ATTRIBUTE_DATA_TYPES = (
    "ADDRESS", "BOOLEAN", "DATETIME", "FLOAT", "INTEGER", "STRING", "UUID", "SINGLE_SELECT", "MULTI_SELECT",
)  # fmt: skip

#: The organization of an emulator given no other (the demo corpus uses the same one).
DEFAULT_ORGANIZATION_UID = "0f4e6c2a-9d1b-4c57-8e3f-5a2b7c9d1e00"
#: The region a location's national numbers are read in when Podium has no country for it.
DEFAULT_REGION = "AU"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
_ALPHA2 = re.compile(r"^[A-Z]{2}$")
_NS = uuid.UUID("6b1d3f0e-2a4c-4e8b-9c7d-1f2e3d4c5b6a")


class ShapeError(ValueError):
    """An object that is not a v4 object; the message names the field."""


def dumps(obj: Any) -> str:
    """Compact JSON, non-ASCII kept as is (names with accents stay readable in dumps)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def stable_uid(*parts: object) -> str:
    """A UUID that depends only on `parts` (tags and attributes named alike share a uid)."""
    return str(uuid.uuid5(_NS, "\x1f".join(str(p) for p in parts)))


# --- time ---------------------------------------------------------------------------------------------


def now_us() -> int:
    """The wall clock in microseconds since the epoch."""
    return time.time_ns() // 1000


def fmt_us(us: int) -> str:
    """`2026-05-10T08:00:00.123456Z`: six fractional digits, so two changes in one second still differ."""
    return (_EPOCH + timedelta(microseconds=us)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_us(text: str) -> int:
    """Microseconds since the epoch of an ISO 8601 timestamp with a zone; ValueError otherwise."""
    if not isinstance(text, str):
        raise ValueError("a timestamp must be a string")
    dt = datetime.fromisoformat(text.strip())
    if dt.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no time zone")
    return (dt - _EPOCH) // _ONE_US


# --- contacts -------------------------------------------------------------------------------------------


def address(value: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """An address object with all six fields (missing ones null), or None."""
    if value is None:
        return None
    return {key: value.get(key) for key in ADDRESS_FIELDS}


def new_channel(kind: str, identifier: str, stamp: str, opted_in: Iterable[str] = ()) -> dict[str, Any]:
    """A channel as Podium shows it; a new channel is opted in for marketing nowhere unless told."""
    return {
        "type": kind,
        "identifier": identifier,
        "label": None,
        "marketingOptedInLocationUids": list(opted_in),
        "transactionalOptedOutAt": None,
        "createdAt": stamp,
        "updatedAt": stamp,
    }


def location_uids(before: Mapping[str, Any], after: Mapping[str, Any]) -> tuple[str, ...]:
    """The uids of the locations a contact belonged to before or after a change, in order."""
    return tuple(dict.fromkeys(loc["uid"] for loc in [*before["locations"], *after["locations"]]))


def derive_lists(contact: dict[str, Any]) -> None:
    """Set `phoneNumbers` and `emails` from the channels (Podium shows both views of one list)."""
    channels = contact["channels"]
    contact["phoneNumbers"] = [c["identifier"] for c in channels if c["type"] == PHONE]
    contact["emails"] = [c["identifier"] for c in channels if c["type"] == EMAIL]


def _str_or_none(obj: Mapping[str, Any], key: str, where: str) -> None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise ShapeError(f"{where}{key} must be a string or null")


def _list_of_dicts(value: Any, where: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ShapeError(f"{where} must be a list of objects")
    return value


def _ordered(
    obj: Mapping[str, Any], fields: tuple[str, ...], where: str, defaults: Mapping[str, Any]
) -> dict[str, Any]:
    unknown = set(obj) - set(fields)
    if unknown:
        raise ShapeError(f"{where} has fields v4 does not document: {', '.join(sorted(unknown))}")
    out = {}
    for key in fields:
        if key in obj:
            out[key] = obj[key]
        else:
            default = defaults.get(key)
            out[key] = list(default) if isinstance(default, list) else default
    return out


_CONTACT_DEFAULTS: dict[str, Any] = {
    "locations": [], "phoneNumbers": [], "emails": [], "channels": [], "tags": [], "attributes": [],
    "conversations": [],
}  # fmt: skip
_CHANNEL_DEFAULTS: dict[str, Any] = {"marketingOptedInLocationUids": []}


_TAG_KEYS = list(CONTACT_TAG_FIELDS)
_ATTRIBUTE_KEYS = list(CONTACT_ATTRIBUTE_FIELDS)
_CHANNEL_KEYS = list(CHANNEL_FIELDS)
_CONTACT_KEYS = list(CONTACT_FIELDS)
_ADDRESS_KEYS = list(ADDRESS_FIELDS)
_UID_KEYS = ["uid"]
_OWNER_KEYS = ["type", "uid"]


def is_canonical_contact(obj: Any) -> bool:
    """Whether `obj` is already a canonical v4 contact (every field, in order, of the right types).

    The common case when loading an export this emulator or the demo corpus wrote: such a line can
    be stored as written, skipping a rebuild and a re-serialization (a million-contact load
    depends on it). False sends the object through `canonical_contact`, which explains any problem.
    """
    if type(obj) is not dict or list(obj) != _CONTACT_KEYS:
        return False
    s, n = str, type(None)
    if type(obj["uid"]) is not s or not obj["uid"] or type(obj["name"]) not in (s, n):
        return False
    if type(obj["createdAt"]) is not s or type(obj["updatedAt"]) is not s:
        return False
    for key in ("locations", "conversations"):
        items = obj[key]
        if type(items) is not list:
            return False
        for item in items:
            if type(item) is not dict or list(item) != _UID_KEYS or type(item["uid"]) is not s:
                return False
    org = obj["organization"]
    if type(org) is not dict or list(org) != _UID_KEYS or type(org["uid"]) is not s:
        return False
    for key in ("phoneNumbers", "emails"):
        items = obj[key]
        if type(items) is not list or any(type(v) is not s for v in items):
            return False
    channels = obj["channels"]
    if type(channels) is not list:
        return False
    for ch in channels:
        if type(ch) is not dict or list(ch) != _CHANNEL_KEYS or ch["type"] not in (PHONE, EMAIL):
            return False
        if type(ch["identifier"]) is not s or type(ch["label"]) not in (s, n):
            return False
        opted = ch["marketingOptedInLocationUids"]
        if type(opted) is not list or any(type(u) is not s for u in opted):
            return False
        if not (type(ch["transactionalOptedOutAt"]) in (s, n) and type(ch["createdAt"]) in (s, n)
                and type(ch["updatedAt"]) in (s, n)):  # fmt: skip
            return False
    tags = obj["tags"]
    if type(tags) is not list:
        return False
    for tag in tags:
        if type(tag) is not dict or list(tag) != _TAG_KEYS or type(tag["uid"]) is not s:
            return False
        if type(tag["label"]) is not s or type(tag["description"]) not in (s, n):
            return False
    attributes = obj["attributes"]
    if type(attributes) is not list:
        return False
    for a in attributes:
        if (
            type(a) is not dict
            or list(a) != _ATTRIBUTE_KEYS
            or type(a["uid"]) is not s
            or type(a["label"]) is not s
        ):
            return False
        owner = a["ownerResource"]
        if type(owner) is not dict or list(owner) != _OWNER_KEYS:
            return False
    address = obj["address"]
    if address is not None and (type(address) is not dict or list(address) != _ADDRESS_KEYS):
        return False
    return address is None or all(type(v) in (s, n) for v in address.values())


def canonical_contact(obj: Any, organization_uid: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """`(contact, capability extras)` of a v4 contact object, in canonical order, missing fields filled.

    Raises ShapeError naming the field for anything that is not a v4 contact; an old-shape object
    gets a message saying so. The extras are `deletedAt` / `mergedIntoUid` when present.
    """
    if not isinstance(obj, dict):
        raise ShapeError("a contact must be a JSON object")
    reason = old_shape_reason(obj)
    if reason:
        raise ShapeError(reason)
    obj = dict(obj)
    extras = {key: obj.pop(key) for key in CAPABILITY_FIELDS if key in obj}
    for key, value in extras.items():
        if value is not None and not isinstance(value, str):
            raise ShapeError(f"{key} must be a string or null")
    contact = _ordered(obj, CONTACT_FIELDS, "contact", _CONTACT_DEFAULTS)
    if not isinstance(contact["uid"], str) or not contact["uid"]:
        raise ShapeError("uid must be a non-empty string")
    _str_or_none(contact, "name", "")
    for key in ("createdAt", "updatedAt"):
        try:
            parse_us(contact[key])
        except (ValueError, TypeError):
            raise ShapeError(f"{key} must be an ISO 8601 timestamp with a zone") from None
    contact["locations"] = [
        {"uid": _uid_field(loc, "locations[]")} for loc in _list_of_dicts(contact["locations"], "locations")
    ]
    org = contact["organization"]
    if org is None:
        contact["organization"] = {"uid": organization_uid}
    elif not isinstance(org, dict):
        raise ShapeError("organization must be an object")
    else:
        contact["organization"] = {"uid": _uid_field(org, "organization")}
    channels = []
    for ch in _list_of_dicts(contact["channels"], "channels"):
        channel = _ordered(ch, CHANNEL_FIELDS, "channels[]", _CHANNEL_DEFAULTS)
        if channel["type"] not in (PHONE, EMAIL) or not isinstance(channel["identifier"], str):
            raise ShapeError('channels[] need "type" PHONE or EMAIL and a string "identifier"')
        opted = channel["marketingOptedInLocationUids"]
        if not isinstance(opted, list) or not all(isinstance(u, str) for u in opted):
            raise ShapeError("channels[].marketingOptedInLocationUids must be a list of location uids")
        for key in ("label", "transactionalOptedOutAt", "createdAt", "updatedAt"):
            _str_or_none(channel, key, "channels[].")
        channels.append(channel)
    contact["channels"] = channels
    for key in ("phoneNumbers", "emails"):
        value = contact[key]
        if value is None:
            contact[key] = []
        elif not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ShapeError(f"{key} must be a list of strings")
    contact["tags"] = [
        _ordered(t, CONTACT_TAG_FIELDS, "tags[]", {}) for t in _list_of_dicts(contact["tags"], "tags")
    ]
    for tag in contact["tags"]:
        _uid_field(tag, "tags[]")
        if not isinstance(tag["label"], str):
            raise ShapeError("tags[].label must be a string")
    attributes = []
    for a in _list_of_dicts(contact["attributes"], "attributes"):
        attribute = _ordered(a, CONTACT_ATTRIBUTE_FIELDS, "attributes[]", {})
        _uid_field(attribute, "attributes[]")
        if not isinstance(attribute["label"], str):
            raise ShapeError("attributes[].label must be a string")
        owner = attribute["ownerResource"]
        if owner is None:
            owner = {"type": "ORGANIZATION", "uid": contact["organization"]["uid"]}
        elif not isinstance(owner, dict):
            raise ShapeError("attributes[].ownerResource must be an object")
        attribute["ownerResource"] = {"type": owner.get("type"), "uid": owner.get("uid")}
        attributes.append(attribute)
    contact["attributes"] = attributes
    if contact["address"] is not None:
        if not isinstance(contact["address"], dict):
            raise ShapeError("address must be an object or null (v4 addresses are objects)")
        unknown = set(contact["address"]) - set(ADDRESS_FIELDS)
        if unknown:
            raise ShapeError(f"address has fields v4 does not document: {', '.join(sorted(unknown))}")
        contact["address"] = address(contact["address"])
    contact["conversations"] = [
        {"uid": _uid_field(c, "conversations[]")}
        for c in _list_of_dicts(contact["conversations"], "conversations")
    ]
    return contact, extras


def _uid_field(obj: Mapping[str, Any], where: str) -> str:
    uid = obj.get("uid")
    if not isinstance(uid, str) or not uid:
        raise ShapeError(f'{where} needs a string "uid"')
    return uid


# --- locations and the organization ---------------------------------------------------------------------


def canonical_location(obj: Any, organization_uid: str) -> dict[str, Any]:
    """A v4 location object in canonical order with missing fields null; ShapeError otherwise."""
    if not isinstance(obj, dict):
        raise ShapeError("a location must be a JSON object")
    fields = {k: v for k, v in obj.items() if k != "object"}
    if "country" in fields and "addressDetails" not in fields:
        raise ShapeError(
            'this location is in the old export shape (a top-level "country"); v4 locations carry '
            "it as addressDetails.country (null when Podium has none)"
        )
    location = _ordered(fields, LOCATION_FIELDS, "location", {})
    _uid_field(location, "location")
    if location["organizationUid"] is None:
        location["organizationUid"] = organization_uid
    details = location["addressDetails"] or {}
    if not isinstance(details, dict):
        raise ShapeError("addressDetails must be an object")
    location["addressDetails"] = _ordered(details, ADDRESS_DETAILS_FIELDS, "addressDetails", {})
    if location["archived"] is None:
        location["archived"] = False
    for key in ("createdAt", "updatedAt"):
        if location[key] is not None:
            try:
                parse_us(location[key])
            except (ValueError, TypeError):
                raise ShapeError(f"location {key} must be an ISO 8601 timestamp with a zone") from None
    return location


def region_of(location: Mapping[str, Any] | None) -> str | None:
    """The ISO 3166 alpha-2 region of a location's `addressDetails.country`, or None when it has none."""
    if not location:
        return None
    country = (location.get("addressDetails") or {}).get("country")
    if isinstance(country, str) and _ALPHA2.match(country.strip().upper()):
        return country.strip().upper()
    return None


def location_export_line(location: Mapping[str, Any]) -> str:
    """A location's export line: the v4 location object with `"object": "location"` first."""
    return dumps({"object": "location", **location})


def organization(
    uid: str, name: str = "Demo Organization", created: str = "2020-01-01T00:00:00Z"
) -> dict[str, Any]:
    """The organization object (`GET /v4/organizations/{uid}`)."""
    return {"uid": uid, "businessName": name, "archived": False, "createdAt": created, "updatedAt": created}


# --- the old shape ------------------------------------------------------------------------------------------

_OLD_CONTACT_KEYS = ("locationUid", "marketingOptOut", "smsOptOut", "emailOptOut", "conversationCount")


def old_shape_reason(obj: Mapping[str, Any]) -> str | None:
    """Why `obj` is a contact in the old invented shape, or None when it is not."""
    old = [key for key in _OLD_CONTACT_KEYS if key in obj]
    channels = obj.get("channels")
    bare = isinstance(channels, list) and any(
        isinstance(c, dict) and set(c) == {"type", "identifier"} for c in channels
    )
    address_text = isinstance(obj.get("address"), str)
    if not old and not bare and not address_text:
        return None
    found = [f'"{k}"' for k in old]
    if bare:
        found.append('bare {"type", "identifier"} channels')
    if address_text:
        found.append("an address string")
    return (
        f"this contact is in the old export shape ({', '.join(found)}); expected a v4 contact object as "
        "GET /v4/contacts returns it: uid, name, locations [{uid}], organization {uid}, phoneNumbers, "
        "emails, channels with marketingOptedInLocationUids and transactionalOptedOutAt, tags and "
        "attributes with uids, address as an object, conversations [{uid}], createdAt, updatedAt"
    )
