"""Duplicate detection: group contacts that share a natural key (union-find), pure and fast.

Within a location, contacts sharing a natural key form one group, and a contact with several keys joins
every group it touches (so groups are the connected components of the "shares a key" graph). Across
locations, the same is done on the key alone and only groups spanning at least two locations are kept.

Keys are opaque strings: the caller decides what a key is (an E.164 phone; a normalized email where
policy makes email a secondary key). E.164 keys start with "+" and emails contain "@", so the two kinds
cannot collide without prefixes.

Speed: one pass over the input with a dict lookup per key; union-find state is created only for
contacts that actually share a key (typically a small minority), so a million contacts take about a
second in CPython (see ``bench/bench_clustering.py``).

Excluded pairs ("these are different people", remembered from review) are honoured by re-splitting only
the groups that contain one; see ``_split_group``.
"""

from __future__ import annotations

import gc
import hashlib
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

CLUSTER_ID_PREFIX = "cl_"
CROSS_LOCATION_ID_PREFIX = "clx_"


def pair_key(uid_a: str, uid_b: str) -> tuple[str, str]:
    """The canonical form of a pair of contacts: the two uids in ascending order."""
    if uid_a == uid_b:
        raise ValueError(f"a pair needs two different contacts, got {uid_a!r} twice")
    return (uid_a, uid_b) if uid_a < uid_b else (uid_b, uid_a)


def stable_cluster_id(member_uids: Iterable[str], cross_location: bool = False) -> str:
    """A deterministic cluster id from the members alone, stable across rescans while membership holds.

    ``cl_`` (or ``clx_`` for a cross-location cluster) + the first 16 hex digits of the SHA-256 of the
    sorted uids joined by newlines (uids never contain one). 64 bits keep collisions negligible for
    millions of clusters.
    """
    digest = hashlib.sha256("\n".join(sorted(member_uids)).encode("utf-8")).hexdigest()[:16]
    return (CROSS_LOCATION_ID_PREFIX if cross_location else CLUSTER_ID_PREFIX) + digest


@dataclass(frozen=True, slots=True)
class ClusterGroup:
    """One proposed cluster: at least two contacts joined by shared natural keys.

    ``natural_keys`` are the keys held by two or more members (the ones that joined them);
    ``location_uid`` is None for a cross-location cluster, whose locations are in ``location_uids``.
    """

    member_uids: tuple[str, ...]
    natural_keys: tuple[str, ...]
    location_uid: str | None
    stable_id: str
    location_uids: tuple[str, ...] = ()

    @property
    def cross_location(self) -> bool:
        """True for a cluster that spans locations."""
        return self.location_uid is None

    def __reduce__(self) -> tuple[type[ClusterGroup], tuple[Any, ...]]:
        # Pickled as the plain tuple of its fields (groups go to scoring workers by the hundred
        # thousand): the dataclass default goes through a state dict per object, far slower to load.
        fields = (self.member_uids, self.natural_keys, self.location_uid, self.stable_id, self.location_uids)
        return (ClusterGroup, fields)


class _UnionFind:
    """Disjoint sets over uids, created lazily: a uid absent from ``parent`` is its own singleton."""

    __slots__ = ("parent", "size")

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}
        self.size: dict[str, int] = {}

    def find(self, x: str) -> str:
        parent = self.parent
        root = x
        while True:
            up = parent.get(root, root)
            if up == root:
                break
            root = up
        while x != root:  # path compression: point every node on the way straight at the root
            up = parent[x]
            parent[x] = root
            x = up
        return root

    def union(self, a: str, b: str) -> str:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        size = self.size
        sa, sb = size.get(ra, 1), size.get(rb, 1)
        if sa < sb:  # union by size keeps the trees shallow
            ra, rb = rb, ra
        self.parent[rb] = ra
        size[ra] = sa + sb
        size.pop(rb, None)
        return ra


def _normalize_exclusions(excluded_pairs: Collection[tuple[str, str]] | None) -> dict[str, set[str]]:
    partners: dict[str, set[str]] = {}
    for a, b in excluded_pairs or ():
        if a == b:
            continue
        partners.setdefault(a, set()).add(b)
        partners.setdefault(b, set()).add(a)
    return partners


