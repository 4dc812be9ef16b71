"""Detection: turn the contact index into duplicate clusters, and keep the cluster table in step with it.

Orchestration and persistence only; the rules live in the pure modules: ``dedup.clustering`` groups
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

import json
import logging
import multiprocessing
import sys
import time
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.db import connection, connections, transaction
from django.db.models import Prefetch, Q, QuerySet
from django.db.models.expressions import RawSQL
from django.utils import timezone

from dedup import audit
from dedup.clustering import ClusterGroup, build_clusters, stable_cluster_id
from dedup.consent import ChannelConsent
from dedup.dblimits import chunked, in_list_size, in_values
from dedup.indexing import insert_rows, update_rows
from dedup.models import (
    Cluster,
    ClusterMember,
    Contact,
    ContactKey,
    Location,
    Policy,
    RestoreRecord,
    ReviewDecision,
    ScanRun,
)
from dedup.phones import normalize_phone
from dedup.records import MemberRecord, normalize_email, phone_identity
from dedup.scoring import assess_cluster
from dedup.survivorship import choose_primary
from podium_client.types import Address, format_timestamp

logger = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# The status detection may rewrite. Everything else belongs to a person or a merge worker.
_MUTABLE = Cluster.OPEN

# Groups scored and written together: big enough to amortize each round of queries, small enough that
# a batch's records and proposals stay a few megabytes.
BATCH_GROUPS = 5000
# Rows written by one run after which the cluster tables' planner statistics are refreshed.
_ANALYZE_AFTER = 10_000
# Below this many indexed contacts scoring stays in this process: forking costs more than it saves.
PARALLEL_MIN_CONTACTS = 100_000


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


@dataclass(slots=True)
class _Proposal:
    """A scored group in the plain values the cluster tables take (picklable, made in worker processes).

    JSON columns are serialized already, so the writing process only passes text through.
    """

    index: int
    stable_id: str
    member_uids: tuple[str, ...]
    natural_keys: tuple[str, ...]
    location_uids: tuple[str, ...]
    cross_location: bool
    location_id: int | None
    location_ids: tuple[int, ...]
    kind: str
    confidence: Decimal
    auto_merge: bool
    natural_keys_json: str
    reasons_json: str
    pair_scores_json: str
    suggested_primary_uid: str
    member_ids: tuple[int, ...]
    member_locations: tuple[int, ...]
    member_updated: tuple[datetime, ...]
    policy_version: int = 1


@dataclass(frozen=True, slots=True)
class _Unchanged:
    """A group whose open cluster was scored from exactly these inputs: same members (the id says so),
    the same ``updatedAt`` for each, and no policy change since. Not scored again."""

    index: int
    stable_id: str
    kind: str
    cross_location: bool
    member_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class _Scoring:
    """Everything scoring needs besides the members: policy, the location maps, when policy last changed."""

    threshold: Decimal
    cross_location_auto_merge: bool
    email_secondary_key: bool
    location_uid_of: dict[int, str]
    location_id_of: dict[str, int]
    policy_changed_at: datetime
    rescore: bool
    # Policy.scoring_version read with the values above: written on every cluster scored, so a merge
    # can tell a cluster scored under an older policy (dedup.merge.decisions refuses those in bulk).
    policy_version: int = 1
    # Contacts a person restored after a merge (and the ones re-created from them): a restore is a
    # person's decision, so a cluster holding one is not merged again without a person.
    restored_uids: frozenset[str] = frozenset()


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
    kinds = [ContactKey.PHONE] + ([ContactKey.EMAIL] if policy.email_secondary_key else [])
    location_uid_of = dict(Location.objects.values_list("pk", "uid"))
    location_id_of = {uid: pk for pk, uid in location_uid_of.items()}
    scoring = _Scoring(
        threshold=policy.auto_merge_threshold,
        cross_location_auto_merge=policy.cross_location_auto_merge,
        email_secondary_key=policy.email_secondary_key,
        location_uid_of=location_uid_of,
        location_id_of=location_id_of,
        policy_changed_at=policy.updated_at,
        rescore=rescore,
        policy_version=policy.scoring_version,
        restored_uids=restored_contact_uids(),
    )

    key_scoped = keys is not None or contact_ids is not None
    if workers is None:
        workers = 0 if key_scoped else _default_workers()
    # Workers are forked first, while this process is still small: what they inherit is what
    # they hold, and each opens its own database connection.
    pool = _start_pool(workers)
    try:
        return _detect(
            pool, scoring, kinds, locations, keys, contact_ids, key_scoped, scan_run, actor, started, timings
        )
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()


def _detect(
    pool: Any,
    scoring: _Scoring,
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
    if key_scoped:
        seed_ids = set(contact_ids or ())
        key_list = sorted(set(keys or ()))
        if key_list:
            seed_ids |= _holders(key_list, kinds=None, active_only=False)
        candidates, closure_ids = _read_closure(seed_ids, kinds)
        considered_ids = seed_ids | closure_ids
    else:
        candidates = _read_shared(kinds)
    timings["read_keys"] = time.perf_counter() - started

    t = time.perf_counter()
    excluded = list(
        ReviewDecision.objects.filter(decision=ReviewDecision.DIFFERENT_PEOPLE).values_list("uid_a", "uid_b")
    )
    groups = _group(candidates, location_uid_of, excluded)
    if scope_location_ids is not None:
        scope_uids = {location_uid_of[pk] for pk in scope_location_ids}
        groups = [g for g in groups if scope_uids.intersection(g.location_uids)]
    del candidates
    timings["cluster"] = time.perf_counter() - t

    t = time.perf_counter()
    reconsider: QuerySet[Cluster] | list[int]
    if key_scoped:
        # Ids, not a queryset: a rescan of many keys touches thousands of clusters, more than one IN
        # list may carry on SQLite; ``_write`` locks them in chunks.
        reconsider = _clusters_with_members(considered_ids)
    elif scope_location_ids is not None:
        reconsider = Cluster.objects.filter(
            Q(location_id__in=in_values(scope_location_ids)) | Q(locations__in=in_values(scope_location_ids)),
            status=_MUTABLE,
        ).distinct()
    else:
        reconsider = Cluster.objects.filter(status=_MUTABLE)
    now = timezone.now()
    batches = _scored_batches(groups, scoring, pool)
    summary = _write(batches, groups, scoring, reconsider, scan_run, actor, now, timings)
    timings["score_and_write"] = time.perf_counter() - t

    if summary.created + summary.refreshed + summary.reopened >= _ANALYZE_AFTER:
        # The planner's statistics still describe the cluster tables before this run; plans made
        # for a few rows over hundreds of thousands turn the next lookups into full scans.
        with connection.cursor() as cursor:
            for table in (Cluster._meta.db_table, ClusterMember._meta.db_table, Cluster.locations.through._meta.db_table):
                cursor.execute(f"ANALYZE {table}")
    summary.active_contacts = _active_contacts(scope_location_ids, key_scoped, considered_ids)
    summary.elapsed_seconds = time.perf_counter() - started
    summary.timings = timings
    logger.info(
        "detection: %d open cluster(s) (%d auto, %d review, %d cross); %d created, %d refreshed, "
        "%d superseded, %d held in %.2fs",
        summary.clusters_open, summary.auto, summary.review, summary.cross, summary.created,
        summary.refreshed, summary.superseded, summary.held, summary.elapsed_seconds,
    )  # fmt: skip
    return summary


def _group(
    candidates: list[_Candidate], location_uid_of: dict[int, str], excluded: list[tuple[str, str]]
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


def cluster_to_dict(cluster: Cluster) -> dict[str, Any]:
    """The NDJSON line of ``manage.py clusters`` for one cluster (members sorted by uid).

    Fetch the clusters with ``clusters_for_export`` when converting many.
    """
    members = sorted(cluster.members.all(), key=lambda m: m.contact.uid)
    return {
        "clusterId": cluster.cluster_id,
        "naturalKeys": list(cluster.natural_keys),
        "locationUid": None if cluster.cross_location or cluster.location is None else cluster.location.uid,
        "crossLocation": cluster.cross_location,
        "kind": cluster.kind,
        "confidence": float(cluster.confidence),
        "autoMerge": cluster.auto_merge,
        "status": cluster.status,
        "suggestedPrimaryUid": cluster.suggested_primary_uid,
        "reasons": list(cluster.reasons),
        "members": [
            {
                "contactUid": m.contact.uid,
                "locationUid": m.location.uid,
                "name": m.contact.name,
                "fieldCount": m.contact.field_count,
                "updatedAt": _iso(m.updated_at_when_scored or m.contact.updated_at),
                "marketingOptOut": m.contact.marketing_opt_out,
                "smsOptOut": m.contact.sms_opt_out,
                "emailOptOut": m.contact.email_opt_out,
            }
            for m in members
        ],
    }


def clusters_for_export(queryset: QuerySet[Cluster] | None = None) -> QuerySet[Cluster]:
    """Clusters with everything ``cluster_to_dict`` reads prefetched (a fixed number of queries).

    The members' contacts and locations come joined to the members, not prefetched through their
    foreign keys: Django 5.2 sends that prefetch to SQLite as one ``OR`` term per contact, which
    SQLite refuses past 1000 terms (``dedup.dblimits``). Iterate with ``chunk_size`` at most
    ``dedup.dblimits.in_list_size()``: each chunk's members are read with one ``IN`` list of its ids.
    """
    qs = queryset if queryset is not None else Cluster.objects.all()
    members = Prefetch("members", queryset=ClusterMember.objects.select_related("contact", "location"))
    return qs.select_related("location").prefetch_related(members)


def member_records(cluster: Cluster) -> list[MemberRecord]:
    """The domain view of a cluster's members as indexed, sorted by uid (for merging and previews)."""
    ids = list(cluster.members.values_list("contact_id", flat=True))
    records = load_member_records(ids)
    return sorted(records.values(), key=lambda r: r.uid)


