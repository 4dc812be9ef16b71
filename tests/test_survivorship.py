"""Primary selection, opt-out union and the write-back plan (pure; no database).

The compliance invariant is proven here as properties: no plan ever carries fewer opt-outs than any
member had, and no write-back ever sets an opt-out False that a member had True.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dedup.records import OPT_OUT_WIRE_FIELDS, MemberRecord, OptOuts, normalize_email, tag_key
from dedup.survivorship import (
    MergePlan,
    choose_primary,
    opt_out_union,
    plan_merge,
    primary_rank_key,
    verify_primary,
)

T0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)


def member(
    uid: str,
    *,
    name: str = "",
    phones: tuple[tuple[str, str | None], ...] = (),
    emails: tuple[str, ...] = (),
    tags: tuple[str, ...] = (),
    attributes: tuple[tuple[str, str], ...] = (),
    address: str | None = None,
    marketing: bool = False,
    sms: bool = False,
    email: bool = False,
    field_count: int | None = None,
    updated_at: datetime = T0,
    location: str = "loc-sydney",
) -> MemberRecord:
    return MemberRecord.build(
        uid=uid,
        location_uid=location,
        updated_at=updated_at,
        name=name,
        phone_channels=phones,
        raw_emails=emails,
        tags=tags,
        attributes=attributes,
        address=address,
        marketing_opt_out=marketing,
        sms_opt_out=sms,
        email_opt_out=email,
        field_count=field_count,
    )


def wire_after(plan: MergePlan) -> dict[str, Any]:
    """The primary as Podium would return it after applying the plan's PATCH."""
    return json.loads(json.dumps(plan.write_back))


# --- primary selection ------------------------------------------------------------------------------


def test_most_populated_fields_wins() -> None:
    rich = member("z9", field_count=5, updated_at=T0 - timedelta(days=400))
    poor = member("a1", field_count=2, updated_at=T0)
    assert choose_primary([poor, rich]) is rich


def test_then_most_recently_updated() -> None:
    old = member("a1", field_count=3, updated_at=T0)
    new = member("z9", field_count=3, updated_at=T0 + timedelta(seconds=1))
    assert choose_primary([old, new]) is new


def test_then_lexically_lowest_uid_as_a_string() -> None:
    # "c10" < "c9" as strings even though 10 > 9 as numbers.
    a, b = member("c9", field_count=3), member("c10", field_count=3)
    assert choose_primary([a, b]).uid == "c10"


def test_naive_and_aware_timestamps_rank_together() -> None:
    naive_newer = member("b", field_count=1, updated_at=datetime(2024, 5, 1, 10, 0))  # taken as UTC
    aware_older = member(
        "a", field_count=1, updated_at=datetime(2024, 5, 1, 19, 0, tzinfo=timezone(timedelta(hours=10)))
    )
    assert choose_primary([aware_older, naive_newer]).uid == "b"


def test_choose_primary_rejects_empty_and_repeated_members() -> None:
    with pytest.raises(ValueError):
        choose_primary([])
    with pytest.raises(ValueError):
        choose_primary([member("a"), member("a")])


def test_field_count_is_computed_when_not_given() -> None:
    m = member(
        "a",
        name="Maria",
        phones=(("0412 345 678", "+61412345678"), ("+61 412 345 678", "+61412345678"), ("12", None)),
        emails=("M@x.com", "m@x.com "),
        tags=("VIP", "vip"),
        attributes=(("Birthday", "1 May"), ("Source", " ")),
        address="1 George St",
    )
    # name + 2 distinct phones (one key twice, one unkeyed) + 1 email + 1 tag + 1 attribute + address
    assert m.field_count == 7


# --- the plan ---------------------------------------------------------------------------------------


