"""Turning Podium contacts into the contact index, in bulk.

Two halves, so the expensive part can run in other processes:

* ``prepare_contact`` is pure (no Django, no database): it normalizes every channel of one Podium
  contact with its location's country as the default region, computes ``field_count`` and the
  normalized name, and returns a picklable ``PreparedContact`` with its natural keys and the phones
  that could not become one (the uncategorized queue).
* ``IndexWriter`` writes batches of prepared contacts: one upsert of the contact rows
  (``bulk_create(update_conflicts=True)``, which PostgreSQL and SQLite both support), then the keys and
  uncategorized phones of those contacts replaced by one delete and one insert each.

``iter_prepared_file`` reads an NDJSON export and prepares it, in worker processes when the file is big
enough to be worth it (parsing JSON and phone numbers is the CPU-bound part; the main process only
writes), so a file scan and an API scan share everything from ``PreparedContact`` on.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, NamedTuple

import orjson
from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from psycopg import IntegrityError as DriverIntegrityError

# insert_rows and update_rows are imported from here by detection (and bench_lookup).
from dedup.bulkrows import _datetime_adapter, _identity
from dedup.bulkrows import insert_rows as insert_rows
from dedup.bulkrows import update_rows as update_rows
from dedup.dblimits import chunked, in_list_size, in_values
from dedup.models import Contact, ContactKey, ContactLocation, Location, UncategorizedPhone
from dedup.names import normalize_name
from dedup.phones import normalize_email, phone_key
from dedup.records import compute_field_count
from dedup.stamps import Stamp, is_older, load_stamps
from dedup.unstorable import RejectedLine as RejectedLine
from dedup.unstorable import storable_uid as storable_uid
from dedup.unstorable import uid_problem as uid_problem
from dedup.unstorable import unstorable_reason as unstorable_reason
from podium_client.consent import consent_flags
from podium_client.types import (
    EMAIL,
    PHONE,
    format_timestamp,
)
from podium_client.types import Channel as PodiumChannel
from podium_client.types import Contact as PodiumContact
from podium_client.types import Location as PodiumLocation

logger = logging.getLogger(__name__)

# Column widths of the index tables; longer values are cut rather than refused, because a contact
# with a silly 2,000-character name must still be indexed (and is still readable in Podium).
_UID_MAX = Contact._meta.get_field("uid").max_length or 64
_NAME_MAX = Contact._meta.get_field("name").max_length or 500
_KEY_MAX = ContactKey._meta.get_field("key").max_length or 320
_RAW_MAX = ContactKey._meta.get_field("raw").max_length or 500
_EXT_MAX = ContactKey._meta.get_field("extension").max_length or 40
_UNCAT_RAW_MAX = UncategorizedPhone._meta.get_field("raw").max_length or 500
_REASON_MAX = UncategorizedPhone._meta.get_field("reason").max_length or 300

# Contacts per write: big enough that per-statement overhead vanishes, small enough that a crash
# loses little and a transaction holds few locks.
DEFAULT_BATCH_SIZE = 2000


_CONTACT_UPDATE_FIELDS = [
    "location",
    "location_uids",
    "name",
    "normalized_name",
    "channels",
    "tags",
    "attributes",
    "address",
    "field_count",
    "marketing_opt_out",
    "sms_opt_out",
    "email_opt_out",
    "conversation_count",
    "created_at",
    "updated_at",
    "deleted_at",
    "merged_into_uid",
    "indexed_at",
]


class PreparedKey(NamedTuple):
    """One natural key of a contact: kind (PHONE/EMAIL), the key, the identifier as typed, extension."""

    kind: str
    key: str
    raw: str
    extension: str


class PreparedInvalidPhone(NamedTuple):
    """A phone that did not become a key: the identifier, its error code and the human reason."""

    raw: str
    code: str
    reason: str


class PreparedContact(NamedTuple):
    """A Podium contact ready to be written to the index (plain values only, so it pickles cheaply)."""

    uid: str
    location_uid: str
    location_uids: tuple[str, ...]
    region: str
    name: str
    normalized_name: str
    channels: list[dict[str, Any]]
    tags: list[dict[str, Any]]
    attributes: list[dict[str, Any]]
    address: dict[str, Any] | None
    conversations: list[str]
    field_count: int
    marketing_opt_out: bool
    sms_opt_out: bool
    email_opt_out: bool
    conversation_count: int
    created_at: datetime | None
    updated_at: datetime | None
    deleted_at: datetime | None
    merged_into_uid: str
    keys: tuple[PreparedKey, ...]
    invalid_phones: tuple[PreparedInvalidPhone, ...]
    # channels, tags, attributes, address and conversations as the JSON text the index stores,
    # serialized where the contact was prepared (a worker process, for big files) not by the writer.
    json_text: tuple[str, str, str, str | None, str] | None = None
    # The export line it was read from (file scans), so a record the database refuses can be shown
    # to an admin with its line.
    line_number: int | None = None


def _channel_json(channel: PodiumChannel) -> dict[str, Any]:
    opted_out_at = channel.transactional_opted_out_at
    return {
        "type": channel.type,
        "identifier": channel.identifier,
        "label": channel.label,
        "marketingOptedInLocationUids": list(channel.marketing_opted_in_location_uids),
        "transactionalOptedOutAt": None if opted_out_at is None else format_timestamp(opted_out_at),
    }


def prepare_contact(
    contact: PodiumContact, region: str, home_location_uid: str | None = None
) -> PreparedContact:
    """Normalize one Podium contact for the index (pure; safe to run in a worker process).

    Every phone goes through ``phone_key`` (``normalize_phone``'s verdict) with ``region`` (the region of the contact's first
    location): a valid one becomes a PHONE key (its E.164), anything else an uncategorized phone with
    its ``ERR_DEDUP_001``/``ERR_DEDUP_002`` reason. Every email becomes an EMAIL key (trimmed,
    lower-cased); detection uses those only where policy makes email a secondary key. Two spellings of
    one number on the same contact give one key (the first spelling is kept as ``raw``). The three
    opt-out flags are derived from the channels' consent (``podium_client.consent``). A contact Podium
    lists in no location is filed under ``home_location_uid``.
    """
    keys: list[PreparedKey] = []
    seen: set[tuple[str, str]] = set()
    invalid: list[PreparedInvalidPhone] = []
    invalid_seen: set[str] = set()
    phone_values: list[str] = []
    email_values: list[str] = []
    for identifier in contact.phones:
        if not identifier.strip():
            continue
        result = phone_key(identifier, region)
        if result.e164:
            phone_values.append(result.e164)
            if (PHONE, result.e164) not in seen:
                seen.add((PHONE, result.e164))
                keys.append(PreparedKey(PHONE, result.e164, identifier[:_RAW_MAX], result.extension[:_EXT_MAX]))
        else:
            phone_values.append(identifier)
            raw = identifier[:_UNCAT_RAW_MAX]
            if raw not in invalid_seen:
                invalid_seen.add(raw)
                invalid.append(PreparedInvalidPhone(raw, result.code, result.reason[:_REASON_MAX]))
    for identifier in contact.emails:
        if not identifier.strip():
            continue
        email_values.append(identifier)
        email_key = normalize_email(identifier)
        if email_key and len(email_key) <= _KEY_MAX and (EMAIL, email_key) not in seen:
            seen.add((EMAIL, email_key))
            keys.append(PreparedKey(EMAIL, email_key, identifier[:_RAW_MAX], ""))
    name = contact.name or ""
    channels = [_channel_json(c) for c in contact.channels]
    # A phone or email Podium lists outside ``channels`` is still the contact's: keep it, with no
    # consent on record (nothing is assumed opted in).
    listed = {(c["type"], c["identifier"]) for c in channels}
    for kind, values in ((PHONE, contact.phone_numbers), (EMAIL, contact.email_addresses)):
        for value in values:
            if (kind, value) not in listed:
                listed.add((kind, value))
                channels.append(
                    {"type": kind, "identifier": value, "label": None, "marketingOptedInLocationUids": [],
                     "transactionalOptedOutAt": None}
                )  # fmt: skip
    tags: list[dict[str, Any]] = [{"uid": t.uid, "label": t.label} for t in contact.tags if t.label]
    attributes = [
        {"uid": a.uid, "label": a.label, "value": a.value, "dataType": a.data_type}
        for a in contact.attributes
    ]
    address = None if contact.address is None else contact.address.to_wire()
    location_uids = contact.location_uids or ((home_location_uid,) if home_location_uid else ())
    if not location_uids:
        raise ValueError(f"contact {contact.uid} belongs to no location")
    flags = consent_flags(contact if contact.location_uids else replace(contact, location_uids=location_uids))
    conversations = list(contact.conversation_uids)
    field_count = compute_field_count(
        name=name,
        phones=phone_values,
        emails=email_values,
        tags=[str(t["label"]) for t in tags],
        attributes=[(a.label, a.text) for a in contact.attributes],
        address=None if contact.address is None else contact.address.one_line(),
    )
    return PreparedContact(
        uid=contact.uid,
        location_uid=location_uids[0],
        location_uids=tuple(location_uids),
        region=region,
        name=name[:_NAME_MAX],
        normalized_name=normalize_name(name)[:_NAME_MAX],
        channels=channels,
        tags=tags,
        attributes=attributes,
        address=address,
        conversations=conversations,
        field_count=field_count,
        marketing_opt_out=flags.marketing_opt_out,
        sms_opt_out=flags.sms_opt_out,
        email_opt_out=flags.email_opt_out,
        conversation_count=len(conversations),
        created_at=contact.created_at,
        updated_at=contact.updated_at,
        deleted_at=contact.deleted_at,
        merged_into_uid=contact.merged_into_uid or "",
        keys=tuple(keys),
        invalid_phones=tuple(invalid),
        json_text=(
            _json(channels),
            _json(tags),
            _attributes_json(attributes),
            None if address is None else _json(address),
            _json(conversations),
        ),
    )


@dataclass
class WriteResult:
    """What one write did: contacts written, their database ids, invalid phones recorded."""

    contacts: int = 0
    invalid_phones: int = 0
    contact_ids: list[int] = field(default_factory=list)
    max_updated_at: dict[str, datetime] = field(default_factory=dict)
    newest_updated_at: datetime | None = None
    # Records not written because the index holds a newer version of the contact.
    older: int = 0



class IndexWriter:
    """Writes prepared contacts into the index: contact rows, natural keys, uncategorized phones.

    Knows the locations (uid → row id and country) so callers can ask for the region of a location
    before preparing its contacts; a contact of a location nobody declared gets a placeholder
    location with the deployment's default region.

    Never replaces a contact with an older version of it (an ``updatedAt`` before the stored one):
    such records are dropped from the batch (``WriteResult.older``). ``stamps`` (``load_stamps``), when
    a caller sets it, is the index's versions read once for a whole scan, instead of a lookup per batch.
    """

    def __init__(self, default_region: str, method: str = "auto") -> None:
        if method not in ("auto", "orm"):
            raise ValueError(
                "method is 'auto' (COPY on PostgreSQL, executemany on SQLite) or 'orm' (bulk_create)"
            )
        self.method = method
        self.default_region = default_region.upper()
        self.stamps: dict[str, Stamp | None] | None = None
        # A scan sets this: SQLite connections it writes through get bulk-load settings (_tune_sqlite).
        self.bulk = False
        self._tuned: object = None
        self._locations: dict[str, tuple[int, str]] = {
            uid: (pk, country) for pk, uid, country in Location.objects.values_list("pk", "uid", "country")
        }

    def reload_locations(self) -> None:
        """Forget what this writer knows about locations and read them again.

        After a rolled-back write: placeholder locations it created in that transaction are gone.
        """
        self._locations = {
            uid: (pk, country) for pk, uid, country in Location.objects.values_list("pk", "uid", "country")
        }

    def location_id(self, uid: str) -> int | None:
        """The row id of a known location."""
        known = self._locations.get(uid)
        return known[0] if known else None

    def region_for(self, location_uid: str) -> str:
        """The default region for a location's national-format numbers (its country)."""
        known = self._locations.get(location_uid)
        return (known[1] if known else self.default_region).upper()

    def regions(self) -> dict[str, str]:
        """Every known location's region, for worker processes that prepare contacts."""
        return {uid: country.upper() for uid, (_pk, country) in self._locations.items()}

    def ensure_locations(self, locations: Iterable[PodiumLocation]) -> list[Location]:
        """Upsert locations as Podium reports them (name, country and archived may change).

        The region in force is recomputed: Podium's country, else the admin's choice kept on the row,
        else the deployment default (see ``Location``).
        """
        reported = {loc.uid: loc for loc in locations}
        if not reported:
            return []
        rows: list[Location] = []
        for reported_location in reported.values():
            region = (reported_location.country or self.default_region)[:2].upper()
            # region_parsed is only set on insert (it is not among the update fields): a known
            # location whose region changes keeps the old one until its contacts are re-parsed.
            rows.append(
                Location(
                    uid=reported_location.uid,
                    name=reported_location.name[:200],
                    podium_country=(reported_location.country or "")[:2].upper(),
                    archived=reported_location.archived,
                    country=region,
                    region_parsed=region,
                )
            )
        Location.objects.bulk_create(
            rows,
            update_conflicts=True,
            unique_fields=["uid"],
            update_fields=["name", "podium_country", "archived"],
        )
        saved = list(Location.objects.filter(uid__in=in_values(list(reported))))
        stale = []
        for loc in saved:
            region = Location.effective_region(loc.podium_country, loc.region_override, self.default_region)
            if loc.country != region:
                loc.country = region
                stale.append(loc)
            self._locations[loc.uid] = (loc.pk, loc.country)
        if stale:
            Location.objects.bulk_update(stale, ["country"])
        return saved

    def _ensure_placeholder_locations(self, uids: Iterable[str]) -> None:
        missing = sorted({uid for uid in uids if uid not in self._locations})
        if not missing:
            return
        logger.warning(
            "indexing contacts of %d undeclared location(s); region %s assumed",
            len(missing),
            self.default_region,
        )
        self.ensure_locations(PodiumLocation(uid, uid) for uid in missing)

    def write(self, batch: Sequence[PreparedContact]) -> WriteResult:
        """Upsert a batch of prepared contacts and replace their keys and uncategorized phones.

        Runs in one transaction, so a contact is never visible with half of its keys. Returns the
        contacts' row ids (for detection) and the newest ``updatedAt`` seen per location (the next
        incremental scan's watermark).
        """
        result = WriteResult()
        if not batch:
            return result
        # The last occurrence of a uid wins (a page boundary can repeat a contact that changed).
        by_uid: dict[str, PreparedContact] = {}
        for prepared in batch:
            by_uid[prepared.uid] = prepared
        items = list(by_uid.values())
        fast = self.method == "auto" and connection.vendor in ("postgresql", "sqlite")
        stored: dict[str, Stamp | None] = {}
        if not fast or self.stamps is not None:
            # The bulk upserts refuse older versions themselves and say which rows they wrote;
            # stamps a scan read beforehand spare them the rows, and the ORM path must look.
            stored = self._stored_stamps([p.uid for p in items]) if fast else load_stamps([p.uid for p in items])
            kept = [p for p in items if not is_older(stored.get(p.uid), p.updated_at)]
            result.older = len(items) - len(kept)
            items = kept
            if not items:
                return result
        self._ensure_placeholder_locations(uid for p in items for uid in p.location_uids)
        if self.bulk and connection.vendor == "sqlite":
            self._tune_sqlite()
        now = timezone.now()
        outermost = not connection.in_atomic_block
        with transaction.atomic():
            if fast and connection.vendor == "postgresql":
                if outermost:
                    with connection.cursor() as cursor:
                        # The index is a copy of Podium's data: a commit lost in a crash is re-fetched
                        # by the resumed scan (its checkpoint commits in the same transaction), so
                        # waiting for the WAL flush buys nothing. Only when the transaction is ours:
                        # a caller's transaction may hold state that must be durable.
                        cursor.execute("SET LOCAL synchronous_commit = off")
                ids, existed = self._upsert_contacts_postgres(items, now)
                if len(ids) < len(items):  # the rest are older than what the index holds
                    result.older += len(items) - len(ids)
                    items = [p for p in items if p.uid in ids]
            elif fast:
                ids, existed = self._upsert_contacts_sqlite(items, now)
                if len(ids) < len(items):
                    result.older += len(items) - len(ids)
                    items = [p for p in items if p.uid in ids]
            else:
                existed_uids = {p.uid for p in items if p.uid in stored}
                ids = self._upsert_contacts_orm(items, now)
                existed = {ids[uid] for uid in existed_uids}
            contact_ids = [ids[p.uid] for p in items]
            # Only contacts indexed before can have keys and queued phones to replace (a first load
            # deletes nothing), and only those whose keys changed are rewritten: most updates touch a
            # name or a tag, and every key row written costs six index insertions.
            replaced = sorted(existed)
            stored_keys = self._stored_keys(replaced)
            key_rows: list[tuple[int, int, str, str, str, str]] = []
            rekeyed: list[int] = []
            for p in items:
                contact_id = ids[p.uid]
                location_id = self._locations[p.location_uid][0]
                rows = [(contact_id, location_id, k.kind, k.key, k.raw, k.extension) for k in p.keys]
                if contact_id in existed:
                    if stored_keys.get(contact_id, set()) == set(rows):
                        continue
                    rekeyed.append(contact_id)
                key_rows.extend(rows)
            self._delete_rows(ContactKey, rekeyed)
            self._insert_keys(key_rows, fast)
            self._sync_contact_locations(items, ids, replaced)
            result.invalid_phones = self._replace_invalid_phones(items, ids, replaced, now, fast)
        result.contacts = len(items)
        result.contact_ids = contact_ids
        for p in items:
            if p.updated_at is None:
                continue
            current = result.max_updated_at.get(p.location_uid)
            if current is None or p.updated_at > current:
                result.max_updated_at[p.location_uid] = p.updated_at
            if result.newest_updated_at is None or p.updated_at > result.newest_updated_at:
                result.newest_updated_at = p.updated_at
        return result

    def _tune_sqlite(self) -> None:
        """Bulk-load settings on this SQLite connection (once per connection: they are per connection).

        A bigger page cache keeps the index's B-trees in memory while hundreds of thousands of rows go
        in. With a write-ahead log, commits wait for no fsync (``synchronous=NORMAL``, which cannot
        corrupt a WAL database; a crash loses only the last commits, which the resumed scan re-reads).
        In rollback-journal mode that setting could corrupt the file on power loss, so it is left alone.
        """
        connection.ensure_connection()
        if self._tuned is connection.connection:
            return
        with connection.cursor() as cursor:
            cursor.execute(f"PRAGMA cache_size = -{_SQLITE_BULK_CACHE_KB}")
            cursor.execute("PRAGMA journal_mode")
            if str(cursor.fetchone()[0]).lower() == "wal":
                cursor.execute("PRAGMA synchronous = NORMAL")
        self._tuned = connection.connection

    def _sync_contact_locations(
        self, items: list[PreparedContact], ids: dict[str, int], replaced: list[int]
    ) -> None:
        """Keep ``ContactLocation`` equal to each contact's locations (rewritten only where they changed)."""
        stored: dict[int, set[int]] = {}
        for chunk in chunked(replaced, in_list_size()):
            for contact_id, location_id in ContactLocation.objects.filter(contact_id__in=chunk).values_list(
                "contact_id", "location_id"
            ):
                stored.setdefault(contact_id, set()).add(location_id)
        rows: list[tuple[int, int]] = []
        changed: list[int] = []
        for p in items:
            contact_id = ids[p.uid]
            wanted = {self._locations[uid][0] for uid in p.location_uids}
            have = stored.get(contact_id)
            if have == wanted:
                continue
            if have is not None:
                changed.append(contact_id)
            rows.extend((contact_id, location_id) for location_id in sorted(wanted))
        self._delete_rows(ContactLocation, changed)
        insert_rows(ContactLocation._meta.db_table, ["contact_id", "location_id"], rows)

    # --- contact rows ---------------------------------------------------------------------------

    def _contact_values(
        self, p: PreparedContact, now: datetime, adapt: Callable[[Any], Any]
    ) -> tuple[Any, ...]:
        """One contact row in ``_CONTACT_COLUMNS`` order; JSON as text, datetimes through ``adapt``."""
        channels, tags, attributes, address, conversations = p.json_text or (
            _json(p.channels),
            _json(p.tags),
            _json_exact(p.attributes),
            None if p.address is None else _json(p.address),
            _json(p.conversations),
        )
        return (
            p.uid,
            self._locations[p.location_uid][0],
            _json(list(p.location_uids)),
            p.name,
            p.normalized_name,
            channels,
            tags,
            attributes,
            address,
            conversations,
            p.field_count,
            p.marketing_opt_out,
            p.sms_opt_out,
            p.email_opt_out,
            p.conversation_count,
            adapt(p.created_at),
            adapt(p.updated_at),
            adapt(p.deleted_at),
            p.merged_into_uid,
            adapt(now),
        )

    def _upsert_contacts_postgres(
        self, items: list[PreparedContact], now: datetime
    ) -> tuple[dict[str, int], set[int]]:
        """Upsert contact rows; returns uid -> id of the rows written, and the ids that existed before."""
        if self.stamps is not None:
            new = [p for p in items if p.uid not in self.stamps]
            if new:
                try:
                    with transaction.atomic():
                        fresh = self._copy_new_contacts(new, now)
                except IntegrityError:
                    fresh = None  # someone (a webhook) indexed one of them meanwhile: upsert them all
                if fresh is not None:
                    rest = [p for p in items if p.uid in self.stamps]
                    ids, existed = self._stage_and_upsert(rest, now) if rest else ({}, set())
                    ids.update(fresh)
                    return ids, existed
        return self._stage_and_upsert(items, now)

    def _copy_new_contacts(self, items: list[PreparedContact], now: datetime) -> dict[str, int]:
        """COPY contacts the index does not hold straight into the table, with ids drawn beforehand.

        Half the work of the staged upsert (no staging table, no conflict check) for a first load,
        where every contact is new. Raises IntegrityError if one exists after all.
        """
        table = Contact._meta.db_table
        columns = ", ".join(_CONTACT_COLUMNS)
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)", [table, len(items)]
            )
            fresh = [row[0] for row in cursor.fetchall()]
            try:
                with cursor.cursor.copy(f"COPY {table} (id, {columns}) FROM STDIN") as copy:
                    for pk, p in zip(fresh, items, strict=True):
                        copy.write_row((pk, *self._contact_values(p, now, _identity)))
            except DriverIntegrityError as exc:  # COPY runs on the driver's cursor, unwrapped by Django
                raise IntegrityError(str(exc)) from exc
        return {p.uid: pk for pk, p in zip(fresh, items, strict=True)}

    def _stage_and_upsert(
        self, items: list[PreparedContact], now: datetime
    ) -> tuple[dict[str, int], set[int]]:
        # COPY into a session-local staging table, then one INSERT ... ON CONFLICT: an order of
        # magnitude faster than a parameterized multi-row INSERT for thousands of JSON-bearing rows.
        table = Contact._meta.db_table
        columns = ", ".join(_CONTACT_COLUMNS)
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in _CONTACT_COLUMNS if c != "uid")
        with connection.cursor() as cursor:
            cursor.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE_TABLE} ON COMMIT DELETE ROWS AS "
                f"SELECT {columns} FROM {table} WITH NO DATA"
            )
            cursor.execute(f"TRUNCATE {_STAGE_TABLE}")
            raw = cursor.cursor
            with raw.copy(f"COPY {_STAGE_TABLE} ({columns}) FROM STDIN") as copy:
                for p in items:
                    copy.write_row(self._contact_values(p, now, _identity))
            # xmax is set on a row version an ON CONFLICT UPDATE produced, and 0 on a fresh insert.
            cursor.execute(
                f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {_STAGE_TABLE} "
                f"ON CONFLICT (uid) DO UPDATE SET {updates} WHERE {_not_older(table)} RETURNING uid, id, xmax <> 0"
            )
            ids: dict[str, int] = {}
            existed: set[int] = set()
            for uid, pk, updated in cursor.fetchall():
                ids[uid] = pk
                if updated:
                    existed.add(pk)
            return ids, existed

    def _stored_stamps(self, uids: list[str]) -> dict[str, Stamp | None]:
        """The stamps of those of ``uids`` the index held when ``stamps`` was read.

        Not kept up to date with this writer's own writes (at a million contacts that would double
        the scan's memory): a uid the export repeats is treated as new again, and the database's
        conflict check sends it down the upsert path.
        """
        if self.stamps is None:
            return load_stamps(uids)
        known = self.stamps
        return {uid: known[uid] for uid in uids if uid in known}

    def _upsert_contacts_sqlite(
        self, items: list[PreparedContact], now: datetime
    ) -> tuple[dict[str, int], set[int]]:
        """Upsert contact rows; returns uid -> id of the rows written, and the ids that existed before.

        Told apart by the database itself rather than by the stamps read when the scan began: a row
        is new when its id is above the table's highest before the upsert (ids only grow), and
        written when it holds the ``updated_at`` just written (else the upsert kept a newer version).
        """
        table = Contact._meta.db_table
        columns = ", ".join(_CONTACT_COLUMNS)
        marks = ", ".join(["%s"] * len(_CONTACT_COLUMNS))
        updates = ", ".join(f"{c} = excluded.{c}" for c in _CONTACT_COLUMNS if c != "uid")
        adapt = _datetime_adapter()
        rows = [self._contact_values(p, now, adapt) for p in items]
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT COALESCE(MAX(id), 0) FROM {table}")
            highest_before = cursor.fetchone()[0]
            cursor.executemany(
                f"INSERT INTO {table} ({columns}) VALUES ({marks}) "
                f"ON CONFLICT (uid) DO UPDATE SET {updates} WHERE {_not_older(table)}",
                rows,
            )
        written_at = {p.uid: adapt(p.updated_at) for p in items}
        ids: dict[str, int] = {}
        existed: set[int] = set()
        with connection.cursor() as cursor:
            for chunk in chunked([p.uid for p in items], in_list_size()):
                marks = ", ".join(["%s"] * len(chunk))
                cursor.execute(f"SELECT uid, id, updated_at FROM {table} WHERE uid IN ({marks})", chunk)
                for uid, pk, updated_at in cursor.fetchall():
                    # The driver hands back a naive datetime (Django's converter); its text is
                    # what was bound.
                    if (updated_at if updated_at is None else str(updated_at)) != written_at[uid]:
                        continue  # the stored version is newer: the upsert left it alone
                    ids[uid] = pk
                    if pk <= highest_before:
                        existed.add(pk)
        return ids, existed

    def _upsert_contacts_orm(self, items: list[PreparedContact], now: datetime) -> dict[str, int]:
        items = [full_payload(p) for p in items]
        rows = [
            Contact(
                uid=p.uid,
                location_id=self._locations[p.location_uid][0],
                location_uids=list(p.location_uids),
                name=p.name,
                normalized_name=p.normalized_name,
                channels=p.channels,
                tags=p.tags,
                attributes=p.attributes,
                address=p.address,
                conversations=p.conversations,
                field_count=p.field_count,
                marketing_opt_out=p.marketing_opt_out,
                sms_opt_out=p.sms_opt_out,
                email_opt_out=p.email_opt_out,
                conversation_count=p.conversation_count,
                created_at=p.created_at,
                updated_at=p.updated_at,
                deleted_at=p.deleted_at,
                merged_into_uid=p.merged_into_uid,
                indexed_at=now,
            )
            for p in items
        ]
        Contact.objects.bulk_create(
            rows, update_conflicts=True, unique_fields=["uid"], update_fields=_CONTACT_UPDATE_FIELDS
        )
        ids = {row.uid: row.pk for row in rows if row.pk is not None}
        if len(ids) < len(rows):  # a backend that cannot return ids from an upsert
            missing = [row.uid for row in rows if row.pk is None]
            for chunk in chunked(missing, in_list_size()):
                ids.update(Contact.objects.filter(uid__in=chunk).values_list("uid", "pk"))
        return ids

    # --- keys and uncategorized phones -------------------------------------------------------------

    @staticmethod
    def _stored_keys(contact_ids: list[int]) -> dict[int, set[tuple[int, int, str, str, str, str]]]:
        """The key rows the index holds for these contacts, in the shape ``write`` builds them."""
        stored: dict[int, set[tuple[int, int, str, str, str, str]]] = {}
        for chunk in chunked(contact_ids, in_list_size()):
            for row in ContactKey.objects.filter(contact_id__in=chunk).values_list(
                "contact_id", "location_id", "kind", "key", "raw", "extension"
            ):
                stored.setdefault(row[0], set()).add(row)
        return stored

    @staticmethod
    def _delete_rows(
        model: type[ContactKey] | type[UncategorizedPhone] | type[ContactLocation], contact_ids: list[int]
    ) -> None:
        if not contact_ids:
            return
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(
                    f"DELETE FROM {model._meta.db_table} WHERE contact_id = ANY(%s)", [contact_ids]
                )
            return
        for chunk in chunked(contact_ids, in_list_size()):
            model.objects.filter(contact_id__in=chunk).delete()

    @staticmethod
    def _insert_keys(rows: list[tuple[int, int, str, str, str, str]], fast: bool) -> None:
        if not rows:
            return
        table = ContactKey._meta.db_table
        columns = "contact_id, location_id, kind, key, raw, extension"
        if fast and connection.vendor == "postgresql":
            with (
                connection.cursor() as cursor,
                cursor.cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy,
            ):
                for row in rows:
                    copy.write_row(row)
        elif fast:
            with connection.cursor() as cursor:
                cursor.executemany(f"INSERT INTO {table} ({columns}) VALUES (%s, %s, %s, %s, %s, %s)", rows)
        else:
            ContactKey.objects.bulk_create(
                ContactKey(contact_id=c, location_id=loc, kind=kind, key=key, raw=raw, extension=ext)
                for c, loc, kind, key, raw, ext in rows
            )

    def _replace_invalid_phones(
        self,
        items: list[PreparedContact],
        ids: dict[str, int],
        replaced: list[int],
        now: datetime,
        fast: bool,
    ) -> int:
        # Keep when a phone was first seen invalid, so the queue can be worked oldest first.
        first_seen: dict[tuple[int, str], datetime] = {}
        if replaced and connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(
                    f"DELETE FROM {UncategorizedPhone._meta.db_table} WHERE contact_id = ANY(%s) "
                    "RETURNING contact_id, raw, first_seen_at",
                    [replaced],
                )
                first_seen.update(((cid, raw), seen) for cid, raw, seen in cursor.fetchall())
        elif replaced:
            for chunk in chunked(replaced, in_list_size()):
                existing = UncategorizedPhone.objects.filter(contact_id__in=chunk)
                found = list(existing.values_list("contact_id", "raw", "first_seen_at"))
                if found:
                    first_seen.update(((cid, raw), seen) for cid, raw, seen in found)
                    existing.delete()
        rows = [
            (
                ids[p.uid],
                self._locations[p.location_uid][0],
                bad.raw,
                bad.code,
                bad.reason,
                p.region[:2],
                first_seen.get((ids[p.uid], bad.raw), now),
            )
            for p in items
            for bad in p.invalid_phones
        ]
        if fast:
            insert_rows(
                UncategorizedPhone._meta.db_table,
                ["contact_id", "location_id", "raw", "code", "reason", "region", "first_seen_at"],
                rows,
            )
        else:
            UncategorizedPhone.objects.bulk_create(
                UncategorizedPhone(
                    contact_id=c,
                    location_id=loc,
                    raw=raw,
                    code=code,
                    reason=reason,
                    region=region,
                    first_seen_at=seen,
                )
                for c, loc, raw, code, reason, region, seen in rows
            )
        return len(rows)


