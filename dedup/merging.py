"""The merge orchestrator: one cluster's merge as a durable state machine, so nothing is lost or done twice.

A merge is planned before any call (the primary by the spec's rule, the opt-out union, the write-back)
and the plan is committed with the operation row in state ``pending``. From there each state is
committed before the external call it precedes::

    pending ──re-read members──▶ merging ──POST merge──▶ merged ──PATCH + read back──▶ patched

with the side exits ``failed_permanent``, ``re_index_required`` (terminal), ``compliance_failed`` and
``conflict_pending`` (retried by the worker loop), and ``unreconcilable`` (a person decides). A crash
anywhere leaves a state that ``resume_operations`` reconciles against Podium's live records: the
duplicates showing ``mergedIntoUid`` = primary prove the merge happened, so it continues at the
write-back; nothing merged and nothing touched means merging again is safe; anything else is
``ERR_DEDUP_012`` for a person, with the evidence.

Locking. Managers and workers lock the cluster row and the member contact rows with
``select_for_update`` (``nowait``: a busy row is a visible conflict, never a wait or a silent drop), and
workers claim operations with ``skip_locked``. Because every state must be committed before the call it
precedes, a worker's hold must outlive its transactions: it also takes a *holder lock* on the operation
and on each member contact (a PostgreSQL session advisory lock; an ``flock`` on SQLite). Holder locks
die with the worker's connection or process, so a SIGKILLed worker never leaves a stale hold, and
two workers never run the same operation or two operations sharing a contact.

The compliance invariant: nothing here ever sends an opt-out flag set to False. The PATCH after a merge
carries only the flags that are on in the union of the plan and the primary's live record.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import random
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import OperationalError, connection, transaction
from django.db.models import Count, Q
from django.utils import timezone

from dedup import audit
from dedup.models import (
    Cluster,
    ClusterMember,
    Contact,
    MergeBatch,
    MergeOperation,
    Policy,
    RestoreRecord,
    ReviewDecision,
)
from dedup.phones import normalize_phone
from dedup.podium import get_client
from dedup.records import OPT_OUT_WIRE_FIELDS, MemberRecord, OptOuts, attribute_key, normalize_email, tag_key
from dedup.survivorship import MergePlan, plan_merge, verify_primary
from podium_client import (
    ConflictError,
    InvalidDuplicateError,
    InvalidRequestError,
    MalformedResponse,
    MergeOutcomeUnknown,
    NotFoundError,
    PodiumClient,
    PodiumError,
    RateLimitError,
    UnprocessableError,
)
from podium_client import Contact as PodiumContact

logger = logging.getLogger("dedup.merging")

User = AbstractBaseUser | AnonymousUser | None

ERR_INVALID_DUPLICATE = "ERR_DEDUP_006"
ERR_NOT_FOUND = "ERR_DEDUP_007"
ERR_CONFLICT = "ERR_DEDUP_008"
ERR_CROSS_LOCATION = "ERR_DEDUP_009"
ERR_COMPLIANCE = "ERR_DEDUP_010"
ERR_DRIFT = "ERR_DEDUP_011"
ERR_UNRECONCILABLE = "ERR_DEDUP_012"
ERR_RESTORE_LOOP = "ERR_DEDUP_013"
ERR_CONCURRENT = "ERR_DEDUP_014"

#: A contact restored this many times is in a restore loop and is never merged again automatically.
RESTORE_LOOP_ROUNDS = 3

#: Operation states that mean the merge call may have happened (so the contacts are spoken for).
_PAST_PENDING = (
    MergeOperation.MERGING,
    MergeOperation.MERGED,
    MergeOperation.COMPLIANCE_FAILED,
    MergeOperation.CONFLICT_PENDING,
    MergeOperation.UNRECONCILABLE,
)
_LIVE_STATES = (MergeOperation.PENDING, *_PAST_PENDING)

#: The states a cluster takes while its operation is in each state.
_CLUSTER_STATUS_FOR = {
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

#: Extra keyword arguments for ``get_client`` when the orchestrator builds its own client (tests set
#: a tiny backoff here).
CLIENT_OPTIONS: dict[str, Any] = {}


class ClusterBusyError(Exception):
    """Someone else holds this cluster (a worker is merging it) or acted on it first.

    ``cluster`` is the cluster; the message names the holder or the earlier decision, e.g.
    "Cluster cl_… is being merged by worker host-12 — try again in a moment".
    """

    code = ERR_CONCURRENT

    def __init__(self, cluster: Cluster, message: str) -> None:
        super().__init__(message)
        self.cluster = cluster
        self.message = message


class MergeRefused(Exception):
    """The merge cannot be started: the cluster is not open, stale, or a member is in a restore loop.

    ``code`` is the product error code when one applies (``ERR_DEDUP_013`` for a restore loop);
    ``operation`` is the operation recorded for the refusal, when one was.
    """

    def __init__(
        self,
        message: str,
        *,
        cluster: Cluster | None = None,
        code: str = "",
        operation: MergeOperation | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.cluster = cluster
        self.code = code
        self.operation = operation


class _Busy(Exception):
    """Internal: a claim found the cluster or a contact held by someone else."""


def default_worker_name() -> str:
    """This process's name in the audit log: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _crash_point(name: str) -> None:
    # Test-only hook for the crash tests: inert unless DEDUP_CRASH_AT names this state boundary.
    if os.environ.get("DEDUP_CRASH_AT") == name:
        logger.warning("DEDUP_CRASH_AT=%s: killing this process with SIGKILL", name)
        os.kill(os.getpid(), signal.SIGKILL)


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="microseconds") if moment is not None else None


def _parse_iso(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _backoff(attempts: int, base: float, cap: float) -> float:
    # Full jitter, like the client's retries, so many deferred operations do not return in lockstep.
    return random.uniform(base / 2, min(cap, base * (2 ** max(attempts - 1, 0))))


def new_client() -> PodiumClient:
    """A Podium client for merge and restore work (``CLIENT_OPTIONS`` passed to ``get_client``)."""
    return get_client(**CLIENT_OPTIONS)


# --- holder locks ------------------------------------------------------------------------------------


class _Holds:
    """Locks a worker keeps for a whole merge, across its short transactions (see the module docstring)."""

    _NAMESPACES = {"op": 0x4D4F50, "contact": 0x4D4354, "run": 0x4D5255}

    def __init__(self) -> None:
        self._held: list[tuple[str, int, int | None]] = []

    @staticmethod
    def _lock_dir() -> Path:
        path = Path(settings.VAR_DIR) / "locks"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def acquire(self, kind: str, ident: int) -> bool:
        """Take the holder lock on (kind, ident) without waiting; False when someone else has it."""
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_try_advisory_lock(%s, %s)", [self._NAMESPACES[kind], ident % 2_147_483_647]
                )
                row = cursor.fetchone()
            if not (row and row[0]):
                return False
            self._held.append((kind, ident, None))
            return True
        fd = os.open(self._lock_dir() / f"{kind}-{ident}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._held.append((kind, ident, fd))
        return True

    def acquire_all(self, kind: str, idents: Sequence[int]) -> list[int]:
        """Take the holder locks on every ident; returns those someone else holds (empty: all taken)."""
        if connection.vendor != "postgresql":
            return [ident for ident in idents if not self.acquire(kind, ident)]
        if not idents:
            return []
        namespace = self._NAMESPACES[kind]
        with connection.cursor() as cursor:
            # One round trip for all of them; each lock taken is remembered, so release_all frees it.
            cursor.execute(
                "SELECT ident, pg_try_advisory_lock(%s, (ident %% 2147483647)::int) FROM unnest(%s::bigint[]) AS ident",
                [namespace, list(idents)],
            )
            rows = cursor.fetchall()
        busy = []
        for ident, taken in rows:
            if taken:
                self._held.append((kind, int(ident), None))
            else:
                busy.append(int(ident))
        return busy

    def release_all(self) -> None:
        """Release every holder lock taken (in one round trip on PostgreSQL)."""
        held, self._held = self._held, []
        namespaces: list[int] = []
        idents: list[int] = []
        for kind, ident, fd in reversed(held):
            if fd is not None:
                os.close(fd)  # closing the descriptor releases its flock
            else:
                namespaces.append(self._NAMESPACES[kind])
                idents.append(ident)
        if idents:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_advisory_unlock(ns::int, (ident %% 2147483647)::int) "
                    "FROM unnest(%s::bigint[], %s::bigint[]) AS held(ns, ident)",
                    [namespaces, idents],
                )