def test_plan_writes_back_what_only_duplicates_held() -> None:
    primary = member(
        "p",
        name="Maria Garcia",
        phones=(("+61412345678", "+61412345678"),),
        emails=("maria@example.com",),
        tags=("VIP",),
        attributes=(("Birthday", "1 May"),),
        field_count=9,
    )
    dup = member(
        "d",
        name="Jose Garcia",
        phones=(("0412 345 678", "+61412345678"), ("(02) 9876 5432", "+61298765432"), ("call me", None)),
        emails=("MARIA@example.com", "Work@Example.com"),
        tags=("vip", "Plumbing"),
        attributes=(("Birthday", "2 May"), ("Source", "webhook")),
        address="1 George St, Sydney",
        marketing=True,
        field_count=3,
    )
    plan = plan_merge([dup, primary])
    assert plan.primary_uid == "p"
    assert plan.duplicate_uids == ("d",)
    wb = plan.write_back
    assert wb["name"] == "Maria Garcia"
    assert wb["address"] == "1 George St, Sydney"  # empty on the primary: filled
    assert wb["tags"] == [{"label": "VIP"}, {"label": "Plumbing"}]
    assert wb["channels"] == [
        {"type": "PHONE", "identifier": "+61412345678"},
        {"type": "PHONE", "identifier": "(02) 9876 5432"},  # the duplicate's own identifier
        {"type": "PHONE", "identifier": "call me"},  # never parsed, but must not be lost
        {"type": "EMAIL", "identifier": "maria@example.com"},
        {"type": "EMAIL", "identifier": "Work@Example.com"},
    ]
    assert wb["attributes"] == [
        {"label": "Birthday", "value": "1 May"},
        {"label": "Source", "value": "webhook"},
    ]
    assert wb["marketingOptOut"] is True and wb["smsOptOut"] is False and wb["emailOptOut"] is False
    assert {(c["field"], c["kept"], c["dropped"], c["fromUid"]) for c in plan.conflicts} == {
        ("name", "Maria Garcia", "Jose Garcia", "d"),
        ("attribute:Birthday", "1 May", "2 May", "d"),
    }
    assert plan.phone_keys == {"+61412345678": "+61412345678", "(02) 9876 5432": "+61298765432"}


def test_blank_or_placeholder_name_is_filled_from_the_richest_duplicate() -> None:
    primary = member("p", name="Unknown", field_count=9)
    rich = member("r", name="Maria Garcia", field_count=5)
    poor = member("q", name="M Garcia", field_count=1)
    plan = plan_merge([poor, primary, rich])
    assert plan.write_back["name"] == "Maria Garcia"
    assert plan.conflicts == (
        {"field": "name", "kept": "Maria Garcia", "dropped": "M Garcia", "fromUid": "q"},
    )


def test_same_name_spelled_differently_is_not_a_conflict() -> None:
    plan = plan_merge([member("p", name="Maria Garcia", field_count=2), member("d", name="GARCIA, Maria")])
    assert plan.conflicts == ()


def test_nothing_to_write_for_name_and_address_when_no_member_has_one() -> None:
    plan = plan_merge([member("p"), member("d")])
    assert "name" not in plan.write_back and "address" not in plan.write_back
    assert all(name in plan.write_back for name in OPT_OUT_WIRE_FIELDS)


def test_a_person_may_choose_the_primary_but_only_among_members() -> None:
    rich, poor = member("r", field_count=9), member("q", field_count=1, sms=True)
    plan = plan_merge([rich, poor], primary_uid="q")
    assert plan.primary_uid == "q" and plan.duplicate_uids == ("r",)
    assert plan.chosen_by == "person"
    assert plan_merge([rich, poor]).chosen_by == "rule"
    with pytest.raises(ValueError):
        plan_merge([rich, poor], primary_uid="stranger")


def test_stored_plan_round_trips_and_refuses_a_dropped_opt_out() -> None:
    plan = plan_merge([member("p", field_count=5), member("d", sms=True, tags=("VIP",))])
    stored = json.loads(json.dumps(plan.to_dict()))
    assert MergePlan.from_dict(stored) == plan
    tampered = json.loads(json.dumps(plan.to_dict()))
    tampered["writeBack"]["smsOptOut"] = False
    with pytest.raises(ValueError):
        MergePlan.from_dict(tampered)
    tampered = json.loads(json.dumps(plan.to_dict()))
    tampered["optOuts"]["smsOptOut"] = False
    with pytest.raises(ValueError):
        MergePlan.from_dict(tampered)
    tampered = json.loads(json.dumps(plan.to_dict()))
    del tampered["writeBack"]["smsOptOut"]
    with pytest.raises(ValueError):
        MergePlan.from_dict(tampered)


def test_opt_out_union_and_covers() -> None:
    flags = opt_out_union([member("a", marketing=True), member("b", email=True), member("c")])
    assert flags == OptOuts(marketing=True, sms=False, email=True)
    assert flags.covers(OptOuts(marketing=True))
    assert not OptOuts(marketing=True).covers(flags)


