"""What a django-q2 worker does when it starts: reconcile unfinished merges and scans, keep the retry loop scheduled.

Every worker start enqueues one ``resume_at_worker_start`` task (so a crashed merge is reconciled as
soon as a worker is back), makes sure the one-minute schedule that retries due merges
(``compliance_failed`` write-backs, ``conflict_pending`` merges, deferrals) exists, and continues any
scan a stopped or crashed worker left unfinished, from its checkpoint. Several workers starting
together enqueue several resumes; that is harmless, because each operation is claimed by one worker
only and one scan per scope may be active (the others are refused).
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from typing import Any

from django.dispatch import receiver
from django_q.signals import post_spawn

logger = logging.getLogger("dedup.worker_hooks")

RETRY_SCHEDULE_NAME = "dedup: retry due merges"

_in_hook: ContextVar[bool] = ContextVar("dedup_worker_hook_running", default=False)


def ensure_merge_schedule() -> None:
    """Create the every-minute schedule of ``run_due_operations`` if it does not exist.

    Safe when several workers start at once: the schedule names are unique in the database (migration
    0004), so a second insert fails there and ``get_or_create`` returns the first one's row.
    """
    from django_q.models import Schedule

    Schedule.objects.get_or_create(
        name=RETRY_SCHEDULE_NAME,
        defaults={
            "func": "dedup.merge.run_due_operations",
            "schedule_type": Schedule.MINUTES,
            "minutes": 1,
            "repeats": -1,
        },
    )


@receiver(post_spawn, dispatch_uid="dedup.merge.resume_at_worker_start")
def resume_merges_at_worker_start(sender: Any, proc_name: str = "", **kwargs: Any) -> None:
    """django-q2 ``post_spawn``: enqueue the reconciliation of every unfinished merge.

    The resume does not depend on the schedule: a worker that cannot keep the schedule still resumes.
    """
    from django_q.tasks import async_task

    if _in_hook.get():
        # Synchronous mode (tests, one-off scripts) runs each task in a throwaway "worker" that fires
        # post_spawn again; the resume already being enqueued covers that worker too.
        return
    token = _in_hook.set(True)

    try:
        try:
            ensure_merge_schedule()
        except Exception:  # noqa: BLE001 - a worker must start even if this fails; the next start retries
            logger.exception("could not keep the merge-retry schedule at the start of worker %s", proc_name)
        try:
            async_task("dedup.merge.resume_at_worker_start", task_name=f"merge-resume-{proc_name}"[:100])
        except Exception:  # noqa: BLE001 - a worker must start even if this fails; the schedule catches up
            logger.exception("could not enqueue the merge resume at the start of worker %s", proc_name)
        try:
            resume_interrupted_scans()
        except Exception:  # noqa: BLE001 - a worker must start even if this fails; the next scan resumes them
            logger.exception("could not resume interrupted scans at the start of worker %s", proc_name)
    finally:
        _in_hook.reset(token)


def resume_interrupted_scans(actor: str = "system:worker-start") -> list[int]:
    """Continue every scan whose worker stopped or died (``scanning.is_crashed``), from its checkpoint.

    A worker asked to stop interrupts its scan after a short grace (``dedup.workers``); the scan row
    still says running. ``start_scan`` with the same kind, scope and file takes it over and continues
    where it stopped. Returns the ids of the new scan runs.
    """
    from dedup.models import ScanRun
    from dedup.scanning import ConcurrentRunError, ScanError, is_crashed, start_scan

    resumed: list[int] = []
    for run in ScanRun.objects.filter(state__in=ScanRun.ACTIVE_STATES).order_by("pk"):
        if not is_crashed(run):
            continue
        try:
            new = start_scan(
                locations=list(run.scope), full=run.kind == ScanRun.FULL, from_file=run.source_file or None,
                reparse=run.kind == ScanRun.REPARSE, actor=actor,
            )
        except ConcurrentRunError:
            continue  # another worker starting at the same time resumed it first
        except ScanError as exc:
            logger.warning("scan #%s cannot be resumed: %s", run.pk, exc)
            continue
        logger.info("scan #%s continues scan #%s, interrupted", new.pk, run.pk)
        resumed.append(new.pk)
    return resumed