def _lock_unavailable(exc: OperationalError) -> bool:
    """True when a NOWAIT row lock was refused (PostgreSQL SQLSTATE 55P03), not some other failure."""
    cause = exc.__cause__
    return getattr(cause, "sqlstate", None) == "55P03" or "could not obtain lock" in str(exc)


# --- reading the cluster -------------------------------------------------------------------------------


def _member_uids(cluster: Cluster) -> list[str]:
    return sorted(ClusterMember.objects.filter(cluster=cluster).values_list("contact__uid", flat=True))


def _member_records(cluster: Cluster) -> list[MemberRecord]:
    from dedup.detection import member_records

    return list(member_records(cluster))


def _location_uids(cluster: Cluster) -> list[str]:
    return sorted(set(ClusterMember.objects.filter(cluster=cluster).values_list("location__uid", flat=True)))


def restore_counts(uids: Iterable[str]) -> dict[str, int]:
    """How many times each contact was restored after a merge (only contacts restored at least once)."""
    rows = RestoreRecord.objects.filter(contact_uid__in=list(uids)).values_list("contact_uid", flat=True)
    return dict(Counter(rows))


def _overlapping_live_operations(
    cluster: Cluster, contact_ids: Sequence[int], states: Sequence[str]
) -> list[MergeOperation]:
    """Operations in ``states`` of other clusters that share one of these contacts (at most one)."""
    sharing = ClusterMember.objects.filter(contact_id__in=list(contact_ids)).exclude(cluster_id=cluster.pk)
    ids = list(
        MergeOperation.objects.filter(state__in=states, cluster_id__in=sharing.values("cluster_id"))
        .values_list("pk", flat=True)[:1]
    )
    return list(MergeOperation.objects.filter(pk__in=ids).select_related("cluster")) if ids else []


def _last_actor(operation: MergeOperation) -> str:
    from dedup.models import AuditEvent

    actor = (
        AuditEvent.objects.filter(operation_ref=operation.pk).order_by("-id").values_list("actor", flat=True).first()
    )
    return actor or "system"


def _describe_actor(actor: str) -> str:
    kind, _, name = actor.partition(":")
    return f"{kind} {name}" if name else actor


def _busy_message(cluster: Cluster) -> str:
    """Why a person cannot act on this cluster now: who holds it, or who decided first."""
    live = cluster.operations.filter(state__in=_LIVE_STATES).order_by("-id").first()
    if live is not None and live.state != MergeOperation.PENDING:
        holder = _describe_actor(_last_actor(live))
        return (
            f"Cluster {cluster.cluster_id} is being merged by {holder} (operation #{live.pk}, {live.state}) "
            "— try again in a moment"
        )
    who = cluster.decided_by.get_username() if cluster.decided_by else None
    if who is None and live is not None:
        who = _describe_actor(_last_actor(live))
    when = cluster.decided_at.strftime("%Y-%m-%d %H:%M UTC") if cluster.decided_at else "an earlier moment"
    verb = {
        Cluster.APPROVED: "approved",
        Cluster.MERGING: "approved",
        Cluster.MERGED: "merged",
        Cluster.REJECTED: "rejected",
    }.get(cluster.status, cluster.status)
    by = f" by {who}" if who else ""
    return f"Cluster {cluster.cluster_id} was already {verb}{by} at {when}"


def _lock_cluster_nowait(cluster: Cluster) -> Cluster:
    """Lock the cluster row for this transaction, or raise ClusterBusyError when someone holds it."""
    try:
        with transaction.atomic():
            return Cluster.objects.select_for_update(nowait=True).get(pk=cluster.pk)
    except OperationalError as exc:
        if not _lock_unavailable(exc):
            raise
        raise ClusterBusyError(
            cluster, f"Cluster {cluster.cluster_id} is being changed by someone else right now — try again in a moment"
        ) from exc


def _lock_contacts_nowait(cluster: Cluster, uids: Sequence[str]) -> list[Contact]:
    try:
        with transaction.atomic():
            return list(Contact.objects.select_for_update(nowait=True).filter(uid__in=list(uids)).order_by("pk"))
    except OperationalError as exc:
        if not _lock_unavailable(exc):
            raise
        raise ClusterBusyError(
            cluster,
            f"A member of cluster {cluster.cluster_id} is being merged by someone else right now — try again in a moment",
        ) from exc


