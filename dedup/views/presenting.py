"""How the review and merge pages say Podium's v4 data to a person: consent per channel, the surviving record.

Podium keeps consent per channel (the locations where a number or address may receive marketing, and
a transactional opt-out); the pages say it in words ("marketing: opted in at Sydney CBD",
"transactional opt-out") with location names, not uids. The surviving record is the primary as indexed
plus what the merge plan writes onto it. Values of members the viewer reads only masked go through a
``Revealer`` (``dedup.masking``); nothing here decides who may see what (``dedup.access`` does).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from dedup.consent import ChannelConsent, Requirement
from dedup.masking import Revealer
from dedup.models import Location, MergeOperation
from dedup.records import MemberRecord, attribute_key, normalize_email, tag_key
from dedup.survivorship import Loss, MergePlan

PHONE = "PHONE"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def location_names(uids: Iterable[str] | None = None) -> dict[str, str]:
    """``{location uid: name}`` (every location, or these), in one query."""
    rows = Location.objects.all() if uids is None else Location.objects.filter(uid__in=list(uids))
    return dict(rows.values_list("uid", "name"))


def names_of(uids: Iterable[str], names: Mapping[str, str]) -> list[str]:
    """Location names for uids, in order; an unknown location shows its uid."""
    return [names.get(uid, uid) for uid in uids]


def show_identifier(kind: str, value: str, reveal: Revealer) -> str:
    return reveal.phone(value) if kind == PHONE else reveal.email(value)


def consent_line(
    channel: ChannelConsent, member_locations: Sequence[str], names: Mapping[str, str], reveal: Revealer
) -> str:
    """One channel's consent in words, e.g. "0412 345 678 — marketing: opted in at Sydney CBD".

    Marketing is said per location: where the channel may receive it, and which of the contact's own
    locations it may not (that is what makes the product's marketing opt-out flag true).
    """
    shown = show_identifier(channel.kind, channel.identifier, reveal)
    if channel.opted_in:
        marketing = "marketing: opted in at " + ", ".join(sorted(names_of(channel.opted_in, names)))
        missing = [loc for loc in member_locations if loc not in channel.opted_in]
        if missing:
            marketing += " (not at " + ", ".join(names_of(missing, names)) + ")"
    else:
        marketing = "marketing: opted out (not opted in anywhere)"
    parts = [marketing]
    if channel.transactional_opt_out:
        parts.append("transactional opt-out" + (" (no texts at all)" if channel.kind == PHONE else " (no email at all)"))
    return f"{shown} — " + "; ".join(parts)


def requirement_line(
    requirement: Requirement, names: Mapping[str, str], reveal: Revealer, withdrawn: Collection[str]
) -> str:
    """The consent the survivor is held to for one number or address, and how the merge gets it there."""
    kind = "phone" if requirement.kind == PHONE else "email"
    shown = show_identifier(requirement.kind, requirement.identity, reveal)
    if requirement.allowed_opt_in:
        marketing = "marketing at most at " + ", ".join(sorted(names_of(requirement.allowed_opt_in, names)))
    else:
        marketing = "no marketing anywhere"
    if requirement.identity in withdrawn:
        marketing += " — withdrawn on the survivor with Podium's campaigns opt-out"
    parts = [marketing]
    if requirement.transactional_opt_out:
        parts.append("transactional opt-out")
    holders = len(requirement.held_by)
    return f"{kind} {shown} ({holders} member{'s' if holders != 1 else ''}): " + "; ".join(parts)


def losses_digest(losses: Sequence[Loss]) -> str:
    """A short fingerprint of what a merge would lose, so an approval accepts exactly the losses it saw."""
    text = json.dumps([loss.to_dict() for loss in losses], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def strategy_sentence(strategy: str, duplicates: int, conversations: int) -> str:
    """What approving will do, for the strategy this deployment merges with."""
    many = "s" if duplicates != 1 else ""
    if strategy == MergeOperation.NATIVE:
        return (
            f"Podium's merge (this tenant has the merge capability) folds the duplicate{many} into the primary and "
            "hides them; the product then writes what Podium's merge did not carry, reads the primary back and checks "
            "it, consent included. An admin can un-hide a duplicate later."
        )
    moved = f", their {conversations} conversation{'s' if conversations != 1 else ''} are moved to it" if conversations else ""
    return (
        "Through Podium's published API: what only the duplicate" + many + " hold is written onto the primary"
        f"{moved}, and the primary is read back and checked, consent included. Only then is each duplicate deleted "
        "in Podium. Its snapshot is kept: an admin can re-create it (Podium gives it a new uid)."
    )


@dataclass
class Survivor:
    """The record that survives a merge, as a person reads it; ``added`` values come from the duplicates."""

    uid: str
    name: str
    name_added: bool
    phones: list[tuple[str, bool]] = field(default_factory=list)
    emails: list[tuple[str, bool]] = field(default_factory=list)
    address: str = ""
    address_added: bool = False
    tags: list[tuple[str, bool]] = field(default_factory=list)
    attributes: list[tuple[str, str, bool]] = field(default_factory=list)
    locations: list[tuple[str, bool]] = field(default_factory=list)
    conversations: int = 0
    conversations_moved: int = 0
    consent: list[str] = field(default_factory=list)


def address_text(parts: Mapping[str, str | None] | None) -> str:
    """An address object on one line ("1 George St, Sydney, NSW, 2000")."""
    if not parts:
        return ""
    order = ("addressLine1", "addressLine2", "city", "state", "postalCode", "country")
    return ", ".join(str(parts[p]) for p in order if parts.get(p))


def survivor(plan: MergePlan, primary: MemberRecord | None, reveal: Revealer, names: Mapping[str, str]) -> Survivor:
    """The primary (as indexed) plus what the plan writes onto it; a value already there is not repeated."""
    if primary is None:
        primary = MemberRecord.build(uid=plan.primary_uid, location_uid="", updated_at=_EPOCH)
    result = Survivor(
        uid=plan.primary_uid,
        name=reveal.name(plan.name or primary.name),
        name_added=plan.name is not None,
    )
    result.phones = [(reveal.phone(p), False) for p in primary.raw_phones]
    if plan.phone and plan.phone not in primary.phones:
        result.phones.append((reveal.phone(plan.phone), True))
    result.emails = [(reveal.email(e), False) for e in primary.raw_emails or primary.emails]
    if plan.email and normalize_email(plan.email) not in primary.emails:
        result.emails.append((reveal.email(plan.email), True))
    own_address = address_text(dict(primary.address_parts)) or (primary.address or "")
    if plan.address and not own_address:
        result.address, result.address_added = reveal.text(address_text(plan.address)), True
    else:
        result.address = reveal.text(own_address)
    held_tags = {tag_key(t) for t in primary.tags}
    result.tags = [(t, False) for t in primary.tags]
    result.tags += [(t.label, True) for t in plan.tags if tag_key(t.label) not in held_tags]
    held_attributes = {attribute_key(label) for label, _value in primary.attributes}
    result.attributes = [(label, reveal.text(value), False) for label, value in primary.attributes]
    result.attributes += [
        (a.label, reveal.text(a.value), True) for a in plan.attributes if attribute_key(a.label) not in held_attributes
    ]
    own = list(primary.location_uids)
    result.locations = [(n, False) for n in names_of(own, names)]
    result.locations += [(n, True) for n in names_of([u for u in plan.locations if u not in own], names)]
    moved = [c for c in plan.conversation_uids if c not in primary.conversation_uids]
    result.conversations = len(primary.conversation_uids) + len(moved)
    result.conversations_moved = len(moved)
    held = {c.identity for c in primary.consent}
    if plan.phone:
        held.add(plan.phone)
    if plan.email:
        held.add(normalize_email(plan.email))
    result.consent = [
        requirement_line(r, names, reveal, plan.opt_out_phones)
        for key, r in sorted(plan.consent.items())
        if key in held
    ]
    return result


def loss_rows(losses: Iterable[Loss | Mapping[str, str]], reveal: Revealer) -> list[dict[str, str]]:
    """Losses as the pages list them, values masked where the viewer may not read them."""
    rows = []
    for loss in losses:
        data = loss.to_dict() if isinstance(loss, Loss) else dict(loss)
        field_name = str(data.get("field", ""))
        value = str(data.get("value", ""))
        if field_name == "phone":
            shown = reveal.phone(value)
        elif field_name == "email":
            shown = reveal.email(value)
        elif field_name == "name":
            shown = reveal.name(value)
        else:
            shown = reveal.text(value)
        rows.append({**data, "field": field_name.replace("attribute:", "attribute ", 1), "value": shown})
    return rows


def call_text(call: Mapping[str, object], reveal: Revealer) -> str:
    """One call the write-back sent, in words ("attach tag VIP", "campaigns opt-out +61•••678")."""
    kind = str(call.get("call", ""))
    if kind == "PATCH":
        listed = call.get("fields")
        fields = [str(f) for f in listed] if isinstance(listed, list) else []
        if "conversationUid" in fields and call.get("conversation"):
            return f"PATCH the primary: move conversation {call['conversation']}"
        return "PATCH the primary: " + (", ".join(fields) or "no fields")
    if kind == "attach_tag":
        return f"attach tag {call.get('tag', '')}"
    if kind == "set_attribute":
        return f"set attribute {call.get('attribute', '')}"
    if kind == "campaigns/opt_out":
        return f"campaigns opt-out of {call.get('phone', '')} (marketing withdrawn)"
    rest = ", ".join(f"{k} {v}" for k, v in call.items() if k != "call")
    return f"{kind} {rest}".strip()


_PAYLOAD_NAMES = frozenset({"name"})
_PAYLOAD_EMAILS = frozenset({"email", "emails"})
_PAYLOAD_PHONES = frozenset({"phone", "phones", "phoneNumber", "phoneNumbers", "optOutPhones"})
_PAYLOAD_TEXT = frozenset(
    {"address", "addressLine1", "addressLine2", "city", "state", "postalCode", "value", "identifier", "kept", "dropped"}
)


def mask_payload(value: object, reveal: Revealer, key: str = "") -> object:
    """An audit payload with the customer values a viewer may not read masked (the structure kept).

    Values are recognised by the key that holds them (``name``, ``email``, ``phone``, ``address`` parts,
    an attribute's or a loss's ``value``...); uids, codes and states are left as they are.
    """
    if reveal.reveal_all:
        return value
    if isinstance(value, dict):
        return {k: mask_payload(v, reveal, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_payload(v, reveal, key) for v in value]
    if not isinstance(value, str):
        return value
    if key in _PAYLOAD_NAMES:
        return reveal.name(value)
    if key in _PAYLOAD_EMAILS:
        return reveal.email(value)
    if key in _PAYLOAD_PHONES:
        return reveal.phone(value)
    if key in _PAYLOAD_TEXT:
        return reveal.text(value)
    return value
