"""How big one SQL statement may grow on this database, and the helpers that keep queries under it.

SQLite refuses a statement with more bound parameters than its build allows (Django assumes 999, the
historical default, and some builds still have it) and an expression nested deeper than 1000 levels
(``a = 1 OR a = 2 OR ...`` nests one level per term). PostgreSQL takes 65,535 parameters. A query
whose size would follow the data (an ``IN`` list of ids, an ``OR`` per value) must either go through
``chunked(values, in_list_size())`` or be written as a subquery or join, whose SQL is the same size
whatever the data: ``filter(pk__in=values_subquery(ids))`` sends any number of ids as one parameter.

Django 5.2 itself builds one such query: a prefetch through a *forward* foreign key
(``prefetch_related("members__contact")``) becomes ``id = %s OR id = %s OR ...`` on SQLite, one term
per distinct target, which passes 1000 levels at a few hundred clusters. Fetch the target with
``select_related`` inside a ``Prefetch`` of the reverse relation instead (see
``dedup.detection.clusters_for_export``).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Sequence
from typing import Any, TypeVar

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import BooleanField, F, Func, Value
from django.db.models.expressions import RawSQL
from django.db.models.sql.compiler import SQLCompiler

T = TypeVar("T")

# psycopg's limit (a 16-bit count in the wire protocol) when the backend names none.
_PROTOCOL_MAX_PARAMS = 65_535
# Parameters left for the rest of a statement that also carries an IN list.
_RESERVED_PARAMS = 99
# One IN list never needs more: past this, chunking costs nothing measurable.
_MAX_IN_LIST = 10_000
# A literal list (or OR chain) of up to this many values is sent as it is: far below every limit, and
# the plans the benchmarks measured. Longer ones are sent as one parameter or in chunks.
SMALL_LIST = 100


def max_query_params(using: str = DEFAULT_DB_ALIAS) -> int:
    """Bound parameters one statement may carry on this database (999 on SQLite, as Django assumes)."""
    return connections[using].features.max_query_params or _PROTOCOL_MAX_PARAMS


def in_list_size(using: str = DEFAULT_DB_ALIAS) -> int:
    """How many values one ``IN (...)`` list may carry here, leaving room for the statement's other parameters."""
    return max(min(max_query_params(using) - _RESERVED_PARAMS, _MAX_IN_LIST), 1)


def chunked(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """Consecutive slices of ``items`` of at most ``size`` elements."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def values_subquery(values: Collection[int] | Collection[str], using: str = DEFAULT_DB_ALIAS) -> RawSQL:
    """A subquery yielding ``values`` from one bound parameter, for ``filter(field__in=...)``.

    PostgreSQL unnests an array; SQLite reads a JSON array with ``json_each`` (built in since 3.38,
    and Django's JSONField needs it anyway). All values are of one type: ints or strings.
    """
    items: list[Any] = sorted(values)
    is_text = bool(items) and isinstance(items[0], str)
    if connections[using].vendor == "postgresql":
        return RawSQL(f"SELECT unnest(%s::{'text' if is_text else 'bigint'}[])", [items])
    return RawSQL("SELECT value FROM json_each(%s)", [json.dumps(items)])


def in_values(values: Collection[int] | Collection[str], using: str = DEFAULT_DB_ALIAS) -> Collection[Any] | RawSQL:
    """What ``filter(field__in=...)`` gets for these values: the values while the list is short, else
    ``values_subquery`` (one parameter, whatever their number)."""
    return values if len(values) <= SMALL_LIST else values_subquery(values, using)


class JsonListHasAny(Func):
    """``field`` (a JSON list of strings) holds at least one of ``values``; the values are one parameter.

    A filter on its own (``filter(JsonListHasAny("scope", uids))``): for each row the database walks
    the row's short list and probes the values, instead of one ``LIKE`` per value (an ``OR`` chain
    SQLite refuses past 1000 terms, and a cost of rows x values everywhere).
    """

    output_field = BooleanField()
    conditional = True

    def __init__(self, field: str, values: Collection[str]) -> None:
        super().__init__(F(field), Value(json.dumps(sorted(values))))

    def as_sql(  # type: ignore[override]
        self, compiler: SQLCompiler, connection: BaseDatabaseWrapper, **extra_context: Any
    ) -> tuple[str, list[Any]]:
        column, column_params = compiler.compile(self.source_expressions[0])
        wanted, wanted_params = compiler.compile(self.source_expressions[1])
        params = [*column_params, *wanted_params]
        if connection.vendor == "postgresql":
            return f"({column} ?| ARRAY(SELECT jsonb_array_elements_text(({wanted})::jsonb)))", params
        sql = (
            f"EXISTS (SELECT 1 FROM json_each({column}) AS listed "
            f"WHERE listed.value IN (SELECT value FROM json_each({wanted})))"
        )
        return sql, params
