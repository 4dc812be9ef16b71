"""Hostile scan input (issue 12 item 11): a scan never stops for one bad record.

Each bad record, from an export file or from Podium's listing, is set aside (``RejectedRecord``: reason,
line, raw text) while every other contact is indexed, and the scan ends "completed with N rejected".
Runs on SQLite and on PostgreSQL (which refuses NUL characters, unpaired surrogates and non-finite
numbers that SQLite may take).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dedup import exportfile, indexing, scanning
from dedup.models import Contact, Policy, RejectedRecord, ScanRun
from dedup.scanning import ScanError, start_scan
from podium_client.corpus import LOCATIONS, SYDNEY
from podium_client.emulator import EmulatorServer
from podium_client.types import location_export_line
from tests.fixtures_emulator import empty_state, make_contact

pytestmark = pytest.mark.django_db


def _attribute(value: Any) -> list[dict[str, Any]]:
    return [{"uid": "a0000000-0000-4000-8000-000000000001", "label": "Visits", "value": value,
             "dataType": "NUMBER", "ownerResource": None}]  # fmt: skip


# name -> (how the contact is spoiled, a phrase of the reason). JSON text is made with ensure_ascii, so a
# NUL or a lone surrogate travels as a \u escape exactly as a JSON encoder would send it.
HOSTILE: dict[str, tuple[Callable[[dict[str, Any]], dict[str, Any]], str]] = {
    "nul-in-name": (lambda c: {**c, "name": "Maria\u0000Garcia"}, "NUL character"),
    "lone-surrogate": (lambda c: {**c, "name": "Maria \ud83d Garcia"}, "unpaired surrogate"),
    "huge-number": (lambda c: {**c, "attributes": _attribute(1e400)}, "JSON cannot carry"),
    "not-a-number": (lambda c: {**c, "attributes": _attribute(float("nan"))}, "JSON cannot carry"),
    "65-character-uid": (lambda c: {**c, "uid": "u" * 65}, "65 characters long"),
    "wrong-type": (lambda c: {**c, "channels": "0412 345 678"}, "'channels' must be a list"),
}


def spoiled_line(name: str) -> tuple[str, dict[str, Any]]:
    spoil, _reason = HOSTILE[name]
    bad = spoil(make_contact(locations=(SYDNEY,), phones=("0499 111 222",)))
    return json.dumps(bad), bad


def good_contacts(n: int) -> list[dict[str, Any]]:
    return [make_contact(locations=(SYDNEY,), phones=(f"0412 {i:03d} {i:03d}",)) for i in range(n)]


def write_file(path: Path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_line_in_an_export_is_set_aside_and_the_rest_indexed(case: str, tmp_path: Path) -> None:
    good = good_contacts(4)
    line, _bad = spoiled_line(case)
    lines = [location_export_line(LOCATIONS[0]), *map(json.dumps, good[:2]), line, *map(json.dumps, good[2:])]
    run = start_scan(from_file=write_file(tmp_path / "x.ndjson", lines), run_async=False)
    assert run.state == ScanRun.SUCCEEDED and run.rejected_count == 1 and run.contacts_seen == 5
    assert set(Contact.objects.values_list("uid", flat=True)) == {c["uid"] for c in good}
    record = RejectedRecord.objects.get()
    assert record.scan_run == run and record.line_number == 4 and record.source == run.source_file
    assert HOSTILE[case][1] in record.reason
    assert record.raw == line  # the line as read (its escapes are plain text)
    # Re-running is not stuck on it either: the same record is set aside again, the rest is current.
    again = start_scan(from_file=run.source_file, run_async=False)
    assert again.state == ScanRun.SUCCEEDED and again.rejected_count == 1


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_contact_in_podiums_listing_is_set_aside_and_the_rest_indexed(
    case: str, emulator_factory: Callable[..., EmulatorServer], settings: Any
) -> None:
    state = empty_state()
    good = good_contacts(3)
    victim = make_contact(locations=(SYDNEY,), phones=("0499 111 222",))
    for c in (good[0], victim, *good[1:]):
        state.add_contact(c)
    # Podium serves the stored JSON as is: this contact is served spoiled.
    state.store.by_uid[victim["uid"]].raw = json.dumps(HOSTILE[case][0](victim)).encode()
    server = emulator_factory(state)
    settings.PODIUM_BASE_URL, settings.PODIUM_ACCESS_TOKEN = server.url, server.token
    Policy.objects.filter(pk=Policy.current().pk).update(rate_limit_per_minute=0)

    run = start_scan(full=True, run_async=False)
    assert run.state == ScanRun.SUCCEEDED and run.rejected_count == 1 and run.contacts_seen == 4
    assert set(Contact.objects.values_list("uid", flat=True)) == {c["uid"] for c in good}
    record = RejectedRecord.objects.get()
    assert record.scan_run == run and record.source == "podium" and record.line_number is None
    assert HOSTILE[case][1] in record.reason
    # The contact's uid is kept when the index could hold it, so an admin can find it in Podium.
    assert record.contact_uid == ("" if case == "65-character-uid" else victim["uid"])
    assert "0499 111 222" in record.raw and "\x00" not in record.raw


def test_a_byte_order_mark_at_the_start_of_a_file_is_not_data(tmp_path: Path) -> None:
    good = good_contacts(2)
    path = tmp_path / "bom.ndjson"
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join([location_export_line(LOCATIONS[0]), *map(json.dumps, good)]).encode())
    run = start_scan(from_file=str(path), run_async=False)
    assert run.state == ScanRun.SUCCEEDED and run.rejected_count == 0
    assert Contact.objects.count() == 2 and Contact.objects.first().location.uid == SYDNEY  # type: ignore[union-attr]
    # A BOM before a first contact line is skipped the same way.
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(map(json.dumps, good)).encode())
    assert start_scan(from_file=str(path), run_async=False).rejected_count == 0


@pytest.mark.parametrize("content", [b"", b"\n \n", b"\xef\xbb\xbf\n"], ids=["empty", "blank", "bom-only"])
def test_an_empty_file_fails_instead_of_reporting_success(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "empty.ndjson"
    path.write_bytes(content)
    with pytest.raises(ScanError, match="holds no contacts") as caught:
        start_scan(from_file=str(path), run_async=False)
    assert caught.value.scan_run is not None and caught.value.scan_run.state == ScanRun.FAILED
    assert "expected Podium's v4 export" in caught.value.scan_run.error_message


def test_non_utf8_bytes_are_set_aside_naming_the_line_and_the_byte(tmp_path: Path) -> None:
    good = good_contacts(3)
    latin1 = json.dumps(make_contact(locations=(SYDNEY,), name="José", phones=("0499 111 222",)), ensure_ascii=False)
    lines = [location_export_line(LOCATIONS[0]).encode(), json.dumps(good[0]).encode(), latin1.encode("latin-1"),
             *(json.dumps(c).encode() for c in good[1:])]  # fmt: skip
    path = tmp_path / "latin1.ndjson"
    path.write_bytes(b"\n".join(lines) + b"\n")
    run = start_scan(from_file=str(path), run_async=False)
    assert run.state == ScanRun.SUCCEEDED and run.rejected_count == 1
    assert Contact.objects.count() == 3
    record = RejectedRecord.objects.get()
    column = latin1.index("é") + 1
    assert record.line_number == 3 and record.reason == f"not UTF-8 text (byte 0xe9 at column {column})"
    assert "Jos\\xe9" in record.raw  # the undecodable byte shown escaped, the rest as read


def test_records_the_database_refuses_for_an_unforeseen_reason_are_found_among_thousands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Take away the checks that know what no database stores: the write itself must find the bad records.
    monkeypatch.setattr(indexing, "unstorable_reason", lambda prepared: None)
    monkeypatch.setattr(exportfile, "unstorable_reason", lambda prepared: None)
    monkeypatch.setattr(scanning, "unstorable_reason", lambda prepared: None)
    good = good_contacts(2999)
    first, _ = spoiled_line("huge-number")
    second, _ = spoiled_line("not-a-number")
    lines = [location_export_line(LOCATIONS[0]), *map(json.dumps, good[:1234]), first, *map(json.dumps, good[1234:2500]),
             second, *map(json.dumps, good[2500:])]  # fmt: skip
    run = start_scan(from_file=write_file(tmp_path / "big.ndjson", lines), run_async=False)
    assert run.state == ScanRun.SUCCEEDED and run.rejected_count == 2 and run.contacts_seen == 3001
    assert Contact.objects.count() == 2999
    records = list(RejectedRecord.objects.order_by("line_number"))
    assert [r.line_number for r in records] == [1236, 2503]
    assert all(r.reason.startswith("the database refused it: ") for r in records)
    assert [r.raw for r in records] == [first, second]


def test_the_scan_page_and_the_cli_say_completed_with_n_rejected(tmp_path: Path) -> None:
    import io

    from django.core.management import CommandError, call_command

    lines = [location_export_line(LOCATIONS[0]), *map(json.dumps, good_contacts(2)), spoiled_line("nul-in-name")[0], "{"]
    out = io.StringIO()
    with pytest.raises(CommandError) as caught:
        call_command("scan", from_file=write_file(tmp_path / "x.ndjson", lines), stdout=out)
    run = ScanRun.objects.get()
    assert caught.value.returncode == 2 and run.rejected_count == 2
    assert f"scan #{run.pk} completed with 2 rejected" in out.getvalue()
