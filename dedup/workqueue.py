"""Handing merges to the workers, people's first, and following queued work until it is done.

Every merge handed to the django-q2 queue is a ``run_next`` task: one unit of merge work. The task
first runs the oldest merge a person approved on its own that is still waiting, then its own
operation, then, when another task already took that one, the oldest waiting one. So a person's
approval starts as soon as any worker finishes the merge in hand, even behind thousands of queued
bulk merges (django-q2's queue is first in, first out), and no merge is left without a task: each
task runs at most one, and there is one task per merge. A worker that dies loses the tasks it held;
the operations they were for are continued by the next worker start (``resume_at_worker_start``) and
the minute schedule (``run_due_operations``).

The operation a person approved on its own (no batch), or one enqueued while a person waits on a
web request, merges at the interactive priority of the shared Podium budget (``dedup.budget``);
everything else at bulk priority.

``follow_operations`` and ``follow_scan`` are what ``manage.py merge --queue`` and ``scan --queue``
wait with.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Q
from django.utils import timezone

from dedup.models import MergeOperation, ScanRun
from podium_client.ratelimit import BULK, INTERACTIVE, current_priority, prioritized

logger = logging.getLogger("dedup.workqueue")

#: How many waiting candidates a task tries before it leaves the rest to the tasks behind it.
_CANDIDATES = 4
#: ``follow_operations`` keeps waiting for an operation whose retry comes within this long.
RETRY_HORIZON = timedelta(minutes=2)


def enqueue_operation(operation_id: int) -> None:
    """Hand one merge operation to the workers (``dedup.merge.machine.enqueue`` calls this).

    Enqueued while a person waits (a web request, ``prioritized(INTERACTIVE)``), it is marked
    interactive.
    """
    from django_q.tasks import async_task

    interactive = current_priority() >= INTERACTIVE
    async_task(
        "dedup.workqueue.run_next",
        operation_id,
        interactive=interactive,
        task_name=f"merge-op-{operation_id}",
        group="merges",
    )


def is_interactive(operation: MergeOperation) -> bool:
    """A person approved this cluster on its own: its merge goes before bulk work."""
    return operation.batch_id is None and operation.requested_by_id is not None and not operation.automatic


def _due() -> Q:
    return Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=timezone.now())


def _waiting_interactive() -> list[int]:
    rows = MergeOperation.objects.filter(
        _due(), state=MergeOperation.PENDING, batch__isnull=True, requested_by__isnull=False, automatic=False
    ).order_by("pk")
    return list(rows.values_list("pk", flat=True)[:_CANDIDATES])


def _waiting(batch_id: int | None) -> list[int]:
    rows = MergeOperation.objects.filter(_due(), state=MergeOperation.PENDING).order_by("pk")
    picked = (
        list(rows.filter(batch_id=batch_id).values_list("pk", flat=True)[:_CANDIDATES]) if batch_id else []
    )
    return picked or list(rows.values_list("pk", flat=True)[:_CANDIDATES])


def _candidates(operation_id: int, interactive: bool) -> Iterator[tuple[int, int, bool]]:
    """(operation id, budget priority, force) in the order a task tries them; computed lazily, because
    the picture changes while each one runs."""
    for pk in _waiting_interactive():
        yield pk, INTERACTIVE, pk == operation_id
    own = MergeOperation.objects.filter(pk=operation_id).first()
    if own is not None:
        yield operation_id, INTERACTIVE if interactive or is_interactive(own) else BULK, True
    for pk in _waiting(own.batch_id if own is not None else None):
        yield pk, BULK, False


def _attempt(operation_id: int, *, force: bool) -> bool:
    """Run the operation if it is still to be run; True when this task ran it (or tried and deferred it).

    ``run_operation`` leaves alone an operation another worker holds, and then nothing about it changes.
    """
    from dedup.merge import run_operation

    before = MergeOperation.objects.filter(pk=operation_id).values_list("state", "updated_at").first()
    if before is None or before[0] not in MergeOperation.RESUMABLE_STATES:
        return False
    after = run_operation(operation_id, force=force)
    return (after.state, after.updated_at) != before


def run_next(operation_id: int, interactive: bool = False) -> dict[str, Any]:
    """The queued merge task: one unit of merge work (see the module docstring).

    Returns which operation it ran (None when every candidate was done or held by another worker).
    """
    tried: set[int] = set()
    for pk, level, force in _candidates(operation_id, interactive):
        if pk in tried:
            continue
        tried.add(pk)
        with prioritized(level):
            if _attempt(pk, force=force):
                if pk != operation_id:
                    logger.info("the task of merge #%s ran merge #%s first", operation_id, pk)
                return {"asked": operation_id, "ran": pk, "priority": level}
        if len(tried) >= 2 * _CANDIDATES + 1:
            break
    return {"asked": operation_id, "ran": None}


# --- following queued work ----------------------------------------------------------------------------


@dataclass
class OperationsProgress:
    """Where a set of queued merge operations stands."""

    total: int
    states: Counter[str] = field(default_factory=Counter)
    finished: int = 0  # terminal, or waiting for a person
    in_progress: int = 0  # taken by a worker (past pending), or waiting for a retry soon
    queued: int = 0  # pending, not yet taken
    later: int = 0  # waiting for a retry beyond the horizon
    operations: list[MergeOperation] = field(default_factory=list)

    @property
    def settled(self) -> bool:
        """Nothing left that the workers will do soon."""
        return self.in_progress == 0 and self.queued == 0


def operations_progress(ids: Sequence[int], now: datetime | None = None) -> OperationsProgress:
    """Count the operations by what is left to do for them."""
    now = now or timezone.now()
    operations = list(
        MergeOperation.objects.filter(pk__in=list(ids)).select_related("cluster").order_by("pk")
    )
    progress = OperationsProgress(total=len(operations), operations=operations)
    for op in operations:
        progress.states[op.state] += 1
        if op.state in MergeOperation.TERMINAL_STATES or op.state == MergeOperation.UNRECONCILABLE:
            progress.finished += 1
        elif op.next_attempt_at is not None and op.next_attempt_at > now + RETRY_HORIZON:
            progress.later += 1
        elif op.state == MergeOperation.PENDING and op.attempts == 0 and op.next_attempt_at is None:
            progress.queued += 1
        else:
            progress.in_progress += 1
    return progress


def follow_operations(
    ids: Sequence[int],
    on_progress: Callable[[OperationsProgress], None],
    *,
    poll: float = 1.0,
    timeout: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> OperationsProgress:
    """Wait until the workers have done what they will do soon with these operations (or ``timeout``).

    Calls ``on_progress`` after every look. An operation waiting for a retry within ``RETRY_HORIZON``
    is waited for; one waiting longer, or for a person, ends the wait (the caller reports it).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        progress = operations_progress(ids)
        on_progress(progress)
        if progress.settled or (deadline is not None and time.monotonic() >= deadline):
            return progress
        sleep(poll)


def successor(run: ScanRun) -> ScanRun | None:
    """The scan run that took over ``run`` after its worker stopped or died, if one did."""
    return ScanRun.objects.filter(checkpoint__resumedFrom=run.pk).order_by("pk").first()


def follow_scan(
    run_id: int,
    on_progress: Callable[[ScanRun], None],
    *,
    poll: float = 1.0,
    timeout: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> ScanRun:
    """Wait until the scan run (or the run that continued it, when its worker died) has finished."""
    deadline = None if timeout is None else time.monotonic() + timeout
    run = ScanRun.objects.get(pk=run_id)
    while True:
        run.refresh_from_db()
        if not run.is_active:
            nxt = successor(run)
            if nxt is None:
                on_progress(run)
                return run
            logger.info("scan #%s continues scan #%s", nxt.pk, run.pk)
            run = nxt
            continue
        on_progress(run)
        if deadline is not None and time.monotonic() >= deadline:
            return run
        sleep(poll)
