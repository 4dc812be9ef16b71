"""Scoring groups into the rows the cluster tables take (``Proposal``), or recognizing them unchanged.

The rules are ``dedup.scoring``'s (``assess_cluster``) and ``dedup.survivorship``'s (``choose_primary``),
applied here to lean member tuples read straight from the index rather than to ``MemberRecord``: a fresh
detection scores a quarter of a million clusters, and building a full record per member, normalizing
names and emails again, and serializing pair scores through ``json.dumps`` cost more than the rules
themselves. ``tests/test_detect_scoring.py`` checks that both give the same verdicts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from dedup.clustering import ClusterGroup, stable_cluster_id
from dedup.detect.reading import HeldMasks, batch_phones
from dedup.detect.sql import EPOCH, aware, int_array, select_by_ids, select_by_text
from dedup.models import Cluster, ClusterMember, Contact, RestoreRecord
from dedup.names import NameRelation, relation_of_normalized
from dedup.scoring import (
    AUTO_MERGE_ELIGIBLE,
    BELOW_THRESHOLD,
    CONFLICTING_NAMES,
    CROSS_LOCATION,
    DIFFERENT_NAMES,
    EMAIL_POINTS,
    MISSING_NAME,
    NAME_POINTS,
    NAME_UNCONFIRMED,
    NO_SHARED_PHONE,
    PARTIAL_NAME,
    PHONE_POINTS,
    SAME_EMAIL,
    SAME_EMAIL_ONLY,
    SAME_NAME,
    SAME_PHONE,
    SHARED_TAGS,
    TAGS_POINTS,
)

RESTORED_BY_PERSON = "restored_by_person"


@dataclass(slots=True)
class Proposal:
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
    member_updated: tuple[datetime | str, ...]
    policy_version: int = 1

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Pickled as the plain tuple of its fields (proposals cross from the scoring workers by the
        # hundred thousand): the dataclass default goes through a state dict per object, several times
        # slower to load.
        return (Proposal, (
            self.index, self.stable_id, self.member_uids, self.natural_keys, self.location_uids,
            self.cross_location, self.location_id, self.location_ids, self.kind, self.confidence,
            self.auto_merge, self.natural_keys_json, self.reasons_json, self.pair_scores_json,
            self.suggested_primary_uid, self.member_ids, self.member_locations, self.member_updated,
            self.policy_version,
        ))  # fmt: skip


@dataclass(frozen=True, slots=True)
class Unchanged:
    """A group whose open cluster was scored from exactly these inputs: same members (the id says so),
    the same ``updatedAt`` for each, and no policy change since. Not scored again."""

    index: int
    stable_id: str
    kind: str
    cross_location: bool
    member_ids: tuple[int, ...]
    pk: int

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (Unchanged, (self.index, self.stable_id, self.kind, self.cross_location, self.member_ids, self.pk))


@dataclass(frozen=True, slots=True)
class Scoring:
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
    # The cluster table held no row when the run began (a first detection): no group can have a
    # stored cluster, so nothing is looked up. Only a hint; the writer checks again under its lock.
    empty_table: bool = False


@dataclass(slots=True)
class Member:
    """What scoring and the primary rule read of one indexed contact (``name`` in canonical form)."""

    id: int
    uid: str
    location_id: int
    location_uids: tuple[str, ...]
    name: str
    phones: frozenset[str]
    emails: frozenset[str]
    tags: frozenset[str]
    field_count: int
    # ``updatedAt`` as the database gave it (text on PostgreSQL, written back as it is) and in
    # microseconds since the epoch (for ranking).
    updated_at: datetime | str
    updated_us: int


def restored_contact_uids() -> frozenset[str]:
    """Every contact a person restored after a merge, under its own uid and the uid it was re-created as."""
    rows = RestoreRecord.objects.filter(restored_by__isnull=False).values_list("contact_uid", "new_uid")
    return frozenset(uid for pair in rows for uid in pair if uid)


# --- reading members ---------------------------------------------------------------------------------------

# Parsed JSON texts by value: a corpus has few distinct tag lists and location lists, so most rows
# cost one dict lookup instead of a parse. Bounded, since a pathological index could make every
# value distinct.
_PARSED_LIMIT = 50_000


def _cached(cache: dict[Any, Any], key: Any, parse: Any) -> Any:
    value = cache.get(key)
    if value is None:
        if len(cache) >= _PARSED_LIMIT:
            cache.clear()
        value = cache[key] = parse(key)
    return value


def _tag_keys(text: Any) -> frozenset[str]:
    from dedup.records import tag_key

    tags = json.loads(text) if isinstance(text, str) else text
    labels = (str(t.get("label") or "") if isinstance(t, dict) else str(t) for t in tags or ())
    return frozenset(tag_key(label) for label in labels if label.strip())


def _uid_list(text: Any) -> tuple[str, ...]:
    values = json.loads(text) if isinstance(text, str) else text
    return tuple(values or ())


def read_members(
    ids: Sequence[int], scoring: Scoring, phones_of: Mapping[int, Sequence[str]] | None = None
) -> dict[int, Member]:
    """The ``Member`` of each of these indexed contacts: on PostgreSQL in one query (each contact with
    its keys gathered into arrays by the database), elsewhere in two (keys, then contacts).

    ``phones_of`` (every one of ``ids``): the phone keys scoring needs of each member, as a
    whole-index read found them (``dedup.detect.reading.scoring_keys`` says why they suffice). The
    database then reads each contact with its email keys only: gathering every key of a member was
    two thirds of the cost of reading it at a million contacts.
    """
    from dedup.models import ContactKey
    from dedup.names import normalize_name

    phone_kind = ContactKey.PHONE
    postgresql = _is_postgresql()
    rows: Iterable[tuple[Any, ...]]
    if postgresql and phones_of is not None:
        rows = _select_members_with_emails_pg(ids, phones_of)
    elif postgresql:
        # Timestamps as text and as integer microseconds: Django's timestamp loader is pure Python
        # and was a third of this read; the text goes back into the member rows as it is. The keys
        # come as arrays, one row per contact, rather than one row per key to gather here.
        rows = _select_members_pg(ids, phone_kind)
    else:
        phones: dict[int, list[str]] = {}
        emails: dict[int, list[str]] = {}
        key_sql = f"SELECT contact_id, kind, key FROM {ContactKey._meta.db_table} WHERE"
        if phones_of is not None:
            key_sql += f" kind = '{ContactKey.EMAIL}' AND"  # the phones are given
        for contact_id, kind, key in select_by_ids(key_sql, "contact_id", ids):
            if key:
                (phones if kind == phone_kind else emails).setdefault(contact_id, []).append(key)
        held: Mapping[int, Sequence[str]] = phones if phones_of is None else phones_of
        rows = (
            (*row, held.get(row[0]), emails.get(row[0]))
            for row in select_by_ids(f"{_MEMBER_COLUMNS} FROM {Contact._meta.db_table} c WHERE", "c.id", ids)
        )
    tag_cache: dict[Any, frozenset[str]] = {}
    location_cache: dict[Any, tuple[str, ...]] = {}
    name_max = Contact._meta.get_field("normalized_name").max_length or 500
    location_uid_of = scoring.location_uid_of
    empty: frozenset[str] = frozenset()
    members: dict[int, Member] = {}
    for row in rows:
        (contact_id, uid, location_id, location_uids, name, tags, field_count, updated_at, updated_us,
         held_phones, held_emails) = row  # fmt: skip
        uids = location_cache.get(location_uids) if location_uids else ()
        if uids is None:
            uids = _cached(location_cache, location_uids, _uid_list)
        if not tags or tags == "[]":
            tag_keys = empty
        else:
            tag_keys = tag_cache.get(tags)  # type: ignore[assignment]
            if tag_keys is None:
                tag_keys = _cached(tag_cache, tags, _tag_keys)
        if name and len(name) >= name_max:
            # A canonical form cut at the column's length may end in a partial token.
            name = normalize_name(name)
        if not postgresql or updated_at is None:
            moment = aware(updated_at)
            updated_us = (moment - EPOCH) // _MICROSECOND
            updated_at = moment if not postgresql else _EPOCH_TEXT
        # Positional, in the field order of ``Member``.
        members[contact_id] = Member(
            contact_id, uid, location_id, uids or (location_uid_of[location_id],), name or "",
            frozenset(held_phones) if held_phones else empty, frozenset(held_emails) if held_emails else empty,
            tag_keys, field_count, updated_at, updated_us,
        )  # fmt: skip
    return members


# What ``Member`` takes of a contact row (without its keys); on PostgreSQL with the timestamp as text
# and as microseconds (see ``read_members``).
_MEMBER_COLUMNS = (
    "SELECT c.id, c.uid, c.location_id, c.location_uids, c.normalized_name, c.tags, c.field_count, c.updated_at, 0"
)
_MEMBER_COLUMNS_PG = (
    "SELECT c.id, c.uid, c.location_id, c.location_uids::text, c.normalized_name, c.tags::text, "
    "c.field_count, c.updated_at::text, (extract(epoch FROM c.updated_at) * 1000000)::bigint"
)


def _select_members_with_emails_pg(ids: Sequence[int], phones_of: Mapping[int, Sequence[str]]) -> Iterable[tuple[Any, ...]]:
    """Member rows with the given phones, and each contact's email keys read beside it (PostgreSQL)."""
    from dedup.models import ContactKey

    sql = (
        f"{_MEMBER_COLUMNS_PG}, ARRAY(SELECT k.key FROM {ContactKey._meta.db_table} k WHERE k.contact_id = c.id "
        f"AND k.kind = '{ContactKey.EMAIL}' AND k.key <> '') FROM {Contact._meta.db_table} c WHERE"
    )
    return ((*row[:-1], phones_of[row[0]], row[-1]) for row in select_by_ids(sql, "c.id", ids))


