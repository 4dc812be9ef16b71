"""One cluster's merge as a durable state machine, so nothing is lost or done twice.

The plan is committed with the operation in state ``pending``; from there each state is committed
before the external call it precedes::

    pending ──re-read members, snapshot──▶ merging ──(strategy)──▶ merged ──(strategy)──▶ patched

Native (Podium's ``merge`` capability, ``dedup.merge.native``): ``merging`` calls merge; ``merged``
writes back what only the duplicates held and verifies it. Consolidate (the published API,
``dedup.merge.consolidate``): ``merging`` writes onto the primary and moves the conversations, then
verifies; ``merged`` retires each duplicate with ``DELETE``, its snapshot kept. Side exits:
``failed_permanent`` and ``re_index_required`` (terminal), ``compliance_failed`` and ``conflict_pending``
(retried by the worker loop), ``unreconcilable`` (a person decides). A crash anywhere leaves a state the
next run continues from: every step is idempotent against Podium's live records (write-backs add only
what is missing; a deletion is checked before it is repeated).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any

from django.db import OperationalError, transaction
from django.db.models import Q
from django.utils import timezone

from dedup import audit
from dedup.merge.common import (
    ERR_DRIFT,
    ERR_NOT_FOUND,
    PAST_PENDING,
    TIMINGS,
    ClusterBusyError,
    backoff,
    crash_point,
    default_worker_name,
    iso,
    logger,
    new_client,
    parse_iso,
)
from dedup.merge.locks import Holds, lock_unavailable, overlapping_live_operations, record_conflict
from dedup.merge.readback import snapshot_of
from dedup.models import Cluster, Contact, MergeOperation
from dedup.podium import Unaddressable, identifier_of, indexed_contact_as_podium
from dedup.survivorship import MergePlan
from podium_client import Contact as PodiumContact
from podium_client import NotFoundError, PodiumClient, PodiumError, RateLimitError, UnaddressableContact

#: The states a cluster takes while its operation is in each state.
CLUSTER_STATUS_FOR = {
    MergeOperation.PENDING: Cluster.APPROVED,
    MergeOperation.MERGING: Cluster.MERGING,
    MergeOperation.MERGED: Cluster.MERGING,
    MergeOperation.COMPLIANCE_FAILED: Cluster.MERGING,
    MergeOperation.CONFLICT_PENDING: Cluster.MERGING,
    MergeOperation.UNRECONCILABLE: Cluster.MERGING,
    MergeOperation.PATCHED: Cluster.MERGED,
    MergeOperation.FAILED_PERMANENT: Cluster.FAILED,
    # Superseded: the proposal no longer describes Podium; the rescan re-detects it and reopens it with
    # fresh stamps when the same members still form a group (detection never touches failed clusters).
    MergeOperation.RE_INDEX_REQUIRED: Cluster.SUPERSEDED,
}


class _Busy(Exception):
    """Internal: a claim found the cluster or a contact held by someone else."""


class Runner:
    """Drives one claimed operation through its states, committing each before the call it precedes.

    The strategy modules do the Podium-facing work of each state; this class holds what they share:
    the typed plan, the members read in this run (so no contact is read twice), the transitions.
    """

    MAX_STEPS = 24

    def __init__(self, operation: MergeOperation, client: PodiumClient, worker: str) -> None:
        self.op = operation
        self.client = client
        self.worker = worker
        self.actor = f"worker:{worker}"
        self.cluster = operation.cluster
        self.plan = MergePlan.from_dict(operation.plan)
        self.native = operation.strategy == MergeOperation.NATIVE
        members = {
            c.uid: c
            for c in Contact.objects.filter(uid__in=list(self.plan.member_uids)).select_related("location")
        }
        self.rows = members
        self.location_uids = sorted({loc for c in members.values() for loc in c.all_location_uids})
        primary = members.get(operation.primary_uid)
        self.region = primary.location.country if primary is not None else "AU"
        # Contacts read from Podium during this run, by uid: the next step uses them instead of re-reading.
        self.live: dict[str, PodiumContact] = {}
        # Members whose identifier reached another contact in this run: {member uid: the uid reached}.
        self.moved: dict[str, str] = {}
        # True right after this run committed `merging` and before it called merge (native): only then
        # is the merge known not to have happened. Any other `merging` is reconciled first.
        self.fresh_merging = False
        # Merges sent again in this run after reconciliation found nothing merged: one, then backoff.
        self.merge_retries = 0
        self._requests_before = client.requests_sent

    # --- reading -----------------------------------------------------------------------------------

    def snapshot(self, uid: str) -> PodiumContact | None:
        """The member as it was read when the merge began (kept in the operation), if it was."""
        entry = self.op.member_snapshot.get(uid) or {}
        raw = entry.get("contact")
        return PodiumContact.from_wire(raw) if isinstance(raw, dict) else None

    def identifier(
        self, uid: str, *, avoid_conversations: Sequence[str] = (), extra_shared: Sequence[str] = ()
    ) -> str:
        """How to reach a member: its uid on a capability tenant, else an identifier only it answers to.

        Judged on the freshest picture held: what this run read, the snapshot, else the index.
        """
        if self.native:
            return uid
        contact = self.live.get(uid) or self.snapshot(uid)
        if contact is None:
            row = self.rows.get(uid)
            if row is None:
                raise UnaddressableContact(f"contact {uid} is not in the index", uid=uid)
            contact = indexed_contact_as_podium(row)
        return identifier_of(
            contact, self.region, avoid_conversations=avoid_conversations, extra_shared=extra_shared
        )

    def read(self, uid: str, identifier: str | None = None) -> PodiumContact | None | Unaddressable:
        """The live contact (remembered for this run), None when Podium answers 404."""
        try:
            identifier = identifier or self.identifier(uid)
        except UnaddressableContact as exc:
            return Unaddressable(uid, exc.message)
        try:
            contact = self.client.get_contact(identifier)
        except NotFoundError:
            return None
        if contact.uid != uid:
            # Its identifier (a conversation, an address) moved to another contact: it changed.
            self.moved[uid] = contact.uid
            return Unaddressable(uid, f"its identifier now reaches contact {contact.uid}")
        self.live[uid] = contact
        return contact

    # --- committing ---------------------------------------------------------------------------------

    def transition(
        self,
        to: str,
        *,
        event: str | None = None,
        error_code: str | None = None,
        last_error: str | None = None,
        payload: Mapping[str, Any] | None = None,
        evidence: Mapping[str, Any] | None = None,
        next_attempt_in: float | None = None,
        cluster_changes: Mapping[str, Any] | None = None,
        operation_changes: Mapping[str, Any] | None = None,
        in_transaction: Callable[[], None] | None = None,
    ) -> None:
        """Commit the new state, the cluster's status and the audit event together.

        No re-read is needed: this worker holds the operation (holder lock), and people change an
        operation only after taking that lock too. The audit event is appended last, so the audit
        chain's lock is held only for the append and the commit.
        """
        op = self.op
        before = op.state
        now = timezone.now()
        fields: dict[str, Any] = {"state": to, "updated_at": now}
        if error_code is not None:
            fields["error_code"] = error_code
        if last_error is not None:
            fields["last_error"] = last_error
        if evidence is not None:
            fields["evidence"] = dict(evidence)
        fields.update(operation_changes or {})
        fields["attempts"] = fields.get("attempts", op.attempts)
        sent = self.client.requests_sent
        fields["request_count"] = op.request_count + (sent - self._requests_before)
        self._requests_before = sent
        fields["next_attempt_at"] = (
            now + timedelta(seconds=next_attempt_in) if next_attempt_in is not None else None
        )
        if to in MergeOperation.TERMINAL_STATES:
            fields["finished_at"] = now
        cluster_fields = {"status": CLUSTER_STATUS_FOR[to], **(cluster_changes or {})}
        cluster_dirty = any(getattr(self.cluster, k) != v for k, v in cluster_fields.items())
        plan = MergePlan.from_dict(fields["plan"]) if "plan" in fields else self.plan
        with transaction.atomic():
            MergeOperation.objects.filter(pk=op.pk).update(**fields)
            if cluster_dirty:
                Cluster.objects.filter(pk=self.cluster.pk).update(**cluster_fields, updated_at=now)
            if in_transaction is not None:
                in_transaction()
            audit.record(
                event or f"merge.{to}",
                actor=self.actor,
                cluster_ref=self.cluster.cluster_id,
                operation_ref=op.pk,
                location_uids=self.location_uids,
                contact_uids=list(plan.member_uids),
                natural_keys=self.cluster.natural_keys,
                payload={
                    "from": before,
                    "to": to,
                    "strategy": op.strategy,
                    "primaryUid": plan.primary_uid,
                    "duplicateUids": list(plan.duplicate_uids),
                    "optOutsBefore": {u: f.to_wire() for u, f in sorted(plan.member_opt_outs.items())},
                    "optOutsUnion": plan.opt_outs.to_wire(),
                    "errorCode": fields.get("error_code", op.error_code),
                    "requests": fields["request_count"],
                    **(payload or {}),
                },
            )
        for name, value in fields.items():
            setattr(op, name, value)
        for name, value in cluster_fields.items():
            setattr(self.cluster, name, value)
        self.plan = plan
        level = logger.error if to == MergeOperation.COMPLIANCE_FAILED else logger.info
        level(
            "merge #%s cluster %s: %s -> %s%s", op.pk, self.cluster.cluster_id, before, to,
            f" ({op.error_code})" if op.error_code and to != MergeOperation.PATCHED else "",
        )  # fmt: skip

    def save_steps(self, **changes: Any) -> None:
        """Commit progress inside a state (an intent before the call it announces)."""
        steps = {**self.op.steps, **changes}
        MergeOperation.objects.filter(pk=self.op.pk).update(steps=steps, updated_at=timezone.now())
        self.op.steps = steps

    def defer(self, exc: PodiumError | None = None, *, why: str = "") -> None:
        """Podium is unavailable after the client's retries (``exc``), or keeps failing a step without
        applying it (``why``): keep the state, try again later with backoff."""
        attempts = self.op.attempts + 1
        delay = backoff(attempts, TIMINGS.retry_base, TIMINGS.retry_cap)
        if isinstance(exc, RateLimitError) and exc.retry_after:
            delay = max(delay, exc.retry_after)
        reason = type(exc).__name__ if exc is not None else "retry_later"
        self.transition(
            self.op.state,
            event="merge.deferred",
            last_error=f"{type(exc).__name__}: {exc}" if exc is not None else why,
            next_attempt_in=delay,
            operation_changes={"attempts": attempts},
            payload={"reason": reason, "retryInSeconds": round(delay, 3), **({"why": why} if why else {})},
        )
        logger.warning("merge #%s deferred %.1fs in %s: %s", self.op.pk, delay, self.op.state, reason)

    def fail(
        self,
        code: str,
        message: str,
        *,
        evidence: Mapping[str, Any] | None = None,
        cluster_changes: Mapping[str, Any] | None = None,
        payload: Mapping[str, Any] | None = None,
        re_evaluate: bool = False,
    ) -> None:
        """End the operation without merging; ``re_evaluate`` leaves the cluster for the next scan to judge."""
        if re_evaluate:
            cluster_changes = {"status": Cluster.SUPERSEDED, **(cluster_changes or {})}
        self.transition(
            MergeOperation.FAILED_PERMANENT, error_code=code, last_error=message, evidence=evidence,
            cluster_changes=cluster_changes, payload={"reason": message, **(payload or {})},
        )  # fmt: skip

    def primary_gone(self, evidence: Mapping[str, Any] | None = None) -> None:
        """Podium does not know the primary (or it is deleted): stop, and let the next scan judge the cluster."""
        uid = self.op.primary_uid
        self.fail(
            ERR_NOT_FOUND, f"{ERR_NOT_FOUND} contact_not_found: Podium does not know the primary {uid} (or it is "
            "deleted); skipped until the next scan", evidence=evidence, re_evaluate=True,
        )  # fmt: skip
        self.queue_rescan("contact_not_found", [uid])

    def back_to_review(
        self, code: str, message: str, reason: str, evidence: Mapping[str, Any] | None = None
    ) -> None:
        """Stop before anything irreversible; the cluster goes back to a person with ``reason`` named."""
        reasons = [r for r in self.cluster.reasons if r != "auto_merge_eligible"]
        self.fail(
            code, message, evidence=evidence,
            cluster_changes={
                "status": Cluster.OPEN, "kind": Cluster.CROSS if self.cluster.cross_location else Cluster.REVIEW,
                "auto_merge": False, "reasons": [*reasons, reason] if reason not in reasons else reasons,
            },
        )  # fmt: skip

    def re_index(self, drift: Mapping[str, Any]) -> None:
        message = (
            f"{ERR_DRIFT} updated_at_drift: {', '.join(sorted(drift))} changed in Podium since the cluster was "
            "indexed; merge aborted and the key queued for a rescan"
        )
        self.transition(
            MergeOperation.RE_INDEX_REQUIRED, error_code=ERR_DRIFT, last_error=message,
            evidence={"drift": dict(drift)}, payload={"drift": dict(drift)},
        )  # fmt: skip
        self.queue_rescan("updated_at_drift", sorted(drift))

    def queue_rescan(self, reason: str, contact_uids: Sequence[str]) -> None:
        from dedup.scanning import queue_rescan_of_keys

        queue_rescan_of_keys(
            list(self.cluster.natural_keys), reason, actor=self.actor, contact_uids=list(contact_uids)
        )

    def drifted(self, live: Mapping[str, PodiumContact | None]) -> dict[str, Any]:
        """Members whose ``updatedAt`` is not the one the decision was based on."""
        drift: dict[str, Any] = {}
        for uid, contact in live.items():
            basis = parse_iso((self.op.member_snapshot.get(uid) or {}).get("updatedAt"))
            if contact is None:
                drift[uid] = {"live": None}
            elif basis is None or contact.updated_at != basis or contact.is_hidden:
                drift[uid] = {
                    "basis": iso(basis),
                    "live": iso(contact.updated_at),
                    "hidden": contact.is_hidden,
                }
        return drift

    # --- the loop -------------------------------------------------------------------------------------

    def drive(self) -> None:
        """Advance the operation until it is terminal, waits for a retry, or needs a person."""
        from dedup.merge import consolidate, native

        strategy = native if self.native else consolidate
        for _ in range(self.MAX_STEPS):
            state = self.op.state
            try:
                if state == MergeOperation.PENDING:
                    go_on = self.pending()
                elif state in (MergeOperation.MERGING, MergeOperation.CONFLICT_PENDING):
                    go_on = strategy.merging(self)
                elif state == MergeOperation.MERGED:
                    go_on = strategy.merged(self)
                elif state == MergeOperation.COMPLIANCE_FAILED:
                    go_on = strategy.retry_write_back(self)
                else:
                    return
            except PodiumError as exc:
                # Each step handles the errors that mean something for its state; what reaches here
                # (429, 5xx, timeouts after the client's retries, auth, malformed reads) changed nothing.
                self.defer(exc)
                return
            if not go_on:
                return
        logger.error(
            "merge #%s did not settle after %d steps; left in %s", self.op.pk, self.MAX_STEPS, self.op.state
        )

    def pending(self) -> bool:
        """Re-read every member once: gone, unreachable or changed stops the merge; else snapshot them."""
        crash_point("pending")
        # A member the index already knows is retired (merged away by another operation since this one
        # was planned) is gone: no call needed to know that.
        retired = [uid for uid in self.plan.member_uids if uid in self.rows and not self.rows[uid].is_active]
        reads = {} if retired else {uid: self.read(uid) for uid in self.plan.member_uids}
        missing = sorted([*retired, *(uid for uid, c in reads.items() if c is None)])
        if missing:
            self.fail(
                ERR_NOT_FOUND,
                f"{ERR_NOT_FOUND} contact_not_found: {', '.join(missing)} unknown to Podium; skipped until the "
                "next scan re-evaluates the cluster",
                evidence={"missing": missing},
                re_evaluate=True,
            )
            self.queue_rescan("contact_not_found", missing)
            return False
        moved = {uid: {"reached": self.moved[uid]} for uid in reads if uid in self.moved}
        if moved:
            self.re_index(moved)
            return False
        unreachable = {uid: c.reason for uid, c in reads.items() if isinstance(c, Unaddressable)}
        if unreachable:
            self.back_to_review(
                "ERR_DEDUP_006",
                "Podium's published API cannot reach "
                + "; ".join(f"{u}: {r}" for u, r in sorted(unreachable.items())),
                "unreachable_member",
                evidence={"unreachable": unreachable},
            )
            return False
        live = {uid: c for uid, c in reads.items() if isinstance(c, PodiumContact)}
        drift = self.drifted(dict(live))
        if drift:
            self.re_index(drift)
            return False
        snapshot = {
            uid: {**(self.op.member_snapshot.get(uid) or {}), "contact": snapshot_of(contact)}
            for uid, contact in live.items()
        }
        self.transition(
            MergeOperation.MERGING,
            operation_changes={"member_snapshot": snapshot},
            payload={
                "reread": {uid: iso(c.updated_at) for uid, c in live.items()},
                "snapshotted": sorted(live),
            },
        )
        self.fresh_merging = True
        crash_point("merging")
        return True


# --- claiming and running -------------------------------------------------------------------------------


def run_operation(
    operation_id: int, *, worker: str = "", client: PodiumClient | None = None, force: bool = True
) -> MergeOperation:
    """Run (or continue) one merge operation: the django-q task body, also called inline.

    Claims the operation with ``select_for_update(skip_locked=True)`` plus holder locks on it and its
    contacts; an operation someone else holds is left alone, and one whose cluster or contacts are held
    by another merge or a person is deferred with the conflict audited. ``force=False`` also leaves
    alone an operation whose ``next_attempt_at`` is in the future. Returns the operation as it ended.
    """
    operation, _ran = _run(operation_id, worker=worker or default_worker_name(), client=client, force=force)
    return operation


def _run(
    operation_id: int, *, worker: str, client: PodiumClient | None, force: bool
) -> tuple[MergeOperation, bool]:
    holds = Holds()
    try:
        operation = _claim(operation_id, worker, holds, force)
        if operation is None:
            return MergeOperation.objects.get(pk=operation_id), False
        own = client is None
        active = client or new_client()
        try:
            runner = Runner(operation, active, worker)
            runner.drive()
        finally:
            if own:
                active.close()
    finally:
        holds.release_all()
    return runner.op, True


def _claim(operation_id: int, worker: str, holds: Holds, force: bool) -> MergeOperation | None:
    reason = ""
    try:
        with transaction.atomic():
            operation = (
                MergeOperation.objects.select_for_update(skip_locked=True)
                .filter(pk=operation_id, state__in=MergeOperation.RESUMABLE_STATES)
                .first()
            )
            if operation is None:
                return None
            if not force and operation.next_attempt_at and operation.next_attempt_at > timezone.now():
                return None
            if not holds.acquire("op", operation.pk):
                logger.info("merge #%s is held by another worker; %s leaves it", operation.pk, worker)
                return None
            try:
                cluster = Cluster.objects.select_for_update(nowait=True).get(pk=operation.cluster_id)
                contacts = list(
                    Contact.objects.select_for_update(nowait=True, of=("self",))
                    .filter(memberships__cluster=cluster)
                    .order_by("pk")
                )
            except OperationalError as exc:
                if not lock_unavailable(exc):
                    raise
                # The transaction is aborted now: build the message without touching the database.
                raise _Busy(
                    f"the cluster of merge #{operation.pk} or one of its contacts is being changed right now"
                ) from exc
            busy = holds.acquire_all("contact", [c.pk for c in contacts])
            if busy:
                uid = next(c.uid for c in contacts if c.pk == busy[0])
                raise _Busy(f"contact {uid} is held by another merge in progress")
            others = overlapping_live_operations(cluster, [c.pk for c in contacts], PAST_PENDING)
            if others:
                other = others[0]
                raise _Busy(
                    f"cluster {other.cluster.cluster_id} shares a contact and its merge (operation #{other.pk}, "
                    f"{other.state}) is not finished"
                )
            operation.cluster = cluster
            return operation
    except _Busy as exc:
        reason = str(exc)
    except OperationalError as exc:
        # The nested savepoint was rolled back; only a refused NOWAIT lock lands here.
        if not lock_unavailable(exc):
            raise
        reason = "a row of this merge is locked by someone else"
    holds.release_all()
    with transaction.atomic():
        operation = (
            MergeOperation.objects.select_for_update(of=("self",))
            .select_related("cluster")
            .get(pk=operation_id)
        )
        if operation.state in MergeOperation.RESUMABLE_STATES:
            operation.next_attempt_at = timezone.now() + timedelta(seconds=TIMINGS.busy_retry)
            operation.save(update_fields=["next_attempt_at", "updated_at"])
        record_conflict(
            operation.cluster, f"Merge #{operation.pk} deferred: {reason}", actor=f"worker:{worker}",
            actor_user_id=None, operation=operation, extra={"state": operation.state},
        )  # fmt: skip
    return None


def resume_operations(
    *, worker: str = "", due_only: bool = False, client: PodiumClient | None = None
) -> dict[str, int]:
    """Reconcile and continue every non-terminal operation against Podium's live records.

    Run by ``manage.py merge --resume`` and at every worker start (``due_only=False``: everything, now),
    and by the worker loop every minute (``due_only=True``: only operations whose ``next_attempt_at`` has
    come). Operations in ``unreconcilable`` wait for a person and are only counted. Returns counts of
    the states the processed operations ended in, plus ``busy`` (held by another worker) and
    ``waiting_for_person``.
    """
    worker = worker or default_worker_name()
    operations = MergeOperation.objects.filter(state__in=MergeOperation.RESUMABLE_STATES).order_by("pk")
    if due_only:
        operations = operations.filter(
            Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=timezone.now())
        )
    ids = list(operations.values_list("pk", flat=True))
    counts: Counter[str] = Counter()
    own = client is None and bool(ids)
    active = client or (new_client() if ids else None)
    try:
        for operation_id in ids:
            operation, ran = _run(operation_id, worker=worker, client=active, force=not due_only)
            counts[operation.state if ran else "busy"] += 1
    finally:
        if own and active is not None:
            active.close()
    counts["waiting_for_person"] = MergeOperation.objects.filter(state=MergeOperation.UNRECONCILABLE).count()
    if ids:
        logger.info("resumed %d merge operation(s): %s", len(ids), dict(counts))
    return dict(counts)


def run_due_operations() -> dict[str, int]:
    """The worker loop's periodic task: continue the operations whose retry time has come."""
    return resume_operations(due_only=True)


def resume_at_worker_start() -> dict[str, int]:
    """The task enqueued when a worker process starts: reconcile every non-terminal operation now."""
    return resume_operations(due_only=False)


def enqueue(operation_id: int) -> None:
    """Hand an operation to a django-q2 worker (``dedup.workqueue``: people's approvals go first)."""
    from dedup.workqueue import enqueue_operation

    enqueue_operation(operation_id)


__all__ = ["ClusterBusyError", "Runner", "enqueue", "resume_operations", "run_operation"]
