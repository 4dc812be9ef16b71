"""Duplicate detection by union-find over natural keys (pure; no database)."""

from __future__ import annotations

import time
from collections.abc import Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dedup.clustering import ClusterGroup, build_clusters, pair_key, stable_cluster_id

SYD, BUR = "loc-sydney", "loc-burleigh"
P1, P2, P3 = "+61412345678", "+61298765432", "+61355550000"

Contact = tuple[str, str, tuple[str, ...]]


def members(groups: Iterable[ClusterGroup]) -> list[tuple[str, ...]]:
    return [g.member_uids for g in groups]


def test_contacts_sharing_a_key_in_a_location_form_one_cluster() -> None:
    contacts = [("c1", SYD, (P1,)), ("c2", SYD, (P1,)), ("c3", SYD, (P2,)), ("c4", BUR, (P1,))]
    [group] = build_clusters(contacts, cross_location=False)
    assert group.member_uids == ("c1", "c2")
    assert group.natural_keys == (P1,)
    assert group.location_uid == SYD
    assert group.location_uids == (SYD,)
    assert not group.cross_location
    assert group.stable_id == stable_cluster_id(["c2", "c1"])
    assert group.stable_id.startswith("cl_") and len(group.stable_id) == 3 + 16


def test_a_contact_with_two_phones_joins_both_groups() -> None:
    contacts = [("a", SYD, (P1,)), ("b", SYD, (P1, P2)), ("c", SYD, (P2,)), ("d", SYD, (P3,))]
    [group] = build_clusters(contacts, cross_location=False)
    assert group.member_uids == ("a", "b", "c")
    assert group.natural_keys == (P2, P1)  # sorted as strings


def test_keys_held_by_one_member_are_not_joining_keys_and_blanks_are_ignored() -> None:
    contacts = [("a", SYD, (P1, P3, "")), ("b", SYD, (P1, "")), ("c", SYD, ("",))]
    [group] = build_clusters(contacts, cross_location=False)
    assert group.member_uids == ("a", "b")
    assert group.natural_keys == (P1,)


def test_a_key_repeated_on_one_contact_is_not_a_duplicate() -> None:
    assert build_clusters([("a", SYD, (P1, P1)), ("b", SYD, (P2,))], cross_location=False) == []


def test_cross_location_clusters_span_locations_only() -> None:
    contacts = [
        ("a", SYD, (P1,)),
        ("b", BUR, (P1,)),
        ("c", SYD, (P2,)),
        ("d", SYD, (P2,)),  # same key, one location: a within-location cluster only
        ("e", "loc-hobart", (P3,)),
    ]
    [group] = build_clusters(contacts, cross_location=True)
    assert group.member_uids == ("a", "b")
    assert group.location_uid is None
    assert group.cross_location
    assert group.location_uids == (BUR, SYD)
    assert group.stable_id.startswith("clx_")
    assert group.stable_id != stable_cluster_id(["a", "b"])  # never collides with a within-location id
    assert members(build_clusters(contacts, cross_location=False)) == [("c", "d")]


def test_stable_id_depends_only_on_membership() -> None:
    first = build_clusters([("a", SYD, (P1,)), ("b", SYD, (P1,))], cross_location=False)
    rescan = build_clusters(
        [("b", SYD, (P1, P2)), ("a", SYD, (P1,)), ("x", SYD, (P3,))], cross_location=False
    )
    assert first[0].stable_id == rescan[0].stable_id
    grown = build_clusters([("a", SYD, (P1,)), ("b", SYD, (P1,)), ("c", SYD, (P1,))], cross_location=False)
    assert grown[0].stable_id != first[0].stable_id


def test_pair_key_is_canonical() -> None:
    assert pair_key("b", "a") == pair_key("a", "b") == ("a", "b")
    with pytest.raises(ValueError):
        pair_key("a", "a")


# --- "these are different people" --------------------------------------------------------------------


def test_an_excluded_household_is_not_proposed_again() -> None:
    contacts = [("maria", SYD, (P1,)), ("jose", SYD, (P1,))]
    assert build_clusters(contacts, cross_location=False, excluded_pairs={("maria", "jose")}) == []
    assert build_clusters(contacts, cross_location=False, excluded_pairs={("jose", "maria")}) == []
    assert len(build_clusters(contacts, cross_location=False, excluded_pairs={("jose", "someone")})) == 1


