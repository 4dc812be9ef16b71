"""What every django-q2 worker does when it starts: the schedules exist exactly once, the merge resume runs.

Two workers starting together (the two processes of one ``qcluster``, or two machines) both looked for
the schedules, found none and both inserted; every later start then failed on
``MultipleObjectsReturned`` before it enqueued the merge resume. A unique index on the product's
schedule names makes the second insert fail in the database, where ``get_or_create`` expects it.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.db import IntegrityError, connection, connections, transaction
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone
from django_q.models import Schedule
from django_q.signals import post_spawn

from dedup import merge, worker_hooks
from dedup.models import ScanRun
from dedup.scanning import scope_key_for
from dedup.schedule import SCAN_SCHEDULE_NAME, sync_scan_schedule
from dedup.worker_hooks import RETRY_SCHEDULE_NAME, ensure_merge_schedule
from tests.audit_guard import lift_for_the_flush

PRODUCT_SCHEDULES = (SCAN_SCHEDULE_NAME, RETRY_SCHEDULE_NAME)


@pytest.fixture
def audit_guard_lifted(transactional_db: None) -> Iterator[None]:
    """Let the flush after a ``transaction=True`` test truncate the audit table on PostgreSQL.

    Migration 0002 refuses TRUNCATE of audit events; the guard is off for that flush only and back on
    when it ends (a flush emits ``post_migrate``).
    """
    yield
    lift_for_the_flush()


@pytest.fixture
def resumes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records each merge resume a worker start enqueues (run inline: the test settings are ``sync``)."""
    calls: list[str] = []
    lock = threading.Lock()

    def resume() -> dict[str, int]:
        with lock:
            calls.append(threading.current_thread().name)
        return {}

    monkeypatch.setattr(merge, "resume_at_worker_start", resume)
    return calls


def _counts() -> dict[str, int]:
    return {name: Schedule.objects.filter(name=name).count() for name in PRODUCT_SCHEDULES}


@pytest.mark.django_db
def test_a_second_schedule_of_the_same_name_is_refused_by_the_database() -> None:
    sync_scan_schedule()
    with pytest.raises(IntegrityError), transaction.atomic():
        Schedule.objects.create(name=SCAN_SCHEDULE_NAME, func="dedup.scanning.scheduled_scan")
    # Schedules an admin adds under other names are not constrained.
    Schedule.objects.create(name="nightly report", func="math.floor", args="1")
    Schedule.objects.create(name="nightly report", func="math.floor", args="2")


@pytest.mark.django_db
def test_a_worker_start_creates_each_schedule_and_enqueues_the_resume(resumes: list[str]) -> None:
    post_spawn.send(sender="django_q", proc_name="Process-1")
    post_spawn.send(sender="django_q", proc_name="Process-2")
    assert _counts() == {SCAN_SCHEDULE_NAME: 1, RETRY_SCHEDULE_NAME: 1}
    assert len(resumes) == 2


