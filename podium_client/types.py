"""The wire mapping: the one module that knows the JSON shapes of Podium's published v4 API.

Everything else (the client, the product) works with the typed objects below. The shapes are those of
Podium's OpenAPI documents (``podium_client/openapi/``); how loose parts are read is written down in
``podium_client/CONTRACT.md``. Reading is tolerant where Podium is loose and strict where it matters:

* unknown extra fields are ignored (Podium adds fields without a version bump);
* a documented field that is missing or null reads as empty (None, an empty tuple);
* a field of the wrong type raises ``MalformedResponse`` naming the object, its uid and the field path,
  because acting on a misread contact (a consent flag read as absent) is worse than stopping.

``deletedAt`` and ``mergedIntoUid`` are not part of the published contact: they exist only on tenants
with the ``soft-delete`` capability (Part 2 of the contract) and read as None everywhere else.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from podium_client.errors import MalformedResponse

PHONE = "PHONE"
EMAIL = "EMAIL"

#: Attribute values Podium may hold: the documents leave the type open (numbers, booleans, selections).
AttributeValue = str | int | float | bool | list[str] | None


def parse_timestamp(value: str) -> datetime:
    """Parse an ISO 8601 wire timestamp into an aware UTC datetime.

    A timestamp without an offset is read as UTC (Podium always sends ``Z``; exports from other tools
    sometimes drop it). Raises ValueError/TypeError on anything that is not a timestamp.
    """
    dt = datetime.fromisoformat(value)
    tz = dt.tzinfo
    if tz is UTC:
        return dt
    if tz is None:
        return dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def format_timestamp(dt: datetime) -> str:
    """Format a datetime the way the wire spells it: UTC with a ``Z`` suffix."""
    if dt.tzinfo is not UTC:
        dt = dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
    return dt.isoformat().replace("+00:00", "Z")


def format_filter_timestamp(dt: datetime) -> str:
    """The ``YYYY-MM-DDTHH:MM:SSZ`` form Podium's ``updated_at`` filter takes (second precision)."""
    if dt.tzinfo is not UTC:
        dt = dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


# --- reading helpers ---------------------------------------------------------------------------------


class _Bad(Exception):
    """Internal: a field of the wrong type; carries the field path for the MalformedResponse."""

    def __init__(self, path: str, expected: str, got: Any) -> None:
        super().__init__(path)
        self.path = path
        self.expected = expected
        self.got = got

    def describe(self) -> str:
        return f"field {self.path!r} must be {self.expected}, got {type(self.got).__name__}"


def _str(d: Mapping[str, Any], key: str, path: str = "") -> str | None:
    value = d.get(key)
    if value is None or type(value) is str:
        return value
    raise _Bad(path + key, "a string or null", value)


def _list(d: Mapping[str, Any], key: str, path: str = "") -> list[Any]:
    value = d.get(key)
    if value is None:
        return []
    if type(value) is list:
        return value
    raise _Bad(path + key, "a list or null", value)


def _obj(value: Any, path: str) -> Mapping[str, Any]:
    if isinstance(value, dict):
        return value
    raise _Bad(path, "an object", value)


def _time(d: Mapping[str, Any], key: str, path: str = "") -> datetime | None:
    value = d.get(key)
    if value is None:
        return None
    if type(value) is not str:
        raise _Bad(path + key, "a timestamp string or null", value)
    try:
        return parse_timestamp(value)
    except ValueError:
        raise _Bad(path + key, "an ISO 8601 timestamp", value) from None


def _strings(d: Mapping[str, Any], key: str, path: str = "") -> tuple[str, ...]:
    items = _list(d, key, path)
    for i, item in enumerate(items):
        if type(item) is not str:
            raise _Bad(f"{path}{key}[{i}]", "a string", item)
    return tuple(items)


def _uid_refs(d: Mapping[str, Any], key: str, path: str = "") -> tuple[str, ...]:
    """A list of ``{"uid": ...}`` references, as uids (entries without a uid are skipped)."""
    out: list[str] = []
    for i, item in enumerate(_list(d, key, path)):
        ref = _obj(item, f"{path}{key}[{i}]")
        uid = _str(ref, "uid", f"{path}{key}[{i}].")
        if uid:
            out.append(uid)
    return tuple(out)


