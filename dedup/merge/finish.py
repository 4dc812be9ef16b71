"""What both strategies do when a step ends: the index follows Podium, a failed write-back is an incident."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from django.utils import timezone

from dedup.merge.common import ERR_COMPLIANCE, TIMINGS, backoff, logger
from dedup.models import Contact, MergeOperation, Policy
from dedup.survivorship import MergePlan
from podium_client import Contact as PodiumContact

if TYPE_CHECKING:  # the machine imports the strategies, which import this module
    from dedup.merge.machine import Runner


def mark_duplicates_merged(plan: MergePlan) -> None:
    """From now on the duplicates are merged away: never again a member of a proposal (a later scan
    fills in Podium's exact timestamps)."""
    now = timezone.now()
    Contact.objects.filter(uid__in=list(plan.duplicate_uids)).update(
        deleted_at=now, merged_into_uid=plan.primary_uid, indexed_at=now
    )


def index_survivor(primary: PodiumContact) -> None:
    """Re-index the primary from its read-back (new channels, keys, tags, consent, ``updatedAt``)."""
    from dedup.indexing import IndexWriter, prepare_contact

    writer = IndexWriter(Policy.current().default_region)
    home = primary.location_uid
    writer.write([prepare_contact(primary, writer.region_for(home) if home else writer.default_region)])


def compliance_failed(runner: Runner, problems: list[str], sent: Sequence[dict[str, Any]]) -> None:
    """The write-back did not hold: a compliance incident, surfaced at once and retried until it holds."""
    attempts = runner.op.attempts + 1
    delay = backoff(attempts, TIMINGS.retry_base, TIMINGS.retry_cap)
    consent_problems = [p for p in problems if "opted" in p or "opt-out" in p]
    runner.transition(
        MergeOperation.COMPLIANCE_FAILED,
        error_code=ERR_COMPLIANCE,
        last_error=f"{ERR_COMPLIANCE} opt_out_patch_failed: " + "; ".join(problems),
        next_attempt_in=delay,
        operation_changes={"attempts": attempts},
        payload={"problems": problems, "attemptedWriteBack": list(sent), "retryInSeconds": round(delay, 3)},
    )
    # Logged without the values (phones and emails stay out of the log); the audit event has them.
    logger.error(
        "COMPLIANCE merge #%s primary %s: write-back did not hold (%d problem(s), %d about consent); retry in %.0fs",
        runner.op.pk, runner.op.primary_uid, len(problems), len(consent_problems), delay,
    )  # fmt: skip


def mark_duplicates_retired(uids: Sequence[str], primary_uid: str) -> None:
    """The duplicates were deleted from Podium (their snapshots are kept with the operation)."""
    now = timezone.now()
    Contact.objects.filter(uid__in=list(uids)).update(
        deleted_at=now, merged_into_uid=primary_uid, indexed_at=now
    )


def unmark_duplicates(uids: Sequence[str]) -> None:
    """A merge stopped before retiring them: they are live contacts again until a scan says otherwise."""
    Contact.objects.filter(uid__in=list(uids)).update(
        deleted_at=None, merged_into_uid="", indexed_at=timezone.now()
    )