def load_member_records(
    contact_ids: Sequence[int], location_uid_of: dict[int, str] | None = None
) -> dict[int, MemberRecord]:
    """``MemberRecord`` of indexed contacts by row id, in a few bulk queries.

    Phone channels are paired with their natural keys from the key table; a spelling the table does
    not hold (a second spelling of a number already keyed, or a phone in the uncategorized queue) is
    normalized again with the location's country, which costs nothing for the rare cases it serves.
    """
    if location_uid_of is None:
        location_uid_of = dict(Location.objects.values_list("pk", "uid"))
    region_of = dict(Location.objects.values_list("pk", "country"))
    result: dict[int, MemberRecord] = {}
    fields = (
        "pk", "uid", "location_id", "name", "channels", "tags", "attributes", "address", "field_count",
        "marketing_opt_out", "sms_opt_out", "email_opt_out", "updated_at", "location_uids", "conversations",
    )  # fmt: skip
    for chunk in chunked(list(contact_ids), in_list_size()):
        key_of: dict[int, dict[str, str]] = defaultdict(dict)
        for contact_id, raw, key in ContactKey.objects.filter(
            contact_id__in=chunk, kind=ContactKey.PHONE
        ).values_list("contact_id", "raw", "key"):
            key_of[contact_id][raw] = key
        for row in Contact.objects.filter(pk__in=chunk).values_list(*fields):
            (pk, uid, location_id, name, channels, tags, attributes, address, field_count,
             marketing, sms, email, updated_at, location_uids, conversations) = row  # fmt: skip
            keys = key_of.get(pk, {})
            region = region_of.get(location_id, "")
            phones: list[tuple[str, str | None]] = []
            emails: list[str] = []
            consent: list[ChannelConsent] = []
            for channel in channels or ():
                if not isinstance(channel, dict):
                    continue
                identifier = str(channel.get("identifier") or "")
                kind = str(channel.get("type") or "").upper()
                if kind == ContactKey.PHONE:
                    phone_key: str | None = keys.get(identifier)
                    if phone_key is None:
                        phone_key = normalize_phone(identifier, region).natural_key
                    phones.append((identifier, phone_key))
                    identity = phone_identity(phone_key, identifier)
                elif kind == ContactKey.EMAIL:
                    emails.append(identifier)
                    identity = normalize_email(identifier)
                else:
                    continue
                consent.append(
                    ChannelConsent(
                        kind=kind,
                        identity=identity,
                        identifier=identifier,
                        opted_in=frozenset(channel.get("marketingOptedInLocationUids") or ()),
                        transactional_opt_out=bool(channel.get("transactionalOptedOutAt")),
                    )
                )
            result[pk] = MemberRecord.build(
                uid=uid,
                location_uid=location_uid_of.get(location_id, ""),
                updated_at=updated_at or _EPOCH,
                name=name or "",
                phone_channels=phones,
                raw_emails=emails,
                tags=[_tag_label(t) for t in tags or ()],
                attributes=[
                    (str(a.get("label") or ""), _attribute_text(a.get("value")))
                    for a in attributes or ()
                    if isinstance(a, dict)
                ],
                address=_address_text(address),
                marketing_opt_out=marketing,
                sms_opt_out=sms,
                email_opt_out=email,
                field_count=field_count,
                location_uids=location_uids or (),
                consent=consent,
                tag_refs=[(t.get("uid"), str(t.get("label") or "")) for t in tags or () if isinstance(t, dict)],
                attribute_refs=[
                    (a.get("uid"), str(a.get("label") or ""), _attribute_text(a.get("value")))
                    for a in attributes or ()
                    if isinstance(a, dict)
                ],
                address_parts=address if isinstance(address, dict) else None,
                conversation_uids=conversations or (),
            )
    return result