# --- verification -----------------------------------------------------------------------------------


def test_verify_accepts_the_written_back_primary_and_names_what_is_missing() -> None:
    plan = plan_merge(
        [
            member("p", name="Maria", phones=(("+61412345678", "+61412345678"),), field_count=5),
            member(
                "d",
                phones=(("(02) 9876 5432", "+61298765432"),),
                emails=("m@example.com",),
                tags=("VIP",),
                attributes=(("Source", "webhook"),),
                sms=True,
                email=True,
            ),
        ]
    )
    after = wire_after(plan)
    assert verify_primary(plan, after) == []

    after["smsOptOut"] = False
    after["tags"] = []
    after["channels"] = [c for c in after["channels"] if c["type"] == "PHONE"]
    after["attributes"] = [{"label": "Source", "value": "csv"}]
    problems = verify_primary(plan, after)
    assert "smsOptOut is off but the merge requires it on" in problems
    assert "tag 'VIP' is missing" in problems
    assert "email 'm@example.com' is missing" in problems
    assert "attribute 'Source' is 'csv', expected 'webhook'" in problems
    assert len(problems) == 4


def test_verify_against_a_reindexed_record_compares_phones_by_key() -> None:
    plan = plan_merge(
        [
            member("p", phones=(("+61412345678", "+61412345678"),), field_count=5),
            member("d", phones=(("(02) 9876 5432", "+61298765432"),), marketing=True),
        ]
    )
    # Podium (or a person) reformatted the number; the key still matches.
    reread = member(
        "p",
        phones=(("+61412345678", "+61412345678"), ("+61 2 9876 5432", "+61298765432")),
        marketing=True,
    )
    assert verify_primary(plan, reread) == []
    assert verify_primary(plan, member("p", phones=(("+61412345678", "+61412345678"),))) == [
        "marketingOptOut is off but the merge requires it on",
        "phone '(02) 9876 5432' is missing",
    ]


# --- properties -------------------------------------------------------------------------------------

# Several spellings per natural key, so "compare by key, write the raw identifier" is exercised.
PHONE_SPELLINGS = {
    "+61412345678": ["+61412345678", "0412 345 678", "+61 412 345 678"],
    "+61298765432": ["(02) 9876 5432", "+61298765432"],
    "+61355550000": ["03 5555 0000"],
}
phone_channel = st.one_of(
    st.sampled_from([(raw, key) for key, raws in PHONE_SPELLINGS.items() for raw in raws]),
    st.sampled_from([("12", None), ("call reception", None)]),
)
when = st.sampled_from([T0, T0 + timedelta(hours=1), datetime(2024, 5, 1, 9, 0), T0 - timedelta(days=3)])
member_strategy = st.builds(
    member,
    uid=st.text(alphabet="abc19", min_size=1, max_size=3),
    name=st.sampled_from(["", "Maria Garcia", "GARCIA, Maria", "Jose Garcia", "Unknown"]),
    phones=st.lists(phone_channel, max_size=3).map(tuple),
    emails=st.lists(st.sampled_from(["m@example.com", "M@Example.com ", "j@example.com"]), max_size=2).map(
        tuple
    ),
    tags=st.lists(st.sampled_from(["VIP", "vip", "Plumbing", "review-sent"]), max_size=3).map(tuple),
    attributes=st.lists(
        st.tuples(
            st.sampled_from(["Birthday", "Source", "birthday"]), st.sampled_from(["1 May", "csv", "", "web"])
        ),
        max_size=2,
    ).map(tuple),
    address=st.sampled_from([None, "", "1 George St", "2 Pitt St"]),
    marketing=st.booleans(),
    sms=st.booleans(),
    email=st.booleans(),
    field_count=st.one_of(st.none(), st.integers(0, 3)),  # small ints force ties on the first criterion
    updated_at=when,
)
member_lists = st.lists(member_strategy, min_size=1, max_size=5, unique_by=lambda m: m.uid)


@given(member_lists, st.randoms())
def test_primary_does_not_depend_on_member_order(ms: list[MemberRecord], rnd: object) -> None:
    shuffled = list(ms)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert choose_primary(ms) == choose_primary(shuffled)
    best = choose_primary(ms)
    assert all(primary_rank_key(best) <= primary_rank_key(m) for m in ms)
    assert best.field_count == max(m.field_count for m in ms)


