"""The emulator's data: locations and contacts with the contract's semantics, thread-safe.

Contacts are kept as their serialized wire JSON plus the few fields listing needs (sequence,
location, updatedAt, deleted), so a million-contact state fits in memory and a page is served by
joining strings. Every mutation goes through one lock.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import random
import re
import tempfile
import threading
import time
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from podium_client.errors import MalformedResponse
from podium_client.types import (
    EMAIL,
    PHONE,
    WRITABLE_FIELDS,
    Contact,
    Location,
    location_export_line,
    parse_timestamp,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
_UID_RE = re.compile(r"^ct_(\d{7})_[0-9a-f]{6}$")
MAX_LIMIT = 100
_CONTACT_KEYS = frozenset(
    {
        "uid", "locationUid", "name", "channels", "tags", "attributes", "address", "marketingOptOut",
        "smsOptOut", "emailOptOut", "createdAt", "updatedAt", "deletedAt", "mergedIntoUid", "conversationCount",
    }
)  # fmt: skip

#: Listener signature: (event type, contact JSON before or None, contact JSON after or None, at).
EventListener = Callable[[str, str | None, str | None, datetime], None]


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _to_us(dt: datetime) -> int:
    return (dt - _EPOCH) // _ONE_US


def _from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _fmt_us(us: int) -> str:
    # Always six fractional digits, so two mutations in the same second still differ on the wire.
    return _from_us(us).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class EmulatorError(Exception):
    """A contract error the server answers with `{"error": {...}}`."""

    def __init__(self, status: int, code: str, message: str, uid: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.uid = uid


def _invalid(message: str) -> EmulatorError:
    return EmulatorError(400, "invalid_request", message)


def _not_found(uid: str) -> EmulatorError:
    return EmulatorError(404, "contact_not_found", f"contact {uid} not found", uid)


class _Rec:
    """One stored contact: its wire JSON plus what listing needs without parsing it."""

    __slots__ = ("uid", "seq", "location_uid", "raw", "updated_us", "deleted")

    def __init__(
        self, uid: str, seq: int, location_uid: str, raw: str, updated_us: int, deleted: bool
    ) -> None:
        self.uid = uid
        self.seq = seq
        self.location_uid = location_uid
        self.raw = raw
        self.updated_us = updated_us
        self.deleted = deleted


@dataclass(frozen=True, slots=True)
class _Cursor:
    location_uid: str
    after_seq: int
    updated_since_us: int | None
    include_deleted: bool

    def encode(self) -> str:
        payload = _dumps([self.location_uid, self.after_seq, self.updated_since_us, self.include_deleted])
        return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> _Cursor:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            loc, seq, since, deleted = json.loads(raw)
        except (ValueError, TypeError, binascii.Error):
            raise _invalid("cursor is not valid") from None
        if not (
            isinstance(loc, str)
            and type(seq) is int
            and (since is None or type(since) is int)
            and type(deleted) is bool
        ):
            raise _invalid("cursor is not valid")
        return cls(loc, seq, since, deleted)


def _check_channels(value: Any) -> None:
    if not isinstance(value, list):
        raise _invalid("channels must be a list")
    for c in value:
        if (
            not isinstance(c, dict)
            or set(c) != {"type", "identifier"}
            or c["type"] not in (PHONE, EMAIL)
            or not isinstance(c["identifier"], str)
        ):
            raise _invalid('each channel must be {"type": "PHONE"|"EMAIL", "identifier": "..."}')


def _check_tags(value: Any) -> None:
    if not isinstance(value, list) or not all(
        isinstance(t, dict) and set(t) == {"label"} and isinstance(t["label"], str) for t in value
    ):
        raise _invalid('tags must be a list of {"label": "..."}')


def _check_attributes(value: Any) -> None:
    if not isinstance(value, list) or not all(
        isinstance(a, dict)
        and set(a) == {"label", "value"}
        and isinstance(a["label"], str)
        and (a["value"] is None or isinstance(a["value"], str))
        for a in value
    ):
        raise _invalid('attributes must be a list of {"label": "...", "value": "..."|null}')


def _check_writable(body: Mapping[str, Any]) -> None:
    for key, value in body.items():
        if key == "channels":
            _check_channels(value)
        elif key == "tags":
            _check_tags(value)
        elif key == "attributes":
            _check_attributes(value)
        elif key in ("name", "address"):
            if value is not None and not isinstance(value, str):
                raise _invalid(f"{key} must be a string or null")
        elif key in ("marketingOptOut", "smsOptOut", "emailOptOut"):
            if not isinstance(value, bool):
                raise _invalid(f"{key} must be a boolean")
        else:
            raise _invalid(f"{key} is not a writable field")


class EmulatorState:
    """Locations and contacts of one emulated Podium organization.

    Usable directly from tests (`add_contact`, `get`, `contacts`) and served over HTTP by
    EmulatorServer. Listing order is insertion order (a sequence number never reused), which keeps
    cursors stable while contacts change.
    """

    def __init__(self, seed: int | None = None) -> None:
        self.lock = threading.RLock()
        self._locations: dict[str, Location] = {}
        self._contacts: dict[str, _Rec] = {}
        self._by_location: dict[str, list[_Rec]] = {}
        self._seqs_by_location: dict[str, list[int]] = {}
        self._next_seq = 1
        self._next_uid_number = 1
        self._last_us = 0
        self._rng = random.Random(seed)
        self._in_flight: set[str] = set()
        self._listeners: list[EventListener] = []

    # --- loading and dumping ------------------------------------------------------------------------

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], seed: int | None = None) -> EmulatorState:
        """A state loaded from an NDJSON export file."""
        state = cls(seed)
        state.load_file(path)
        return state

    @classmethod
    def from_lines(cls, lines: Iterable[str], seed: int | None = None) -> EmulatorState:
        """A state loaded from NDJSON lines."""
        state = cls(seed)
        state.load_lines(lines)
        return state

    def load_file(self, path: str | os.PathLike[str]) -> int:
        """Load an NDJSON export; returns the number of contacts loaded."""
        with open(path, encoding="utf-8") as fh:
            return self.load_lines(fh)

    def load_lines(self, lines: Iterable[str]) -> int:
        """Load NDJSON lines (locations and contacts, validated against the contract).

        A contact whose location has not been seen gets a placeholder location (country AU), so a
        partial export still loads. Raises MalformedResponse naming the bad line.
        """
        count = 0
        with self.lock:
            for lineno, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except ValueError as exc:
                    raise MalformedResponse(f"line {lineno}: not JSON ({exc})") from None
                try:
                    if isinstance(obj, dict) and obj.get("object") == "location":
                        self.add_location(Location.from_wire(obj))
                    else:
                        # A line with exactly the contract's fields is served as written: loading
                        # a million-contact export then costs a parse, not a parse and a rewrite.
                        raw = line.strip() if obj.keys() == _CONTACT_KEYS else None
                        self._insert(Contact.from_wire(obj), raw)
                        count += 1
                except MalformedResponse as exc:
                    raise MalformedResponse(f"line {lineno}: {exc.message}") from None
                except ValueError as exc:
                    raise MalformedResponse(f"line {lineno}: {exc}") from None
        return count

    def dump_lines(self) -> Iterator[str]:
        """The state as NDJSON lines (no newlines): locations first, then contacts in listing order."""
        with self.lock:
            locations = list(self._locations.values())
            raws = [rec.raw for rec in sorted(self._contacts.values(), key=lambda r: r.seq)]
        for loc in locations:
            yield location_export_line(loc)
        yield from raws

    def dump(self, path: str | os.PathLike[str]) -> None:
        """Write the state as an NDJSON export, atomically (a crash never leaves half a file)."""
        target = Path(path)
        fd, tmp = tempfile.mkstemp(dir=target.parent or Path("."), prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                for line in self.dump_lines():
                    fh.write(line)
                    fh.write("\n")
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # --- direct access for tests --------------------------------------------------------------------

    def add_location(self, location: Location) -> Location:
        """Add or replace a location."""
        with self.lock:
            self._locations[location.uid] = location
            self._by_location.setdefault(location.uid, [])
            self._seqs_by_location.setdefault(location.uid, [])
        return location

    def add_contact(self, contact: Contact | Mapping[str, Any]) -> Contact:
        """Insert a contact exactly as given (uid and timestamps included), e.g. to seed a test.

        Raises ValueError when the uid already exists.
        """
        parsed = contact if isinstance(contact, Contact) else Contact.from_wire(dict(contact))
        with self.lock:
            self._insert(parsed)
        return parsed

    def get(self, uid: str) -> Contact:
        """The stored contact; KeyError when unknown."""
        with self.lock:
            raw = self._contacts[uid].raw
        return Contact.from_wire(json.loads(raw))

    def contacts(self, location_uid: str | None = None, include_deleted: bool = True) -> list[Contact]:
        """All contacts in listing order, optionally of one location / without soft-deleted ones."""
        with self.lock:
            recs = sorted(self._contacts.values(), key=lambda r: r.seq)
            raws = [
                r.raw
                for r in recs
                if (location_uid is None or r.location_uid == location_uid)
                and (include_deleted or not r.deleted)
            ]
        return [Contact.from_wire(json.loads(raw)) for raw in raws]

    def locations(self) -> list[Location]:
        """All locations in insertion order."""
        with self.lock:
            return list(self._locations.values())

    def __len__(self) -> int:
        return len(self._contacts)

    def __contains__(self, uid: object) -> bool:
        return uid in self._contacts

    def add_listener(self, listener: EventListener) -> None:
        """Call `listener(type, before_json, after_json, at)` after every mutation (under the lock,
        so listeners see events in commit order; they must not block)."""
        with self.lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: EventListener) -> None:
        """Stop calling a listener added with add_listener."""
        with self.lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    # --- internals ----------------------------------------------------------------------------------

    def _insert(self, contact: Contact, raw: str | None = None) -> _Rec:
        if contact.uid in self._contacts:
            raise ValueError(f"duplicate contact uid {contact.uid}")
        if contact.location_uid not in self._locations:
            self.add_location(Location(contact.location_uid, contact.location_uid, "AU"))
        rec = _Rec(
            contact.uid,
            self._next_seq,
            contact.location_uid,
            raw if raw is not None else _dumps(contact.to_wire()),
            _to_us(contact.updated_at),
            contact.deleted_at is not None,
        )
        self._next_seq += 1
        self._contacts[rec.uid] = rec
        self._by_location[rec.location_uid].append(rec)
        self._seqs_by_location[rec.location_uid].append(rec.seq)
        m = _UID_RE.match(contact.uid)
        if m:
            self._next_uid_number = max(self._next_uid_number, int(m.group(1)) + 1)
        return rec

    def _tick(self, after_us: int = 0) -> int:
        """A timestamp (µs) later than every one handed out before and later than `after_us`.

        Strictly increasing even within one microsecond of wall time, because "updatedAt moved"
        is how the product detects a concurrent change.
        """
        now = time.time_ns() // 1000
        us = max(now, self._last_us + 1, after_us + 1)
        self._last_us = us
        return us

    def _emit(self, event_type: str, before: str | None, after: str | None, at_us: int) -> None:
        if self._listeners:
            at = _from_us(at_us)
            for listener in list(self._listeners):
                listener(event_type, before, after, at)

    def _rec(self, uid: str) -> _Rec:
        rec = self._contacts.get(uid)
        if rec is None:
            raise _not_found(uid)
        return rec

    def _write(self, rec: _Rec, data: dict[str, Any], us: int) -> None:
        data["updatedAt"] = _fmt_us(us)
        rec.raw = _dumps(data)
        rec.updated_us = us
        rec.deleted = data["deletedAt"] is not None

    def _new_uid(self) -> str:
        while True:
            uid = f"ct_{self._next_uid_number:07d}_{self._rng.getrandbits(24):06x}"
            self._next_uid_number += 1
            if uid not in self._contacts:
                return uid

    # --- the API's operations (raise EmulatorError) ---------------------------------------------------

    def list_locations_json(self) -> str:
        """Body of `GET /v4/locations`."""
        with self.lock:
            items = [_dumps(loc.to_wire()) for loc in self._locations.values()]
        return '{"data":[' + ",".join(items) + "]}"

    def list_contacts_json(
        self,
        location_uid: str | None,
        limit: int = MAX_LIMIT,
        cursor: str | None = None,
        updated_since: str | None = None,
        include_deleted: bool = False,
    ) -> str:
        """Body of `GET /v4/contacts`: one page in insertion order, with the next cursor.

        With a cursor the filters come from the cursor. A contact changing while a client pages
        keeps its place in the order, so it is neither skipped nor repeated because of the change.
        """
        if not 1 <= limit <= MAX_LIMIT:
            raise _invalid(f"limit must be between 1 and {MAX_LIMIT}")
        if cursor is not None:
            cur = _Cursor.decode(cursor)
        else:
            if not location_uid:
                raise _invalid("locationUid is required")
            since_us = None
            if updated_since is not None:
                try:
                    since_us = _to_us(parse_timestamp(updated_since))
                except (ValueError, TypeError):
                    raise _invalid("updatedSince is not an ISO 8601 timestamp") from None
            cur = _Cursor(location_uid, 0, since_us, include_deleted)
        with self.lock:
            recs = self._by_location.get(cur.location_uid)
            if recs is None:
                raise _invalid(f"unknown locationUid {cur.location_uid}")
            start = bisect_right(self._seqs_by_location[cur.location_uid], cur.after_seq)
            page: list[_Rec] = []
            more = False
            since = cur.updated_since_us
            for i in range(start, len(recs)):
                rec = recs[i]
                if (rec.deleted and not cur.include_deleted) or (
                    since is not None and rec.updated_us < since
                ):
                    continue
                if len(page) == limit:
                    more = True
                    break
                page.append(rec)
            raws = [rec.raw for rec in page]
            next_cursor = None
            if more:
                next_cursor = _Cursor(cur.location_uid, page[-1].seq, since, cur.include_deleted).encode()
        return (
            '{"data":['
            + ",".join(raws)
            + '],"metadata":{"nextCursor":'
            + ("null" if next_cursor is None else f'"{next_cursor}"')
            + "}}"
        )

    def get_json(self, uid: str) -> str:
        """The contact's wire JSON (soft-deleted ones included)."""
        with self.lock:
            return self._rec(uid).raw

    def create(self, body: Any) -> str:
        """`POST /v4/contacts`; returns the new contact's JSON.

        Besides the writable fields it accepts `conversationCount`, so seeding can give contacts
        history to move in a merge.
        """
        if not isinstance(body, dict):
            raise _invalid("body must be a JSON object")
        fields = dict(body)
        location_uid = fields.pop("locationUid", None)
        conversations = fields.pop("conversationCount", 0)
        if not isinstance(location_uid, str):
            raise _invalid("locationUid is required")
        if type(conversations) is not int or conversations < 0:
            raise _invalid("conversationCount must be a non-negative integer")
        _check_writable(fields)
        with self.lock:
            if location_uid not in self._locations:
                raise _invalid(f"unknown locationUid {location_uid}")
            us = self._tick()
            stamp = _fmt_us(us)
            data: dict[str, Any] = {
                "uid": self._new_uid(),
                "locationUid": location_uid,
                "name": fields.get("name"),
                "channels": fields.get("channels", []),
                "tags": fields.get("tags", []),
                "attributes": fields.get("attributes", []),
                "address": fields.get("address"),
                "marketingOptOut": fields.get("marketingOptOut", False),
                "smsOptOut": fields.get("smsOptOut", False),
                "emailOptOut": fields.get("emailOptOut", False),
                "createdAt": stamp,
                "updatedAt": stamp,
                "deletedAt": None,
                "mergedIntoUid": None,
                "conversationCount": conversations,
            }
            rec = self._insert(Contact.from_wire(data))
            self._emit("contact.created", None, rec.raw, us)
            return rec.raw

    def patch(self, uid: str, body: Any) -> str:
        """`PATCH /v4/contacts/{uid}`; returns the contact's JSON. An empty body changes nothing."""
        if not isinstance(body, dict):
            raise _invalid("body must be a JSON object")
        unknown = set(body) - WRITABLE_FIELDS
        if unknown:
            raise _invalid(f"not writable: {', '.join(sorted(unknown))}")
        _check_writable(body)
        with self.lock:
            rec = self._rec(uid)
            if not body:
                return rec.raw
            before = rec.raw
            data = json.loads(before)
            data.update(body)
            us = self._tick(rec.updated_us)
            self._write(rec, data, us)
            self._emit("contact.updated", before, rec.raw, us)
            return rec.raw

    def delete(self, uid: str) -> None:
        """`DELETE /v4/contacts/{uid}`: soft delete; deleting a deleted contact changes nothing."""
        with self.lock:
            rec = self._rec(uid)
            if rec.deleted:
                return
            before = rec.raw
            data = json.loads(before)
            us = self._tick(rec.updated_us)
            data["deletedAt"] = _fmt_us(us)
            self._write(rec, data, us)
            self._emit("contact.deleted", before, rec.raw, us)

    def restore(self, uid: str) -> str:
        """`POST /v4/contacts/{uid}/restore`: clears deletedAt and mergedIntoUid."""
        with self.lock:
            rec = self._rec(uid)
            if not rec.deleted:
                return rec.raw
            before = rec.raw
            data = json.loads(before)
            data["deletedAt"] = None
            data["mergedIntoUid"] = None
            us = self._tick(rec.updated_us)
            self._write(rec, data, us)
            self._emit("contact.restored", before, rec.raw, us)
            return rec.raw

    @staticmethod
    def parse_merge_body(body: Any) -> list[str]:
        """The duplicate uids of a merge body, in order, without repeats."""
        if not isinstance(body, dict) or set(body) != {"duplicateUids"}:
            raise _invalid('body must be {"duplicateUids": [...]}')
        dups = body["duplicateUids"]
        if not isinstance(dups, list) or not dups or not all(isinstance(u, str) for u in dups):
            raise _invalid("duplicateUids must be a non-empty list of uids")
        return list(dict.fromkeys(dups))

    def _validate_merge(self, primary_uid: str, dups: list[str], block_cross_location: bool) -> None:
        primary = self._contacts.get(primary_uid)
        if primary is None or primary.deleted:
            raise _not_found(primary_uid)
        for uid in dups:
            rec = self._contacts.get(uid)
            if rec is None or rec.deleted or uid == primary_uid:
                why = "equals the primary" if uid == primary_uid else "does not exist or is deleted"
                raise EmulatorError(400, "invalid_duplicate_uid", f"duplicate {uid} {why}", uid)
        if block_cross_location:
            for uid in dups:
                if self._contacts[uid].location_uid != primary.location_uid:
                    raise EmulatorError(
                        422,
                        "cross_location_merge_blocked",
                        "the organization forbids merging contacts of different locations",
                        uid,
                    )

    def merge_begin(self, primary_uid: str, dups: list[str], block_cross_location: bool) -> None:
        """Validate a merge and mark its contacts in flight (409 for a second merge touching them).

        The server holds the reservation for the merge's whole duration (including injected
        latency); `merge_commit` or `merge_abort` releases it.
        """
        with self.lock:
            self._validate_merge(primary_uid, dups, block_cross_location)
            members = [primary_uid, *dups]
            busy = next((uid for uid in members if uid in self._in_flight), None)
            if busy is not None:
                raise EmulatorError(
                    409, "merge_in_progress", f"another merge touching {busy} is in flight", busy
                )
            self._in_flight.update(members)

    def merge_abort(self, primary_uid: str, dups: list[str]) -> None:
        """Release a merge reservation without applying it."""
        with self.lock:
            self._in_flight.difference_update([primary_uid, *dups])

    def merge_commit(self, primary_uid: str, dups: list[str], block_cross_location: bool) -> str:
        """Apply a reserved merge and release it; returns the primary's JSON.

        Re-validates first, since other calls may have changed members while the merge was in
        flight. The primary keeps its own fields; duplicates are soft-deleted with mergedIntoUid
        and hand their conversations to the primary.
        """
        with self.lock:
            try:
                self._validate_merge(primary_uid, dups, block_cross_location)
                primary = self._contacts[primary_uid]
                pdata = json.loads(primary.raw)
                primary_before = primary.raw
                for uid in dups:
                    rec = self._contacts[uid]
                    before = rec.raw
                    data = json.loads(before)
                    us = self._tick(rec.updated_us)
                    pdata["conversationCount"] += data["conversationCount"]
                    data["conversationCount"] = 0
                    data["deletedAt"] = _fmt_us(us)
                    data["mergedIntoUid"] = primary_uid
                    self._write(rec, data, us)
                    self._emit("contact.merged", before, rec.raw, us)
                us = self._tick(primary.updated_us)
                self._write(primary, pdata, us)
                self._emit("contact.updated", primary_before, primary.raw, us)
                return primary.raw
            finally:
                self._in_flight.difference_update([primary_uid, *dups])

    def merge(
        self, primary_uid: str, duplicate_uids: Iterable[str], block_cross_location: bool = False
    ) -> Contact:
        """Merge in one step (no in-flight window), for tests that set up merged history."""
        dups = list(dict.fromkeys(duplicate_uids))
        self.merge_begin(primary_uid, dups, block_cross_location)
        return Contact.from_wire(json.loads(self.merge_commit(primary_uid, dups, block_cross_location)))

    def in_flight(self) -> frozenset[str]:
        """Uids currently reserved by merges in flight."""
        with self.lock:
            return frozenset(self._in_flight)
