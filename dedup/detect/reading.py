"""Reading the index for detection: the contacts that share a natural key, whole or around some contacts.

Key-scoped reads filter by one indexed column per query and check the rest in Python: joined with the
"active contact" condition, SQLite's planner starts from the index on merged_into_uid (nearly every row
has the same empty value) and scans a million contacts per batch of keys.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from contextlib import closing
from typing import Any

from django.db import connection, transaction

from dedup.bulkrows import fetch_chunks
from dedup.clustering import ClusterGroup
from dedup.dblimits import in_values
from dedup.detect.sql import active_sql, select_by_ids, select_by_text
from dedup.models import Cluster, ClusterMember, Contact, ContactKey

_SHARED_KEYS_TABLE = "dedup_detect_shared_keys"
_FETCH = 20_000
# For the two statements of a whole-index read only (SET LOCAL: the transaction ends with the read).
# Both scan every key and contact row, with nothing else for the database to do meanwhile: let the
# planner use its parallel workers without charging their start-up, and group the keys in memory
# instead of spilling to disk. At 1M contacts they took 1.78 + 1.67 s on one core, 0.95 + 1.29 s so.
# Tables smaller than ``min_parallel_table_scan_size`` still get no parallel worker.
_PG_READ_SETTINGS = (
    "SET LOCAL parallel_setup_cost = 0",
    "SET LOCAL parallel_tuple_cost = 0",
    "SET LOCAL work_mem = '64MB'",
)

# An active contact that may join a cluster: (uid, location id, the keys that can join it).
Candidate = tuple[str, int, tuple[str, ...]]


class Candidates(list[Candidate]):
    """Candidates sorted by location, and the row id of each candidate's uid (``id_of``)."""

    def __init__(self) -> None:
        super().__init__()
        self.id_of: dict[str, int] = {}


# For each group of a batch, which of its natural keys each member holds (``held_keys``).
HeldMasks = list[tuple[int, ...]]


def scoring_keys(candidates: Candidates) -> dict[str, tuple[str, ...]]:
    """Each candidate's joining keys by uid: every phone key scoring needs of it.

    Scoring asks whether two members hold a phone in common. Two active contacts holding the same
    phone make it a key two or more active contacts hold, so it is among the keys a whole-index read
    found for both (``read_shared``): the shared keys answer exactly as every key of the two would.

    Made out of ``candidates.id_of`` in place (its row ids are gone afterwards): at a million contacts
    a second table of every uid would be the run's peak of memory.
    """
    keys_of: dict[str, Any] = candidates.id_of
    for uid, _location_id, keys in candidates:
        keys_of[uid] = keys
    candidates.id_of = {}
    return keys_of


def held_keys(group: ClusterGroup, keys_of: Mapping[str, tuple[str, ...]]) -> tuple[int, ...]:
    """Which of the group's natural keys each member holds: a bit mask per member, in member order
    (bit ``j`` for ``group.natural_keys[j]``).

    Two members of a group can only share a key that is one of its natural keys (the keys two or
    more of its members hold), so the masks answer scoring's question as the members' joining keys
    do, in small integers instead of a tuple of keys kept per contact for the whole run.
    """
    natural = group.natural_keys
    if len(natural) == 1:
        key = natural[0]
        return tuple(1 if key in keys_of[uid] else 0 for uid in group.member_uids)
    bit = {key: 1 << j for j, key in enumerate(natural)}
    # A contact's joining keys are distinct (one key row per contact, kind and key): the sum is the union.
    return tuple(sum(bit.get(key, 0) for key in keys_of[uid]) for uid in group.member_uids)


def batch_phones(
    groups: Sequence[ClusterGroup], member_ids: Sequence[tuple[int, ...]], masks: HeldMasks
) -> dict[int, list[str]]:
    """Each member's phone keys for scoring, by row id, from a batch's masks (``held_keys``).

    A phone key is E.164 (``+`` and digits), an email key always holds an ``@`` (``dedup.phones``):
    the joining keys hold emails too when policy makes email a secondary key. A contact in two groups
    of the batch (its location's and a cross-location one) gets the keys both masks give it: a pair
    of either group still shares exactly the phones its two members share.
    """
    phones: dict[int, list[str]] = {}
    for group, ids, group_masks in zip(groups, member_ids, masks, strict=True):
        natural = group.natural_keys
        for contact_id, mask in zip(ids, group_masks, strict=True):
            held = phones.setdefault(contact_id, [])
            j = 0
            while mask:
                if mask & 1 and "@" not in natural[j] and natural[j] not in held:
                    held.append(natural[j])
                mask >>= 1
                j += 1
    return phones


def _fold_rows(rows: Iterable[tuple[Any, ...]], out: Candidates) -> None:
    """Fold ``(contact id, uid, location id, key)`` rows sorted by contact into candidates.

    Keys are interned: every shared key is held by two or more contacts, and one string object for
    all of them is most of the memory a million-contact read needs.
    """
    current: int | None = None
    uid = ""
    location = 0
    keys: list[str] = []
    id_of = out.id_of
    intern = sys.intern
    for contact_id, row_uid, location_id, key in rows:
        if contact_id != current:
            if current is not None:
                out.append((uid, location, tuple(keys)))
                id_of[uid] = current
            current, uid, location, keys = contact_id, row_uid, location_id, []
        keys.append(intern(key))
    if current is not None:
        out.append((uid, location, tuple(keys)))
        id_of[uid] = current


