"""Merging clusters: decisions, the durable state machine, two strategies, restore — one room per job.

``decisions`` (approve, reject, change primary, every auto), ``planning`` (the typed plan and what blocks
it), ``machine`` (the state machine, claims, resume), ``native`` and ``consolidate`` (the strategies),
``writeback`` (the add-only write-back and its verification), ``finish`` (the index after a step),
``locks``, ``resolutions`` (people settling stopped merges), ``restoring``, ``progress``. Imports flow one
way: decisions → machine → strategies → writeback; nothing here imports the views.
"""

from __future__ import annotations

from dedup.merge.common import (
    CLIENT_OPTIONS,
    ERR_COMPLIANCE,
    ERR_CONCURRENT,
    ERR_RESTORE_LOOP,
    RESTORE_LOOP_ROUNDS,
    TIMINGS,
    ClusterBusyError,
    MergeRefused,
    default_worker_name,
)
from dedup.merge.decisions import (
    User,
    approve_cluster,
    approve_many,
    change_primary,
    merge_all_auto,
    person_of,
    reject_cluster,
)
from dedup.merge.machine import resume_at_worker_start, resume_operations, run_due_operations, run_operation
from dedup.merge.planning import current_strategy, describe_plan, member_records, plan_for
from dedup.merge.progress import (
    batch_progress,
    operation_json,
    operation_summary,
    restore_loop_contacts,
    to_json_line,
)
from dedup.merge.resolutions import RESOLUTIONS, resolve_operation, retry_operation

__all__ = [
    "CLIENT_OPTIONS",
    "ERR_COMPLIANCE",
    "ERR_CONCURRENT",
    "ERR_RESTORE_LOOP",
    "RESOLUTIONS",
    "RESTORE_LOOP_ROUNDS",
    "TIMINGS",
    "ClusterBusyError",
    "MergeRefused",
    "User",
    "approve_cluster",
    "approve_many",
    "batch_progress",
    "change_primary",
    "current_strategy",
    "default_worker_name",
    "describe_plan",
    "member_records",
    "merge_all_auto",
    "operation_json",
    "operation_summary",
    "person_of",
    "plan_for",
    "reject_cluster",
    "resolve_operation",
    "restore_loop_contacts",
    "resume_at_worker_start",
    "resume_operations",
    "retry_operation",
    "run_due_operations",
    "run_operation",
    "to_json_line",
]