def _uid_for_message(d: Any) -> str:
    if isinstance(d, dict):
        uid = d.get("uid")
        if isinstance(uid, str):
            return f" {uid}"
    return ""


def _is_region(value: str | None) -> bool:
    return value is not None and len(value) == 2 and value.isascii() and value.isalpha()


# --- objects ------------------------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class Address:
    """A postal address (a contact's; every part may be empty)."""

    address_line1: str | None = None
    address_line2: str | None = None
    city: str | None = None
    state: str | None = None
    postal_code: str | None = None
    country: str | None = None

    _WIRE = (
        ("address_line1", "addressLine1"),
        ("address_line2", "addressLine2"),
        ("city", "city"),
        ("state", "state"),
        ("postal_code", "postalCode"),
        ("country", "country"),
    )

    @classmethod
    def from_wire(cls, d: Any, path: str = "address") -> Address | None:
        """An Address, or None when the wire has none (null, or every part empty)."""
        if d is None:
            return None
        obj = _obj(d, path)
        parts = [_str(obj, wire, path + ".") for _attr, wire in cls._WIRE]
        address = cls(*[p.strip() if p and p.strip() else None for p in parts])
        return None if address.is_empty else address

    @property
    def is_empty(self) -> bool:
        """True when no part holds text."""
        return not any(getattr(self, attr) for attr, _wire in self._WIRE)

    def to_wire(self) -> dict[str, str | None]:
        """The wire object (every documented part present, null where empty)."""
        return {wire: getattr(self, attr) for attr, wire in self._WIRE}

    def one_line(self) -> str:
        """The address as one line for people to read."""
        return ", ".join(str(getattr(self, attr)) for attr, _wire in self._WIRE if getattr(self, attr))


@dataclass(slots=True, frozen=True)
class Location:
    """A Podium location.

    ``country`` is ``addressDetails.country`` when Podium gives an ISO 3166 alpha-2 code (upper-cased),
    else None: the product then falls back to a region an admin set, then to the deployment default.
    """

    uid: str
    name: str
    country: str | None = None
    display_name: str | None = None
    organization_uid: str | None = None
    archived: bool = False
    updated_at: datetime | None = None

    @classmethod
    def from_wire(cls, d: Any) -> Location:
        """Build a Location from its wire object; raises MalformedResponse when the shape is wrong."""
        try:
            obj = _obj(d, "location")
            uid = _str(obj, "uid")
            if not uid:
                raise _Bad("uid", "a non-empty string", obj.get("uid"))
            details = obj.get("addressDetails")
            country = None
            if details is not None:
                raw_country = (_str(_obj(details, "addressDetails"), "country", "addressDetails.") or "").strip()
                country = raw_country.upper() if _is_region(raw_country) else None
            name = _str(obj, "name") or _str(obj, "displayName") or uid
            archived = obj.get("archived")
            if archived is not None and type(archived) is not bool:
                raise _Bad("archived", "a boolean or null", archived)
            return cls(
                uid=uid,
                name=name,
                country=country,
                display_name=_str(obj, "displayName"),
                organization_uid=_str(obj, "organizationUid"),
                archived=bool(archived),
                updated_at=_time(obj, "updatedAt"),
            )
        except _Bad as bad:
            raise MalformedResponse(
                f"malformed location{_uid_for_message(d)}: {bad.describe()}", body=d
            ) from None


