"""Detection: turn the contact index into duplicate clusters, and keep the cluster table in step with it.

Orchestration only: reading, scoring and writing are in ``dedup.detect``; the rules live in the pure
modules: ``dedup.clustering`` groups
contacts that share natural keys (union-find), ``dedup.scoring`` scores every pair and decides whether a
cluster may merge without a person, ``dedup.survivorship`` suggests the primary.

What a run does:

1. Reads the natural keys that could join anything — keys held by two or more *active* contacts (never
   soft-deleted or merged ones) — straight from the database, with the database doing the grouping.
   Email keys take part only when policy makes email a secondary key.
2. Groups them within each location and across locations (``build_clusters``), keeping apart every pair
   a person marked "different people".
3. Scores the groups batch by batch with the policy's threshold (cross-location groups auto-merge only
   when policy allows it) and writes each batch before scoring the next, so memory stays bounded
   however big the index. Big runs score in forked worker processes while this one writes.
4. A cluster's id derives from its members, so an unchanged membership finds its own row: an open one
   is refreshed in place (only when something changed), a superseded one reopened. Open clusters whose
   membership no longer exists are superseded: status ``superseded``, ``superseded_by`` the cluster that
   now holds most of their members, and an audit event. Clusters a person or a worker is acting on
   (approved, merging, merged, rejected, failed) are never touched; a changed membership gets a new
   cluster beside them.

A run is scoped three ways: everything; some locations (clusters touching them); or some contacts /
natural keys (an incremental scan, a rescan after drift) — then only the connected components around
those contacts are read, so the cost follows the change, not the corpus.
"""
from __future__ import annotations

import logging
import multiprocessing
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db import connection, connections
from django.db.models import JSONField, Model, Q, QuerySet
from django.utils import timezone

from dedup.clustering import ClusterGroup, build_clusters, gc_paused
from dedup.dblimits import in_values
from dedup.detect.proposals import (
    RESTORED_BY_PERSON,
    Proposal,
    Scoring,
    Unchanged,
    finish_scoring,
    read_inputs,
    restored_contact_uids,
    score_groups,
)
from dedup.detect.reading import (
    Candidate,
    Candidates,
    HeldMasks,
    active_contacts,
    clusters_with_members,
    held_keys,
    holders,
    read_closure,
    read_shared,
    scoring_keys,
)
from dedup.detect.records import cluster_to_dict, clusters_for_export, load_member_records, member_records
from dedup.detect.writing import MUTABLE, write
from dedup.models import (
    Cluster,
    ClusterLocation,
    ClusterMember,
    Contact,
    ContactKey,
    Location,
    Policy,
    ReviewDecision,
    ScanRun,
)
from dedup.scoring import _check_threshold

__all__ = [
    "RESTORED_BY_PERSON",
    "DetectionSummary",
    "cluster_to_dict",
    "clusters_for_export",
    "detect",
    "load_member_records",
    "member_records",
    "restored_contact_uids",
]

logger = logging.getLogger(__name__)

# Groups scored and written together: big enough to amortize each round of queries, small enough that
# a batch's records and proposals stay a few megabytes.
BATCH_GROUPS = 5000
# Rows written by one run after which the cluster tables' planner statistics are refreshed.
_ANALYZE_AFTER = 10_000
# Scoring in this process reads a batch's members before the batch ahead of it is written, so that
# writing overlaps scoring (False: one batch after the other, as before; tests compare the two).
READ_AHEAD = True
# Below this many indexed contacts scoring stays in this process: forking costs more than it saves.
PARALLEL_MIN_CONTACTS = 100_000
# A whole-index run scores with the members' phone keys its read found (``scoring_keys``) rather than
# having the database gather every key of each member again (False: as before; tests compare the two).
KEYS_FROM_READ = True


