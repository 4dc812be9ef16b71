"""Scans against the Podium emulator over real HTTP: full, incremental, deletions and merges, resume."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from dedup.models import AuditEvent, Cluster, Contact, ContactKey, Policy, ScanRun, UncategorizedPhone
from dedup.scanning import ConcurrentRunError, ScanError, last_watermarks, start_scan
from podium_client import PodiumClient
from podium_client.emulator import EmulatorServer
from podium_client.types import format_timestamp

pytestmark = pytest.mark.django_db


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


def test_a_full_scan_indexes_every_location_and_detects(
    podium_env: Callable[..., EmulatorServer],
) -> None:
    server = podium_env(people=300)
    everything = server.state.contacts()
    run = full_scan(actor="user:alice")

    assert run.state == ScanRun.SUCCEEDED and run.kind == ScanRun.FULL
    assert run.contacts_seen == len(everything) == Contact.objects.count()
    assert run.pages == 7 and run.contacts_total is None  # 100-contact pages; nothing indexed before
    assert run.invalid_phones == UncategorizedPhone.objects.count() > 0
    assert run.clusters_found == Cluster.objects.filter(status=Cluster.OPEN).count() > 0
    assert 0 < (run.duplicate_rate or 0) < 1 and run.heartbeat_at is not None and run.finished_at is not None
    deleted = {c.uid for c in everything if c.deleted_at is not None}
    assert deleted and set(Contact.objects.filter(deleted_at__isnull=False).values_list("uid", flat=True)) == deleted
    merged = {c.uid: c.merged_into_uid for c in everything if c.merged_into_uid}
    assert dict(Contact.objects.exclude(merged_into_uid="").values_list("uid", "merged_into_uid")) == merged
    assert ContactKey.objects.filter(kind="PHONE", key__startswith="+64").exists()  # Auckland's numbers
    events = list(AuditEvent.objects.filter(event_type__startswith="scan.").values_list("event_type", flat=True))
    assert events == ["scan.started", "scan.finished"]
    assert set(run.checkpoint["locations"]) == {"loc_sydney", "loc_burleigh", "loc_auckland"}


def test_an_incremental_scan_reads_only_what_changed(
    podium_env: Callable[..., EmulatorServer], podium_factory: Callable[..., PodiumClient], settings: Any
) -> None:
    server = podium_env(people=300)
    full_scan()
    total = Contact.objects.count()
    watermarks = last_watermarks(["loc_sydney", "loc_burleigh", "loc_auckland"])
    assert len(watermarks) == 3

    # Nothing changed: only the overlap window before each watermark is read again.
    overlap = timedelta(minutes=5)
    in_overlap = sum(
        1
        for c in server.state.contacts()
        if c.updated_at >= watermarks[c.location_uid] - overlap
    )
    indexed_at = dict(Contact.objects.values_list("uid", "indexed_at"))
    quiet = start_scan(run_async=False)
    assert quiet.kind == ScanRun.INCREMENTAL and quiet.contacts_seen == in_overlap < total / 10
    # What was re-listed but did not change is not written again.
    assert dict(Contact.objects.values_list("uid", "indexed_at")) == indexed_at

    # Three changes in Podium: a rename, a deletion and a merge.
    client = podium_factory(server)
    cluster = Cluster.objects.filter(status=Cluster.OPEN, kind=Cluster.AUTO, member_count=2).first()
    assert cluster is not None
    primary, duplicate = sorted(cluster.members.values_list("contact__uid", flat=True))
    client.merge(primary, [duplicate])
    loner = Contact.objects.filter(deleted_at__isnull=True, memberships__isnull=True).first()
    assert loner is not None
    client.delete_contact(loner.uid)
    renamed = Contact.objects.filter(deleted_at__isnull=True).exclude(uid__in=[primary, duplicate, loner.uid]).first()
    assert renamed is not None
    client.update_contact(renamed.uid, {"name": "Someone Else Entirely"})

    settings.DEDUP_SCAN_OVERLAP_SECONDS = 0
    run = start_scan(run_async=False)
    # The merge touched two contacts; the watermark contacts themselves are re-read (updatedSince is inclusive).
    at_watermark = sum(1 for c in server.state.contacts() if c.updated_at == watermarks[c.location_uid])
    assert run.contacts_seen == 4 + at_watermark
    assert Contact.objects.get(uid=duplicate).merged_into_uid == primary
    assert Contact.objects.get(uid=loner.uid).deleted_at is not None
    assert Contact.objects.get(uid=renamed.uid).name == "Someone Else Entirely"
    cluster.refresh_from_db()
    assert cluster.status == Cluster.SUPERSEDED  # its duplicate was merged away in Podium
    assert Contact.objects.count() == total


def test_a_scan_from_an_export_file_uses_the_same_path(
    demo_corpus: tuple[list[str], dict[str, str]], tmp_path: Any
) -> None:
    lines, truth = demo_corpus
    path = tmp_path / "export.ndjson"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    run = start_scan(from_file=str(path), run_async=False)
    assert run.kind == ScanRun.FILE and run.state == ScanRun.SUCCEEDED
    assert run.contacts_seen == run.contacts_total == len(truth) == Contact.objects.count()
    assert run.clusters_found > 0
    # The export's newest updatedAt per location is the next incremental scan's watermark.
    assert set(last_watermarks(["loc_sydney", "loc_burleigh", "loc_auckland"])) == {
        "loc_sydney", "loc_burleigh", "loc_auckland"
    }


def test_a_bad_export_line_fails_the_scan_naming_the_line(tmp_path: Any) -> None:
    path = tmp_path / "bad.ndjson"
    path.write_text('{"object":"location","uid":"loc_x","name":"X","country":"AU"}\n{"uid": 12}\n')
    with pytest.raises(ScanError, match="line 2") as caught:
        start_scan(from_file=str(path), run_async=False)
    run = caught.value.scan_run
    assert run is not None and run.state == ScanRun.FAILED and run.error_code == "ERR_DEDUP_003"
    assert AuditEvent.objects.filter(event_type="scan.failed").exists()


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
    ScanRun.objects.filter(pk=holder.pk).update(scope=["loc_sydney"], scope_key="locations:loc_sydney")
    with pytest.raises(ConcurrentRunError):
        start_scan(run_async=False)
    with pytest.raises(ConcurrentRunError):
        start_scan(locations=["loc_sydney", "loc_auckland"], run_async=False)
    assert start_scan(locations=["loc_burleigh"], run_async=True).state == ScanRun.QUEUED


def test_the_database_refuses_two_active_scans_of_one_scope(db: None) -> None:
    from django.db import IntegrityError, transaction

    ScanRun.objects.create(scope_key="all", state=ScanRun.QUEUED)
    with pytest.raises(IntegrityError), transaction.atomic():
        ScanRun.objects.create(scope_key="all", state=ScanRun.RUNNING)


class _Crash(BaseException):
    """Stands in for the process dying: nothing in the scan catches it."""


def test_a_crashed_scan_is_resumed_from_its_checkpoint(
    podium_env: Callable[..., EmulatorServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    from dedup import scanning

    monkeypatch.setattr(scanning, "_WRITE_EVERY", 100)  # commit after every 100-contact page
    server = podium_env(people=300)
    total = len(server.state.contacts())

    def die_after_the_first_write(run: ScanRun) -> None:
        if run.contacts_seen:
            raise _Crash

    with pytest.raises(_Crash):
        start_scan(full=True, run_async=False, progress_callback=die_after_the_first_write)
    crashed = ScanRun.objects.get()
    done = crashed.contacts_seen
    assert crashed.state == ScanRun.RUNNING and done == 100
    assert Contact.objects.count() == done and crashed.checkpoint["locations"]["loc_sydney"]["cursor"]
    # Still fresh: it holds the scope.
    with pytest.raises(ConcurrentRunError):
        start_scan(full=True, run_async=False)
    ScanRun.objects.filter(pk=crashed.pk).update(heartbeat_at=timezone.now() - timedelta(minutes=6))

    resumed = start_scan(full=True, run_async=False)
    crashed.refresh_from_db()
    assert crashed.state == ScanRun.FAILED and crashed.error_code == "ERR_DEDUP_003"
    assert resumed.state == ScanRun.SUCCEEDED and resumed.checkpoint["resumedFrom"] == crashed.pk
    assert resumed.contacts_seen == total - done  # what was committed is not read again
    assert Contact.objects.count() == total


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


def test_watermarks_come_from_the_last_successful_scan_only(db: None) -> None:
    older, newer = timezone.now() - timedelta(days=2), timezone.now() - timedelta(days=1)
    ScanRun.objects.create(
        scope_key="a", state=ScanRun.SUCCEEDED, finished_at=older,
        checkpoint={"locations": {"loc_sydney": {"done": True, "watermark": format_timestamp(older)}}},
    )  # fmt: skip
    ScanRun.objects.create(
        scope_key="b", state=ScanRun.FAILED, finished_at=newer,
        checkpoint={"locations": {"loc_sydney": {"done": True, "watermark": format_timestamp(newer)}}},
    )  # fmt: skip
    assert last_watermarks(["loc_sydney", "loc_auckland"]) == {"loc_sydney": older.replace(microsecond=older.microsecond)}