@dataclass(slots=True, frozen=True)
class Channel:
    """A phone number or email address of a contact, with Podium's consent for it.

    ``marketing_opted_in_location_uids`` lists the locations where this channel may receive marketing;
    ``transactional_opted_out_at`` is when it opted out of transactional messages (None: it did not).
    """

    type: str
    identifier: str
    label: str | None = None
    marketing_opted_in_location_uids: tuple[str, ...] = ()
    transactional_opted_out_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @classmethod
    def phone(cls, identifier: str, **kwargs: Any) -> Channel:
        """A PHONE channel."""
        return cls(PHONE, identifier, **kwargs)

    @classmethod
    def email(cls, identifier: str, **kwargs: Any) -> Channel:
        """An EMAIL channel."""
        return cls(EMAIL, identifier, **kwargs)

    @classmethod
    def from_wire(cls, d: Any, path: str) -> Channel:
        """One entry of a contact's ``channels``."""
        obj = _obj(d, path)
        prefix = path + "."
        identifier = _str(obj, "identifier", prefix)
        if identifier is None:
            raise _Bad(prefix + "identifier", "a string", None)
        kind = _str(obj, "type", prefix)
        return cls(
            type=(kind or "").upper(),
            identifier=identifier,
            label=_str(obj, "label", prefix),
            marketing_opted_in_location_uids=_strings(obj, "marketingOptedInLocationUids", prefix),
            transactional_opted_out_at=_time(obj, "transactionalOptedOutAt", prefix),
            created_at=_time(obj, "createdAt", prefix),
            updated_at=_time(obj, "updatedAt", prefix),
        )

    def to_wire(self) -> dict[str, Any]:
        """The wire object."""
        return {
            "type": self.type,
            "identifier": self.identifier,
            "label": self.label,
            "marketingOptedInLocationUids": list(self.marketing_opted_in_location_uids),
            "transactionalOptedOutAt": _fmt_or_none(self.transactional_opted_out_at),
            "createdAt": _fmt_or_none(self.created_at),
            "updatedAt": _fmt_or_none(self.updated_at),
        }


@dataclass(slots=True, frozen=True)
class Tag:
    """An organization tag (as attached to a contact, or as listed at ``/v4/contact_tags``)."""

    uid: str | None
    label: str
    description: str | None = None

    @classmethod
    def from_wire(cls, d: Any, path: str = "tag") -> Tag:
        """One tag object; a tag without a label reads as an empty label."""
        obj = _obj(d, path)
        prefix = path + "."
        return cls(
            _str(obj, "uid", prefix), _str(obj, "label", prefix) or "", _str(obj, "description", prefix)
        )

    def to_wire(self) -> dict[str, Any]:
        """The wire object as it appears in a contact's ``tags``."""
        return {"uid": self.uid, "label": self.label, "description": self.description}


@dataclass(slots=True, frozen=True)
class Attribute:
    """A contact's value for one of the organization's attributes (``uid`` is the attribute's)."""

    uid: str | None
    label: str
    value: AttributeValue = None
    data_type: str | None = None
    owner_type: str | None = None
    owner_uid: str | None = None

    @classmethod
    def from_wire(cls, d: Any, path: str = "attribute") -> Attribute:
        """One entry of a contact's ``attributes``."""
        obj = _obj(d, path)
        prefix = path + "."
        value = obj.get("value")
        if not (value is None or type(value) in (str, int, float, bool) or _is_string_list(value)):
            raise _Bad(prefix + "value", "a string, number, boolean, list of strings or null", value)
        owner = obj.get("ownerResource")
        owner_obj = _obj(owner, prefix + "ownerResource") if owner is not None else {}
        return cls(
            uid=_str(obj, "uid", prefix),
            label=_str(obj, "label", prefix) or "",
            value=value,
            data_type=_str(obj, "dataType", prefix),
            owner_type=_str(owner_obj, "type", prefix + "ownerResource."),
            owner_uid=_str(owner_obj, "uid", prefix + "ownerResource."),
        )

    @property
    def text(self) -> str:
        """The value as text, for comparing and showing (a selection joined with commas)."""
        value = self.value
        if value is None:
            return ""
        if isinstance(value, list):
            return ", ".join(value)
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    def to_wire(self) -> dict[str, Any]:
        """The wire object as it appears in a contact's ``attributes``."""
        return {
            "uid": self.uid,
            "label": self.label,
            "value": self.value,
            "dataType": self.data_type,
            "ownerResource": {"type": self.owner_type, "uid": self.owner_uid},
        }


def _is_string_list(value: Any) -> bool:
    return type(value) is list and all(type(v) is str for v in value)


