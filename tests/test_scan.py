"""Scans against the Podium emulator over real HTTP (published v4 API): the organization's listing, full and
incremental reads, locations, deletions, export files, resume after a crash and a stale cursor."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from dedup.models import (
    AuditEvent,
    Cluster,
    Contact,
    ContactKey,
    ContactLocation,
    Location,
    Policy,
    ScanRun,
    UncategorizedPhone,
)
from dedup.scanning import ConcurrentRunError, ScanError, last_watermark, start_scan
from podium_client import PodiumClient
from podium_client.corpus import AUCKLAND, BURLEIGH, POPUP, SYDNEY
from podium_client.emulator import EmulatorServer
from podium_client.types import format_timestamp, location_export_line, parse_timestamp
from tests.fixtures_emulator import make_contact

pytestmark = pytest.mark.django_db

LISTING = "GET /v4/contacts"


@pytest.fixture
def podium_env(
    emulator_factory: Callable[..., EmulatorServer], settings: Any
) -> Iterator[Callable[..., EmulatorServer]]:
    """Start an emulator and point the product at it (no client-side pacing, tiny retries)."""

    def make(**kwargs: Any) -> EmulatorServer:
        server = emulator_factory(**kwargs)
        settings.PODIUM_BASE_URL = server.url
        settings.PODIUM_ACCESS_TOKEN = server.token
        settings.PODIUM_OAUTH_URL = ""
        policy = Policy.current()
        policy.rate_limit_per_minute = 0
        policy.save()
        return server

    yield make


def full_scan(**kwargs: Any) -> ScanRun:
    return start_scan(full=True, run_async=False, **kwargs)


def listing_requests(server: EmulatorServer) -> int:
    return int(server.stats()["by_route"].get(LISTING, 0))


def locations_of(uid: str) -> set[str]:
    return set(ContactLocation.objects.filter(contact__uid=uid).values_list("location__uid", flat=True))


def test_a_full_scan_reads_the_organizations_listing_a_hundred_at_a_time(
    podium_env: Callable[..., EmulatorServer],
) -> None:
    server = podium_env(people=300)
    everything = server.state.contacts()
    run = full_scan(actor="user:alice")

    assert run.state == ScanRun.SUCCEEDED and run.kind == ScanRun.FULL
    assert run.contacts_seen == len(everything) == Contact.objects.count() > 300
    # One organization-wide stream, not one per location, at Podium's maximum page size (default 10).
    pages = math.ceil(len(everything) / 100)
    assert run.pages == pages == listing_requests(server)
    assert server.stats()["by_status"].get("400", 0) == 0
    assert run.contacts_total is None  # nothing was indexed before: no estimate
    assert run.invalid_phones == UncategorizedPhone.objects.count() > 0
    assert run.clusters_found == Cluster.objects.filter(status=Cluster.OPEN).count() > 0
    assert 0 < (run.duplicate_rate or 0) < 1 and run.heartbeat_at is not None and run.finished_at is not None
    assert run.rejected_count == 0
    # A contact Podium lists in several locations is indexed in every one of them.
    shared = [c for c in everything if len(c["locations"]) > 1]
    assert shared
    for c in shared:
        assert locations_of(c["uid"]) == {loc["uid"] for loc in c["locations"]}
        assert Contact.objects.get(uid=c["uid"]).location.uid == c["locations"][0]["uid"]
    assert ContactKey.objects.filter(kind="PHONE", key__startswith="+64").exists()  # Auckland's numbers
    # The location without a country in Podium is parsed with the default and shown as needing a region.
    popup = Location.objects.get(uid=POPUP)
    assert popup.needs_region and popup.country == "AU"
    assert not Location.objects.get(uid=AUCKLAND).needs_region
    events = list(AuditEvent.objects.filter(event_type__startswith="scan.").values_list("event_type", flat=True))
    assert events == ["scan.started", "scan.finished"]
    stream = run.checkpoint["stream"]
    assert stream["done"] and stream["mode"] == "full" and "cursor" not in stream
    newest = max(parse_timestamp(c["updatedAt"]) for c in everything)
    assert parse_timestamp(stream["watermark"]) == newest == last_watermark([])


def test_a_location_scan_keeps_the_contacts_of_any_of_its_locations(
    podium_env: Callable[..., EmulatorServer],
) -> None:
    server = podium_env(people=300)
    everything = server.state.contacts()
    run = start_scan(locations=[BURLEIGH], full=True, run_async=False)
    in_burleigh = {c["uid"] for c in everything if BURLEIGH in {loc["uid"] for loc in c["locations"]}}
    homed_elsewhere = {c["uid"] for c in everything if c["uid"] in in_burleigh and c["locations"][0]["uid"] != BURLEIGH}
    assert homed_elsewhere  # a contact of Burleigh whose first location is another one
    assert set(Contact.objects.values_list("uid", flat=True)) == in_burleigh
    # Podium lists contacts organization-wide: the whole listing is read and filtered here.
    assert run.contacts_seen == len(everything) and run.pages == listing_requests(server)
    # Its watermark serves incremental scans of Burleigh, not of every location.
    assert last_watermark([BURLEIGH]) is not None and last_watermark([]) is None


def test_an_incremental_scan_reads_only_what_changed(
    podium_env: Callable[..., EmulatorServer], podium_factory: Callable[..., PodiumClient]
) -> None:
    server = podium_env(people=300)
    full_scan()
    total = Contact.objects.count()
    watermark = last_watermark([])
    assert watermark is not None

    # Nothing changed: only the overlap window before the watermark is listed again (updated_at is
    # second precision and strictly after), and what did not change is not written again.
    since = (watermark - timedelta(minutes=5)).replace(microsecond=0)
    in_overlap = sum(1 for c in server.state.contacts() if parse_timestamp(c["updatedAt"]) > since)
    indexed_at = dict(Contact.objects.values_list("uid", "indexed_at"))
    quiet = start_scan(run_async=False)
    assert quiet.kind == ScanRun.INCREMENTAL and quiet.checkpoint["stream"]["mode"] == "incremental"
    assert quiet.contacts_seen == in_overlap < total / 10
    assert quiet.checkpoint["stream"]["since"] == format_timestamp(watermark - timedelta(minutes=5))
    assert dict(Contact.objects.values_list("uid", "indexed_at")) == indexed_at

    # Changes in Podium: a rename, a contact joining a second location, a new contact, a deletion.
    client = podium_factory(server)
    rows = list(Contact.objects.filter(memberships__isnull=True, location__uid=SYDNEY).order_by("uid")[:3])
    renamed, joined, deleted = rows
    server.state.podium_edit(renamed.uid, {"name": "Someone Else Entirely"})
    server.state.podium_edit(joined.uid, {"locations": [SYDNEY, AUCKLAND]})
    new = make_contact(locations=(BURLEIGH,), name="Brand New", phones=("0499 555 123",),
                       updated_at=datetime.now(UTC), created_at=datetime.now(UTC))  # fmt: skip
    server.state.add_contact(new)
    client.delete_contact(deleted.conversations[0])

    run = start_scan(run_async=False)
    assert run.kind == ScanRun.INCREMENTAL and run.state == ScanRun.SUCCEEDED
    assert Contact.objects.get(uid=renamed.uid).name == "Someone Else Entirely"
    assert locations_of(joined.uid) == {SYDNEY, AUCKLAND}
    assert Contact.objects.get(uid=new["uid"]).location.uid == BURLEIGH
    # The published API does not list deleted contacts: an incremental read cannot see a deletion...
    assert Contact.objects.get(uid=deleted.uid).deleted_at is None
    # ... a full read marks what Podium no longer lists as deleted.
    full = full_scan()
    assert full.checkpoint["stream"]["vanished"] == 1
    assert Contact.objects.get(uid=deleted.uid).deleted_at is not None
    assert Contact.objects.count() == total + 1


def test_the_overlap_catches_a_change_listed_late_and_without_it_only_later_seconds_are_read(
    podium_env: Callable[..., EmulatorServer], settings: Any
) -> None:
    server = podium_env(people=50)
    full_scan()
    watermark = last_watermark([])
    assert watermark is not None and watermark.microsecond == 0  # the corpus stamps whole seconds
    # Podium shows a change a moment after its updatedAt: it appears after the scan, stamped before
    # the watermark (replication lag).
    late = make_contact(locations=(SYDNEY,), name="Listed Late", phones=("0499 000 777",),
                        created_at=watermark - timedelta(minutes=2), updated_at=watermark - timedelta(minutes=2))  # fmt: skip
    same_second = make_contact(locations=(SYDNEY,), name="Same Second", phones=("0499 000 778",),
                               created_at=watermark, updated_at=format_timestamp(watermark + timedelta(milliseconds=400)))  # fmt: skip
    server.state.add_contact(late)
    server.state.add_contact(same_second)

    settings.DEDUP_SCAN_OVERLAP_SECONDS = 0
    exact = start_scan(run_async=False)
    # updated_at is second precision and strictly after: what was stamped at the watermark's second
    # is listed again (only the later part of that second is new), the late one is missed.
    stamped_at_watermark = sum(1 for c in server.state.contacts() if parse_timestamp(c["updatedAt"]) > watermark.replace(microsecond=0))
    assert exact.contacts_seen == stamped_at_watermark == 1
    assert Contact.objects.filter(uid=same_second["uid"]).exists()
    assert not Contact.objects.filter(uid=late["uid"]).exists()

    del settings.DEDUP_SCAN_OVERLAP_SECONDS  # the default five minutes
    overlapping = start_scan(run_async=False)
    assert Contact.objects.filter(uid=late["uid"]).exists()
    assert overlapping.contacts_seen > exact.contacts_seen


def test_a_scan_from_a_v4_export_file_indexes_every_contact(
    demo_corpus: tuple[list[str], dict[str, str]], tmp_path: Path
) -> None:
    lines, truth = demo_corpus
    path = tmp_path / "export.ndjson"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    run = start_scan(from_file=str(path), run_async=False)
    assert run.kind == ScanRun.FILE and run.state == ScanRun.SUCCEEDED and run.rejected_count == 0
    assert run.contacts_seen == run.contacts_total == len(truth) == Contact.objects.count()
    assert set(Contact.objects.values_list("uid", flat=True)) == set(truth)
    multi = [json.loads(line) for line in lines if '"locations":[{"uid"' in line]
    shared = [c for c in multi if "uid" in c and len(c["locations"]) > 1]
    assert shared and all(locations_of(c["uid"]) == {loc["uid"] for loc in c["locations"]} for c in shared)
    assert run.clusters_found > 0
    assert Location.objects.get(uid=POPUP).needs_region


def test_an_old_shape_export_is_refused_saying_what_shape_is_expected(tmp_path: Path) -> None:
    path = tmp_path / "old.ndjson"
    old = {"uid": "ct_1", "locationUid": "loc_sydney", "name": "Maria", "channels": [],
           "marketingOptOut": False, "smsOptOut": False, "emailOptOut": False, "conversationCount": 1}  # fmt: skip
    path.write_text(json.dumps(old) + "\n", encoding="utf-8")
    with pytest.raises(ScanError, match="pre-v4 shape") as caught:
        start_scan(from_file=str(path), run_async=False)
    run = caught.value.scan_run
    assert run is not None and run.state == ScanRun.FAILED and run.error_code == "ERR_DEDUP_003"
    assert "expected Podium's v4 export" in run.error_message and "line 1" in run.error_message
    assert not Contact.objects.exists()
    assert AuditEvent.objects.filter(event_type="scan.failed").exists()


def test_a_bad_export_line_is_set_aside_and_the_rest_indexed(tmp_path: Path) -> None:
    from podium_client.corpus import LOCATIONS

    path = tmp_path / "bad.ndjson"
    good = [json.dumps(make_contact(locations=(SYDNEY,), phones=(f"0412 000 00{i}",))) for i in range(3)]
    path.write_text("\n".join([location_export_line(LOCATIONS[0]), good[0], '{"uid": 12}', *good[1:]]) + "\n")
    run = start_scan(from_file=str(path), run_async=False)
    assert run.state == ScanRun.SUCCEEDED and run.rejected_count == 1
    assert Contact.objects.count() == 3 and run.contacts_seen == 4
    rejected = run.rejected.get()
    assert rejected.line_number == 3 and rejected.raw == '{"uid": 12}' and "'uid'" in rejected.reason


def test_a_second_scan_of_the_same_scope_is_refused_naming_the_holder(db: None) -> None:
    from django.contrib.auth.models import User

    alice = User.objects.create_user("alice")
    holder = ScanRun.objects.create(
        scope=[], scope_key="all", state=ScanRun.RUNNING, requested_by=alice, holder="user:alice",
        started_at=timezone.now() - timedelta(minutes=2), heartbeat_at=timezone.now(),
    )  # fmt: skip
    with pytest.raises(ConcurrentRunError) as caught:
        start_scan(run_async=False)
    assert caught.value.code == "ERR_DEDUP_014" and caught.value.holder.pk == holder.pk
    message = str(caught.value)
    assert message.startswith(f"ERR_DEDUP_014 concurrent_run: scan #{holder.pk} (started by user:alice 2 min ago)")
    assert "for all locations" in message
    # An overlapping scope is refused too; a disjoint one is not blocked by it.
    ScanRun.objects.filter(pk=holder.pk).update(scope=[SYDNEY], scope_key=f"locations:{SYDNEY}")
    with pytest.raises(ConcurrentRunError):
        start_scan(run_async=False)
    with pytest.raises(ConcurrentRunError):
        start_scan(locations=[SYDNEY, AUCKLAND], run_async=False)
    assert start_scan(locations=[BURLEIGH], run_async=True).state == ScanRun.QUEUED


def test_the_database_refuses_two_active_scans_of_one_scope(db: None) -> None:
    from django.db import IntegrityError, transaction

    ScanRun.objects.create(scope_key="all", state=ScanRun.QUEUED)
    with pytest.raises(IntegrityError), transaction.atomic():
        ScanRun.objects.create(scope_key="all", state=ScanRun.RUNNING)


class _Crash(BaseException):
    """Stands in for the process dying: nothing in the scan catches it."""


def _crash_after_the_first_write(monkeypatch: pytest.MonkeyPatch) -> ScanRun:
    from dedup import scanning

    monkeypatch.setattr(scanning, "_WRITE_EVERY", 100)  # commit after every 100-contact page

    def die_after_the_first_write(run: ScanRun) -> None:
        if run.contacts_seen:
            raise _Crash

    with pytest.raises(_Crash):
        start_scan(full=True, run_async=False, progress_callback=die_after_the_first_write)
    crashed = ScanRun.objects.get()
    assert crashed.state == ScanRun.RUNNING and crashed.contacts_seen == 100
    assert Contact.objects.count() == 100 and crashed.checkpoint["stream"]["cursor"]
    # Still fresh: it holds the scope.
    with pytest.raises(ConcurrentRunError):
        start_scan(full=True, run_async=False)
    ScanRun.objects.filter(pk=crashed.pk).update(heartbeat_at=timezone.now() - timedelta(minutes=6))
    return crashed


def test_a_crashed_scan_is_resumed_from_its_checkpoint(
    podium_env: Callable[..., EmulatorServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = podium_env(people=300)
    total = len(server.state.contacts())
    crashed = _crash_after_the_first_write(monkeypatch)

    resumed = full_scan()
    crashed.refresh_from_db()
    assert crashed.state == ScanRun.FAILED and crashed.error_code == "ERR_DEDUP_003"
    assert resumed.state == ScanRun.SUCCEEDED and resumed.checkpoint["resumedFrom"] == crashed.pk
    assert resumed.contacts_seen == total - 100  # what was committed is not read again
    assert Contact.objects.count() == total
    assert resumed.checkpoint["stream"]["vanished"] == 0  # the crashed run's rows count as listed


def test_a_stale_cursor_restarts_the_listing(
    podium_env: Callable[..., EmulatorServer], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    server = podium_env(people=300)
    total = len(server.state.contacts())
    _crash_after_the_first_write(monkeypatch)
    server.state.invalidate_cursors()  # Podium no longer accepts the saved cursor (invalid_cursor)

    resumed = full_scan()
    assert "saved cursor refused; restarting the read" in caplog.text
    assert server.stats()["by_status"].get("400") == 1
    assert resumed.state == ScanRun.SUCCEEDED and resumed.contacts_seen == total  # read again from the top
    assert Contact.objects.count() == total and not Contact.objects.filter(deleted_at__isnull=False).exists()


def test_a_scan_whose_worker_died_is_resumed_at_once(podium_env: Callable[..., EmulatorServer]) -> None:
    import socket

    podium_env()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    crashed = ScanRun.objects.create(
        scope_key="all", state=ScanRun.RUNNING, kind=ScanRun.INCREMENTAL, heartbeat_at=timezone.now(),
        checkpoint={"worker": {"host": socket.gethostname(), "pid": dead_pid}},
    )  # fmt: skip
    run = start_scan(run_async=False)
    crashed.refresh_from_db()
    assert crashed.state == ScanRun.FAILED and "resumed by" in crashed.error_message
    assert run.state == ScanRun.SUCCEEDED


def test_watermarks_come_from_the_last_successful_read_covering_the_scope(db: None) -> None:
    older, newer, newest = (timezone.now() - timedelta(days=d) for d in (3, 2, 1))

    def run(scope: list[str], state: str, finished: datetime, kind: str = ScanRun.INCREMENTAL) -> None:
        key = "all" if not scope else f"locations:{','.join(scope)}"
        ScanRun.objects.create(
            scope=scope, scope_key=key, kind=kind, state=state, finished_at=finished,
            checkpoint={"stream": {"done": True, "watermark": format_timestamp(finished)}},
        )  # fmt: skip

    run([], ScanRun.SUCCEEDED, older)
    run([], ScanRun.FAILED, newer)  # a failed read proves nothing
    run([SYDNEY], ScanRun.SUCCEEDED, newest)
    run([], ScanRun.SUCCEEDED, newest, kind=ScanRun.FILE)  # a file is not Podium's listing
    assert last_watermark([]) == older
    assert last_watermark([SYDNEY]) == newest
    assert last_watermark([AUCKLAND]) == older  # a scan of every location covers any scope