def _record_conflict(
    cluster: Cluster, message: str, *, actor: str, actor_user_id: int | None, operation: MergeOperation | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Make a lost race visible: an audit event naming what was refused and why."""
    audit.record(
        "merge.conflict",
        actor=actor,
        actor_user_id=actor_user_id,
        cluster_ref=cluster.cluster_id,
        operation_ref=operation.pk if operation else None,
        location_uids=_location_uids(cluster),
        contact_uids=_member_uids(cluster),
        natural_keys=cluster.natural_keys,
        payload={"code": ERR_CONCURRENT, "message": message, **(extra or {})},
    )
    logger.info("conflict on cluster %s: %s", cluster.cluster_id, message)


# --- planning --------------------------------------------------------------------------------------------


def _plan_for(cluster: Cluster, records: Sequence[MemberRecord]) -> MergePlan:
    chosen = cluster.chosen_primary_uid if (cluster.chosen_primary_uid and not cluster.auto_merge) else None
    try:
        return plan_merge(records, primary_uid=chosen)
    except ValueError as exc:
        raise MergeRefused(f"Cluster {cluster.cluster_id} cannot be planned: {exc}", cluster=cluster) from exc


def _snapshot(cluster: Cluster, records: Sequence[MemberRecord]) -> dict[str, Any]:
    """Per member: the ``updatedAt`` the decision was based on, and its opt-outs, for the drift check.

    The scored ``updatedAt`` when the cluster carries it (the proposal was judged on that version),
    else the indexed one.
    """
    scored = dict(
        ClusterMember.objects.filter(cluster=cluster).values_list("contact__uid", "updated_at_when_scored")
    )
    snap: dict[str, Any] = {}
    for r in records:
        basis = scored.get(r.uid) or r.updated_at
        snap[r.uid] = {"updatedAt": _iso(basis), "indexedUpdatedAt": _iso(r.updated_at), "optOuts": r.opt_outs.to_wire()}
    return snap


def _plan_payload(plan: MergePlan) -> dict[str, Any]:
    data = plan.to_dict()
    return {
        "primaryUid": data["primaryUid"],
        "duplicateUids": data["duplicateUids"],
        "chosenBy": data["chosenBy"],
        "optOutsBefore": data["memberOptOuts"],
        "optOutsUnion": data["optOuts"],
        "writeBack": data["writeBack"],
        "conflicts": data["conflicts"],
    }


def describe_plan(cluster: Cluster) -> dict[str, Any]:
    """The dry run of a cluster's merge: the plan and the exact API calls it would make, calling nothing."""
    records = _member_records(cluster)
    plan = _plan_for(cluster, records)
    data = plan.to_dict()
    loops = {uid: n for uid, n in restore_counts(plan.member_uids).items() if n >= RESTORE_LOOP_ROUNDS}
    calls: list[dict[str, Any]] = [{"call": "get_contact", "uid": uid, "why": "re-read: updatedAt drift check"}
                                   for uid in plan.member_uids]
    calls.append({"call": "merge", "primaryUid": plan.primary_uid, "body": {"duplicateUids": list(plan.duplicate_uids)}})
    calls.append({"call": "update_contact", "uid": plan.primary_uid,
                  "body": write_back_body(plan, {}, _region_of(plan.primary_uid)),
                  "note": "plus any value the primary holds live at that moment; opt-outs only ever turned on"})
    calls.append({"call": "get_contact", "uid": plan.primary_uid, "why": "read back and verify"})
    return {
        "clusterId": cluster.cluster_id,
        "status": cluster.status,
        "kind": cluster.kind,
        "autoMerge": cluster.auto_merge,
        "primaryUid": data["primaryUid"],
        "chosenBy": data["chosenBy"],
        "duplicateUids": data["duplicateUids"],
        "optOutsBefore": data["memberOptOuts"],
        "optOutUnion": data["optOuts"],
        "writeBack": data["writeBack"],
        "conflicts": data["conflicts"],
        "refused": ({"code": ERR_RESTORE_LOOP, "restoreCounts": loops} if loops else None),
        "calls": [] if loops else calls,
    }


def _region_of(uid: str) -> str:
    country = Contact.objects.filter(uid=uid).values_list("location__country", flat=True).first()
    return (country or Policy.current().default_region or "AU").upper()


# --- the write-back body (pure) -------------------------------------------------------------------------


def _phone_identity(identifier: str, region: str, phone_keys: Mapping[str, str]) -> str:
    if identifier in phone_keys:
        return "key:" + phone_keys[identifier]
    result = normalize_phone(identifier, region)
    if result.valid and result.e164:
        return "key:" + result.e164
    return "raw:" + "".join(ch for ch in identifier if ch.isdigit() or ch == "+")


def write_back_body(plan: MergePlan, live_primary: Mapping[str, Any], region: str = "AU") -> dict[str, Any]:
    """The PATCH body for the primary after the merge: the plan, without undoing what the primary holds live.

    ``live_primary`` is the primary as Podium holds it now (its wire dict; ``{}`` when unknown). Tags,
    channels and attributes are the plan's plus any the live primary has that the plan lacks (a PATCH
    replaces lists, so leaving them out would delete them). A name or address is only written when the
    live one is blank. Opt-outs: only flags that are on in the union of the plan and the live primary are
    sent, so this body can never turn an opt-out off, even one set after the plan was made.
    """
    wb = plan.write_back
    body: dict[str, Any] = {}
    live_name = str(live_primary.get("name") or "")
    if wb.get("name") and not live_name.strip():
        body["name"] = wb["name"]
    live_address = live_primary.get("address")
    if wb.get("address") and not (isinstance(live_address, str) and live_address.strip()):
        body["address"] = wb["address"]

    tags = [dict(t) for t in wb.get("tags", [])]
    seen_tags = {tag_key(t["label"]) for t in tags}
    for t in live_primary.get("tags") or []:
        label = str(t.get("label", "")) if isinstance(t, Mapping) else str(t)
        if label.strip() and tag_key(label) not in seen_tags:
            seen_tags.add(tag_key(label))
            tags.append({"label": label})
    body["tags"] = tags

    channels = [dict(c) for c in wb.get("channels", [])]
    seen_channels: set[str] = set()
    for c in channels:
        if c["type"] == "PHONE":
            seen_channels.add(_phone_identity(c["identifier"], region, plan.phone_keys))
        else:
            seen_channels.add("email:" + normalize_email(c["identifier"]))
    for c in live_primary.get("channels") or []:
        if not isinstance(c, Mapping) or not str(c.get("identifier") or "").strip():
            continue
        kind = str(c.get("type", "")).upper()
        identifier = str(c["identifier"])
        identity = (
            _phone_identity(identifier, region, plan.phone_keys) if kind == "PHONE"
            else "email:" + normalize_email(identifier)
        )
        if identity not in seen_channels:
            seen_channels.add(identity)
            channels.append({"type": kind, "identifier": identifier})
    body["channels"] = channels

    attributes = [dict(a) for a in wb.get("attributes", [])]
    labels = {attribute_key(a["label"]) for a in attributes}
    for a in live_primary.get("attributes") or []:
        if not isinstance(a, Mapping):
            continue
        label = str(a.get("label") or "")
        if label.strip() and attribute_key(label) not in labels:
            labels.add(attribute_key(label))
            attributes.append({"label": label, "value": a.get("value")})
    body["attributes"] = attributes

    union = plan.opt_outs.union(OptOuts.from_wire(live_primary))
    for name, value in union.to_wire().items():
        if value:
            body[name] = True
    return body


# --- starting a merge ---------------------------------------------------------------------------------


def _enqueue(operation_id: int) -> None:
    from django_q.tasks import async_task

    async_task("dedup.merging.run_operation", operation_id, task_name=f"merge-op-{operation_id}")


def _start_operation(
    cluster: Cluster,
    *,
    user: User,
    actor: str,
    actor_user_id: int | None,
    primary_uid: str | None,
    batch: MergeBatch | None,
    automatic: bool,
) -> MergeOperation:
    """Lock, check, record the decision, plan and commit the pending operation. Raises on refusal.

    Must run inside a transaction; the caller enqueues or runs the operation after commit.
    """
    locked = _lock_cluster_nowait(cluster)
    if locked.status != Cluster.OPEN:
        if locked.status in (Cluster.SUPERSEDED, Cluster.FAILED):
            raise MergeRefused(
                f"Cluster {locked.cluster_id} is {locked.status}; the next scan re-evaluates its contacts",
                cluster=locked,
            )
        raise ClusterBusyError(locked, _busy_message(locked))
    if primary_uid and locked.auto_merge:
        raise MergeRefused(
            f"Cluster {locked.cluster_id} merges automatically: its primary follows the rule "
            "(most fields, newest, lowest uid) and cannot be chosen",
            cluster=locked,
        )
    uids = _member_uids(locked)
    if primary_uid and primary_uid not in uids:
        raise MergeRefused(f"{primary_uid} is not a member of cluster {locked.cluster_id}", cluster=locked)
    contacts = _lock_contacts_nowait(locked, uids)
    inactive = [c.uid for c in contacts if not c.is_active]
    if inactive or len(contacts) < 2:
        raise MergeRefused(
            f"Cluster {locked.cluster_id} is stale: {', '.join(inactive) or 'a member'} is no longer live in the "
            "index; the next scan re-evaluates it",
            cluster=locked,
        )
    others = _overlapping_live_operations(locked, [c.pk for c in contacts], _LIVE_STATES)
    if others:
        other = others[0]
        raise ClusterBusyError(
            locked,
            f"Cluster {locked.cluster_id} shares a contact with cluster {other.cluster.cluster_id}, "
            f"whose merge (operation #{other.pk}, {other.state}) is not finished — try again once it is",
        )

    now = timezone.now()
    if primary_uid and primary_uid != locked.chosen_primary_uid:
        ReviewDecision.objects.create(
            decision=ReviewDecision.CHANGE_PRIMARY, cluster=locked, primary_uid=primary_uid, decided_by=person_of(user)
        )
        locked.chosen_primary_uid = primary_uid
    records = [r for r in _member_records(locked) if r.uid in set(uids)]
    plan = _plan_for(locked, records)
    loops = {uid: n for uid, n in restore_counts(plan.member_uids).items() if n >= RESTORE_LOOP_ROUNDS}

    operation = MergeOperation.objects.create(
        cluster=locked,
        batch=batch,
        state=MergeOperation.PENDING,
        primary_uid=plan.primary_uid,
        duplicate_uids=list(plan.duplicate_uids),
        plan=plan.to_dict(),
        member_snapshot=_snapshot(locked, records),
        requested_by=person_of(user),
        automatic=automatic,
    )
    if person_of(user) is not None:
        ReviewDecision.objects.create(
            decision=ReviewDecision.APPROVE, cluster=locked, primary_uid=plan.primary_uid,
            decided_by=person_of(user), decided_at=now,
        )
    common = {
        "actor": actor,
        "actor_user_id": actor_user_id,
        "cluster_ref": locked.cluster_id,
        "operation_ref": operation.pk,
        "location_uids": _location_uids(locked),
        "contact_uids": uids,
        "natural_keys": locked.natural_keys,
    }
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
        locked.status = Cluster.OPEN
        locked.kind = Cluster.REVIEW if locked.kind == Cluster.AUTO else locked.kind
        locked.auto_merge = False
        locked.save(update_fields=["status", "kind", "auto_merge", "chosen_primary_uid", "updated_at"])
        audit.record(
            "merge.refused",
            **common,
            payload={"code": ERR_RESTORE_LOOP, "message": message, "restoreCounts": loops, **_plan_payload(plan)},
        )
        logger.warning("merge #%s refused: %s", operation.pk, message)
        return operation

    locked.status = Cluster.APPROVED
    locked.decided_by = person_of(user)
    locked.decided_at = now
    locked.save(update_fields=["status", "decided_by", "decided_at", "chosen_primary_uid", "updated_at"])
    audit.record(
        "merge.planned",
        **common,
        payload={"from": None, "to": MergeOperation.PENDING, "automatic": automatic,
                 "batch": batch.pk if batch else None, **_plan_payload(plan)},
    )
    logger.info(
        "merge #%s planned for cluster %s: primary %s, %d duplicate(s), by %s",
        operation.pk, locked.cluster_id, plan.primary_uid, len(plan.duplicate_uids), actor,
    )
    return operation


def person_of(user: User) -> Any:
    """The user when it is a signed-in person, else None (the CLI and workers act as no one)."""
    return user if user is not None and getattr(user, "is_authenticated", False) else None


def _actor(user: User, actor: str = "") -> tuple[str, int | None]:
    if person_of(user) is not None:
        return audit.actor_for(user)
    return audit.actor_for(None, actor or "cli")


def approve_cluster(
    cluster: Cluster,
    *,
    user: User,
    primary_uid: str | None = None,
    batch: MergeBatch | None = None,
    run_async: bool = True,
    actor: str = "",
) -> MergeOperation:
    """Approve a cluster for merging: plan it, commit the pending operation, and start the merge.

    Locks the cluster (``ClusterBusyError`` when a worker or another person holds it, or when it was
    already decided) and its member contacts; the cluster must be open (``MergeRefused`` otherwise). A
    chosen ``primary_uid`` is only taken for review clusters. The plan is committed with the operation
    before any call to Podium. ``run_async`` enqueues the merge for a worker; otherwise it runs here,
    after the commit, and the returned operation shows where it ended. ``actor`` names a non-person
    caller (the CLI) in the audit log when ``user`` is None.

    A member restored after a merge three times (``ERR_DEDUP_013``) is not merged again: the operation is
    recorded as refused, the cluster goes to review, and ``RestoreLoopError`` is raised.
    """
    actor_name, actor_user_id = _actor(user, actor)
    try:
        with transaction.atomic():
            operation = _start_operation(
                cluster, user=user, actor=actor_name, actor_user_id=actor_user_id, primary_uid=primary_uid,
                batch=batch, automatic=person_of(user) is None and cluster.auto_merge,
            )
            if operation.state == MergeOperation.PENDING and run_async:
                op_id = operation.pk
                transaction.on_commit(lambda: _enqueue(op_id))
    except ClusterBusyError as exc:
        _record_conflict(exc.cluster, exc.message, actor=actor_name, actor_user_id=actor_user_id)
        raise
    if operation.state == MergeOperation.FAILED_PERMANENT and operation.error_code == ERR_RESTORE_LOOP:
        from dedup.restoring import RestoreLoopError

        raise RestoreLoopError(operation.last_error, cluster=operation.cluster, operation=operation)
    if not run_async:
        return run_operation(operation.pk, worker=actor or default_worker_name())
    return operation


def approve_many(clusters: Iterable[Cluster], *, user: User, actor: str = "") -> MergeBatch:
    """Approve many clusters as one batch (bulk approve of auto clusters) and enqueue their merges.

    A cluster that cannot be approved (busy, already decided, stale, restore loop) is skipped and
    reported, never fatal: the reasons are audited with the batch and listed by ``batch_progress``
    under ``refused``. Returns the batch (also carrying ``refused`` as an attribute for the caller).
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
    """Reject a cluster as different people: remembered per member pair so it is not proposed again.

    Records ``ReviewDecision(reject)`` and one ``different_people`` decision per member pair (uids
    sorted; idempotent), sets the cluster rejected, and audits it. ``ClusterBusyError`` when a worker
    holds the cluster or it is no longer open.
    """
    actor_name, actor_user_id = _actor(user, actor)
    try:
        with transaction.atomic():
            locked = _lock_cluster_nowait(cluster)
            if locked.status != Cluster.OPEN:
                raise ClusterBusyError(locked, _busy_message(locked))
            uids = _member_uids(locked)
            now = timezone.now()
            person = person_of(user)
            ReviewDecision.objects.create(
                decision=ReviewDecision.REJECT, cluster=locked, note=note, decided_by=person, decided_at=now
            )
            pairs = []
            for i, a in enumerate(uids):
                for b in uids[i + 1:]:
                    uid_a, uid_b = ReviewDecision.sorted_pair(a, b)
                    ReviewDecision.objects.get_or_create(
                        decision=ReviewDecision.DIFFERENT_PEOPLE, uid_a=uid_a, uid_b=uid_b,
                        defaults={"cluster": locked, "decided_by": person, "decided_at": now, "note": note},
                    )
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
                location_uids=_location_uids(locked),
                contact_uids=uids,
                natural_keys=locked.natural_keys,
                payload={"from": Cluster.OPEN, "to": Cluster.REJECTED, "note": note, "differentPeople": pairs},
            )
    except ClusterBusyError as exc:
        _record_conflict(exc.cluster, exc.message, actor=actor_name, actor_user_id=actor_user_id)
        raise


def change_primary(cluster: Cluster, *, user: User, primary_uid: str, actor: str = "") -> Cluster:
    """A reviewer picks the primary of an open review (or cross-location) cluster; audited.

    Automatic clusters refuse (``MergeRefused``): their primary always follows the rule.
    """
    actor_name, actor_user_id = _actor(user, actor)
    try:
        with transaction.atomic():
            locked = _lock_cluster_nowait(cluster)
            if locked.status != Cluster.OPEN:
                raise ClusterBusyError(locked, _busy_message(locked))
            if locked.auto_merge:
                raise MergeRefused(
                    f"Cluster {locked.cluster_id} merges automatically; its primary follows the rule", cluster=locked
                )
            uids = _member_uids(locked)
            if primary_uid not in uids:
                raise MergeRefused(f"{primary_uid} is not a member of cluster {locked.cluster_id}", cluster=locked)
            before = locked.primary_uid
            ReviewDecision.objects.create(
                decision=ReviewDecision.CHANGE_PRIMARY, cluster=locked, primary_uid=primary_uid,
                decided_by=person_of(user),
            )
            locked.chosen_primary_uid = primary_uid
            locked.save(update_fields=["chosen_primary_uid", "updated_at"])
            audit.record(
                "cluster.primary_changed",
                actor=actor_name,
                actor_user_id=actor_user_id,
                cluster_ref=locked.cluster_id,
                location_uids=_location_uids(locked),
                contact_uids=uids,
                natural_keys=locked.natural_keys,
                payload={"from": before, "to": primary_uid},
            )
            return locked
    except ClusterBusyError as exc:
        _record_conflict(exc.cluster, exc.message, actor=actor_name, actor_user_id=actor_user_id)
        raise


def merge_all_auto(
    *,
    actor: str = "cli",
    dry_run: bool = False,
    client: PodiumClient | None = None,
) -> list[MergeOperation | dict[str, Any]]:
    """Merge every open auto-mergeable cluster, inline, as one batch; or with ``dry_run`` only plan them.

    Returns the operations (as they ended) or, for a dry run, each cluster's plan dict
    (``describe_plan``). Clusters that cannot start (busy, stale, restore loop) are audited and skipped.
    A second run while one is in progress is refused (``MergeRefused``, ``ERR_DEDUP_014``) naming it.
    """
    clusters = list(Cluster.objects.filter(status=Cluster.OPEN, auto_merge=True).order_by("pk"))
    if dry_run:
        return [describe_plan(c) for c in clusters]
    with _one_run(actor):
        return _merge_all_auto(clusters, actor=actor, client=client)


_RUN_LOCK_ID = 1


@contextmanager
def _one_run(actor: str) -> Iterator[None]:
    """One ``merge --all-auto`` run at a time (``ERR_DEDUP_014``); a second is refused naming the holder."""
    from dedup.models import AuditEvent

    holds = _Holds()
    try:
        if not holds.acquire("run", _RUN_LOCK_ID):
            holder = (
                AuditEvent.objects.filter(event_type="merge.run_started").order_by("-id")
                .values_list("actor", "created_at").first()
            )
            named = f"{_describe_actor(holder[0])} since {holder[1]:%Y-%m-%d %H:%M:%S} UTC" if holder else "another run"
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
    clusters: list[Cluster], *, actor: str, client: PodiumClient | None
) -> list[MergeOperation | dict[str, Any]]:
    batch = MergeBatch.objects.create(label=f"merge --all-auto {timezone.now():%Y-%m-%d %H:%M}")
    operations: list[MergeOperation] = []
    refused: list[dict[str, str]] = []
    for cluster in clusters:
        try:
            with transaction.atomic():
                operations.append(
                    _start_operation(
                        cluster, user=None, actor=f"worker:{actor}", actor_user_id=None, primary_uid=None,
                        batch=batch, automatic=True,
                    )
                )
        except ClusterBusyError as exc:
            _record_conflict(exc.cluster, exc.message, actor=f"worker:{actor}", actor_user_id=None)
            refused.append({"clusterId": cluster.cluster_id, "message": exc.message})
        except MergeRefused as exc:
            refused.append({"clusterId": cluster.cluster_id, "message": exc.message})
    audit.record(
        "merge.batch",
        actor=f"worker:{actor}",
        payload={"batch": batch.pk, "label": batch.label, "clusters": len(clusters), "refused": refused},
    )
    own = client is None
    shared = client or new_client()
    try:
        results: list[MergeOperation | dict[str, Any]] = []
        for operation in operations:
            if operation.state == MergeOperation.PENDING:
                results.append(run_operation(operation.pk, worker=actor, client=shared))
            else:
                results.append(operation)
        return results
    finally:
        if own:
            shared.close()


# --- running a merge -----------------------------------------------------------------------------------


def run_operation(
    operation_id: int,
    *,
    worker: str = "",
    client: PodiumClient | None = None,
    force: bool = True,
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
    holds = _Holds()
    try:
        operation = _claim(operation_id, worker, holds, force)
        if operation is None:
            return MergeOperation.objects.get(pk=operation_id), False
        own = client is None
        active = client or new_client()
        try:
            runner = _Runner(operation, active, worker)
            runner.drive()
        finally:
            if own:
                active.close()
    finally:
        holds.release_all()
    return runner.op, True


def _claim(operation_id: int, worker: str, holds: _Holds, force: bool) -> MergeOperation | None:
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
                    .select_related("location")
                    .order_by("pk")
                )
            except OperationalError as exc:
                if not _lock_unavailable(exc):
                    raise
                # The transaction is aborted now: build the message without touching the database.
                raise _Busy(f"the cluster of merge #{operation.pk} or one of its contacts is being changed right now") from exc
            busy = holds.acquire_all("contact", [c.pk for c in contacts])
            if busy:
                uid = next(c.uid for c in contacts if c.pk == busy[0])
                raise _Busy(f"contact {uid} is held by another merge in progress")
            others = _overlapping_live_operations(cluster, [c.pk for c in contacts], _PAST_PENDING)
            if others:
                other = others[0]
                raise _Busy(
                    f"cluster {other.cluster.cluster_id} shares a contact and its merge (operation #{other.pk}, "
                    f"{other.state}) is not finished"
                )
            operation.cluster = cluster
            # What the runner needs about the members, read here under the lock instead of again later.
            operation._member_locations = {c.uid: (c.location.uid, c.location.country) for c in contacts}  # type: ignore[attr-defined]
            return operation
    except _Busy as exc:
        reason = str(exc)
    except OperationalError as exc:
        # The nested savepoint was rolled back; only a refused NOWAIT lock lands here.
        if not _lock_unavailable(exc):
            raise
        reason = "a row of this merge is locked by someone else"
    holds.release_all()
    with transaction.atomic():
        operation = MergeOperation.objects.select_for_update(of=("self",)).select_related("cluster").get(pk=operation_id)
        if operation.state in MergeOperation.RESUMABLE_STATES:
            operation.next_attempt_at = timezone.now() + timedelta(seconds=TIMINGS.busy_retry)
            operation.save(update_fields=["next_attempt_at", "updated_at"])
        _record_conflict(
            operation.cluster, f"Merge #{operation.pk} deferred: {reason}", actor=f"worker:{worker}",
            actor_user_id=None, operation=operation, extra={"state": operation.state},
        )
    return None


class _Runner:
    """Drives one claimed operation through its states, committing each before the call it precedes."""

    MAX_STEPS = 24

    def __init__(self, operation: MergeOperation, client: PodiumClient, worker: str) -> None:
        self.op = operation
        self.client = client
        self.worker = worker
        self.actor = f"worker:{worker}"
        self.cluster = operation.cluster
        member_locations: dict[str, tuple[str, str]] = getattr(operation, "_member_locations", {})
        self.location_uids = (
            sorted({loc for loc, _country in member_locations.values()}) or _location_uids(self.cluster)
        )
        self.plan = MergePlan.from_dict(operation.plan)
        self.request_ids: list[str] = []
        # True right after this run committed `merging` and before it called merge: only then is the
        # merge's outcome known not to have happened. Any other `merging` is reconciled first.
        self.fresh_merging = False
        self.primary_after_merge: PodiumContact | None = None
        primary_location = member_locations.get(operation.primary_uid)
        self._region: str | None = primary_location[1].upper() if primary_location and primary_location[1] else None

    @property
    def region(self) -> str:
        """The primary's location country, the default region for its national-format numbers."""
        if self._region is None:
            self._region = _region_of(self.op.primary_uid)
        return self._region

    # --- plumbing ---------------------------------------------------------------------------------

    def _rid(self, value: PodiumContact | PodiumError | None) -> None:
        request_id = getattr(value, "request_id", None)
        if request_id:
            self.request_ids.append(request_id)

    def _get(self, uid: str) -> PodiumContact | None:
        """The live contact, or None when Podium does not know it (404)."""
        try:
            contact = self.client.get_contact(uid)
        except NotFoundError as exc:
            self._rid(exc)
            return None
        self._rid(contact)
        return contact

    def _transition(
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
        after_commit_in_tx: Callable[[list[str]], None] | None = None,
    ) -> None:
        """Commit the new state, the cluster's status and the audit event together.

        No re-read is needed: this worker holds the operation (holder lock), and people change an
        operation only after taking that lock too. The audit event is appended last, so the audit chain's
        lock is held only for the append and the commit, and workers serialize on as little as possible.
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
        fields["request_ids"] = [*op.request_ids, *self.request_ids]
        fields["next_attempt_at"] = now + timedelta(seconds=next_attempt_in) if next_attempt_in is not None else None
        if to in MergeOperation.TERMINAL_STATES:
            fields["finished_at"] = now
        cluster_fields = {"status": _CLUSTER_STATUS_FOR[to], **(cluster_changes or {})}
        cluster_dirty = any(getattr(self.cluster, k) != v for k, v in cluster_fields.items())
        plan = MergePlan.from_dict(fields.get("plan", op.plan))
        duplicate_uids = list(fields.get("duplicate_uids", op.duplicate_uids))
        with transaction.atomic():
            MergeOperation.objects.filter(pk=op.pk).update(**fields)
            if cluster_dirty:
                Cluster.objects.filter(pk=self.cluster.pk).update(**cluster_fields, updated_at=now)
            if to == MergeOperation.MERGED:
                # Merged away in Podium from now on: never again a member of a proposal, whatever
                # happens to the write-back (a later scan fills in Podium's exact timestamps).
                Contact.objects.filter(uid__in=duplicate_uids).update(
                    deleted_at=now, merged_into_uid=op.primary_uid, indexed_at=now
                )
            if after_commit_in_tx is not None:
                after_commit_in_tx(duplicate_uids)
            audit.record(
                event or f"merge.{to}",
                actor=self.actor,
                cluster_ref=self.cluster.cluster_id,
                operation_ref=op.pk,
                location_uids=self.location_uids,
                contact_uids=[op.primary_uid, *duplicate_uids],
                natural_keys=self.cluster.natural_keys,
                payload={
                    "from": before,
                    "to": to,
                    "primaryUid": op.primary_uid,
                    "duplicateUids": duplicate_uids,
                    "optOutsBefore": {u: f.to_wire() for u, f in sorted(plan.member_opt_outs.items())},
                    "optOutsUnion": plan.opt_outs.to_wire(),
                    "requestIds": list(self.request_ids),
                    "errorCode": fields.get("error_code", op.error_code),
                    **(payload or {}),
                },
            )
        for name, value in fields.items():
            setattr(op, name, value)
        for name, value in cluster_fields.items():
            setattr(self.cluster, name, value)
        self.plan = plan
        self.request_ids = []
        level = logging.ERROR if to == MergeOperation.COMPLIANCE_FAILED else logging.INFO
        logger.log(
            level, "merge #%s cluster %s: %s -> %s%s", op.pk, self.cluster.cluster_id, before, to,
            f" ({op.error_code})" if op.error_code and to != MergeOperation.PATCHED else "",
        )

    def _queue_rescan(self, reason: str, contact_uids: Sequence[str]) -> None:
        from dedup.scanning import queue_rescan_of_keys

        queue_rescan_of_keys(list(self.cluster.natural_keys), reason, actor=self.actor, contact_uids=list(contact_uids))

    def _snapshot_time(self, uid: str) -> datetime | None:
        entry = self.op.member_snapshot.get(uid) or {}
        return _parse_iso(entry.get("updatedAt"))

    def _drifted(self, live: Mapping[str, PodiumContact | None]) -> dict[str, Any]:
        drift: dict[str, Any] = {}
        for uid, contact in live.items():
            if contact is None:
                drift[uid] = {"live": None}
                continue
            basis = self._snapshot_time(uid)
            if basis is None or contact.updated_at != basis or contact.deleted_at or contact.merged_into_uid:
                drift[uid] = {
                    "basis": _iso(basis),
                    "live": _iso(contact.updated_at),
                    "deletedAt": _iso(contact.deleted_at),
                    "mergedIntoUid": contact.merged_into_uid,
                }
        return drift

    @staticmethod
    def _summary(contact: PodiumContact | None) -> dict[str, Any] | None:
        if contact is None:
            return None
        return {
            "updatedAt": _iso(contact.updated_at),
            "deletedAt": _iso(contact.deleted_at),
            "mergedIntoUid": contact.merged_into_uid,
            "optOuts": {
                "marketingOptOut": contact.marketing_opt_out,
                "smsOptOut": contact.sms_opt_out,
                "emailOptOut": contact.email_opt_out,
            },
            "requestId": contact.request_id,
        }

    # --- the loop -----------------------------------------------------------------------------------

    def drive(self) -> None:
        """Advance the operation until it is terminal, waits for a retry, or needs a person."""
        for _ in range(self.MAX_STEPS):
            state = self.op.state
            try:
                if state == MergeOperation.PENDING:
                    go_on = self._pending()
                elif state in (MergeOperation.MERGING, MergeOperation.CONFLICT_PENDING):
                    go_on = self._merging()
                elif state in (MergeOperation.MERGED, MergeOperation.COMPLIANCE_FAILED):
                    go_on = self._write_back()
                else:
                    return
            except PodiumError as exc:
                # Each step handles the errors that mean something for its state; what reaches here
                # (429, 5xx, timeouts after the client's retries, auth, malformed reads) changed nothing.
                self._defer(exc)
                return
            if not go_on:
                return
        logger.error("merge #%s did not settle after %d steps; left in %s", self.op.pk, self.MAX_STEPS, self.op.state)

    def _defer(self, exc: PodiumError) -> None:
        """Podium is unavailable after the client's retries: keep the state, try again later."""
        self._rid(exc)
        attempts = self.op.attempts + 1
        delay = _backoff(attempts, TIMINGS.retry_base, TIMINGS.retry_cap)
        if isinstance(exc, RateLimitError) and exc.retry_after:
            delay = max(delay, exc.retry_after)
        self._transition(
            self.op.state,
            event="merge.deferred",
            last_error=f"{type(exc).__name__}: {exc}",
            next_attempt_in=delay,
            operation_changes={"attempts": attempts},
            payload={"reason": type(exc).__name__, "retryInSeconds": round(delay, 3)},
        )
        logger.warning("merge #%s deferred %.1fs in %s: %s", self.op.pk, delay, self.op.state, type(exc).__name__)

    def _fail(self, code: str, message: str, *, evidence: Mapping[str, Any] | None = None,
              cluster_changes: Mapping[str, Any] | None = None, payload: Mapping[str, Any] | None = None,
              re_evaluate: bool = False) -> None:
        """End the operation without merging; ``re_evaluate`` leaves the cluster for the next scan to judge."""
        if re_evaluate:
            cluster_changes = {"status": Cluster.SUPERSEDED, **(cluster_changes or {})}
        self._transition(
            MergeOperation.FAILED_PERMANENT, error_code=code, last_error=message, evidence=evidence,
            cluster_changes=cluster_changes, payload={"reason": message, **(payload or {})},
        )

    def _re_index(self, drift: Mapping[str, Any]) -> None:
        message = (
            f"{ERR_DRIFT} updated_at_drift: {', '.join(sorted(drift))} changed in Podium since the cluster was "
            "indexed; merge aborted and the key queued for a rescan"
        )
        self._transition(
            MergeOperation.RE_INDEX_REQUIRED, error_code=ERR_DRIFT, last_error=message,
            evidence={"drift": dict(drift)}, payload={"drift": dict(drift)},
        )
        self._queue_rescan("updated_at_drift", sorted(drift))

    # --- pending: re-read and check drift ------------------------------------------------------------

    def _pending(self) -> bool:
        _crash_point("pending")
        uids = [self.op.primary_uid, *self.op.duplicate_uids]
        live = {uid: self._get(uid) for uid in uids}
        missing = sorted(uid for uid, c in live.items() if c is None)
        if missing:
            self._fail(
                ERR_NOT_FOUND,
                f"{ERR_NOT_FOUND} contact_not_found: {', '.join(missing)} unknown to Podium; skipped until the "
                "next scan re-evaluates the cluster",
                evidence={"missing": missing},
                re_evaluate=True,
            )
            self._queue_rescan("contact_not_found", missing)
            return False
        drift = self._drifted(live)
        if drift:
            self._re_index(drift)
            return False
        self._transition(
            MergeOperation.MERGING,
            payload={"reread": {uid: _iso(c.updated_at) for uid, c in live.items() if c is not None}},
        )
        self.fresh_merging = True
        _crash_point("merging")
        return True

    # --- merging: call merge, or reconcile first --------------------------------------------------------

    def _merging(self) -> bool:
        if not self.fresh_merging:
            return self._reconcile()
        self.fresh_merging = False
        primary_uid, duplicates = self.op.primary_uid, list(self.op.duplicate_uids)
        conflicts = 0
        while True:
            self.op.attempts += 1  # persisted with the next transition
            try:
                primary = self.client.merge(primary_uid, duplicates)
                break
            except ConflictError as exc:
                self._rid(exc)
                conflicts += 1
                if conflicts < TIMINGS.conflict_attempts:
                    time.sleep(_backoff(conflicts, TIMINGS.conflict_backoff, TIMINGS.conflict_backoff_cap))
                    continue
                delay = _backoff(self.op.attempts, TIMINGS.retry_base, TIMINGS.retry_cap)
                self._transition(
                    MergeOperation.CONFLICT_PENDING, error_code=ERR_CONFLICT,
                    last_error=f"{ERR_CONFLICT} merge_in_progress: Podium answered 409 {conflicts} times",
                    next_attempt_in=delay, payload={"conflicts": conflicts, "retryInSeconds": round(delay, 3)},
                )
                return False
            except InvalidDuplicateError as exc:
                self._rid(exc)
                return self._drop_gone(exc)
            except NotFoundError as exc:
                self._rid(exc)
                self._fail(
                    ERR_NOT_FOUND,
                    f"{ERR_NOT_FOUND} contact_not_found: Podium does not know primary {primary_uid} (or it is "
                    "deleted); skipped until the next scan",
                    re_evaluate=True,
                )
                self._queue_rescan("contact_not_found", [primary_uid])
                return False
            except UnprocessableError as exc:
                self._rid(exc)
                self._fail(
                    ERR_CROSS_LOCATION,
                    f"{ERR_CROSS_LOCATION} cross_location_merge_blocked: Podium refuses to merge across locations; "
                    "the cluster moved to cross-location review",
                    # The proposal stands for a person to judge: open again, as a cross-location cluster.
                    cluster_changes={
                        "status": Cluster.OPEN, "kind": Cluster.CROSS, "auto_merge": False, "cross_location": True,
                    },
                )
                return False
            except (MergeOutcomeUnknown, MalformedResponse) as exc:
                self._rid(exc)
                logger.warning("merge #%s: outcome unknown (%s); reconciling", self.op.pk, type(exc).__name__)
                return self._reconcile()
            except InvalidRequestError as exc:
                self._rid(exc)
                self._fail(ERR_INVALID_DUPLICATE, f"Podium refused the merge request: {exc.message}")
                return False
        self._rid(primary)
        _crash_point("after_merge_call")
        self.primary_after_merge = primary
        self._transition(
            MergeOperation.MERGED,
            payload={"mergedDuplicates": duplicates, "conversationCount": primary.conversation_count},
        )
        _crash_point("merged")
        return True

    def _read_duplicates(self) -> tuple[PodiumContact | None, dict[str, PodiumContact | None]]:
        primary = self._get(self.op.primary_uid)
        return primary, {uid: self._get(uid) for uid in self.op.duplicate_uids}

    def _evidence(self, primary: PodiumContact | None, dups: Mapping[str, PodiumContact | None]) -> dict[str, Any]:
        return {
            "primary": {self.op.primary_uid: self._summary(primary)},
            "duplicates": {uid: self._summary(c) for uid, c in dups.items()},
            "snapshot": self.op.member_snapshot,
            "readAt": _iso(timezone.now()),
        }

    def _reconcile(self) -> bool:
        """Decide from Podium's live records whether the merge happened; continue or stop accordingly."""
        primary_uid = self.op.primary_uid
        primary, dups = self._read_duplicates()
        evidence = self._evidence(primary, dups)
        merged_here = [u for u, c in dups.items() if c is not None and c.merged_into_uid == primary_uid]
        merged_elsewhere = [
            u for u, c in dups.items() if c is not None and c.merged_into_uid and c.merged_into_uid != primary_uid
        ]
        live = [u for u, c in dups.items() if c is not None and c.deleted_at is None and not c.merged_into_uid]
        primary_live = primary is not None and primary.deleted_at is None and not primary.merged_into_uid

        if primary_live and len(merged_here) == len(dups):
            self.primary_after_merge = primary
            self._transition(
                MergeOperation.MERGED, event="merge.reconciled",
                payload={"finding": "every duplicate shows mergedIntoUid = primary: the merge happened",
                         "evidence": evidence},
                evidence=evidence,
            )
            return True
        if not merged_here and not merged_elsewhere:
            if primary is None:
                self._fail(
                    ERR_NOT_FOUND, f"{ERR_NOT_FOUND} contact_not_found: primary {primary_uid} is unknown to Podium",
                    evidence=evidence, re_evaluate=True,
                )
                self._queue_rescan("contact_not_found", [primary_uid])
                return False
            drift = self._drifted({primary_uid: primary, **dups})
            if primary_live and len(live) == len(dups) and not drift:
                audit.record(
                    "merge.reconciled",
                    actor=self.actor,
                    cluster_ref=self.cluster.cluster_id,
                    operation_ref=self.op.pk,
                    contact_uids=[primary_uid, *dups],
                    payload={"from": self.op.state, "to": self.op.state,
                             "finding": "nothing merged and nothing changed: merging again is safe",
                             "evidence": evidence, "requestIds": list(self.request_ids)},
                )
                self.fresh_merging = True
                if self.op.state != MergeOperation.MERGING:
                    self._transition(MergeOperation.MERGING, payload={"retry": True})
                    self.fresh_merging = True
                return True
            self._re_index(drift or {"reconcile": evidence})
            return False
        finding = (
            f"{ERR_UNRECONCILABLE} merge_state_unreconcilable: merged into the primary: {merged_here or 'none'}; "
            f"merged elsewhere: {merged_elsewhere or 'none'}; live: {live or 'none'}; primary live: {primary_live}"
        )
        self._transition(
            MergeOperation.UNRECONCILABLE, error_code=ERR_UNRECONCILABLE, last_error=finding, evidence=evidence,
            payload={"finding": finding, "evidence": evidence},
        )
        return False

    def _drop_gone(self, exc: InvalidDuplicateError) -> bool:
        """400 invalid_duplicate_uid: re-read the duplicates, drop the gone ones, continue with the rest."""
        primary_uid = self.op.primary_uid
        primary, dups = self._read_duplicates()
        evidence = self._evidence(primary, dups)
        merged_here = [u for u, c in dups.items() if c is not None and c.merged_into_uid == primary_uid]
        live = [u for u, c in dups.items() if c is not None and c.deleted_at is None and not c.merged_into_uid]
        gone = sorted(set(dups) - set(live) - set(merged_here))
        if merged_here and len(merged_here) == len(dups):
            # An earlier attempt whose answer was lost landed after all.
            self.primary_after_merge = primary
            self._transition(
                MergeOperation.MERGED, event="merge.reconciled",
                payload={"finding": "400 because every duplicate was already merged into the primary",
                         "evidence": evidence},
                evidence=evidence,
            )
            return True
        if merged_here:
            finding = (
                f"{ERR_UNRECONCILABLE} merge_state_unreconcilable: Podium refused a duplicate while "
                f"{merged_here} already show mergedIntoUid = primary"
            )
            self._transition(
                MergeOperation.UNRECONCILABLE, error_code=ERR_UNRECONCILABLE, last_error=finding, evidence=evidence,
                payload={"finding": finding, "evidence": evidence},
            )
            return False
        if not gone:
            self._fail(
                ERR_INVALID_DUPLICATE,
                f"{ERR_INVALID_DUPLICATE} invalid_duplicate_uid: Podium refused {exc.uid or 'a duplicate'} though "
                "every duplicate reads live",
                evidence=evidence,
            )
            return False
        if not live:
            self._fail(
                ERR_INVALID_DUPLICATE,
                f"{ERR_INVALID_DUPLICATE} invalid_duplicate_uid: {', '.join(gone)} gone from Podium; fewer than "
                "two members remain, nothing to merge",
                evidence=evidence,
                re_evaluate=True,
            )
            self._queue_rescan("invalid_duplicate_uid", gone)
            return False
        drift = self._drifted({uid: dups[uid] for uid in live})
        if drift:
            self._re_index(drift)
            return False
        plan = self._replan(live)
        self._transition(
            MergeOperation.MERGING,
            event="merge.duplicate_dropped",
            error_code=ERR_INVALID_DUPLICATE,
            last_error=f"{ERR_INVALID_DUPLICATE} invalid_duplicate_uid: dropped {', '.join(gone)}",
            evidence=evidence,
            operation_changes={"duplicate_uids": list(plan.duplicate_uids), "plan": plan.to_dict()},
            payload={"dropped": gone, "remaining": list(plan.duplicate_uids), "evidence": evidence,
                     **_plan_payload(plan)},
        )
        self.fresh_merging = True
        return True

    def _replan(self, remaining: Sequence[str]) -> MergePlan:
        """The plan for the primary and the remaining duplicates, never with fewer opt-outs than before."""
        keep = {self.op.primary_uid, *remaining}
        records = [r for r in _member_records(self.cluster) if r.uid in keep]
        fresh = plan_merge(records, primary_uid=self.op.primary_uid)
        union = fresh.opt_outs.union(self.plan.opt_outs)
        write_back = dict(fresh.write_back)
        write_back.update(union.to_wire())
        return dataclasses.replace(
            fresh,
            opt_outs=union,
            write_back=write_back,
            member_opt_outs=dict(self.plan.member_opt_outs),
            chosen_by=self.plan.chosen_by,
        )

    # --- merged: write back, read back, verify -----------------------------------------------------------

    def _write_back(self) -> bool:
        primary_uid = self.op.primary_uid
        region = self.region
        body: dict[str, Any] = {}
        try:
            base = self.primary_after_merge
            if base is None:
                base = self.client.get_contact(primary_uid)
                self._rid(base)
            self.primary_after_merge = None
            body = write_back_body(self.plan, base.to_wire(), region)
            patched = self.client.update_contact(primary_uid, body)
            self._rid(patched)
            _crash_point("after_patch")
            after = self.client.get_contact(primary_uid)
            self._rid(after)
        except PodiumError as exc:
            self._rid(exc)
            self._compliance_failed([f"write-back call failed: {type(exc).__name__}: {exc}"], body)
            return False
        after_wire = after.to_wire()
        problems = verify_primary(self.plan, after_wire)
        for name in OPT_OUT_WIRE_FIELDS:
            if body.get(name) and not after_wire.get(name):
                problems.append(f"{name} is off after the PATCH set it on")
        if problems:
            self._compliance_failed(problems, body)
            return False

        def update_index(duplicate_uids: list[str]) -> None:
            _index_after_merge(after)

        self._transition(
            MergeOperation.PATCHED,
            error_code="",
            last_error="",
            payload={
                "writtenBack": body,
                "readBackOptOuts": OptOuts.from_wire(after_wire).to_wire(),
                "conflicts": list(self.plan.to_dict()["conflicts"]),
                "verified": True,
            },
            after_commit_in_tx=update_index,
        )
        return False

    def _compliance_failed(self, problems: list[str], body: Mapping[str, Any]) -> None:
        attempts = self.op.attempts + 1
        delay = _backoff(attempts, TIMINGS.retry_base, TIMINGS.retry_cap)
        opt_out_problems = [p for p in problems if "OptOut" in p]
        self._transition(
            MergeOperation.COMPLIANCE_FAILED,
            error_code=ERR_COMPLIANCE,
            last_error=f"{ERR_COMPLIANCE} opt_out_patch_failed: " + "; ".join(problems),
            next_attempt_in=delay,
            operation_changes={"attempts": attempts},
            payload={"problems": problems, "attemptedWriteBack": dict(body), "retryInSeconds": round(delay, 3)},
        )
        # Logged without the values (phones and emails stay out of the log); the audit event has them.
        logger.error(
            "COMPLIANCE merge #%s primary %s: write-back did not hold (%d problem(s); opt-outs: %s); retry in %.0fs",
            self.op.pk, self.op.primary_uid, len(problems), opt_out_problems or "ok", delay,
        )


def _index_after_merge(primary: PodiumContact) -> None:
    """Re-index the primary from its read-back (new channels, keys, tags, opt-outs, ``updatedAt``).

    The duplicates were marked merged into it when the merge was recorded; with both, detection over
    the index proposes nothing mergeable again, before any rescan.
    """
    from dedup.indexing import IndexWriter, prepare_contact

    writer = IndexWriter(settings.PODIUM_DEFAULT_REGION)
    writer.write([prepare_contact(primary, writer.region_for(primary.location_uid))])


# --- resume, retries, people's resolutions -------------------------------------------------------------


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
        operations = operations.filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=timezone.now()))
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


