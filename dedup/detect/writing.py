"""Writing detection's verdicts: create, refresh, reopen and supersede cluster rows, in bulk.

A cluster's id derives from its members, so an unchanged membership finds its own row: an open one is
refreshed in place (only when something changed), a superseded one reopened. Open clusters whose
membership no longer exists are superseded: status ``superseded``, ``superseded_by`` the cluster that
now holds most of their members, and an audit event each (appended to the chain in one go). Clusters a
person or a worker is acting on (approved, merging, merged, rejected, failed) are never touched; a
changed membership gets a new cluster beside them.

On PostgreSQL new rows go in with ``COPY`` of text this module builds, with row ids drawn from the
table's sequence beforehand, so nothing is read back; on SQLite with ``executemany`` of adapted tuples.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from typing import Any

from django.db import connection, transaction
from django.db.models import QuerySet
from django.db.models.expressions import RawSQL

from dedup import audit
from dedup.clustering import ClusterGroup
from dedup.dblimits import chunked, in_list_size
from dedup.detect.proposals import Proposal, Scoring, Unchanged, propose, read_members
from dedup.detect.sql import select_by_ids, select_by_text
from dedup.indexing import insert_rows, update_rows
from dedup.models import Cluster, ClusterLocation, ClusterMember, Contact, Location, ScanRun

# The status detection may rewrite. Everything else belongs to a person or a merge worker.
MUTABLE = Cluster.OPEN

# An arbitrary constant naming the advisory lock that serializes detection writes.
_DETECTION_LOCK = 0xDE7EC7


class DetectionCounts:
    """What the writer did, for ``DetectionSummary``."""

    def __init__(self) -> None:
        self.clusters_open = self.auto = self.review = self.cross = 0
        self.created = self.refreshed = self.reopened = self.unchanged = self.superseded = self.held = 0
        self.contacts_in_clusters = 0

    def count_open(self, kind: str) -> None:
        self.clusters_open += 1
        if kind == Cluster.CROSS:
            self.cross += 1
        elif kind == Cluster.AUTO:
            self.auto += 1
        else:
            self.review += 1


class IdSet:
    """A set of row ids as one byte per id: a million contacts cost 1 MB instead of 40 MB, and adding
    an id is one store (counted once, at the end, by ``bytearray.count`` in C)."""

    def __init__(self) -> None:
        self._marks = bytearray()

    def update(self, ids: Sequence[int]) -> None:
        marks = self._marks
        if not ids:
            return
        top = max(ids)
        if top >= len(marks):
            marks.extend(bytes(top - len(marks) + 65536))
        for i in ids:
            marks[i] = 1

    def __len__(self) -> int:
        return self._marks.count(1)


# --- locking and looking up ---------------------------------------------------------------------------------


def _current_rows(cluster_ids: Sequence[str]) -> dict[str, tuple[int, str]]:
    """``{cluster id: (pk, status)}`` of the rows carrying these ids, whatever their status."""
    sql = f"SELECT cluster_id, id, status FROM {Cluster._meta.db_table} WHERE"
    return {cluster_id: (pk, status) for cluster_id, pk, status in select_by_text(sql, "cluster_id", cluster_ids)}


def _current_by_pk(items: list[Unchanged]) -> dict[str, tuple[int, str]]:
    """``{cluster id: (pk, status)}`` of the rows these unchanged groups were found under."""
    if not items:
        return {}
    sql = f"SELECT id, cluster_id, status FROM {Cluster._meta.db_table} WHERE"
    return {
        cluster_id: (pk, status)
        for pk, cluster_id, status in select_by_ids(sql, "id", [item.pk for item in items])
    }


def lock_mutable(qs: QuerySet[Cluster]) -> dict[int, str]:
    """Status of the open or superseded clusters of ``qs``, locked; rows someone holds are skipped."""
    qs = Cluster.objects.filter(pk__in=qs.values("pk"), status__in=(MUTABLE, Cluster.SUPERSEDED))
    if connection.features.has_select_for_update_skip_locked:
        qs = qs.select_for_update(skip_locked=True, of=("self",))
    return dict(qs.values_list("pk", "status"))


def lock_mutable_ids(pks: Sequence[int]) -> dict[int, str]:
    """Like ``lock_mutable``, for row ids."""
    if not pks:
        return {}
    if connection.vendor == "postgresql":
        return lock_mutable(Cluster.objects.filter(pk__in=RawSQL("SELECT unnest(%s::bigint[])", [list(pks)])))
    status_of: dict[int, str] = {}
    for chunk in chunked(sorted(pks), in_list_size()):
        status_of.update(lock_mutable(Cluster.objects.filter(pk__in=chunk)))
    return status_of


# --- the run ------------------------------------------------------------------------------------------------


def write(
    batches: Iterable[list[Proposal | Unchanged]],
    groups: list[ClusterGroup],
    scoring: Scoring,
    reconsider: QuerySet[Cluster] | list[int],
    scan_run: ScanRun | None,
    actor: str,
    now: datetime,
    timings: dict[str, float],
) -> DetectionCounts:
    """Bring the cluster tables in step with ``batches`` (every group of the run's scope, scored) in one
    transaction; open clusters of ``reconsider`` that no group kept are superseded."""
    counts = DetectionCounts()
    live: set[int] = set()  # every open cluster this run keeps
    in_open_clusters = IdSet()
    waited = 0.0
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                # One detection writes at a time (a scan and a rescan may overlap); the second one
                # re-reads every row below after the first committed.
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_DETECTION_LOCK])
        # The open clusters of the scope, read under the detection lock but not locked themselves: a
        # run locks only the rows it is about to write (refreshed, reopened or superseded ones), each
        # re-read under its lock and skipped when a person or a worker holds it. An unchanged cluster
        # is only read, so a run over an unchanged index writes nothing, not even row locks.
        if isinstance(reconsider, list):
            reconsider_open = set(reconsider)
        else:
            reconsider_open = set(reconsider.values_list("pk", flat=True))
        rows = _RowWriter(scan_run, now)
        # Read under the lock: when the table holds no cluster, no group has a row to find (this run's
        # own rows carry ids of other groups), so the lookups per batch are skipped.
        empty = not Cluster.objects.exists()
        deferred = _defer_indexes() if empty and len(groups) >= BULK_LOAD_MIN_GROUPS else []
        try:
            iterator = iter(batches)
            while True:
                t = time.perf_counter()
                batch = next(iterator, None)
                waited += time.perf_counter() - t
                if batch is None:
                    break
                # An unchanged group was found by its id when it was scored: its row is re-read by row id,
                # under the detection lock, rather than looked up by its id again.
                looked_up = [item.stable_id for item in batch if isinstance(item, Proposal)]
                current = {} if empty or not looked_up else _current_rows(looked_up)
                current.update(_current_by_pk([item for item in batch if isinstance(item, Unchanged)]))
                status_of = lock_mutable_ids(
                    [
                        row[0]
                        for item in batch
                        if (row := current.get(item.stable_id)) is not None
                        and not (isinstance(item, Unchanged) and row[1] == MUTABLE)
                    ]
                )
                to_create: list[Proposal] = []
                to_refresh: list[tuple[int, Proposal, bool]] = []  # (pk, proposal, reopened)
                kept: list[tuple[int | None, Proposal | Unchanged]] = []
                # No group of the batch has a row (a first detection): each one is created, as the
                # loop below would decide one by one.
                fresh = batch if not current else []
                for item in fresh:
                    proposal = item if isinstance(item, Proposal) else _rescore(item, groups, scoring)
                    to_create.append(proposal)
                    kept.append((None, proposal))
                for item in batch if current else ():
                    row = current.get(item.stable_id)
                    if row is not None and isinstance(item, Unchanged) and row[1] == MUTABLE:
                        counts.unchanged += 1
                        kept.append((row[0], item))
                        continue
                    status = status_of.get(row[0]) if row is not None else None
                    if row is not None and status is None:
                        counts.held += 1
                        continue
                    # The row changed since the worker looked (or never was unchanged): score it here.
                    proposal = item if isinstance(item, Proposal) else _rescore(item, groups, scoring)
                    if row is None:
                        to_create.append(proposal)
                        kept.append((None, proposal))
                    else:
                        to_refresh.append((row[0], proposal, status == Cluster.SUPERSEDED))
                        kept.append((row[0], proposal))
                new_pk_of = rows.create(to_create)
                _refresh(to_refresh, scan_run, now, actor)
                counts.created += len(to_create)
                counts.reopened += sum(1 for *_rest, reopened in to_refresh if reopened)
                counts.refreshed += sum(1 for *_rest, reopened in to_refresh if not reopened)
                for maybe_pk, item in kept:
                    live.add(maybe_pk if maybe_pk is not None else new_pk_of[item.stable_id])
                    counts.count_open(item.kind)
                    in_open_clusters.update(item.member_ids)
        except BaseException:
            rows.abandon()
            raise
        rows.close()
        if deferred:
            t = time.perf_counter()
            with connection.cursor() as cursor:
                # PostgreSQL builds no index on a table with foreign key checks still queued (the
                # cluster's own nullable references, decided_by and superseded_by): run them now.
                cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
                for statement in deferred:
                    cursor.execute(statement)
                cursor.execute("SET CONSTRAINTS ALL DEFERRED")
            timings["index_build"] = time.perf_counter() - t
        candidates = sorted(pk for pk in reconsider_open if pk not in live)
        gone = sorted(pk for pk, status in lock_mutable_ids(candidates).items() if status == MUTABLE)
        counts.superseded = supersede(gone, scan_run, actor)
    counts.contacts_in_clusters = len(in_open_clusters)
    timings["waiting_for_scores"] = waited
    return counts


# New rows go to PostgreSQL from a thread while the next batch is scored (False: in line, as before;
# tests compare the two).
SEND_IN_BACKGROUND = True

# A first detection (empty cluster tables) of at least this many groups builds the tables' secondary
# indexes after loading the rows rather than row by row: on PostgreSQL each index costs an insert per
# row, most of the cost of writing a cluster, while building an index over the loaded rows is one sort.
BULK_LOAD_MIN_GROUPS = 20_000


def _defer_indexes() -> list[str]:
    """On PostgreSQL, when the cluster tables are empty, drop their secondary indexes (not the primary
    keys or unique constraints) and return the statements that build them again.

    Dropping an index locks its table until the transaction ends: readers of the cluster tables wait
    for this first detection to commit, instead of seeing empty tables. Nothing else is lost: the
    tables hold no row yet, and a failed run rolls the drop back with everything else.
    """
    if connection.vendor != "postgresql":
        return []
    tables = [Cluster._meta.db_table, ClusterMember._meta.db_table, ClusterLocation._meta.db_table]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT " + " AND ".join(f"NOT EXISTS (SELECT 1 FROM {table})" for table in tables)
        )
        if not cursor.fetchone()[0]:
            return []
        cursor.execute(
            "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index i "
            "WHERE i.indrelid = ANY(%s::regclass[]) AND NOT i.indisprimary "
            "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid) "
            "ORDER BY 1",
            [tables],
        )
        indexes = cursor.fetchall()
        for name, _definition in indexes:
            cursor.execute(f"DROP INDEX {name}")
    return [definition for _name, definition in indexes]


def _rescore(item: Unchanged, groups: list[ClusterGroup], scoring: Scoring) -> Proposal:
    group = groups[item.index]
    members = read_members(list(item.member_ids), scoring)
    return propose(item.index, group, [members[i] for i in item.member_ids], scoring)


# --- creating -----------------------------------------------------------------------------------------------

_CREATE_COLUMNS = [
    "cluster_id", "natural_keys", "location_id", "cross_location", "kind", "confidence", "auto_merge",
    "status", "reasons", "pair_scores", "member_count", "suggested_primary_uid", "chosen_primary_uid",
    "scan_run_id", "created_at", "updated_at", "policy_version",
]  # fmt: skip
_MEMBER_COLUMNS = ["cluster_id", "contact_id", "location_id", "updated_at_when_scored"]
_LOCATION_COLUMNS = ["cluster_id", "location_id"]

# COPY's text format gives these four characters a meaning; anything else is passed as it is.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"})


def _copy_text(value: str) -> str:
    # Four substring tests (memchr in C) cost a fraction of one regular expression search, and almost
    # no value holds any of the four.
    if "\\" in value or "\n" in value or "\t" in value or "\r" in value:
        return value.translate(_COPY_ESCAPES)
    return value


class _RowWriter:
    """Inserts new clusters with their members and locations."""

    def __init__(self, scan_run: ScanRun | None, now: datetime) -> None:
        self.scan_run_id = scan_run.pk if scan_run is not None else None
        self.now = now
        self._sequence: str | None = None
        self._sender: ThreadPoolExecutor | None = None
        self._pending: Future[None] | None = None

    def create(self, proposals: list[Proposal]) -> dict[str, int]:
        """Insert ``proposals`` as open clusters; returns cluster id -> row id."""
        if not proposals:
            return {}
        if connection.vendor == "postgresql":
            return self._copy(proposals)
        return self._insert(proposals)

    def _insert(self, proposals: list[Proposal]) -> dict[str, int]:
        now, scan_run_id = self.now, self.scan_run_id
        rows = [
            (
                p.stable_id, p.natural_keys_json, p.location_id, p.cross_location, p.kind, p.confidence,
                p.auto_merge, Cluster.OPEN, p.reasons_json, p.pair_scores_json, len(p.member_ids),
                p.suggested_primary_uid, "", scan_run_id, now, now, p.policy_version,
            )  # fmt: skip
            for p in proposals
        ]
        insert_rows(Cluster._meta.db_table, _CREATE_COLUMNS, rows)
        sql = f"SELECT cluster_id, id FROM {Cluster._meta.db_table} WHERE"
        pk_of: dict[str, int] = dict(select_by_text(sql, "cluster_id", [p.stable_id for p in proposals]))
        insert_members_and_locations([(pk_of[p.stable_id], p) for p in proposals], locations=True)
        return pk_of

    def _new_ids(self, count: int) -> list[int]:
        """``count`` row ids drawn from the cluster table's sequence (as the inserts would draw them)."""
        self.wait()
        with connection.cursor() as cursor:
            if self._sequence is None:
                cursor.execute("SELECT pg_get_serial_sequence(%s, 'id')", [Cluster._meta.db_table])
                self._sequence = cursor.fetchone()[0]
            cursor.execute("SELECT nextval(%s) FROM generate_series(1, %s)", [self._sequence, count])
            return [row[0] for row in cursor.fetchall()]

    def _copy(self, proposals: list[Proposal]) -> dict[str, int]:
        ids = self._new_ids(len(proposals))
        now = self.now.isoformat()
        null = "\\N"
        scan_run = null if self.scan_run_id is None else str(self.scan_run_id)
        clusters: list[str] = []
        members: list[str] = []
        locations: list[str] = []
        for pk, p in zip(ids, proposals, strict=True):
            clusters.append(
                f"{pk}\t{_copy_text(p.stable_id)}\t{_copy_text(p.natural_keys_json)}\t"
                f"{null if p.location_id is None else p.location_id}\t{'t' if p.cross_location else 'f'}\t"
                f"{p.kind}\t{p.confidence}\t{'t' if p.auto_merge else 'f'}\t{Cluster.OPEN}\t"
                f"{_copy_text(p.reasons_json)}\t{_copy_text(p.pair_scores_json)}\t{len(p.member_ids)}\t"
                f"{_copy_text(p.suggested_primary_uid)}\t\t{scan_run}\t{now}\t{now}\t{p.policy_version}\n"
            )
            for contact_id, location_id, updated in zip(p.member_ids, p.member_locations, p.member_updated, strict=True):
                stamp = updated if isinstance(updated, str) else updated.isoformat()
                members.append(f"{pk}\t{contact_id}\t{location_id}\t{stamp}\n")
            for location_id in p.location_ids:
                locations.append(f"{pk}\t{location_id}\n")
        copies = [
            (f"COPY {table} ({', '.join(columns)}) FROM STDIN", "".join(lines))
            for table, columns, lines in (
                (Cluster._meta.db_table, ["id", *_CREATE_COLUMNS], clusters),
                (ClusterMember._meta.db_table, _MEMBER_COLUMNS, members),
                (ClusterLocation._meta.db_table, _LOCATION_COLUMNS, locations),
            )
            if lines
        ]
        del clusters, members, locations
        # Sent from a thread: the database takes the rows (most of their cost is on its side: WAL,
        # the unique indexes, parsing JSON) while this process scores the next batch. The thread
        # drives this connection's own psycopg connection, in this transaction; psycopg serializes
        # every other statement on it behind the COPY, so nothing runs out of order.
        self.wait()
        raw = connection.connection
        if not SEND_IN_BACKGROUND:
            _send_copies(raw, copies, threading.Event())
            return {p.stable_id: pk for pk, p in zip(ids, proposals, strict=True)}
        if self._sender is None:
            self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="detect-copy")
        started = threading.Event()
        self._pending = self._sender.submit(_send_copies, raw, copies, started)
        # Once the cluster rows' COPY holds the connection, every later statement of this run waits
        # behind it (a lookup of a cluster id sees the rows of the batches before).
        while not started.wait(0.05):
            if self._pending.done():
                break
        return {p.stable_id: pk for pk, p in zip(ids, proposals, strict=True)}

    def wait(self) -> None:
        """Wait for the rows being sent; raises what sending them raised."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def abandon(self) -> None:
        """On the way out of a failed run: wait for the sending thread, whatever it raised."""
        with contextlib.suppress(Exception):  # the run's own error is the one raised
            self.close()

    def close(self) -> None:
        """Wait for the rows being sent (raising what went wrong) and stop the sending thread."""
        try:
            self.wait()
        finally:
            if self._sender is not None:
                self._sender.shutdown(wait=True)
                self._sender = None


def _send_copies(raw: Any, copies: list[tuple[str, str]], started: threading.Event) -> None:
    try:
        with raw.cursor() as cursor:
            for statement, text in copies:
                with cursor.copy(statement) as copy:
                    started.set()
                    copy.write(text)
    finally:
        started.set()


def insert_members_and_locations(items: list[tuple[int, Proposal]], *, locations: bool) -> None:
    """Member rows (and location rows) of clusters that exist."""
    member_rows = [
        (pk, contact_id, location_id, updated)
        for pk, p in items
        for contact_id, location_id, updated in zip(p.member_ids, p.member_locations, p.member_updated, strict=True)
    ]
    insert_rows(ClusterMember._meta.db_table, _MEMBER_COLUMNS, member_rows)
    if locations:
        insert_rows(
            ClusterLocation._meta.db_table,
            _LOCATION_COLUMNS,
            [(pk, location_id) for pk, p in items for location_id in p.location_ids],
        )


# --- refreshing ---------------------------------------------------------------------------------------------

_REFRESH_COLUMNS = [
    "natural_keys", "location_id", "cross_location", "kind", "confidence", "auto_merge", "reasons",
    "pair_scores", "member_count", "suggested_primary_uid", "status", "superseded_by_id", "scan_run_id",
    "updated_at", "policy_version",
]  # fmt: skip


def _refresh(items: list[tuple[int, Proposal, bool]], scan_run: ScanRun | None, now: datetime, actor: str) -> None:
    """Rescore clusters in place (membership is the same: their ids say so) and renew member stamps."""
    if not items:
        return
    scan_run_id = scan_run.pk if scan_run is not None else None
    rows = [
        (
            pk, p.natural_keys_json, p.location_id, p.cross_location, p.kind, p.confidence, p.auto_merge,
            p.reasons_json, p.pair_scores_json, len(p.member_ids), p.suggested_primary_uid, Cluster.OPEN, None,
            scan_run_id, now, p.policy_version,
        )  # fmt: skip
        for pk, p, _reopened in items
    ]
    update_rows(Cluster._meta.db_table, "id", _REFRESH_COLUMNS, rows)
    pks = [pk for pk, _p, _r in items]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"DELETE FROM {ClusterMember._meta.db_table} WHERE cluster_id = ANY(%s::bigint[])", [pks])
        else:
            for chunk in chunked(pks, in_list_size()):
                marks = ", ".join(["%s"] * len(chunk))
                cursor.execute(f"DELETE FROM {ClusterMember._meta.db_table} WHERE cluster_id IN ({marks})", list(chunk))
    insert_members_and_locations([(pk, p) for pk, p, _r in items], locations=False)
    audit.record_many(
        audit.PendingEvent(
            "cluster.reopened",
            actor=actor,
            cluster_ref=p.stable_id,
            location_uids=p.location_uids,
            contact_uids=p.member_uids,
            natural_keys=p.natural_keys,
            payload={"reason": "the same members form a duplicate group again", "clusterPk": pk},
        )
        for pk, p, reopened in items
        if reopened
    )


# --- superseding --------------------------------------------------------------------------------------------


def _successors(gone: list[int]) -> dict[int, int]:
    """For each superseded cluster, the open cluster now holding most of its members.

    Per member, a within-location cluster is preferred to a cross-location one; ties go to the
    lowest row id, so the choice is deterministic.
    """
    member_table, cluster_table = ClusterMember._meta.db_table, Cluster._meta.db_table
    sql = (
        f"SELECT old.cluster_id, old.contact_id, new.cluster_id, c.cross_location FROM {member_table} old "
        f"JOIN {member_table} new ON new.contact_id = old.contact_id AND new.cluster_id <> old.cluster_id "
        f"JOIN {cluster_table} c ON c.id = new.cluster_id AND c.status = 'open' WHERE"
    )
    gone_set = set(gone)
    options: dict[tuple[int, int], list[tuple[bool, int]]] = defaultdict(list)
    for old_pk, contact_id, new_pk, cross in select_by_ids(sql, "old.cluster_id", gone):
        if new_pk not in gone_set:
            options[(old_pk, contact_id)].append((bool(cross), new_pk))
    votes: dict[int, Counter[int]] = defaultdict(Counter)
    for (old_pk, _contact_id), choices in options.items():
        votes[old_pk][min(choices)[1]] += 1
    return {old_pk: min(counter, key=lambda pk: (-counter[pk], pk)) for old_pk, counter in votes.items()}


def supersede(gone: list[int], scan_run: ScanRun | None, actor: str) -> int:
    """Mark open clusters whose membership no longer exists as superseded, each with an audit event.

    Rows are updated with one statement and the events appended in one go, in row id order.
    """
    if not gone:
        return 0
    successor_of = _successors(gone)
    cluster_table = Cluster._meta.db_table
    name_of: dict[int, str] = dict(
        select_by_ids(f"SELECT id, cluster_id FROM {cluster_table} WHERE", "id", sorted(set(successor_of.values())))
    )
    members: dict[int, list[str]] = defaultdict(list)
    member_sql = (
        f"SELECT m.cluster_id, c.uid FROM {ClusterMember._meta.db_table} m "
        f"JOIN {Contact._meta.db_table} c ON c.id = m.contact_id WHERE"
    )
    for cluster_pk, uid in select_by_ids(member_sql, "m.cluster_id", gone):
        members[cluster_pk].append(uid)
    location_sql = (
        f"SELECT t.cluster_id, l.uid FROM {ClusterLocation._meta.db_table} t "
        f"JOIN {Location._meta.db_table} l ON l.id = t.location_id WHERE"
    )
    locations: dict[int, list[str]] = defaultdict(list)
    for cluster_pk, uid in select_by_ids(location_sql, "t.cluster_id", gone):
        locations[cluster_pk].append(uid)
    info = {
        pk: (cluster_id, json.loads(keys) if isinstance(keys, str) else keys)
        for pk, cluster_id, keys in select_by_ids(
            f"SELECT id, cluster_id, natural_keys FROM {cluster_table} WHERE", "id", gone
        )
    }
    from django.utils import timezone

    now = timezone.now()
    update_rows(
        cluster_table,
        "id",
        ["status", "superseded_by_id", "updated_at"],
        [(pk, Cluster.SUPERSEDED, successor_of.get(pk), now) for pk in gone],
    )
    scan_run_pk = scan_run.pk if scan_run is not None else None
    events = []
    for pk in gone:
        successor = successor_of.get(pk)
        cluster_id, natural_keys = info[pk]
        events.append(
            audit.PendingEvent(
                "cluster.superseded",
                actor=actor,
                cluster_ref=cluster_id,
                location_uids=tuple(locations.get(pk, ())),
                contact_uids=tuple(sorted(members.get(pk, []))),
                natural_keys=tuple(natural_keys or ()),
                payload={
                    "supersededBy": name_of.get(successor) if successor is not None else None,
                    "reason": "membership changed" if successor is not None else "no longer a duplicate group",
                    "scanRun": scan_run_pk,
                },
            )
        )
    audit.record_many(events)
    return len(gone)
