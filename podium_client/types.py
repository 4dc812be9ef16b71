"""The wire mapping: the one module that knows the JSON shape of the Podium contract.

Everything else (the client, the emulator, the product) works with the typed objects below. When a
real tenant shows a difference from the contract, this is the module to change.
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

#: Contact fields a PATCH may carry, in their wire spelling.
WRITABLE_FIELDS = frozenset(
    {"name", "channels", "tags", "attributes", "address", "marketingOptOut", "smsOptOut", "emailOptOut"}
)


def parse_timestamp(value: str) -> datetime:
    """Parse an ISO 8601 wire timestamp into an aware UTC datetime.

    A timestamp without an offset is read as UTC (the contract always sends `Z`; exports from other
    tools sometimes drop it). Raises ValueError/TypeError on anything that is not a timestamp.
    """
    dt = datetime.fromisoformat(value)
    tz = dt.tzinfo
    if tz is UTC:
        return dt
    if tz is None:
        return dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def format_timestamp(dt: datetime) -> str:
    """Format a datetime the way the wire spells it: UTC with a `Z` suffix."""
    if dt.tzinfo is not UTC:
        dt = dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
    return dt.isoformat().replace("+00:00", "Z")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"missing field {exc.args[0]!r}"
    return f"bad value ({type(exc).__name__}: {exc})"


def _uid_of(d: Any) -> str:
    if isinstance(d, dict):
        uid = d.get("uid")
        if isinstance(uid, str):
            return f" {uid}"
    return ""


@dataclass(slots=True, frozen=True)
class Location:
    """A Podium location; `country` is the default region for parsing its national-format numbers."""

    uid: str
    name: str
    country: str

    @classmethod
    def from_wire(cls, d: Any) -> Location:
        """Build a Location from its wire dict; raises MalformedResponse when the shape is wrong."""
        try:
            uid, name, country = d["uid"], d["name"], d["country"]
        except (KeyError, TypeError, AttributeError) as exc:
            raise MalformedResponse(f"malformed location{_uid_of(d)}: {_describe(exc)}", body=d) from None
        if type(uid) is not str or type(name) is not str or type(country) is not str:
            raise MalformedResponse(
                f"malformed location{_uid_of(d)}: uid, name and country must be strings", body=d
            )
        return cls(uid, name, country)

    def to_wire(self) -> dict[str, Any]:
        """The contract's JSON dict for this location."""
        return {"uid": self.uid, "name": self.name, "country": self.country}


@dataclass(slots=True, frozen=True)
class Channel:
    """A phone number or email address as typed by a person (`type` is PHONE or EMAIL)."""

    type: str
    identifier: str

    @classmethod
    def phone(cls, identifier: str) -> Channel:
        """A PHONE channel."""
        return cls(PHONE, identifier)

    @classmethod
    def email(cls, identifier: str) -> Channel:
        """An EMAIL channel."""
        return cls(EMAIL, identifier)

    def to_wire(self) -> dict[str, Any]:
        """The contract's JSON dict for this channel."""
        return {"type": self.type, "identifier": self.identifier}


@dataclass(slots=True, frozen=True)
class Attribute:
    """A custom attribute (label/value) of a contact."""

    label: str
    value: str | None

    def to_wire(self) -> dict[str, Any]:
        """The contract's JSON dict for this attribute."""
        return {"label": self.label, "value": self.value}