def _attribute_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _address_text(address: Any) -> str | None:
    """An address object (or a pre-v4 string) as one line; None when it holds nothing."""
    if address is None or isinstance(address, str):
        return address or None
    if isinstance(address, dict):
        parsed = Address.from_wire(address)
        return None if parsed is None else parsed.one_line()
    return None


# --- reading the keys ---------------------------------------------------------------------------------------


# --- reading the index --------------------------------------------------------------------------------------

_SHARED_KEYS_TABLE = "dedup_detect_shared_keys"
_FETCH = 20_000


# An active contact that may join a cluster: (uid, location id, the keys that can join it).
_Candidate = tuple[str, int, tuple[str, ...]]


def _active_sql(alias: str) -> str:
    return f"{alias}.deleted_at IS NULL AND {alias}.merged_into_uid = ''"


def _fold_rows(rows: Iterable[tuple[Any, ...]], out: list[_Candidate]) -> None:
    """Fold ``(contact id, uid, location id, key)`` rows sorted by contact into candidates.

    Keys are interned: every shared key is held by two or more contacts, and one string object for
    all of them is most of the memory a million-contact read needs.
    """
    current: int | None = None
    uid = ""
    location = 0
    keys: list[str] = []
    for contact_id, row_uid, location_id, key in rows:
        if contact_id != current:
            if current is not None:
                out.append((uid, location, tuple(keys)))
            current, uid, location, keys = contact_id, row_uid, location_id, []
        keys.append(sys.intern(key))
    if current is not None:
        out.append((uid, location, tuple(keys)))


def _read_shared(kinds: Sequence[str]) -> list[_Candidate]:
    """Every active contact holding a key that another active contact holds too, sorted by location.

    The database does the grouping (into a temporary table, analyzed so the join that follows is
    planned for its real size) and the sorting; rows are streamed, never fetched all at once.
    """
    key_table, contact_table = ContactKey._meta.db_table, Contact._meta.db_table
    marks = ", ".join(["%s"] * len(kinds))
    candidates: list[_Candidate] = []
    with connection.cursor() as cursor:
        try:
            cursor.execute(f"DROP TABLE IF EXISTS {_SHARED_KEYS_TABLE}")
            cursor.execute(
                f"CREATE TEMP TABLE {_SHARED_KEYS_TABLE} AS SELECT k.key FROM {key_table} k "
                f"JOIN {contact_table} c ON c.id = k.contact_id WHERE {_active_sql('c')} AND k.kind IN ({marks}) "
                f"GROUP BY k.key HAVING COUNT(*) > 1",
                list(kinds),
            )
            cursor.execute(f"ANALYZE {_SHARED_KEYS_TABLE}")
            cursor.execute(
                f"SELECT k.contact_id, c.uid, k.location_id, k.key FROM {key_table} k "
                f"JOIN {contact_table} c ON c.id = k.contact_id "
                f"WHERE {_active_sql('c')} AND k.kind IN ({marks}) "
                f"AND k.key IN (SELECT key FROM {_SHARED_KEYS_TABLE}) ORDER BY k.location_id, k.contact_id",
                list(kinds),
            )
            pending: list[tuple[Any, ...]] = []
            while rows := cursor.fetchmany(_FETCH):
                # A contact's rows may straddle two fetches: hold back the last contact's rows.
                pending.extend(rows)
                last = pending[-1][0]
                cut = len(pending)
                while cut > 0 and pending[cut - 1][0] == last:
                    cut -= 1
                _fold_rows(pending[:cut], candidates)
                pending = pending[cut:]
            _fold_rows(pending, candidates)
        finally:
            cursor.execute(f"DROP TABLE IF EXISTS {_SHARED_KEYS_TABLE}")
    return candidates