@contextmanager
def _holding_operation(operation: MergeOperation) -> Iterator[None]:
    """Hold the operation as a worker would, so a person never changes one a worker is running."""
    holds = _Holds()
    try:
        if not holds.acquire("op", operation.pk):
            raise ClusterBusyError(
                operation.cluster,
                f"Merge #{operation.pk} is being worked on by a worker right now — try again in a moment",
            )
        yield
    finally:
        holds.release_all()


def retry_operation(operation: MergeOperation, *, user: User, run_async: bool = True) -> MergeOperation:
    """An admin retries a compliance-failed (or conflict-pending) merge now instead of at its next attempt."""
    actor_name, actor_user_id = _actor(user)
    with _holding_operation(operation), transaction.atomic():
        op = MergeOperation.objects.select_for_update(of=("self",)).select_related("cluster").get(pk=operation.pk)
        if op.state not in (MergeOperation.COMPLIANCE_FAILED, MergeOperation.CONFLICT_PENDING):
            raise MergeRefused(
                f"Merge #{op.pk} is {op.state}; only compliance_failed or conflict_pending merges are retried",
                cluster=op.cluster, operation=op,
            )
        op.next_attempt_at = timezone.now()
        op.save(update_fields=["next_attempt_at", "updated_at"])
        audit.record(
            "merge.retry_requested",
            actor=actor_name, actor_user_id=actor_user_id, cluster_ref=op.cluster.cluster_id, operation_ref=op.pk,
            contact_uids=[op.primary_uid, *op.duplicate_uids], payload={"state": op.state, "errorCode": op.error_code},
        )
        if run_async:
            op_id = op.pk
            transaction.on_commit(lambda: _enqueue(op_id))
    if not run_async:
        return run_operation(op.pk, worker=actor_name)
    return op