def _select_members_pg(ids: Sequence[int], phone_kind: str) -> list[tuple[Any, ...]]:
    from django.db import connection

    from dedup.models import ContactKey

    sql = (
        f"{_MEMBER_COLUMNS_PG}, k.phones, k.emails "
        f"FROM {Contact._meta.db_table} c LEFT JOIN ("
        "SELECT contact_id, array_agg(key) FILTER (WHERE kind = %s) AS phones, "
        "array_agg(key) FILTER (WHERE kind <> %s) AS emails "
        f"FROM {ContactKey._meta.db_table} WHERE contact_id = ANY(%s::bigint[]) AND key <> '' "
        "GROUP BY contact_id"
        ") k ON k.contact_id = c.id WHERE c.id = ANY(%s::bigint[])"
    )
    array = int_array(ids)
    with connection.cursor() as cursor:
        cursor.execute(sql, [phone_kind, phone_kind, array, array])
        return cursor.fetchall()


_MICROSECOND = timedelta(microseconds=1)
_EPOCH_TEXT = "1970-01-01 00:00:00+00"


def _is_postgresql() -> bool:
    from django.db import connection

    return connection.vendor == "postgresql"


# --- scoring -----------------------------------------------------------------------------------------------

# JSON of the reason lists and of small values, computed once per distinct value.
_REASONS_JSON: dict[tuple[str, ...], str] = {}
_CONFIDENCE = {points: Decimal(f"{points / 100:.2f}") for points in range(0, 101)}


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _reasons_json(reasons: tuple[str, ...]) -> str:
    text = _REASONS_JSON.get(reasons)
    if text is None:
        text = _REASONS_JSON[reasons] = _json(list(reasons))
    return text


