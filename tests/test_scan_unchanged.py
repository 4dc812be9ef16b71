"""Rescans write only what changed, and no writer replaces a contact with an older version of it."""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from django.db import DatabaseError

from dedup import scanning
from dedup.indexing import IndexWriter, prepare_contact
from dedup.models import Cluster, Contact, ContactKey, ContactLocation, ScanRun, UncategorizedPhone
from dedup.scanning import ScanError, start_scan
from tests.index_helpers import LOCATIONS, contact

pytestmark = pytest.mark.django_db

OLD = datetime(2025, 3, 1, tzinfo=UTC)
NEW = datetime(2025, 6, 1, tzinfo=UTC)


def _rows() -> dict[str, Any]:
    """Every index row a scan may write, with what would change if it were rewritten."""
    return {
        "contacts": sorted(Contact.objects.values_list("uid", "indexed_at", "updated_at", "name")),
        "keys": sorted(ContactKey.objects.values_list("pk", "contact_id", "key")),
        "locations": sorted(ContactLocation.objects.values_list("pk", "contact_id", "location_id")),
        "uncategorized": sorted(UncategorizedPhone.objects.values_list("pk", "contact_id", "raw")),
        "clusters": sorted(Cluster.objects.values_list("pk", "status", "updated_at", "member_count")),
    }


@pytest.mark.parametrize("method", ["auto", "orm"])
def test_an_older_record_does_not_overwrite_a_newer_one(method: str) -> None:
    writer = IndexWriter("AU", method=method)
    writer.ensure_locations(LOCATIONS)
    newer = contact("ct_1", name="Maria New", phones=("0412 345 678",), updated_at=NEW)
    writer.write([prepare_contact(newer, "AU")])
    keys_before = list(ContactKey.objects.values_list("pk", "key"))
    indexed_before = Contact.objects.get(uid="ct_1").indexed_at

    # An export taken before a webhook wrote the newer version: same contact, older updatedAt.
    older = contact("ct_1", name="Maria Old", phones=("0499 999 999",), updated_at=OLD)
    result = writer.write([prepare_contact(older, "AU")])

    row = Contact.objects.get(uid="ct_1")
    assert (row.name, row.updated_at, row.indexed_at) == ("Maria New", NEW, indexed_before)
    assert list(ContactKey.objects.values_list("pk", "key")) == keys_before
    assert result.contacts == 0 and result.older == 1 and result.contact_ids == []

    # The same updatedAt is written again (a full read repairs rows indexed with older rules).
    same = contact("ct_1", name="Maria Same", phones=("0412 345 678",), updated_at=NEW)
    assert writer.write([prepare_contact(same, "AU")]).contacts == 1
    assert Contact.objects.get(uid="ct_1").name == "Maria Same"


def test_an_older_record_in_a_batch_is_dropped_and_the_rest_written() -> None:
    writer = IndexWriter("AU")
    writer.ensure_locations(LOCATIONS)
    writer.write([prepare_contact(contact("ct_1", name="Kept", updated_at=NEW), "AU")])
    result = writer.write(
        [
            prepare_contact(contact("ct_1", name="Stale", updated_at=OLD), "AU"),
            prepare_contact(contact("ct_2", name="Fresh", phones=("0413 000 111",), updated_at=OLD), "AU"),
        ]
    )
    assert result.contacts == 1 and result.older == 1
    assert dict(Contact.objects.values_list("uid", "name")) == {"ct_1": "Kept", "ct_2": "Fresh"}
    assert result.contact_ids == [Contact.objects.get(uid="ct_2").pk]


