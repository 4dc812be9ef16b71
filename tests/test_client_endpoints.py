"""Every call of the contract through the client, against the emulator over real HTTP.

Part 1 (what every tenant serves) on an emulator serving only the published API; Part 2 (merge,
restore, soft-delete) on one started with the capabilities, and refused by the client before anything
is sent when the tenant was not declared to have them.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from podium_client import (
    Address,
    CapabilityMissing,
    ConflictError,
    InvalidCursorError,
    InvalidDuplicateError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    PodiumClient,
    UnprocessableError,
    consent_flags,
)
from podium_client.corpus import AUCKLAND, BURLEIGH, ORGANIZATION_UID, POPUP, SYDNEY
from podium_client.emulator import EmulatorServer
from tests.fixtures_emulator import empty_state, make_contact

Factory = Callable[..., EmulatorServer]
ClientFactory = Callable[..., PodiumClient]
ALL_CAPABILITIES = ("merge", "restore", "soft-delete")
EARLY = datetime(2025, 1, 1, 9, 0, tzinfo=UTC)

MARIA_CONVERSATIONS = ("c1000000-0000-4000-8000-000000000001", "c1000000-0000-4000-8000-000000000002")
SECOND_CONVERSATION = "c1000000-0000-4000-8000-000000000003"


def _org(capabilities: tuple[str, ...] = ()) -> Any:
    """Maria typed three ways in Sydney (one also in Auckland), and an email-only contact in Burleigh."""
    state = empty_state(capabilities=capabilities or None)
    state.add_contact(make_contact("a0000000-0000-4000-8000-000000000001", name="Maria Garcia",
                                   phones=["0412 345 678"], emails=["maria@example.com"], tags=["vip"],
                                   attributes=[("birthday", "1990-01-01")], conversations=MARIA_CONVERSATIONS,
                                   address={"addressLine1": "1 George St", "city": "Sydney"}))  # fmt: skip
    state.add_contact(make_contact("a0000000-0000-4000-8000-000000000002", name="GARCIA, Maria",
                                   phones=["+61412345678"], tags=["newsletter"], marketing_opted_in=False,
                                   conversations=[SECOND_CONVERSATION]))  # fmt: skip
    state.add_contact(make_contact("a0000000-0000-4000-8000-000000000003", name="Mrs Maria Garcia",
                                   locations=[SYDNEY, AUCKLAND], phones=["(04) 1234-5678"], conversations=0))  # fmt: skip
    state.add_contact(make_contact("a0000000-0000-4000-8000-000000000004", name="Solo Email", locations=[BURLEIGH],
                                   phones=[], emails=["solo@example.com"], conversations=0))  # fmt: skip
    return state


MARIA, SECOND, THIRD, SOLO = (f"a0000000-0000-4000-8000-00000000000{i}" for i in range(1, 5))


@pytest.fixture
def org(emulator_factory: Factory) -> EmulatorServer:
    return emulator_factory(_org())


@pytest.fixture
def client(org: EmulatorServer, podium_factory: ClientFactory) -> PodiumClient:
    return podium_factory(org)


@pytest.fixture
def caps(emulator_factory: Factory) -> EmulatorServer:
    return emulator_factory(_org(ALL_CAPABILITIES))


@pytest.fixture
def caps_client(caps: EmulatorServer, podium_factory: ClientFactory) -> PodiumClient:
    return podium_factory(caps, capabilities=ALL_CAPABILITIES)


# --- locations ---------------------------------------------------------------------------------------


def test_locations_are_paged_and_carry_their_region(client: PodiumClient, org: EmulatorServer) -> None:
    assert [(loc.uid, loc.name, loc.country) for loc in client.list_locations()] == [
        (SYDNEY, "Sydney CBD", "AU"), (BURLEIGH, "Burleigh Heads", "AU"), (AUCKLAND, "Auckland", "NZ"),
        (POPUP, "Pop-up Van", None),
    ]  # fmt: skip
    first = client.list_locations_page(limit=3)
    assert len(first) == 3 and first.next_cursor
    rest = client.list_locations_page(cursor=first.next_cursor)
    assert [loc.uid for loc in rest] == [POPUP] and rest.next_cursor is None
    popup = client.get_location(POPUP)
    assert popup.country is None and popup.display_name == "Podium Demo Pop-up"
    assert popup.organization_uid == ORGANIZATION_UID and not popup.archived
    assert list(client.list_locations_page(updated_after=datetime(2099, 1, 1, tzinfo=UTC))) == []
    with pytest.raises(NotFoundError):
        client.get_location("00000000-0000-4000-8000-00000000dead")


# --- reading contacts --------------------------------------------------------------------------------


def test_contacts_are_listed_organization_wide_page_by_page(
    client: PodiumClient, org: EmulatorServer
) -> None:
    pages = list(client.iter_contact_pages(limit=3))
    assert [len(p) for p in pages] == [3, 1]
    assert pages[0].next_cursor and pages[1].next_cursor is None
    assert [c.uid for p in pages for c in p] == [MARIA, SECOND, THIRD, SOLO]
    assert all(p.request_id and p.request_id.startswith("req_") and p.rejected == [] for p in pages)
    assert all(c.request_id == p.request_id for p in pages for c in p)
    resumed = list(client.iter_contact_pages(limit=3, cursor=pages[0].next_cursor))
    assert [c.uid for p in resumed for c in p] == [SOLO]
    assert [c.uid for c in client.iter_contacts()] == [MARIA, SECOND, THIRD, SOLO]
    third = pages[0][2]
    assert third.location_uids == (SYDNEY, AUCKLAND) and third.location_uid == SYDNEY


def test_a_page_size_podium_refuses_is_refused_before_calling(
    client: PodiumClient, org: EmulatorServer
) -> None:
    for limit in (0, 101):
        with pytest.raises(ValueError):
            client.list_contacts_page(limit=limit)
        with pytest.raises(ValueError):
            client.list_locations_page(limit=limit)
    assert org.stats()["requests"] == 0 and client.requests_sent == 0


def test_updated_after_lists_contacts_changed_after_it(client: PodiumClient) -> None:
    assert list(client.iter_contacts(updated_after=datetime(2025, 6, 1, tzinfo=UTC))) == []
    client.update_contact("solo@example.com", {"name": "Solo Changed"})
    changed = list(client.iter_contacts(updated_after=datetime(2025, 6, 1, tzinfo=UTC)))
    assert [(c.uid, c.name) for c in changed] == [(SOLO, "Solo Changed")]
    assert changed[0].updated_at is not None and changed[0].updated_at > EARLY


def test_a_stale_cursor_is_invalid_cursor(client: PodiumClient, org: EmulatorServer) -> None:
    first = client.list_contacts_page(limit=2)
    org.state.invalidate_cursors()
    with pytest.raises(InvalidCursorError) as info:
        client.list_contacts_page(cursor=first.next_cursor)
    assert (info.value.http_status, info.value.code) == (400, "invalid_cursor")


def test_a_contact_is_read_by_conversation_email_or_e164_phone_never_by_its_uid(
    client: PodiumClient, org: EmulatorServer
) -> None:
    assert client.get_contact(MARIA_CONVERSATIONS[1]).uid == MARIA
    assert client.get_contact("MARIA@Example.com").uid == MARIA
    assert client.get_contact("solo@example.com").uid == SOLO
    maria = client.get_contact(SECOND_CONVERSATION)
    assert maria.uid == SECOND and maria.conversation_uids == (SECOND_CONVERSATION,)
    # The published API has no contact-uid route: a uid reaches nobody.
    with pytest.raises(NotFoundError) as info:
        client.get_contact(MARIA)
    assert (info.value.http_status, info.value.code) == (404, "resource_not_found")
    assert info.value.request_id and info.value.request_id.startswith("req_")
    with pytest.raises(ValueError):
        client.get_contact("")
    assert org.stats()["ambiguous_identifier_uses"] == 0


# --- writing contacts --------------------------------------------------------------------------------


def test_create_answers_an_identifier_that_reads_the_contact_back(
    client: PodiumClient, org: EmulatorServer
) -> None:
    identifier = client.create_contact(
        "José Núñez", [BURLEIGH], phone_number="+61400111222", email="jose@example.com",
        address=Address("9 Gold Coast Hwy", city="Burleigh Heads"),
    )  # fmt: skip
    assert identifier is not None
    created = client.get_contact(identifier)
    assert (created.name, created.location_uids) == ("José Núñez", (BURLEIGH,))
    assert created.phones == ("+61400111222",) and created.emails == ("jose@example.com",)
    assert created.address == Address("9 Gold Coast Hwy", city="Burleigh Heads")
    # A channel Podium adds is opted in for marketing nowhere: the product never assumes consent.
    assert consent_flags(created).marketing_opt_out is True
    assert client.request_counts["POST /v4/contacts"] == 1


def test_create_is_an_upsert_on_a_matching_email(client: PodiumClient, org: EmulatorServer) -> None:
    before = len(org.state)
    identifier = client.create_contact("Solo Renamed", [SYDNEY], email="SOLO@example.com")
    assert len(org.state) == before
    solo = client.get_contact(identifier or "")
    assert solo.uid == SOLO and solo.name == "Solo Renamed" and solo.location_uids == (BURLEIGH, SYDNEY)


def test_create_with_a_bad_value_is_invalid_request_naming_the_field(client: PodiumClient) -> None:
    with pytest.raises(InvalidRequestError) as info:
        client.create_contact("X", [SYDNEY], phone_number="0400 111 222")
    assert info.value.code == "invalid_request_values" and info.value.message.startswith("phoneNumber")


def test_update_is_202_then_read_back(client: PodiumClient, org: EmulatorServer) -> None:
    before = client.get_contact("solo@example.com")
    answered = client.update_contact(
        "solo@example.com",
        {"name": "Solo Person", "address": Address("2 Pitt St", city="Sydney"), "locations": [BURLEIGH, SYDNEY],
         "phoneNumber": "+61400999888"},
    )  # fmt: skip
    assert answered == "solo@example.com"
    after = client.get_contact("solo@example.com")
    assert after.name == "Solo Person" and after.location_uids == (BURLEIGH, SYDNEY)
    assert after.address == Address("2 Pitt St", city="Sydney") and after.phones == ("+61400999888",)
    assert after.created_at == before.created_at
    assert (
        after.updated_at is not None
        and before.updated_at is not None
        and after.updated_at > before.updated_at
    )


def test_update_refuses_fields_podium_does_not_accept_without_calling(
    client: PodiumClient, org: EmulatorServer
) -> None:
    for fields in ({"tags": ["vip"]}, {"uid": MARIA}, {"marketingOptOut": True}, {}):
        with pytest.raises(ValueError):
            client.update_contact("solo@example.com", fields)
    assert org.stats()["requests"] == 0


def test_update_of_nobody_is_not_found(client: PodiumClient) -> None:
    with pytest.raises(NotFoundError):
        client.update_contact("nobody@example.com", {"name": "x"})


def test_delete_removes_the_contact(client: PodiumClient, org: EmulatorServer) -> None:
    client.delete_contact("solo@example.com")
    with pytest.raises(NotFoundError):
        client.get_contact("solo@example.com")
    assert SOLO not in [c.uid for c in client.iter_contacts()]
    assert [d["uid"] for d in org.state.deleted()] == [SOLO]
    assert org.stats()["purge_attempts"] == 0


def test_opt_out_withdraws_the_numbers_marketing_consent_wherever_it_is_held(client: PodiumClient) -> None:
    assert consent_flags(client.get_contact(MARIA_CONVERSATIONS[0])).marketing_opt_out is False
    answered = client.opt_out_phone("+61412345678")
    # Podium answers a contact holding that number (one of the three spellings of Maria's).
    assert answered is not None and answered.uid in {MARIA, SECOND, THIRD}
    for conversation in (MARIA_CONVERSATIONS[0], SECOND_CONVERSATION):
        contact = client.get_contact(conversation)
        phones = [c for c in contact.channels if c.type == "PHONE"]
        assert phones and all(c.marketing_opted_in_location_uids == () for c in phones)
        assert consent_flags(contact).marketing_opt_out is True


# --- tags and attributes -------------------------------------------------------------------------------


def test_ensure_tag_finds_the_organizations_tag_in_any_case_and_creates_a_missing_one_once(
    client: PodiumClient, org: EmulatorServer
) -> None:
    vip = next(t for t in client.list_tags() if t.label == "vip")
    assert client.ensure_tag("vip") == vip
    # Podium holds one tag per label whatever its case: asking for VIP must not try to create another.
    assert client.ensure_tag("VIP") == vip
    assert client.request_counts["POST /v4/contact_tags"] == 0
    made = client.ensure_tag("walk-in", "came in off the street")
    assert made.uid and made.label == "walk-in" and made.description == "came in off the street"
    assert client.ensure_tag("walk-in") == made
    assert client.request_counts["POST /v4/contact_tags"] == 1
    with pytest.raises(InvalidRequestError):
        client.create_tag("Walk-In")


def test_attach_a_tag_and_set_attributes(client: PodiumClient) -> None:
    tag = client.ensure_tag("newsletter")
    client.attach_tag("solo@example.com", tag.uid or "")
    birthday = next(a for a in client.list_attribute_definitions() if a.label == "birthday")
    client.set_attribute("solo@example.com", birthday.uid, "1991-02-02")
    solo = client.get_contact("solo@example.com")
    assert solo.tag_labels == ("newsletter",)
    assert [(a.uid, a.label, a.text) for a in solo.attributes] == [(birthday.uid, "birthday", "1991-02-02")]
    client.set_attribute("solo@example.com", birthday.uid, "1992-03-03", existing=True)
    assert client.get_contact("solo@example.com").attributes[0].value == "1992-03-03"
    assert client.request_counts["PATCH /v4/contacts/{identifier}/attributes/{uid}"] == 1
    with pytest.raises(NotFoundError):
        client.set_attribute(MARIA_CONVERSATIONS[0], "00000000-0000-4000-8000-00000000dead", "x")


# --- webhooks ---------------------------------------------------------------------------------------------


def test_webhooks_are_registered_listed_and_removed(client: PodiumClient) -> None:
    hook = client.create_webhook("https://dedup.example.com/hooks/podium", ["contact.updated", "contact.deleted"],
                                 "s3cret-value", organization_uid=ORGANIZATION_UID)  # fmt: skip
    assert hook.uid and hook.has_secret and not hook.disabled
    assert (
        hook.event_types == ("contact.updated", "contact.deleted")
        and hook.organization_uid == ORGANIZATION_UID
    )
    assert "s3cret-value" not in repr(hook)
    assert client.list_webhooks() == [hook]
    located = client.create_webhook(
        "https://dedup.example.com/hooks/2", ["contact.created"], "s", location_uid=SYDNEY
    )
    assert located.location_uid == SYDNEY
    client.delete_webhook(hook.uid)
    assert client.list_webhooks() == [located]
    for kwargs in ({}, {"organization_uid": ORGANIZATION_UID, "location_uid": SYDNEY}):
        with pytest.raises(ValueError):
            client.create_webhook("https://x.example.com/", ["contact.created"], "s", **kwargs)


# --- headers, scopes, what was sent ------------------------------------------------------------------------


def test_podium_version_is_sent_on_every_call(
    org: EmulatorServer, client: PodiumClient, podium_factory: ClientFactory
) -> None:
    client.list_locations()
    client.get_contact("solo@example.com")
    other = podium_factory(org, api_version="2099.01.01")
    other.list_locations()
    assert org.stats()["podium_versions"] == {"2021.04.01": 2, "2099.01.01": 1}


def test_request_counts_are_kept_by_route(client: PodiumClient) -> None:
    client.get_contact("solo@example.com")
    client.get_contact(MARIA_CONVERSATIONS[0])
    client.update_contact("solo@example.com", {"name": "S"})
    assert client.request_counts == {"GET /v4/contacts/{identifier}": 2, "PATCH /v4/contacts/{identifier}": 1}
    assert client.requests_sent == 3


def test_a_missing_scope_is_permission_denied(client: PodiumClient, org: EmulatorServer) -> None:
    org.configure(scopes=["read_contacts"])
    with pytest.raises(PermissionDeniedError) as info:
        client.list_locations()
    assert (info.value.http_status, info.value.code) == (403, "unauthorized")
    assert "read_locations" in info.value.message
    with pytest.raises(PermissionDeniedError):
        client.update_contact("solo@example.com", {"name": "x"})
    assert client.get_contact("solo@example.com").uid == SOLO


def test_the_client_offers_no_purge(client: PodiumClient, org: EmulatorServer) -> None:
    public = {
        name for name, _ in inspect.getmembers(PodiumClient, inspect.isfunction) if not name.startswith("_")
    }
    assert not {name for name in public if "purge" in name or "hard" in name}
    assert list(inspect.signature(PodiumClient.delete_contact).parameters) == ["self", "identifier"]
    client.delete_contact("solo@example.com")
    assert org.stats()["purge_attempts"] == 0


# --- Part 2: capabilities --------------------------------------------------------------------------------------


def test_capability_calls_are_refused_before_sending_without_the_capability(
    client: PodiumClient, org: EmulatorServer
) -> None:
    assert not client.has("merge")
    with pytest.raises(CapabilityMissing, match="merge"):
        client.merge(MARIA, [SECOND])
    with pytest.raises(CapabilityMissing, match="restore"):
        client.restore_contact(SECOND)
    with pytest.raises(CapabilityMissing, match="soft-delete"):
        client.list_contacts_page(include_deleted=True)
    assert org.stats()["requests"] == 0
    with pytest.raises(ValueError, match="unknown capabilities"):
        PodiumClient(org.url, access_token=org.token, capabilities=["time-travel"])


def test_merge_keeps_the_primarys_own_fields_and_moves_conversations(
    caps_client: PodiumClient, caps: EmulatorServer
) -> None:
    before = caps_client.get_contact(MARIA)
    primary = caps_client.merge(MARIA, [SECOND])
    assert primary.uid == MARIA and not primary.is_hidden
    assert primary.conversation_uids == (*MARIA_CONVERSATIONS, SECOND_CONVERSATION)
    # Only the primary's own fields: the duplicate's tag did not come along.
    assert primary.tag_labels == ("vip",) and primary.channels == before.channels
    dup = caps_client.get_contact(SECOND)
    assert dup.merged_into_uid == MARIA and dup.is_hidden and dup.conversation_uids == ()
    assert SECOND not in [c.uid for c in caps_client.iter_contacts()]
    hidden = [c for p in caps_client.iter_contact_pages(include_deleted=True) for c in p if c.is_hidden]
    assert [c.uid for c in hidden] == [SECOND]
    restored = caps_client.restore_contact(SECOND)
    assert not restored.is_hidden and restored.merged_into_uid is None
    assert caps.stats()["merges"] == 1 and caps.stats()["restores"] == 1


def test_soft_delete_hides_and_restore_brings_back(caps_client: PodiumClient) -> None:
    caps_client.delete_contact("solo@example.com")
    gone = caps_client.get_contact(SOLO)
    assert gone.deleted_at is not None and gone.is_hidden
    assert SOLO in [c.uid for c in next(caps_client.iter_contact_pages(include_deleted=True))]
    assert caps_client.restore_contact(SOLO).deleted_at is None


@pytest.mark.parametrize("duplicates", [["00000000-0000-4000-8000-00000000dead"], [MARIA], [SECOND, "00000000-0000-4000-8000-00000000dead"]],
                         ids=["unknown", "the-primary", "one-unknown"])  # fmt: skip
def test_merge_of_an_invalid_duplicate(
    caps_client: PodiumClient, caps: EmulatorServer, duplicates: list[str]
) -> None:
    with pytest.raises(InvalidDuplicateError) as info:
        caps_client.merge(MARIA, duplicates)
    assert (info.value.http_status, info.value.code) == (400, "invalid_duplicate_uid")
    assert isinstance(info.value, InvalidRequestError)
    assert caps.stats()["merges"] == 0 and not caps.state.get(SECOND)["deletedAt"]
    with pytest.raises(ValueError):
        caps_client.merge(MARIA, [])


def test_merge_into_an_unknown_primary_is_not_found(caps_client: PodiumClient) -> None:
    with pytest.raises(NotFoundError):
        caps_client.merge("00000000-0000-4000-8000-00000000dead", [SECOND])


def test_concurrent_merges_touching_a_contact_conflict(
    caps: EmulatorServer, caps_client: PodiumClient
) -> None:
    caps.latency_ms = 400
    results: dict[str, object] = {}
    thread = threading.Thread(target=lambda: results.update(first=caps_client.merge(MARIA, [SECOND])))
    thread.start()
    deadline = time.monotonic() + 2
    while not caps.state.in_flight():
        assert time.monotonic() < deadline, "the first merge never went in flight"
        time.sleep(0.005)
    with pytest.raises(ConflictError) as info:
        caps_client.merge(THIRD, [SECOND])
    thread.join()
    assert (info.value.http_status, info.value.code) == (409, "merge_in_progress")
    assert caps.state.get(SECOND)["mergedIntoUid"] == MARIA and "first" in results


def test_cross_location_merge_is_blocked_only_when_the_tenant_blocks_it(
    caps: EmulatorServer, caps_client: PodiumClient
) -> None:
    caps.block_cross_location = True
    with pytest.raises(UnprocessableError) as info:
        caps_client.merge(MARIA, [THIRD])
    assert (info.value.http_status, info.value.code) == (422, "cross_location_merge_blocked")
    caps.block_cross_location = False
    caps_client.merge(MARIA, [THIRD])
    assert caps.state.get(THIRD)["mergedIntoUid"] == MARIA