@dataclass(slots=True, frozen=True)
class Contact:
    """A Podium contact.

    `tags` holds the tag labels. Timestamps are aware UTC datetimes. `request_id` is the
    `X-Request-Id` of the response that produced this object (None when read from a file); it is not
    part of the wire shape and does not take part in equality.
    """

    uid: str
    location_uid: str
    name: str | None
    channels: tuple[Channel, ...]
    tags: tuple[str, ...]
    attributes: tuple[Attribute, ...]
    address: str | None
    marketing_opt_out: bool
    sms_opt_out: bool
    email_opt_out: bool
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None
    merged_into_uid: str | None
    conversation_count: int
    request_id: str | None = field(default=None, compare=False)

    @property
    def phones(self) -> tuple[str, ...]:
        """The identifiers of the PHONE channels, as typed."""
        return tuple(c.identifier for c in self.channels if c.type == PHONE)

    @property
    def emails(self) -> tuple[str, ...]:
        """The identifiers of the EMAIL channels, as typed."""
        return tuple(c.identifier for c in self.channels if c.type == EMAIL)

    @property
    def is_deleted(self) -> bool:
        """True when the contact is soft-deleted (including a merged-away duplicate)."""
        return self.deleted_at is not None

    @classmethod
    def from_wire(cls, d: Any, request_id: str | None = None) -> Contact:
        """Build a Contact from its wire dict; raises MalformedResponse when the shape is wrong.

        This runs once per contact of a full scan (millions of times), so it checks types with
        plain identity tests instead of a validation framework.
        """
        try:
            uid = d["uid"]
            location_uid = d["locationUid"]
            name = d["name"]
            channels = tuple([Channel(c["type"], c["identifier"]) for c in d["channels"]])
            tags = tuple([t["label"] for t in d["tags"]])
            attributes = tuple([Attribute(a["label"], a["value"]) for a in d["attributes"]])
            address = d["address"]
            marketing = d["marketingOptOut"]
            sms = d["smsOptOut"]
            email = d["emailOptOut"]
            created_at = parse_timestamp(d["createdAt"])
            updated_at = parse_timestamp(d["updatedAt"])
            deleted_raw = d["deletedAt"]
            deleted_at = None if deleted_raw is None else parse_timestamp(deleted_raw)
            merged_into = d["mergedIntoUid"]
            conversations = d["conversationCount"]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MalformedResponse(f"malformed contact{_uid_of(d)}: {_describe(exc)}", body=d) from None
        if not (
            type(uid) is str
            and type(location_uid) is str
            and (name is None or type(name) is str)
            and (address is None or type(address) is str)
            and type(marketing) is bool
            and type(sms) is bool
            and type(email) is bool
            and (merged_into is None or type(merged_into) is str)
            and type(conversations) is int
        ):
            raise MalformedResponse(f"malformed contact{_uid_of(d)}: a field has the wrong type", body=d)
        for c in channels:
            if type(c.type) is not str or type(c.identifier) is not str:
                raise MalformedResponse(f"malformed contact {uid}: channel {c!r} is not two strings", body=d)
        for t in tags:
            if type(t) is not str:
                raise MalformedResponse(f"malformed contact {uid}: tag label {t!r} is not a string", body=d)
        for a in attributes:
            if type(a.label) is not str or (a.value is not None and type(a.value) is not str):
                raise MalformedResponse(f"malformed contact {uid}: attribute {a!r} is not strings", body=d)
        return cls(
            uid,
            location_uid,
            name,
            channels,
            tags,
            attributes,
            address,
            marketing,
            sms,
            email,
            created_at,
            updated_at,
            deleted_at,
            merged_into,
            conversations,
            request_id,
        )

    def to_wire(self) -> dict[str, Any]:
        """The contract's JSON dict for this contact (without request_id)."""
        return {
            "uid": self.uid,
            "locationUid": self.location_uid,
            "name": self.name,
            "channels": [{"type": c.type, "identifier": c.identifier} for c in self.channels],
            "tags": [{"label": t} for t in self.tags],
            "attributes": [{"label": a.label, "value": a.value} for a in self.attributes],
            "address": self.address,
            "marketingOptOut": self.marketing_opt_out,
            "smsOptOut": self.sms_opt_out,
            "emailOptOut": self.email_opt_out,
            "createdAt": format_timestamp(self.created_at),
            "updatedAt": format_timestamp(self.updated_at),
            "deletedAt": None if self.deleted_at is None else format_timestamp(self.deleted_at),
            "mergedIntoUid": self.merged_into_uid,
            "conversationCount": self.conversation_count,
        }


class ContactPage(list[Contact]):
    """One page of contacts; a list that also carries the cursor of the next page (None on the last).

    A scanner can persist `next_cursor` after handling a page to resume there after a crash.
    """

    __slots__ = ("next_cursor", "request_id")

    def __init__(
        self, contacts: Iterable[Contact] = (), next_cursor: str | None = None, request_id: str | None = None
    ) -> None:
        super().__init__(contacts)
        self.next_cursor = next_cursor
        self.request_id = request_id


