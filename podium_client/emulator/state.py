"""The emulated Podium organization: locations, contacts, tags, attribute definitions; thread-safe.

Plain dicts in Podium's v4 shapes in and out (nothing here depends on the client's typed objects).
Every mutation goes through one lock, moves the contact's `updatedAt` strictly forward, and tells
listeners (the webhook sender) what changed, in commit order. Part 2 capabilities (`merge`,
`restore`, `soft-delete`) change behaviour only when switched on.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from podium_client.emulator import shapes, writes
from podium_client.emulator.catalog import Catalog
from podium_client.emulator.errors import EmulatorError, invalid_values, not_found
from podium_client.emulator.shapes import EMAIL, PHONE, dumps, fmt_us, parse_us
from podium_client.emulator.store import E164_RE, ContactStore, Cursor, Rec, e164, mask, oldest

CAPABILITIES = ("merge", "restore", "soft-delete")
MAX_LIMIT = 100
DEFAULT_LIMIT = 10

#: Listener: (event type, contact JSON before or None, after or None, at µs, the contact's location uids).
EventListener = Callable[[str, bytes | None, bytes | None, int, tuple[str, ...]], None]


def parse_capabilities(value: str | Iterable[str] | None) -> frozenset[str]:
    """`"merge,restore"` or an iterable of names -> a set of known capability names; ValueError otherwise."""
    if value is None:
        return frozenset()
    names = [n.strip() for n in (value.split(",") if isinstance(value, str) else value) if n and n.strip()]
    unknown = sorted(set(names) - set(CAPABILITIES))
    if unknown:
        raise ValueError(f"unknown capabilities {', '.join(unknown)}; known: {', '.join(CAPABILITIES)}")
    return frozenset(names)


class EmulatorState:
    """One emulated Podium organization. Usable directly from tests and served by EmulatorServer.

    `capabilities` switches on Part 2 behaviour (`merge`, `restore`, `soft-delete`). Listing order is
    insertion order (a sequence never reused), so cursors stay stable while contacts change.
    """

    def __init__(
        self,
        seed: int | None = None,
        capabilities: str | Iterable[str] | None = None,
        organization_uid: str | None = None,
    ) -> None:
        self.lock = threading.RLock()
        self._capabilities = parse_capabilities(capabilities)
        self.organization = shapes.organization(organization_uid or shapes.DEFAULT_ORGANIZATION_UID)
        self._organization_fixed = organization_uid is not None
        self._locations: dict[str, dict[str, Any]] = {}
        self._location_seq: dict[str, int] = {}
        self._regions: dict[str, str] = {}
        self.store = ContactStore(self.region_of)
        self.catalog = Catalog(self)
        self._deleted: list[tuple[str, str, bool, bytes]] = []
        self._uid_identifiers: set[str] = set()
        self._in_flight: set[str] = set()
        self._listeners: list[EventListener] = []
        self._last_us = 0
        self._rng = random.Random(seed)
        self.cursor_epoch = 0
        self.cursor_ttl_s: float | None = 3600.0
        self.ambiguous_uses: list[dict[str, Any]] = []

    # --- capabilities and shapes ---------------------------------------------------------------------

    @property
    def capabilities(self) -> frozenset[str]:
        """The Part 2 capabilities switched on."""
        return self._capabilities

    @capabilities.setter
    def capabilities(self, value: str | Iterable[str] | None) -> None:
        self._capabilities = parse_capabilities(value)

    @property
    def serves_hidden(self) -> bool:
        """Whether contacts carry `deletedAt` / `mergedIntoUid` (only with `merge` or `soft-delete`)."""
        return bool({"merge", "soft-delete"} & self._capabilities)

    def served(self, rec: Rec) -> bytes:
        """A contact as the API serves it: the published fields, plus the capability fields when on."""
        if not self.serves_hidden and not rec.hidden:
            return rec.raw
        tail = b',"deletedAt":%s,"mergedIntoUid":%s}' % (
            _json_or_null(rec.deleted_at),
            _json_or_null(rec.merged_into),
        )
        return rec.raw[:-1] + tail

    # --- loading and dumping -------------------------------------------------------------------------

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], seed: int | None = None, **kwargs: Any) -> EmulatorState:
        """A state loaded from a v4 NDJSON export file."""
        state = cls(seed, **kwargs)
        state.load_file(path)
        return state

    @classmethod
    def from_lines(
        cls, lines: Iterable[str | bytes], seed: int | None = None, **kwargs: Any
    ) -> EmulatorState:
        """A state loaded from v4 NDJSON lines."""
        state = cls(seed, **kwargs)
        state.load_lines(lines)
        return state

    def load_file(self, path: str | os.PathLike[str]) -> int:
        """Load a v4 NDJSON export; returns the number of contacts loaded (ExportFileError when refused)."""
        from podium_client.emulator.export import load_file

        return load_file(self, path)

    def load_lines(self, lines: Iterable[str | bytes]) -> int:
        """Load v4 NDJSON lines; returns the number of contacts loaded (ExportFileError when refused)."""
        from podium_client.emulator.export import load_lines

        return load_lines(self, lines)

    def dump_lines(self) -> Iterator[str]:
        """The state as v4 NDJSON lines (no newlines): locations first, then contacts in listing order."""
        from podium_client.emulator.export import dump_lines

        return dump_lines(self)

    def dump(self, path: str | os.PathLike[str]) -> None:
        """Write the state as a v4 NDJSON export, atomically."""
        from podium_client.emulator.export import dump

        dump(self, path)

    # --- locations and the organization ----------------------------------------------------------------

    def add_location(self, location: Mapping[str, Any]) -> dict[str, Any]:
        """Add or replace a location (a v4 location object; missing fields null)."""
        with self.lock:
            loc = shapes.canonical_location(dict(location), self.organization["uid"])
            stamp = fmt_us(self._tick())
            loc["createdAt"] = loc["createdAt"] or stamp
            loc["updatedAt"] = loc["updatedAt"] or stamp
            self._adopt_organization(loc["organizationUid"])
            self._locations[loc["uid"]] = loc
            self._location_seq.setdefault(loc["uid"], len(self._location_seq) + 1)
            self._regions[loc["uid"]] = shapes.region_of(loc) or shapes.DEFAULT_REGION
            return dict(loc)

    def locations(self) -> list[dict[str, Any]]:
        """All locations in insertion order."""
        with self.lock:
            return [dict(loc) for loc in self._locations.values()]

    def location(self, uid: str) -> dict[str, Any]:
        """One location; 404 resource_not_found when unknown."""
        with self.lock:
            loc = self._locations.get(uid)
            if loc is None:
                raise not_found("location")
            return dict(loc)

    def region_of(self, location_uid: str) -> str:
        """The region national numbers of that location are read in (its country, else AU)."""
        return self._regions.get(location_uid, shapes.DEFAULT_REGION)

    def _adopt_organization(self, uid: str | None) -> None:
        # The first object loaded names the organization, unless the caller fixed one.
        if uid and not self._organization_fixed and not self.store and not self._locations:
            self.organization = shapes.organization(uid)
        self._organization_fixed = True

    def _ensure_location(self, uid: str) -> None:
        if uid not in self._locations:
            # A partial export (contacts without their location lines) still loads; Podium would
            # know the location, we know only its uid, so its region is unknown.
            self.add_location({"uid": uid, "name": f"Location {uid[:8]}"})

    def list_locations_page(
        self, limit: int | None, cursor: str | None, updated_after_us: int | None
    ) -> tuple[list[dict[str, Any]], str | None, int]:
        """One page of `GET /v4/locations`: (locations, next cursor or None, total matching)."""
        with self.lock:
            if cursor is not None:
                cur = Cursor.decode(cursor, "locations", self.cursor_epoch, self.cursor_ttl_s)
                since, after, size = cur.since_us, cur.after, limit or cur.limit
            else:
                since, after, size = updated_after_us, 0, limit or DEFAULT_LIMIT
            matching = [
                (seq, loc)
                for uid, loc in self._locations.items()
                if (seq := self._location_seq[uid]) and (since is None or parse_us(loc["updatedAt"]) > since)
            ]
            rest = [(seq, loc) for seq, loc in matching if seq > after]
            page = rest[:size]
            next_cursor = None
            if len(rest) > size:
                next_cursor = self._cursor("locations", page[-1][0], since, False, size)
            return [dict(loc) for _, loc in page], next_cursor, len(matching)

    # --- contacts: direct access for tests and the control API -----------------------------------------

    def add_contact(self, contact: Mapping[str, Any]) -> dict[str, Any]:
        """Insert a v4 contact exactly as given (uid, timestamps and any consent included).

        Its tags and attributes join the organization's definitions when new; unknown locations are
        added as locations Podium knows nothing more about. `deletedAt` / `mergedIntoUid` make it
        hidden. Raises ShapeError for a non-v4 object and ValueError when the uid exists.
        """
        with self.lock:
            return _loads(self.served(self.load_contact(dict(contact))))

    def load_contact(self, obj: Any, text: str | None = None) -> Rec:
        """Insert a parsed v4 contact; `text`, the line it was parsed from, is stored as is when the
        object is already canonical (loading a big export then costs one parse per line)."""
        with self.lock:
            extras: dict[str, Any] = {}
            if text is not None and shapes.is_canonical_contact(obj):
                parsed, raw = obj, text.encode()
            else:
                parsed, extras = shapes.canonical_contact(obj, self.organization["uid"])
                raw = dumps(parsed).encode()
            rec = self._insert(parsed, raw)
            rec.deleted_at = extras.get("deletedAt")
            rec.merged_into = extras.get("mergedIntoUid")
            return rec

    def _insert(self, contact: dict[str, Any], raw: bytes) -> Rec:
        try:
            created, updated = parse_us(contact["createdAt"]), parse_us(contact["updatedAt"])
        except (ValueError, TypeError):
            raise shapes.ShapeError(
                "createdAt and updatedAt must be ISO 8601 timestamps with a zone"
            ) from None
        self._adopt_organization(contact["organization"]["uid"])
        for loc in contact["locations"]:
            self._ensure_location(loc["uid"])
        self.catalog.learn(contact)
        return self.store.insert(contact, raw, created, updated)

    def get(self, uid: str) -> dict[str, Any]:
        """The stored contact with this uid as served (hidden ones included); KeyError when unknown."""
        with self.lock:
            return _loads(self.served(self.store.by_uid[uid]))

    def find(self, identifier: str) -> dict[str, Any] | None:
        """The contact an identifier addresses (as the API would resolve it), or None; no stats."""
        with self.lock:
            recs = self._matches(identifier, include_hidden=False)
            return _loads(self.served(oldest(recs))) if recs else None

    def contacts(self, include_hidden: bool = False) -> list[dict[str, Any]]:
        """Every contact in listing order, as served."""
        with self.lock:
            raws = [self.served(r) for r in self.store if include_hidden or not r.hidden]
        return [_loads(raw) for raw in raws]

    def deleted(self) -> list[dict[str, Any]]:
        """Every contact a DELETE removed or hid, with its full last JSON: `{uid, deletedAt, soft, contact}`."""
        with self.lock:
            log = list(self._deleted)
        return [{"uid": u, "deletedAt": at, "soft": soft, "contact": _loads(raw)} for u, at, soft, raw in log]

    def __len__(self) -> int:
        return len(self.store)

    def __contains__(self, uid: object) -> bool:
        return isinstance(uid, str) and uid in self.store.by_uid

    def add_listener(self, listener: EventListener) -> None:
        """Call `listener(type, before, after, at_us, location_uids)` after every mutation, under the
        lock (listeners see events in commit order and must not block)."""
        with self.lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: EventListener) -> None:
        """Stop calling a listener."""
        with self.lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def invalidate_cursors(self) -> None:
        """Make every cursor handed out so far stale (the next use answers 400 invalid_cursor)."""
        with self.lock:
            self.cursor_epoch += 1

    # --- listing --------------------------------------------------------------------------------------

    def _cursor(self, kind: str, after: int, since: int | None, hidden: bool, limit: int) -> str:
        return Cursor(
            kind, after, since, hidden, limit, self.cursor_epoch, time.time_ns() // 1_000_000
        ).encode()

    def list_contacts_page(
        self, limit: int | None, cursor: str | None, updated_after_us: int | None, include_hidden: bool
    ) -> tuple[list[bytes], str | None]:
        """One page of `GET /v4/contacts` (the whole organization): (contact JSONs, next cursor or None).

        With a cursor the filters come from the cursor. A contact changing while a client pages keeps
        its place, so it is neither skipped nor repeated because of the change.
        """
        with self.lock:
            if cursor is not None:
                cur = Cursor.decode(cursor, "contacts", self.cursor_epoch, self.cursor_ttl_s)
                after, since, hidden, size = cur.after, cur.since_us, cur.include_hidden, limit or cur.limit
            else:
                after, since, hidden, size = 0, updated_after_us, include_hidden, limit or DEFAULT_LIMIT
            # Listing hidden contacts is the soft-delete capability's; merge alone only hides them.
            hidden = hidden and "soft-delete" in self._capabilities

            def keep(rec: Rec) -> bool:
                return (hidden or not rec.hidden) and (since is None or rec.updated_us > since)

            page, more = self.store.page(after, size, keep)
            next_cursor = self._cursor("contacts", page[-1].seq, since, hidden, size) if more else None
            return [self.served(rec) for rec in page], next_cursor

    # --- identifiers ------------------------------------------------------------------------------------

    def _matches(self, identifier: str, include_hidden: bool) -> list[Rec]:
        store = self.store
        by_uid = False
        if "@" in identifier:
            recs = store.holders_of_email(identifier)
        elif E164_RE.match(identifier):
            recs = store.holders_of_phone(e164(identifier, None) or identifier)
        else:
            rec = store.by_conversation.get(identifier)
            if rec is None and (self._capabilities or identifier in self._uid_identifiers):
                rec = store.by_uid.get(identifier)
                by_uid = True
            recs = [rec] if rec is not None else []
        if not (include_hidden and by_uid):
            recs = [r for r in recs if not r.hidden]
        return recs

    def resolve(self, identifier: str, route: str = "", include_hidden: bool = False) -> Rec:
        """The contact `identifier` addresses: a conversation uid, an email (any case) or an E.164 phone
        matching any spelling; a contact uid only on capability tenants or for a contact POST created
        without phone and email. Several matches: the oldest, counted as an ambiguous use. 404 else."""
        recs = self._matches(identifier, include_hidden)
        if not recs:
            raise not_found("contact")
        if len(recs) > 1:
            self._note_ambiguous(route, identifier, len(recs))
        return oldest(recs)

    def _note_ambiguous(self, route: str, identifier: str, matches: int) -> None:
        self.ambiguous_uses.append({"route": route, "identifier": mask(identifier), "matches": matches})

    def get_json(self, identifier: str, route: str = "GET /v4/contacts/{identifier}") -> bytes:
        """`GET /v4/contacts/{identifier}` (a uid on capability tenants finds hidden contacts too)."""
        with self.lock:
            return self.served(self.resolve(identifier, route, include_hidden=True))

    # --- mutation plumbing --------------------------------------------------------------------------------

    def _tick(self, after_us: int = 0) -> int:
        """A timestamp (µs) later than every one handed out before and than `after_us`: `updatedAt` moved
        is how the product sees a concurrent change, so it must move even within one microsecond."""
        us = max(shapes.now_us(), self._last_us + 1, after_us + 1)
        self._last_us = us
        return us

    def _emit(
        self, event: str, before: bytes | None, after: bytes | None, at_us: int, locations: tuple[str, ...]
    ) -> None:
        for listener in list(self._listeners):
            listener(event, before, after, at_us, locations)

    def _store(
        self,
        rec: Rec,
        before: dict[str, Any],
        after: dict[str, Any],
        event: str,
        us: int,
        before_served: bytes,
    ) -> None:
        after["updatedAt"] = fmt_us(us)
        self.store.replace(rec, before, after, dumps(after).encode(), us)
        self._emit(event, before_served, self.served(rec), us, shapes.location_uids(before, after))

    def commit(
        self,
        rec: Rec,
        before: dict[str, Any],
        after: dict[str, Any],
        event: str = "contact.updated",
        us: int | None = None,
    ) -> bool:
        """Store `after` when it differs from `before` (moving `updatedAt`) and emit `event`; emit
        `contact.unchanged` otherwise. Returns whether the contact changed."""
        if after == before:
            raw = self.served(rec)
            self._emit("contact.unchanged", raw, raw, self._tick(), shapes.location_uids(before, after))
            return False
        self._store(
            rec, before, after, event, us if us is not None else self._tick(rec.updated_us), self.served(rec)
        )
        return True

    def new_uid(self) -> str:
        """A fresh UUID (from the seed, so a seeded emulator hands out the same ones)."""
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def add_phone(self, contact: dict[str, Any], number: str, stamp: str) -> None:
        """Add a PHONE channel unless the contact holds that number in some spelling (no marketing opt-in)."""
        region = self.region_of(contact["locations"][0]["uid"]) if contact["locations"] else None
        wanted = e164(number, None) or number
        held = {e164(c["identifier"], region) for c in contact["channels"] if c["type"] == PHONE}
        if wanted not in held:
            contact["channels"].append(shapes.new_channel(PHONE, number, stamp))
            shapes.derive_lists(contact)

    def add_email(self, contact: dict[str, Any], email: str, stamp: str) -> None:
        """Add an EMAIL channel unless the contact holds that address in some case (no marketing opt-in)."""
        held = {c["identifier"].strip().lower() for c in contact["channels"] if c["type"] == EMAIL}
        if email.strip().lower() not in held:
            contact["channels"].append(shapes.new_channel(EMAIL, email, stamp))
            shapes.derive_lists(contact)

    def check_locations(self, uids: list[str], field: str = "locations") -> list[dict[str, str]]:
        """`[{uid}]` of known locations, in order without repeats; 400 naming the field otherwise."""
        for uid in uids:
            if uid not in self._locations:
                raise invalid_values(field, f"unknown location {uid}")
        return [{"uid": uid} for uid in dict.fromkeys(uids)]

    # --- the published contact writes (writes.py) -----------------------------------------------------------

    def create(self, body: Mapping[str, Any]) -> str:
        """`POST /v4/contacts` (an upsert on a matching phone or email); returns the identifier answered."""
        return writes.create(self, body)

    def patch(self, identifier: str, body: Mapping[str, Any]) -> str:
        """`PATCH /v4/contacts/{identifier}`; returns the identifier."""
        return writes.patch(self, identifier, body)

    def delete(self, identifier: str) -> str:
        """`DELETE /v4/contacts/{identifier}` (hides with `soft-delete`); returns the identifier."""
        return writes.delete(self, identifier)

    def attach_tag(self, identifier: str, tag_uid: str) -> str:
        """`POST /v4/contacts/{identifier}/tags/{uid}`."""
        return writes.attach_tag(self, identifier, tag_uid)

    def detach_tag(self, identifier: str, tag_uid: str) -> str:
        """`DELETE /v4/contacts/{identifier}/tags/{uid}`."""
        return writes.detach_tag(self, identifier, tag_uid)

    def set_attribute(self, identifier: str, attribute_uid: str, value: str, must_exist: bool) -> str:
        """`POST` / `PATCH` (`must_exist`) `/v4/contacts/{identifier}/attributes/{uid}`."""
        return writes.set_attribute(self, identifier, attribute_uid, value, must_exist)

    def remove_attribute(self, identifier: str, attribute_uid: str) -> str:
        """`DELETE /v4/contacts/{identifier}/attributes/{uid}`."""
        return writes.remove_attribute(self, identifier, attribute_uid)

    def opt_out(self, identifier: str) -> bytes:
        """`POST /v4/contacts/campaigns/opt_out`; returns the (oldest) contact holding the number."""
        return writes.opt_out(self, identifier)

    def opt_in(self, identifier: str, location_uid: str) -> bytes:
        """`POST /v4/contacts/campaigns/opt_in`; returns the (oldest) contact holding the number."""
        return writes.opt_in(self, identifier, location_uid)

    # --- Part 2 capabilities -------------------------------------------------------------------------------------

    def merge_begin(self, primary_uid: str, duplicate_uids: list[str], block_cross_location: bool) -> None:
        """Validate a merge and hold its contacts in flight (409 merge_in_progress for a second one)."""
        from podium_client.emulator.capabilities import merge_begin

        merge_begin(self, primary_uid, duplicate_uids, block_cross_location)

    def merge_abort(self, primary_uid: str, duplicate_uids: list[str]) -> None:
        """Release a merge reservation without applying it."""
        with self.lock:
            self._in_flight.difference_update([primary_uid, *duplicate_uids])

    def merge_commit(self, primary_uid: str, duplicate_uids: list[str], block_cross_location: bool) -> bytes:
        """Apply a reserved merge and release it; returns the primary's JSON."""
        from podium_client.emulator.capabilities import merge_commit

        return merge_commit(self, primary_uid, duplicate_uids, block_cross_location)

    def merge(
        self, primary_uid: str, duplicate_uids: Iterable[str], block_cross_location: bool = False
    ) -> dict[str, Any]:
        """Merge in one step (no in-flight window), for tests that set up merged history."""
        dups = list(dict.fromkeys(duplicate_uids))
        self.merge_begin(primary_uid, dups, block_cross_location)
        return _loads(self.merge_commit(primary_uid, dups, block_cross_location))

    def in_flight(self) -> frozenset[str]:
        """Uids currently reserved by merges in flight."""
        with self.lock:
            return frozenset(self._in_flight)

    def restore(self, uid: str) -> bytes:
        """`POST /v4/contacts/{uid}/restore` (capability `restore`): un-hide a merged or deleted contact."""
        with self.lock:
            rec = self.store.by_uid.get(uid)
            if rec is None:
                raise not_found("contact")
            if not rec.hidden:
                return self.served(rec)
            before_served = self.served(rec)
            contact = rec.data()
            rec.deleted_at = None
            rec.merged_into = None
            self._store(
                rec, contact, rec.data(), "contact.updated", self._tick(rec.updated_us), before_served
            )
            return self.served(rec)

    def podium_edit(self, uid: str, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Simulate an edit a person makes in Podium itself (moves `updatedAt`, emits the webhook)."""
        from podium_client.emulator.edits import podium_edit

        return podium_edit(self, uid, changes)


def _json_or_null(value: str | None) -> bytes:
    return b"null" if value is None else dumps(value).encode()


def _loads(raw: bytes) -> dict[str, Any]:
    import json

    parsed: dict[str, Any] = json.loads(raw)
    return parsed


__all__ = ["CAPABILITIES", "EmulatorError", "EmulatorState", "EventListener", "parse_capabilities"]