@dataclass(slots=True, frozen=True)
class AttributeDefinition:
    """One of the organization's attribute definitions (``/v4/contact_attributes``)."""

    uid: str
    label: str
    data_type: str | None = None

    @classmethod
    def from_wire(cls, d: Any) -> AttributeDefinition:
        """Parse a definition; raises MalformedResponse when it has no uid."""
        try:
            obj = _obj(d, "attribute definition")
            uid = _str(obj, "uid")
            if not uid:
                raise _Bad("uid", "a non-empty string", obj.get("uid"))
            return cls(uid, _str(obj, "label") or "", _str(obj, "dataType"))
        except _Bad as bad:
            raise MalformedResponse(f"malformed attribute definition: {bad.describe()}", body=d) from None


@dataclass(slots=True, frozen=True)
class Contact:
    """A Podium contact as the published v4 API shows it.

    ``phones``/``emails`` merge the identifiers of the contact's channels with ``phoneNumbers`` /
    ``emails`` (Podium sends both; a number may appear in only one of them). ``request_id`` is the
    ``X-Request-Id`` of the response that produced this object (None when read from a file); it is not
    part of the wire shape and does not take part in equality.
    """

    uid: str
    name: str | None = None
    location_uids: tuple[str, ...] = ()
    organization_uid: str | None = None
    phone_numbers: tuple[str, ...] = ()
    email_addresses: tuple[str, ...] = ()
    channels: tuple[Channel, ...] = ()
    tags: tuple[Tag, ...] = ()
    attributes: tuple[Attribute, ...] = ()
    address: Address | None = None
    conversation_uids: tuple[str, ...] = ()
    created_at: datetime | None = None
    updated_at: datetime | None = None
    # Part 2 (capability soft-delete) only; always None on a tenant serving the published API alone.
    deleted_at: datetime | None = None
    merged_into_uid: str | None = None
    request_id: str | None = field(default=None, compare=False)

    @property
    def location_uid(self) -> str | None:
        """The first location (Podium lists a contact's home location first), or None."""
        return self.location_uids[0] if self.location_uids else None

    @property
    def phones(self) -> tuple[str, ...]:
        """Every phone identifier, as typed: the PHONE channels', then ``phoneNumbers`` not among them."""
        return _merge_identifiers(self.channels, PHONE, self.phone_numbers)

    @property
    def emails(self) -> tuple[str, ...]:
        """Every email identifier, as typed: the EMAIL channels', then ``emails`` not among them."""
        return _merge_identifiers(self.channels, EMAIL, self.email_addresses)

    @property
    def tag_labels(self) -> tuple[str, ...]:
        """The labels of the contact's tags."""
        return tuple(t.label for t in self.tags)

    @property
    def is_hidden(self) -> bool:
        """True when a soft-delete tenant reports the contact deleted or merged away."""
        return self.deleted_at is not None or bool(self.merged_into_uid)

    def channel(self, kind: str, identifier: str) -> Channel | None:
        """The channel of that type holding exactly that identifier, if any."""
        for c in self.channels:
            if c.type == kind and c.identifier == identifier:
                return c
        return None

    @classmethod
    def from_wire(cls, d: Any, request_id: str | None = None) -> Contact:
        """Build a Contact from its wire object; raises MalformedResponse naming a mistyped field.

        This runs once per contact of a full scan (millions of times), so it checks types with plain
        identity tests instead of a validation framework.
        """
        try:
            obj = _obj(d, "contact")
            uid = obj.get("uid")
            if type(uid) is not str or not uid:
                raise _Bad("uid", "a non-empty string", uid)
            organization = obj.get("organization")
            org_uid = None
            if organization is not None:
                org_uid = _str(_obj(organization, "organization"), "uid", "organization.")
            channels = tuple(
                [Channel.from_wire(c, f"channels[{i}]") for i, c in enumerate(_list(obj, "channels"))]
            )
            tags = tuple(
                [Tag.from_wire(t, f"tags[{i}]") for i, t in enumerate(_list(obj, "tags")) if t is not None]
            )
            attributes = tuple(
                [
                    Attribute.from_wire(a, f"attributes[{i}]")
                    for i, a in enumerate(_list(obj, "attributes"))
                    if a is not None
                ]
            )
            merged_into = _str(obj, "mergedIntoUid")
            return cls(
                uid=uid,
                name=_str(obj, "name"),
                location_uids=_uid_refs(obj, "locations"),
                organization_uid=org_uid,
                phone_numbers=_strings(obj, "phoneNumbers"),
                email_addresses=_strings(obj, "emails"),
                channels=channels,
                tags=tags,
                attributes=attributes,
                address=Address.from_wire(obj.get("address")),
                conversation_uids=_uid_refs(obj, "conversations"),
                created_at=_time(obj, "createdAt"),
                updated_at=_time(obj, "updatedAt"),
                deleted_at=_time(obj, "deletedAt"),
                merged_into_uid=merged_into or None,
                request_id=request_id,
            )
        except _Bad as bad:
            raise MalformedResponse(
                f"malformed contact{_uid_for_message(d)}: {bad.describe()}", body=d
            ) from None

    def to_wire(self, *, capability_fields: bool = False) -> dict[str, Any]:
        """The published wire object (with ``deletedAt``/``mergedIntoUid`` only when asked for)."""
        out: dict[str, Any] = {
            "uid": self.uid,
            "name": self.name,
            "locations": [{"uid": u} for u in self.location_uids],
            "organization": {"uid": self.organization_uid},
            "phoneNumbers": list(self.phones),
            "emails": list(self.emails),
            "channels": [c.to_wire() for c in self.channels],
            "tags": [t.to_wire() for t in self.tags],
            "attributes": [a.to_wire() for a in self.attributes],
            "address": None if self.address is None else self.address.to_wire(),
            "conversations": [{"uid": u} for u in self.conversation_uids],
            "createdAt": _fmt_or_none(self.created_at),
            "updatedAt": _fmt_or_none(self.updated_at),
        }
        if capability_fields:
            out["deletedAt"] = _fmt_or_none(self.deleted_at)
            out["mergedIntoUid"] = self.merged_into_uid
        return out