WEBHOOK_EVENT_TYPES = frozenset(
    {"contact.created", "contact.updated", "contact.deleted", "contact.merged", "contact.restored"}
)


@dataclass(slots=True, frozen=True)
class WebhookEvent:
    """A contact webhook delivery.

    `contact.merged` is sent once per duplicate merged away (`after.merged_into_uid` names the
    primary); the primary's own change arrives as `contact.updated`. Deliveries can repeat and arrive
    out of order, so consumers compare `updated_at` rather than trusting arrival order.
    """

    id: str
    type: str
    created_at: datetime
    before: Contact | None
    after: Contact | None

    @classmethod
    def from_wire(cls, d: Any) -> WebhookEvent:
        """Build an event from its wire dict; raises MalformedResponse when the shape is wrong."""
        try:
            event_id, event_type = d["id"], d["type"]
            created_at = parse_timestamp(d["createdAt"])
            data = d["data"]
            before_raw, after_raw = data["before"], data["after"]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MalformedResponse(f"malformed webhook event: {_describe(exc)}", body=d) from None
        if type(event_id) is not str or event_type not in WEBHOOK_EVENT_TYPES:
            raise MalformedResponse(f"malformed webhook event: unknown type {event_type!r}", body=d)
        before = None if before_raw is None else Contact.from_wire(before_raw)
        after = None if after_raw is None else Contact.from_wire(after_raw)
        return cls(event_id, event_type, created_at, before, after)

    def to_wire(self) -> dict[str, Any]:
        """The contract's JSON dict for this event."""
        return {
            "id": self.id,
            "type": self.type,
            "createdAt": format_timestamp(self.created_at),
            "data": {
                "before": None if self.before is None else self.before.to_wire(),
                "after": None if self.after is None else self.after.to_wire(),
            },
        }


# --- envelopes -------------------------------------------------------------------------------------


def unwrap_object(body: Any) -> Any:
    """The `data` of a single-object envelope; raises MalformedResponse when there is none."""
    if not isinstance(body, dict) or "data" not in body:
        raise MalformedResponse("response has no 'data' envelope", body=body)
    return body["data"]


def parse_contact_response(body: Any, request_id: str | None = None) -> Contact:
    """Parse `{"data": {contact}}`."""
    return Contact.from_wire(unwrap_object(body), request_id)


def parse_contact_page(body: Any, request_id: str | None = None) -> ContactPage:
    """Parse `{"data": [contacts], "metadata": {"nextCursor": ...}}`."""
    items = unwrap_object(body)
    if not isinstance(items, list):
        raise MalformedResponse("contact page 'data' is not a list", body=body)
    metadata = body.get("metadata")
    if not isinstance(metadata, dict) or "nextCursor" not in metadata:
        raise MalformedResponse("contact page has no 'metadata.nextCursor'", body=body)
    cursor = metadata["nextCursor"]
    if cursor is not None and (type(cursor) is not str or not cursor):
        raise MalformedResponse("contact page 'nextCursor' is not a string or null", body=body)
    from_wire = Contact.from_wire
    return ContactPage([from_wire(item, request_id) for item in items], cursor, request_id)


def parse_location_list(body: Any) -> list[Location]:
    """Parse `{"data": [locations]}`."""
    items = unwrap_object(body)
    if not isinstance(items, list):
        raise MalformedResponse("location list 'data' is not a list", body=body)
    return [Location.from_wire(item) for item in items]


def parse_error_body(body: Any) -> tuple[str | None, str | None, str | None]:
    """(code, message, uid) from an error body; all None when it is not the contract's error shape.

    Error bodies often come from proxies (an HTML 502 page), so this never raises.
    """
    if not isinstance(body, dict):
        return None, None, None
    err = body.get("error")
    if not isinstance(err, dict):
        return None, None, None
    code, message, uid = err.get("code"), err.get("message"), err.get("uid")
    return (
        code if isinstance(code, str) else None,
        message if isinstance(message, str) else None,
        uid if isinstance(uid, str) else None,
    )