# Key-scoped reads filter by one indexed column per query and check the rest in Python: joined with
# the "active contact" condition, SQLite's planner starts from the index on merged_into_uid (nearly
# every row has the same empty value) and scans a million contacts per batch of keys.


def _active_uids(contact_ids: Iterable[int]) -> dict[int, str]:
    """The uids of those contacts that are active (neither soft-deleted nor merged)."""
    sql = f"SELECT id, uid, deleted_at, merged_into_uid FROM {Contact._meta.db_table} WHERE"
    return {
        pk: uid
        for pk, uid, deleted_at, merged_into_uid in _select_by_ids(sql, "id", sorted(contact_ids))
        if deleted_at is None and not merged_into_uid
    }


def _holders(keys: Sequence[str], kinds: Sequence[str] | None, active_only: bool) -> set[int]:
    """Row ids of the contacts holding any of ``keys``."""
    sql = f"SELECT contact_id, kind FROM {ContactKey._meta.db_table} WHERE"
    found = {cid for cid, kind in _select_by_text(sql, "key", keys) if kinds is None or kind in kinds}
    return set(_active_uids(found)) if active_only else found


def _read_closure(seed_ids: set[int], kinds: Sequence[str]) -> tuple[list[_Candidate], set[int]]:
    """Every active contact connected to the seeds through shared keys, with its keys (and their ids).

    Grows one hop at a time (the seeds' keys, their other holders, those holders' keys, ...) until
    nothing new joins, so the components around the seeds are read whole and nothing else.
    """
    rows: list[tuple[Any, ...]] = []
    members: set[int] = set()
    frontier = set(_active_uids(seed_ids))
    seen_keys: set[str] = set()
    key_sql = f"SELECT contact_id, location_id, kind, key FROM {ContactKey._meta.db_table} WHERE"
    while frontier:
        uid_of = _active_uids(frontier)
        new_rows = [
            (contact_id, uid_of[contact_id], location_id, key)
            for contact_id, location_id, kind, key in _select_by_ids(key_sql, "contact_id", sorted(uid_of))
            if kind in kinds
        ]
        rows.extend(new_rows)
        members.update(uid_of)
        new_keys = {row[3] for row in new_rows} - seen_keys
        seen_keys |= new_keys
        frontier = _holders(sorted(new_keys), kinds, active_only=True) - members if new_keys else set()
    rows.sort(key=lambda row: (row[2], row[0]))
    candidates: list[_Candidate] = []
    _fold_rows(rows, candidates)
    return candidates, members


def _select_by_ids(sql: str, column: str, ids: Sequence[int]) -> Iterator[tuple[Any, ...]]:
    """Rows of ``sql`` (which ends in a WHERE clause) restricted to ``column`` in ``ids``.

    PostgreSQL gets one array parameter (``= ANY``), however many ids; SQLite gets chunked IN lists.
    """
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"{sql} {column} = ANY(%s)", [list(ids)])
            yield from cursor.fetchall()
            return
        for chunk in chunked(list(ids), in_list_size()):
            cursor.execute(f"{sql} {column} IN ({', '.join(['%s'] * len(chunk))})", list(chunk))
            yield from cursor.fetchall()


def _ids_of(uids: Sequence[str]) -> dict[str, int]:
    """Index row ids of contacts by uid."""
    sql = f"SELECT uid, id FROM {Contact._meta.db_table} WHERE"
    return dict(_select_by_text(sql, "uid", uids))


def _scoring_records(ids: Sequence[int], scoring: _Scoring) -> dict[int, MemberRecord]:
    """The records scoring and primary selection read, for some indexed contacts.

    Leaner than ``load_member_records``: the stored normalized name, the natural keys, tags, field
    count and ``updatedAt`` are all that scoring and the primary rule look at.
    """
    phones: dict[int, list[str]] = defaultdict(list)
    emails: dict[int, list[str]] = defaultdict(list)
    key_sql = f"SELECT contact_id, kind, key FROM {ContactKey._meta.db_table} WHERE"
    for contact_id, kind, key in _select_by_ids(key_sql, "contact_id", ids):
        (phones if kind == ContactKey.PHONE else emails)[contact_id].append(key)
    contact_sql = (
        f"SELECT id, uid, location_id, location_uids, normalized_name, tags, field_count, updated_at "
        f"FROM {Contact._meta.db_table} WHERE"
    )
    records: dict[int, MemberRecord] = {}
    rows = _select_by_ids(contact_sql, "id", ids)
    for contact_id, uid, location_id, location_uids, name, tags, field_count, updated_at in rows:
        if isinstance(tags, str):
            tags = json.loads(tags) if tags != "[]" else ()
        if isinstance(location_uids, str):
            location_uids = json.loads(location_uids)
        contact_phones = tuple(phones.get(contact_id, ()))
        contact_emails = tuple(emails.get(contact_id, ()))
        records[contact_id] = MemberRecord(
            uid=uid,
            location_uid=scoring.location_uid_of[location_id],
            name=name,
            phones=contact_phones,
            raw_phones=contact_phones,
            emails=contact_emails,
            raw_emails=(),
            tags=tuple(_tag_label(t) for t in tags or ()),
            attributes=(),
            address=None,
            marketing_opt_out=False,
            sms_opt_out=False,
            email_opt_out=False,
            field_count=field_count,
            updated_at=_aware(updated_at),
            location_uids=tuple(location_uids or ()),
        )
    return records


