"""The periodic incremental scan: a django-q2 ``Schedule`` whose interval follows the policy.

``sync_scan_schedule()`` creates or updates the schedule (the settings page calls it when an admin
changes ``scan_interval_minutes``, and every worker calls it when it starts, so a fresh deployment
gets the default four-hourly scan without anyone creating it).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.dispatch import receiver
from django.utils import timezone
from django_q.models import Schedule
from django_q.signals import post_spawn

from dedup.models import Policy

logger = logging.getLogger(__name__)

SCAN_SCHEDULE_NAME = "dedup: incremental scan"
SCAN_TASK = "dedup.scanning.scheduled_scan"


def sync_scan_schedule(policy: Policy | None = None) -> Schedule:
    """Create the incremental-scan schedule, or bring its interval in line with the policy.

    A changed interval counts from now: the next run is one new interval away (or sooner, if the old
    schedule was due sooner), so shortening the interval takes effect without waiting out the old one.
    """
    policy = policy or Policy.current()
    minutes = int(policy.scan_interval_minutes)
    now = timezone.now()
    # Workers starting together all get here: the name is unique in the database (migration 0004), so
    # one insert wins and the others read its row.
    schedule, created = Schedule.objects.get_or_create(
        name=SCAN_SCHEDULE_NAME,
        defaults={
            "func": SCAN_TASK,
            "schedule_type": Schedule.MINUTES,
            "minutes": minutes,
            "repeats": -1,
            "next_run": now + timedelta(minutes=minutes),
        },
    )
    if created:
        logger.info("scan schedule created: every %d minutes", minutes)
        return schedule
    changed = schedule.minutes != minutes or schedule.func != SCAN_TASK or schedule.schedule_type != Schedule.MINUTES
    if changed:
        soonest = now + timedelta(minutes=minutes)
        schedule.func = SCAN_TASK
        schedule.schedule_type = Schedule.MINUTES
        schedule.minutes = minutes
        schedule.repeats = -1
        if schedule.next_run is None or schedule.next_run > soonest:
            schedule.next_run = soonest
        schedule.save()
        logger.info("scan schedule now every %d minutes", minutes)
    return schedule


@receiver(post_spawn, dispatch_uid="dedup.schedule.ensure_scan_schedule")
def ensure_scan_schedule_at_worker_start(sender: Any, proc_name: str = "", **kwargs: Any) -> None:
    """django-q2 ``post_spawn``: make sure the scan schedule exists and matches the policy."""
    try:
        sync_scan_schedule()
    except Exception:  # noqa: BLE001 - a worker must start even if this fails; the next start retries
        logger.exception("could not sync the scan schedule at the start of worker %s", proc_name)