def error_body(code: str, message: str, uid: str | None = None) -> dict[str, Any]:
    """The contract's error body."""
    err: dict[str, Any] = {"code": code, "message": message}
    if uid is not None:
        err["uid"] = uid
    return {"error": err}


# --- request bodies ---------------------------------------------------------------------------------


def _channel_to_wire(c: Channel | Mapping[str, Any]) -> dict[str, Any]:
    return c.to_wire() if isinstance(c, Channel) else dict(c)


def _attribute_to_wire(a: Attribute | Mapping[str, Any]) -> dict[str, Any]:
    return a.to_wire() if isinstance(a, Attribute) else dict(a)


def _tag_to_wire(t: str | Mapping[str, Any]) -> dict[str, Any]:
    return {"label": t} if isinstance(t, str) else dict(t)


def fields_to_wire(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Turn a PATCH's fields (wire names; typed or wire values) into the wire body.

    `tags` may be labels or `{"label": ...}` dicts; `channels`/`attributes` may be Channel/Attribute
    objects or wire dicts. Raises ValueError on a field that is not writable, before any call is made.
    """
    unknown = set(fields) - WRITABLE_FIELDS
    if unknown:
        raise ValueError(
            f"not writable contact fields: {sorted(unknown)}; writable: {sorted(WRITABLE_FIELDS)}"
        )
    body: dict[str, Any] = {}
    for key, value in fields.items():
        if key == "channels":
            body[key] = [_channel_to_wire(c) for c in value]
        elif key == "tags":
            body[key] = [_tag_to_wire(t) for t in value]
        elif key == "attributes":
            body[key] = [_attribute_to_wire(a) for a in value]
        else:
            body[key] = value
    return body


def contact_create_body(
    location_uid: str,
    name: str | None = None,
    channels: Iterable[Channel | Mapping[str, Any]] = (),
    tags: Iterable[str | Mapping[str, Any]] = (),
    attributes: Iterable[Attribute | Mapping[str, Any]] = (),
    address: str | None = None,
    marketing_opt_out: bool = False,
    sms_opt_out: bool = False,
    email_opt_out: bool = False,
) -> dict[str, Any]:
    """The wire body of `POST /v4/contacts`."""
    return {
        "locationUid": location_uid,
        "name": name,
        "channels": [_channel_to_wire(c) for c in channels],
        "tags": [_tag_to_wire(t) for t in tags],
        "attributes": [_attribute_to_wire(a) for a in attributes],
        "address": address,
        "marketingOptOut": marketing_opt_out,
        "smsOptOut": sms_opt_out,
        "emailOptOut": email_opt_out,
    }


def merge_body(duplicate_uids: Iterable[str]) -> dict[str, Any]:
    """The wire body of `POST /v4/contacts/{primaryUid}/merge`."""
    return {"duplicateUids": list(duplicate_uids)}


# --- export files -----------------------------------------------------------------------------------


def parse_export_line(line: str | bytes) -> Location | Contact:
    """Parse one line of an NDJSON export: a Location (`"object": "location"`) or a Contact."""
    try:
        obj = json.loads(line)
    except ValueError as exc:
        raise MalformedResponse(f"export line is not JSON: {exc}") from None
    if isinstance(obj, dict) and obj.get("object") == "location":
        return Location.from_wire(obj)
    return Contact.from_wire(obj)


def location_export_line(location: Location) -> str:
    """One NDJSON export line for a location (no trailing newline)."""
    return json.dumps({"object": "location", **location.to_wire()}, ensure_ascii=False, separators=(",", ":"))


def contact_export_line(contact: Contact) -> str:
    """One NDJSON export line for a contact (no trailing newline)."""
    return json.dumps(contact.to_wire(), ensure_ascii=False, separators=(",", ":"))


def iter_export(stream: TextIO | Iterable[str]) -> Iterator[Location | Contact]:
    """Parse an NDJSON export lazily, skipping blank lines.

    A malformed line raises MalformedResponse naming its line number.
    """
    for lineno, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            yield parse_export_line(line)
        except MalformedResponse as exc:
            raise MalformedResponse(f"line {lineno}: {exc.message}", body=exc.body) from None