def _tag_label(tag: Any) -> str:
    return str(tag.get("label") or "") if isinstance(tag, dict) else str(tag)


def _aware(value: Any) -> datetime:
    """A timestamp read with a raw cursor (SQLite gives text) as an aware datetime."""
    if value is None:
        return _EPOCH
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _clusters_with_members(contact_ids: set[int]) -> list[int]:
    """Open clusters with a member among these contacts."""
    member_sql = f"SELECT cluster_id FROM {ClusterMember._meta.db_table} WHERE"
    cluster_ids = sorted({row[0] for row in _select_by_ids(member_sql, "contact_id", sorted(contact_ids))})
    status_sql = f"SELECT id, status FROM {Cluster._meta.db_table} WHERE"
    return [pk for pk, status in _select_by_ids(status_sql, "id", cluster_ids) if status == _MUTABLE]


def _active_contacts(scope_location_ids: set[int] | None, key_scoped: bool, contact_ids: set[int]) -> int:
    if key_scoped:
        return len(_active_uids(contact_ids))
    active = Contact.objects.filter(deleted_at__isnull=True, merged_into_uid="")
    if scope_location_ids is not None:
        active = active.filter(location_id__in=in_values(scope_location_ids))
    return active.count()


# --- scoring ------------------------------------------------------------------------------------------------


def _propose(
    index: int, group: ClusterGroup, records: dict[int, MemberRecord], ids: tuple[int, ...], scoring: _Scoring
) -> _Proposal:
    members = [records[i] for i in ids]
    assessment = assess_cluster(
        members,
        threshold=scoring.threshold,
        allow_cross_location_auto=scoring.cross_location_auto_merge,
        use_email_key=scoring.email_secondary_key,
    )
    # A group read across home locations may still have a location that holds every member (a Podium
    # contact can belong to several): then it is a within-location cluster of that location.
    common = sorted(set.intersection(*(set(m.location_uids) for m in members)))
    cross_location = group.cross_location and not common
    if cross_location:
        kind = Cluster.CROSS
    else:
        kind = Cluster.AUTO if assessment.auto_merge else Cluster.REVIEW
    auto_merge, reasons = assessment.auto_merge, list(assessment.reasons)
    if scoring.restored_uids.intersection(group.member_uids):
        auto_merge = False
        kind = Cluster.REVIEW if kind == Cluster.AUTO else kind
        reasons = [r for r in reasons if r != "auto_merge_eligible"] + [RESTORED_BY_PERSON]
    if group.location_uid is not None:
        location_uid: str | None = group.location_uid
    else:
        location_uid = common[0] if common else None
    stable_id = (
        group.stable_id
        if cross_location == group.cross_location
        else stable_cluster_id(group.member_uids, cross_location)
    )
    location_id_of = scoring.location_id_of
    all_locations = sorted({loc for m in members for loc in m.location_uids if loc in location_id_of})
    pair_scores = [
        {"a": p.uid_a, "b": p.uid_b, "score": p.score, "reasons": list(p.reasons), "conflict": p.conflict}
        for _key, p in sorted(assessment.pairs.items())
    ]
    return _Proposal(
        index=index,
        stable_id=stable_id,
        member_uids=group.member_uids,
        natural_keys=group.natural_keys,
        location_uids=tuple(all_locations),
        cross_location=cross_location,
        location_id=None if location_uid is None else location_id_of[location_uid],
        location_ids=tuple(sorted(location_id_of[uid] for uid in all_locations)),
        kind=kind,
        confidence=Decimal(f"{assessment.confidence:.2f}"),
        auto_merge=auto_merge,
        natural_keys_json=_json(list(group.natural_keys)),
        reasons_json=_json(reasons),
        pair_scores_json=_json(pair_scores),
        suggested_primary_uid=choose_primary(members).uid,
        member_ids=ids,
        member_locations=tuple(location_id_of[m.location_uid] for m in members),
        member_updated=tuple(m.updated_at for m in members),
        policy_version=scoring.policy_version,
    )


RESTORED_BY_PERSON = "restored_by_person"


def restored_contact_uids() -> frozenset[str]:
    """Every contact a person restored after a merge, under its own uid and the uid it was re-created as."""
    rows = RestoreRecord.objects.filter(restored_by__isnull=False).values_list("contact_uid", "new_uid")
    return frozenset(uid for pair in rows for uid in pair if uid)