def test_a_third_contact_on_an_excluded_phone_joins_one_side_only() -> None:
    contacts = [("maria", SYD, (P1,)), ("jose", SYD, (P1,)), ("maria2", SYD, (P1,))]
    groups = build_clusters(contacts, cross_location=False, excluded_pairs={("jose", "maria")})
    assert members(groups) == [("jose", "maria2")]  # deterministic: earliest compatible holder by uid
    # Once that pair is also marked different, the next scan proposes the other pairing.
    groups = build_clusters(
        contacts, cross_location=False, excluded_pairs={("jose", "maria"), ("jose", "maria2")}
    )
    assert members(groups) == [("maria", "maria2")]
    assert groups[0].natural_keys == (P1,)


def test_splitting_keeps_the_parts_connected_through_their_own_keys() -> None:
    # a-b share P1, b-c share P2, c-d share P3; a and d are different people.
    contacts = [("a", SYD, (P1,)), ("b", SYD, (P1, P2)), ("c", SYD, (P2, P3)), ("d", SYD, (P3,))]
    groups = build_clusters(contacts, cross_location=False, excluded_pairs={("a", "d")})
    # Keys are applied in sorted order (P2, P3, then P1), so "a" is the one left out.
    assert members(groups) == [("b", "c", "d")]
    assert groups[0].natural_keys == (P2, P3)


def test_excluded_pairs_apply_across_locations_too() -> None:
    contacts = [("a", SYD, (P1,)), ("b", BUR, (P1,)), ("c", BUR, (P1,))]
    groups = build_clusters(contacts, cross_location=True, excluded_pairs={("a", "b")})
    # "a" joins "c" across locations; "b" is alone (a cluster of one location would not be emitted).
    assert members(groups) == [("a", "c")]
    groups = build_clusters(contacts, cross_location=True, excluded_pairs={("a", "b"), ("a", "c")})
    assert groups == []


def test_a_hugely_shared_number_with_an_exclusion_splits_quickly() -> None:
    # An office switchboard on 20,000 contacts: splitting must not be quadratic in the holders.
    contacts = [(f"c{i:05d}", SYD, (P1,)) for i in range(20_000)]
    started = time.perf_counter()
    groups = build_clusters(contacts, cross_location=False, excluded_pairs={("c00000", "c00001")})
    assert time.perf_counter() - started < 5
    assert [len(g.member_uids) for g in groups] == [19_999]
    assert "c00001" not in groups[0].member_uids


# --- properties against a brute-force reference -----------------------------------------------------

UIDS = [f"u{i}" for i in range(12)]
KEYS = ["k1", "k2", "k3", "k4", "k5", "k6"]
contact_lists = st.lists(
    st.tuples(
        st.sampled_from(UIDS),
        st.sampled_from([SYD, BUR, "loc-hobart"]),
        st.lists(st.sampled_from(KEYS), max_size=3),
    ),
    max_size=12,
    unique_by=lambda c: c[0],
).map(lambda cs: [(uid, loc, tuple(keys)) for uid, loc, keys in cs])
excluded = st.sets(
    st.tuples(st.sampled_from(UIDS), st.sampled_from(UIDS)).filter(lambda p: p[0] != p[1]), max_size=6
)


def linked(a: Contact, b: Contact, cross_location: bool) -> bool:
    return bool(set(a[2]) & set(b[2])) and (cross_location or a[1] == b[1])


def reference_components(contacts: list[Contact], cross_location: bool) -> set[frozenset[str]]:
    """Connected components by breadth-first search: the obviously-correct slow version."""
    by_uid = {c[0]: c for c in contacts}
    seen: set[str] = set()
    components: set[frozenset[str]] = set()
    for c in contacts:
        if c[0] in seen:
            continue
        component, frontier = {c[0]}, [c]
        while frontier:
            cur = frontier.pop()
            for other in contacts:
                if other[0] not in component and linked(cur, other, cross_location):
                    component.add(other[0])
                    frontier.append(other)
        seen |= component
        locations = {by_uid[u][1] for u in component}
        if len(component) >= 2 and (not cross_location or len(locations) >= 2):
            components.add(frozenset(component))
    return components