def _export(path: Path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_a_second_scan_of_an_unchanged_export_writes_nothing_and_skips_detection(
    demo_corpus: tuple[list[str], dict[str, str]], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _export(tmp_path / "export.ndjson", demo_corpus[0])
    first = start_scan(from_file=path, run_async=False)
    assert first.state == ScanRun.SUCCEEDED and first.clusters_found > 0
    before = _rows()
    assert before["keys"] and before["uncategorized"] and before["clusters"]
    caplog.clear()

    with caplog.at_level(logging.INFO, logger="dedup"):
        second = start_scan(from_file=path, run_async=False)

    assert second.state == ScanRun.SUCCEEDED
    assert second.contacts_seen == first.contacts_seen  # every line was read
    assert _rows() == before  # no contact, key, location, uncategorized phone or cluster written
    assert (second.clusters_found, second.auto_clusters) == (first.clusters_found, first.auto_clusters)
    messages = [r.getMessage() for r in caplog.records]
    assert any("changed nothing; detection skipped" in m for m in messages)
    assert not any(m.startswith("detection:") for m in messages)


def test_a_rescan_writes_only_the_changed_contact_and_never_an_older_one(
    demo_corpus: tuple[list[str], dict[str, str]], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lines = list(demo_corpus[0])
    path = _export(tmp_path / "export.ndjson", lines)
    start_scan(from_file=path, run_async=False)
    contact_lines = [i for i, line in enumerate(lines) if '"object"' not in line]
    changed_at, webhook_at = contact_lines[0], contact_lines[1]
    changed = json.loads(lines[changed_at])
    changed["name"], changed["updatedAt"] = "Renamed In Podium", "2030-01-01T00:00:00Z"
    lines[changed_at] = json.dumps(changed)
    # A webhook already wrote a newer version of another contact than the export holds.
    webhook = json.loads(lines[webhook_at])
    Contact.objects.filter(uid=webhook["uid"]).update(name="From A Webhook", updated_at=datetime(2031, 1, 1, tzinfo=UTC))
    before = dict(Contact.objects.values_list("uid", "indexed_at"))
    caplog.clear()

    with caplog.at_level(logging.INFO, logger="dedup"):
        rescan = start_scan(from_file=_export(tmp_path / "export2.ndjson", lines), run_async=False)

    assert rescan.state == ScanRun.SUCCEEDED
    after = dict(Contact.objects.values_list("uid", "indexed_at"))
    assert [uid for uid in after if after[uid] != before[uid]] == [changed["uid"]]
    assert Contact.objects.get(uid=changed["uid"]).name == "Renamed In Podium"
    assert Contact.objects.get(uid=webhook["uid"]).name == "From A Webhook"
    # Detection ran, but only around what changed (not the whole index).
    detected = [r.getMessage() for r in caplog.records if r.getMessage().startswith("detection:")]
    assert len(detected) == 1 and rescan.clusters_found < len(demo_corpus[1])


def test_a_contact_indexed_after_the_stamps_were_read_is_upserted_not_duplicated() -> None:
    writer = IndexWriter("AU")
    writer.ensure_locations(LOCATIONS)
    writer.stamps = {}  # read before a webhook indexed ct_1: the writer believes both contacts are new
    IndexWriter("AU").write([prepare_contact(contact("ct_1", name="From A Webhook", updated_at=OLD), "AU")])
    result = writer.write(
        [
            prepare_contact(contact("ct_1", name="From The Export", updated_at=NEW), "AU"),
            prepare_contact(contact("ct_2", phones=("0413 000 111",), updated_at=NEW), "AU"),
        ]
    )
    assert result.contacts == 2
    assert dict(Contact.objects.values_list("uid", "name")) == {"ct_1": "From The Export", "ct_2": "Maria Garcia"}
    assert sorted(ContactKey.objects.values_list("contact__uid", "key")) == [
        ("ct_1", "+61412345678"),
        ("ct_2", "+61413000111"),
    ]


def test_the_survey_of_the_file_runs_while_the_index_stamps_are_read(
    demo_corpus: tuple[list[str], dict[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The survey is given until the stamps are being read to start: done one after the other (either
    # way round), one of them would wait for the other and the scan would fail.
    path = _export(tmp_path / "export.ndjson", demo_corpus[0])
    stamps_reading, survey_started = threading.Event(), threading.Event()
    survey, load_stamps = scanning.survey_file, scanning.load_stamps
    threads: list[str] = []

    def surveying(source: str) -> Any:
        threads.append(threading.current_thread().name)
        survey_started.set()
        assert stamps_reading.wait(10), "the stamps were not being read during the survey"
        return survey(source)

    def reading_stamps() -> Any:
        stamps_reading.set()
        assert survey_started.wait(10), "the survey did not start while the stamps were read"
        return load_stamps()

    monkeypatch.setattr(scanning, "survey_file", surveying)
    monkeypatch.setattr(scanning, "load_stamps", reading_stamps)
    run = start_scan(from_file=path, run_async=False)
    assert run.state == ScanRun.SUCCEEDED and run.contacts_total and run.contacts_seen == run.contacts_total
    assert threads and threads[0] != threading.main_thread().name


def test_an_export_refused_by_its_survey_fails_the_scan_and_writes_nothing(tmp_path: Path) -> None:
    old_shape = json.dumps({"uid": "ct_1", "locationUid": "loc_x", "name": "A", "smsOptOut": False})
    with pytest.raises(ScanError, match="line 1: a contact line in the pre-v4 shape"):
        start_scan(from_file=_export(tmp_path / "old.ndjson", [old_shape]), run_async=False)
    run = ScanRun.objects.get()
    assert run.state == ScanRun.FAILED and "pre-v4 shape" in run.error_message
    assert not Contact.objects.exists()


def test_the_stamps_of_thousands_of_contacts_are_read_as_each_contact_gives_them(monkeypatch: pytest.MonkeyPatch) -> None:
    from dedup import stamps
    from dedup.stamps import contact_stamp, load_stamps

    contacts = []
    for i in range(2500):
        kind = i % 5
        contacts.append(
            contact(
                f"ct_{i:05d}",
                phones=(f"0412 {i:06d}",),
                updated_at=datetime(2025, 1, 1, 0, 0, i % 60, i * 7 % 1_000_000, tzinfo=UTC),
                deleted_at=datetime(2025, 2, 1, 0, 0, i % 60, i, tzinfo=UTC) if kind == 1 else None,
                merged_into_uid=f"ct_{i + 1:05d}" if kind in (2, 3) else None,
            )
        )
    writer = IndexWriter("AU")
    writer.ensure_locations(LOCATIONS)
    writer.write([prepare_contact(c, "AU") for c in contacts])
    Contact.objects.filter(uid__in=["ct_00004", "ct_00006", "ct_00009"]).update(updated_at=None)
    expected = {
        uid: contact_stamp(updated, deleted, merged)
        for uid, updated, deleted, merged in Contact.objects.values_list("uid", "updated_at", "deleted_at", "merged_into_uid")
    }
    assert sum(isinstance(s, tuple) for s in expected.values()) == 1499
    assert expected["ct_00004"] is None and expected["ct_00006"] is None
    monkeypatch.setattr(stamps, "_FETCH_ROWS", 700)  # several round trips, the last one short
    assert load_stamps() == expected
    some = ["ct_00001", "ct_00002", "ct_00004", "ct_00005", "ct_missing"]
    assert load_stamps(some) == {uid: expected[uid] for uid in some if uid in expected}


def test_a_database_failure_while_the_stamps_are_read_fails_the_scan_and_leaves_no_survey_running(
    demo_corpus: tuple[list[str], dict[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreadable() -> Any:
        raise DatabaseError("connection lost while reading stamps")

    monkeypatch.setattr(scanning, "load_stamps", unreadable)
    with pytest.raises(ScanError, match="connection lost while reading stamps"):
        start_scan(from_file=_export(tmp_path / "export.ndjson", demo_corpus[0]), run_async=False)
    run = ScanRun.objects.get()
    assert run.state == ScanRun.FAILED and "re-run the scan" in run.error_message
    assert not Contact.objects.exists()
    assert not [t for t in threading.enumerate() if t.name.startswith("survey")]