def _unchanged_clusters(stable_ids: Sequence[str], scoring: _Scoring) -> dict[str, tuple[str, int]]:
    """Open clusters among these ids whose scoring inputs did not change: ``{cluster id: (kind, pk)}``.

    Unchanged means scored under the policy in force (its scoring version, and after its last change),
    and every member's ``updatedAt`` still the one it was scored with (the id fixes the membership).
    The comparison runs in the database.
    """
    if scoring.rescore or not stable_ids:
        return {}
    fresh: dict[int, tuple[str, str]] = {}
    sql = (
        f"SELECT id, cluster_id, kind, updated_at, policy_version FROM {Cluster._meta.db_table} "
        f"WHERE status = 'open' AND"
    )
    for pk, cluster_id, kind, updated_at, version in _select_by_text(sql, "cluster_id", stable_ids):
        if _aware(updated_at) >= scoring.policy_changed_at and version == scoring.policy_version:
            fresh[pk] = (cluster_id, kind)
    if not fresh:
        return {}
    member_table, contact_table = ClusterMember._meta.db_table, Contact._meta.db_table
    stale_sql = (
        f"SELECT DISTINCT m.cluster_id FROM {member_table} m JOIN {contact_table} c ON c.id = m.contact_id "
        f"WHERE (m.updated_at_when_scored IS NULL OR c.updated_at IS NULL "
        f"OR m.updated_at_when_scored <> c.updated_at) AND"
    )
    stale = {row[0] for row in _select_by_ids(stale_sql, "m.cluster_id", sorted(fresh))}
    return {cluster_id: (kind, pk) for pk, (cluster_id, kind) in fresh.items() if pk not in stale}


def _score_groups(start: int, groups: Sequence[ClusterGroup], scoring: _Scoring) -> list[_Proposal | _Unchanged]:
    """Score ``groups`` (the slice starting at ``start``), skipping those whose cluster is unchanged."""
    id_of = _ids_of(sorted({uid for g in groups for uid in g.member_uids}))
    member_ids = [tuple(id_of[uid] for uid in g.member_uids) for g in groups]
    candidates = [_stored_ids(g) for g in groups]
    unchanged = _unchanged_clusters([sid for ids in candidates for sid in ids], scoring)
    hits = [next((sid for sid in ids if sid in unchanged), None) for ids in candidates]
    wanted = sorted({i for hit, ids in zip(hits, member_ids, strict=True) if hit is None for i in ids})
    records = _scoring_records(wanted, scoring) if wanted else {}
    out: list[_Proposal | _Unchanged] = []
    for offset, (group, ids, hit) in enumerate(zip(groups, member_ids, hits, strict=True)):
        if hit is not None:
            cross = group.cross_location and hit == group.stable_id
            out.append(_Unchanged(start + offset, hit, unchanged[hit][0], cross, ids))
        else:
            out.append(_propose(start + offset, group, records, ids, scoring))
    return out


def _stored_ids(group: ClusterGroup) -> tuple[str, ...]:
    """The ids this group's cluster may be stored under: a group read across home locations whose
    members share a location was stored as a within-location cluster (see ``_propose``)."""
    if not group.cross_location:
        return (group.stable_id,)
    return (group.stable_id, stable_cluster_id(group.member_uids, False))


def _score_task(start: int, groups: list[ClusterGroup], scoring: _Scoring) -> list[_Proposal | _Unchanged]:
    """Score a slice of groups in a worker process (with its own database connection)."""
    return _score_groups(start, groups, scoring)


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


def _scored_batches(groups: list[ClusterGroup], scoring: _Scoring, pool: Any) -> Iterator[list[_Proposal | _Unchanged]]:
    """Proposals batch by batch, in order; with a pool, scored a few batches ahead of the writer."""
    slices = [(start, min(start + BATCH_GROUPS, len(groups))) for start in range(0, len(groups), BATCH_GROUPS)]
    if pool is None:
        return (_score_groups(a, groups[a:b], scoring) for a, b in slices)
    pending: deque[Any] = deque()
    queue = deque(slices)
    ahead = 4

    def submit() -> None:
        a, b = queue.popleft()
        pending.append(pool.apply_async(_score_task, (a, groups[a:b], scoring)))

    while queue and len(pending) < ahead:
        submit()

    def results() -> Iterator[list[_Proposal | _Unchanged]]:
        while pending:
            batch = pending.popleft().get()
            if queue:
                submit()
            yield batch

    return results()


# --- writing ------------------------------------------------------------------------------------------------


def _current_rows(cluster_ids: Sequence[str]) -> dict[str, tuple[int, str]]:
    """``{cluster id: (pk, status)}`` of the rows carrying these ids, whatever their status."""
    sql = f"SELECT cluster_id, id, status FROM {Cluster._meta.db_table} WHERE"
    return {cluster_id: (pk, status) for cluster_id, pk, status in _select_by_text(sql, "cluster_id", cluster_ids)}


def _lock_mutable(qs: QuerySet[Cluster]) -> dict[int, str]:
    """Status of the open or superseded clusters of ``qs``, locked; rows someone holds are skipped."""
    qs = Cluster.objects.filter(pk__in=qs.values("pk"), status__in=(_MUTABLE, Cluster.SUPERSEDED))
    if connection.features.has_select_for_update_skip_locked:
        qs = qs.select_for_update(skip_locked=True, of=("self",))
    return dict(qs.values_list("pk", "status"))


def _lock_mutable_ids(pks: Sequence[int]) -> dict[int, str]:
    if not pks:
        return {}
    if connection.vendor == "postgresql":
        return _lock_mutable(Cluster.objects.filter(pk__in=RawSQL("SELECT unnest(%s::bigint[])", [list(pks)])))
    status_of: dict[int, str] = {}
    for chunk in chunked(sorted(pks), in_list_size()):
        status_of.update(_lock_mutable(Cluster.objects.filter(pk__in=chunk)))
    return status_of


def _count_open(summary: DetectionSummary, kind: str) -> None:
    summary.clusters_open += 1
    if kind == Cluster.CROSS:
        summary.cross += 1
    elif kind == Cluster.AUTO:
        summary.auto += 1
    else:
        summary.review += 1