def _json_string(value: str) -> str:
    # uids and keys are plain printable text almost always: quoting them by hand is what json.dumps
    # gives for those, at a fraction of its cost.
    if value.isprintable() and '"' not in value and "\\" not in value:
        return f'"{value}"'
    return json.dumps(value, ensure_ascii=False)


_SAME, _COMPATIBLE, _MISSING, _DIFFERENT = (
    NameRelation.SAME, NameRelation.COMPATIBLE, NameRelation.MISSING, NameRelation.DIFFERENT,
)  # fmt: skip
# The JSON of a pair's score, reasons and conflict flag (a handful of distinct values), by value.
_PAIR_TAILS: dict[tuple[int, tuple[str, ...], bool], str] = {}
# Relations of two different non-empty canonical names, by value: one person's duplicates carry the
# same few spellings, compared again in every pair they make. Bounded like the parsed-JSON caches.
_RELATIONS: dict[tuple[str, str], NameRelation] = {}


def _relation(a: str, b: str) -> NameRelation:
    """``relation_of_normalized``, remembered for two different present names."""
    if not a or not b:
        return _MISSING
    if a == b:
        return _SAME
    relation = _RELATIONS.get((a, b))
    if relation is None:
        if len(_RELATIONS) >= _PARSED_LIMIT:
            _RELATIONS.clear()
        relation = _RELATIONS[(a, b)] = relation_of_normalized(a, b)
    return relation


