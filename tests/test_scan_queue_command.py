"""``manage.py scan --queue``: the scan goes to the workers, the command follows it (into the run that
continues it when its worker died) and exits non-zero when it did not succeed."""

from __future__ import annotations

from collections.abc import Callable
from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from django_q.models import Task

from dedup import scanning
from dedup.models import ScanRun
from dedup.scanning import ScanError, scope_key_for
from dedup.workqueue import follow_scan
from podium_client.emulator import EmulatorServer
from tests.scanned_corpus import point_at

# Committed, so the scan is enqueued when start_scan's transaction commits, as in production.
pytestmark = pytest.mark.usefixtures("committed_db")


@pytest.fixture
def server(
    emulator_factory: Callable[..., EmulatorServer], settings: Any, monkeypatch: pytest.MonkeyPatch
) -> EmulatorServer:
    emulator = emulator_factory()
    point_at(emulator, settings, monkeypatch)
    return emulator


def _scan(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("scan", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_scan_queue_runs_on_a_worker_and_reports_the_result(server: EmulatorServer) -> None:
    out, _err = _scan("--full", "--queue", "--no-wait")
    run = ScanRun.objects.get()
    assert f"scan #{run.pk} queued for the workers" in out
    # The test settings run the task at once (a worker always free); --queue without --no-wait follows it.
    assert Task.objects.filter(func="dedup.scanning.run_scan_task").count() == 1
    run.refresh_from_db()
    assert run.state == ScanRun.SUCCEEDED
    out, _err = _scan("--queue", "--timeout", "30")
    assert "succeeded (incremental, all locations)" in out


def test_a_queued_scan_that_fails_exits_non_zero(
    server: EmulatorServer, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.PODIUM_BASE_URL = "http://127.0.0.1:9"  # nothing listens there
    failures: list[Exception] = []

    def worker(func: str, run_id: int, **kwargs: Any) -> str:
        # A worker runs the task; its failure stays in the worker (django-q2 records it).
        try:
            scanning.run_scan_task(run_id)
        except ScanError as exc:
            failures.append(exc)
        return "done"

    monkeypatch.setattr(scanning, "async_task", worker)
    with pytest.raises(CommandError, match=r"scan #\d+ failed: ERR_DEDUP_003 .*unreachable"):
        _scan("--full", "--queue", "--timeout", "30")
    assert failures


def test_without_a_worker_it_says_so_and_gives_up_at_the_timeout(
    server: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scanning, "async_task", lambda *a, **kw: "queued")
    err = StringIO()
    with pytest.raises(CommandError, match=r"still queued after 0.3 s \(--timeout\)"):
        call_command("scan", "--queue", "--timeout", "0.3", stdout=StringIO(), stderr=err)
    assert "no background worker is alive" in err.getvalue()


def test_following_a_scan_whose_worker_died_follows_the_run_that_continued_it() -> None:
    now = timezone.now()
    first = ScanRun.objects.create(
        scope=[], scope_key="x-old", state=ScanRun.FAILED, error_message="resumed by system:worker-start",
        started_at=now, finished_at=now,
    )  # fmt: skip
    second = ScanRun.objects.create(
        scope=[], scope_key=scope_key_for([]), state=ScanRun.SUCCEEDED, checkpoint={"resumedFrom": first.pk},
        started_at=now, finished_at=now, contacts_seen=42,
    )  # fmt: skip
    seen: list[int] = []
    assert follow_scan(first.pk, lambda run: seen.append(run.pk), sleep=lambda s: None).pk == second.pk
    assert seen == [second.pk]


def test_no_wait_and_timeout_need_queue(server: EmulatorServer) -> None:
    with pytest.raises(CommandError, match="--no-wait and --timeout go with --queue"):
        _scan("--no-wait")