@pytest.mark.django_db
def test_the_resume_is_enqueued_even_when_the_schedules_cannot_be_kept(
    resumes: list[str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> None:
        raise Schedule.MultipleObjectsReturned("two schedules named the same")

    monkeypatch.setattr(worker_hooks, "ensure_merge_schedule", broken)
    post_spawn.send(sender="django_q", proc_name="Process-1")
    assert len(resumes) == 1
    assert "could not keep the merge-retry schedule" in caplog.text


def _race(target: Callable[[], Any], workers: int) -> list[BaseException]:
    """Run ``target`` in ``workers`` threads released together, each on its own connection."""
    barrier = threading.Barrier(workers)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait(timeout=10)
            target()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, name=f"Process-{n}") for n in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return errors


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("audit_guard_lifted")
def test_workers_starting_together_leave_one_of_each_schedule(resumes: list[str]) -> None:
    # Eight workers at once, twenty times over: a check-then-insert leaves duplicates within a few rounds.
    for _round in range(20):
        Schedule.objects.filter(name__in=PRODUCT_SCHEDULES).delete()
        errors = _race(lambda: post_spawn.send(sender="django_q", proc_name="worker"), workers=8)
        assert not errors
        assert _counts() == {SCAN_SCHEDULE_NAME: 1, RETRY_SCHEDULE_NAME: 1}
    assert len(resumes) == 20 * 8


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("audit_guard_lifted")
def test_concurrent_creation_returns_the_one_schedule_to_every_caller() -> None:
    for _round in range(20):
        Schedule.objects.filter(name__in=PRODUCT_SCHEDULES).delete()
        results: list[int] = []

        def create(out: list[int] = results) -> None:
            out.append(sync_scan_schedule().pk)

        errors = _race(create, workers=8)
        errors += _race(ensure_merge_schedule, workers=8)
        assert not errors
        assert len(set(results)) == 1 and len(results) == 8
        assert _counts() == {SCAN_SCHEDULE_NAME: 1, RETRY_SCHEDULE_NAME: 1}


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("audit_guard_lifted")
def test_the_migration_removes_duplicates_a_race_left() -> None:
    executor = MigrationExecutor(connection)
    before = [("dedup", "0006_keyed_audit_chain_and_axes_lockout")]
    after = [("dedup", "0007_one_schedule_per_name")]
    executor.migrate(before)
    try:
        kept = Schedule.objects.create(name=SCAN_SCHEDULE_NAME, func="dedup.scanning.scheduled_scan", minutes=240)
        Schedule.objects.create(name=SCAN_SCHEDULE_NAME, func="dedup.scanning.scheduled_scan", minutes=240)
        for _ in range(3):
            Schedule.objects.create(name=RETRY_SCHEDULE_NAME, func="dedup.merge.run_due_operations", minutes=1)
        Schedule.objects.create(name="nightly report", func="math.floor")
        Schedule.objects.create(name="nightly report", func="math.floor")
    finally:
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(after)
        # Going back to 0006 also unapplied every later migration: the rest of the suite needs them.
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())
    assert _counts() == {SCAN_SCHEDULE_NAME: 1, RETRY_SCHEDULE_NAME: 1}
    assert Schedule.objects.get(name=SCAN_SCHEDULE_NAME).pk == kept.pk  # the oldest stays
    assert Schedule.objects.filter(name="nightly report").count() == 2
    with pytest.raises(IntegrityError), transaction.atomic():
        Schedule.objects.create(name=RETRY_SCHEDULE_NAME, func="dedup.merge.run_due_operations")


@pytest.mark.django_db
def test_a_worker_start_continues_a_scan_a_stopped_worker_left_running(
    resumes: list[str], tmp_path: Path, django_capture_on_commit_callbacks: Any
) -> None:
    # A worker asked to stop interrupts its scan (dedup.workers): the row still says running, and
    # names a worker process that is gone.
    export = tmp_path / "corpus.ndjson"
    call_command("make_demo_corpus", str(export), people=30, seed=7, verbosity=0)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    now = timezone.now()
    interrupted = ScanRun.objects.create(
        kind=ScanRun.FILE, scope=[], scope_key=scope_key_for([]), source_file=str(export.resolve()),
        state=ScanRun.RUNNING, started_at=now, heartbeat_at=now,
        checkpoint={"worker": {"host": socket.gethostname(), "pid": gone.pid}},
    )
    with django_capture_on_commit_callbacks(execute=True):
        post_spawn.send(sender="django_q", proc_name="Process-1")
    interrupted.refresh_from_db()
    assert interrupted.state == ScanRun.FAILED and "resumed by system:worker-start" in interrupted.error_message
    resumed = ScanRun.objects.exclude(pk=interrupted.pk).get()
    assert resumed.state == ScanRun.SUCCEEDED and resumed.contacts_seen > 0
    assert resumed.holder == "system:worker-start"
    # The next worker start finds nothing left to continue.
    with django_capture_on_commit_callbacks(execute=True):
        post_spawn.send(sender="django_q", proc_name="Process-2")
    assert ScanRun.objects.count() == 2
