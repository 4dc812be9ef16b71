"""Worker processes that write the blocks they prepared (PostgreSQL) leave the index exactly as a scan in
one process does, and hand back to the writer process whatever they cannot write: a record the database
refuses (set aside with its line, as ever), a contact of an undeclared location (the writer files it under
a placeholder), a contact the file repeats with a newer version (the newer one stays).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.db.models import F

from dedup import exportfile, indexing, scanning
from dedup.models import Contact, ContactKey, ContactLocation, Location, RejectedRecord, UncategorizedPhone
from dedup.scanning import start_scan
from podium_client.corpus import generate_corpus

pytest_plugins = ["tests.merge_helpers"]  # pg_flushable

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]




def _index_state() -> dict[str, Any]:
    contacts = {
        c["uid"]: c
        for c in Contact.objects.values(
            "uid", "location__uid", "location_uids", "name", "normalized_name", "channels", "tags", "attributes",
            "address", "conversations", "field_count", "marketing_opt_out", "sms_opt_out", "email_opt_out",
            "updated_at", "deleted_at",
        )
    }  # fmt: skip
    return {
        "contacts": contacts,
        "keys": sorted(ContactKey.objects.values_list("contact__uid", "location__uid", "kind", "key", "raw", "extension")),
        "locations": sorted(ContactLocation.objects.values_list("contact__uid", "location__uid")),
        "uncategorized": sorted(UncategorizedPhone.objects.values_list("contact__uid", "raw", "code", "reason")),
        "rejected": sorted(RejectedRecord.objects.values_list("line_number", "contact_uid", "reason")),
        # A placeholder location is named by its uid.
        "placeholders": sorted(Location.objects.filter(name=F("uid")).values_list("uid", flat=True)),
    }


def _empty_index() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE dedup_clustermember, dedup_cluster_locations, dedup_cluster, dedup_uncategorizedphone, "
            "dedup_contactkey, dedup_contactlocation, dedup_contact, dedup_rejectedrecord, dedup_scanrun CASCADE"
        )


def test_workers_writing_their_blocks_leave_the_index_a_single_process_leaves(
    pg_flushable: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines, truth = generate_corpus(1500, 11)
    contact_lines = [i for i, line in enumerate(lines) if '"object"' not in line]
    assert len(contact_lines) > 2000
    # A record only the database refuses (its checks taken away): the worker's write fails, the writer
    # process finds the record and sets it aside.
    monkeypatch.setattr(indexing, "unstorable_reason", lambda prepared: None)
    monkeypatch.setattr(exportfile, "unstorable_reason", lambda prepared: None)
    monkeypatch.setattr(scanning, "unstorable_reason", lambda prepared: None)
    refused = json.loads(lines[contact_lines[700]])
    refused["name"] = "Nul\u0000Name"
    lines[contact_lines[700]] = json.dumps(refused)
    # A contact of a location the export never declares.
    stray = json.loads(lines[contact_lines[1400]])
    stray["locations"] = [{"uid": "99999999-0000-4000-8000-00000000beef"}]
    lines[contact_lines[1400]] = json.dumps(stray)
    # The file repeats a contact far from its first line, with a newer version: the newer one stays.
    repeated = json.loads(lines[contact_lines[10]])
    repeated["name"] = "Renamed Later"
    repeated["updatedAt"] = "2099-01-01T00:00:00Z"
    lines.append(json.dumps(repeated))
    path = tmp_path / "corpus.ndjson"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    written_by_writer: list[int] = []
    original = scanning.write_quarantining
    depth = [0]

    def counting(writer: Any, items: Any, rejected: Any, source_of: Any) -> Any:
        if not depth[0]:  # not the halves it writes when the database refuses a record
            written_by_writer.append(len(items))
        depth[0] += 1
        try:
            return original(writer, items, rejected, source_of)
        finally:
            depth[0] -= 1

    monkeypatch.setattr(scanning, "write_quarantining", counting)
    monkeypatch.setattr(exportfile, "_BYTES_PER_LINE", 16)  # blocks of a few dozen lines: many blocks

    monkeypatch.setattr(exportfile, "PARALLEL_MIN_LINES", 10**9)  # one process
    alone = start_scan(from_file=str(path), run_async=False)
    single = _index_state()
    assert sum(written_by_writer) == len(contact_lines) + 1  # every contact line through the writer
    _empty_index()
    written_by_writer.clear()

    monkeypatch.setattr(exportfile, "PARALLEL_MIN_LINES", 0)  # worker processes, which write
    assert exportfile.default_workers(str(path)) >= 1
    parallel_run = start_scan(from_file=str(path), run_async=False)
    parallel = _index_state()

    assert parallel == single
    assert parallel_run.rejected_count == alone.rejected_count == 1
    assert single["rejected"][0][1] == refused["uid"] and "refused" in single["rejected"][0][2]
    assert single["contacts"][repeated["uid"]]["name"] == "Renamed Later"
    assert single["placeholders"] == ["99999999-0000-4000-8000-00000000beef"]
    assert len(single["contacts"]) == len(truth) - 1
    # The workers wrote almost everything; the blocks handed back reached the writer process.
    assert 0 < sum(written_by_writer) < len(contact_lines) // 5
    assert parallel_run.contacts_seen == alone.contacts_seen
