"""People's and the scheduler's decisions on clusters: approve (one, many, every auto), reject, change primary.

An approval plans the merge and commits the pending operation before any call to Podium. A cluster whose
merge would lose a value (``Loss``) is never merged automatically: it goes to review, and a person's
approval must accept each loss (recorded with the operation and in the audit). A cluster with a blocker
(stricter consent the strategy cannot carry, a member Podium's published API cannot reach) cannot be
approved at all onto that primary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import transaction
from django.utils import timezone

from dedup import audit
from dedup.merge.common import (
    ERR_BELOW_THRESHOLD,
    ERR_CONCURRENT,
    ERR_RESTORE_LOOP,
    LIVE_STATES,
    ClusterBusyError,
    MergeRefused,
    default_worker_name,
    logger,
    new_client,
)
from dedup.merge.locks import (
    Holds,
    busy_message,
    cluster_location_uids,
    cluster_member_uids,
    describe_actor,
    lock_cluster_nowait,
    lock_contacts_nowait,
    overlapping_live_operations,
    record_conflict,
)
from dedup.merge.machine import enqueue, run_operation
from dedup.merge.planning import (
    current_strategy,
    describe_plan,
    member_records,
    plan_for,
    plan_payload,
    restore_loops,
)
from dedup.models import (
    AuditEvent,
    Cluster,
    ClusterMember,
    MergeBatch,
    MergeOperation,
    Policy,
    ReviewDecision,
)
from dedup.survivorship import MergePlan
from podium_client import PodiumClient

User = AbstractBaseUser | AnonymousUser | None

#: Reasons a cluster goes to review when planning shows it cannot merge on its own.
WOULD_LOSE_DATA = "would_lose_data"
CANNOT_CARRY = "cannot_carry"
#: Refusal code: the cluster was scored under an earlier policy and waits for its re-evaluation.
POLICY_REEVALUATING = "policy_reevaluating"


def person_of(user: User) -> Any:
    """The user when it is a signed-in person, else None (workers act as no one)."""
    return user if user is not None and getattr(user, "is_authenticated", False) else None


def _actor(user: User, actor: str = "") -> tuple[str, int | None]:
    if person_of(user) is not None:
        return audit.actor_for(user)
    return audit.actor_for(None, actor or "cli")


def _snapshot_basis(cluster: Cluster, plan: MergePlan, updated: dict[str, Any]) -> dict[str, Any]:
    """Per member: the ``updatedAt`` the decision was based on (the scored one when the cluster has it)."""
    scored = dict(
        ClusterMember.objects.filter(cluster=cluster).values_list("contact__uid", "updated_at_when_scored")
    )
    out: dict[str, Any] = {}
    for uid in plan.member_uids:
        basis = scored.get(uid) or updated.get(uid)
        out[uid] = {
            "updatedAt": basis.isoformat(timespec="microseconds") if basis else None,
            "optOuts": plan.member_opt_outs[uid].to_wire() if uid in plan.member_opt_outs else {},
        }
    return out


def _demote(cluster: Cluster, reason: str) -> None:
    """An auto-mergeable cluster whose plan shows a loss or a blocker goes to review (saved by the caller)."""
    cluster.auto_merge = False
    if cluster.kind == Cluster.AUTO:
        cluster.kind = Cluster.REVIEW
    reasons = [r for r in cluster.reasons if r != "auto_merge_eligible"]
    if reason not in reasons:
        reasons.append(reason)
    cluster.reasons = reasons


def start_operation(
    cluster: Cluster,
    *,
    user: User,
    actor: str,
    actor_user_id: int | None,
    primary_uid: str | None,
    batch: MergeBatch | None,
    automatic: bool,
    accept_losses: bool = False,
) -> MergeOperation:
    """Lock, check, record the decision, plan and commit the pending operation. Raises on refusal.

    Must run inside a transaction; the caller enqueues or runs the operation after commit.
    """
    locked = lock_cluster_nowait(cluster)
    if locked.status != Cluster.OPEN:
        if locked.status in (Cluster.SUPERSEDED, Cluster.FAILED):
            raise MergeRefused(
                f"Cluster {locked.cluster_id} is {locked.status}; the next scan re-evaluates its contacts",
                cluster=locked,
            )
        raise ClusterBusyError(locked, busy_message(locked))
    if automatic or batch is not None:
        # A cluster scored under an older policy may not merge without a person looking at it: its
        # kind may change when the background re-evaluation (dedup.reevaluation) rescores it.
        in_force = Policy.current().scoring_version
        if locked.policy_version != in_force:
            raise MergeRefused(
                f"Cluster {locked.cluster_id} was scored under an earlier policy (version {locked.policy_version}, "
                f"now {in_force}); it is being re-evaluated and cannot be merged automatically or in bulk "
                "until then",
                cluster=locked,
                code=POLICY_REEVALUATING,
            )
    if primary_uid and locked.auto_merge:
        raise MergeRefused(
            f"Cluster {locked.cluster_id} merges automatically: its primary follows the rule "
            "(most fields, newest, lowest uid) and cannot be chosen",
            cluster=locked,
        )
    uids = cluster_member_uids(locked)
    if primary_uid and primary_uid not in uids:
        raise MergeRefused(f"{primary_uid} is not a member of cluster {locked.cluster_id}", cluster=locked)
    contacts = lock_contacts_nowait(locked, uids)
    inactive = [c.uid for c in contacts if not c.is_active]
    if inactive or len(contacts) < 2:
        raise MergeRefused(
            f"Cluster {locked.cluster_id} is stale: {', '.join(inactive) or 'a member'} is no longer live in the "
            "index; the next scan re-evaluates it",
            cluster=locked,
        )
    others = overlapping_live_operations(locked, [c.pk for c in contacts], LIVE_STATES)
    if others:
        other = others[0]
        raise ClusterBusyError(
            locked,
            f"Cluster {locked.cluster_id} shares a contact with cluster {other.cluster.cluster_id}, whose merge "
            f"(operation #{other.pk}, {other.state}) is not finished — try again once it is",
        )

    if primary_uid and primary_uid != locked.chosen_primary_uid:
        ReviewDecision.objects.create(
            decision=ReviewDecision.CHANGE_PRIMARY,
            cluster=locked,
            primary_uid=primary_uid,
            decided_by=person_of(user),
        )
        locked.chosen_primary_uid = primary_uid
    strategy = current_strategy()
    records = [r for r in member_records(locked) if r.uid in set(uids)]
    plan = plan_for(locked, records, strategy=strategy)
    common = {
        "actor": actor,
        "actor_user_id": actor_user_id,
        "cluster_ref": locked.cluster_id,
        "location_uids": cluster_location_uids(locked),
        "contact_uids": uids,
        "natural_keys": locked.natural_keys,
    }
    refusal = _refusal(locked, plan, automatic=automatic, accept_losses=accept_losses)
    if refusal is not None:
        code, message, reason = refusal
        # Raised out of the caller's transaction: ``settle_refusal`` records it (and demotes) after.
        raise MergeRefused(
            message,
            cluster=locked,
            code=code,
            review_reason=reason if automatic else "",
            audit_details={**common, "payload": {"code": code, "message": message, **plan_payload(plan)}},
        )

    now = timezone.now()
    loops = restore_loops(plan)
    operation = MergeOperation.objects.create(
        cluster=locked,
        location_id=locked.location_id,
        batch=batch,
        state=MergeOperation.PENDING,
        strategy=strategy,
        primary_uid=plan.primary_uid,
        duplicate_uids=list(plan.duplicate_uids),
        plan=plan.to_dict(),
        accepted_losses=[loss.to_dict() for loss in plan.losses] if plan.losses else [],
        member_snapshot=_snapshot_basis(locked, plan, {r.uid: r.updated_at for r in records}),
        requested_by=person_of(user),
        automatic=automatic,
    )
    if loops:
        # A restore loop is surfaced instead of merged again: the operation is recorded as refused and
        # the cluster goes to review, where a person sees why.
        message = (
            f"{', '.join(sorted(loops))} was restored after a merge {max(loops.values())} times "
            f"({ERR_RESTORE_LOOP} restore_loop); it is not merged again"
        )
        operation.state = MergeOperation.FAILED_PERMANENT
        operation.error_code = ERR_RESTORE_LOOP
        operation.last_error = message
        operation.evidence = {"restoreCounts": loops}
        operation.finished_at = now
        operation.save()
        _demote(locked, "restore_loop")
        locked.status = Cluster.OPEN
        locked.save(
            update_fields=["status", "kind", "auto_merge", "reasons", "chosen_primary_uid", "updated_at"]
        )
        audit.record(
            "merge.refused",
            **common,
            operation_ref=operation.pk,
            payload={
                "code": ERR_RESTORE_LOOP,
                "message": message,
                "restoreCounts": loops,
                **plan_payload(plan),
            },
        )
        logger.warning("merge #%s refused: %s", operation.pk, message)
        return operation

    if person_of(user) is not None:
        ReviewDecision.objects.create(
            decision=ReviewDecision.APPROVE, cluster=locked, primary_uid=plan.primary_uid,
            decided_by=person_of(user), decided_at=now,
            note="accepted losses: " + "; ".join(loss.describe() for loss in plan.losses) if plan.losses else "",
        )  # fmt: skip
    locked.status = Cluster.APPROVED
    locked.decided_by = person_of(user)
    locked.decided_at = now
    locked.save(update_fields=["status", "decided_by", "decided_at", "chosen_primary_uid", "updated_at"])
    audit.record(
        "merge.planned",
        **common,
        operation_ref=operation.pk,
        payload={
            "from": None, "to": MergeOperation.PENDING, "automatic": automatic, "strategy": strategy,
            "batch": batch.pk if batch else None, "acceptedLosses": operation.accepted_losses, **plan_payload(plan),
        },
    )  # fmt: skip
    logger.info(
        "merge #%s planned for cluster %s (%s): primary %s, %d duplicate(s), by %s",
        operation.pk, locked.cluster_id, strategy, plan.primary_uid, len(plan.duplicate_uids), actor,
    )  # fmt: skip
    return operation


def settle_refusal(exc: MergeRefused) -> None:
    """Record a planning refusal after its transaction rolled back; send an auto cluster to review."""
    details = exc.audit_details
    if details is None:
        return
    reason = exc.review_reason
    with transaction.atomic():
        if reason and exc.cluster is not None:
            cluster = Cluster.objects.select_for_update().get(pk=exc.cluster.pk)
            if cluster.status == Cluster.OPEN:
                _demote(cluster, reason)
                cluster.save(update_fields=["auto_merge", "kind", "reasons", "updated_at"])
        audit.record("merge.refused", **details)


def _refusal(
    cluster: Cluster, plan: MergePlan, *, automatic: bool, accept_losses: bool
) -> tuple[str, str, str] | None:
    """(code, message, review reason) when this plan may not run now, else None."""
    if plan.blockers:
        return (
            "ERR_DEDUP_010",
            f"Cluster {cluster.cluster_id} cannot be merged onto {plan.primary_uid}: "
            + "; ".join(plan.blockers)
            + ". Pick another primary, or fix it in Podium first.",
            CANNOT_CARRY,
        )
    if plan.losses and automatic:
        return (
            ERR_BELOW_THRESHOLD,
            f"Cluster {cluster.cluster_id} would lose {len(plan.losses)} value(s) "
            f"({'; '.join(loss.describe() for loss in plan.losses)}); a person must accept that in review",
            WOULD_LOSE_DATA,
        )
    if plan.losses and not accept_losses:
        return (
            "losses_not_accepted",
            f"Merging cluster {cluster.cluster_id} loses {len(plan.losses)} value(s): "
            + "; ".join(loss.describe() for loss in plan.losses)
            + ". Approve again accepting these losses to go ahead.",
            "",
        )
    return None


def approve_cluster(
    cluster: Cluster,
    *,
    user: User,
    primary_uid: str | None = None,
    batch: MergeBatch | None = None,
    run_async: bool = True,
    actor: str = "",
    accept_losses: bool = False,
    client: PodiumClient | None = None,
) -> MergeOperation:
    """Approve a cluster for merging: plan it, commit the pending operation, start the merge.

    Locks the cluster (``ClusterBusyError`` when a worker or another person holds it, or it was already
    decided) and its member contacts; the cluster must be open (``MergeRefused`` otherwise). A chosen
    ``primary_uid`` is only taken for review clusters. A merge that would lose values needs
    ``accept_losses`` (``MergeRefused`` naming them otherwise). ``run_async`` enqueues the merge for a
    worker; otherwise it runs here and the returned operation shows where it ended. ``actor`` names a
    non-person caller in the audit log when ``user`` is None.
    """
    actor_name, actor_user_id = _actor(user, actor)
    automatic = person_of(user) is None and cluster.auto_merge and not accept_losses
    try:
        with transaction.atomic():
            operation = start_operation(
                cluster, user=user, actor=actor_name, actor_user_id=actor_user_id, primary_uid=primary_uid,
                batch=batch, automatic=automatic, accept_losses=accept_losses,
            )  # fmt: skip
            if operation.state == MergeOperation.PENDING and run_async:
                op_id = operation.pk
                transaction.on_commit(lambda: enqueue(op_id))
    except ClusterBusyError as exc:
        record_conflict(exc.cluster, exc.message, actor=actor_name, actor_user_id=actor_user_id)
        raise
    except MergeRefused as exc:
        settle_refusal(exc)
        raise
    if operation.state == MergeOperation.FAILED_PERMANENT and operation.error_code == ERR_RESTORE_LOOP:
        from dedup.merge.restoring import RestoreLoopError

        raise RestoreLoopError(operation.last_error, cluster=operation.cluster, operation=operation)
    if not run_async:
        return run_operation(operation.pk, worker=actor or default_worker_name(), client=client)
    return operation


def approve_many(clusters: Iterable[Cluster], *, user: User, actor: str = "") -> MergeBatch:
    """Approve many clusters as one batch (bulk approve of auto clusters) and enqueue their merges.

    A cluster that cannot be approved (busy, already decided, stale, restore loop, a loss or a blocker)
    is skipped and reported, never fatal: the reasons are audited with the batch and listed by
    ``batch_progress`` under ``refused``.
    """
    clusters = list(clusters)
    actor_name, actor_user_id = _actor(user, actor)
    batch = MergeBatch.objects.create(
        label=f"Approve {len(clusters)} cluster(s) — {actor_name} {timezone.now():%Y-%m-%d %H:%M}",
        requested_by=person_of(user),
    )
    refused: list[dict[str, str]] = []
    for cluster in clusters:
        try:
            approve_cluster(cluster, user=user, batch=batch, run_async=True, actor=actor)
        except (ClusterBusyError, MergeRefused) as exc:
            refused.append({"clusterId": cluster.cluster_id, "message": str(exc)})
    audit.record(
        "merge.batch",
        actor=actor_name,
        actor_user_id=actor_user_id,
        payload={"batch": batch.pk, "label": batch.label, "clusters": len(clusters), "refused": refused},
    )
    batch.refused = refused  # type: ignore[attr-defined]
    return batch


def reject_cluster(cluster: Cluster, *, user: User, note: str = "", actor: str = "") -> None:
    """Reject a cluster as different people: remembered per member pair so it is not proposed again."""
    actor_name, actor_user_id = _actor(user, actor)
    try:
        with transaction.atomic():
            locked = lock_cluster_nowait(cluster)
            if locked.status != Cluster.OPEN:
                raise ClusterBusyError(locked, busy_message(locked))
            uids = cluster_member_uids(locked)
            now = timezone.now()
            person = person_of(user)
            ReviewDecision.objects.create(
                decision=ReviewDecision.REJECT, cluster=locked, note=note, decided_by=person, decided_at=now
            )
            pairs = []
            for i, a in enumerate(uids):
                for b in uids[i + 1 :]:
                    uid_a, uid_b = ReviewDecision.sorted_pair(a, b)
                    ReviewDecision.objects.get_or_create(
                        decision=ReviewDecision.DIFFERENT_PEOPLE, uid_a=uid_a, uid_b=uid_b,
                        defaults={"cluster": locked, "decided_by": person, "decided_at": now, "note": note},
                    )  # fmt: skip
                    pairs.append([uid_a, uid_b])
            locked.status = Cluster.REJECTED
            locked.decided_by = person
            locked.decided_at = now
            locked.save(update_fields=["status", "decided_by", "decided_at", "updated_at"])
            audit.record(
                "cluster.rejected",
                actor=actor_name,
                actor_user_id=actor_user_id,
                cluster_ref=locked.cluster_id,
                location_uids=cluster_location_uids(locked),
                contact_uids=uids,
                natural_keys=locked.natural_keys,
                payload={
                    "from": Cluster.OPEN,
                    "to": Cluster.REJECTED,
                    "note": note,
                    "differentPeople": pairs,
                },
            )
    except ClusterBusyError as exc:
        record_conflict(exc.cluster, exc.message, actor=actor_name, actor_user_id=actor_user_id)
        raise


def change_primary(cluster: Cluster, *, user: User, primary_uid: str, actor: str = "") -> Cluster:
    """A reviewer picks the primary of an open review (or cross-location) cluster; audited.

    Automatic clusters refuse (``MergeRefused``): their primary always follows the rule, unless the
    rule's primary is blocked (consent the strategy cannot carry onto it, an unreachable member): then
    nobody could ever merge the cluster, so it goes to review (``cannot_carry``) with the person's choice.
    """
    actor_name, actor_user_id = _actor(user, actor)
    try:
        with transaction.atomic():
            locked = lock_cluster_nowait(cluster)
            if locked.status != Cluster.OPEN:
                raise ClusterBusyError(locked, busy_message(locked))
            sent_to_review = False
            if locked.auto_merge:
                if not plan_for(locked, member_records(locked)).blockers:
                    raise MergeRefused(
                        f"Cluster {locked.cluster_id} merges automatically; its primary follows the rule",
                        cluster=locked,
                    )
                _demote(locked, CANNOT_CARRY)
                sent_to_review = True
            uids = cluster_member_uids(locked)
            if primary_uid not in uids:
                raise MergeRefused(
                    f"{primary_uid} is not a member of cluster {locked.cluster_id}", cluster=locked
                )
            before = locked.primary_uid
            ReviewDecision.objects.create(
                decision=ReviewDecision.CHANGE_PRIMARY, cluster=locked, primary_uid=primary_uid,
                decided_by=person_of(user),
            )  # fmt: skip
            locked.chosen_primary_uid = primary_uid
            locked.save(update_fields=["chosen_primary_uid", "kind", "auto_merge", "reasons", "updated_at"])
            audit.record(
                "cluster.primary_changed",
                actor=actor_name,
                actor_user_id=actor_user_id,
                cluster_ref=locked.cluster_id,
                location_uids=cluster_location_uids(locked),
                contact_uids=uids,
                natural_keys=locked.natural_keys,
                payload={"from": before, "to": primary_uid, "sentToReview": CANNOT_CARRY if sent_to_review else None},
            )
            return locked
    except ClusterBusyError as exc:
        record_conflict(exc.cluster, exc.message, actor=actor_name, actor_user_id=actor_user_id)
        raise


# --- every auto-mergeable cluster ---------------------------------------------------------------------------

_RUN_LOCK_ID = 1


Progress = Callable[[int, int, MergeOperation], None]


def merge_all_auto(
    *,
    actor: str = "cli",
    dry_run: bool = False,
    client: PodiumClient | None = None,
    user: User = None,
    progress: Progress | None = None,
    queue: bool = False,
) -> list[MergeOperation | dict[str, Any]]:
    """Merge every open auto-mergeable cluster, inline, as one batch; or with ``dry_run`` only plan them.

    ``queue`` hands the merges to the workers instead (``dedup.workqueue``) and returns the operations
    as they were created (pending).

    ``user`` is the person who decided it (the audit names them); only clusters they may act on are
    merged. ``progress(done, total, operation)`` is called as each operation ends. Returns the
    operations (as they ended) or, for a dry run, each cluster's plan (``describe_plan``). Clusters that
    cannot start (busy, stale, restore loop, a loss or a blocker) are audited and skipped; the ones
    with a loss or a blocker go to review. A second run while one is in progress is refused
    (``MergeRefused``, ``ERR_DEDUP_014``) naming it.
    """
    clusters = list(Cluster.objects.filter(status=Cluster.OPEN, auto_merge=True).order_by("pk"))
    if dry_run:
        return [describe_plan(c) for c in clusters]
    person = person_of(user)
    if person is not None:
        from dedup import access

        clusters = [c for c in clusters if access.can_act_on_cluster(person, c, "dedup.approve_cluster")]
    with one_run(actor):
        return _merge_all_auto(clusters, actor=actor, client=client, user=user, progress=progress, queue=queue)


@contextmanager
def one_run(actor: str) -> Iterator[None]:
    """One ``merge --all-auto`` run at a time (``ERR_DEDUP_014``); a second is refused naming the holder."""
    holds = Holds()
    try:
        if not holds.acquire("run", _RUN_LOCK_ID):
            holder = (
                AuditEvent.objects.filter(event_type="merge.run_started")
                .order_by("-id")
                .values_list("actor", "created_at")
                .first()
            )
            named = (
                f"{describe_actor(holder[0])} since {holder[1]:%Y-%m-%d %H:%M:%S} UTC"
                if holder
                else "another run"
            )
            raise MergeRefused(
                f"{ERR_CONCURRENT} concurrent_run: a merge of every auto-mergeable cluster is already running "
                f"({named}); try again when it finishes",
                code=ERR_CONCURRENT,
            )
        audit.record("merge.run_started", actor=f"worker:{actor}", payload={"scope": "all-auto"})
        yield
    finally:
        holds.release_all()


def _merge_all_auto(
    clusters: list[Cluster],
    *,
    actor: str,
    client: PodiumClient | None,
    user: User,
    progress: Progress | None,
    queue: bool = False,
) -> list[MergeOperation | dict[str, Any]]:
    actor_name, actor_user_id = _actor(user) if person_of(user) is not None else (f"worker:{actor}", None)
    batch = MergeBatch.objects.create(
        label=f"merge --all-auto {timezone.now():%Y-%m-%d %H:%M}", requested_by=person_of(user)
    )
    operations: list[MergeOperation] = []
    refused: list[dict[str, str]] = []
    for cluster in clusters:
        try:
            with transaction.atomic():
                operations.append(
                    start_operation(
                        cluster,
                        user=user,
                        actor=actor_name,
                        actor_user_id=actor_user_id,
                        primary_uid=None,
                        batch=batch,
                        automatic=True,
                    )
                )
        except ClusterBusyError as exc:
            record_conflict(exc.cluster, exc.message, actor=actor_name, actor_user_id=actor_user_id)
            refused.append({"clusterId": cluster.cluster_id, "message": exc.message})
        except MergeRefused as exc:
            settle_refusal(exc)
            refused.append({"clusterId": cluster.cluster_id, "message": exc.message})
    audit.record(
        "merge.batch",
        actor=actor_name,
        actor_user_id=actor_user_id,
        payload={"batch": batch.pk, "label": batch.label, "clusters": len(clusters), "refused": refused},
    )
    if queue:
        for operation in operations:
            if operation.state == MergeOperation.PENDING:
                enqueue(operation.pk)
        return list(operations)
    own = client is None
    shared = client or new_client()
    try:
        results: list[MergeOperation | dict[str, Any]] = []
        for done, operation in enumerate(operations, 1):
            if operation.state == MergeOperation.PENDING:
                operation = run_operation(operation.pk, worker=actor, client=shared)
            results.append(operation)
            if progress is not None:
                progress(done, len(operations), operation)
        return results
    finally:
        if own:
            shared.close()


__all__ = [
    "approve_cluster",
    "approve_many",
    "change_primary",
    "merge_all_auto",
    "person_of",
    "reject_cluster",
    "start_operation",
]