def _split_group(
    members: list[str], key_holders: dict[str, list[str]], partners: dict[str, set[str]]
) -> list[tuple[list[str], list[str]]]:
    """Split one group so that no excluded pair ends up in the same part.

    Constrained greedy union in a deterministic order (keys sorted, each key's holders sorted by uid):
    each holder of a key joins, one by one, the part of every earlier holder of that key unless the
    two parts together would contain an excluded pair. So every part stays connected through shared
    keys, no part holds an excluded pair, and two parts that share a key are apart only because joining
    them would reunite an excluded pair. When a rejected pair is later also marked different, the next
    scan re-splits and converges. Returns ``(member uids, joining keys)`` per part of two or more.
    """
    uf = _UnionFind()
    # Excluded partners of each current root, merged on union, so a check costs O(partners).
    blocked: dict[str, set[str]] = {m: set(partners.get(m, ())) for m in members}

    def try_union(a: str, b: str) -> None:
        ra, rb = uf.find(a), uf.find(b)
        if ra == rb:
            return
        if any(uf.find(p) == rb for p in blocked[ra]) or any(uf.find(p) == ra for p in blocked[rb]):
            return
        root = uf.union(ra, rb)
        other = rb if root == ra else ra
        blocked[root] |= blocked.pop(other)

    def distinct_roots(nodes: Iterable[str]) -> list[str]:
        return list(dict.fromkeys(uf.find(n) for n in nodes))

    for key in sorted(key_holders):
        # The parts the earlier holders of this key are in; tracked incrementally so a key held by
        # thousands of contacts costs holders x parts, not holders squared.
        earlier_roots: list[str] = []
        for holder in sorted(set(key_holders[key])):
            for root in distinct_roots(earlier_roots):
                try_union(holder, root)
            earlier_roots = distinct_roots([*earlier_roots, holder])

    parts: dict[str, list[str]] = {}
    for m in members:
        parts.setdefault(uf.find(m), []).append(m)
    keys_of_part: dict[str, list[str]] = {}
    for key, holders in key_holders.items():
        counts: dict[str, int] = {}
        for h in set(holders):
            root = uf.find(h)
            counts[root] = counts.get(root, 0) + 1
        for root, n in counts.items():
            if n >= 2:
                keys_of_part.setdefault(root, []).append(key)
    return [(sorted(ms), sorted(keys_of_part.get(root, []))) for root, ms in parts.items() if len(ms) >= 2]


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building millions of acyclic containers.

    Detection allocates hundreds of thousands of lists, sets and tuples, none of them in a reference
    cycle; the collector's generation-0 passes over them cost about a quarter of the run time. Reference
    counting still frees everything; the previous collector state is restored on exit.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def build_clusters(
    contacts: Iterable[tuple[str, str, Iterable[str]]],
    cross_location: bool,
    excluded_pairs: Collection[tuple[str, str]] | None = None,
) -> list[ClusterGroup]:
    """Group contacts that share natural keys into proposed clusters (two or more members each).

    ``contacts`` yields ``(uid, location_uid, keys)``; blank keys are ignored, a uid should appear once.
    With ``cross_location=False`` keys are matched within a location; with True they are matched across
    locations and only groups spanning two or more locations are returned. ``excluded_pairs`` (either
    order) never end up in one cluster (see ``_split_group``). Output is sorted by member uids and does
    not depend on input order.
    """
    with gc_paused():
        if cross_location:
            uf, holders, location_of = _link_across_locations(contacts)
        else:
            uf, holders = _link_within_locations(contacts)
            location_of = {}
        return _assemble(uf, holders, location_of, cross_location, _normalize_exclusions(excluded_pairs))


# Holders of every key seen at least twice, keyed by (location, key) within locations or ("", key)
# across them; the first holder comes first. Keys held once cost only their entry in the lookup table.
_Holders = dict[tuple[str, str], list[str]]


def _link_within_locations(contacts: Iterable[tuple[str, str, Iterable[str]]]) -> tuple[_UnionFind, _Holders]:
    uf = _UnionFind()
    holders: _Holders = {}
    # Contacts usually arrive location by location, so the per-location table is looked up once per run
    # of equal locations rather than once per contact.
    tables: dict[str, dict[str, str]] = {}
    last_location: str | None = None
    table: dict[str, str] = {}
    for uid, location_uid, keys in contacts:
        if location_uid != last_location:
            table = tables.setdefault(location_uid, {})
            last_location = location_uid
        for key in keys:
            if not key:
                continue
            first = table.setdefault(key, uid)
            if first != uid:
                node = (location_uid, key)
                group = holders.get(node)
                if group is None:
                    holders[node] = [first, uid]
                else:
                    group.append(uid)
                uf.union(uid, first)
    return uf, holders


def _link_across_locations(
    contacts: Iterable[tuple[str, str, Iterable[str]]],
) -> tuple[_UnionFind, _Holders, dict[str, str]]:
    uf = _UnionFind()
    holders: _Holders = {}
    location_of: dict[str, str] = {}  # only for contacts that share a key: the ones that can be members
    first_holder: dict[str, tuple[str, str]] = {}
    for uid, location_uid, keys in contacts:
        for key in keys:
            if not key:
                continue
            seen = first_holder.setdefault(key, (uid, location_uid))
            if seen[0] != uid:
                node = ("", key)
                group = holders.get(node)
                if group is None:
                    holders[node] = [seen[0], uid]
                    location_of[seen[0]] = seen[1]
                else:
                    group.append(uid)
                location_of[uid] = location_uid
                uf.union(uid, seen[0])
    return uf, holders, location_of


def _assemble(
    uf: _UnionFind,
    holders: _Holders,
    location_of: dict[str, str],
    cross_location: bool,
    partners: dict[str, set[str]],
) -> list[ClusterGroup]:
    """Turn the linked components into clusters, splitting those that hold an excluded pair."""
    members_of: dict[str, set[str]] = {}
    nodes_of: dict[str, list[tuple[str, str]]] = {}
    for node, node_holders in holders.items():
        root = uf.find(node_holders[0])
        members = members_of.get(root)
        if members is None:
            members = members_of[root] = set()
            nodes_of[root] = []
        members.update(node_holders)
        nodes_of[root].append(node)

    result: list[ClusterGroup] = []
    for root, member_set in members_of.items():
        nodes = nodes_of[root]
        if partners and any(not partners[m].isdisjoint(member_set) for m in member_set if m in partners):
            parts = _split_group(
                sorted(member_set), {key: holders[(loc, key)] for loc, key in nodes}, partners
            )
        else:
            parts = [(sorted(member_set), sorted({key for _loc, key in nodes}))]
        for part_members, part_keys in parts:
            if cross_location:
                locations = tuple(sorted({location_of[m] for m in part_members}))
                if len(locations) < 2:
                    continue
                location_uid = None
            else:
                # Within a location every node of a component carries that location.
                location_uid = nodes[0][0]
                locations = (location_uid,)
            result.append(
                ClusterGroup(
                    member_uids=tuple(part_members),
                    natural_keys=tuple(part_keys),
                    location_uid=location_uid,
                    stable_id=stable_cluster_id(part_members, cross_location),
                    location_uids=locations,
                )
            )
    result.sort(key=lambda g: g.member_uids)
    return result
