"""The product's three opt-outs, derived from Podium's per-channel consent exactly as the contract says.

``spec/podium-api.md``: *marketingOptOut* — some channel of the contact is not opted in for marketing
at a location of the contact; *smsOptOut* — some PHONE channel has ``transactionalOptedOutAt``;
*emailOptOut* — some EMAIL channel has it. The oracle below restates those sentences over sets and is
checked against ``consent_flags`` on generated contacts read from the wire, plus the directions in which
the flags may only ever move (no change of consent toward "no" clears a flag).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from podium_client import ConsentFlags, Contact, PodiumClient, consent_flags
from podium_client.corpus import AUCKLAND, BURLEIGH, SYDNEY
from podium_client.emulator import EmulatorServer
from tests.fixtures_emulator import empty_state, make_contact

LOCATIONS = ("11111111-0000-4000-8000-000000000001", "11111111-0000-4000-8000-000000000002",
             "11111111-0000-4000-8000-000000000003")  # fmt: skip
ELSEWHERE = "11111111-0000-4000-8000-0000000000ff"  # a location of the organization the contact is not in
STAMP = "2025-03-01T10:00:00Z"


def oracle(contact: dict[str, Any]) -> dict[str, bool]:
    """The contract's three sentences, over the wire object."""
    locations = {loc["uid"] for loc in contact.get("locations") or []}
    channels = contact.get("channels") or []

    def not_opted_in_somewhere(channel: dict[str, Any]) -> bool:
        opted = set(channel.get("marketingOptedInLocationUids") or [])
        if not locations:
            # A contact in no location: only an empty opt-in list counts as "no" (never assume consent).
            return not opted
        return not locations <= opted

    def transactional_no(kind: str) -> bool:
        return any(
            (c.get("type") or "").upper() == kind and c.get("transactionalOptedOutAt") for c in channels
        )

    return {
        "marketingOptOut": any(not_opted_in_somewhere(c) for c in channels),
        "smsOptOut": transactional_no("PHONE"),
        "emailOptOut": transactional_no("EMAIL"),
    }


_channel = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["PHONE", "EMAIL", "phone", "email", "WHATSAPP", None]),
        "identifier": st.sampled_from(["+61412345678", "0412 345 678", "maria@example.com"]),
        "label": st.none(),
        "marketingOptedInLocationUids": st.lists(
            st.sampled_from([*LOCATIONS, ELSEWHERE]), unique=True, max_size=4
        ),
        "transactionalOptedOutAt": st.sampled_from([None, STAMP]),
        "createdAt": st.just(STAMP),
        "updatedAt": st.just(STAMP),
    }
)
_contact = st.fixed_dictionaries(
    {
        "uid": st.just("22222222-0000-4000-8000-000000000001"),
        "locations": st.lists(st.sampled_from(LOCATIONS), unique=True, max_size=3).map(
            lambda uids: [{"uid": u} for u in uids]
        ),
        "channels": st.lists(_channel, max_size=4),
    }
)


def flags(contact: dict[str, Any]) -> dict[str, bool]:
    return consent_flags(Contact.from_wire(contact)).to_wire()


@settings(max_examples=500, deadline=None)
@given(contact=_contact)
def test_the_flags_are_the_contracts_sentences(contact: dict[str, Any]) -> None:
    assert flags(contact) == oracle(contact)


@settings(max_examples=300, deadline=None)
@given(contact=_contact, extra=_channel)
def test_another_channel_never_clears_a_flag(contact: dict[str, Any], extra: dict[str, Any]) -> None:
    before = flags(contact)
    after = flags({**contact, "channels": [*contact["channels"], extra]})
    assert all(after[name] for name, up in before.items() if up)


@settings(max_examples=300, deadline=None)
@given(contact=_contact, which=st.integers(min_value=0), drop=st.sampled_from(LOCATIONS))
def test_withdrawing_consent_never_clears_a_flag(contact: dict[str, Any], which: int, drop: str) -> None:
    if not contact["channels"]:
        return
    before = flags(contact)
    channels = [dict(c) for c in contact["channels"]]
    target = channels[which % len(channels)]
    target["marketingOptedInLocationUids"] = [u for u in target["marketingOptedInLocationUids"] if u != drop]
    target["transactionalOptedOutAt"] = STAMP
    after = flags({**contact, "channels": channels})
    assert all(after[name] for name, up in before.items() if up)
    # The channel now refuses transactional messages: its kind's flag is up.
    kind = (target["type"] or "").upper()
    if kind in ("PHONE", "EMAIL"):
        assert after["smsOptOut" if kind == "PHONE" else "emailOptOut"]


