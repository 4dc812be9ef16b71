"""Edits made in Podium itself (by a person at a location), for tests of concurrent changes.

The control API (`POST /_emulator/contacts/{uid}/edit`) and `EmulatorState.podium_edit` apply them: the
contact's `updatedAt` moves and `contact.updated` is sent, exactly as for an API write, so a test can
change a contact between the product's read and its write.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from podium_client.emulator.shapes import address, derive_lists, fmt_us

if TYPE_CHECKING:
    from podium_client.emulator.state import EmulatorState


def podium_edit(state: EmulatorState, uid: str, changes: Any) -> dict[str, Any]:
    """An edit made by a person in Podium itself, for tests of concurrent changes (control API).

    `changes` keys: `name`, `add_phone`, `add_email`, `remove_channel` (identifier), `add_tag` /
    `remove_tag` (label; a new label becomes an organization tag), `set_attribute` ([label, value]),
    `remove_attribute` (label), `address` (object or null), `locations` ([uids]), `add_conversation`
    (a uid, or true for a new one), `marketing_opt_in` ({"identifier"?, "locationUids"}),
    `marketing_opt_out` ({"identifier"?} or true), `transactional_opt_out` ({"identifier"?, "at"?} or
    true). Without an identifier a consent change applies to every channel. ValueError for anything
    else; KeyError for an unknown uid.
    """
    if not isinstance(changes, dict):
        raise ValueError("changes must be an object")
    known = {
        "name", "add_phone", "add_email", "remove_channel", "add_tag", "remove_tag", "set_attribute",
        "remove_attribute", "address", "locations", "add_conversation", "marketing_opt_in",
        "marketing_opt_out", "transactional_opt_out",
    }  # fmt: skip
    unknown = set(changes) - known
    if unknown:
        raise ValueError(f"unknown edits {sorted(unknown)}; known: {sorted(known)}")
    with state.lock:
        rec = state.store.by_uid[uid]
        before, after = rec.data(), rec.data()
        us = state._tick(rec.updated_us)
        stamp = fmt_us(us)
        catalog = state.catalog
        if "name" in changes:
            after["name"] = changes["name"]
        if "locations" in changes:
            after["locations"] = state.check_locations(list(changes["locations"]))
        if "address" in changes:
            after["address"] = address(changes["address"])
        if "add_phone" in changes:
            state.add_phone(after, str(changes["add_phone"]), stamp)
        if "add_email" in changes:
            state.add_email(after, str(changes["add_email"]), stamp)
        if "remove_channel" in changes:
            after["channels"] = [c for c in after["channels"] if c["identifier"] != changes["remove_channel"]]
            derive_lists(after)
        if "add_tag" in changes:
            tag = catalog.contact_tag(catalog.tag_for_label(str(changes["add_tag"]))["uid"])
            if tag["uid"] not in {t["uid"] for t in after["tags"]}:
                after["tags"].append(tag)
        if "remove_tag" in changes:
            label = str(changes["remove_tag"]).lower()
            after["tags"] = [t for t in after["tags"] if (t["label"] or "").lower() != label]
        if "set_attribute" in changes:
            label, value = changes["set_attribute"]
            definition = catalog.attribute_for_label(str(label))
            shown = catalog.contact_attribute(definition["uid"], value)
            after["attributes"] = [a for a in after["attributes"] if a["uid"] != shown["uid"]] + [shown]
        if "remove_attribute" in changes:
            label = str(changes["remove_attribute"]).lower()
            after["attributes"] = [a for a in after["attributes"] if a["label"].lower() != label]
        if "add_conversation" in changes:
            conv = changes["add_conversation"]
            conv = state.new_uid() if conv is True else str(conv)
            if conv in state.store.by_conversation:
                raise ValueError(f"conversation {conv} belongs to a contact already")
            after["conversations"].append({"uid": conv})
        _consent_edits(after, changes, stamp)
        state.commit(rec, before, after, us=us)
        parsed: dict[str, Any] = json.loads(state.served(rec))
        return parsed


def _consent_edits(contact: dict[str, Any], changes: dict[str, Any], stamp: str) -> None:
    def targets(spec: Any) -> list[dict[str, Any]]:
        ident = spec.get("identifier") if isinstance(spec, dict) else None
        return [c for c in contact["channels"] if ident is None or c["identifier"] == ident]

    if "marketing_opt_in" in changes:
        spec = changes["marketing_opt_in"]
        uids = list(spec.get("locationUids", [])) if isinstance(spec, dict) else []
        for channel in targets(spec):
            channel["marketingOptedInLocationUids"] = uids
            channel["updatedAt"] = stamp
    if "marketing_opt_out" in changes:
        for channel in targets(changes["marketing_opt_out"]):
            channel["marketingOptedInLocationUids"] = []
            channel["updatedAt"] = stamp
    if "transactional_opt_out" in changes:
        spec = changes["transactional_opt_out"]
        at = spec.get("at") if isinstance(spec, dict) else None
        for channel in targets(spec):
            channel["transactionalOptedOutAt"] = at or stamp
            channel["updatedAt"] = stamp