def _rank_key(member: Member) -> tuple[int, int, str]:
    # dedup.survivorship.primary_rank_key: most fields, then newest, then lowest uid.
    return (-member.field_count, -member.updated_us, member.uid)


def propose(index: int, group: ClusterGroup, members: list[Member], scoring: Scoring) -> Proposal:
    """Score one group (members in the group's uid order) into the values of its cluster row."""
    if len(members) < 2:
        raise ValueError("a cluster has at least two members")
    # Points are whole numbers: ``points < threshold * 100`` is ``points < ceil(threshold * 100)``,
    # an integer comparison instead of one with a Decimal per pair.
    threshold_points = math.ceil(scoring.threshold * 100)
    use_email_key = scoring.email_secondary_key
    pair_json: list[str] = []
    lowest = 100
    below = conflict = unconfirmed = False
    quoted = [_json_string(m.uid) for m in members]
    tails = _PAIR_TAILS
    for i, a in enumerate(members):
        a_uid, a_phones, a_emails, a_tags, a_name, a_quoted = a.uid, a.phones, a.emails, a.tags, a.name, quoted[i]
        for j in range(i + 1, len(members)):
            b = members[j]
            # One pair's points and reasons, as dedup.scoring._score_features gives them.
            shares_email = bool(a_emails) and not a_emails.isdisjoint(b.emails)
            if not a_phones.isdisjoint(b.phones):
                points = PHONE_POINTS
                first = SAME_PHONE
            elif shares_email and use_email_key:
                points = 0
                first = SAME_EMAIL_ONLY
            else:
                points = 0
                first = NO_SHARED_PHONE
            relation = _relation(a_name, b.name)
            if relation is _SAME:
                points += NAME_POINTS
                reasons: tuple[str, ...] = (first, SAME_NAME)
            elif relation is _COMPATIBLE:
                reasons = (first, PARTIAL_NAME)
            elif relation is _MISSING:
                reasons = (first, MISSING_NAME)
            else:
                reasons = (first, DIFFERENT_NAMES)
            if shares_email:
                points += EMAIL_POINTS
                reasons += (SAME_EMAIL,)
            if a_tags and not a_tags.isdisjoint(b.tags):
                points += TAGS_POINTS
                reasons += (SHARED_TAGS,)
            pair_conflict = relation is _DIFFERENT
            if points < lowest:
                lowest = points
            if points < threshold_points:
                below = True
            if pair_conflict:
                conflict = True
            if relation is not _SAME:
                unconfirmed = True
            tail_key = (points, reasons, pair_conflict)
            tail = tails.get(tail_key)
            if tail is None:
                tail = tails[tail_key] = (
                    f',"score":{points / 100!r},"reasons":{_reasons_json(reasons)},'
                    f'"conflict":{"true" if pair_conflict else "false"}}}'
                )
            if a_uid < b.uid:
                pair_json.append(f'{{"a":{a_quoted},"b":{quoted[j]}{tail}')
            else:
                pair_json.append(f'{{"a":{quoted[j]},"b":{a_quoted}{tail}')
    common_set = set(members[0].location_uids)
    for m in members[1:]:
        common_set.intersection_update(m.location_uids)
    spans = not common_set
    cluster_reasons: list[str] = []
    if below:
        cluster_reasons.append(BELOW_THRESHOLD)
    if conflict:
        cluster_reasons.append(CONFLICTING_NAMES)
    elif unconfirmed:
        cluster_reasons.append(NAME_UNCONFIRMED)
    if spans:
        cluster_reasons.append(CROSS_LOCATION)
    auto_merge = not (below or conflict or unconfirmed or (spans and not scoring.cross_location_auto_merge))
    if auto_merge:
        cluster_reasons.insert(0, AUTO_MERGE_ELIGIBLE)

    # A group read across home locations may still have a location that holds every member (a Podium
    # contact can belong to several): then it is a within-location cluster of that location.
    common = sorted(common_set)
    cross_location = group.cross_location and not common
    if cross_location:
        kind = Cluster.CROSS
    else:
        kind = Cluster.AUTO if auto_merge else Cluster.REVIEW
    restored = scoring.restored_uids
    if restored and not restored.isdisjoint(group.member_uids):
        auto_merge = False
        kind = Cluster.REVIEW if kind == Cluster.AUTO else kind
        cluster_reasons = [r for r in cluster_reasons if r != AUTO_MERGE_ELIGIBLE] + [RESTORED_BY_PERSON]
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
    if len(members) == 2 and members[0].location_uids == members[1].location_uids:
        touched = set(members[0].location_uids)
    else:
        touched = {loc for m in members for loc in m.location_uids}
    all_locations = sorted(loc for loc in touched if loc in location_id_of)
    keys = group.natural_keys
    return Proposal(
        index=index,
        stable_id=stable_id,
        member_uids=group.member_uids,
        natural_keys=keys,
        location_uids=tuple(all_locations),
        cross_location=cross_location,
        location_id=None if location_uid is None else location_id_of[location_uid],
        location_ids=tuple(sorted(location_id_of[uid] for uid in all_locations)),
        kind=kind,
        confidence=_CONFIDENCE[lowest],
        auto_merge=auto_merge,
        natural_keys_json="[" + ",".join(_json_string(k) for k in keys) + "]",
        reasons_json=_reasons_json(tuple(cluster_reasons)),
        pair_scores_json="[" + ",".join(pair_json) + "]",
        suggested_primary_uid=min(members, key=_rank_key).uid,
        member_ids=tuple(m.id for m in members),
        member_locations=tuple(m.location_id for m in members),
        member_updated=tuple(m.updated_at for m in members),
        policy_version=scoring.policy_version,
    )