_STAGE_TABLE = "dedup_stage_contact"

# SQLite page cache during a scan, in KiB (the default is 2 MB); within every process's memory budget.
_SQLITE_BULK_CACHE_KB = 64 * 1024

_CONTACT_COLUMNS = [
    "uid",
    "location_id",
    "location_uids",
    "name",
    "normalized_name",
    "channels",
    "tags",
    "attributes",
    "address",
    "conversations",
    "field_count",
    "marketing_opt_out",
    "sms_opt_out",
    "email_opt_out",
    "conversation_count",
    "created_at",
    "updated_at",
    "deleted_at",
    "merged_into_uid",
    "indexed_at",
]


def _not_older(table: str) -> str:
    """The upsert condition that keeps a stored contact from being replaced by an older version.

    Checked again by the database (besides the writer's own check) because a webhook may write the
    same contact between the writer's read of the stored version and its upsert.
    """
    return f"{table}.updated_at IS NULL OR EXCLUDED.updated_at IS NULL OR EXCLUDED.updated_at >= {table}.updated_at"


def _json_exact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


_PLAIN_VALUES = (str, int, bool, type(None))


def _attributes_json(attributes: list[dict[str, Any]]) -> str:
    """JSON text of a contact's attributes, as ``_json_exact`` writes it.

    Attribute values may be numbers, and orjson would write an infinite one as null: json writes what
    it is, so the database refuses it (or ``unstorable_reason`` names it). orjson writes the rest (most
    contacts have no attributes, or only text), which is several times faster.
    """
    if not attributes:
        return "[]"
    for attribute in attributes:
        value = attribute["value"]
        if not (type(value) in _PLAIN_VALUES or (type(value) is float and math.isfinite(value))):
            return _json_exact(attributes)
    return _json(attributes)


