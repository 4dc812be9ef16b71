"""Survivorship (``dedup.survivorship``; pure, no database): the primary, the typed plan, verification.

What the published API can write onto a primary is narrow (fill an empty field, attach tags and
attributes, add locations, withdraw a phone's marketing consent, move conversations); everything else a
duplicate held is a named ``Loss`` a person must accept, and stricter consent that cannot be written is a
``blocker``. The properties at the end prove the promise "nothing is dropped silently": every value of
every member is on the primary already, carried by the plan, or named as a loss; a faithful application
of a plan verifies; and the consent invariant holds whenever the plan has no blocker.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dedup.consent import EMAIL, PHONE, ChannelConsent, reachable, violations
from dedup.names import normalize_name
from dedup.records import MemberRecord, OptOuts, attribute_key, normalize_email, phone_identity, tag_key
from dedup.survivorship import (
    CHOSEN_BY_PERSON,
    CHOSEN_BY_RULE,
    MergePlan,
    SurvivorView,
    choose_primary,
    opt_out_union,
    plan_merge,
    primary_rank_key,
    verify_survivor,
)

T0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
SYD, BUR, AKL = "loc-syd", "loc-bur", "loc-akl"
MOBILE = ("0412 345 678", "+61412345678")
MOBILE_E164 = ("+61412345678", "+61412345678")
LANDLINE = ("(02) 9876 5432", "+61298765432")


def member(
    uid: str,
    *,
    name: str = "",
    phones: Sequence[tuple[str, str | None]] = (),
    emails: Sequence[str] = (),
    tags: Sequence[str] = (),
    attributes: Sequence[tuple[str, str]] = (),
    address: str | None = None,
    locations: Sequence[str] = (SYD,),
    not_opted_in: Iterable[str] = (),
    opted_in: Sequence[str] | None = None,
    transactional: Iterable[str] = (),
    conversations: Sequence[str] = (),
    field_count: int | None = None,
    updated_at: datetime = T0,
) -> MemberRecord:
    """A member with per-channel consent: every channel opted in at ``opted_in`` (default: its locations)
    except those typed in ``not_opted_in``; ``transactional`` names channels with that opt-out. The three
    flags are derived from the channels exactly as the product derives them."""
    quiet, out = set(not_opted_in), set(transactional)
    where = frozenset(locations if opted_in is None else opted_in)
    consent = [
        ChannelConsent(
            PHONE, phone_identity(key, raw), raw, frozenset() if raw in quiet else where, raw in out
        )
        for raw, key in phones
    ] + [
        ChannelConsent(EMAIL, normalize_email(e), e, frozenset() if e in quiet else where, e in out)
        for e in emails
    ]
    flags = flags_of(consent, locations)
    return MemberRecord.build(
        uid=uid,
        location_uid=locations[0] if locations else "",
        location_uids=locations,
        updated_at=updated_at,
        name=name,
        phone_channels=phones,
        raw_emails=emails,
        tags=tags,
        attributes=attributes,
        address=address,
        address_parts={"addressLine1": address} if address else None,
        marketing_opt_out=flags.marketing,
        sms_opt_out=flags.sms,
        email_opt_out=flags.email,
        field_count=field_count,
        consent=consent,
        tag_refs=[(f"tag-{tag_key(t)}", t) for t in tags],
        attribute_refs=[(f"attr-{attribute_key(label)}", label, value) for label, value in attributes],
        conversation_uids=conversations,
    )


def flags_of(consent: Iterable[ChannelConsent], locations: Sequence[str]) -> OptOuts:
    """The three flags over the channels anyone can message (``podium_client.consent``'s rule)."""
    marketing = sms = email = False
    for c in consent:
        if not reachable(c):
            continue
        marketing = marketing or (
            any(loc not in c.opted_in for loc in locations) if locations else not c.opted_in
        )
        sms = sms or (c.kind == PHONE and c.transactional_opt_out)
        email = email or (c.kind == EMAIL and c.transactional_opt_out)
    return OptOuts(marketing, sms, email)


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
    assert choose_primary([member("c9", field_count=3), member("c10", field_count=3)]).uid == "c10"


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


def test_field_count_counts_distinct_values_and_never_consent() -> None:
    m = member(
        "a", name="Maria", phones=[MOBILE, ("+61 412 345 678", "+61412345678"), ("12", None)],
        emails=["M@x.com", "m@x.com "], tags=["VIP", "vip"], attributes=[("Birthday", "1 May"), ("Source", " ")],
        address="1 George St", not_opted_in=["0412 345 678"], transactional=["12"],
    )  # fmt: skip
    # name + 2 distinct phones (one number twice, one unkeyed) + 1 email + 1 tag + 1 attribute + address
    assert m.field_count == 7
    assert m.marketing_opt_out and m.sms_opt_out


# --- the plan: what is carried ------------------------------------------------------------------------


def test_the_plan_fills_empty_fields_and_attaches_what_only_duplicates_held() -> None:
    primary = member("p", name="Unknown", phones=[MOBILE], tags=["VIP"], attributes=[("Birthday", "1 May")],
                     conversations=["cv-p"], field_count=9)  # fmt: skip
    dup = member(
        "d", name="Maria Garcia", phones=[MOBILE_E164], emails=["Maria@Example.com "], tags=["vip", "Plumbing"],
        attributes=[("birthday", "1 May"), ("Source", "webhook")], address="1 George St",
        locations=[SYD, BUR], conversations=["cv-d1", "cv-d2"],
    )  # fmt: skip
    plan = plan_merge([dup, primary])
    assert (plan.primary_uid, plan.duplicate_uids, plan.chosen_by) == ("p", ("d",), CHOSEN_BY_RULE)
    assert plan.name == "Maria Garcia", "a placeholder name is no name"
    assert plan.address == {"addressLine1": "1 George St", "addressLine2": None, "city": None, "state": None,
                            "postalCode": None, "country": None}  # fmt: skip
    assert plan.email == "Maria@Example.com" and plan.phone is None
    assert [(t.uid, t.label) for t in plan.tags] == [("tag-plumbing", "Plumbing")]
    assert [(a.label, a.value) for a in plan.attributes] == [("Source", "webhook")]
    assert plan.locations == (SYD, BUR)
    assert plan.conversations == (("d", ("cv-d1", "cv-d2")),) and plan.conversation_uids == ("cv-d1", "cv-d2")
    assert plan.losses == () and plan.blockers == ()


def test_a_primary_without_a_phone_gets_the_richest_duplicates_in_e164() -> None:
    plan = plan_merge(
        [member("p", name="Sam", emails=["s@example.com"], field_count=9), member("d", phones=[LANDLINE])]
    )
    assert plan.phone == "+61298765432" and plan.losses == ()


def test_what_the_published_api_cannot_carry_is_a_named_loss() -> None:
    primary = member("p", name="Maria Garcia", phones=[MOBILE], emails=["m@example.com"], address="1 George St",
                     attributes=[("tier", "gold")], field_count=9)  # fmt: skip
    dup = member("d", name="Jose Garcia", phones=[MOBILE_E164, LANDLINE, ("call me", None)], emails=["w@example.com"],
                 address="9 Pitt St", attributes=[("tier", "silver")])  # fmt: skip
    plan = plan_merge([primary, dup])
    assert {(loss.field, loss.value, loss.from_uid) for loss in plan.losses} == {
        ("name", "Jose Garcia", "d"),
        ("address", "9 Pitt St", "d"),
        ("phone", "(02) 9876 5432", "d"),
        ("phone", "call me", "d"),
        ("email", "w@example.com", "d"),
        ("attribute:tier", "silver", "d"),
    }
    assert all(loss.describe().startswith(f"{loss.field} {loss.value!r} of d: ") for loss in plan.losses)
    assert plan.phone is None and plan.email is None


def test_two_different_junk_phones_are_two_values() -> None:
    # "n/a" and "none" have no digits; comparing them by digits made the duplicate's silently "held".
    plan = plan_merge(
        [member("p", phones=[MOBILE, ("n/a", None)], field_count=9), member("d", phones=[("none", None)])]
    )
    assert [(loss.field, loss.value) for loss in plan.losses] == [("phone", "none")]
    same = plan_merge(
        [member("p", phones=[("N/A", None)], field_count=9), member("d", phones=[(" n/a ", None)])]
    )
    assert same.losses == ()


def test_a_channel_whose_transactional_opt_out_cannot_be_written_is_a_loss_and_the_next_one_is_filled() -> (
    None
):
    primary = member("p", name="Sam", address="2 Pitt St", field_count=9)
    d1 = member("d1", phones=[LANDLINE], emails=["out@example.com"], transactional=["(02) 9876 5432", "out@example.com"],
                field_count=3)  # fmt: skip
    d2 = member("d2", phones=[MOBILE], emails=["in@example.com"], field_count=2)
    plan = plan_merge([primary, d1, d2])
    assert plan.phone == "+61412345678" and plan.email == "in@example.com"
    assert {(loss.field, loss.from_uid) for loss in plan.losses} == {("phone", "d1"), ("email", "d1")}
    assert all("transactional" in loss.reason for loss in plan.losses)
    assert plan.blockers == ()


# --- the plan: consent ----------------------------------------------------------------------------------


def test_a_duplicate_not_opted_in_has_the_shared_number_opted_out_on_the_primary() -> None:
    plan = plan_merge(
        [
            member("p", phones=[MOBILE], field_count=9),
            member("d", phones=[MOBILE_E164], not_opted_in=["+61412345678"]),
        ]
    )
    assert plan.opt_out_phones == ("+61412345678",) and plan.blockers == ()
    assert plan.consent["+61412345678"].allowed_opt_in == frozenset()
    assert plan.opt_outs == OptOuts(marketing=True) and plan.member_opt_outs["d"] == OptOuts(marketing=True)


def test_consent_the_published_api_cannot_write_blocks_that_primary_but_not_another() -> None:
    p = member("p", phones=[MOBILE], emails=["m@example.com"], field_count=9)
    d = member("d", phones=[MOBILE_E164], emails=["M@example.com"], transactional=["+61412345678"],
               not_opted_in=["M@example.com"])  # fmt: skip
    plan = plan_merge([p, d])
    assert len(plan.blockers) == 2
    assert any("transactional" in b and "on d" in b for b in plan.blockers)
    assert any("email" in b and "marketing" in b for b in plan.blockers)
    assert all("+61412345678" not in b and "m@example.com" not in b for b in plan.blockers), "masked"
    onto_d = plan_merge([p, d], primary_uid="d")
    assert onto_d.blockers == () and onto_d.chosen_by == CHOSEN_BY_PERSON
    assert onto_d.opt_outs == OptOuts(marketing=True, sms=True)


def test_a_person_may_choose_the_primary_but_only_among_members() -> None:
    rich, poor = member("r", field_count=9), member("q", field_count=1)
    plan = plan_merge([rich, poor], primary_uid="q")
    assert plan.primary_uid == "q" and plan.duplicate_uids == ("r",) and plan.chosen_by == CHOSEN_BY_PERSON
    with pytest.raises(ValueError, match="not a member"):
        plan_merge([rich, poor], primary_uid="stranger")


def test_the_plan_round_trips_through_json() -> None:
    plan = plan_merge([
        member("p", name="Maria", phones=[MOBILE], tags=["vip"], field_count=9),
        member("d", phones=[MOBILE_E164, LANDLINE], emails=["m@example.com"], tags=["new"], attributes=[("a", "1")],
               address="1 George St", not_opted_in=["+61412345678"], conversations=["cv-1"], locations=[BUR]),
    ])  # fmt: skip
    stored = json.loads(json.dumps(plan.to_dict()))
    assert MergePlan.from_dict(stored) == plan
    assert stored["losses"] == [{"field": "phone", "value": "(02) 9876 5432", "fromUid": "d",
                                 "reason": "the survivor already has a phone; Podium's API cannot add a second"}]  # fmt: skip


def test_opt_out_union() -> None:
    flags = opt_out_union([member("a", phones=[MOBILE], not_opted_in=["0412 345 678"]),
                           member("b", emails=["e@x.com"], transactional=["e@x.com"]), member("c")])  # fmt: skip
    assert flags == OptOuts(marketing=True, sms=False, email=True)
    assert flags.covers(OptOuts(marketing=True)) and not OptOuts(marketing=True).covers(flags)


# --- verification -----------------------------------------------------------------------------------


def view(**overrides: object) -> SurvivorView:
    base: dict[str, object] = {
        "name": "Maria", "has_address": True, "emails": frozenset({"m@example.com"}),
        "phones": frozenset({"+61412345678"}), "tag_uids": frozenset({"tag-new"}), "tag_labels": frozenset({"new"}),
        "attribute_uids": {"attr-a": "1"}, "attribute_labels": {"a": "1"}, "locations": frozenset({SYD, BUR}),
        "conversations": frozenset({"cv-1"}),
        "consent": (ChannelConsent(PHONE, "+61412345678", "0412 345 678", frozenset(), False),),
    }  # fmt: skip
    base.update(overrides)
    return SurvivorView(**base)  # type: ignore[arg-type]


PLAN = plan_merge([
    member("p", name="Maria", phones=[MOBILE], field_count=9),
    member("d", emails=["m@example.com"], tags=["new"], attributes=[("a", "1")], address="1 George St",
           not_opted_in=["+61412345678"], phones=[MOBILE_E164], conversations=["cv-1"], locations=[BUR]),
])  # fmt: skip


def test_verify_checks_presence_not_equality() -> None:
    assert verify_survivor(PLAN, view(), conversations=True) == []
    # Someone added things in Podium meanwhile: still verified.
    more = view(
        tag_labels=frozenset({"new", "theirs"}),
        attribute_labels={"a": "2", "b": "x"},
        conversations=frozenset({"cv-1", "cv-9"}),
    )
    assert verify_survivor(PLAN, more, conversations=True) == []


def test_verify_names_everything_missing_and_weaker_consent() -> None:
    broken = view(
        has_address=False, emails=frozenset(), tag_uids=frozenset(), tag_labels=frozenset(), attribute_uids={},
        attribute_labels={"a": "  "}, locations=frozenset({SYD}), conversations=frozenset(),
        consent=(ChannelConsent(PHONE, "+61412345678", "0412 345 678", frozenset({SYD}), False),),
    )  # fmt: skip
    problems = verify_survivor(PLAN, broken, conversations=True)
    assert problems[:6] == [
        "the address was not written", "the email was not added", "tag 'new' is missing",
        "attribute 'a' is missing", "locations ['loc-bur'] are missing", "conversations ['cv-1'] did not move onto the survivor",
    ]  # fmt: skip
    assert len(problems) == 7 and "opted in for marketing" in problems[6]
    assert verify_survivor(PLAN, broken, conversations=False)[5:] == problems[6:], "native moves them itself"


# --- properties -------------------------------------------------------------------------------------

PHONES = [MOBILE, MOBILE_E164, ("+61 412 345 678", "+61412345678"), LANDLINE, ("0412", None), ("n/a", None)]
EMAILS = ["m@example.com", "M@Example.com ", "j@example.com"]
LOCATION_SETS = [(SYD,), (BUR,), (SYD, BUR), (AKL,)]


@st.composite
def members_of_one_cluster(draw: st.DrawFn) -> list[MemberRecord]:
    n = draw(st.integers(1, 5))
    out = []
    for i in range(n):
        phones = draw(st.lists(st.sampled_from(PHONES), max_size=3, unique_by=lambda p: p[0]))
        emails = draw(st.lists(st.sampled_from(EMAILS), max_size=2, unique=True))
        typed = [raw for raw, _key in phones] + emails
        locations = draw(st.sampled_from(LOCATION_SETS))
        out.append(
            member(
                f"m{i}{draw(st.sampled_from('abc'))}",
                name=draw(st.sampled_from(["", "Maria Garcia", "GARCIA, Maria", "Jose Garcia", "Unknown"])),
                phones=phones,
                emails=emails,
                tags=draw(st.lists(st.sampled_from(["VIP", "vip", "Plumbing", "review-sent"]), max_size=3)),
                attributes=draw(
                    st.lists(
                        st.tuples(
                            st.sampled_from(["Birthday", "Source", "birthday"]),
                            st.sampled_from(["1 May", "csv", "web"]),
                        ),
                        max_size=2,
                    )
                ),  # fmt: skip
                address=draw(st.sampled_from([None, "1 George St", "2 Pitt St"])),
                locations=locations,
                opted_in=draw(st.sampled_from([None, (), (SYD,), (SYD, BUR, AKL)])),
                not_opted_in=draw(st.sets(st.sampled_from(typed))) if typed else set(),
                transactional=draw(st.sets(st.sampled_from(typed), max_size=1 + i % 2)) if typed else set(),
                conversations=[f"cv-{i}-{k}" for k in range(draw(st.integers(0, 2)))],
                field_count=draw(st.one_of(st.none(), st.integers(0, 3))),  # small ints force rank ties
                updated_at=T0 + timedelta(minutes=draw(st.integers(0, 3))),
            )
        )
    uids = [m.uid for m in out]
    return [m for i, m in enumerate(out) if m.uid not in uids[:i]]


def _phone_value(raw: str, key: str | None) -> str:
    return key or "raw:" + " ".join(raw.split()).casefold()


def _apply(
    plan: MergePlan, primary: MemberRecord
) -> tuple[SurvivorView, list[ChannelConsent], tuple[str, ...]]:
    """The primary after a faithful write-back of the plan: its own data, plus what the plan carries."""
    added = []
    if plan.email:
        added.append(ChannelConsent(EMAIL, normalize_email(plan.email), plan.email, frozenset(), False))
    if plan.phone:
        added.append(ChannelConsent(PHONE, plan.phone, plan.phone, frozenset(), False))
    withdrawn = set(plan.opt_out_phones)
    consent = [
        ChannelConsent(
            c.kind,
            c.identity,
            c.identifier,
            frozenset() if c.identity in withdrawn else c.opted_in,
            c.transactional_opt_out,
        )  # fmt: skip
        for c in primary.consent
    ] + added
    locations = plan.locations or primary.location_uids
    survivor = SurvivorView(
        name=plan.name or primary.name,
        has_address=bool(primary.address_parts) or plan.address is not None,
        emails=frozenset({*primary.emails, *(normalize_email(plan.email) for _ in [1] if plan.email)}),
        phones=frozenset({*primary.phones, *([plan.phone] if plan.phone else [])}),
        tag_uids=frozenset(
            {uid for uid, _label in primary.tag_refs if uid} | {t.uid for t in plan.tags if t.uid}
        ),
        tag_labels=frozenset({tag_key(t) for t in primary.tags} | {tag_key(t.label) for t in plan.tags}),
        attribute_uids={
            **{u: v for u, _l, v in primary.attribute_refs if u},
            **{a.uid: a.value for a in plan.attributes if a.uid},
        },
        attribute_labels={
            **{attribute_key(label): v for label, v in primary.attributes},
            **{attribute_key(a.label): a.value for a in plan.attributes},
        },  # fmt: skip
        locations=frozenset(locations),
        conversations=frozenset({*primary.conversation_uids, *plan.conversation_uids}),
        consent=tuple(consent),
    )
    return survivor, consent, tuple(locations)


@given(members_of_one_cluster(), st.randoms(use_true_random=False))
def test_the_primary_and_the_plan_do_not_depend_on_member_order(ms: list[MemberRecord], rnd: object) -> None:
    shuffled = list(ms)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert choose_primary(ms) == choose_primary(shuffled)
    best = choose_primary(ms)
    assert all(primary_rank_key(best) <= primary_rank_key(m) for m in ms)
    assert best.field_count == max(m.field_count for m in ms)
    assert plan_merge(ms) == plan_merge(shuffled)
    assert MergePlan.from_dict(json.loads(json.dumps(plan_merge(ms).to_dict()))) == plan_merge(ms)


@given(members_of_one_cluster(), st.data())
def test_nothing_is_dropped_silently(ms: list[MemberRecord], data: st.DataObject) -> None:
    chosen = data.draw(st.one_of(st.none(), st.sampled_from([m.uid for m in ms])))
    plan = plan_merge(ms, primary_uid=chosen)
    primary = next(m for m in ms if m.uid == plan.primary_uid)
    lost = {(loss.field, loss.from_uid) for loss in plan.losses}
    # A value is named once, even when several members held it (the same number typed two ways).
    keys = {raw: key for m in ms for raw, key in m.phone_channels()}
    lost_phones = {
        _phone_value(loss.value, keys.get(loss.value)) for loss in plan.losses if loss.field == "phone"
    }
    lost_emails = {normalize_email(loss.value) for loss in plan.losses if loss.field == "email"}
    phones = {_phone_value(raw, key) for raw, key in primary.phone_channels()} | (
        {plan.phone} if plan.phone else set()
    )
    emails = set(primary.emails) | ({normalize_email(plan.email)} if plan.email else set())
    tags = {tag_key(t) for t in primary.tags} | {tag_key(t.label) for t in plan.tags}
    attributes = {attribute_key(label) for label, v in primary.attributes if v.strip()}
    attributes |= {attribute_key(a.label) for a in plan.attributes}
    for m in ms:
        for raw, key in m.phone_channels():
            assert _phone_value(raw, key) in phones | lost_phones, (m.uid, raw)
        for e in m.emails:
            assert e in emails | lost_emails, (m.uid, e)
        assert {tag_key(t) for t in m.tags} <= tags
        for label, value in m.attributes:
            assert attribute_key(label) in attributes or (f"attribute:{label}", m.uid) in lost
            if attribute_key(label) in {attribute_key(x) for x, _ in primary.attributes}:
                same = (
                    value.strip()
                    == dict((attribute_key(x), v) for x, v in primary.attributes)[
                        attribute_key(label)
                    ].strip()
                )
                assert same or m is primary or any(f == f"attribute:{label}" for f, u in lost if u == m.uid)
        if m.address and not primary.address:
            assert plan.address is not None
        if normalize_name(m.name) and not normalize_name(plan.name or primary.name):
            pytest.fail("a name was dropped")
        assert set(m.location_uids) <= set(plan.locations or primary.location_uids)
        if m is not primary:
            assert set(m.conversation_uids) <= set(plan.conversation_uids)
    assert plan.opt_outs == opt_out_union(ms)


@given(members_of_one_cluster(), st.data())
def test_a_faithful_write_back_verifies_and_keeps_every_members_consent(
    ms: list[MemberRecord], data: st.DataObject
) -> None:
    chosen = data.draw(st.one_of(st.none(), st.sampled_from([m.uid for m in ms])))
    plan = plan_merge(ms, primary_uid=chosen)
    primary = next(m for m in ms if m.uid == plan.primary_uid)
    survivor, consent, locations = _apply(plan, primary)
    problems = verify_survivor(plan, survivor, conversations=True)
    if plan.blockers:
        # A blocker is consent the published API cannot write: it really stays weaker.
        assert problems and all("opted in" in p or "transactional" in p for p in problems)
        return
    assert problems == []
    assert violations(plan.consent, consent) == []
    if not plan.losses:
        # Nothing lost and nothing blocked: the survivor's three flags cover every member's.
        assert flags_of(consent, locations).covers(opt_out_union(ms))