def _fmt_or_none(dt: datetime | None) -> str | None:
    return None if dt is None else format_timestamp(dt)


def _merge_identifiers(channels: tuple[Channel, ...], kind: str, listed: tuple[str, ...]) -> tuple[str, ...]:
    out = [c.identifier for c in channels if c.type == kind]
    seen = set(out)
    for value in listed:
        if value not in seen:
            seen.add(value)
            out.append(value)
    return tuple(out)


class ContactPage(list[Contact]):
    """One page of contacts; a list that also carries the cursor of the next page (None on the last).

    A scanner can persist ``next_cursor`` after handling a page to resume there after a crash.
    ``rejected`` holds the page's entries that are not readable contacts, each with its error: one bad
    record must not hide the other ninety-nine.
    """

    __slots__ = ("next_cursor", "rejected", "request_id")

    def __init__(
        self,
        contacts: Iterable[Contact] = (),
        next_cursor: str | None = None,
        request_id: str | None = None,
        rejected: Iterable[tuple[Any, MalformedResponse]] = (),
    ) -> None:
        super().__init__(contacts)
        self.next_cursor = next_cursor
        self.request_id = request_id
        self.rejected: list[tuple[Any, MalformedResponse]] = list(rejected)


class LocationPage(list[Location]):
    """One page of locations, with the cursor of the next page (None on the last)."""

    __slots__ = ("next_cursor",)

    def __init__(self, locations: Iterable[Location] = (), next_cursor: str | None = None) -> None:
        super().__init__(locations)
        self.next_cursor = next_cursor


