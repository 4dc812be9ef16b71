"""The compliance invariant on Podium's per-channel consent model (``dedup.consent``; pure, no database).

The invariant: after anything the product does, the survivor's consent for each number and address it
holds is at least as strict as the strictest member that held it — marketing opt-in only where every
such member was opted in, a transactional opt-out wherever any had one. ``needs_for`` says what the
published API must do to get a primary there, or that it cannot (``uncarriable``).
"""

from __future__ import annotations

from collections.abc import Iterable

from hypothesis import given
from hypothesis import strategies as st

from dedup.consent import (
    EMAIL,
    PHONE,
    ChannelConsent,
    Requirement,
    mask,
    needs_for,
    requirements,
    stricter,
    violations,
)

SYD, BUR, AKL = "loc-syd", "loc-bur", "loc-akl"
MOBILE, LANDLINE = "+61412345678", "+61298765432"


def phone(
    identity: str, opted_in: Iterable[str] = (), out: bool = False, typed: str | None = None
) -> ChannelConsent:
    return ChannelConsent(PHONE, identity, typed or identity, frozenset(opted_in), out)


def email(identity: str, opted_in: Iterable[str] = (), out: bool = False) -> ChannelConsent:
    return ChannelConsent(EMAIL, identity, identity, frozenset(opted_in), out)


# --- requirements -------------------------------------------------------------------------------------


def test_the_requirement_is_the_strictest_member_per_number() -> None:
    required = requirements(
        {
            "a": [phone(MOBILE, [SYD, BUR]), email("m@example.com", [SYD])],
            "b": [phone(MOBILE, [SYD], typed="0412 345 678"), phone(LANDLINE, [SYD], out=True)],
            "c": [phone(MOBILE, [SYD, AKL])],
        }
    )
    mobile = required[MOBILE]
    assert mobile.allowed_opt_in == {SYD}, "opted in only where every holder was"
    assert not mobile.transactional_opt_out
    assert mobile.held_by == ("a", "b", "c")
    assert required[LANDLINE].transactional_opt_out and required[LANDLINE].held_by == ("b",)
    assert required["m@example.com"].allowed_opt_in == {SYD}


def test_the_requirement_names_the_members_that_said_no_not_every_holder() -> None:
    required = requirements(
        {"a": [phone(MOBILE, [SYD])], "b": [phone(MOBILE, [])], "c": [phone(MOBILE, [SYD], out=True)]}
    )
    assert required[MOBILE].held_by == ("a", "b", "c")
    assert required[MOBILE].opted_out_by == ("c",)
    opted_in, missing = violations(required, [phone(MOBILE, [SYD])])
    assert "opted in for marketing" in opted_in
    assert missing.endswith("lacks the transactional opt-out c had")
    assert violations(required, [phone(MOBILE, [], out=True)]) == []


def test_phones_without_a_digit_reach_nobody_and_carry_no_consent() -> None:
    # "n/a" on one member and "call me" on another must not constrain each other (nor anything else).
    required = requirements(
        {"a": [phone("raw:", [SYD], typed="n/a")], "b": [phone("raw:", [], typed="call me")]}
    )
    assert required == {}
    assert needs_for(required, [phone("raw:", [SYD], typed="n/a")]).uncarriable == ()


def test_stricter_holds_the_survivor_to_both() -> None:
    a = requirements({"a": [phone(MOBILE, [SYD, BUR])]})
    b = requirements({"b": [phone(MOBILE, [BUR], out=True), email("x@example.com")]})
    both = stricter(a, b)
    assert both[MOBILE].allowed_opt_in == {BUR} and both[MOBILE].transactional_opt_out
    assert both[MOBILE].held_by == ("a", "b")
    assert "x@example.com" in both
    assert stricter(b, a)[MOBILE].allowed_opt_in == both[MOBILE].allowed_opt_in


# --- violations ---------------------------------------------------------------------------------------