@dataclass
class DetectionSummary:
    """What one detection run found and changed.

    ``clusters_open`` / ``auto`` / ``review`` / ``cross`` count the open clusters of the run's scope
    after it; ``created``, ``refreshed`` (rescored in place), ``reopened``, ``unchanged`` and
    ``superseded`` say what happened to rows; ``held`` counts groups whose cluster is in a person's or
    a worker's hands (left alone). ``contacts_in_clusters`` / ``active_contacts`` give the duplicate rate.
    """

    clusters_open: int = 0
    auto: int = 0
    review: int = 0
    cross: int = 0
    created: int = 0
    refreshed: int = 0
    reopened: int = 0
    unchanged: int = 0
    superseded: int = 0
    held: int = 0
    contacts_in_clusters: int = 0
    active_contacts: int = 0
    elapsed_seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def duplicate_rate(self) -> float | None:
        """Share of the scope's active contacts that sit in an open cluster."""
        if not self.active_contacts:
            return None
        return self.contacts_in_clusters / self.active_contacts

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form (for audit payloads and the CLI)."""
        return {
            "clustersOpen": self.clusters_open,
            "auto": self.auto,
            "review": self.review,
            "cross": self.cross,
            "created": self.created,
            "refreshed": self.refreshed,
            "reopened": self.reopened,
            "unchanged": self.unchanged,
            "superseded": self.superseded,
            "held": self.held,
            "contactsInClusters": self.contacts_in_clusters,
            "activeContacts": self.active_contacts,
            "duplicateRate": self.duplicate_rate,
            "elapsedSeconds": round(self.elapsed_seconds, 3),
        }



# --- public API -------------------------------------------------------------------------------------------


def detect(
    *,
    locations: list[str] | None = None,
    keys: Iterable[str] | None = None,
    scan_run: ScanRun | None = None,
    contact_ids: Iterable[int] | None = None,
    actor: str = "system",
    workers: int | None = None,
    rescore: bool = False,
) -> DetectionSummary:
    """Find duplicate clusters and bring the cluster table in step with the index.

    ``locations`` (uids) limits the run to clusters touching them; ``keys`` (natural keys) and
    ``contact_ids`` (index row ids) limit it to the contacts holding them and everything connected to
    those by a shared key. With none of them, the whole index is detected. ``scan_run`` is recorded on
    the clusters written. Policy decides the threshold, whether email is a secondary key and whether
    cross-location clusters may merge automatically.

    An open cluster whose inputs did not change (same members with the same ``updatedAt``, no policy
    change since it was scored) is not scored again; ``rescore`` scores everything anyway (after a
    change to the scoring rules themselves). ``workers`` forces the number of scoring processes (0:
    score here); by default big runs use one per CPU when this process may fork.
    """
    started = time.perf_counter()
    timings: dict[str, float] = {}
    policy = Policy.current()
    _check_threshold(policy.auto_merge_threshold)
    kinds = [ContactKey.PHONE] + ([ContactKey.EMAIL] if policy.email_secondary_key else [])
    location_uid_of = dict(Location.objects.values_list("pk", "uid"))
    location_id_of = {uid: pk for pk, uid in location_uid_of.items()}
    scoring = Scoring(
        threshold=policy.auto_merge_threshold,
        cross_location_auto_merge=policy.cross_location_auto_merge,
        email_secondary_key=policy.email_secondary_key,
        location_uid_of=location_uid_of,
        location_id_of=location_id_of,
        policy_changed_at=policy.updated_at,
        rescore=rescore,
        policy_version=policy.scoring_version,
        restored_uids=restored_contact_uids(),
        empty_table=not Cluster.objects.exists(),
    )

    key_scoped = keys is not None or contact_ids is not None
    if workers is None:
        workers = 0 if key_scoped else _default_workers()
    # Workers are forked first, while this process is still small: what they inherit is what
    # they hold, and each opens its own database connection.
    pool = _start_pool(workers)
    try:
        # The cyclic collector paused for the run: reading and grouping build a million small tuples
        # and lists (none in a cycle) that every full collection would walk again, a cost that grows
        # faster than the index. Reference counting still frees them.
        with gc_paused():
            return _detect(
                pool, scoring, kinds, locations, keys, contact_ids, key_scoped, scan_run, actor, started, timings
            )
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()


def _detect(
    pool: Any,
    scoring: Scoring,
    kinds: list[str],
    locations: list[str] | None,
    keys: Iterable[str] | None,
    contact_ids: Iterable[int] | None,
    key_scoped: bool,
    scan_run: ScanRun | None,
    actor: str,
    started: float,
    timings: dict[str, float],
) -> DetectionSummary:
    location_uid_of, location_id_of = scoring.location_uid_of, scoring.location_id_of
    scope_location_ids: set[int] | None = None
    if locations:
        scope_location_ids = {location_id_of[uid] for uid in locations if uid in location_id_of}
    seed_ids: set[int] = set()
    considered_ids: set[int] = set()
    candidates: Candidates
    if key_scoped:
        seed_ids = set(contact_ids or ())
        key_list = sorted(set(keys or ()))
        if key_list:
            seed_ids |= holders(key_list, kinds=None, active_only=False)
        candidates, closure_ids = read_closure(seed_ids, kinds)
        considered_ids = seed_ids | closure_ids
    else:
        candidates = read_shared(kinds)
    timings["read_keys"] = time.perf_counter() - started

    t = time.perf_counter()
    excluded = list(
        ReviewDecision.objects.filter(decision=ReviewDecision.DIFFERENT_PEOPLE).values_list("uid_a", "uid_b")
    )
    groups = _group(candidates, location_uid_of, excluded)
    if scope_location_ids is not None:
        scope_uids = {location_uid_of[pk] for pk in scope_location_ids}
        groups = [g for g in groups if scope_uids.intersection(g.location_uids)]
    id_of = candidates.id_of
    member_ids = [tuple(map(id_of.__getitem__, g.member_uids)) for g in groups]
    # A whole-index read found every phone key scoring needs (``scoring_keys``): which ones each
    # member holds goes to scoring with the group, instead of being gathered again batch by batch.
    masks: HeldMasks | None = None
    del id_of
    if not key_scoped and KEYS_FROM_READ:
        keys_of = scoring_keys(candidates)
        del candidates
        masks = [held_keys(g, keys_of) for g in groups]
        del keys_of
    else:
        del candidates
    # Scored in the order of their members' row ids: a batch then reads a run of neighbouring contact
    # rows (one person's duplicates are usually indexed close together) instead of rows spread over
    # the whole table, which at a million contacts no longer fits the database's cache.
    order = sorted(range(len(groups)), key=lambda i: min(member_ids[i]))
    groups = [groups[i] for i in order]
    member_ids = [member_ids[i] for i in order]
    if masks is not None:
        masks = [masks[i] for i in order]
    del order
    timings["cluster"] = time.perf_counter() - t

    t = time.perf_counter()
    reconsider: QuerySet[Cluster] | list[int]
    if key_scoped:
        # Ids, not a queryset: a rescan of many keys touches thousands of clusters, more than one IN
        # list may carry on SQLite; ``write`` locks them in chunks.
        reconsider = clusters_with_members(considered_ids)
    elif scope_location_ids is not None:
        reconsider = Cluster.objects.filter(
            Q(location_id__in=in_values(scope_location_ids)) | Q(locations__in=in_values(scope_location_ids)),
            status=MUTABLE,
        ).distinct()
    else:
        reconsider = Cluster.objects.filter(status=MUTABLE)
    now = timezone.now()
    batches = _scored_batches(groups, member_ids, masks, scoring, pool)
    counts = write(batches, groups, scoring, reconsider, scan_run, actor, now, timings)
    timings["score_and_write"] = time.perf_counter() - t

    summary = DetectionSummary(
        clusters_open=counts.clusters_open, auto=counts.auto, review=counts.review, cross=counts.cross,
        created=counts.created, refreshed=counts.refreshed, reopened=counts.reopened,
        unchanged=counts.unchanged, superseded=counts.superseded, held=counts.held,
        contacts_in_clusters=counts.contacts_in_clusters,
    )  # fmt: skip
    if summary.created + summary.refreshed + summary.reopened >= _ANALYZE_AFTER:
        # The planner's statistics still describe the cluster tables before this run; plans made
        # for a few rows over hundreds of thousands turn the next lookups into full scans.
        with connection.cursor() as cursor:
            for model in (Cluster, ClusterMember, ClusterLocation):
                cursor.execute(_analyze_sql(model))
    summary.active_contacts = active_contacts(scope_location_ids, key_scoped, considered_ids)
    summary.elapsed_seconds = time.perf_counter() - started
    summary.timings = timings
    logger.info(
        "detection: %d open cluster(s) (%d auto, %d review, %d cross); %d created, %d refreshed, "
        "%d superseded, %d held in %.2fs",
        summary.clusters_open, summary.auto, summary.review, summary.cross, summary.created,
        summary.refreshed, summary.superseded, summary.held, summary.elapsed_seconds,
    )  # fmt: skip
    return summary


def _analyze_sql(model: type[Model]) -> str:
    """``ANALYZE`` of a cluster table; on PostgreSQL only of its columns that are not JSON.

    No query filters or sorts by the JSON columns (pair scores, reasons, natural keys), and sampling
    them was most of the time the statement took after a first detection.
    """
    table = model._meta.db_table
    if connection.vendor != "postgresql":
        return f"ANALYZE {table}"
    columns = [f.column for f in model._meta.concrete_fields if not isinstance(f, JSONField)]
    return f"ANALYZE {table} ({', '.join(connection.ops.quote_name(c) for c in columns)})"


def _group(
    candidates: Sequence[Candidate], location_uid_of: dict[int, str], excluded: list[tuple[str, str]]
) -> list[ClusterGroup]:
    """Within-location groups of all candidates, and cross-location groups of the few that can form one.

    A group spanning two locations contains a key held in both (some edge must cross), so the
    cross-location components are exactly those of the contacts holding such a key together with
    their within-location group mates; only those are clustered across locations.
    """
    # Candidates arrive sorted by location; clustering one location at a time keeps only that
    # location's key tables in memory.
    within: list[ClusterGroup] = []
    start = 0
    while start < len(candidates):
        location_id = candidates[start][1]
        end = start
        while end < len(candidates) and candidates[end][1] == location_id:
            end += 1
        location_uid = location_uid_of[location_id]
        within += build_clusters(
            ((uid, location_uid, keys) for uid, _location_id, keys in candidates[start:end]),
            cross_location=False,
            excluded_pairs=excluded,
        )
        start = end
    first_location: dict[str, int] = {}
    cross_keys: set[str] = set()
    for _uid, location_id, keys in candidates:
        for key in keys:
            if first_location.setdefault(key, location_id) != location_id:
                cross_keys.add(key)
    del first_location
    if not cross_keys:
        return within
    seeds = {uid for uid, _location_id, keys in candidates if not cross_keys.isdisjoint(keys)}
    for group in within:
        if not seeds.isdisjoint(group.member_uids):
            seeds.update(group.member_uids)
    if excluded:
        # Groups split apart for "different people" are smaller than the components that contain
        # them; follow shared keys until nothing new joins so the cross components are whole.
        while True:
            seed_keys = {key for uid, _location_id, keys in candidates if uid in seeds for key in keys}
            joined = {
                uid for uid, _location_id, keys in candidates if uid not in seeds and not seed_keys.isdisjoint(keys)
            }
            if not joined:
                break
            seeds |= joined
    cross = build_clusters(
        ((uid, location_uid_of[location_id], keys) for uid, location_id, keys in candidates if uid in seeds),
        cross_location=True,
        excluded_pairs=excluded,
    )
    return within + cross

# --- scoring in worker processes ----------------------------------------------------------------------------


def _score_task(
    start: int,
    groups: list[ClusterGroup],
    member_ids: list[tuple[int, ...]],
    masks: HeldMasks | None,
    scoring: Scoring,
) -> list[Proposal | Unchanged]:
    """Score a slice of groups in a worker process (with its own database connection)."""
    return score_groups(start, groups, member_ids, scoring, masks)


def _default_workers() -> int:
    """One scoring process per CPU for a big index, when this process may fork; else none."""
    if not _can_fork_workers() or multiprocessing.current_process().daemon:
        return 0  # e.g. inside a django-q worker: no children allowed
    if Contact.objects.count() < PARALLEL_MIN_CONTACTS:
        return 0
    return max(1, multiprocessing.cpu_count())


def _can_fork_workers() -> bool:
    """Workers need their own connection to the same database, opened after the fork."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return False
    if connection.vendor == "sqlite":
        # An in-memory database would be a different, empty one in a child; a file database in
        # rollback-journal mode makes the children's reads wait on this process's write transaction.
        return False
    return not any(conn.in_atomic_block for conn in connections.all(initialized_only=True))


