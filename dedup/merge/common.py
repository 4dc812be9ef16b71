"""What every room of the merge package shares: error codes, the two refusals, timings, small helpers."""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dedup.models import Cluster, MergeOperation
from dedup.podium import get_client
from podium_client import PodiumClient

logger = logging.getLogger("dedup.merge")

ERR_INVALID_DUPLICATE = "ERR_DEDUP_006"
ERR_NOT_FOUND = "ERR_DEDUP_007"
ERR_CONFLICT = "ERR_DEDUP_008"
ERR_CROSS_LOCATION = "ERR_DEDUP_009"
ERR_COMPLIANCE = "ERR_DEDUP_010"
ERR_DRIFT = "ERR_DEDUP_011"
ERR_UNRECONCILABLE = "ERR_DEDUP_012"
ERR_RESTORE_LOOP = "ERR_DEDUP_013"
ERR_CONCURRENT = "ERR_DEDUP_014"
ERR_BELOW_THRESHOLD = "ERR_DEDUP_004"

#: A contact restored this many times is in a restore loop and is never merged again automatically.
RESTORE_LOOP_ROUNDS = 3

#: Operation states that mean a call to Podium may have happened (so the contacts are spoken for).
PAST_PENDING = (
    MergeOperation.MERGING,
    MergeOperation.MERGED,
    MergeOperation.COMPLIANCE_FAILED,
    MergeOperation.CONFLICT_PENDING,
    MergeOperation.UNRECONCILABLE,
)
LIVE_STATES = (MergeOperation.PENDING, *PAST_PENDING)


@dataclass
class Timings:
    """How long to wait between attempts; tests shrink these."""

    #: In-process attempts of a merge answered 409 before it becomes ``conflict_pending``.
    conflict_attempts: int = 4
    conflict_backoff: float = 0.5
    conflict_backoff_cap: float = 8.0
    #: ``next_attempt_at`` after a deferral, a conflict or a compliance failure: base * 2**attempts, capped.
    retry_base: float = 30.0
    retry_cap: float = 3600.0
    #: How soon to try again an operation whose cluster or contacts someone else held.
    busy_retry: float = 10.0


TIMINGS = Timings()

#: Extra keyword arguments for ``get_client`` when the orchestrator builds its own client (tests set a
#: tiny backoff here).
CLIENT_OPTIONS: dict[str, Any] = {}


class ClusterBusyError(Exception):
    """Someone else holds this cluster (a worker is merging it) or acted on it first.

    The message names the holder or the earlier decision, e.g. "Cluster cl_… is being merged by worker
    host-12 — try again in a moment".
    """

    code = ERR_CONCURRENT

    def __init__(self, cluster: Cluster, message: str) -> None:
        super().__init__(message)
        self.cluster = cluster
        self.message = message


class MergeRefused(Exception):
    """The merge cannot be started: not open, stale, a restore loop, losses not accepted, a blocker.

    ``code`` is the product error code when one applies; ``operation`` the operation recorded for the
    refusal, when one was.
    """

    def __init__(
        self,
        message: str,
        *,
        cluster: Cluster | None = None,
        code: str = "",
        operation: MergeOperation | None = None,
        review_reason: str = "",
        audit_details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.cluster = cluster
        self.code = code
        self.operation = operation
        # A planning refusal raised out of a transaction: what to record, and why the cluster goes to review.
        self.review_reason = review_reason
        self.audit_details = audit_details


def default_worker_name() -> str:
    """This process's name in the audit log: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def crash_point(name: str) -> None:
    """Test-only hook for the crash tests: inert unless ``DEDUP_CRASH_AT`` names this state boundary."""
    if os.environ.get("DEDUP_CRASH_AT") == name:
        logger.warning("DEDUP_CRASH_AT=%s: killing this process with SIGKILL", name)
        os.kill(os.getpid(), signal.SIGKILL)


def iso(moment: datetime | None) -> str | None:
    """A timestamp as stored in operation rows and audit payloads."""
    return moment.isoformat(timespec="microseconds") if moment is not None else None


def parse_iso(value: str | None) -> datetime | None:
    """Inverse of ``iso``."""
    return datetime.fromisoformat(value) if value else None


def backoff(attempts: int, base: float, cap: float) -> float:
    """Full jitter, like the client's retries, so many deferred operations do not return in lockstep."""
    return random.uniform(base / 2, min(cap, base * (2 ** max(attempts - 1, 0))))


def new_client() -> PodiumClient:
    """A Podium client for merge and restore work (``CLIENT_OPTIONS`` passed to ``get_client``)."""
    return get_client(**CLIENT_OPTIONS)


def strategy_for(client_capabilities: frozenset[str] | set[str] | list[str]) -> str:
    """Podium's own merge when the tenant has the ``merge`` capability; else consolidate (published API)."""
    return MergeOperation.NATIVE if "merge" in client_capabilities else MergeOperation.CONSOLIDATE
