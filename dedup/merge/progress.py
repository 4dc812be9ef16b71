"""How merges are going: counts by state, a batch's progress, restore loops, JSON for the CLI."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from typing import Any

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


def restore_rounds(uids: Iterable[str]) -> dict[str, int]:
    """How many times each contact was restored after a merge (only those restored at least once).

    A contact re-created from its snapshot gets a new uid (``RestoreRecord.new_uid``); its rounds are
    those of every contact it was re-created from, so a duplicate restored and re-merged three times is
    seen as one loop whether Podium un-hid it (same uid) or the product re-created it (a new uid each time).
    """
    rows = list(RestoreRecord.objects.values_list("contact_uid", "new_uid"))
    parent = {new: old for old, new in rows if new}
    restored = Counter(old for old, _new in rows)
    out: dict[str, int] = {}
    for uid in uids:
        total, seen, current = 0, set(), uid
        while current and current not in seen:
            seen.add(current)
            total += restored[current]
            current = parent.get(current, "")
        if total:
            out[uid] = total
    return out


def restore_loop_contacts() -> list[str]:
    """Contacts (as they are now: the latest uid of a re-created one) restored after a merge at least
    ``RESTORE_LOOP_ROUNDS`` times (``ERR_DEDUP_013``)."""
    rows = list(RestoreRecord.objects.values_list("contact_uid", "new_uid"))
    latest = {new or old for old, new in rows} - {old for old, new in rows if new}
    return sorted(uid for uid, n in restore_rounds(latest).items() if n >= RESTORE_LOOP_ROUNDS)


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
