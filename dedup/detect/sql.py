"""Raw SQL shared by detection's reading and writing: id and text lists of any length, timestamps.

Below the ORM on purpose: detection reads and writes hundreds of thousands of rows, where building a
model instance (or adapting each value) per row costs more than the query.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from django.db import connection

from dedup.dblimits import chunked, in_list_size

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def select_by_ids(sql: str, column: str, ids: Sequence[int]) -> Iterator[tuple[Any, ...]]:
    """Rows of ``sql`` (which ends in a WHERE clause) restricted to ``column`` in ``ids``.

    PostgreSQL gets one array parameter (``= ANY``), however many ids; SQLite gets chunked IN lists.
    """
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"{sql} {column} = ANY(%s::bigint[])", [int_array(ids)])
            yield from cursor.fetchall()
            return
        for chunk in chunked(list(ids), in_list_size()):
            cursor.execute(f"{sql} {column} IN ({', '.join(['%s'] * len(chunk))})", list(chunk))
            yield from cursor.fetchall()


def select_by_text(sql: str, column: str, values: Sequence[str]) -> Iterator[tuple[Any, ...]]:
    """Like ``select_by_ids``, for text values."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"{sql} {column} = ANY(%s::text[])", [text_array(values)])
            yield from cursor.fetchall()
            return
        for chunk in chunked(list(values), in_list_size()):
            cursor.execute(f"{sql} {column} IN ({', '.join(['%s'] * len(chunk))})", list(chunk))
            yield from cursor.fetchall()


# Arrays go to PostgreSQL as one text literal cast in the query: psycopg adapts a list element by
# element in Python, several times slower for the thousands of ids a batch carries.


def int_array(ids: Iterable[int]) -> str:
    """A PostgreSQL array literal of integers (``%s::bigint[]``)."""
    return "{" + ",".join(map(str, map(int, ids))) + "}"


def text_array(values: Iterable[str]) -> str:
    """A PostgreSQL array literal of strings (``%s::text[]``), each element quoted."""
    return "{" + ",".join('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values) + "}"


def active_sql(alias: str) -> str:
    """The condition for an active contact (neither soft-deleted nor merged) of table alias ``alias``."""
    return f"{alias}.deleted_at IS NULL AND {alias}.merged_into_uid = ''"


def aware(value: Any) -> datetime:
    """A timestamp read with a raw cursor (SQLite gives text) as an aware datetime."""
    if value is None:
        return EPOCH
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def tag_label(tag: Any) -> str:
    """A stored tag (Podium's object, or a bare label from an older index) as its label."""
    return str(tag.get("label") or "") if isinstance(tag, dict) else str(tag)
