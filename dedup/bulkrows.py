"""Plain rows into and out of tables fast, below the ORM: COPY on PostgreSQL, ``executemany`` elsewhere.

For tables written in bulk by scans and detection, where a model instance per row would cost more than
the write itself. Datetimes are bound without Django's per-value adapters where that is safe.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from datetime import UTC, datetime
from itertools import islice
from typing import Any

from django.db import connection
from django.db.backends.utils import CursorWrapper


def _adapter() -> Callable[[Any], Any]:
    """How a Python value is bound on this database when bypassing the ORM (datetimes differ)."""
    if connection.vendor == "postgresql":
        return _identity
    adapt_datetime = _datetime_adapter()

    def adapt(value: Any) -> Any:
        return adapt_datetime(value) if isinstance(value, datetime) else value

    return adapt


def _datetime_adapter() -> Callable[[datetime | None], Any]:
    """Django's ``adapt_datetimefield_value`` for SQLite, without its cost for UTC datetimes.

    Django stores an aware datetime as the text of its naive UTC value; for the UTC datetimes the
    indexer handles that is one ``replace`` and ``str`` (a quarter of the time of the general path,
    which ran four times per contact).
    """
    adapt_datetime = connection.ops.adapt_datetimefield_value
    if connection.vendor != "sqlite" or connection.timezone is not UTC:
        return adapt_datetime

    def adapt(value: datetime | None) -> Any:
        if value is None:
            return None
        if value.tzinfo is UTC:
            return str(value.replace(tzinfo=None))
        return adapt_datetime(value)

    return adapt


def insert_rows(table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Insert plain rows into ``table`` fast: COPY on PostgreSQL, one ``executemany`` elsewhere.

    JSON columns take their JSON text; datetimes are aware. For tables written in bulk by scans and
    detection, where building a model instance per row would cost more than the insert itself.
    """
    if not rows:
        return
    column_list = ", ".join(columns)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            with cursor.cursor.copy(f"COPY {table} ({column_list}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            return
        adapt = _adapter()
        marks = ", ".join(["%s"] * len(columns))
        cursor.executemany(
            f"INSERT INTO {table} ({column_list}) VALUES ({marks})",
            [tuple(adapt(v) for v in row) for row in rows],
        )


def update_rows(table: str, key_column: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Set ``columns`` of many rows at once; each row is ``(key, *values)``.

    PostgreSQL: COPY into a temporary table, then one ``UPDATE ... FROM``. Elsewhere: ``executemany``.
    """
    if not rows:
        return
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            stage = f"{table}_update_stage"
            all_columns = ", ".join([key_column, *columns])
            cursor.execute(f"DROP TABLE IF EXISTS {stage}")
            cursor.execute(f"CREATE TEMP TABLE {stage} AS SELECT {all_columns} FROM {table} WITH NO DATA")
            with cursor.cursor.copy(f"COPY {stage} ({all_columns}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            assignments = ", ".join(f"{c} = s.{c}" for c in columns)
            cursor.execute(
                f"UPDATE {table} t SET {assignments} FROM {stage} s WHERE t.{key_column} = s.{key_column}"
            )
            cursor.execute(f"DROP TABLE {stage}")
            return
        adapt = _adapter()
        assignments = ", ".join(f"{c} = %s" for c in columns)
        cursor.executemany(
            f"UPDATE {table} SET {assignments} WHERE {key_column} = %s",
            [tuple(adapt(v) for v in (*row[1:], row[0])) for row in rows],
        )


def _identity(value: Any) -> Any:
    return value


def fetch_chunks(
    cursor: CursorWrapper, sql: str, params: Sequence[Any] | None, size: int
) -> Generator[list[tuple[Any, ...]], None, None]:
    """The rows of a big query, ``size`` at a time, without the whole result held in memory.

    On PostgreSQL a plain ``execute`` has libpq receive the whole result before the first
    ``fetchmany``: for detection's read at a million contacts that was 86 MB of the process's peak,
    outside Python's heap and not given back to the system afterwards. psycopg's ``stream`` receives
    it ``size`` rows at a time (libpq 17's chunked rows mode; single rows with an older libpq), on
    the cursor's own session, so temporary tables and the transaction's settings apply, and with the
    plan a plain query gets (a named cursor's plan favours the first rows and has no parallel
    workers). SQLite's cursor already steps through its result.

    Close the generator (``contextlib.closing``) before running anything else on the cursor: left
    part-way, closing it cancels the rest of the query.
    """
    if connection.vendor == "postgresql":
        stream = cursor.cursor.stream(sql, params, size=size)
        try:
            while rows := list(islice(stream, size)):
                yield rows
        finally:
            stream.close()
        return
    cursor.execute(sql, params)
    while rows := cursor.fetchmany(size):
        yield rows
