"""Big reads receive their rows a chunk at a time (``fetch_chunks``): detection's whole-index read
(``read_shared``) and a rescan's stamps (``load_stamps``).

At a million contacts the read returns about 700,000 rows; received whole, they cost the detection
process 86 MB of its peak (``bench/README.md``). These tests hold the fetch-at-a-time read to the same
answer as a read in one fetch, and check that an error part-way leaves the connection usable.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection, transaction

from dedup import stamps
from dedup.detect import reading
from dedup.detect.reading import read_shared
from tests.index_helpers import contact, index

pytestmark = pytest.mark.django_db


def _corpus() -> None:
    """Contacts whose key rows straddle fetch boundaries: several hold two shared keys, some none."""
    people = []
    for n in range(39):
        phones = [f"+6141200{n // 3:04d}"]  # thirteen trios
        if n % 4 == 0:
            phones.append(f"+6141300{n // 8:04d}")  # a second key, shared by pairs of these
        if n % 5 == 0:
            phones.append(f"+6141400{n:04d}")  # a key nobody else holds
        people.append(contact(f"ct_{n:03d}", name=f"Person {n // 3}", phones=tuple(phones)))
    people.append(contact("ct_solo", name="Solo", phones=("+61411111111",)))
    index(*people)


def test_a_read_in_small_fetches_equals_a_read_in_one(monkeypatch: pytest.MonkeyPatch) -> None:
    _corpus()
    whole = read_shared(["PHONE"])
    monkeypatch.setattr(reading, "_FETCH", 3)  # a contact's two rows are split between fetches
    fetched = read_shared(["PHONE"])
    assert list(fetched) == list(whole) and fetched.id_of == whole.id_of
    assert len(whole) == 39  # "ct_solo" shares nothing
    assert sum(len(keys) for _uid, _location, keys in whole) == 39 + 10
    # Keys no other contact holds are not read.
    assert not [key for _uid, _location, keys in whole for key in keys if key.startswith("+6141400")]


@pytest.fixture
def stream_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int | None]:
    """The chunk size of every ``stream`` a psycopg cursor runs from here on (PostgreSQL)."""
    with connection.cursor() as probe:
        cursor_class = type(probe.cursor)
    sizes: list[int | None] = []
    real_stream = cursor_class.stream

    def stream(self: Any, query: Any, params: Any = None, **kwargs: Any) -> Any:
        sizes.append(kwargs.get("size"))
        return real_stream(self, query, params, **kwargs)

    monkeypatch.setattr(cursor_class, "stream", stream)
    return sizes


@pytest.mark.postgres
def test_postgres_streams_the_read_instead_of_receiving_it_whole(
    monkeypatch: pytest.MonkeyPatch, stream_sizes: list[int | None]
) -> None:
    """On PostgreSQL the rows come from psycopg's ``stream`` in chunks of ``_FETCH``: a plain execute
    would have libpq hold every row before the first fetch."""
    _corpus()
    monkeypatch.setattr(reading, "_FETCH", 7)
    assert len(read_shared(["PHONE"])) == 39
    assert stream_sizes == [7]


@pytest.mark.postgres
def test_postgres_streams_every_stamp_of_the_index(
    monkeypatch: pytest.MonkeyPatch, stream_sizes: list[int | None]
) -> None:
    """A rescan's read of every stamp goes through the same ``fetch_chunks``, in several chunks."""
    _corpus()
    monkeypatch.setattr(stamps, "_FETCH_ROWS", 6)
    whole = stamps.load_stamps()
    assert len(whole) == 40 and stream_sizes == [6]
    assert stamps.load_stamps(["ct_001", "ct_solo", "ct_missing"]) == {
        uid: whole[uid] for uid in ("ct_001", "ct_solo")
    }


@pytest.mark.postgres
def test_an_error_part_way_through_the_read_leaves_the_connection_usable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Folding fails after the first fetch: the rest of the streamed query is cancelled, so the
    cleanup statement runs, the original error is the one raised, and the next read works."""
    _corpus()
    monkeypatch.setattr(reading, "_FETCH", 5)
    real_fold = reading._fold_rows
    calls = 0

    def failing(rows: Any, out: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("folding failed")
        real_fold(rows, out)

    monkeypatch.setattr(reading, "_fold_rows", failing)
    with transaction.atomic():
        with pytest.raises(RuntimeError, match="folding failed"):
            read_shared(["PHONE"])
        # The temporary table was dropped in the same transaction, after the stream was closed.
        with connection.cursor() as cursor:
            cursor.execute("SELECT to_regclass(%s)", [reading._SHARED_KEYS_TABLE])
            assert cursor.fetchone() == (None,)
    monkeypatch.setattr(reading, "_fold_rows", real_fold)
    assert len(read_shared(["PHONE"])) == 39