def _write(
    batches: Iterable[list[_Proposal | _Unchanged]],
    groups: list[ClusterGroup],
    scoring: _Scoring,
    reconsider: QuerySet[Cluster] | list[int],
    scan_run: ScanRun | None,
    actor: str,
    now: datetime,
    timings: dict[str, float],
) -> DetectionSummary:
    summary = DetectionSummary()
    live: set[int] = set()  # every open cluster this run keeps
    in_open_clusters = _IdSet()
    waited = 0.0
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                # One detection writes at a time (a scan and a rescan may overlap); the second one
                # re-reads every row below after the first committed.
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_DETECTION_LOCK])
        # Locked, skipping any row a person or a worker holds right now, and re-read under the lock:
        # a cluster approved since the scope was read is no longer open and is left alone.
        reconsider_status = (
            _lock_mutable_ids(reconsider) if isinstance(reconsider, list) else _lock_mutable(reconsider)
        )
        iterator = iter(batches)
        while True:
            t = time.perf_counter()
            batch = next(iterator, None)
            waited += time.perf_counter() - t
            if batch is None:
                break
            current = _current_rows([item.stable_id for item in batch])
            status_of = _lock_mutable_ids([pk for pk, _status in current.values()])
            to_create: list[_Proposal] = []
            to_refresh: list[tuple[int, _Proposal, bool]] = []  # (pk, proposal, reopened)
            kept: list[tuple[int | None, _Proposal | _Unchanged]] = []
            for item in batch:
                row = current.get(item.stable_id)
                status = status_of.get(row[0]) if row is not None else None
                if row is not None and status is None:
                    summary.held += 1
                    continue
                if isinstance(item, _Unchanged) and status == _MUTABLE:
                    summary.unchanged += 1
                    kept.append((row[0] if row else None, item))
                    continue
                # The row changed since the worker looked (or never was unchanged): score it here.
                proposal = item if isinstance(item, _Proposal) else _rescore(item, groups, scoring)
                if row is None:
                    to_create.append(proposal)
                    kept.append((None, proposal))
                else:
                    to_refresh.append((row[0], proposal, status == Cluster.SUPERSEDED))
                    kept.append((row[0], proposal))
            new_pk_of = _create(to_create, scan_run, now)
            _refresh(to_refresh, scan_run, now, actor)
            summary.created += len(to_create)
            summary.reopened += sum(1 for *_rest, reopened in to_refresh if reopened)
            summary.refreshed += sum(1 for *_rest, reopened in to_refresh if not reopened)
            for maybe_pk, item in kept:
                live.add(maybe_pk if maybe_pk is not None else new_pk_of[item.stable_id])
                _count_open(summary, item.kind)
                in_open_clusters.update(item.member_ids)
        gone = sorted(pk for pk, status in reconsider_status.items() if status == _MUTABLE and pk not in live)
        summary.superseded = _supersede(gone, scan_run, actor)
    summary.contacts_in_clusters = len(in_open_clusters)
    timings["waiting_for_scores"] = waited
    return summary


# An arbitrary constant naming the advisory lock that serializes detection writes.
_DETECTION_LOCK = 0xDE7EC7


class _IdSet:
    """A set of row ids as a bitmap: a million contacts cost 125 kB instead of 40 MB."""

    def __init__(self) -> None:
        self._bits = bytearray()
        self._count = 0

    def update(self, ids: Iterable[int]) -> None:
        bits = self._bits
        for i in ids:
            byte, bit = divmod(i, 8)
            if byte >= len(bits):
                bits.extend(bytes(byte - len(bits) + 4096))
            if not bits[byte] >> bit & 1:
                bits[byte] |= 1 << bit
                self._count += 1

    def __len__(self) -> int:
        return self._count


def _rescore(item: _Unchanged, groups: list[ClusterGroup], scoring: _Scoring) -> _Proposal:
    group = groups[item.index]
    records = _scoring_records(list(item.member_ids), scoring)
    return _propose(item.index, group, records, item.member_ids, scoring)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _cluster_values(p: _Proposal) -> dict[str, Any]:
    return {
        "natural_keys": p.natural_keys_json,
        "location_id": p.location_id,
        "cross_location": p.cross_location,
        "kind": p.kind,
        "confidence": p.confidence,
        "auto_merge": p.auto_merge,
        "reasons": p.reasons_json,
        "pair_scores": p.pair_scores_json,
        "member_count": len(p.member_ids),
        "suggested_primary_uid": p.suggested_primary_uid,
        "policy_version": p.policy_version,
    }


_CREATE_COLUMNS = [
    "cluster_id", "natural_keys", "location_id", "cross_location", "kind", "confidence", "auto_merge",
    "status", "reasons", "pair_scores", "member_count", "suggested_primary_uid", "chosen_primary_uid",
    "scan_run_id", "created_at", "updated_at", "policy_version",
]  # fmt: skip

_REFRESH_COLUMNS = [
    "natural_keys", "location_id", "cross_location", "kind", "confidence", "auto_merge", "reasons",
    "pair_scores", "member_count", "suggested_primary_uid", "status", "superseded_by_id", "scan_run_id",
    "updated_at", "policy_version",
]  # fmt: skip


