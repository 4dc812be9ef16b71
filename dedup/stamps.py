"""Which version of a contact the index holds, compared without building model rows.

A *stamp* is Podium's ``updatedAt`` in microseconds since the epoch — or, for a contact Podium
reports deleted or merged away, ``(updatedAt, deletedAt, mergedIntoUid)`` — so a million of them fit
in a dict of plain ints. Two uses:

* a rescan skips a record whose stamp equals the index's (nothing changed since it was indexed);
* no writer ever replaces a contact with an older version (``updatedAt`` before the stored one): a
  webhook may have written newer data than the export or page being read.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import closing
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from typing import Any

from django.db import connection

from dedup.bulkrows import fetch_chunks
from dedup.dblimits import chunked, in_list_size
from dedup.models import Contact
from podium_client.types import parse_timestamp

Stamp = int | tuple[int, int | None, str]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

# Rows per round trip when reading every stamp of a big index (``fetch_chunks``).
_FETCH_ROWS = 20_000


def micros(moment: datetime) -> int:
    """Microseconds since the epoch of an aware datetime (a naive one is read as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MICROSECOND


def make_stamp(updated: int, deleted: int | None, merged_into: str) -> Stamp:
    """The stamp of a version: a bare int for the common visible contact."""
    if deleted is None and not merged_into:
        return updated
    return (updated, deleted, merged_into)


def contact_stamp(updated_at: datetime | None, deleted_at: datetime | None, merged_into: str) -> Stamp | None:
    """The stamp of a contact's fields; None when it has no ``updatedAt`` (never compared)."""
    if updated_at is None:
        return None
    return make_stamp(
        micros(updated_at), None if deleted_at is None else micros(deleted_at), merged_into or ""
    )


def wire_stamp(obj: Mapping[str, Any]) -> Stamp | None:
    """The stamp of a contact's wire object, or None when its fields are missing or mistyped.

    None sends the record down the full path, which validates it (and sets it aside if malformed).
    """
    updated = obj.get("updatedAt")
    deleted = obj.get("deletedAt")
    merged = obj.get("mergedIntoUid")
    if type(updated) is not str or (deleted is not None and type(deleted) is not str):
        return None
    if merged is not None and type(merged) is not str:
        return None
    try:
        return make_stamp(
            micros(parse_timestamp(updated)),
            None if deleted is None else micros(parse_timestamp(deleted)),
            merged or "",
        )
    except (ValueError, TypeError):
        return None


def updated_of(stamp: Stamp) -> int:
    """The ``updatedAt`` part of a stamp."""
    return stamp if isinstance(stamp, int) else stamp[0]


def stamp_is_current(stored: Stamp | None, incoming: Stamp) -> bool:
    """True when writing ``incoming`` over ``stored`` would change nothing or go back in time."""
    if stored is None:
        return False
    return stored == incoming or updated_of(incoming) < updated_of(stored)


def is_older(stored: Stamp | None, updated_at: datetime | None) -> bool:
    """True when a record updated at ``updated_at`` is older than the stored version."""
    if stored is None or updated_at is None:
        return False
    return micros(updated_at) < updated_of(stored)


def load_stamps(uids: list[str] | None = None) -> dict[str, Stamp | None]:
    """uid -> stamp of the contacts the index holds (all of them, or those of ``uids``).

    One query, read in batches (``fetch_chunks``), with the timestamps turned into
    integers by the database where it can: at a million contacts this takes seconds and holds one
    small int per contact, where a lookup per batch of a rescan would cost a query each.
    """
    table = Contact._meta.db_table
    out: dict[str, Stamp | None] = {}
    if connection.vendor == "postgresql":
        where = "WHERE uid = ANY(%s)" if uids is not None else ""
        sql = (
            "SELECT uid, (EXTRACT(EPOCH FROM updated_at) * 1000000)::bigint, "
            f"(EXTRACT(EPOCH FROM deleted_at) * 1000000)::bigint, merged_into_uid FROM {table} {where}"
        )
        params = [uids] if uids is not None else None
        with connection.cursor() as cursor, closing(fetch_chunks(cursor, sql, params, _FETCH_ROWS)) as chunks:
            for rows in chunks:
                _fold_stamps(rows, out)
        return out
    if uids is not None:
        for chunk in chunked(uids, in_list_size()):
            for uid, updated, deleted, merged in Contact.objects.filter(uid__in=chunk).values_list(
                "uid", "updated_at", "deleted_at", "merged_into_uid"
            ):
                out[uid] = contact_stamp(updated, deleted, merged)
        return out
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT uid, updated_at, deleted_at, merged_into_uid FROM {table}")
        for uid, updated, deleted, merged in cursor:
            out[uid] = contact_stamp(_as_datetime(updated), _as_datetime(deleted), merged)
    return out


def _fold_stamps(rows: list[tuple[str, int | None, int | None, str]], out: dict[str, Stamp | None]) -> None:
    """Add ``(uid, updatedAt µs, deletedAt µs, mergedIntoUid)`` rows to ``out`` as stamps.

    Nearly every contact is visible, its stamp the bare ``updatedAt`` (None when it has none): those
    are stored in one ``dict.update`` over the batch, without a Python call per row (a row at a time
    through the cursor was most of the seconds a rescan spent reading a million stamps). The few
    deleted or merged ones are then given their tuple stamps.
    """
    out.update(zip(map(_first, rows), map(_second, rows), strict=True))
    for uid, updated, deleted, merged in rows:
        if updated is not None and (deleted is not None or merged):
            out[uid] = make_stamp(updated, deleted, merged)


_first = itemgetter(0)
_second = itemgetter(1)


def _as_datetime(value: datetime | str | None) -> datetime | None:
    # SQLite's raw cursor returns Django's stored text ("2024-01-02 03:04:05[.ffffff]", UTC).
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value)