def test_violations_name_what_is_weaker_without_the_full_number() -> None:
    required = requirements({"a": [phone(MOBILE, [SYD])], "b": [phone(MOBILE, [], out=True)]})
    problems = violations(required, [phone(MOBILE, [SYD, BUR], typed="0412 345 678")])
    assert len(problems) == 2
    assert "opted in for marketing at ['loc-bur', 'loc-syd']" in problems[0]
    assert "transactional opt-out" in problems[1]
    assert all(MOBILE not in p and "412345678" not in p for p in problems)
    assert mask(MOBILE) in problems[0]


def test_a_channel_no_member_held_and_a_stricter_survivor_are_fine() -> None:
    required = requirements({"a": [phone(MOBILE, [SYD, BUR])]})
    assert violations(required, [phone(LANDLINE, [SYD, BUR, AKL]), phone(MOBILE, [SYD], out=True)]) == []


# --- what the published API can do about it ------------------------------------------------------------


def test_needs_for_withdraws_a_phone_and_refuses_what_cannot_be_written() -> None:
    required = requirements(
        {
            "a": [phone(MOBILE, []), email("m@example.com", []), phone(LANDLINE, [], out=True)],
            "p": [phone(MOBILE, [SYD]), email("m@example.com", [SYD]), phone(LANDLINE, [SYD])],
        }
    )
    primary = [phone(MOBILE, [SYD]), email("m@example.com", [SYD]), phone(LANDLINE, [SYD])]
    needs = needs_for(required, primary)
    assert needs.opt_out_phones == (LANDLINE, MOBILE)
    assert len(needs.uncarriable) == 2
    assert any(
        "email" in u and "cannot withdraw an email's marketing consent" in u for u in needs.uncarriable
    )
    assert any("opted out of transactional messages on a, and" in u for u in needs.uncarriable)


def test_needs_for_judges_every_spelling_of_a_number_on_the_primary() -> None:
    required = requirements({"d": [phone(MOBILE, [])]})
    # The first spelling is already opted out; the second is not and must be withdrawn too.
    primary = [phone(MOBILE, [], typed="0412 345 678"), phone(MOBILE, [SYD], typed="+61412345678")]
    assert violations(required, primary)
    assert needs_for(required, primary).opt_out_phones == (MOBILE,)


def test_a_number_that_is_not_e164_cannot_be_opted_out_through_the_api() -> None:
    required = requirements({"d": [phone("raw:0412", [], typed="0412")]})
    needs = needs_for(required, [phone("raw:0412", [SYD], typed="0412")])
    assert needs.opt_out_phones == ()
    assert needs.uncarriable and "not a number" in needs.uncarriable[0]


def test_channels_the_merge_adds_start_without_consent() -> None:
    required = requirements({"d": [email("new@example.com", [SYD]), phone(LANDLINE, [SYD], out=True)]})
    needs = needs_for(required, [phone(MOBILE, [SYD])], added=[(EMAIL, "new@example.com"), (PHONE, LANDLINE)])
    assert needs.opt_out_phones == ()
    # A new channel has no transactional opt-out and the published API cannot set one.
    assert len(needs.uncarriable) == 1 and "transactional" in needs.uncarriable[0]
    # Adding what the primary already holds adds nothing (and judges nothing twice).
    held = needs_for(required, [phone(LANDLINE, [], out=True)], added=[(PHONE, LANDLINE)])
    assert held.uncarriable == () and held.opt_out_phones == ()


def test_mask_and_round_trip() -> None:
    assert mask(MOBILE) == "+61••••••678"
    assert mask("maria@example.com") == "m•••@example.com"
    assert mask("12") == "••"
    channel = phone(MOBILE, [SYD, BUR], out=True, typed="0412 345 678")
    assert ChannelConsent.from_dict(channel.to_dict()) == channel


# --- properties ---------------------------------------------------------------------------------------

