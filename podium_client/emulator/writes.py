"""The published contact writes (Part 1): create (an upsert), PATCH, DELETE, tags and attributes on a
contact, and consent through `campaigns/opt_out|opt_in`. Bodies arrive schema-valid (api.py holds them to
the vendored request schemas); these functions apply CONTRACT.md's rules and readings under the state's
lock, moving `updatedAt` and sending events through `EmulatorState.commit`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from podium_client.emulator import shapes
from podium_client.emulator.errors import invalid_values, not_found
from podium_client.emulator.shapes import PHONE, dumps, fmt_us
from podium_client.emulator.store import e164, oldest

if TYPE_CHECKING:
    from podium_client.emulator.state import EmulatorState


# --- the published contact writes ------------------------------------------------------------------------


def create(state: EmulatorState, body: Mapping[str, Any]) -> str:
    """`POST /v4/contacts` (body already schema-valid): an upsert on a matching phone or email.

    Returns the identifier answered: the phone or email that matched or was given, else (a
    contact with neither) its uid, which this emulator then accepts as an identifier.
    """
    route = "POST /v4/contacts"
    with state.lock:
        locations = state.check_locations(list(body["locations"]))
        if not locations:
            raise invalid_values("locations", "a contact belongs to at least one location")
        tags = [state.catalog.contact_tag(uid, "tags") for uid in body.get("tags", [])]
        attributes = [
            state.catalog.contact_attribute(a["uid"], a["value"], "attributes")
            for a in body.get("attributes", [])
        ]
        phone, email = body.get("phoneNumber"), body.get("email")
        by_phone = (
            [r for r in state.store.holders_of_phone(e164(phone, None) or phone) if not r.hidden]
            if phone
            else []
        )
        by_email = [r for r in state.store.holders_of_email(email) if not r.hidden] if email else []
        matches = list({r.uid: r for r in by_phone + by_email}.values())
        if matches:
            rec = oldest(matches)
            us = state._tick(rec.updated_us)
            stamp = fmt_us(us)
            identifier = phone if rec in by_phone else email
            assert identifier is not None
            if len(matches) > 1:
                state._note_ambiguous(route, identifier, len(matches))
            before = rec.data()
            after = rec.data()
            after["name"] = body["name"]
            after["locations"] = list({d["uid"]: d for d in after["locations"] + locations}.values())
            if "address" in body:
                after["address"] = shapes.address(body["address"])
            _fill_channels(state, after, phone, email, stamp)
            for tag in tags:
                if tag["uid"] not in {t["uid"] for t in after["tags"]}:
                    after["tags"].append(tag)
            for attribute in attributes:
                _set_attribute(after, attribute)
            state.commit(rec, before, after, us=us)
            return identifier
        us = state._tick()
        stamp = fmt_us(us)
        contact: dict[str, Any] = {
            "uid": state.new_uid(), "name": body["name"], "locations": locations,
            "organization": {"uid": state.organization["uid"]}, "phoneNumbers": [], "emails": [],
            "channels": [], "tags": tags, "attributes": attributes,
            "address": shapes.address(body.get("address")), "conversations": [],
            "createdAt": stamp, "updatedAt": stamp,
        }  # fmt: skip
        _fill_channels(state, contact, phone, email, stamp)
        rec = state.store.insert(contact, dumps(contact).encode(), us, us)
        state._emit("contact.created", None, state.served(rec), us, shapes.location_uids(contact, contact))
        if phone or email:
            return phone or email  # type: ignore[return-value]
        state._uid_identifiers.add(rec.uid)
        return rec.uid


def _fill_channels(
    state: EmulatorState, contact: dict[str, Any], phone: str | None, email: str | None, stamp: str
) -> None:
    if phone:
        state.add_phone(contact, phone, stamp)
    if email:
        state.add_email(contact, email, stamp)


def patch(state: EmulatorState, identifier: str, body: Mapping[str, Any]) -> str:
    """`PATCH /v4/contacts/{identifier}` (body already schema-valid); returns the identifier.

    `email` / `phoneNumber` add a channel unless the contact holds it (a second one of a kind is
    added, not replaced: our reading); `locations` and `address` replace; `conversationUid`
    moves that conversation here (404 when no contact holds it); `contactStatus` is accepted
    and not shown.
    """
    route = "PATCH /v4/contacts/{identifier}"
    with state.lock:
        rec = state.resolve(identifier, route)
        before, after = rec.data(), rec.data()
        us = state._tick(rec.updated_us)
        stamp = fmt_us(us)
        if "name" in body:
            after["name"] = body["name"]
        if "locations" in body:
            after["locations"] = state.check_locations(list(body["locations"]))
            if not after["locations"]:
                raise invalid_values("locations", "a contact belongs to at least one location")
        if "address" in body:
            after["address"] = shapes.address(body["address"])
        _fill_channels(state, after, body.get("phoneNumber"), body.get("email"), stamp)
        conversation = body.get("conversationUid")
        if conversation is not None:
            holder = state.store.by_conversation.get(conversation)
            if holder is None:
                raise not_found("conversation")
            if holder is not rec:
                h_before, h_after = holder.data(), holder.data()
                h_after["conversations"] = [c for c in h_after["conversations"] if c["uid"] != conversation]
                state.commit(holder, h_before, h_after)
                after["conversations"].append({"uid": conversation})
        state.commit(rec, before, after, us=us)
        return identifier


def delete(state: EmulatorState, identifier: str) -> str:
    """`DELETE /v4/contacts/{identifier}`: the contact is gone (hidden with `soft-delete`).

    Either way its full last JSON is kept for `deleted()` so a test can prove nothing was lost.
    """
    route = "DELETE /v4/contacts/{identifier}"
    with state.lock:
        rec = state.resolve(identifier, route)
        before_served = state.served(rec)
        contact = rec.data()
        us = state._tick(rec.updated_us)
        soft = "soft-delete" in state._capabilities
        state._deleted.append((rec.uid, fmt_us(us), soft, before_served))
        if soft:
            rec.deleted_at = fmt_us(us)
            state._store(rec, contact, rec.data(), "contact.deleted", us, before_served)
        else:
            state.store.remove(rec, contact)
            state._uid_identifiers.discard(rec.uid)
            state._emit("contact.deleted", before_served, None, us, shapes.location_uids(contact, contact))
        return identifier


# --- tags and attributes on a contact -------------------------------------------------------------------


def attach_tag(state: EmulatorState, identifier: str, tag_uid: str) -> str:
    """`POST /v4/contacts/{identifier}/tags/{uid}`: attach an organization tag (404 unknown tag)."""
    with state.lock:
        rec = state.resolve(identifier, "POST /v4/contacts/{identifier}/tags/{uid}")
        tag = state.catalog.contact_tag(tag_uid)
        before, after = rec.data(), rec.data()
        if tag_uid not in {t["uid"] for t in after["tags"]}:
            after["tags"].append(tag)
        state.commit(rec, before, after)
        return identifier


def detach_tag(state: EmulatorState, identifier: str, tag_uid: str) -> str:
    """`DELETE /v4/contacts/{identifier}/tags/{uid}`: detach (a tag not attached changes nothing)."""
    with state.lock:
        rec = state.resolve(identifier, "DELETE /v4/contacts/{identifier}/tags/{uid}")
        state.catalog.contact_tag(tag_uid)
        before, after = rec.data(), rec.data()
        after["tags"] = [t for t in after["tags"] if t["uid"] != tag_uid]
        state.commit(rec, before, after)
        return identifier


def set_attribute(
    state: EmulatorState, identifier: str, attribute_uid: str, value: str, must_exist: bool
) -> str:
    """`POST` (add or replace) / `PATCH` (`must_exist`: 404 unless set) a contact's attribute value."""
    method = "PATCH" if must_exist else "POST"
    with state.lock:
        rec = state.resolve(identifier, f"{method} /v4/contacts/{{identifier}}/attributes/{{uid}}")
        attribute = state.catalog.contact_attribute(attribute_uid, value)
        before, after = rec.data(), rec.data()
        if must_exist and attribute_uid not in {a["uid"] for a in after["attributes"]}:
            raise not_found("attribute on this contact")
        _set_attribute(after, attribute)
        state.commit(rec, before, after)
        return identifier


