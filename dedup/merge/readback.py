"""Podium's live contacts in the forms the merge rules compare: member records and survivor views.

Numbers are compared by E.164 with the region of the contact's home location, emails normalized, tags
and attributes by the organization's uid (or label where no uid is known).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dedup.consent import ChannelConsent
from dedup.phones import normalize_phone
from dedup.records import (
    MemberRecord,
    attribute_key,
    compute_field_count,
    normalize_email,
    phone_identity,
    tag_key,
)
from dedup.survivorship import SurvivorView
from podium_client import PHONE, Contact
from podium_client.consent import consent_flags
from podium_client.types import EMAIL


def _phone_key(identifier: str, region: str) -> str | None:
    result = normalize_phone(identifier, region)
    return result.e164 if result.valid else None


def channel_consent(contact: Contact, region: str) -> tuple[ChannelConsent, ...]:
    """Each channel's consent, keyed by its identity (E.164 / normalized email)."""
    out: list[ChannelConsent] = []
    listed: set[tuple[str, str]] = set()
    for c in contact.channels:
        if c.type == PHONE:
            identity = phone_identity(_phone_key(c.identifier, region), c.identifier)
        elif c.type == EMAIL:
            identity = normalize_email(c.identifier)
        else:
            continue
        listed.add((c.type, c.identifier))
        out.append(
            ChannelConsent(
                c.type, identity, c.identifier, frozenset(c.marketing_opted_in_location_uids),
                c.transactional_opted_out_at is not None,
            )
        )  # fmt: skip
    # A number or address listed outside ``channels`` has no consent on record: nothing opted in.
    for kind, values in ((PHONE, contact.phone_numbers), (EMAIL, contact.email_addresses)):
        for value in values:
            if (kind, value) in listed:
                continue
            identity = (
                phone_identity(_phone_key(value, region), value) if kind == PHONE else normalize_email(value)
            )
            out.append(ChannelConsent(kind, identity, value, frozenset(), False))
    return tuple(out)


def member_record(contact: Contact, region: str) -> MemberRecord:
    """The domain record of a live contact (for planning from what Podium holds now)."""
    flags = consent_flags(contact)
    phones = [(p, _phone_key(p, region)) for p in contact.phones]
    address = None if contact.address is None else contact.address.to_wire()
    return MemberRecord.build(
        uid=contact.uid,
        location_uid=contact.location_uid or "",
        location_uids=contact.location_uids,
        updated_at=contact.updated_at or contact.created_at or _epoch(),
        name=contact.name or "",
        phone_channels=phones,
        raw_emails=contact.emails,
        tags=[t.label for t in contact.tags],
        attributes=[(a.label, a.text) for a in contact.attributes],
        address=None if contact.address is None else contact.address.one_line(),
        marketing_opt_out=flags.marketing_opt_out,
        sms_opt_out=flags.sms_opt_out,
        email_opt_out=flags.email_opt_out,
        field_count=compute_field_count(
            name=contact.name or "",
            phones=[key or raw for raw, key in phones],
            emails=contact.emails,
            tags=[t.label for t in contact.tags],
            attributes=[(a.label, a.text) for a in contact.attributes],
            address=None if contact.address is None else contact.address.one_line(),
        ),
        consent=channel_consent(contact, region),
        tag_refs=[(t.uid, t.label) for t in contact.tags],
        attribute_refs=[(a.uid, a.label, a.text) for a in contact.attributes],
        address_parts=address,
        conversation_uids=contact.conversation_uids,
    )


def survivor_view(contact: Contact, region: str) -> SurvivorView:
    """The primary as read back, in the form ``verify_survivor`` compares."""
    return SurvivorView(
        name=contact.name or "",
        has_address=contact.address is not None,
        emails=frozenset(normalize_email(e) for e in contact.emails),
        phones=frozenset(k for k in (_phone_key(p, region) for p in contact.phones) if k),
        tag_uids=frozenset(t.uid for t in contact.tags if t.uid),
        tag_labels=frozenset(tag_key(t.label) for t in contact.tags),
        attribute_uids={a.uid: a.text for a in contact.attributes if a.uid},
        attribute_labels={attribute_key(a.label): a.text for a in contact.attributes},
        locations=frozenset(contact.location_uids),
        conversations=frozenset(contact.conversation_uids),
        consent=channel_consent(contact, region),
    )


def snapshot_of(contact: Contact) -> dict[str, Any]:
    """The full wire form of a contact, as kept before anything is done to it (restorable from it)."""
    return contact.to_wire(capability_fields=True)


def contact_from_snapshot(snapshot: Mapping[str, Any]) -> Contact:
    """Inverse of ``snapshot_of``."""
    return Contact.from_wire(dict(snapshot))


def _epoch() -> Any:
    from datetime import UTC, datetime

    return datetime(1970, 1, 1, tzinfo=UTC)
