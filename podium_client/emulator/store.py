"""The emulator's contact store: serialized contacts, the indexes identifiers need, and listing.

A contact is kept as its serialized v4 JSON (bytes) plus the few fields listing needs without parsing
it (insertion sequence, createdAt, updatedAt, hidden state), so a million-contact organization fits
in memory and a page is served by joining byte strings. Identifiers (`/v4/contacts/{identifier}`) are
resolved through three indexes kept up to date on every write: email (case-insensitive), the last
digits of every phone spelling (candidates, confirmed by parsing with `phonenumbers` in the contact's
region, cached per contact), and conversation uid. Not thread-safe by itself: EmulatorState holds
the lock.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import phonenumbers

from podium_client.emulator.errors import EmulatorError, invalid_cursor
from podium_client.emulator.shapes import EMAIL, PHONE

E164_RE = re.compile(r"^\+[1-9]\d{1,15}$")
_NON_DIGITS = re.compile(r"\D+")
_PHONE_KEY_DIGITS = 8


def phone_key(text: str) -> str | None:
    """The last digits of a phone spelling: equal for every spelling of one number, cheap to compute.

    `+61 412 345 678`, `0412 345 678` and `tel:+61-412-345-678` all give `12345678`. A key only
    proposes candidates; the match is confirmed on parsed numbers.
    """
    digits = _NON_DIGITS.sub("", text)
    if len(digits) < 5:
        return None
    return digits[-_PHONE_KEY_DIGITS:]


def e164(text: str, region: str | None) -> str | None:
    """The E.164 form of a phone spelling read in `region`, or None when it is not a valid number."""
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def mask(identifier: str) -> str:
    """An identifier with most of it hidden, for stats and logs (never a full phone or email)."""
    if "@" in identifier:
        local, _, domain = identifier.partition("@")
        return f"{local[:1]}***@{domain}"
    if identifier.startswith("+"):
        return identifier[:3] + "*" * max(0, len(identifier) - 6) + identifier[-3:]
    return identifier[:8] + "…"


class Rec:
    """One stored contact: its JSON plus what listing and resolution need without parsing it."""

    __slots__ = (
        "uid",
        "seq",
        "raw",
        "created_us",
        "updated_us",
        "deleted_at",
        "merged_into",
        "gone",
        "phones",
    )

    def __init__(self, uid: str, seq: int, raw: bytes, created_us: int, updated_us: int) -> None:
        self.uid = uid
        self.seq = seq
        self.raw = raw
        self.created_us = created_us
        self.updated_us = updated_us
        self.deleted_at: str | None = None
        self.merged_into: str | None = None
        self.gone = False
        self.phones: frozenset[str] | None = None  # E.164 of its phones, computed when first needed

    @property
    def hidden(self) -> bool:
        """Soft-deleted or merged away (only tenants with capabilities have such contacts)."""
        return self.deleted_at is not None or self.merged_into is not None

    def data(self) -> dict[str, Any]:
        """The stored contact as a dict (published fields only)."""
        parsed: dict[str, Any] = json.loads(self.raw)
        return parsed


def _keys(contact: dict[str, Any]) -> tuple[set[str], set[str], list[str]]:
    emails = {c["identifier"].strip().lower() for c in contact["channels"] if c["type"] == EMAIL}
    emails.update(e.strip().lower() for e in contact["emails"])
    spellings = [c["identifier"] for c in contact["channels"] if c["type"] == PHONE]
    spellings.extend(contact["phoneNumbers"])
    phones = {k for k in map(phone_key, spellings) if k}
    conversations = [c["uid"] for c in contact["conversations"]]
    return emails, phones, conversations


def _add(index: dict[str, Any], key: str, rec: Rec) -> None:
    held = index.get(key)
    if held is None:
        index[key] = rec
    elif isinstance(held, list):
        if rec not in held:
            held.append(rec)
    elif held is not rec:
        index[key] = [held, rec]


def _discard(index: dict[str, Any], key: str, rec: Rec) -> None:
    held = index.get(key)
    if held is rec:
        del index[key]
    elif isinstance(held, list) and rec in held:
        held.remove(rec)
        if len(held) == 1:
            index[key] = held[0]


def _held(index: dict[str, Any], key: str) -> list[Rec]:
    held = index.get(key)
    if held is None:
        return []
    return list(held) if isinstance(held, list) else [held]


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a listing stands; encoded opaque, carrying the listing's filters and its issue time (ms)."""

    kind: str
    after: int
    since_us: int | None
    include_hidden: bool
    limit: int
    epoch: int
    issued: int

    def encode(self) -> str:
        payload = json.dumps(
            [self.kind, self.after, self.since_us, self.include_hidden, self.limit, self.epoch, self.issued],
            separators=(",", ":"),
        )
        return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str, kind: str, epoch: int, ttl_s: float | None) -> Cursor:
        """The cursor `text` stands for; 400 invalid_cursor when it is garbage, foreign or stale."""
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            k, after, since, hidden, limit, ep, issued = json.loads(raw)
        except (ValueError, TypeError, binascii.Error):
            raise invalid_cursor("the cursor is not one this API issued") from None
        if not (
            k == kind
            and type(after) is int
            and (since is None or type(since) is int)
            and type(hidden) is bool
            and type(limit) is int
            and type(ep) is int
            and type(issued) is int
        ):
            raise invalid_cursor("the cursor is not one this listing issued")
        if ep != epoch:
            raise invalid_cursor("the cursor is stale; restart the listing")
        if ttl_s is not None and time.time() - issued / 1000 > ttl_s:
            raise invalid_cursor("the cursor has expired; restart the listing")
        return cls(k, after, since, hidden, limit, ep, issued)