IDENTITIES = [
    (PHONE, MOBILE),
    (PHONE, LANDLINE),
    (PHONE, "raw:0412"),
    (PHONE, "raw:"),
    (EMAIL, "m@example.com"),
]
LOCATIONS = [SYD, BUR, AKL]
channels = st.builds(
    lambda ident, opted, out: ChannelConsent(ident[0], ident[1], ident[1], frozenset(opted), out),
    st.sampled_from(IDENTITIES),
    st.sets(st.sampled_from(LOCATIONS)),
    st.booleans(),
)
members = st.dictionaries(st.sampled_from("abcdef"), st.lists(channels, max_size=4), min_size=1, max_size=5)


def _apply(
    needs_opt_out: Iterable[str], primary: list[ChannelConsent], added: list[tuple[str, str]]
) -> list[ChannelConsent]:
    """The primary once the published API did what ``needs_for`` asked (Podium's opt_out clears a number)."""
    held = {c.identity for c in primary}
    out = [ChannelConsent(k, i, i, frozenset(), False) for k, i in added if i not in held]
    withdrawn = set(needs_opt_out)
    return [
        ChannelConsent(
            c.kind,
            c.identity,
            c.identifier,
            frozenset() if c.identity in withdrawn else c.opted_in,
            c.transactional_opt_out,
        )  # fmt: skip
        for c in primary
    ] + out


@given(members, st.lists(channels, max_size=4), st.lists(st.sampled_from(IDENTITIES), max_size=2))
def test_needs_for_is_complete_what_it_does_not_refuse_it_fixes(
    ms: dict[str, list[ChannelConsent]], primary: list[ChannelConsent], added: list[tuple[str, str]]
) -> None:
    required = requirements(ms)
    needs = needs_for(required, primary, added)
    after = _apply(needs.opt_out_phones, primary, added)
    if not needs.uncarriable:
        assert violations(required, after) == []
    else:
        # It refuses only what really stays weaker after everything it can do.
        assert violations(required, after)


@given(members, st.sampled_from("xyz"), st.lists(channels, max_size=3))
def test_a_further_member_never_weakens_the_requirement(
    ms: dict[str, list[ChannelConsent]], uid: str, more: list[ChannelConsent]
) -> None:
    before = requirements(ms)
    after = requirements({**ms, uid: more})
    for key, r in before.items():
        assert after[key].allowed_opt_in <= r.allowed_opt_in
        assert after[key].transactional_opt_out >= r.transactional_opt_out
        assert set(r.held_by) <= set(after[key].held_by)


@given(members, st.data())
def test_the_strictest_survivor_passes_and_any_weakening_is_named(
    ms: dict[str, list[ChannelConsent]], data: st.DataObject
) -> None:
    required = requirements(ms)
    strictest = [
        ChannelConsent(r.kind, key, key, r.allowed_opt_in, r.transactional_opt_out)
        for key, r in required.items()
    ]
    assert violations(required, strictest) == []
    if not strictest:
        return
    i = data.draw(st.integers(0, len(strictest) - 1))
    c = strictest[i]
    extra = data.draw(st.sampled_from(LOCATIONS).filter(lambda loc: loc not in c.opted_in))
    weaker = ChannelConsent(c.kind, c.identity, c.identifier, c.opted_in | {extra}, False)
    problems = violations(required, [*strictest[:i], weaker, *strictest[i + 1 :]])
    assert problems and all(mask(c.identity) in p for p in problems)
    assert all(c.identity not in p or len(c.identity) <= 4 for p in problems)


@given(members, members)
def test_stricter_is_at_least_as_strict_as_both_sides(
    a: dict[str, list[ChannelConsent]], b: dict[str, list[ChannelConsent]]
) -> None:
    ra, rb = requirements(a), requirements(b)
    both = stricter(ra, rb)
    for side in (ra, rb):
        for key, r in side.items():
            assert both[key].allowed_opt_in <= r.allowed_opt_in
            assert both[key].transactional_opt_out >= r.transactional_opt_out


def test_requirement_is_a_plain_value() -> None:
    r = Requirement(PHONE, MOBILE, frozenset({SYD}), True, ("a",), ("a",))
    assert r == Requirement(PHONE, MOBILE, frozenset({SYD}), True, ("a",), ("a",))