def _json(value: Any) -> str:
    """JSON text of strings, lists, dicts, bools and None (no floats: orjson writes inf/nan as null)."""
    try:
        # orjson is several times faster than json at the JSON columns of a million contacts.
        return orjson.dumps(value).decode()
    except TypeError:
        # What orjson refuses (an integer beyond 64 bits, a lone surrogate) json writes, or the
        # record is later found unstorable with a reason.
        return _json_exact(value)



def slim(p: PreparedContact, line_number: int | None = None) -> PreparedContact:
    """The contact without its JSON values as objects (their text in ``json_text`` is what is written),
    and with ``line_number`` when one is given.

    A worker process sends contacts to the writer pickled; the nested dicts of channels, tags and
    attributes cost more to pickle and unpickle than everything else about the contact. Built by
    position (``_SLIMMED`` .. ``_REST`` are the emptied fields and those after them): ``_replace``
    pops a keyword per field, a few microseconds per contact of a file scan.
    """
    number = p.line_number if line_number is None else line_number
    if p.json_text is None:
        return p if number == p.line_number else p._replace(line_number=number)
    return PreparedContact._make((*p[:_SLIMMED], [], [], [], None, [], *p[_REST:_LINE], number))


_SLIMMED = PreparedContact._fields.index("channels")
_REST = PreparedContact._fields.index("field_count")
_LINE = PreparedContact._fields.index("line_number")
assert PreparedContact._fields[_SLIMMED:_REST] == ("channels", "tags", "attributes", "address", "conversations")
assert _LINE == len(PreparedContact._fields) - 1


def full_payload(p: PreparedContact) -> PreparedContact:
    """``slim`` undone: the JSON values as objects again, read back from ``json_text``."""
    if p.json_text is None or p.channels or p.conversations:
        return p
    channels, tags, attributes, address, conversations = p.json_text
    return p._replace(
        channels=json.loads(channels),
        tags=json.loads(tags),
        attributes=json.loads(attributes),
        address=None if address is None else json.loads(address),
        conversations=json.loads(conversations),
    )