RESOLUTIONS = ("merged_manually", "abandoned", "retry")


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

    ``retry``: Podium was put right by hand; the operation reconciles again from ``merging``.
    ``merged_manually`` (the person finished the merge in Podium) and ``abandoned`` (it stays as it is)
    end the operation (failed_permanent, the resolution recorded) and queue its keys for a rescan; the
    cluster becomes merged or failed. Either way the plan's opt-out union is first forced onto the
    primary and read back, because a half-done merge may have dropped an opt-out: closing the case never
    leaves one lost (``MergeRefused`` with ``ERR_DEDUP_010`` when it does not hold; nothing is closed).
    Compliance incidents (``compliance_failed``) are not resolved by hand: they are retried until they
    hold (``retry_operation``).
    """
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution must be one of {', '.join(RESOLUTIONS)}")
    if not note.strip():
        raise ValueError("a resolution needs a note saying what was done")
    actor_name, actor_user_id = _actor(user)
    forced: dict[str, Any] = {}
    with _holding_operation(operation):
        op = MergeOperation.objects.select_related("cluster").get(pk=operation.pk)
        if op.state != MergeOperation.UNRECONCILABLE:
            raise MergeRefused(
                f"Merge #{op.pk} is {op.state}; only unreconcilable merges (ERR_DEDUP_012) are resolved by hand",
                cluster=op.cluster, operation=op,
            )
        if resolution != "retry":
            forced = _force_union_on_primary(op, client)
        with transaction.atomic():
            op = MergeOperation.objects.select_for_update().get(pk=operation.pk)
            cluster = Cluster.objects.select_for_update().get(pk=op.cluster_id)
            before = op.state
            evidence = {**op.evidence, "resolution": resolution, "note": note, "resolvedBy": actor_name}
            if forced:
                evidence["optOutsForced"] = forced
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
                location_uids=_location_uids(cluster), contact_uids=[op.primary_uid, *op.duplicate_uids],
                natural_keys=cluster.natural_keys,
                payload={"from": before, "to": op.state, "resolution": resolution, "note": note,
                         "optOutsForced": forced or None},
            )
            if resolution == "retry" and run_async:
                op_id = op.pk
                transaction.on_commit(lambda: _enqueue(op_id))
    if resolution != "retry":
        from dedup.scanning import queue_rescan_of_keys

        queue_rescan_of_keys(
            list(cluster.natural_keys), f"merge resolved by hand: {resolution}", actor=actor_name,
            contact_uids=[op.primary_uid, *op.duplicate_uids],
        )
    elif not run_async:
        return run_operation(op.pk, worker=actor_name, client=client)
    return op


def _force_union_on_primary(op: MergeOperation, client: PodiumClient | None) -> dict[str, Any]:
    """PATCH the plan's opt-out union onto the primary (only flags that are on) and read it back."""
    plan = MergePlan.from_dict(op.plan)
    wanted = {name: True for name, on in plan.opt_outs.to_wire().items() if on}
    own = client is None
    active = client or new_client()
    request_ids: list[str] = []
    try:
        if wanted:
            request_ids.append(active.update_contact(op.primary_uid, wanted).request_id or "")
        after = active.get_contact(op.primary_uid)
        request_ids.append(after.request_id or "")
    except NotFoundError:
        # Nothing to protect on a primary Podium no longer has; the rescan sorts out the rest.
        return {"primaryUid": op.primary_uid, "found": False}
    except PodiumError as exc:
        raise MergeRefused(
            f"Merge #{op.pk}: could not put the opt-out union on {op.primary_uid} ({exc}); try again",
            cluster=op.cluster, operation=op, code=ERR_COMPLIANCE,
        ) from exc
    finally:
        if own:
            active.close()
    held = OptOuts.from_wire(after.to_wire()).covers(plan.opt_outs)
    if not held:
        logger.error("COMPLIANCE merge #%s: the opt-out union did not hold on %s", op.pk, op.primary_uid)
        raise MergeRefused(
            f"Merge #{op.pk}: the opt-out union did not hold on {op.primary_uid}; try again",
            cluster=op.cluster, operation=op, code=ERR_COMPLIANCE,
        )
    return {"primaryUid": op.primary_uid, "sent": wanted, "held": True, "requestIds": [r for r in request_ids if r]}


# --- progress ---------------------------------------------------------------------------------------------


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
    from dedup.models import AuditEvent

    states = Counter(batch.operations.values_list("state", flat=True))
    total = sum(states.values())
    done = states[MergeOperation.PATCHED]
    failed = (
        states[MergeOperation.FAILED_PERMANENT] + states[MergeOperation.RE_INDEX_REQUIRED]
        + states[MergeOperation.UNRECONCILABLE]
    )
    refused: list[dict[str, str]] = []
    for payload in AuditEvent.objects.filter(event_type="merge.batch").order_by("-id").values_list("payload", flat=True)[:200]:
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
        "primaryUid": operation.primary_uid,
        "duplicateUids": list(operation.duplicate_uids),
        "errorCode": operation.error_code,
        "lastError": operation.last_error,
    }


def to_json_line(value: Any) -> str:
    """One compact JSON line (the CLI's machine-readable output)."""
    return json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
