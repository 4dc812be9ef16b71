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
3. Scores each group with the policy's threshold; cross-location groups auto-merge only when policy
   allows it.
4. Writes the result. A cluster's id derives from its members, so an unchanged membership finds its own
   row: an open one is refreshed in place (only when something changed), a superseded one reopened.
   Open clusters whose membership no longer exists are superseded: status ``superseded``,
   ``superseded_by`` the cluster that now holds most of their members, and an audit event. Clusters a
   person or a worker is acting on (approved, merging, merged, rejected, failed) are never touched; a
   changed membership gets a new cluster beside them.

A run is scoped three ways: everything; some locations (clusters touching them); or some contacts /
natural keys (an incremental scan, a rescan after drift) — then only the connected component around
those contacts is read, so the cost follows the change, not the corpus.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.db import connection, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from dedup import audit
from dedup.clustering import ClusterGroup, build_clusters
from dedup.indexing import chunked, in_chunk_size, insert_rows, update_rows
from dedup.models import (
    Cluster,
    ClusterMember,
    Contact,
    ContactKey,
    Location,
    Policy,
    ReviewDecision,
    ScanRun,
)
from dedup.phones import normalize_phone
from dedup.records import MemberRecord
from dedup.scoring import ClusterAssessment, assess_cluster
from dedup.survivorship import choose_primary
from podium_client.types import format_timestamp

logger = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Statuses detection may rewrite. Everything else belongs to a person or a merge worker.
_MUTABLE = Cluster.OPEN


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


@dataclass
class _Proposal:
    """A scored group, ready to be compared with the stored cluster of the same id."""

    group: ClusterGroup
    assessment: ClusterAssessment
    kind: str
    confidence: Decimal
    suggested_primary_uid: str
    pair_scores: list[dict[str, Any]]
    member_ids: list[int]
    member_locations: list[int]
    member_updated: list[datetime | None]
    location_id: int | None
    location_ids: list[int]


# --- public API -------------------------------------------------------------------------------------------


def detect(
    *,
    locations: list[str] | None = None,
    keys: Iterable[str] | None = None,
    scan_run: ScanRun | None = None,
    contact_ids: Iterable[int] | None = None,
    actor: str = "system",
) -> DetectionSummary:
    """Find duplicate clusters and bring the cluster table in step with the index.

    ``locations`` (uids) limits the run to clusters touching them; ``keys`` (natural keys) and
    ``contact_ids`` (index row ids) limit it to the contacts holding them and everything connected to
    those by a shared key. With none of them, the whole index is detected. ``scan_run`` is recorded on
    the clusters written. Policy decides the threshold, whether email is a secondary key and whether
    cross-location clusters may merge automatically.
    """
    started = time.perf_counter()
    timings: dict[str, float] = {}
    policy = Policy.current()
    kinds = [ContactKey.PHONE] + ([ContactKey.EMAIL] if policy.email_secondary_key else [])
    location_uid_of = dict(Location.objects.values_list("pk", "uid"))
    location_id_of = {uid: pk for pk, uid in location_uid_of.items()}
    scope_location_ids: set[int] | None = None
    if locations:
        scope_location_ids = {location_id_of[uid] for uid in locations if uid in location_id_of}

    key_scoped = keys is not None or contact_ids is not None
    seed_ids: set[int] = set()
    id_sql: str | None = None
    try:
        if key_scoped:
            seed_ids = set(contact_ids or ())
            key_list = sorted(set(keys or ()))
            if key_list:
                seed_ids |= _holders(key_list, kinds=None, active_only=False)
            candidates = _read_closure(seed_ids, kinds)
        else:
            candidates, id_sql = _read_shared(kinds)
        timings["read_keys"] = time.perf_counter() - started

        t = time.perf_counter()
        excluded = list(
            ReviewDecision.objects.filter(decision=ReviewDecision.DIFFERENT_PEOPLE).values_list("uid_a", "uid_b")
        )
        clustering_input = _clustering_input(candidates, location_uid_of)
        groups = build_clusters(clustering_input, cross_location=False, excluded_pairs=excluded)
        groups += build_clusters(clustering_input, cross_location=True, excluded_pairs=excluded)
        del clustering_input
        if scope_location_ids is not None:
            scope_uids = {location_uid_of[pk] for pk in scope_location_ids}
            groups = [g for g in groups if scope_uids.intersection(g.location_uids)]
        timings["cluster"] = time.perf_counter() - t

        t = time.perf_counter()
        id_of_uid = {c.uid: contact_id for contact_id, c in candidates.items()}
        wanted = {id_of_uid[uid] for g in groups for uid in g.member_uids}
        records = _scoring_records(candidates, wanted, location_uid_of, id_sql)
        timings["load_members"] = time.perf_counter() - t
    finally:
        if id_sql is not None:
            _drop_shared()
    considered_ids = seed_ids | set(candidates) if key_scoped else set()
    del candidates

    t = time.perf_counter()
    proposals = [
        _propose(group, records, id_of_uid, location_id_of, policy.auto_merge_threshold, policy)
        for group in groups
    ]
    del records
    timings["score"] = time.perf_counter() - t

    t = time.perf_counter()
    if key_scoped:
        reconsider = Cluster.objects.filter(
            status=_MUTABLE, pk__in=_clusters_with_members(considered_ids)
        )
    elif scope_location_ids is not None:
        reconsider = Cluster.objects.filter(
            Q(location_id__in=scope_location_ids) | Q(locations__in=scope_location_ids), status=_MUTABLE
        ).distinct()
    else:
        reconsider = Cluster.objects.filter(status=_MUTABLE)
    summary = _write(proposals, reconsider, scan_run, actor)
    timings["write"] = time.perf_counter() - t

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


