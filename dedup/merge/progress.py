"""How merges are going: counts by state, a batch's progress, restore loops, JSON for the CLI."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from django.db.models import Count

from dedup.merge.common import RESTORE_LOOP_ROUNDS
from dedup.models import AuditEvent, MergeBatch, MergeOperation, RestoreRecord


def operation_summary() -> dict[str, int]:
    """How many merge operations are in each state (every state listed, zeros included)."""
    counts = Counter(MergeOperation.objects.values_list("state", flat=True))
    return {state: int(counts.get(state, 0)) for state, _label in MergeOperation.STATE_CHOICES}


def batch_progress(batch: MergeBatch) -> dict[str, Any]:
    """A batch's progress for a progress bar: total, done (patched), failed, running, and the detail.

    ``failed`` counts operations that ended without merging or need a person (failed_permanent,
    re_index_required, unreconcilable); ``running`` is the rest (including compliance incidents and
    conflicts waiting for their retry, listed under ``states``). ``refused`` lists the clusters that
    could not start when the batch was approved.
    """
    states = Counter(batch.operations.values_list("state", flat=True))
    total = sum(states.values())
    done = states[MergeOperation.PATCHED]
    failed = (
        states[MergeOperation.FAILED_PERMANENT]
        + states[MergeOperation.RE_INDEX_REQUIRED]
        + states[MergeOperation.UNRECONCILABLE]
    )
    refused: list[dict[str, str]] = []
    batch_events = AuditEvent.objects.filter(event_type="merge.batch").order_by("-id")
    for payload in batch_events.values_list("payload", flat=True)[:200]:
        if isinstance(payload, dict) and payload.get("batch") == batch.pk:
            refused = list(payload.get("refused") or [])
            break
    return {
        "total": total,
        "done": done,
        "failed": failed,
        "running": total - done - failed,
        "percent": round(100.0 * (done + failed) / total, 1) if total else 100.0,
        "states": dict(states),
        "refused": refused,
    }


def restore_loop_contacts() -> list[str]:
    """Contacts restored after a merge at least ``RESTORE_LOOP_ROUNDS`` times (``ERR_DEDUP_013``)."""
    rows = (
        RestoreRecord.objects.values("contact_uid")
        .annotate(n=Count("id"))
        .filter(n__gte=RESTORE_LOOP_ROUNDS)
        .order_by("contact_uid")
    )
    return [row["contact_uid"] for row in rows]


def operation_json(operation: MergeOperation) -> dict[str, Any]:
    """A JSON-ready view of an operation for the CLI."""
    return {
        "operation": operation.pk,
        "cluster": operation.cluster.cluster_id,
        "state": operation.state,
        "strategy": operation.strategy,
        "primaryUid": operation.primary_uid,
        "duplicateUids": list(operation.duplicate_uids),
        "requests": operation.request_count,
        "errorCode": operation.error_code,
        "lastError": operation.last_error,
    }


def to_json_line(value: Any) -> str:
    """One compact JSON line (the CLI's machine-readable output)."""
    return json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
