"""The one place that chooses the ``{identifier}`` by which the client addresses a contact.

Podium's published API has no contact-uid route: ``/v4/contacts/{identifier}`` takes a conversation
uid, an email, or a phone in E.164. A phone or an email may be held by several contacts — the very
duplicates this product exists for — and which of them Podium would pick is unpublished. So:

1. a conversation uid the contact holds (unique to one contact);
2. else an email that no other contact holds;
3. else a phone, spelled in E.164 exactly as the contact holds it, that no other contact holds (as E.164)
   — holding the exact E.164 string makes it reach this contact whether Podium matches numbers exactly
   or by number;
4. else nothing: the contact cannot be addressed without risking another (UnaddressableContact).

Who else holds an email or number is the caller's knowledge (the product's index of the whole
organization), passed in as ``is_shared``. On tenants with a Part 2 capability the contact uid itself is
accepted (``uid_addressing``), which the published flow never relies on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from podium_client.errors import UnaddressableContact
from podium_client.types import Contact


def identifier_for(
    contact: Contact,
    *,
    is_shared: Callable[[str], bool],
    phone_e164: Mapping[str, str | None],
    normalize_email: Callable[[str], str] = str.lower,
    avoid_conversations: frozenset[str] = frozenset(),
    uid_addressing: bool = False,
) -> str:
    """The identifier that reaches ``contact`` and no other contact; raises UnaddressableContact.

    ``is_shared(key)`` says whether another contact holds that natural key (an E.164 number or a
    normalized email). ``phone_e164`` maps each phone of the contact, as typed, to its E.164 (None when
    it does not parse). ``avoid_conversations`` names conversations being moved away from the contact,
    which must not be used to reach it.
    """
    if uid_addressing:
        return contact.uid
    for conversation in contact.conversation_uids:
        if conversation not in avoid_conversations:
            return conversation
    for email in contact.emails:
        if email.strip() and not is_shared(normalize_email(email)):
            return email
    for phone in contact.phones:
        e164 = phone_e164.get(phone)
        if e164 and phone == e164 and not is_shared(e164):
            return phone
    raise UnaddressableContact(
        f"contact {contact.uid} has no conversation and no phone or email that only it holds; "
        "Podium's published API cannot address it without risking another contact",
        uid=contact.uid,
    )
