"""The periodic incremental scan: scheduled at the policy's interval, kept in step when it changes."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from django_q.models import Schedule

from dedup.models import Policy, ScanRun
from dedup.scanning import scheduled_scan
from dedup.schedule import SCAN_SCHEDULE_NAME, ensure_scan_schedule_at_worker_start, sync_scan_schedule
from podium_client.emulator import EmulatorServer

pytestmark = pytest.mark.django_db


def test_the_schedule_is_created_with_the_policy_interval() -> None:
    schedule = sync_scan_schedule()
    assert schedule.name == SCAN_SCHEDULE_NAME and schedule.func == "dedup.scanning.scheduled_scan"
    assert schedule.schedule_type == Schedule.MINUTES and schedule.minutes == 240 and schedule.repeats == -1
    assert schedule.next_run is not None and schedule.next_run > timezone.now() + timedelta(minutes=239)
    assert Schedule.objects.count() == 1


def test_a_policy_change_moves_the_schedule() -> None:
    sync_scan_schedule()
    policy = Policy.current()
    policy.scan_interval_minutes = 30
    policy.save()
    schedule = sync_scan_schedule()
    assert Schedule.objects.filter(name=SCAN_SCHEDULE_NAME).count() == 1
    assert schedule.minutes == 30
    # Shortening the interval takes effect now, not after the old four hours.
    assert schedule.next_run is not None and schedule.next_run <= timezone.now() + timedelta(minutes=30)


def test_every_worker_start_makes_sure_the_schedule_exists() -> None:
    ensure_scan_schedule_at_worker_start(sender=None, proc_name="Process-1")
    assert Schedule.objects.get(name=SCAN_SCHEDULE_NAME).minutes == 240


def test_the_scheduled_task_runs_an_incremental_scan(
    emulator_factory: Callable[..., EmulatorServer], settings: Any
) -> None:
    server = emulator_factory()
    settings.PODIUM_BASE_URL, settings.PODIUM_ACCESS_TOKEN = server.url, server.token
    policy = Policy.current()
    policy.rate_limit_per_minute = 0
    policy.save()
    result = scheduled_scan()
    assert result is not None and result["state"] == ScanRun.SUCCEEDED
    run = ScanRun.objects.get()
    assert run.kind == ScanRun.INCREMENTAL and run.holder == "system:schedule"
    # While a scan runs, the schedule skips its turn instead of failing.
    ScanRun.objects.create(scope_key="all", state=ScanRun.RUNNING, heartbeat_at=timezone.now())
    assert scheduled_scan() is None