def cluster_to_dict(cluster: Cluster) -> dict[str, Any]:
    """The NDJSON line of ``manage.py clusters`` for one cluster (members sorted by uid).

    Prefetch ``members__contact`` and ``members__location`` (see ``clusters_for_export``) when
    converting many clusters.
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
    """Clusters with everything ``cluster_to_dict`` reads prefetched (a fixed number of queries)."""
    qs = queryset if queryset is not None else Cluster.objects.all()
    return qs.select_related("location").prefetch_related("members__contact", "members__location")


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
        "marketing_opt_out", "sms_opt_out", "email_opt_out", "updated_at",
    )  # fmt: skip
    for chunk in chunked(list(contact_ids), in_chunk_size()):
        key_of: dict[int, dict[str, str]] = defaultdict(dict)
        for contact_id, raw, key in ContactKey.objects.filter(
            contact_id__in=chunk, kind=ContactKey.PHONE
        ).values_list("contact_id", "raw", "key"):
            key_of[contact_id][raw] = key
        for row in Contact.objects.filter(pk__in=chunk).values_list(*fields):
            (pk, uid, location_id, name, channels, tags, attributes, address, field_count,
             marketing, sms, email, updated_at) = row  # fmt: skip
            keys = key_of.get(pk, {})
            region = region_of.get(location_id, "")
            phones: list[tuple[str, str | None]] = []
            emails: list[str] = []
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
                elif kind == ContactKey.EMAIL:
                    emails.append(identifier)
            result[pk] = MemberRecord.build(
                uid=uid,
                location_uid=location_uid_of.get(location_id, ""),
                updated_at=updated_at or _EPOCH,
                name=name or "",
                phone_channels=phones,
                raw_emails=emails,
                tags=[str(t.get("label", "")) if isinstance(t, dict) else str(t) for t in tags or ()],
                attributes=[
                    (str(a.get("label") or ""), str(a.get("value") or ""))
                    for a in attributes or ()
                    if isinstance(a, dict)
                ],
                address=address if isinstance(address, str) or address is None else json.dumps(address),
                marketing_opt_out=marketing,
                sms_opt_out=sms,
                email_opt_out=email,
                field_count=field_count,
            )
    return result


# --- reading the keys ---------------------------------------------------------------------------------------


# --- reading the index --------------------------------------------------------------------------------------

_SHARED_KEYS_TABLE = "dedup_detect_shared_keys"


class _Candidate:
    """An active contact that may join a cluster, with the keys that can join it and score it."""

    __slots__ = ("uid", "location_id", "cluster_keys", "phones", "emails")

    def __init__(self, uid: str, location_id: int) -> None:
        self.uid = uid
        self.location_id = location_id
        self.cluster_keys: list[str] = []
        self.phones: list[str] = []
        self.emails: list[str] = []


def _active_sql(alias: str) -> str:
    return f"{alias}.deleted_at IS NULL AND {alias}.merged_into_uid = ''"


def _add_key_rows(candidates: dict[int, _Candidate], rows: Iterable[tuple[Any, ...]], kinds: Sequence[str]) -> None:
    """Fold ``(contact id, uid, location id, kind, key)`` rows into candidates."""
    for contact_id, uid, location_id, kind, key in rows:
        candidate = candidates.get(contact_id)
        if candidate is None:
            candidate = candidates[contact_id] = _Candidate(uid, location_id)
        if kind == ContactKey.PHONE:
            candidate.phones.append(key)
        else:
            candidate.emails.append(key)
        if kind in kinds:
            candidate.cluster_keys.append(key)


def _read_shared(kinds: Sequence[str]) -> tuple[dict[int, _Candidate], str]:
    """Every active contact holding a key that another active contact holds too (the database groups).

    Returns the candidates (with their shared keys of both kinds: phones and emails both count as
    evidence, whatever joins clusters) and the SQL selecting their ids, for the contact query.
    """
    key_table, contact_table = ContactKey._meta.db_table, Contact._meta.db_table
    candidates: dict[int, _Candidate] = {}
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {_SHARED_KEYS_TABLE}")
        cursor.execute(
            f"CREATE TEMP TABLE {_SHARED_KEYS_TABLE} AS SELECT k.key FROM {key_table} k "
            f"JOIN {contact_table} c ON c.id = k.contact_id WHERE {_active_sql('c')} "
            f"GROUP BY k.key HAVING COUNT(*) > 1"
        )
        # A temporary table has no statistics until analyzed; without them the planner may probe
        # it once per key row instead of hashing it.
        cursor.execute(f"ANALYZE {_SHARED_KEYS_TABLE}")
        cursor.execute(
            f"SELECT k.contact_id, c.uid, k.location_id, k.kind, k.key FROM {key_table} k "
            f"JOIN {contact_table} c ON c.id = k.contact_id "
            f"WHERE {_active_sql('c')} AND k.key IN (SELECT key FROM {_SHARED_KEYS_TABLE})"
        )
        _add_key_rows(candidates, cursor.fetchall(), kinds)
    return candidates, (
        f"SELECT k.contact_id FROM {key_table} k WHERE k.key IN (SELECT key FROM {_SHARED_KEYS_TABLE})"
    )


def _drop_shared() -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {_SHARED_KEYS_TABLE}")


def _holders(keys: Sequence[str], kinds: Sequence[str] | None, active_only: bool) -> set[int]:
    """Row ids of the contacts holding any of ``keys``."""
    found: set[int] = set()
    for chunk in chunked(list(keys), in_chunk_size()):
        qs = ContactKey.objects.filter(key__in=chunk)
        if kinds is not None:
            qs = qs.filter(kind__in=kinds)
        if active_only:
            qs = qs.filter(contact__deleted_at__isnull=True, contact__merged_into_uid="")
        found.update(qs.values_list("contact_id", flat=True))
    return found


def _key_rows_of(contact_ids: Iterable[int]) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    for chunk in chunked(sorted(contact_ids), in_chunk_size()):
        rows.extend(
            ContactKey.objects.filter(
                contact_id__in=chunk, contact__deleted_at__isnull=True, contact__merged_into_uid=""
            ).values_list("contact_id", "contact__uid", "location_id", "kind", "key")
        )
    return rows


def _read_closure(seed_ids: set[int], kinds: Sequence[str]) -> dict[int, _Candidate]:
    """Every active contact connected to the seeds through shared keys, with all its keys.

    Grows one hop at a time (the seeds' keys, their other holders, those holders' keys, ...) until
    nothing new joins, so the components around the seeds are read whole and nothing else.
    """
    candidates: dict[int, _Candidate] = {}
    frontier = set(seed_ids)
    seen_keys: set[str] = set()
    while frontier:
        rows = _key_rows_of(frontier)
        _add_key_rows(candidates, rows, kinds)
        new_keys = {key for _cid, _uid, _loc, kind, key in rows if kind in kinds} - seen_keys
        seen_keys |= new_keys
        frontier = _holders(sorted(new_keys), kinds, active_only=True) - candidates.keys() if new_keys else set()
    return candidates


def _clustering_input(
    candidates: dict[int, _Candidate], location_uid_of: dict[int, str]
) -> list[tuple[str, str, list[str]]]:
    """``(uid, location uid, keys)`` per candidate, location by location (what ``build_clusters`` likes)."""
    ordered = sorted((c for c in candidates.values() if c.cluster_keys), key=lambda c: c.location_id)
    return [(c.uid, location_uid_of[c.location_id], c.cluster_keys) for c in ordered]


def _scoring_records(
    candidates: dict[int, _Candidate],
    wanted: set[int],
    location_uid_of: dict[int, str],
    id_sql: str | None,
) -> dict[int, MemberRecord]:
    """The records scoring and primary selection need, for the wanted candidates.

    Leaner than ``load_member_records``: the stored normalized name, the natural keys, tags, field
    count and ``updatedAt`` are all that scoring and the primary rule read.
    """
    contact_table = Contact._meta.db_table
    columns = "c.id, c.normalized_name, c.tags, c.field_count, c.updated_at"
    records: dict[int, MemberRecord] = {}

    def build(rows: Iterable[tuple[Any, ...]]) -> None:
        for contact_id, name, tags, field_count, updated_at in rows:
            if contact_id not in wanted:
                continue
            c = candidates[contact_id]
            if isinstance(tags, str):
                tags = json.loads(tags) if tags != "[]" else ()
            phones = tuple(c.phones)
            emails = tuple(c.emails)
            records[contact_id] = MemberRecord(
                uid=c.uid,
                location_uid=location_uid_of[c.location_id],
                name=name,
                phones=phones,
                raw_phones=phones,
                emails=emails,
                raw_emails=emails,
                tags=tuple(str(t) for t in tags or ()),
                attributes=(),
                address=None,
                marketing_opt_out=False,
                sms_opt_out=False,
                email_opt_out=False,
                field_count=field_count,
                updated_at=_aware(updated_at),
            )

    with connection.cursor() as cursor:
        if id_sql is not None:
            cursor.execute(f"SELECT {columns} FROM {contact_table} c WHERE c.id IN ({id_sql})")
            build(cursor.fetchall())
        else:
            for chunk in chunked(sorted(wanted), in_chunk_size()):
                marks = ", ".join(["%s"] * len(chunk))
                cursor.execute(f"SELECT {columns} FROM {contact_table} c WHERE c.id IN ({marks})", list(chunk))
                build(cursor.fetchall())
    return records


def _aware(value: Any) -> datetime:
    """A timestamp read with a raw cursor (SQLite gives text) as an aware datetime."""
    if value is None:
        return _EPOCH
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _clusters_with_members(contact_ids: set[int]) -> list[int]:
    found: set[int] = set()
    for chunk in chunked(sorted(contact_ids), in_chunk_size()):
        found.update(
            ClusterMember.objects.filter(contact_id__in=chunk, cluster__status=_MUTABLE).values_list(
                "cluster_id", flat=True
            )
        )
    return sorted(found)


def _active_contacts(scope_location_ids: set[int] | None, key_scoped: bool, contact_ids: set[int]) -> int:
    active = Contact.objects.filter(deleted_at__isnull=True, merged_into_uid="")
    if key_scoped:
        return sum(active.filter(pk__in=chunk).count() for chunk in chunked(sorted(contact_ids), in_chunk_size()))
    if scope_location_ids is not None:
        active = active.filter(location_id__in=scope_location_ids)
    return active.count()


# --- scoring ------------------------------------------------------------------------------------------------


def _propose(
    group: ClusterGroup,
    records: dict[int, MemberRecord],
    id_of_uid: dict[str, int],
    location_id_of: dict[str, int],
    threshold: Decimal,
    policy: Policy,
) -> _Proposal:
    ids = [id_of_uid[uid] for uid in group.member_uids]
    members = [records[i] for i in ids]
    assessment = assess_cluster(
        members,
        threshold=threshold,
        allow_cross_location_auto=policy.cross_location_auto_merge,
        use_email_key=policy.email_secondary_key,
    )
    if group.cross_location:
        kind = Cluster.CROSS
    else:
        kind = Cluster.AUTO if assessment.auto_merge else Cluster.REVIEW
    pair_scores = [
        {
            "a": p.uid_a,
            "b": p.uid_b,
            "score": p.score,
            "reasons": list(p.reasons),
            "conflict": p.conflict,
            "explanation": p.explain(),
        }
        for _key, p in sorted(assessment.pairs.items())
    ]
    return _Proposal(
        group=group,
        assessment=assessment,
        kind=kind,
        confidence=Decimal(f"{assessment.confidence:.2f}"),
        suggested_primary_uid=choose_primary(members).uid,
        pair_scores=pair_scores,
        member_ids=ids,
        member_locations=[location_id_of[m.location_uid] for m in members],
        member_updated=[m.updated_at for m in members],
        location_id=None if group.location_uid is None else location_id_of[group.location_uid],
        location_ids=sorted(location_id_of[uid] for uid in group.location_uids),
    )


# --- writing ------------------------------------------------------------------------------------------------


_STORED_FIELDS = (
    "pk", "cluster_id", "status", "kind", "confidence", "auto_merge", "reasons", "pair_scores",
    "suggested_primary_uid", "natural_keys", "member_count", "location_id", "cross_location",
)  # fmt: skip


def _same(stored: dict[str, Any], proposal: _Proposal, member_stamps: dict[int, datetime | None]) -> bool:
    """Whether a stored open cluster already says exactly what the proposal says."""
    return (
        stored["kind"] == proposal.kind
        and Decimal(stored["confidence"]) == proposal.confidence
        and stored["auto_merge"] == proposal.assessment.auto_merge
        and list(stored["reasons"]) == list(proposal.assessment.reasons)
        and stored["suggested_primary_uid"] == proposal.suggested_primary_uid
        and list(stored["natural_keys"]) == list(proposal.group.natural_keys)
        and stored["member_count"] == len(proposal.member_ids)
        and stored["pair_scores"] == proposal.pair_scores
        and all(member_stamps.get(i) == u for i, u in zip(proposal.member_ids, proposal.member_updated, strict=True))
    )


def _write(
    proposals: list[_Proposal], reconsider: QuerySet[Cluster], scan_run: ScanRun | None, actor: str
) -> DetectionSummary:
    summary = DetectionSummary()
    by_id = {p.group.stable_id: p for p in proposals}
    now = timezone.now()
    with transaction.atomic():
        # The rows carrying the proposals' ids, whatever their status (a person may hold one).
        stored: dict[str, dict[str, Any]] = {}
        for chunk in chunked(sorted(by_id), in_chunk_size()):
            for row in Cluster.objects.filter(cluster_id__in=chunk).values(*_STORED_FIELDS):
                stored[row["cluster_id"]] = row
        reconsider_ids = set(reconsider.values_list("pk", flat=True))
        # Locked, skipping any row a person or a worker holds right now, and re-read: a cluster
        # approved since it was read is no longer open and is left alone.
        status_of = _lock_mutable(reconsider_ids | {row["pk"] for row in stored.values()})
        member_stamps = _member_stamps([row["pk"] for row in stored.values() if row["pk"] in status_of])

        to_create: list[_Proposal] = []
        to_refresh: list[tuple[int, _Proposal, bool]] = []  # (pk, proposal, reopened)
        in_open_clusters: set[int] = set()
        for cluster_id, proposal in by_id.items():
            row = stored.get(cluster_id)
            if row is None:
                to_create.append(proposal)
            elif row["pk"] not in status_of:
                summary.held += 1
                continue
            elif status_of[row["pk"]] == Cluster.SUPERSEDED:
                to_refresh.append((row["pk"], proposal, True))
            elif _same(row, proposal, member_stamps.get(row["pk"], {})):
                summary.unchanged += 1
            else:
                to_refresh.append((row["pk"], proposal, False))
            _count_open(summary, proposal)
            in_open_clusters.update(proposal.member_ids)
        summary.contacts_in_clusters = len(in_open_clusters)

        new_pk_of = _create(to_create, scan_run, now)
        summary.created = len(to_create)
        _refresh(to_refresh, scan_run, now, actor)
        summary.refreshed = sum(1 for *_rest, reopened in to_refresh if not reopened)
        summary.reopened = len(to_refresh) - summary.refreshed

        live = {row["pk"] for cid, row in stored.items() if cid in by_id}
        gone = sorted(pk for pk in reconsider_ids if status_of.get(pk) == _MUTABLE and pk not in live)
        summary.superseded = _supersede(gone, proposals, stored, new_pk_of, scan_run, actor)
    return summary


def _count_open(summary: DetectionSummary, proposal: _Proposal) -> None:
    summary.clusters_open += 1
    if proposal.kind == Cluster.CROSS:
        summary.cross += 1
    elif proposal.kind == Cluster.AUTO:
        summary.auto += 1
    else:
        summary.review += 1


def _lock_mutable(pks: set[int]) -> dict[int, str]:
    """Status of the given clusters that are open or superseded, locked; rows someone holds are skipped."""
    status_of: dict[int, str] = {}
    for chunk in chunked(sorted(pks), in_chunk_size()):
        qs = Cluster.objects.filter(pk__in=chunk, status__in=(_MUTABLE, Cluster.SUPERSEDED))
        if connection.features.has_select_for_update_skip_locked:
            qs = qs.select_for_update(skip_locked=True, of=("self",))
        status_of.update(qs.values_list("pk", "status"))
    return status_of


def _member_stamps(cluster_pks: list[int]) -> dict[int, dict[int, datetime | None]]:
    stamps: dict[int, dict[int, datetime | None]] = defaultdict(dict)
    for chunk in chunked(sorted(cluster_pks), in_chunk_size()):
        for cluster_pk, contact_id, stamp in ClusterMember.objects.filter(cluster_id__in=chunk).values_list(
            "cluster_id", "contact_id", "updated_at_when_scored"
        ):
            stamps[cluster_pk][contact_id] = stamp
    return stamps


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _cluster_values(p: _Proposal) -> dict[str, Any]:
    return {
        "natural_keys": list(p.group.natural_keys),
        "location_id": p.location_id,
        "cross_location": p.group.cross_location,
        "kind": p.kind,
        "confidence": p.confidence,
        "auto_merge": p.assessment.auto_merge,
        "reasons": list(p.assessment.reasons),
        "pair_scores": p.pair_scores,
        "member_count": len(p.member_ids),
        "suggested_primary_uid": p.suggested_primary_uid,
    }


_JSON_COLUMNS = frozenset({"natural_keys", "reasons", "pair_scores"})


def _column_value(name: str, value: Any) -> Any:
    return _json(value) if name in _JSON_COLUMNS else value


def _create(proposals: list[_Proposal], scan_run: ScanRun | None, now: datetime) -> dict[str, int]:
    """Insert new clusters with their members and locations; returns cluster id -> row id."""
    if not proposals:
        return {}
    scan_run_id = scan_run.pk if scan_run is not None else None
    columns = [
        "cluster_id", "natural_keys", "location_id", "cross_location", "kind", "confidence", "auto_merge",
        "status", "reasons", "pair_scores", "member_count", "suggested_primary_uid", "chosen_primary_uid",
        "scan_run_id", "created_at", "updated_at",
    ]  # fmt: skip
    rows = []
    for p in proposals:
        values = _cluster_values(p)
        values.update(
            cluster_id=p.group.stable_id, status=Cluster.OPEN, chosen_primary_uid="", scan_run_id=scan_run_id,
            created_at=now, updated_at=now,
        )  # fmt: skip
        rows.append(tuple(_column_value(c, values[c]) for c in columns))
    insert_rows(Cluster._meta.db_table, columns, rows)
    pk_of: dict[str, int] = {}
    for chunk in chunked([p.group.stable_id for p in proposals], in_chunk_size()):
        pk_of.update(Cluster.objects.filter(cluster_id__in=chunk).values_list("cluster_id", "pk"))
    _insert_members_and_locations([(pk_of[p.group.stable_id], p) for p in proposals], locations=True)
    return pk_of


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
        through = Cluster.locations.through
        insert_rows(
            through._meta.db_table,
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
    columns = [
        "natural_keys", "location_id", "cross_location", "kind", "confidence", "auto_merge", "reasons",
        "pair_scores", "member_count", "suggested_primary_uid", "status", "superseded_by_id", "scan_run_id",
        "updated_at",
    ]  # fmt: skip
    rows = []
    for pk, p, _reopened in items:
        values = _cluster_values(p)
        values.update(status=Cluster.OPEN, superseded_by_id=None, scan_run_id=scan_run_id, updated_at=now)
        rows.append((pk, *(_column_value(c, values[c]) for c in columns)))
    update_rows(Cluster._meta.db_table, "id", columns, rows)
    pks = [pk for pk, _p, _r in items]
    for chunk in chunked(pks, in_chunk_size()):
        ClusterMember.objects.filter(cluster_id__in=chunk).delete()
    _insert_members_and_locations([(pk, p) for pk, p, _r in items], locations=False)
    for pk, p, reopened in items:
        if reopened:
            audit.record(
                "cluster.reopened",
                actor=actor,
                cluster_ref=p.group.stable_id,
                location_uids=p.group.location_uids,
                contact_uids=p.group.member_uids,
                natural_keys=p.group.natural_keys,
                payload={"reason": "the same members form a duplicate group again", "clusterPk": pk},
            )


def _supersede(
    gone: list[int],
    proposals: list[_Proposal],
    stored: dict[str, dict[str, Any]],
    new_pk_of: dict[str, int],
    scan_run: ScanRun | None,
    actor: str,
) -> int:
    """Mark open clusters whose membership no longer exists as superseded, each with an audit event."""
    if not gone:
        return 0
    # Which current proposal holds each contact, to name the successor of a superseded cluster.
    pk_of_cluster_id = {cid: row["pk"] for cid, row in stored.items()} | new_pk_of
    successor_of_contact: dict[int, int] = {}
    for p in proposals:
        pk = pk_of_cluster_id.get(p.group.stable_id)
        if pk is None:
            continue
        for contact_id in p.member_ids:
            # A within-location cluster is the better successor than a cross-location one.
            if contact_id not in successor_of_contact or not p.group.cross_location:
                successor_of_contact[contact_id] = pk
    members: dict[int, list[int]] = defaultdict(list)
    for chunk in chunked(gone, in_chunk_size()):
        for cluster_pk, contact_id in ClusterMember.objects.filter(cluster_id__in=chunk).values_list(
            "cluster_id", "contact_id"
        ):
            members[cluster_pk].append(contact_id)
    old = {c.pk: c for c in Cluster.objects.filter(pk__in=gone).prefetch_related("locations")}
    uid_of = dict(
        Contact.objects.filter(pk__in={i for ids in members.values() for i in ids}).values_list("pk", "uid")
    )
    cluster_id_of_pk = {pk: cid for cid, pk in pk_of_cluster_id.items()}
    for pk in gone:
        votes = Counter(successor_of_contact[c] for c in members.get(pk, []) if c in successor_of_contact)
        successor = min(votes, key=lambda s: (-votes[s], s)) if votes else None
        Cluster.objects.filter(pk=pk, status=_MUTABLE).update(
            status=Cluster.SUPERSEDED, superseded_by_id=successor, updated_at=timezone.now()
        )
        cluster = old[pk]
        audit.record(
            "cluster.superseded",
            actor=actor,
            cluster_ref=cluster.cluster_id,
            location_uids=[loc.uid for loc in cluster.locations.all()],
            contact_uids=[uid_of[c] for c in members.get(pk, []) if c in uid_of],
            natural_keys=cluster.natural_keys,
            payload={
                "supersededBy": cluster_id_of_pk.get(successor) if successor is not None else None,
                "reason": "membership changed" if successor is not None else "no longer a duplicate group",
                "scanRun": scan_run.pk if scan_run is not None else None,
            },
        )
    return len(gone)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else format_timestamp(value)