def _create(proposals: list[_Proposal], scan_run: ScanRun | None, now: datetime) -> dict[str, int]:
    """Insert new clusters with their members and locations; returns cluster id -> row id."""
    if not proposals:
        return {}
    scan_run_id = scan_run.pk if scan_run is not None else None
    rows = [
        (
            p.stable_id, p.natural_keys_json, p.location_id, p.cross_location, p.kind, p.confidence, p.auto_merge,
            Cluster.OPEN, p.reasons_json, p.pair_scores_json, len(p.member_ids), p.suggested_primary_uid, "",
            scan_run_id, now, now, p.policy_version,
        )  # fmt: skip
        for p in proposals
    ]
    insert_rows(Cluster._meta.db_table, _CREATE_COLUMNS, rows)
    sql = f"SELECT cluster_id, id FROM {Cluster._meta.db_table} WHERE"
    pk_of = dict(_select_by_text(sql, "cluster_id", [p.stable_id for p in proposals]))
    _insert_members_and_locations([(pk_of[p.stable_id], p) for p in proposals], locations=True)
    return pk_of


def _select_by_text(sql: str, column: str, values: Sequence[str]) -> Iterator[tuple[Any, ...]]:
    """Like ``_select_by_ids``, for text values."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"{sql} {column} = ANY(%s)", [list(values)])
            yield from cursor.fetchall()
            return
        for chunk in chunked(list(values), in_list_size()):
            cursor.execute(f"{sql} {column} IN ({', '.join(['%s'] * len(chunk))})", list(chunk))
            yield from cursor.fetchall()


def _insert_members_and_locations(items: list[tuple[int, _Proposal]], *, locations: bool) -> None:
    member_rows = [
        (pk, contact_id, location_id, updated)
        for pk, p in items
        for contact_id, location_id, updated in zip(p.member_ids, p.member_locations, p.member_updated, strict=True)
    ]
    insert_rows(
        ClusterMember._meta.db_table, ["cluster_id", "contact_id", "location_id", "updated_at_when_scored"], member_rows
    )
    if locations:
        insert_rows(
            Cluster.locations.through._meta.db_table,
            ["cluster_id", "location_id"],
            [(pk, location_id) for pk, p in items for location_id in p.location_ids],
        )


def _refresh(
    items: list[tuple[int, _Proposal, bool]], scan_run: ScanRun | None, now: datetime, actor: str
) -> None:
    """Rescore clusters in place (membership is the same: their ids say so) and renew member stamps."""
    if not items:
        return
    scan_run_id = scan_run.pk if scan_run is not None else None
    rows = []
    for pk, p, _reopened in items:
        values = _cluster_values(p)
        values.update(status=Cluster.OPEN, superseded_by_id=None, scan_run_id=scan_run_id, updated_at=now)
        rows.append((pk, *(values[c] for c in _REFRESH_COLUMNS)))
    update_rows(Cluster._meta.db_table, "id", _REFRESH_COLUMNS, rows)
    pks = [pk for pk, _p, _r in items]
    for chunk in chunked(pks, in_list_size()):
        ClusterMember.objects.filter(cluster_id__in=chunk).delete()
    _insert_members_and_locations([(pk, p) for pk, p, _r in items], locations=False)
    for pk, p, reopened in items:
        if reopened:
            audit.record(
                "cluster.reopened",
                actor=actor,
                cluster_ref=p.stable_id,
                location_uids=p.location_uids,
                contact_uids=p.member_uids,
                natural_keys=p.natural_keys,
                payload={"reason": "the same members form a duplicate group again", "clusterPk": pk},
            )


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
    for old_pk, contact_id, new_pk, cross in _select_by_ids(sql, "old.cluster_id", gone):
        if new_pk not in gone_set:
            options[(old_pk, contact_id)].append((bool(cross), new_pk))
    votes: dict[int, Counter[int]] = defaultdict(Counter)
    for (old_pk, _contact_id), choices in options.items():
        votes[old_pk][min(choices)[1]] += 1
    return {old_pk: min(counter, key=lambda pk: (-counter[pk], pk)) for old_pk, counter in votes.items()}


def _supersede(gone: list[int], scan_run: ScanRun | None, actor: str) -> int:
    """Mark open clusters whose membership no longer exists as superseded, each with an audit event."""
    if not gone:
        return 0
    successor_of = _successors(gone)
    name_of: dict[int, str] = {}
    for chunk in chunked(sorted(set(successor_of.values())), in_list_size()):
        name_of.update(Cluster.objects.filter(pk__in=chunk).values_list("pk", "cluster_id"))
    members: dict[int, list[str]] = defaultdict(list)
    sql = (
        f"SELECT m.cluster_id, c.uid FROM {ClusterMember._meta.db_table} m "
        f"JOIN {Contact._meta.db_table} c ON c.id = m.contact_id WHERE"
    )
    for cluster_pk, uid in _select_by_ids(sql, "m.cluster_id", gone):
        members[cluster_pk].append(uid)
    for chunk in chunked(gone, in_list_size()):
        for cluster in Cluster.objects.filter(pk__in=chunk).prefetch_related("locations"):
            successor = successor_of.get(cluster.pk)
            Cluster.objects.filter(pk=cluster.pk, status=_MUTABLE).update(
                status=Cluster.SUPERSEDED, superseded_by_id=successor, updated_at=timezone.now()
            )
            audit.record(
                "cluster.superseded",
                actor=actor,
                cluster_ref=cluster.cluster_id,
                location_uids=[loc.uid for loc in cluster.locations.all()],
                contact_uids=sorted(members.get(cluster.pk, [])),
                natural_keys=cluster.natural_keys,
                payload={
                    "supersededBy": name_of.get(successor) if successor is not None else None,
                    "reason": "membership changed" if successor is not None else "no longer a duplicate group",
                    "scanRun": scan_run.pk if scan_run is not None else None,
                },
            )
    return len(gone)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else format_timestamp(value)
