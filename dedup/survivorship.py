"""Survivorship: which member survives a merge, and what must be written onto it so nothing is lost.

The plan is computed here, before any call, from the indexed members alone (pure: no database, no
Podium), and travels as one typed object from approval to verification; it is stored with the merge
operation (``to_dict``) so a crashed merge resumes with the same plan.

Whatever the strategy (Podium's ``merge`` capability, or consolidating through the published API), the
survivor ends up holding only what was the primary's plus what the product writes onto it, and the
published API can write only some things:

* an empty name, address, email or phone can be **filled** (``PATCH``; a phone in E.164);
* tags and attributes are **attached** by the organization's uid;
* the survivor's **locations** become the union of the members';
* a phone's marketing consent can be **withdrawn** (``campaigns/opt_out``);
* conversations are **moved** (``PATCH conversationUid``; the ``merge`` capability moves them itself).

Anything else a duplicate held — a second address, a second phone or email when the primary has one,
an attribute whose values conflict, a number that is not valid E.164 — cannot be carried. It is a
``Loss``, named, and a merge with losses is never automatic: a person accepts each one. Stricter
consent that cannot be written onto the primary (``dedup.consent``) is a ``blocker``: no one can accept
that; the merge cannot run onto this primary.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from dedup.consent import ChannelConsent, Requirement, needs_for, requirements, violations
from dedup.names import normalize_name
from dedup.records import MemberRecord, OptOuts, attribute_key, normalize_email, phone_identity, tag_key

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

CHOSEN_BY_RULE = "rule"
CHOSEN_BY_PERSON = "person"

_UNSETTABLE_OPT_OUT = (
    "it opted out of transactional messages, which Podium's published API cannot set on another contact"
)

_ADDRESS_PARTS = ("addressLine1", "addressLine2", "city", "state", "postalCode", "country")


def _as_utc(moment: datetime) -> datetime:
    # Naive timestamps are taken as UTC so naive and aware values can be ranked together.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def primary_rank_key(member: MemberRecord) -> tuple[int, timedelta, str]:
    """Sort key whose smallest value is the primary: most fields, then newest, then lowest uid.

    Negated so a plain ascending sort (or ``min``) yields the rank order; the uid is compared as a
    string (code-point order), which makes the key unique within a cluster.
    """
    return (-member.field_count, -(_as_utc(member.updated_at) - _EPOCH), member.uid)


def _check_members(members: Sequence[MemberRecord]) -> None:
    if not members:
        raise ValueError("a merge needs at least one member")
    uids = [m.uid for m in members]
    if len(set(uids)) != len(uids):
        raise ValueError("the same member appears twice")


def rank_members(members: Iterable[MemberRecord]) -> list[MemberRecord]:
    """Members in survivorship order: the primary first, then the richest duplicate, and so on."""
    return sorted(members, key=primary_rank_key)


def choose_primary(members: Sequence[MemberRecord]) -> MemberRecord:
    """The member that survives an automatic merge (the caller's choice is never consulted).

    Most populated fields (``field_count``), then most recently updated (``updated_at``), then the
    lexically lowest uid. The uid makes the choice total, so it never depends on the input order and
    ``ERR_DEDUP_005`` (tie) cannot arise.
    """
    _check_members(members)
    return min(members, key=primary_rank_key)


def opt_out_union(members: Iterable[MemberRecord]) -> OptOuts:
    """The three flags over the members: on wherever any member has them on (for audit and display)."""
    return OptOuts.union_all(m.opt_outs for m in members)


# --- the plan ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Loss:
    """A value a duplicate held that the merge cannot carry onto the primary; a person must accept it."""

    field: str
    value: str
    from_uid: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"field": self.field, "value": self.value, "fromUid": self.from_uid, "reason": self.reason}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Loss:
        return cls(str(data["field"]), str(data["value"]), str(data["fromUid"]), str(data["reason"]))

    def describe(self) -> str:
        """One line for people: what is lost, from whom, why."""
        return f"{self.field} {self.value!r} of {self.from_uid}: {self.reason}"


@dataclass(frozen=True, slots=True)
class TagRef:
    """An organization tag to attach (by uid; by label when the index had no uid)."""

    uid: str | None
    label: str


@dataclass(frozen=True, slots=True)
class AttributeValue:
    """An attribute value to set on the primary (the attribute's uid, its label, the value as text)."""

    uid: str | None
    label: str
    value: str


@dataclass(frozen=True, slots=True)
class MergePlan:
    """What a merge will do, computed before any call; see the module docstring.

    Fills (``name``, ``address``, ``email``, ``phone``) are None when nothing is to be filled. ``tags``,
    ``attributes`` and ``conversations`` hold only what the duplicates have and the primary lacks.
    ``locations`` is the survivor's full location list when it must change (empty when the primary's
    already cover every member's). ``consent`` is the strictest consent per number
    and address (what the survivor is verified against), ``opt_out_phones`` what it takes to get there.
    """

    primary_uid: str
    duplicate_uids: tuple[str, ...]
    chosen_by: str = CHOSEN_BY_RULE
    name: str | None = None
    address: dict[str, str | None] | None = None
    email: str | None = None
    phone: str | None = None
    tags: tuple[TagRef, ...] = ()
    attributes: tuple[AttributeValue, ...] = ()
    locations: tuple[str, ...] = ()
    conversations: tuple[tuple[str, tuple[str, ...]], ...] = ()
    consent: dict[str, Requirement] = field(default_factory=dict)
    opt_out_phones: tuple[str, ...] = ()
    losses: tuple[Loss, ...] = ()
    blockers: tuple[str, ...] = ()
    member_opt_outs: dict[str, OptOuts] = field(default_factory=dict)
    opt_outs: OptOuts = field(default_factory=OptOuts)

    @property
    def member_uids(self) -> tuple[str, ...]:
        """Every member of the merge, primary first, then the duplicates by uid."""
        return (self.primary_uid, *self.duplicate_uids)

    @property
    def conversation_uids(self) -> tuple[str, ...]:
        """Every conversation to move onto the primary."""
        return tuple(c for _uid, convs in self.conversations for c in convs)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored with the operation (and shown in audit events)."""
        return {
            "primaryUid": self.primary_uid,
            "duplicateUids": list(self.duplicate_uids),
            "chosenBy": self.chosen_by,
            "name": self.name,
            "address": self.address,
            "email": self.email,
            "phone": self.phone,
            "tags": [{"uid": t.uid, "label": t.label} for t in self.tags],
            "attributes": [{"uid": a.uid, "label": a.label, "value": a.value} for a in self.attributes],
            "locations": list(self.locations),
            "conversations": {uid: list(convs) for uid, convs in self.conversations},
            "consent": {
                key: {
                    "kind": r.kind,
                    "allowedOptIn": sorted(r.allowed_opt_in),
                    "transactionalOptOut": r.transactional_opt_out,
                    "heldBy": list(r.held_by),
                    "optedOutBy": list(r.opted_out_by),
                }
                for key, r in sorted(self.consent.items())
            },
            "optOutPhones": list(self.opt_out_phones),
            "losses": [loss.to_dict() for loss in self.losses],
            "blockers": list(self.blockers),
            "memberOptOuts": {uid: flags.to_wire() for uid, flags in sorted(self.member_opt_outs.items())},
            "optOuts": self.opt_outs.to_wire(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MergePlan:
        """Inverse of ``to_dict``."""
        consent = {
            key: Requirement(
                kind=str(r.get("kind") or ""),
                identity=key,
                allowed_opt_in=frozenset(r.get("allowedOptIn") or ()),
                transactional_opt_out=bool(r.get("transactionalOptOut")),
                held_by=tuple(r.get("heldBy") or ()),
                opted_out_by=tuple(r.get("optedOutBy") or ()),
            )
            for key, r in (data.get("consent") or {}).items()
        }
        return cls(
            primary_uid=str(data["primaryUid"]),
            duplicate_uids=tuple(data.get("duplicateUids") or ()),
            chosen_by=str(data.get("chosenBy") or CHOSEN_BY_RULE),
            name=data.get("name"),
            address=data.get("address"),
            email=data.get("email"),
            phone=data.get("phone"),
            tags=tuple(TagRef(t.get("uid"), str(t.get("label") or "")) for t in data.get("tags") or ()),
            attributes=tuple(
                AttributeValue(a.get("uid"), str(a.get("label") or ""), str(a.get("value") or ""))
                for a in data.get("attributes") or ()
            ),
            locations=tuple(data.get("locations") or ()),
            conversations=tuple(
                (uid, tuple(convs)) for uid, convs in (data.get("conversations") or {}).items()
            ),
            consent=consent,
            opt_out_phones=tuple(data.get("optOutPhones") or ()),
            losses=tuple(Loss.from_dict(x) for x in data.get("losses") or ()),
            blockers=tuple(data.get("blockers") or ()),
            member_opt_outs={
                uid: OptOuts.from_wire(flags) for uid, flags in (data.get("memberOptOuts") or {}).items()
            },
            opt_outs=OptOuts.from_wire(data.get("optOuts") or {}),
        )


def _address(member: MemberRecord) -> dict[str, str | None] | None:
    parts = dict(member.address_parts)
    if not any((v or "").strip() for v in parts.values()):
        return None
    return {part: parts.get(part) for part in _ADDRESS_PARTS}


def _address_key(address: Mapping[str, str | None]) -> str:
    return "|".join(" ".join((address.get(p) or "").split()).casefold() for p in _ADDRESS_PARTS)


def _one_line(address: Mapping[str, str | None]) -> str:
    return ", ".join(str(address[p]) for p in _ADDRESS_PARTS if address.get(p))


def plan_merge(
    members: Sequence[MemberRecord],
    primary_uid: str | None = None,
    *,
    moves_conversations: bool = True,
    preferred_name: str | None = None,
) -> MergePlan:
    """Plan a merge of these members; see the module docstring for what can be carried.

    ``primary_uid`` is a person's choice in review and must name a member; without it the primary is
    ``choose_primary``'s. Duplicates are visited richest first (``primary_rank_key``), so a fill takes
    the richest duplicate's value and the others are losses. ``moves_conversations`` is False when the
    strategy moves them itself (Podium's ``merge``). ``preferred_name`` is the best-formed spelling of
    the survivor's name (same person name, better typed), written when the primary's differs.
    Deterministic: the same members in any order give the same plan.
    """
    _check_members(members)
    ranked = rank_members(members)
    if primary_uid is None:
        primary, chosen_by = ranked[0], CHOSEN_BY_RULE
    else:
        matches = [m for m in members if m.uid == primary_uid]
        if not matches:
            raise ValueError(f"the chosen primary {primary_uid!r} is not a member of this cluster")
        primary, chosen_by = matches[0], CHOSEN_BY_PERSON
    others = [m for m in ranked if m.uid != primary.uid]
    losses: list[Loss] = []

    # Name: a placeholder ("Unknown") or blank name on the primary is no name, so it can be filled.
    primary_name = primary.name if normalize_name(primary.name) else ""
    survivor_name = primary_name
    for m in others:
        if not normalize_name(m.name):
            continue
        if not survivor_name:
            survivor_name = m.name
        elif normalize_name(m.name) != normalize_name(survivor_name):
            losses.append(Loss("name", m.name, m.uid, "the survivor keeps its own name"))
    if preferred_name and survivor_name and normalize_name(preferred_name) == normalize_name(survivor_name):
        survivor_name = preferred_name
    name = survivor_name if survivor_name and survivor_name != primary.name else None

    address = None
    survivor_address = _address(primary)
    for m in others:
        theirs = _address(m)
        if theirs is None:
            continue
        if survivor_address is None:
            survivor_address = address = theirs
        elif _address_key(theirs) != _address_key(survivor_address):
            losses.append(
                Loss(
                    "address",
                    _one_line(theirs),
                    m.uid,
                    "the survivor keeps one address; Podium holds only one",
                )
            )

    # A channel written onto the primary starts with no consent given and none withdrawn; one whose
    # transactional opt-out would be lost that way is not written (nobody is messaged at a number or
    # address the survivor does not hold), and says so.
    # By uid, so who "held" a number is listed the same way whatever order the members came in.
    required = requirements({m.uid: m.consent for m in sorted(members, key=lambda m: m.uid)})

    def keeps_consent(identity: str) -> bool:
        need = required.get(identity)
        return need is None or not need.transactional_opt_out

    # Emails: the same address in any case is one; a primary without any gets the richest duplicate's
    # that can carry its consent (a new channel cannot hold a transactional opt-out).
    emails = {key for _raw, key in primary.email_channels()}
    primary_has_email = bool(emails)
    email = None
    for m in others:
        for raw, key in m.email_channels():
            if not key or key in emails:
                continue
            emails.add(key)
            if primary_has_email or email is not None:
                reason = "the survivor already has an email; Podium's API cannot add a second"
                losses.append(Loss("email", raw, m.uid, reason))
            elif not keeps_consent(key):
                losses.append(Loss("email", raw, m.uid, _UNSETTABLE_OPT_OUT))
            else:
                email = raw.strip()

    # Phones compare by number (E.164); one that is not a valid number by what was typed (two different
    # junk entries are two values, never one). The PATCH takes E.164 only.
    phones = {_phone_value(key, raw) for raw, key in primary.phone_channels() if raw.strip()}
    primary_has_phone = bool(phones)
    phone: str | None = None
    for m in others:
        for raw, phone_key in m.phone_channels():
            value = _phone_value(phone_key, raw)
            if value in phones or not raw.strip():
                continue
            phones.add(value)
            if phone_key is None:
                losses.append(Loss("phone", raw, m.uid, "not a valid phone number, so Podium cannot take it"))
            elif primary_has_phone or phone is not None:
                reason = "the survivor already has a phone; Podium's API cannot add a second"
                losses.append(Loss("phone", raw, m.uid, reason))
            elif not keeps_consent(phone_identity(phone_key, raw)):
                losses.append(Loss("phone", raw, m.uid, _UNSETTABLE_OPT_OUT))
            else:
                phone = phone_key

    tags: list[TagRef] = []
    held_tags = {tag_key(label) for _uid, label in _tag_refs(primary)}
    for m in others:
        for uid, label in _tag_refs(m):
            key = tag_key(label)
            if key and key not in held_tags:
                held_tags.add(key)
                tags.append(TagRef(uid, label))

    attributes: list[AttributeValue] = []
    held_attributes = {
        attribute_key(label): value for _uid, label, value in _attribute_refs(primary) if value.strip()
    }
    for m in others:
        for uid, label, value in _attribute_refs(m):
            key = attribute_key(label)
            if not key or not value.strip():
                continue
            if key not in held_attributes:
                held_attributes[key] = value
                attributes.append(AttributeValue(uid, label, value))
            elif held_attributes[key].strip() != value.strip():
                losses.append(
                    Loss(f"attribute:{label}", value, m.uid, f"the survivor keeps {held_attributes[key]!r}")
                )

    locations = list(primary.location_uids)
    for m in others:
        locations.extend(loc for loc in m.location_uids if loc not in locations)

    conversations = tuple(
        (m.uid, tuple(c for c in m.conversation_uids if c not in primary.conversation_uids))
        for m in sorted(others, key=lambda m: m.uid)
        if moves_conversations and m.conversation_uids
    )

    added = []
    if email is not None:
        added.append(("EMAIL", normalize_email(email)))
    if phone is not None:
        added.append(("PHONE", phone))
    needs = needs_for(required, primary.consent, added)

    return MergePlan(
        primary_uid=primary.uid,
        duplicate_uids=tuple(sorted(m.uid for m in others)),
        chosen_by=chosen_by,
        name=name,
        address=address,
        email=email,
        phone=phone,
        tags=tuple(tags),
        attributes=tuple(attributes),
        locations=tuple(locations) if set(locations) != set(primary.location_uids) else (),
        conversations=tuple((uid, convs) for uid, convs in conversations if convs),
        consent=required,
        opt_out_phones=needs.opt_out_phones,
        losses=tuple(losses),
        blockers=needs.uncarriable,
        member_opt_outs={m.uid: m.opt_outs for m in sorted(members, key=lambda m: m.uid)},
        opt_outs=opt_out_union(members),
    )


def _phone_value(natural_key: str | None, identifier: str) -> str:
    """How a phone value compares across members: its E.164, else what was typed (trimmed, case-folded)."""
    return natural_key or "raw:" + " ".join(identifier.split()).casefold()


def _tag_refs(member: MemberRecord) -> tuple[tuple[str | None, str], ...]:
    return member.tag_refs or tuple((None, label) for label in member.tags)


def _attribute_refs(member: MemberRecord) -> tuple[tuple[str | None, str, str], ...]:
    return member.attribute_refs or tuple((None, label, value) for label, value in member.attributes)


# --- verification ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SurvivorView:
    """The survivor as read back from Podium, in comparison form (see ``dedup.merge.views``)."""

    name: str
    has_address: bool
    emails: frozenset[str]
    phones: frozenset[str]
    tag_uids: frozenset[str]
    tag_labels: frozenset[str]
    attribute_uids: dict[str, str]
    attribute_labels: dict[str, str]
    locations: frozenset[str]
    conversations: frozenset[str]
    consent: tuple[ChannelConsent, ...]


def verify_survivor(plan: MergePlan, survivor: SurvivorView, *, conversations: bool) -> list[str]:
    """What the plan promised that the survivor, read back, does not hold; empty when verified.

    Checks presence, not equality with a stale picture: the survivor may hold more (an edit made in
    Podium meanwhile). The consent invariant is checked against every member's consent.
    """
    problems: list[str] = []
    if plan.name is not None and not normalize_name(survivor.name):
        problems.append("the name was not written")
    if plan.address is not None and not survivor.has_address:
        problems.append("the address was not written")
    if plan.email is not None and normalize_email(plan.email) not in survivor.emails:
        problems.append("the email was not added")
    if plan.phone is not None and plan.phone not in survivor.phones:
        problems.append("the phone was not added")
    for tag in plan.tags:
        if not ((tag.uid and tag.uid in survivor.tag_uids) or tag_key(tag.label) in survivor.tag_labels):
            problems.append(f"tag {tag.label!r} is missing")
    for attribute in plan.attributes:
        # Present with a value is enough: a value someone set in Podium meanwhile is theirs to keep; an
        # empty one is no value (the planned one was not written).
        by_uid = survivor.attribute_uids.get(attribute.uid or "", "")
        by_label = survivor.attribute_labels.get(attribute_key(attribute.label), "")
        if not (by_uid.strip() or by_label.strip()):
            problems.append(f"attribute {attribute.label!r} is missing")
    missing_locations = set(plan.locations) - survivor.locations
    if missing_locations:
        problems.append(f"locations {sorted(missing_locations)} are missing")
    if conversations:
        missing = [c for c in plan.conversation_uids if c not in survivor.conversations]
        if missing:
            problems.append(f"conversations {missing} did not move onto the survivor")
    problems.extend(violations(plan.consent, survivor.consent))
    return problems