@settings(max_examples=200, deadline=None)
@given(contact=_contact)
def test_consent_at_every_location_of_the_contact_clears_every_flag(contact: dict[str, Any]) -> None:
    own = [loc["uid"] for loc in contact["locations"]] or [ELSEWHERE]
    channels = [
        {**c, "marketingOptedInLocationUids": own, "transactionalOptedOutAt": None}
        for c in contact["channels"]
    ]
    assert flags({**contact, "channels": channels}) == ConsentFlags().to_wire()


def _contact_of(*channels: dict[str, Any], locations: tuple[str, ...] = LOCATIONS[:2]) -> dict[str, Any]:
    return {"uid": "22222222-0000-4000-8000-000000000001", "locations": [{"uid": u} for u in locations],
            "channels": list(channels)}  # fmt: skip


def _ch(kind: str | None, opted: list[str], out: str | None = None) -> dict[str, Any]:
    return {
        "type": kind,
        "identifier": "x",
        "marketingOptedInLocationUids": opted,
        "transactionalOptedOutAt": out,
    }


def test_worked_examples() -> None:
    both, one = list(LOCATIONS[:2]), [LOCATIONS[0]]
    assert flags(_contact_of()) == {"marketingOptOut": False, "smsOptOut": False, "emailOptOut": False}
    assert flags(_contact_of(_ch("PHONE", both))) == {
        "marketingOptOut": False,
        "smsOptOut": False,
        "emailOptOut": False,
    }
    # Opted in at one of its two locations: not everywhere it is a customer.
    assert flags(_contact_of(_ch("PHONE", one)))["marketingOptOut"] is True
    # An opt-in at a location the contact is not in does not count.
    assert (
        flags(_contact_of(_ch("EMAIL", [ELSEWHERE, LOCATIONS[0]]), locations=LOCATIONS[:1]))[
            "marketingOptOut"
        ]
        is False
    )
    assert flags(_contact_of(_ch("EMAIL", [ELSEWHERE]), locations=LOCATIONS[:1]))["marketingOptOut"] is True
    assert flags(_contact_of(_ch("phone", both, STAMP))) == {
        "marketingOptOut": False,
        "smsOptOut": True,
        "emailOptOut": False,
    }
    assert flags(_contact_of(_ch("EMAIL", both, STAMP))) == {
        "marketingOptOut": False,
        "smsOptOut": False,
        "emailOptOut": True,
    }
    # A channel of another kind counts for marketing only.
    assert flags(_contact_of(_ch("WHATSAPP", [], STAMP))) == {
        "marketingOptOut": True,
        "smsOptOut": False,
        "emailOptOut": False,
    }
    # In no location: an empty opt-in list is a "no", an opt-in anywhere is not.
    assert flags(_contact_of(_ch("PHONE", []), locations=()))["marketingOptOut"] is True
    assert flags(_contact_of(_ch("PHONE", [ELSEWHERE]), locations=()))["marketingOptOut"] is False


def test_flags_follow_consent_changes_made_through_podium(
    emulator_factory: Callable[..., EmulatorServer], podium_factory: Callable[..., PodiumClient]
) -> None:
    state = empty_state()
    maria = state.add_contact(make_contact(locations=[SYDNEY, BURLEIGH], phones=["0412 345 678"],
                                           emails=["maria@example.com"], conversations=["c2000000-0000-4000-8000-000000000001"]))  # fmt: skip
    state.add_contact(
        make_contact(locations=[AUCKLAND], phones=["+61412345678"], emails=["other@example.com"])
    )
    server = emulator_factory(state)
    client = podium_factory(server)
    conversation = maria["conversations"][0]["uid"]
    assert consent_flags(client.get_contact(conversation)) == ConsentFlags()
    # campaigns/opt_out withdraws the number's marketing consent, for every contact holding it.
    client.opt_out_phone("+61412345678")
    assert consent_flags(client.get_contact(conversation)) == ConsentFlags(marketing_opt_out=True)
    assert consent_flags(client.get_contact("other@example.com")).marketing_opt_out is True
    # A transactional opt-out of the email, made in Podium itself.
    server.state.podium_edit(maria["uid"], {"transactional_opt_out": {"identifier": "maria@example.com"}})
    assert consent_flags(client.get_contact(conversation)) == ConsentFlags(True, False, True)
    assert ConsentFlags(True, False, True).to_wire() == {
        "marketingOptOut": True,
        "smsOptOut": False,
        "emailOptOut": True,
    }
