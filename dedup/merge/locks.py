"""Who may act on a cluster now: row locks for people and workers, holder locks that outlive a transaction.

Managers and workers lock the cluster row and the member contact rows with ``select_for_update``
(``nowait``: a busy row is a visible conflict, never a wait or a silent drop), and workers claim
operations with ``skip_locked``. Because every state must be committed before the call it precedes, a
worker's hold must outlive its transactions: it also takes a *holder lock* on the operation and on each
member contact (a PostgreSQL session advisory lock; an ``flock`` on SQLite). Holder locks die with the
worker's connection or process, so a SIGKILLed worker never leaves a stale hold, and two workers never
run the same operation or two operations sharing a contact.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings
from django.db import OperationalError, connection, transaction

from dedup import audit
from dedup.merge.common import LIVE_STATES, ClusterBusyError, logger
from dedup.models import AuditEvent, Cluster, ClusterMember, Contact, MergeOperation


class Holds:
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


def lock_unavailable(exc: OperationalError) -> bool:
    """True when a NOWAIT row lock was refused (PostgreSQL SQLSTATE 55P03), not some other failure."""
    cause = exc.__cause__
    return getattr(cause, "sqlstate", None) == "55P03" or "could not obtain lock" in str(exc)


def lock_cluster_nowait(cluster: Cluster) -> Cluster:
    """Lock the cluster row for this transaction, or raise ClusterBusyError when someone holds it."""
    try:
        with transaction.atomic():
            return Cluster.objects.select_for_update(nowait=True).get(pk=cluster.pk)
    except OperationalError as exc:
        if not lock_unavailable(exc):
            raise
        raise ClusterBusyError(
            cluster,
            f"Cluster {cluster.cluster_id} is being changed by someone else right now — try again in a moment",
        ) from exc


def lock_contacts_nowait(cluster: Cluster, uids: Sequence[str]) -> list[Contact]:
    """Lock the member contact rows for this transaction, or raise ClusterBusyError."""
    try:
        with transaction.atomic():
            return list(
                Contact.objects.select_for_update(nowait=True, of=("self",))
                .filter(uid__in=list(uids))
                .select_related("location")
                .order_by("pk")
            )
    except OperationalError as exc:
        if not lock_unavailable(exc):
            raise
        raise ClusterBusyError(
            cluster,
            f"A member of cluster {cluster.cluster_id} is being merged by someone else right now — try again in a moment",
        ) from exc


def overlapping_live_operations(
    cluster: Cluster, contact_ids: Sequence[int], states: Sequence[str]
) -> list[MergeOperation]:
    """Operations in ``states`` of other clusters that share one of these contacts (at most one)."""
    sharing = ClusterMember.objects.filter(contact_id__in=list(contact_ids)).exclude(cluster_id=cluster.pk)
    ids = list(
        MergeOperation.objects.filter(
            state__in=states, cluster_id__in=sharing.values("cluster_id")
        ).values_list("pk", flat=True)[:1]
    )
    return list(MergeOperation.objects.filter(pk__in=ids).select_related("cluster")) if ids else []


def describe_actor(actor: str) -> str:
    """``worker:host:1`` → ``worker host:1``."""
    kind, _, name = actor.partition(":")
    return f"{kind} {name}" if name else actor


def _last_actor(operation: MergeOperation) -> str:
    actor = (
        AuditEvent.objects.filter(operation_ref=operation.pk)
        .order_by("-id")
        .values_list("actor", flat=True)
        .first()
    )
    return actor or "system"


def busy_message(cluster: Cluster) -> str:
    """Why a person cannot act on this cluster now: who holds it, or who decided first."""
    live = cluster.operations.filter(state__in=LIVE_STATES).order_by("-id").first()
    if live is not None and live.state != MergeOperation.PENDING:
        holder = describe_actor(_last_actor(live))
        return (
            f"Cluster {cluster.cluster_id} is being merged by {holder} (operation #{live.pk}, {live.state}) "
            "— try again in a moment"
        )
    who = cluster.decided_by.get_username() if cluster.decided_by else None
    if who is None and live is not None:
        who = describe_actor(_last_actor(live))
    when = cluster.decided_at.strftime("%Y-%m-%d %H:%M UTC") if cluster.decided_at else "an earlier moment"
    verb = {
        Cluster.APPROVED: "approved",
        Cluster.MERGING: "approved",
        Cluster.MERGED: "merged",
        Cluster.REJECTED: "rejected",
    }.get(cluster.status, cluster.status)
    by = f" by {who}" if who else ""
    return f"Cluster {cluster.cluster_id} was already {verb}{by} at {when}"


def record_conflict(
    cluster: Cluster,
    message: str,
    *,
    actor: str,
    actor_user_id: int | None,
    operation: MergeOperation | None = None,
    extra: dict[str, object] | None = None,
) -> None:
    """Make a lost race visible: an audit event naming what was refused and why."""
    from dedup.merge.common import ERR_CONCURRENT

    audit.record(
        "merge.conflict",
        actor=actor,
        actor_user_id=actor_user_id,
        cluster_ref=cluster.cluster_id,
        operation_ref=operation.pk if operation else None,
        location_uids=cluster_location_uids(cluster),
        contact_uids=cluster_member_uids(cluster),
        natural_keys=cluster.natural_keys,
        payload={"code": ERR_CONCURRENT, "message": message, **(extra or {})},
    )
    logger.info("conflict on cluster %s: %s", cluster.cluster_id, message)


def cluster_member_uids(cluster: Cluster) -> list[str]:
    """The uids of a cluster's members, sorted."""
    return sorted(ClusterMember.objects.filter(cluster=cluster).values_list("contact__uid", flat=True))


def cluster_location_uids(cluster: Cluster) -> list[str]:
    """Every location of a cluster (its members' locations, all of them)."""
    locations = set(cluster.locations.values_list("uid", flat=True))
    locations.update(ClusterMember.objects.filter(cluster=cluster).values_list("location__uid", flat=True))
    return sorted(locations)


@contextmanager
def holding_operation(operation: MergeOperation) -> Iterator[None]:
    """Hold the operation as a worker would, so a person never changes one a worker is running."""
    holds = Holds()
    try:
        if not holds.acquire("op", operation.pk):
            raise ClusterBusyError(
                operation.cluster,
                f"Merge #{operation.pk} is being worked on by a worker right now — try again in a moment",
            )
        yield
    finally:
        holds.release_all()