@given(member_lists, st.randoms())
def test_plan_is_deterministic(ms: list[MemberRecord], rnd: object) -> None:
    shuffled = list(ms)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert plan_merge(ms) == plan_merge(shuffled)
    assert plan_merge(ms).to_dict() == plan_merge(list(ms)).to_dict()


@given(member_lists, st.data())
def test_no_plan_ever_turns_an_opt_out_off(ms: list[MemberRecord], data: st.DataObject) -> None:
    chosen = data.draw(st.one_of(st.none(), st.sampled_from([m.uid for m in ms])))
    plan = plan_merge(ms, primary_uid=chosen)
    written = OptOuts.from_wire(plan.write_back)
    for m in ms:
        assert plan.opt_outs.covers(m.opt_outs)
        assert written.covers(m.opt_outs)
        for wire_name, had in zip(
            OPT_OUT_WIRE_FIELDS, (m.marketing_opt_out, m.sms_opt_out, m.email_opt_out), strict=True
        ):
            if had:
                assert plan.write_back[wire_name] is True
    assert written == plan.opt_outs == opt_out_union(ms)
    assert all(isinstance(plan.write_back[w], bool) for w in OPT_OUT_WIRE_FIELDS)


@given(member_lists, st.data())
def test_write_back_keeps_everything_any_member_held(ms: list[MemberRecord], data: st.DataObject) -> None:
    chosen = data.draw(st.one_of(st.none(), st.sampled_from([m.uid for m in ms])))
    plan = plan_merge(ms, primary_uid=chosen)
    wb = plan.write_back
    written_tags = {tag_key(t["label"]) for t in wb["tags"]}
    written_phones = [c["identifier"] for c in wb["channels"] if c["type"] == "PHONE"]
    written_keys = {plan.phone_keys.get(p) for p in written_phones}
    written_emails = {normalize_email(c["identifier"]) for c in wb["channels"] if c["type"] == "EMAIL"}
    written_labels = {a["label"].casefold() for a in wb["attributes"]}
    all_raw = {raw for m in ms for raw in m.raw_phones}
    for m in ms:
        assert {tag_key(t) for t in m.tags} <= written_tags
        assert set(m.phones) <= written_keys
        assert {raw for raw, key in m.phone_channels() if key is None} <= set(written_phones)
        assert set(m.emails) <= written_emails
        assert {label.casefold() for label, value in m.attributes if value.strip()} <= written_labels
    assert set(written_phones) <= all_raw  # only identifiers someone actually held
    # No duplicates on the wire: one channel per natural key, one tag per label.
    assert len(written_tags) == len(wb["tags"])
    assert len([k for k in (plan.phone_keys.get(p) for p in written_phones) if k]) == len(
        set(plan.phone_keys.values())
    )
    # The primary's own spelling of each of its numbers is the one kept (two spellings of one number
    # on the primary are one channel: comparing by natural key is the point of the product).
    primary = next(m for m in ms if m.uid == plan.primary_uid)
    first_spelling: dict[str, str] = {}
    for raw, key in primary.phone_channels():
        first_spelling.setdefault(key or raw, raw)
    assert set(first_spelling.values()) <= set(written_phones)
    own_tags: dict[str, str] = {}
    for label in primary.tags:
        own_tags.setdefault(tag_key(label), label)
    assert [t["label"] for t in wb["tags"]][: len(own_tags)] == list(own_tags.values())


@given(member_lists)
def test_plan_round_trips_through_json_and_verifies_after_a_faithful_write_back(
    ms: list[MemberRecord],
) -> None:
    plan = plan_merge(ms)
    assert MergePlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    assert verify_primary(plan, wire_after(plan)) == []
    assert plan.member_uids[0] == plan.primary_uid
    assert sorted(plan.member_uids) == sorted(m.uid for m in ms)


@given(member_lists.filter(lambda ms: any(m.opt_outs.any for m in ms)))
def test_verify_catches_any_opt_out_left_off(ms: list[MemberRecord]) -> None:
    plan = plan_merge(ms)
    for wire_name in OPT_OUT_WIRE_FIELDS:
        if plan.write_back[wire_name]:
            after = wire_after(plan)
            after[wire_name] = False
            assert any(p.startswith(wire_name) for p in verify_primary(plan, after))