# --- recognizing unchanged clusters -------------------------------------------------------------------------


def unchanged_clusters(stable_ids: Sequence[str], scoring: Scoring) -> dict[str, tuple[str, int]]:
    """Open clusters among these ids whose scoring inputs did not change: ``{cluster id: (kind, pk)}``.

    Unchanged means scored under the policy in force (its scoring version, and after its last change),
    and every member's ``updatedAt`` still the one it was scored with (the id fixes the membership).
    The comparison runs in the database.
    """
    if scoring.rescore or scoring.empty_table or not stable_ids:
        return {}
    fresh: dict[int, tuple[str, str]] = {}
    sql = (
        f"SELECT id, cluster_id, kind, updated_at, policy_version FROM {Cluster._meta.db_table} "
        f"WHERE status = 'open' AND"
    )
    for pk, cluster_id, kind, updated_at, version in select_by_text(sql, "cluster_id", stable_ids):
        if aware(updated_at) >= scoring.policy_changed_at and version == scoring.policy_version:
            fresh[pk] = (cluster_id, kind)
    if not fresh:
        return {}
    member_table, contact_table = ClusterMember._meta.db_table, Contact._meta.db_table
    stale_sql = (
        f"SELECT DISTINCT m.cluster_id FROM {member_table} m JOIN {contact_table} c ON c.id = m.contact_id "
        f"WHERE (m.updated_at_when_scored IS NULL OR c.updated_at IS NULL "
        f"OR m.updated_at_when_scored <> c.updated_at) AND"
    )
    stale = {row[0] for row in select_by_ids(stale_sql, "m.cluster_id", sorted(fresh))}
    return {cluster_id: (kind, pk) for pk, (cluster_id, kind) in fresh.items() if pk not in stale}


