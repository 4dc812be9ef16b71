"""Part 2 of the contract: the `merge` capability (with its in-flight hazard), beside the published API.

A merge keeps the primary's own name, channels, tags, attributes, address and consent; each duplicate
is hidden with `mergedIntoUid` (and `deletedAt`), and its conversations move to the primary. The
server reserves the contacts for the merge's whole duration (injected latency included), so a second
merge touching them answers 409 `merge_in_progress`, and commits after re-validating, since published
writes may have changed the members meanwhile.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from podium_client.emulator.errors import EmulatorError, invalid_values, not_found
from podium_client.emulator.shapes import fmt_us

if TYPE_CHECKING:
    from podium_client.emulator.state import EmulatorState


def parse_merge_body(body: Any) -> list[str]:
    """The duplicate uids of `{"duplicateUids": [...]}`, in order without repeats; 400 otherwise."""
    if not isinstance(body, dict) or set(body) != {"duplicateUids"}:
        raise invalid_values("duplicateUids", 'the body must be {"duplicateUids": [...]}')
    dups = body["duplicateUids"]
    if not isinstance(dups, list) or not dups or not all(isinstance(u, str) and u for u in dups):
        raise invalid_values("duplicateUids", "must be a non-empty list of contact uids")
    return list(dict.fromkeys(dups))


def _validate(state: EmulatorState, primary_uid: str, dups: list[str], block_cross_location: bool) -> None:
    store = state.store
    primary = store.by_uid.get(primary_uid)
    if primary is None or primary.hidden:
        raise not_found("contact")
    for uid in dups:
        rec = store.by_uid.get(uid)
        if rec is None or rec.hidden or uid == primary_uid:
            why = "is the primary" if uid == primary_uid else "does not exist or is hidden"
            raise EmulatorError(400, "invalid_duplicate_uid", f"duplicate {uid} {why}")
    if block_cross_location:
        # Cross-location: a duplicate belongs to a location the primary does not (our reading for
        # contacts of several locations).
        held = {loc["uid"] for loc in primary.data()["locations"]}
        for uid in dups:
            if {loc["uid"] for loc in store.by_uid[uid].data()["locations"]} - held:
                raise EmulatorError(
                    422, "cross_location_merge_blocked",
                    f"the organization forbids merging contacts of different locations ({uid})",
                )  # fmt: skip


def merge_begin(state: EmulatorState, primary_uid: str, dups: list[str], block_cross_location: bool) -> None:
    """Validate a merge and reserve its contacts (409 merge_in_progress when one is reserved)."""
    with state.lock:
        _validate(state, primary_uid, dups, block_cross_location)
        members = [primary_uid, *dups]
        busy = next((uid for uid in members if uid in state._in_flight), None)
        if busy is not None:
            raise EmulatorError(409, "merge_in_progress", f"another merge touching {busy} is in flight")
        state._in_flight.update(members)


def merge_commit(
    state: EmulatorState, primary_uid: str, dups: list[str], block_cross_location: bool
) -> bytes:
    """Re-validate and apply a reserved merge, then release it; returns the primary as served."""
    with state.lock:
        try:
            _validate(state, primary_uid, dups, block_cross_location)
            store = state.store
            primary = store.by_uid[primary_uid]
            p_before, p_after = primary.data(), primary.data()
            held = {c["uid"] for c in p_after["conversations"]}
            for uid in dups:
                rec = store.by_uid[uid]
                before_served = state.served(rec)
                before, after = rec.data(), rec.data()
                moved = [c for c in after["conversations"] if c["uid"] not in held]
                held.update(c["uid"] for c in moved)
                p_after["conversations"].extend(moved)
                after["conversations"] = []
                us = state._tick(rec.updated_us)
                rec.deleted_at = fmt_us(us)
                rec.merged_into = primary_uid
                state._store(rec, before, after, "contact.merged", us, before_served)
            state.commit(primary, p_before, p_after)
            return state.served(primary)
        finally:
            state._in_flight.difference_update([primary_uid, *dups])
