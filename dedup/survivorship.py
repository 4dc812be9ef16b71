"""Survivorship: which member survives a merge, which opt-outs it must carry, and what to write back.

Podium's merge keeps only the primary's fields, so the product writes back, right after the merge,
everything only the duplicates held. The plan for that write-back is computed here, before any call,
from the indexed members alone, and stored so a crashed merge can resume with the same plan.

The compliance invariant: the plan's opt-outs are the union of every member's, and the write-back
always carries all three flags with those values (PATCH forces them). Nothing here can turn one off.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from dedup.names import normalize_name
from dedup.records import (
    OPT_OUT_WIRE_FIELDS,
    MemberRecord,
    OptOuts,
    attribute_key,
    normalize_email,
    tag_key,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

CHOSEN_BY_RULE = "rule"
CHOSEN_BY_PERSON = "person"


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
    """The opt-outs the surviving contact must carry: on wherever any member has them on."""
    return OptOuts.union_all(m.opt_outs for m in members)


def _blank(value: str | None) -> bool:
    return value is None or not value.strip()


def _address_key(address: str) -> str:
    return " ".join(address.split()).casefold()


def _squash_phone(identifier: str) -> str:
    # Comparison form for identifiers read back from Podium: its formatting may differ from ours.
    return "".join(ch for ch in identifier if ch.isdigit() or ch == "+")


@dataclass(frozen=True, slots=True)
class MergePlan:
    """What a merge will do, computed before any call and stored with the merge operation.

    ``write_back`` is the PATCH body for the primary after the merge (Podium's camelCase fields).
    ``phone_keys`` maps each planned phone identifier to its natural key where it has one, so the
    read-back can be verified by key. ``conflicts`` lists values that could not be kept (the primary's
    won): ``{"field", "kept", "dropped", "fromUid"}``.
    """

    primary_uid: str
    duplicate_uids: tuple[str, ...]
    opt_outs: OptOuts
    member_opt_outs: dict[str, OptOuts]
    write_back: dict[str, Any]
    conflicts: tuple[dict[str, str], ...] = ()
    phone_keys: dict[str, str] = field(default_factory=dict)
    chosen_by: str = CHOSEN_BY_RULE

    @property
    def member_uids(self) -> tuple[str, ...]:
        """Every member of the merge, primary first, then the duplicates by uid."""
        return (self.primary_uid, *self.duplicate_uids)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable form for the merge operation row and the audit event."""
        return {
            "primaryUid": self.primary_uid,
            "duplicateUids": list(self.duplicate_uids),
            "chosenBy": self.chosen_by,
            "optOuts": self.opt_outs.to_wire(),
            "memberOptOuts": {uid: flags.to_wire() for uid, flags in sorted(self.member_opt_outs.items())},
            "writeBack": _copy_json(self.write_back),
            "conflicts": [dict(c) for c in self.conflicts],
            "phoneKeys": dict(sorted(self.phone_keys.items())),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MergePlan:
        """Rebuild a stored plan, refusing one whose opt-outs would turn any member's off.

        A stored plan is data from the database; checking the invariant again here means a corrupted or
        hand-edited row can never become a PATCH that drops an opt-out.
        """
        member_opt_outs = {uid: OptOuts.from_wire(flags) for uid, flags in data["memberOptOuts"].items()}
        plan = cls(
            primary_uid=str(data["primaryUid"]),
            duplicate_uids=tuple(str(u) for u in data["duplicateUids"]),
            opt_outs=OptOuts.from_wire(data["optOuts"]),
            member_opt_outs=member_opt_outs,
            write_back=_copy_json(data["writeBack"]),
            conflicts=tuple(dict(c) for c in data.get("conflicts", ())),
            phone_keys={str(k): str(v) for k, v in data.get("phoneKeys", {}).items()},
            chosen_by=str(data.get("chosenBy", CHOSEN_BY_RULE)),
        )
        for uid, flags in member_opt_outs.items():
            if not plan.opt_outs.covers(flags):
                raise ValueError(f"stored plan drops an opt-out of member {uid}")
        if not OptOuts.from_wire(plan.write_back).covers(plan.opt_outs) or not all(
            name in plan.write_back for name in OPT_OUT_WIRE_FIELDS
        ):
            raise ValueError("stored plan's write-back does not carry the opt-out union")
        return plan


def _copy_json(value: Any) -> Any:
    """A deep copy of plain JSON data (dicts, lists, scalars), so a plan never shares mutable state."""
    if isinstance(value, Mapping):
        return {str(k): _copy_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_copy_json(v) for v in value]
    return value


def plan_merge(members: Sequence[MemberRecord], primary_uid: str | None = None) -> MergePlan:
    """Plan a merge: the primary, the duplicates, the opt-out union and the write-back for the primary.

    ``primary_uid`` is a person's choice in review and must name a member; without it the primary is
    ``choose_primary``'s. The write-back holds the primary's own values plus everything a duplicate held
    that the primary lacks, duplicates visited richest first (``primary_rank_key``):

    * tags (compared trimmed and case-folded), phones (compared by natural key; an identifier without a
      key by its exact trimmed text; the duplicate's identifier is written), emails (compared
      normalized), attributes (compared by label; a blank value counts as missing);
    * a blank or placeholder name, and a blank address, are filled from the richest duplicate that has one;
    * a value that disagrees with the one kept (another attribute value, another name or address) is not
      written; it is recorded in ``conflicts`` with the member it came from;
    * ``marketingOptOut``, ``smsOptOut``, ``emailOptOut`` are always present and are the union.

    ``name`` and ``address`` are omitted when no member has one (nothing to write, and PATCHing an empty
    value could clear something). Deterministic: the same members in any order give the same plan.
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
    conflicts: list[dict[str, str]] = []

    def conflict(field_name: str, kept: str, dropped: str, from_uid: str) -> None:
        conflicts.append({"field": field_name, "kept": kept, "dropped": dropped, "fromUid": from_uid})

    # Name: a placeholder ("Unknown") or blank name on the primary is no name, so it can be filled.
    name = primary.name if normalize_name(primary.name) else ""
    for m in others:
        if not normalize_name(m.name):
            continue
        if not name:
            name = m.name
        elif normalize_name(m.name) != normalize_name(name):
            conflict("name", name, m.name, m.uid)

    address = primary.address if not _blank(primary.address) else None
    for m in others:
        if _blank(m.address):
            continue
        assert m.address is not None
        if address is None:
            address = m.address
        elif _address_key(m.address) != _address_key(address):
            conflict("address", address, m.address, m.uid)

    tags: list[str] = []
    seen_tags: set[str] = set()
    for m in (primary, *others):
        for label in m.tags:
            key = tag_key(label)
            if key and key not in seen_tags:
                seen_tags.add(key)
                tags.append(label)

    phones: list[str] = []
    phone_keys: dict[str, str] = {}
    seen_phones: set[str] = set()
    for m in (primary, *others):
        for raw, natural_key in m.phone_channels():
            # Keyed phones compare by E.164; unkeyed ones by their text, in a separate namespace.
            key = f"key:{natural_key}" if natural_key else f"raw:{raw.strip()}"
            if not raw.strip() or key in seen_phones:
                continue
            seen_phones.add(key)
            phones.append(raw)
            if natural_key:
                phone_keys[raw] = natural_key

    emails: list[str] = []
    seen_emails: set[str] = set()
    for m in (primary, *others):
        for raw, key in m.email_channels():
            if key and key not in seen_emails:
                seen_emails.add(key)
                emails.append(raw)

    attributes: list[dict[str, str]] = []
    attribute_index: dict[str, int] = {}
    for m in (primary, *others):
        for label, value in m.attributes:
            key = attribute_key(label)
            if not key or not value.strip():
                continue
            if key not in attribute_index:
                attribute_index[key] = len(attributes)
                attributes.append({"label": label, "value": value})
            elif attributes[attribute_index[key]]["value"].strip() != value.strip():
                kept = attributes[attribute_index[key]]["value"]
                conflict(f"attribute:{attributes[attribute_index[key]]['label']}", kept, value, m.uid)

    union = opt_out_union(members)
    write_back: dict[str, Any] = {}
    if name:
        write_back["name"] = name
    if address is not None:
        write_back["address"] = address
    write_back["tags"] = [{"label": t} for t in tags]
    write_back["channels"] = [{"type": "PHONE", "identifier": p} for p in phones] + [
        {"type": "EMAIL", "identifier": e} for e in emails
    ]
    write_back["attributes"] = attributes
    write_back.update(union.to_wire())

    return MergePlan(
        primary_uid=primary.uid,
        duplicate_uids=tuple(sorted(m.uid for m in others)),
        opt_outs=union,
        member_opt_outs={m.uid: m.opt_outs for m in sorted(members, key=lambda m: m.uid)},
        write_back=write_back,
        conflicts=tuple(conflicts),
        phone_keys=phone_keys,
        chosen_by=chosen_by,
    )


@dataclass(frozen=True, slots=True)
class _Observed:
    """The primary as read back after the write-back, in comparison form."""

    opt_outs: OptOuts
    name: str
    address: str
    tags: frozenset[str]
    phone_keys: frozenset[str]
    phone_texts: frozenset[str]
    emails: frozenset[str]
    attributes: dict[str, str]


def _observe(primary_after: MemberRecord | Mapping[str, Any]) -> _Observed:
    if isinstance(primary_after, MemberRecord):
        return _Observed(
            opt_outs=primary_after.opt_outs,
            name=primary_after.name,
            address=primary_after.address or "",
            tags=frozenset(tag_key(t) for t in primary_after.tags),
            phone_keys=frozenset(primary_after.phones),
            phone_texts=frozenset(_squash_phone(raw) for raw in primary_after.raw_phones),
            emails=frozenset(key for _raw, key in primary_after.email_channels()),
            attributes={attribute_key(label): value.strip() for label, value in primary_after.attributes},
        )
    channels = [c for c in primary_after.get("channels") or [] if isinstance(c, Mapping)]

    def identifiers(kind: str) -> list[str]:
        return [str(c.get("identifier") or "") for c in channels if str(c.get("type", "")).upper() == kind]

    phone_ids, email_ids = identifiers("PHONE"), identifiers("EMAIL")
    tags = []
    for t in primary_after.get("tags") or []:
        tags.append(str(t.get("label", "")) if isinstance(t, Mapping) else str(t))
    attributes = {}
    for a in primary_after.get("attributes") or []:
        if isinstance(a, Mapping):
            attributes[attribute_key(str(a.get("label", "")))] = str(a.get("value") or "").strip()
    address = primary_after.get("address")
    return _Observed(
        opt_outs=OptOuts.from_wire(primary_after),
        name=str(primary_after.get("name") or ""),
        address=address if isinstance(address, str) else ("" if address is None else str(address)),
        tags=frozenset(tag_key(t) for t in tags),
        phone_keys=frozenset(),
        phone_texts=frozenset(_squash_phone(p) for p in phone_ids),
        emails=frozenset(normalize_email(e) for e in email_ids),
        attributes=attributes,
    )


def verify_primary(plan: MergePlan, primary_after: MemberRecord | Mapping[str, Any]) -> list[str]:
    """What the plan promised that the primary, read back after the write-back, does not hold.

    ``primary_after`` is a re-indexed ``MemberRecord`` or Podium's contact JSON. Checked: each opt-out in
    the union is on; every planned tag, phone (by natural key when both sides know it, else by its
    digits), email (normalized) and attribute (label with the planned value) is present; a planned
    name or address is not blank. An empty list means verified; anything else is a compliance failure
    (opt-outs) or an incomplete write-back, to be retried.
    """
    seen = _observe(primary_after)
    problems: list[str] = []
    for wire_name, wanted, actual in zip(
        OPT_OUT_WIRE_FIELDS,
        (plan.opt_outs.marketing, plan.opt_outs.sms, plan.opt_outs.email),
        (seen.opt_outs.marketing, seen.opt_outs.sms, seen.opt_outs.email),
        strict=True,
    ):
        if wanted and not actual:
            problems.append(f"{wire_name} is off but the merge requires it on")
    for tag in plan.write_back.get("tags", []):
        if tag_key(tag["label"]) not in seen.tags:
            problems.append(f"tag {tag['label']!r} is missing")
    for channel in plan.write_back.get("channels", []):
        identifier = channel["identifier"]
        if channel["type"] == "PHONE":
            key = plan.phone_keys.get(identifier)
            if not (key and key in seen.phone_keys) and _squash_phone(identifier) not in seen.phone_texts:
                problems.append(f"phone {identifier!r} is missing")
        elif normalize_email(identifier) not in seen.emails:
            problems.append(f"email {identifier!r} is missing")
    for attribute in plan.write_back.get("attributes", []):
        actual_value = seen.attributes.get(attribute_key(attribute["label"]))
        if actual_value is None:
            problems.append(f"attribute {attribute['label']!r} is missing")
        elif actual_value != attribute["value"].strip():
            problems.append(
                f"attribute {attribute['label']!r} is {actual_value!r}, expected {attribute['value']!r}"
            )
    if plan.write_back.get("name") and not seen.name.strip():
        problems.append("name is blank")
    if plan.write_back.get("address") and not seen.address.strip():
        problems.append("address is blank")
    return problems
