"""What an admin does about a merge that stopped: retry a compliance incident, settle an unreconcilable one."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from dedup import audit
from dedup.consent import needs_for, violations
from dedup.merge.common import ERR_COMPLIANCE, MergeRefused, logger, new_client
from dedup.merge.decisions import User, _actor
from dedup.merge.locks import cluster_location_uids, holding_operation
from dedup.merge.machine import enqueue, run_operation
from dedup.merge.readback import channel_consent
from dedup.models import Cluster, Contact, MergeOperation
from dedup.podium import identifier_of
from dedup.survivorship import MergePlan
from podium_client import Contact as PodiumContact
from podium_client import NotFoundError, PodiumClient, PodiumError, UnaddressableContact

RESOLUTIONS = ("merged_manually", "abandoned", "retry")


def retry_operation(operation: MergeOperation, *, user: User, run_async: bool = True) -> MergeOperation:
    """An admin retries a compliance-failed (or conflict-pending) merge now instead of at its next attempt."""
    actor_name, actor_user_id = _actor(user)
    with holding_operation(operation), transaction.atomic():
        op = (
            MergeOperation.objects.select_for_update(of=("self",))
            .select_related("cluster")
            .get(pk=operation.pk)
        )
        if op.state not in (MergeOperation.COMPLIANCE_FAILED, MergeOperation.CONFLICT_PENDING):
            raise MergeRefused(
                f"Merge #{op.pk} is {op.state}; only compliance_failed or conflict_pending merges are retried",
                cluster=op.cluster,
                operation=op,
            )
        op.next_attempt_at = timezone.now()
        op.save(update_fields=["next_attempt_at", "updated_at"])
        audit.record(
            "merge.retry_requested",
            actor=actor_name, actor_user_id=actor_user_id, cluster_ref=op.cluster.cluster_id, operation_ref=op.pk,
            contact_uids=[op.primary_uid, *op.duplicate_uids], payload={"state": op.state, "errorCode": op.error_code},
        )  # fmt: skip
        if run_async:
            op_id = op.pk
            transaction.on_commit(lambda: enqueue(op_id))
    if not run_async:
        return run_operation(op.pk, worker=actor_name)
    return op


def resolve_operation(
    operation: MergeOperation,
    *,
    user: User,
    resolution: str,
    note: str,
    run_async: bool = True,
    client: PodiumClient | None = None,
) -> MergeOperation:
    """An admin settles a merge the product could not reconcile (``ERR_DEDUP_012``), with a note; audited.

    ``retry``: Podium was put right by hand; the operation continues from ``merging``.
    ``merged_manually`` (the person finished the merge in Podium) and ``abandoned`` (it stays as it is)
    end the operation (failed_permanent, the resolution recorded) and queue its keys for a rescan; the
    cluster becomes merged or failed. Either way the consent the plan requires is first put onto the
    primary where the published API can, and read back, because a half-done merge may have dropped it:
    closing the case never leaves a member's consent weaker on the primary (``MergeRefused`` with
    ``ERR_DEDUP_010`` when it does not hold; nothing is closed). Compliance incidents are not resolved by
    hand: they are retried until they hold (``retry_operation``).
    """
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution must be one of {', '.join(RESOLUTIONS)}")
    if not note.strip():
        raise ValueError("a resolution needs a note saying what was done")
    actor_name, actor_user_id = _actor(user)
    forced: dict[str, Any] = {}
    with holding_operation(operation):
        op = MergeOperation.objects.select_related("cluster").get(pk=operation.pk)
        if op.state != MergeOperation.UNRECONCILABLE:
            raise MergeRefused(
                f"Merge #{op.pk} is {op.state}; only unreconcilable merges (ERR_DEDUP_012) are resolved by hand",
                cluster=op.cluster,
                operation=op,
            )
        if resolution != "retry":
            forced = _force_consent_on_primary(op, client)
        with transaction.atomic():
            op = MergeOperation.objects.select_for_update().get(pk=operation.pk)
            cluster = Cluster.objects.select_for_update().get(pk=op.cluster_id)
            before = op.state
            evidence = {**op.evidence, "resolution": resolution, "note": note, "resolvedBy": actor_name}
            if forced:
                evidence["consentForced"] = forced
            if resolution == "retry":
                op.state = MergeOperation.MERGING
                op.next_attempt_at = timezone.now()
            else:
                op.state = MergeOperation.FAILED_PERMANENT
                op.finished_at = timezone.now()
                op.next_attempt_at = None
                cluster.status = Cluster.MERGED if resolution == "merged_manually" else Cluster.FAILED
                cluster.save(update_fields=["status", "updated_at"])
            op.evidence = evidence
            op.last_error = f"{op.last_error}\nresolved ({resolution}) by {actor_name}: {note}".strip()
            op.save()
            audit.record(
                "merge.resolved",
                actor=actor_name, actor_user_id=actor_user_id, cluster_ref=cluster.cluster_id, operation_ref=op.pk,
                location_uids=cluster_location_uids(cluster), contact_uids=[op.primary_uid, *op.duplicate_uids],
                natural_keys=cluster.natural_keys,
                payload={"from": before, "to": op.state, "resolution": resolution, "note": note,
                         "consentForced": forced or None},
            )  # fmt: skip
            if resolution == "retry" and run_async:
                op_id = op.pk
                transaction.on_commit(lambda: enqueue(op_id))
    if resolution != "retry":
        from dedup.scanning import queue_rescan_of_keys

        queue_rescan_of_keys(
            list(cluster.natural_keys), f"merge resolved by hand: {resolution}", actor=actor_name,
            contact_uids=[op.primary_uid, *op.duplicate_uids],
        )  # fmt: skip
    elif not run_async:
        return run_operation(op.pk, worker=actor_name, client=client)
    return op


def _force_consent_on_primary(op: MergeOperation, client: PodiumClient | None) -> dict[str, Any]:
    """Withdraw marketing consent on the primary where the plan requires it, read back, check the invariant."""
    plan = MergePlan.from_dict(op.plan)
    row = Contact.objects.filter(uid=op.primary_uid).select_related("location").first()
    region = row.location.country if row is not None else "AU"
    own = client is None
    active = client or new_client()
    try:
        live = _read_primary(active, op, region)
        if live is None:
            # Nothing to protect on a primary Podium no longer has; the rescan sorts out the rest.
            return {"primaryUid": op.primary_uid, "found": False}
        sent = needs_for(plan.consent, channel_consent(live, region)).opt_out_phones
        for phone in sent:
            active.opt_out_phone(phone)
        after = _read_primary(active, op, region) if sent else live
    except PodiumError as exc:
        raise MergeRefused(
            f"Merge #{op.pk}: could not put the required consent on {op.primary_uid} ({exc}); try again",
            cluster=op.cluster, operation=op, code=ERR_COMPLIANCE,
        ) from exc  # fmt: skip
    finally:
        if own:
            active.close()
    problems = violations(plan.consent, channel_consent(after, region)) if after is not None else []
    if problems:
        logger.error("COMPLIANCE merge #%s: the required consent did not hold on %s", op.pk, op.primary_uid)
        raise MergeRefused(
            f"Merge #{op.pk}: the required consent does not hold on {op.primary_uid}: {'; '.join(problems)}",
            cluster=op.cluster, operation=op, code=ERR_COMPLIANCE,
        )  # fmt: skip
    return {"primaryUid": op.primary_uid, "optedOut": len(sent), "held": True}


def _read_primary(client: PodiumClient, op: MergeOperation, region: str) -> PodiumContact | None:
    snapshot = (op.member_snapshot.get(op.primary_uid) or {}).get("contact")
    try:
        if client.capabilities:
            identifier = op.primary_uid
        elif isinstance(snapshot, dict):
            identifier = identifier_of(PodiumContact.from_wire(snapshot), region)
        else:
            return None
        live = client.get_contact(identifier)
    except (NotFoundError, UnaddressableContact):
        return None
    return live if live.uid == op.primary_uid else None
