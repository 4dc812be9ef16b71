"""Pair and cluster scoring with the spec weights (pure; no database)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dedup.names import names_conflict
from dedup.records import MemberRecord
from dedup.scoring import (
    ERR_BELOW_THRESHOLD,
    assess_cluster,
    meets_threshold,
    score_pair,
)

WHEN = datetime(2024, 5, 1, tzinfo=UTC)
PHONE = "+61412345678"
OTHER_PHONE = "+61298765432"


def member(
    uid: str,
    name: str = "",
    phones: tuple[str, ...] = (PHONE,),
    emails: tuple[str, ...] = (),
    tags: tuple[str, ...] = (),
    location: str = "loc-sydney",
) -> MemberRecord:
    return MemberRecord.build(
        uid=uid,
        location_uid=location,
        updated_at=WHEN,
        name=name,
        phone_channels=[(p, p) for p in phones],
        raw_emails=emails,
        tags=tags,
    )


# --- pairs ------------------------------------------------------------------------------------------


def test_same_phone_and_same_name_is_exactly_the_threshold() -> None:
    pair = score_pair(member("a", "Maria Garcia"), member("b", "GARCIA, Maria"))
    assert pair.score == 0.80
    assert pair.reasons == ("same_phone", "same_name")
    assert not pair.conflict
    assert meets_threshold(pair.score, 0.80)
    assert meets_threshold(pair.score, Decimal("0.80"))
    assert not meets_threshold(pair.score, 0.81)


def test_all_evidence_sums_to_one() -> None:
    a = member("a", "Maria Garcia", emails=("Maria@Example.com",), tags=("VIP",))
    b = member("b", "maria garcia", emails=(" maria@example.com ",), tags=("vip", "Plumbing"))
    pair = score_pair(a, b)
    assert pair.score == 1.0
    assert pair.reasons == ("same_phone", "same_name", "same_email", "shared_tags")
    assert dict(pair.components) == {
        "same_phone": 0.60,
        "same_name": 0.20,
        "same_email": 0.15,
        "shared_tags": 0.05,
    }


def test_household_sharing_everything_but_the_name_conflicts() -> None:
    a = member("a", "Maria Garcia", emails=("garcia.family@example.com",), tags=("VIP",))
    b = member("b", "Jose Garcia", emails=("garcia.family@example.com",), tags=("VIP",))
    pair = score_pair(a, b)
    assert pair.conflict
    assert "different_names" in pair.reasons
    assert pair.score == 0.80  # the weights still add up; the conflict is what blocks the merge
    verdict = assess_cluster([a, b])
    assert not verdict.auto_merge
    assert verdict.error_code == ERR_BELOW_THRESHOLD
    assert "conflicting_names" in verdict.reasons
    assert "below_threshold" not in verdict.reasons


def test_missing_name_is_no_evidence_either_way() -> None:
    pair = score_pair(member("a", "Maria Garcia"), member("b", ""))
    assert pair.score == 0.60
    assert "missing_name" in pair.reasons
    assert not pair.conflict
    verdict = assess_cluster([member("a", "Maria Garcia"), member("b", "")])
    assert not verdict.auto_merge
    assert verdict.reasons == ("below_threshold", "name_unconfirmed")


def test_missing_name_lifted_by_email_and_tags_reaches_the_threshold_but_a_person_decides() -> None:
    # The weights are applied literally (0.60 + 0.15 + 0.05), but a household member saved without a
    # name shares exactly this evidence, so an unconfirmed name keeps the cluster out of auto-merge.
    a = member("a", "Maria Garcia", emails=("m@example.com",), tags=("VIP",))
    b = member("b", "Unknown", emails=("M@example.com",), tags=("vip",))
    pair = score_pair(a, b)
    assert pair.score == 0.80
    verdict = assess_cluster([a, b])
    assert not verdict.auto_merge
    assert verdict.reasons == ("name_unconfirmed",)


def test_missing_name_with_email_only_stays_below() -> None:
    a = member("a", "", emails=("m@example.com",))
    b = member("b", "Maria", emails=("m@example.com",))
    assert score_pair(a, b).score == 0.75
    assert not assess_cluster([a, b]).auto_merge


def test_initial_is_a_partial_name_not_a_match_nor_a_conflict() -> None:
    pair = score_pair(member("a", "M Garcia"), member("b", "Maria Garcia"))
    assert pair.score == 0.60
    assert "partial_name" in pair.reasons
    assert not pair.conflict


def test_pair_linked_through_a_third_member_gets_no_phone_weight() -> None:
    a = member("a", "Maria Garcia", phones=(PHONE,))
    b = member("b", "Maria Garcia", phones=(PHONE, OTHER_PHONE))
    c = member("c", "Maria Garcia", phones=(OTHER_PHONE,))
    pair = score_pair(a, c)
    assert pair.score == 0.20
    assert "no_shared_phone" in pair.reasons
    verdict = assess_cluster([a, b, c])
    assert verdict.confidence == 0.20
    assert not verdict.auto_merge
    assert verdict.pairs[("a", "b")].score == 0.80


def test_email_only_pair_when_email_is_a_key() -> None:
    a = member("a", "Maria Garcia", phones=(), emails=("m@example.com",))
    b = member("b", "Maria Garcia", phones=(OTHER_PHONE,), emails=("m@example.com",))
    pair = score_pair(a, b, use_email_key=True)
    assert pair.reasons[0] == "same_email_only"
    assert pair.score == 0.35
    assert score_pair(a, b).reasons[0] == "no_shared_phone"


def test_cross_location_never_auto_merges_by_default() -> None:
    a = member("a", "Maria Garcia", location="loc-sydney")
    b = member("b", "Maria Garcia", location="loc-burleigh")
    verdict = assess_cluster([a, b])
    assert not verdict.auto_merge
    assert verdict.reasons == ("cross_location",)
    assert verdict.error_code == ERR_BELOW_THRESHOLD
    allowed = assess_cluster([a, b], allow_cross_location_auto=True)
    assert allowed.auto_merge
    assert allowed.error_code is None


def test_auto_merge_cluster_reports_its_pairs() -> None:
    ms = [member("b", "Maria Garcia"), member("a", "Garcia, Maria"), member("c", "Mrs Maria Garcia")]
    verdict = assess_cluster(ms)
    assert verdict.auto_merge
    assert verdict.reasons == ("auto_merge_eligible",)
    assert verdict.error_code is None
    assert verdict.member_uids == ("a", "b", "c")
    assert set(verdict.pairs) == {("a", "b"), ("a", "c"), ("b", "c")}
    assert verdict.confidence == 0.80
    json.dumps(verdict.to_dict())
    assert "merges automatically" in verdict.explain()


def test_threshold_is_configurable_and_checked() -> None:
    ms = [member("a", "Maria Garcia"), member("b", "Maria Garcia")]
    assert not assess_cluster(ms, threshold=0.85).auto_merge
    assert assess_cluster(ms, threshold=Decimal("0.80")).auto_merge
    assert assess_cluster(ms, threshold=0.6).auto_merge
    for bad in (80, -0.1, float("nan"), True):
        with pytest.raises(ValueError):
            assess_cluster(ms, threshold=bad)


def test_cluster_needs_two_distinct_members() -> None:
    with pytest.raises(ValueError):
        assess_cluster([member("a")])
    with pytest.raises(ValueError):
        assess_cluster([member("a"), member("a")])
    with pytest.raises(ValueError):
        score_pair(member("a"), member("a"))


def test_explain_names_the_evidence() -> None:
    text = score_pair(member("a", "Maria Garcia"), member("b", "Jose Garcia")).explain()
    assert text.startswith("0.60 (conflict):")
    assert "household" in text


# --- properties -------------------------------------------------------------------------------------

NAMES = ["", "Maria Garcia", "GARCIA, Maria", "Jose Garcia", "M Garcia", "Unknown", "Maria"]
members_strategy = st.builds(
    member,
    uid=st.text(alphabet="abcdefgh", min_size=1, max_size=3),
    name=st.sampled_from(NAMES),
    phones=st.lists(st.sampled_from([PHONE, OTHER_PHONE, "+61355550000"]), max_size=2).map(tuple),
    emails=st.lists(st.sampled_from(["m@example.com", "M@Example.com", "j@example.com"]), max_size=2).map(
        tuple
    ),
    tags=st.lists(st.sampled_from(["VIP", "vip", "Plumbing", "review-sent"]), max_size=2).map(tuple),
    location=st.sampled_from(["loc-sydney", "loc-burleigh"]),
)
clusters = st.lists(members_strategy, min_size=2, max_size=5, unique_by=lambda m: m.uid)


@given(members_strategy, members_strategy, st.booleans())
def test_pair_score_is_symmetric_bounded_and_the_sum_of_its_parts(
    a: MemberRecord, b: MemberRecord, use_email_key: bool
) -> None:
    if a.uid == b.uid:
        b = member(a.uid + "x", b.name, b.phones, b.emails, b.tags, b.location_uid)
    ab, ba = score_pair(a, b, use_email_key), score_pair(b, a, use_email_key)
    assert ab == ba
    assert 0 <= ab.score <= 1
    assert ab.score == round(sum(w for _, w in ab.components), 2)
    assert ab.conflict == names_conflict(a.name, b.name)
    assert ("same_phone" in ab.reasons) == bool(set(a.phones) & set(b.phones))


@given(clusters, st.sampled_from([0.6, 0.75, 0.8, 0.9, 1.0]), st.booleans(), st.booleans())
def test_auto_merge_only_when_every_pair_clears_without_conflict(
    ms: list[MemberRecord], threshold: float, cross_ok: bool, use_email_key: bool
) -> None:
    verdict = assess_cluster(ms, threshold, cross_ok, use_email_key)
    n = len(ms)
    assert len(verdict.pairs) == n * (n - 1) // 2
    assert verdict.confidence == min(p.score for p in verdict.pairs.values())
    single_location = len({m.location_uid for m in ms}) == 1
    expected = (
        all(meets_threshold(p.score, threshold) for p in verdict.pairs.values())
        and not any(p.conflict for p in verdict.pairs.values())
        and all("same_name" in p.reasons for p in verdict.pairs.values())
        and (single_location or cross_ok)
    )
    assert verdict.auto_merge == expected
    assert (verdict.error_code is None) == expected
    # A household (two different names) never merges automatically, whatever else matches.
    if any(names_conflict(x.name, y.name) for x in ms for y in ms):
        assert not verdict.auto_merge
        assert "conflicting_names" in verdict.reasons


@given(clusters, st.randoms())
def test_assessment_does_not_depend_on_member_order(ms: list[MemberRecord], rnd: object) -> None:
    shuffled = list(ms)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert assess_cluster(ms) == assess_cluster(shuffled)