def _start_pool(workers: int) -> Any:
    if workers <= 0:
        return None
    if not _can_fork_workers():
        logger.debug("detection: scoring in this process (no fork possible here)")
        return None
    # Children inherit open sockets; closing first means neither side can speak on the other's
    # session. This process reconnects on its next query.
    connections.close_all()
    return multiprocessing.get_context("fork").Pool(workers)


def _scored_here(
    slices: list[tuple[int, int]],
    groups: list[ClusterGroup],
    member_ids: list[tuple[int, ...]],
    masks: HeldMasks | None,
    scoring: Scoring,
) -> Iterator[list[Proposal | Unchanged]]:
    """Batches scored in this process, each batch's reads done one batch ahead.

    The writer sends a batch to the database in the background (``writing``) and asks for the next
    one: the next batch's inputs were read before, so it is scored (pure Python) while the database
    takes the rows; the reads that follow wait for the connection, as they must.
    """
    if not slices:
        return
    a, b = slices[0]
    inputs = read_inputs(a, groups[a:b], member_ids[a:b], scoring, _masks_slice(masks, a, b))
    for position in range(len(slices)):
        batch = finish_scoring(inputs)
        if position + 1 < len(slices):
            a, b = slices[position + 1]
            # Read now, before the batch just scored is written: ``batch`` goes out while the next
            # one is scored.
            inputs = read_inputs(a, groups[a:b], member_ids[a:b], scoring, _masks_slice(masks, a, b))
        yield batch