def read_shared(kinds: Sequence[str]) -> Candidates:
    """Every active contact holding a key that another active contact holds too, sorted by location.

    The database does the grouping (into a temporary table, analyzed so the join that follows is
    planned for its real size) and the sorting; rows are turned into candidates a fetch at a time.
    """
    key_table, contact_table = ContactKey._meta.db_table, Contact._meta.db_table
    marks = ", ".join(["%s"] * len(kinds))
    candidates = Candidates()
    # Only in a transaction of its own: inside a caller's, the settings would outlast the read.
    tune = connection.vendor == "postgresql" and not connection.in_atomic_block
    with transaction.atomic(), connection.cursor() as cursor:
        try:
            if tune:
                for setting in _PG_READ_SETTINGS:
                    cursor.execute(setting)
            cursor.execute(f"DROP TABLE IF EXISTS {_SHARED_KEYS_TABLE}")
            cursor.execute(
                f"CREATE TEMP TABLE {_SHARED_KEYS_TABLE} AS SELECT k.key FROM {key_table} k "
                f"JOIN {contact_table} c ON c.id = k.contact_id WHERE {active_sql('c')} AND k.kind IN ({marks}) "
                f"GROUP BY k.key HAVING COUNT(*) > 1",
                list(kinds),
            )
            cursor.execute(f"ANALYZE {_SHARED_KEYS_TABLE}")
            fetches = fetch_chunks(
                cursor,
                f"SELECT k.contact_id, c.uid, k.location_id, k.key FROM {key_table} k "
                f"JOIN {contact_table} c ON c.id = k.contact_id "
                f"WHERE {active_sql('c')} AND k.kind IN ({marks}) "
                f"AND k.key IN (SELECT key FROM {_SHARED_KEYS_TABLE}) ORDER BY k.location_id, k.contact_id",
                list(kinds),
                _FETCH,
            )
            with closing(fetches):
                pending: list[tuple[Any, ...]] = []
                for rows in fetches:
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


def active_uids(contact_ids: Iterable[int]) -> dict[int, str]:
    """The uids of those contacts that are active (neither soft-deleted nor merged)."""
    sql = f"SELECT id, uid, deleted_at, merged_into_uid FROM {Contact._meta.db_table} WHERE"
    return {
        pk: uid
        for pk, uid, deleted_at, merged_into_uid in select_by_ids(sql, "id", sorted(contact_ids))
        if deleted_at is None and not merged_into_uid
    }


def holders(keys: Sequence[str], kinds: Sequence[str] | None, active_only: bool) -> set[int]:
    """Row ids of the contacts holding any of ``keys``."""
    sql = f"SELECT contact_id, kind FROM {ContactKey._meta.db_table} WHERE"
    found = {cid for cid, kind in select_by_text(sql, "key", keys) if kinds is None or kind in kinds}
    return set(active_uids(found)) if active_only else found


def read_closure(seed_ids: set[int], kinds: Sequence[str]) -> tuple[Candidates, set[int]]:
    """Every active contact connected to the seeds through shared keys, with its keys (and their ids).

    Grows one hop at a time (the seeds' keys, their other holders, those holders' keys, ...) until
    nothing new joins, so the components around the seeds are read whole and nothing else.
    """
    rows: list[tuple[Any, ...]] = []
    members: set[int] = set()
    frontier = set(active_uids(seed_ids))
    seen_keys: set[str] = set()
    key_sql = f"SELECT contact_id, location_id, kind, key FROM {ContactKey._meta.db_table} WHERE"
    while frontier:
        uid_of = active_uids(frontier)
        new_rows = [
            (contact_id, uid_of[contact_id], location_id, key)
            for contact_id, location_id, kind, key in select_by_ids(key_sql, "contact_id", sorted(uid_of))
            if kind in kinds
        ]
        rows.extend(new_rows)
        members.update(uid_of)
        new_keys = {row[3] for row in new_rows} - seen_keys
        seen_keys |= new_keys
        frontier = holders(sorted(new_keys), kinds, active_only=True) - members if new_keys else set()
    rows.sort(key=lambda row: (row[2], row[0]))
    candidates = Candidates()
    _fold_rows(rows, candidates)
    return candidates, members


def clusters_with_members(contact_ids: set[int]) -> list[int]:
    """Open clusters with a member among these contacts."""
    member_sql = f"SELECT cluster_id FROM {ClusterMember._meta.db_table} WHERE"
    cluster_ids = sorted({row[0] for row in select_by_ids(member_sql, "contact_id", sorted(contact_ids))})
    status_sql = f"SELECT id, status FROM {Cluster._meta.db_table} WHERE"
    return [pk for pk, status in select_by_ids(status_sql, "id", cluster_ids) if status == Cluster.OPEN]


def active_contacts(scope_location_ids: set[int] | None, key_scoped: bool, contact_ids: set[int]) -> int:
    """How many active contacts the run's scope holds (the duplicate rate's denominator)."""
    if key_scoped:
        return len(active_uids(contact_ids))
    active = Contact.objects.filter(deleted_at__isnull=True, merged_into_uid="")
    if scope_location_ids is not None:
        active = active.filter(location_id__in=in_values(scope_location_ids))
    return active.count()