class ContactStore:
    """Contacts in insertion order with identifier indexes; the caller holds the lock."""

    def __init__(self, region_of_location: Callable[[str], str]) -> None:
        self._region_of_location = region_of_location
        self.by_uid: dict[str, Rec] = {}
        self._order: list[Rec] = []
        self._seqs: list[int] = []
        self._gone = 0
        self._next_seq = 1
        self._by_email: dict[str, Any] = {}
        self._by_phone: dict[str, Any] = {}
        self.by_conversation: dict[str, Rec] = {}

    def __len__(self) -> int:
        return len(self.by_uid)

    def __iter__(self) -> Iterator[Rec]:
        """Live records (hidden ones included) in insertion order."""
        return (rec for rec in self._order if not rec.gone)

    # --- writing ------------------------------------------------------------------------------------

    def insert(self, contact: dict[str, Any], raw: bytes, created_us: int, updated_us: int) -> Rec:
        """Add a contact (its dict and its serialized form); ValueError when the uid exists."""
        uid = contact["uid"]
        if uid in self.by_uid:
            raise ValueError(f"duplicate contact uid {uid}")
        rec = Rec(uid, self._next_seq, raw, created_us, updated_us)
        self._next_seq += 1
        self.by_uid[uid] = rec
        self._order.append(rec)
        self._seqs.append(rec.seq)
        self._index(rec, contact)
        return rec

    def replace(
        self, rec: Rec, before: dict[str, Any], after: dict[str, Any], raw: bytes, updated_us: int
    ) -> None:
        """Store a changed contact and move its index entries."""
        self._unindex(rec, before)
        rec.raw = raw
        rec.updated_us = updated_us
        rec.phones = None
        self._index(rec, after)

    def remove(self, rec: Rec, contact: dict[str, Any]) -> None:
        """Forget a contact entirely (a published DELETE)."""
        self._unindex(rec, contact)
        del self.by_uid[rec.uid]
        rec.gone = True
        self._gone += 1
        if self._gone > 1000 and self._gone * 2 > len(self._order):
            self._order = [r for r in self._order if not r.gone]
            self._seqs = [r.seq for r in self._order]
            self._gone = 0

    def _index(self, rec: Rec, contact: dict[str, Any]) -> None:
        emails, phones, conversations = _keys(contact)
        for key in emails:
            _add(self._by_email, key, rec)
        for key in phones:
            _add(self._by_phone, key, rec)
        for conv in conversations:
            self.by_conversation[conv] = rec

    def _unindex(self, rec: Rec, contact: dict[str, Any]) -> None:
        emails, phones, conversations = _keys(contact)
        for key in emails:
            _discard(self._by_email, key, rec)
        for key in phones:
            _discard(self._by_phone, key, rec)
        for conv in conversations:
            if self.by_conversation.get(conv) is rec:
                del self.by_conversation[conv]

    # --- finding ------------------------------------------------------------------------------------

    def phones_of(self, rec: Rec) -> frozenset[str]:
        """The E.164 numbers a contact holds, read in its first location's region (cached)."""
        if rec.phones is None:
            contact = rec.data()
            region = (
                self._region_of_location(contact["locations"][0]["uid"]) if contact["locations"] else None
            )
            spellings = [c["identifier"] for c in contact["channels"] if c["type"] == PHONE]
            spellings.extend(contact["phoneNumbers"])
            rec.phones = frozenset(n for n in (e164(s, region) for s in spellings) if n)
        return rec.phones

    def holders_of_phone(self, number: str) -> list[Rec]:
        """Contacts holding the E.164 `number` in any spelling (hidden ones included)."""
        key = phone_key(number)
        if key is None:
            return []
        return [rec for rec in _held(self._by_phone, key) if number in self.phones_of(rec)]

    def holders_of_email(self, email: str) -> list[Rec]:
        """Contacts holding `email`, compared case-insensitively (hidden ones included)."""
        return _held(self._by_email, email.strip().lower())

    # --- listing --------------------------------------------------------------------------------------

    def page(self, after_seq: int, limit: int, keep: Callable[[Rec], bool]) -> tuple[list[Rec], bool]:
        """Up to `limit` records after sequence `after_seq` that `keep` accepts, and whether more follow."""
        order = self._order
        out: list[Rec] = []
        for i in range(bisect_right(self._seqs, after_seq), len(order)):
            rec = order[i]
            if rec.gone or not keep(rec):
                continue
            if len(out) == limit:
                return out, True
            out.append(rec)
        return out, False


def oldest(recs: Iterable[Rec]) -> Rec:
    """The record created first (insertion order breaks ties): the one an ambiguous identifier acts on."""
    return min(recs, key=lambda r: (r.created_us, r.seq))


__all__ = ["ContactStore", "Cursor", "E164_RE", "EmulatorError", "Rec", "e164", "mask", "oldest", "phone_key"]