def _masks_slice(masks: HeldMasks | None, a: int, b: int) -> HeldMasks | None:
    return None if masks is None else masks[a:b]


def _scored_batches(
    groups: list[ClusterGroup],
    member_ids: list[tuple[int, ...]],
    masks: HeldMasks | None,
    scoring: Scoring,
    pool: Any,
) -> Iterator[list[Proposal | Unchanged]]:
    """Proposals batch by batch, in order; with a pool, scored a few batches ahead of the writer."""
    slices = [(start, min(start + BATCH_GROUPS, len(groups))) for start in range(0, len(groups), BATCH_GROUPS)]
    if pool is None:
        if not READ_AHEAD:
            return (
                score_groups(a, groups[a:b], member_ids[a:b], scoring, _masks_slice(masks, a, b))
                for a, b in slices
            )
        return _scored_here(slices, groups, member_ids, masks, scoring)
    pending: deque[Any] = deque()
    queue = deque(slices)
    ahead = 4

    def submit() -> None:
        a, b = queue.popleft()
        task = (a, groups[a:b], member_ids[a:b], _masks_slice(masks, a, b), scoring)
        pending.append(pool.apply_async(_score_task, task))

    while queue and len(pending) < ahead:
        submit()

    def results() -> Iterator[list[Proposal | Unchanged]]:
        while pending:
            batch = pending.popleft().get()
            if queue:
                submit()
            yield batch

    return results()
