"""The domain's view of one indexed contact (a cluster member), independent of the ORM and of the wire.

Everything in the domain modules (names, scoring, survivorship, clustering) works on these records, so
the rules can be tested without a database and without Podium.

Phone channels carry two views that must stay aligned, because a merge compares phones by natural key
but writes back the identifier exactly as Podium holds it:

* ``phones`` — the E.164 natural keys of the contact's *valid* phones;
* ``raw_phones`` — every phone channel identifier as Podium holds it. ``raw_phones[i]`` is the
  identifier whose natural key is ``phones[i]`` for every ``i < len(phones)``; the identifiers after
  that (``raw_phones[len(phones):]``) did not become a natural key (unparseable or invalid numbers,
  waiting in the uncategorized queue) but still belong to the contact and must survive a merge.

``MemberRecord.build`` assembles both tuples from ``(identifier, key_or_None)`` pairs so callers do not
have to get the alignment right by hand.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from dedup.consent import ChannelConsent

# The wire names of the three opt-out flags, in the order Podium documents them.
OPT_OUT_WIRE_FIELDS: tuple[str, str, str] = ("marketingOptOut", "smsOptOut", "emailOptOut")


def normalize_email(raw: str) -> str:
    """The comparison form of an email channel: NFKC, trimmed, lower-cased ("" for a blank identifier).

    The same transformation as the index's email key (``dedup.phones.normalize_email``), minus its "@"
    check: here an identifier that is not an email is still a channel that must survive a merge.
    Lower-casing the local part is technically lossy (RFC 5321 allows case-sensitive mailboxes) but no
    real mail provider distinguishes them, and staff type emails in every case.
    """
    return unicodedata.normalize("NFKC", raw).strip().lower()


def tag_key(label: str) -> str:
    """How two tag labels are compared: trimmed and case-folded, so "VIP" and "vip " are one tag."""
    return " ".join(label.split()).casefold()


def attribute_key(label: str) -> str:
    """How two attribute labels are compared (same rule as tags)."""
    return " ".join(label.split()).casefold()


def compute_field_count(
    *,
    name: str,
    phones: Iterable[str],
    emails: Iterable[str],
    tags: Iterable[str],
    attributes: Iterable[tuple[str, str]],
    address: str | None,
) -> int:
    """How many fields of a contact are populated; the first criterion for choosing the primary.

    The rule (one point each):

    * a name that is not blank;
    * each distinct phone channel (pass natural keys where known, so two spellings of one number on
      the same contact count once; blank identifiers are ignored);
    * each distinct email channel (compared normalized);
    * each distinct tag (compared trimmed and case-folded);
    * each attribute with a non-blank value (one per distinct label);
    * an address that is not blank.

    Opt-out flags do not count: they are compliance state, not customer data, and counting them would
    make opting out a reason to become the primary.
    """
    count = 1 if name.strip() else 0
    count += len({p.strip() for p in phones if p.strip()})
    count += len({normalize_email(e) for e in emails if e.strip()})
    count += len({tag_key(t) for t in tags if t.strip()})
    count += len({attribute_key(label) for label, value in attributes if label.strip() and value.strip()})
    count += 1 if address is not None and address.strip() else 0
    return count


@dataclass(frozen=True, slots=True)
class OptOuts:
    """The three opt-out flags of a contact (or the union over a cluster).

    A flag that is True means the customer said no; nothing in the product may ever turn one off,
    so the only combining operation offered is ``union``.
    """

    marketing: bool = False
    sms: bool = False
    email: bool = False

    @classmethod
    def of(cls, record: MemberRecord) -> OptOuts:
        """The flags of one member."""
        return cls(record.marketing_opt_out, record.sms_opt_out, record.email_opt_out)

    @classmethod
    def from_wire(cls, data: Mapping[str, object]) -> OptOuts:
        """Read the flags from a Podium-shaped mapping; a missing flag reads as False."""
        return cls(
            bool(data.get("marketingOptOut", False)),
            bool(data.get("smsOptOut", False)),
            bool(data.get("emailOptOut", False)),
        )

    @classmethod
    def union_all(cls, flags: Iterable[OptOuts]) -> OptOuts:
        """The union of any number of flag sets (all False for none)."""
        result = cls()
        for f in flags:
            result = result.union(f)
        return result

    def union(self, other: OptOuts) -> OptOuts:
        """A flag set that is on wherever either side is on."""
        return OptOuts(self.marketing or other.marketing, self.sms or other.sms, self.email or other.email)

    def covers(self, other: OptOuts) -> bool:
        """True when every flag that is on in ``other`` is also on here (``self`` loses no opt-out)."""
        return (
            (self.marketing or not other.marketing)
            and (self.sms or not other.sms)
            and (self.email or not other.email)
        )

    @property
    def any(self) -> bool:
        """True when at least one flag is on."""
        return self.marketing or self.sms or self.email

    def to_wire(self) -> dict[str, bool]:
        """The flags under their Podium names, e.g. for a PATCH body or an audit event."""
        return {"marketingOptOut": self.marketing, "smsOptOut": self.sms, "emailOptOut": self.email}


@dataclass(frozen=True, slots=True)
class MemberRecord:
    """One indexed contact as the domain rules see it. See the module docstring for the phone alignment."""

    uid: str
    location_uid: str
    name: str
    phones: tuple[str, ...]
    raw_phones: tuple[str, ...]
    emails: tuple[str, ...]
    raw_emails: tuple[str, ...]
    tags: tuple[str, ...]
    attributes: tuple[tuple[str, str], ...]
    address: str | None
    marketing_opt_out: bool
    sms_opt_out: bool
    email_opt_out: bool
    field_count: int
    updated_at: datetime
    # Every location of the contact, home (``location_uid``) first; a Podium contact may have several.
    location_uids: tuple[str, ...] = ()
    # What a merge carries besides the above (empty where a caller only scores): each channel's consent,
    # tags and attributes with the organization's uids, the address as Podium's parts, conversations.
    consent: tuple[ChannelConsent, ...] = ()
    tag_refs: tuple[tuple[str | None, str], ...] = ()
    attribute_refs: tuple[tuple[str | None, str, str], ...] = ()
    address_parts: tuple[tuple[str, str | None], ...] = ()
    conversation_uids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Cheap structural checks only: a misaligned record would make a merge write back the wrong
        # identifier, which is worth failing loudly for at construction time.
        if not self.uid:
            raise ValueError("a member needs a uid")
        if not self.location_uids:
            object.__setattr__(self, "location_uids", (self.location_uid,) if self.location_uid else ())
        if len(self.raw_phones) < len(self.phones):
            raise ValueError(
                f"member {self.uid}: raw_phones must hold the identifier of every natural key in phones "
                f"({len(self.raw_phones)} identifiers for {len(self.phones)} keys)"
            )
        if self.field_count < 0:
            raise ValueError(f"member {self.uid}: field_count cannot be negative")

    @classmethod
    def build(
        cls,
        *,
        uid: str,
        location_uid: str,
        updated_at: datetime,
        name: str = "",
        phone_channels: Iterable[tuple[str, str | None]] = (),
        raw_emails: Iterable[str] = (),
        tags: Iterable[str] = (),
        attributes: Iterable[tuple[str, str]] = (),
        address: str | None = None,
        marketing_opt_out: bool = False,
        sms_opt_out: bool = False,
        email_opt_out: bool = False,
        field_count: int | None = None,
        location_uids: Iterable[str] = (),
        consent: Iterable[ChannelConsent] = (),
        tag_refs: Iterable[tuple[str | None, str]] = (),
        attribute_refs: Iterable[tuple[str | None, str, str]] = (),
        address_parts: Mapping[str, str | None] | None = None,
        conversation_uids: Iterable[str] = (),
    ) -> MemberRecord:
        """Assemble a record from channels as the index holds them, keeping phones aligned.

        ``phone_channels`` are ``(identifier as Podium holds it, E.164 key or None when the phone did
        not become a key)``. ``field_count`` defaults to ``compute_field_count`` over the same data.
        """
        channels = [(raw, key) for raw, key in phone_channels if raw.strip()]
        keyed = [(raw, key) for raw, key in channels if key]
        unkeyed = [raw for raw, key in channels if not key]
        raw_email_list = [e for e in raw_emails if e.strip()]
        emails: list[str] = []
        for e in raw_email_list:
            key = normalize_email(e)
            if key not in emails:
                emails.append(key)
        tag_tuple = tuple(tags)
        attr_tuple = tuple((label, value) for label, value in attributes)
        if field_count is None:
            field_count = compute_field_count(
                name=name,
                phones=[key or raw for raw, key in channels],
                emails=raw_email_list,
                tags=tag_tuple,
                attributes=attr_tuple,
                address=address,
            )
        return cls(
            uid=uid,
            location_uid=location_uid,
            name=name,
            phones=tuple(key for _raw, key in keyed if key),
            raw_phones=tuple(raw for raw, _key in keyed) + tuple(unkeyed),
            emails=tuple(emails),
            raw_emails=tuple(raw_email_list),
            tags=tag_tuple,
            attributes=attr_tuple,
            address=address,
            marketing_opt_out=marketing_opt_out,
            sms_opt_out=sms_opt_out,
            email_opt_out=email_opt_out,
            field_count=field_count,
            updated_at=updated_at,
            location_uids=tuple(location_uids),
            consent=tuple(consent),
            tag_refs=tuple(tag_refs),
            attribute_refs=tuple(attribute_refs),
            address_parts=tuple(sorted((address_parts or {}).items())),
            conversation_uids=tuple(conversation_uids),
        )

    @property
    def opt_outs(self) -> OptOuts:
        """This member's three opt-out flags."""
        return OptOuts.of(self)

    def phone_channels(self) -> tuple[tuple[str, str | None], ...]:
        """Every phone channel as ``(identifier, natural key or None)``, in the record's order."""
        n = len(self.phones)
        keyed = tuple((raw, key) for raw, key in zip(self.raw_phones[:n], self.phones, strict=True))
        return keyed + tuple((raw, None) for raw in self.raw_phones[n:])

    def email_channels(self) -> tuple[tuple[str, str], ...]:
        """Every email channel as ``(identifier, normalized key)``.

        Falls back to the normalized ``emails`` when the record carries no raw identifiers.
        """
        source = self.raw_emails if self.raw_emails else self.emails
        return tuple((raw, normalize_email(raw)) for raw in source if raw.strip())


def phone_identity(natural_key: str | None, identifier: str) -> str:
    """How a phone compares across contacts: its E.164, else its digits (an unparseable number)."""
    if natural_key:
        return natural_key
    return "raw:" + "".join(ch for ch in identifier if ch.isdigit() or ch == "+")