@dataclass(slots=True, frozen=True)
class Webhook:
    """A registered webhook (``/v4/webhooks``). The secret is never read back into logs."""

    uid: str
    url: str | None
    event_types: tuple[str, ...]
    disabled: bool = False
    organization_uid: str | None = None
    location_uid: str | None = None
    has_secret: bool = False
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @classmethod
    def from_wire(cls, d: Any) -> Webhook:
        """Parse a webhook object; raises MalformedResponse when it has no uid."""
        try:
            obj = _obj(d, "webhook")
            uid = _str(obj, "uid")
            if not uid:
                raise _Bad("uid", "a non-empty string", obj.get("uid"))
            disabled = obj.get("disabled")
            if disabled is not None and type(disabled) is not bool:
                raise _Bad("disabled", "a boolean or null", disabled)
            return cls(
                uid=uid,
                url=_str(obj, "url"),
                event_types=_strings(obj, "eventTypes"),
                disabled=bool(disabled),
                organization_uid=_str(obj, "organizationUid"),
                location_uid=_str(obj, "locationUid"),
                has_secret=bool(_str(obj, "secret")),
                created_at=_time(obj, "createdAt"),
                updated_at=_time(obj, "updatedAt"),
            )
        except _Bad as bad:
            raise MalformedResponse(
                f"malformed webhook{_uid_for_message(d)}: {bad.describe()}", body=d
            ) from None


#: The contact events a webhook may carry (Podium's enum, contact part).
CONTACT_EVENT_TYPES = frozenset(
    {"contact.created", "contact.updated", "contact.deleted", "contact.merged", "contact.unchanged"}
)


@dataclass(slots=True, frozen=True)
class WebhookEvent:
    """A contact webhook delivery: ``data.before`` / ``data.after`` and the event's metadata.

    ``event_uid`` is ``metadata.eventUid`` when Podium sends one; a receiver that needs a delivery key
    falls back to a hash of the raw body. Deliveries repeat and arrive out of order, so consumers compare
    ``updated_at`` rather than trusting arrival order.
    """

    event_type: str
    event_uid: str | None
    occurred_at: datetime | None
    before: Contact | None
    after: Contact | None
    location_uid: str | None = None
    organization_uid: str | None = None

    @property
    def contact(self) -> Contact | None:
        """The contact as it is after the event (before, for a deletion)."""
        return self.after if self.after is not None else self.before

    @classmethod
    def from_wire(cls, d: Any) -> WebhookEvent:
        """Parse a delivery body; raises MalformedResponse when it is not a contact event."""
        try:
            obj = _obj(d, "webhook event")
            metadata = _obj(obj.get("metadata"), "metadata")
            data = _obj(obj.get("data"), "data")
            event_type = _str(metadata, "eventType", "metadata.")
            if event_type not in CONTACT_EVENT_TYPES:
                raise _Bad("metadata.eventType", f"one of {sorted(CONTACT_EVENT_TYPES)}", event_type)
            before_raw, after_raw = data.get("before"), data.get("after")
            return cls(
                event_type=event_type,
                event_uid=_str(metadata, "eventUid", "metadata.") or None,
                occurred_at=_time(metadata, "timestamp", "metadata."),
                before=None if before_raw is None else Contact.from_wire(before_raw),
                after=None if after_raw is None else Contact.from_wire(after_raw),
                location_uid=_str(metadata, "locationUid", "metadata."),
                organization_uid=_str(metadata, "organizationUid", "metadata."),
            )
        except _Bad as bad:
            raise MalformedResponse(f"malformed webhook event: {bad.describe()}", body=d) from None


# --- envelopes -------------------------------------------------------------------------------------


def unwrap_object(body: Any) -> Any:
    """The ``data`` of an envelope; raises MalformedResponse when there is none."""
    if not isinstance(body, dict) or "data" not in body:
        raise MalformedResponse("response has no 'data' envelope", body=body)
    return body["data"]


def next_cursor_of(body: Mapping[str, Any]) -> str | None:
    """``metadata.nextCursor`` of a list envelope; absent, null or empty all mean the last page."""
    metadata = body.get("metadata")
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise MalformedResponse("list 'metadata' is not an object", body=body)
    cursor = metadata.get("nextCursor")
    if cursor is None or cursor == "":
        return None
    if type(cursor) is not str:
        raise MalformedResponse("list 'metadata.nextCursor' is not a string", body=body)
    return cursor


def _list_data(body: Any, what: str) -> list[Any]:
    items = unwrap_object(body)
    if not isinstance(items, list):
        raise MalformedResponse(f"{what} list 'data' is not a list", body=body)
    return items


def parse_contact_response(body: Any, request_id: str | None = None) -> Contact:
    """Parse ``{"data": {contact}}``."""
    return Contact.from_wire(unwrap_object(body), request_id)