def remove_attribute(state: EmulatorState, identifier: str, attribute_uid: str) -> str:
    """`DELETE /v4/contacts/{identifier}/attributes/{uid}` (an attribute not set changes nothing)."""
    with state.lock:
        rec = state.resolve(identifier, "DELETE /v4/contacts/{identifier}/attributes/{uid}")
        state.catalog.attribute(attribute_uid)
        before, after = rec.data(), rec.data()
        after["attributes"] = [a for a in after["attributes"] if a["uid"] != attribute_uid]
        state.commit(rec, before, after)
        return identifier


# --- consent ---------------------------------------------------------------------------------------------


def _consent(state: EmulatorState, identifier: str, change: Callable[[dict[str, Any], str], bool]) -> bytes:
    number = e164(identifier, None)
    if number is None:
        raise invalid_values("channel.identifier", "must be a phone number in E.164 (+15555555555)")
    holders = state.store.holders_of_phone(number)
    if not holders:
        raise not_found("contact holding that phone number")
    for rec in holders:
        region = state.region_of(_first_location(rec.data()))
        before, after = rec.data(), rec.data()
        us = state._tick(rec.updated_us)
        for channel in after["channels"]:
            if channel["type"] == PHONE and e164(channel["identifier"], region) == number:
                if change(channel, fmt_us(us)):
                    channel["updatedAt"] = fmt_us(us)
        if after != before:
            state.commit(rec, before, after, us=us)
    visible = [r for r in holders if not r.hidden]
    return state.served(oldest(visible or holders))


def opt_out(state: EmulatorState, identifier: str) -> bytes:
    """`POST /v4/contacts/campaigns/opt_out`: withdraw marketing consent of that number, at every
    location, on every contact of the organization holding it (our reading: consent belongs to the
    number). Returns the (oldest) contact holding it."""

    def clear(channel: dict[str, Any], stamp: str) -> bool:
        changed = bool(channel["marketingOptedInLocationUids"])
        channel["marketingOptedInLocationUids"] = []
        return changed

    with state.lock:
        return _consent(state, identifier, clear)


def opt_in(state: EmulatorState, identifier: str, location_uid: str) -> bytes:
    """`POST /v4/contacts/campaigns/opt_in`: opt that number in for marketing at one location."""

    def add(channel: dict[str, Any], stamp: str) -> bool:
        if location_uid in channel["marketingOptedInLocationUids"]:
            return False
        channel["marketingOptedInLocationUids"].append(location_uid)
        return True

    with state.lock:
        state.check_locations([location_uid], "locationUid")
        return _consent(state, identifier, add)


def _set_attribute(contact: dict[str, Any], attribute: dict[str, Any]) -> None:
    for i, held in enumerate(contact["attributes"]):
        if held["uid"] == attribute["uid"]:
            contact["attributes"][i] = attribute
            return
    contact["attributes"].append(attribute)


def _first_location(contact: Mapping[str, Any]) -> str:
    return contact["locations"][0]["uid"] if contact["locations"] else ""