@given(contact_lists, st.booleans())
def test_matches_the_brute_force_components(contacts: list[Contact], cross_location: bool) -> None:
    groups = build_clusters(contacts, cross_location=cross_location)
    assert {frozenset(g.member_uids) for g in groups} == reference_components(contacts, cross_location)
    by_uid = {c[0]: c for c in contacts}
    for g in groups:
        assert list(g.member_uids) == sorted(g.member_uids)
        # Joining keys: exactly the keys at least two members hold (within the location when not cross).
        held = [k for u in g.member_uids for k in set(by_uid[u][2])]
        assert set(g.natural_keys) == {k for k in held if held.count(k) >= 2}
        assert g.stable_id == stable_cluster_id(g.member_uids, cross_location)
    assert len({g.stable_id for g in groups}) == len(groups)
    assert members(groups) == sorted(members(groups))


@given(contact_lists, st.booleans(), excluded, st.randoms())
def test_input_order_does_not_matter(
    contacts: list[Contact], cross_location: bool, exclusions: set[tuple[str, str]], rnd: object
) -> None:
    shuffled = [(u, loc, tuple(reversed(keys))) for u, loc, keys in contacts]
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    flipped = {(b, a) for a, b in exclusions}
    assert build_clusters(contacts, cross_location, exclusions) == build_clusters(
        shuffled, cross_location, flipped
    )


@given(contact_lists, excluded)
def test_excluded_pairs_never_share_a_cluster_and_splits_are_minimal(
    contacts: list[Contact], exclusions: set[tuple[str, str]]
) -> None:
    groups = build_clusters(contacts, cross_location=False, excluded_pairs=exclusions)
    by_uid = {c[0]: c for c in contacts}
    part_of: dict[str, int] = {}
    for i, g in enumerate(groups):
        for u in g.member_uids:
            assert u not in part_of  # a contact is in at most one cluster
            part_of[u] = i
        assert not any(
            pair_key(a, b) in {pair_key(*p) for p in exclusions}
            for a in g.member_uids
            for b in g.member_uids
            if a < b
        )
        # Each part is still connected through keys its own members share.
        component, frontier = {g.member_uids[0]}, [g.member_uids[0]]
        while frontier:
            cur = by_uid[frontier.pop()]
            for u in g.member_uids:
                if u not in component and linked(cur, by_uid[u], False):
                    component.add(u)
                    frontier.append(u)
        assert component == set(g.member_uids)
    # Contacts left out of every cluster are parts of their own.
    for i, c in enumerate(contacts):
        part_of.setdefault(c[0], -1 - i)
    parts: dict[int, set[str]] = {}
    for u, p in part_of.items():
        parts.setdefault(p, set()).add(u)
    canonical_exclusions = {pair_key(*p) for p in exclusions}
    # Two linked contacts are apart only because their parts together would hold an excluded pair.
    for a in contacts:
        for b in contacts:
            if a[0] < b[0] and linked(a, b, False) and part_of[a[0]] != part_of[b[0]]:
                pa, pb = parts[part_of[a[0]]], parts[part_of[b[0]]]
                assert any(pair_key(x, y) in canonical_exclusions for x in pa for y in pb)
    # Without exclusions touching a component, nothing is split.
    if not exclusions:
        assert {frozenset(g.member_uids) for g in groups} == reference_components(contacts, False)


@given(contact_lists, excluded)
def test_cross_location_groups_with_exclusions_still_span_locations(
    contacts: list[Contact], exclusions: set[tuple[str, str]]
) -> None:
    groups = build_clusters(contacts, cross_location=True, excluded_pairs=exclusions)
    locations = {c[0]: c[1] for c in contacts}
    canonical_exclusions = {pair_key(*p) for p in exclusions}
    for g in groups:
        assert len({locations[u] for u in g.member_uids}) >= 2
        assert g.location_uids == tuple(sorted({locations[u] for u in g.member_uids}))
        assert not any(
            pair_key(a, b) in canonical_exclusions for a in g.member_uids for b in g.member_uids if a < b
        )