def stored_ids(group: ClusterGroup) -> tuple[str, ...]:
    """The ids this group's cluster may be stored under: a group read across home locations whose
    members share a location was stored as a within-location cluster (see ``propose``)."""
    if not group.cross_location:
        return (group.stable_id,)
    return (group.stable_id, stable_cluster_id(group.member_uids, False))


def score_groups(
    start: int,
    groups: Sequence[ClusterGroup],
    member_ids: Sequence[tuple[int, ...]],
    scoring: Scoring,
    masks: HeldMasks | None = None,
) -> list[Proposal | Unchanged]:
    """Score ``groups`` (the slice starting at ``start``; ``member_ids`` are their members' row ids in
    uid order, ``masks`` which of its natural keys each member holds, from a whole-index read), skipping
    those whose cluster is unchanged."""
    return finish_scoring(read_inputs(start, groups, member_ids, scoring, masks))


@dataclass(slots=True)
class BatchInputs:
    """What scoring one batch reads from the database (``read_inputs``), before the pure part
    (``finish_scoring``): split so that a writer may send one batch while the next is scored."""

    start: int
    groups: Sequence[ClusterGroup]
    member_ids: Sequence[tuple[int, ...]]
    scoring: Scoring
    unchanged: dict[str, tuple[str, int]]
    hits: list[str | None] | None
    records: dict[int, Member]


def read_inputs(
    start: int,
    groups: Sequence[ClusterGroup],
    member_ids: Sequence[tuple[int, ...]],
    scoring: Scoring,
    masks: HeldMasks | None = None,
) -> BatchInputs:
    """The database reads of ``score_groups``: which clusters are unchanged, and the other members."""
    candidates = [stored_ids(g) for g in groups]
    unchanged = unchanged_clusters([sid for ids in candidates for sid in ids], scoring)
    hits = [next((sid for sid in ids if sid in unchanged), None) for ids in candidates] if unchanged else None
    if hits is None:
        wanted = sorted({i for ids in member_ids for i in ids})
    else:
        wanted = sorted({i for hit, ids in zip(hits, member_ids, strict=True) if hit is None for i in ids})
    phones_of = None if masks is None else batch_phones(groups, member_ids, masks)
    records = read_members(wanted, scoring, phones_of) if wanted else {}
    return BatchInputs(start, groups, member_ids, scoring, unchanged, hits, records)


def finish_scoring(inputs: BatchInputs) -> list[Proposal | Unchanged]:
    """The rest of ``score_groups``, with no database access."""
    start, hits, unchanged, records, scoring = (
        inputs.start, inputs.hits, inputs.unchanged, inputs.records, inputs.scoring,
    )  # fmt: skip
    out: list[Proposal | Unchanged] = []
    for offset, (group, ids) in enumerate(zip(inputs.groups, inputs.member_ids, strict=True)):
        hit = hits[offset] if hits is not None else None
        if hit is not None:
            cross = group.cross_location and hit == group.stable_id
            kind, pk = unchanged[hit]
            out.append(Unchanged(start + offset, hit, kind, cross, ids, pk))
        else:
            out.append(propose(start + offset, group, [records[i] for i in ids], scoring))
    return out
