"""The one function that chooses the ``{identifier}`` a contact is addressed by.

A conversation uid first (unique to one contact); else an email no other contact holds; else a phone,
held in E.164 exactly, that no other contact holds; else ``UnaddressableContact``. Never a phone or
email another contact holds: Podium does not say which of them it would act on. Checked as pure rules,
as a property over generated contacts, and over the wire: every identifier chosen for the demo corpus
reaches its contact and no other.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from podium_client import Channel, Contact, PodiumClient, PodiumError, UnaddressableContact, identifier_for
from podium_client.corpus import LOCATIONS
from podium_client.emulator import EmulatorServer

UID = "33333333-0000-4000-8000-000000000001"
CONV_A, CONV_B = "c3000000-0000-4000-8000-000000000001", "c3000000-0000-4000-8000-000000000002"


def _e164(phone: str, region: str = "AU") -> str | None:
    try:
        number = phonenumbers.parse(phone, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def choose(contact: Contact, shared: set[str] | frozenset[str] = frozenset(), **kwargs: Any) -> str:
    return identifier_for(
        contact, is_shared=shared.__contains__, phone_e164={p: _e164(p) for p in contact.phones}, **kwargs
    )


def contact(
    *, conversations: tuple[str, ...] = (), emails: tuple[str, ...] = (), phones: tuple[str, ...] = ()
) -> Contact:
    channels = tuple(Channel.phone(p) for p in phones) + tuple(Channel.email(e) for e in emails)
    return Contact(UID, "Maria", channels=channels, conversation_uids=conversations)


def test_a_conversation_comes_first() -> None:
    maria = contact(conversations=(CONV_A, CONV_B), emails=("maria@example.com",), phones=("+61412345678",))
    assert choose(maria) == CONV_A
    # Conversations being moved away from the contact do not reach it for long: the next one, or an email.
    assert choose(maria, avoid_conversations=frozenset({CONV_A})) == CONV_B
    assert choose(maria, avoid_conversations=frozenset({CONV_A, CONV_B})) == "maria@example.com"


def test_an_email_only_it_holds_then_a_phone_only_it_holds() -> None:
    maria = contact(emails=("Maria@Example.com", "work@example.com"), phones=("+61412345678",))
    assert choose(maria) == "Maria@Example.com"
    # Sharing is judged on the normalized email.
    assert choose(maria, {"maria@example.com"}) == "work@example.com"
    assert choose(maria, {"maria@example.com", "work@example.com"}) == "+61412345678"


def test_a_phone_is_used_only_in_e164_exactly_as_held() -> None:
    # Podium's identifiers are E.164: a national spelling is not one, even unshared.
    national = contact(phones=("0412 345 678",))
    with pytest.raises(UnaddressableContact):
        choose(national)
    spaced = contact(phones=("+61 412 345 678",))
    with pytest.raises(UnaddressableContact):
        choose(spaced)
    both = contact(phones=("0412 345 678", "+61412345678"))
    assert choose(both) == "+61412345678"


def test_never_a_shared_phone_or_email() -> None:
    maria = contact(emails=("maria@example.com",), phones=("+61412345678",))
    with pytest.raises(UnaddressableContact) as info:
        choose(maria, {"maria@example.com", "+61412345678"})
    err = info.value
    assert isinstance(err, PodiumError) and err.uid == UID
    assert "no conversation and no phone or email that only it holds" in err.message
    assert "maria" not in err.message and "412" not in err.message
    with pytest.raises(UnaddressableContact):
        choose(contact(emails=("  ",)))
    with pytest.raises(UnaddressableContact):
        choose(Contact(UID))


def test_a_capability_tenant_addresses_by_uid() -> None:
    assert choose(contact(conversations=(CONV_A,)), uid_addressing=True) == UID
    assert choose(Contact(UID), uid_addressing=True) == UID


_conversations = st.lists(
    st.sampled_from([CONV_A, CONV_B, "c3000000-0000-4000-8000-000000000003"]), unique=True, max_size=3
)
_emails = st.lists(
    st.sampled_from(["maria@example.com", "MARIA@example.com", "m.g@example.net", " "]), max_size=3
)
_phones = st.lists(st.sampled_from(["+61412345678", "0412 345 678", "+61 400 111 222", "+61400111222", "+64211234567", "12"]),
                   max_size=3)  # fmt: skip
_keys = ["maria@example.com", "m.g@example.net", "+61412345678", "+61400111222", "+64211234567"]


@settings(max_examples=500, deadline=None)
@given(conversations=_conversations, emails=_emails, phones=_phones,
       shared=st.sets(st.sampled_from(_keys)), avoided=st.sets(st.sampled_from([CONV_A, CONV_B])))  # fmt: skip
def test_the_choice_follows_the_order_and_never_reaches_another_contact(
    conversations: list[str], emails: list[str], phones: list[str], shared: set[str], avoided: set[str]
) -> None:
    c = Contact(
        UID,
        conversation_uids=tuple(conversations),
        email_addresses=tuple(emails),
        phone_numbers=tuple(phones),
    )
    usable_conversations = [u for u in conversations if u not in avoided]
    usable_emails = [e for e in c.emails if e.strip() and e.lower() not in shared]
    usable_phones = [p for p in c.phones if _e164(p) == p and p not in shared]
    try:
        chosen = choose(c, shared, avoid_conversations=frozenset(avoided))
    except UnaddressableContact:
        assert not (usable_conversations or usable_emails or usable_phones)
        return
    if usable_conversations:
        assert chosen == usable_conversations[0]
    elif usable_emails:
        assert chosen == usable_emails[0]
    else:
        assert chosen == usable_phones[0]
    assert chosen.lower() not in shared and chosen not in avoided


def test_every_identifier_chosen_for_the_demo_corpus_reaches_its_contact_alone(
    emulator: EmulatorServer, podium: PodiumClient
) -> None:
    contacts = list(podium.iter_contacts())
    region = {loc["uid"]: loc["addressDetails"]["country"] or "AU" for loc in LOCATIONS}

    def e164_map(c: Contact) -> dict[str, str | None]:
        return {p: _e164(p, region.get(c.location_uid or "", "AU")) for p in c.phones}

    holders: Counter[str] = Counter()
    for c in contacts:
        keys = {e.strip().lower() for e in c.emails if e.strip()} | {n for n in e164_map(c).values() if n}
        holders.update(keys)
    kinds: Counter[str] = Counter()
    for c in contacts:
        own = {e.strip().lower() for e in c.emails if e.strip()} | {n for n in e164_map(c).values() if n}

        # What another contact holds: a key held by more contacts than this one.
        def is_shared(key: str, own: set[str] = own) -> bool:
            return holders[key] > (1 if key in own else 0)

        # Twice per contact: as it is, and with its conversations being moved away (no conversation).
        for avoid in (frozenset(), frozenset(c.conversation_uids)):
            try:
                identifier = identifier_for(
                    c, is_shared=is_shared, phone_e164=e164_map(c), avoid_conversations=avoid
                )
            except UnaddressableContact:
                kinds["unaddressable"] += 1
                # Only when every email is shared and every phone is shared or not held in E.164.
                assert all(is_shared(e.strip().lower()) for e in c.emails if e.strip())
                assert all(is_shared(n) for p, n in e164_map(c).items() if n == p)
                continue
            kinds[
                "conversation"
                if identifier in c.conversation_uids
                else "email"
                if "@" in identifier
                else "phone"
            ] += 1
            assert podium.get_contact(identifier).uid == c.uid
    assert emulator.stats()["ambiguous_identifier_uses"] == 0
    # The corpus exercises every branch, duplicates sharing numbers and emails included.
    assert min(kinds["conversation"], kinds["email"], kinds["phone"], kinds["unaddressable"]) > 0, kinds