def parse_contact_page(body: Any, request_id: str | None = None) -> ContactPage:
    """Parse ``{"data": [contacts], "metadata": {"nextCursor": ...}}``.

    A malformed entry goes to the page's ``rejected`` (with its error) instead of failing the page; a
    malformed envelope raises MalformedResponse.
    """
    items = _list_data(body, "contact")
    cursor = next_cursor_of(body)
    from_wire = Contact.from_wire
    contacts: list[Contact] = []
    rejected: list[tuple[Any, MalformedResponse]] = []
    for item in items:
        try:
            contacts.append(from_wire(item, request_id))
        except MalformedResponse as exc:
            rejected.append((item, exc))
    return ContactPage(contacts, cursor, request_id, rejected)


def parse_location_page(body: Any) -> LocationPage:
    """Parse a page of ``GET /v4/locations``."""
    items = _list_data(body, "location")
    return LocationPage([Location.from_wire(item) for item in items], next_cursor_of(body))


def parse_tag_list(body: Any) -> list[Tag]:
    """Parse ``GET /v4/contact_tags`` (tags without a uid cannot be attached and are skipped)."""
    tags = [Tag.from_wire(item) for item in _list_data(body, "tag")]
    return [t for t in tags if t.uid]


def parse_attribute_definitions(body: Any) -> list[AttributeDefinition]:
    """Parse ``GET /v4/contact_attributes``."""
    return [AttributeDefinition.from_wire(item) for item in _list_data(body, "attribute")]


def parse_write_identifier(body: Any) -> str | None:
    """The ``identifier`` of a 202 answer ``{"data": {"identifier": ...}}`` (None when absent)."""
    if body is None:
        return None
    data = unwrap_object(body)
    if not isinstance(data, dict):
        raise MalformedResponse("write answer 'data' is not an object", body=body)
    identifier = data.get("identifier")
    if identifier is not None and type(identifier) is not str:
        raise MalformedResponse("write answer 'data.identifier' is not a string", body=body)
    return identifier or None


def parse_error_body(body: Any) -> tuple[str | None, str | None, str | None]:
    """(code, message, uid) from Podium's top-level error body ``{"code", "message", "moreInfo"}``.

    The documents type ``code`` as an integer while the developer docs and tenants send strings; both
    are read (as text). Error bodies often come from proxies (an HTML 502 page), so this never raises.
    ``uid`` is a capability tenant's hint at the offending contact (``invalid_duplicate_uid``).
    """
    if not isinstance(body, dict):
        return None, None, None
    code, message, uid = body.get("code"), body.get("message"), body.get("uid")
    if isinstance(code, bool):
        code = None
    elif isinstance(code, int):
        code = str(code)
    return (
        code if isinstance(code, str) and code else None,
        message if isinstance(message, str) else None,
        uid if isinstance(uid, str) else None,
    )


def error_body(code: str, message: str, more_info: str | None = None) -> dict[str, Any]:
    """Podium's error body."""
    return {"code": code, "message": message, "moreInfo": more_info or "https://docs.podium.com/docs/errors"}


# --- request bodies ---------------------------------------------------------------------------------

#: Fields ``PATCH /v4/contacts/{identifier}`` accepts (Podium's request schema, additionalProperties false).
PATCH_FIELDS = frozenset(
    {"name", "email", "phoneNumber", "address", "locations", "contactStatus", "conversationUid"}
)


def contact_patch_body(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The wire body of a PATCH; raises ValueError before any call on a field Podium does not accept.

    ``address`` may be an Address; ``locations`` an iterable of location uids.
    """
    unknown = set(fields) - PATCH_FIELDS
    if unknown:
        raise ValueError(f"not writable contact fields: {sorted(unknown)}; writable: {sorted(PATCH_FIELDS)}")
    if not fields:
        raise ValueError("a PATCH needs at least one field")
    body: dict[str, Any] = {}
    for key, value in fields.items():
        if key == "address" and isinstance(value, Address):
            body[key] = value.to_wire()
        elif key == "locations":
            body[key] = list(value)
        else:
            body[key] = value
    return body


def contact_create_body(
    name: str,
    location_uids: Iterable[str],
    *,
    phone_number: str | None = None,
    email: str | None = None,
    address: Address | None = None,
    attributes: Iterable[tuple[str, str]] = (),
) -> dict[str, Any]:
    """The wire body of ``POST /v4/contacts`` (an upsert on a matching phone or email)."""
    body: dict[str, Any] = {"name": name, "locations": list(location_uids)}
    if phone_number is not None:
        body["phoneNumber"] = phone_number
    if email is not None:
        body["email"] = email
    if address is not None:
        body["address"] = address.to_wire()
    attrs = [{"uid": uid, "value": value} for uid, value in attributes]
    if attrs:
        body["attributes"] = attrs
    return body


def opt_out_body(phone_e164: str) -> dict[str, Any]:
    """The wire body of ``POST /v4/contacts/campaigns/opt_out`` for one phone number."""
    return {"channel": {"type": PHONE, "identifier": phone_e164}}


def merge_body(duplicate_uids: Iterable[str]) -> dict[str, Any]:
    """The wire body of the ``merge`` capability."""
    return {"duplicateUids": list(duplicate_uids)}


# --- export files -----------------------------------------------------------------------------------

#: Keys only the pre-v4 export shape had; a line carrying them is refused with a clear message.
_OLD_CONTACT_KEYS = frozenset(
    {"locationUid", "marketingOptOut", "smsOptOut", "emailOptOut", "conversationCount"}
)

EXPECTED_EXPORT_SHAPE = (
    "expected Podium's v4 export: one JSON object per line, a location line being a v4 location object "
    'with "object": "location", a contact line a v4 contact object exactly as GET /v4/contacts returns '
    "it (uid, name, locations, phoneNumbers, emails, channels with consent, tags, attributes, address, "
    "conversations, createdAt, updatedAt)"
)


class OldExportShape(MalformedResponse):
    """An export line in the product's pre-v4 shape (``locationUid``, three boolean opt-outs, ...)."""


def parse_export_object(obj: Any) -> Location | Contact:
    """Parse one decoded export line: a Location (``"object": "location"``) or a Contact."""
    if isinstance(obj, dict):
        if obj.get("object") == "location":
            if "country" in obj and "addressDetails" not in obj:
                raise OldExportShape(
                    "a location line in the pre-v4 shape (top-level 'country'); " + EXPECTED_EXPORT_SHAPE
                )
            return Location.from_wire(obj)
        old = _OLD_CONTACT_KEYS & obj.keys()
        if old:
            raise OldExportShape(
                f"a contact line in the pre-v4 shape (has {', '.join(sorted(old))}); " + EXPECTED_EXPORT_SHAPE
            )
    return Contact.from_wire(obj)


def parse_export_line(line: str | bytes) -> Location | Contact:
    """Parse one line of an NDJSON export."""
    try:
        obj = json.loads(line)
    except ValueError as exc:
        raise MalformedResponse(f"not JSON ({exc})") from None
    return parse_export_object(obj)


def location_export_line(location: Mapping[str, Any]) -> str:
    """One NDJSON export line for a location wire object (no trailing newline)."""
    return json.dumps({"object": "location", **location}, ensure_ascii=False, separators=(",", ":"))


def contact_export_line(contact: Contact | Mapping[str, Any]) -> str:
    """One NDJSON export line for a contact (no trailing newline)."""
    wire = contact.to_wire() if isinstance(contact, Contact) else contact
    return json.dumps(wire, ensure_ascii=False, separators=(",", ":"))


def iter_export(stream: TextIO | Iterable[str]) -> Iterator[Location | Contact]:
    """Parse an NDJSON export lazily, skipping blank lines.

    A malformed line raises MalformedResponse naming its line number.
    """
    for lineno, line in enumerate(stream, 1):
        if lineno == 1:
            line = line.lstrip("\ufeff")
        if not line.strip():
            continue
        try:
            yield parse_export_line(line)
        except MalformedResponse as exc:
            raise type(exc)(f"line {lineno}: {exc.message}", body=exc.body) from None
