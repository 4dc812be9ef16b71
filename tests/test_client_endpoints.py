"""Every endpoint of the contract, through the client, against the emulator over real HTTP."""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import requests

from podium_client import (
    AuthenticationError,
    Channel,
    ConflictError,
    InvalidDuplicateError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    PodiumClient,
    UnprocessableError,
)
from podium_client.emulator import EmulatorServer
from tests.fixtures_emulator import empty_state, make_contact


@pytest.fixture
def org(emulator_factory: Callable[..., EmulatorServer]) -> EmulatorServer:
    """An emulator with a hand-made cluster: Maria typed three ways in Sydney, once in Auckland."""
    state = empty_state()
    state.add_contact(
        make_contact(
            "ct_0000001_aaaaaa",
            name="Maria Garcia",
            phones=["0412 345 678"],
            emails=["maria@example.com"],
            tags=["vip"],
            attributes=[("birthday", "1990-01-01")],
            conversation_count=3,
        )
    )
    state.add_contact(
        make_contact(
            "ct_0000002_bbbbbb",
            name="GARCIA, Maria",
            phones=["+61412345678"],
            tags=["newsletter"],
            marketing_opt_out=True,
            conversation_count=2,
            address="1 George St",
        )
    )
    state.add_contact(make_contact("ct_0000003_cccccc", name="Mrs Maria Garcia", phones=["(04) 1234-5678"]))
    state.add_contact(
        make_contact("ct_0000004_dddddd", location_uid="loc_auckland", phones=["+61 412 345 678"])
    )
    return emulator_factory(state)


@pytest.fixture
def client(org: EmulatorServer, podium_factory: Callable[..., PodiumClient]) -> PodiumClient:
    return podium_factory(org)


def test_list_locations(client: PodiumClient) -> None:
    locations = client.list_locations()
    assert [(loc.uid, loc.name, loc.country) for loc in locations] == [
        ("loc_sydney", "Sydney CBD", "AU"),
        ("loc_burleigh", "Burleigh Heads", "AU"),
        ("loc_auckland", "Auckland", "NZ"),
    ]


def test_iter_contacts_lists_a_location(client: PodiumClient) -> None:
    uids = [c.uid for c in client.iter_contacts("loc_sydney")]
    assert uids == ["ct_0000001_aaaaaa", "ct_0000002_bbbbbb", "ct_0000003_cccccc"]
    assert [c.uid for c in client.iter_contacts("loc_auckland")] == ["ct_0000004_dddddd"]
    assert list(client.iter_contacts("loc_burleigh")) == []


def test_pages_carry_cursor_and_request_id(client: PodiumClient) -> None:
    pages = list(client.iter_contact_pages("loc_sydney", page_size=2))
    assert [len(p) for p in pages] == [2, 1]
    assert pages[0].next_cursor and pages[1].next_cursor is None
    assert all(c.request_id and c.request_id.startswith("req_") for p in pages for c in p)
    resumed = list(client.iter_contact_pages("loc_sydney", page_size=2, cursor=pages[0].next_cursor))
    assert [c.uid for p in resumed for c in p] == ["ct_0000003_cccccc"]


def test_page_size_is_checked_before_calling(client: PodiumClient, org: EmulatorServer) -> None:
    with pytest.raises(ValueError):
        client.list_contacts_page("loc_sydney", page_size=101)
    assert org.stats()["requests"] == 0


def test_unknown_location_is_invalid_request(client: PodiumClient) -> None:
    with pytest.raises(InvalidRequestError) as info:
        client.list_contacts_page("loc_nowhere")
    assert info.value.code == "invalid_request" and info.value.http_status == 400
    assert not isinstance(info.value, InvalidDuplicateError)


def test_get_contact_and_not_found(client: PodiumClient) -> None:
    contact = client.get_contact("ct_0000002_bbbbbb")
    assert contact.name == "GARCIA, Maria" and contact.marketing_opt_out
    with pytest.raises(NotFoundError) as info:
        client.get_contact("ct_9999999_ffffff")
    err = info.value
    assert (err.http_status, err.code, err.uid) == (404, "contact_not_found", "ct_9999999_ffffff")
    assert err.request_id and err.request_id.startswith("req_")


def test_create_contact(client: PodiumClient, org: EmulatorServer) -> None:
    created = client.create_contact(
        "loc_burleigh",
        name="José Núñez",
        channels=[Channel.phone("0400 111 222"), Channel.email("jose@example.com")],
        tags=["walk-in"],
        sms_opt_out=True,
    )
    assert created.uid.startswith("ct_") and created.location_uid == "loc_burleigh"
    assert created.tags == ("walk-in",) and created.sms_opt_out and not created.marketing_opt_out
    assert created.created_at == created.updated_at and created.deleted_at is None
    assert org.state.get(created.uid) == created
    with pytest.raises(InvalidRequestError):
        client.create_contact("loc_nowhere", name="X")


def test_update_contact_patches_and_moves_updated_at(client: PodiumClient, org: EmulatorServer) -> None:
    before = client.get_contact("ct_0000001_aaaaaa")
    after = client.update_contact(
        "ct_0000001_aaaaaa",
        {
            "tags": ["vip", "newsletter"],
            "channels": [*before.channels, Channel.phone("+61 400 000 001")],
            "marketingOptOut": True,
            "address": "1 George St",
        },
    )
    assert after.tags == ("vip", "newsletter")
    assert after.phones == ("0412 345 678", "+61 400 000 001")
    assert after.marketing_opt_out and after.address == "1 George St"
    assert after.name == before.name and after.attributes == before.attributes
    assert after.updated_at > before.updated_at
    assert org.state.get("ct_0000001_aaaaaa") == after


def test_update_contact_refuses_unknown_fields_without_calling(
    client: PodiumClient, org: EmulatorServer
) -> None:
    with pytest.raises(ValueError):
        client.update_contact("ct_0000001_aaaaaa", {"deletedAt": None})
    assert org.stats()["requests"] == 0


def test_update_with_a_bad_value_is_invalid_request(client: PodiumClient) -> None:
    with pytest.raises(InvalidRequestError):
        client.update_contact("ct_0000001_aaaaaa", {"marketingOptOut": "yes"})
    with pytest.raises(NotFoundError):
        client.update_contact("ct_9999999_ffffff", {"name": "x"})


def test_delete_is_soft_and_restore_undoes_it(client: PodiumClient) -> None:
    client.delete_contact("ct_0000003_cccccc")
    assert "ct_0000003_cccccc" not in [c.uid for c in client.iter_contacts("loc_sydney")]
    with_deleted = [c.uid for c in client.iter_contacts("loc_sydney", include_deleted=True)]
    assert "ct_0000003_cccccc" in with_deleted
    deleted = client.get_contact("ct_0000003_cccccc")
    assert deleted.is_deleted and deleted.updated_at == deleted.deleted_at
    client.delete_contact("ct_0000003_cccccc")  # deleting twice is harmless
    restored = client.restore_contact("ct_0000003_cccccc")
    assert restored.deleted_at is None and restored.updated_at > deleted.updated_at
    assert "ct_0000003_cccccc" in [c.uid for c in client.iter_contacts("loc_sydney")]


def test_updated_since_lists_changed_contacts_only(client: PodiumClient) -> None:
    baseline = client.get_contact("ct_0000001_aaaaaa").updated_at + timedelta(seconds=1)
    assert list(client.iter_contacts("loc_sydney", updated_since=baseline)) == []
    changed = client.update_contact("ct_0000002_bbbbbb", {"tags": ["x"]})
    listed = list(client.iter_contacts("loc_sydney", updated_since=changed.updated_at))
    assert [c.uid for c in listed] == ["ct_0000002_bbbbbb"]


def test_merge_keeps_the_primarys_own_fields(client: PodiumClient, org: EmulatorServer) -> None:
    primary_before = client.get_contact("ct_0000001_aaaaaa")
    primary = client.merge("ct_0000001_aaaaaa", ["ct_0000002_bbbbbb", "ct_0000003_cccccc"])
    assert primary.uid == "ct_0000001_aaaaaa"
    # Podium drops what only the duplicates held: the opt-out, the tag, the address.
    assert primary.marketing_opt_out is False
    assert primary.tags == ("vip",) and primary.address is None
    assert primary.channels == primary_before.channels and primary.name == primary_before.name
    assert primary.conversation_count == 5
    assert primary.updated_at > primary_before.updated_at
    for uid in ("ct_0000002_bbbbbb", "ct_0000003_cccccc"):
        dup = client.get_contact(uid)
        assert dup.is_deleted and dup.merged_into_uid == "ct_0000001_aaaaaa" and dup.conversation_count == 0
    assert [c.uid for c in client.iter_contacts("loc_sydney")] == ["ct_0000001_aaaaaa"]
    assert org.stats()["merges"] == 1


def test_restore_of_a_merged_duplicate_clears_merged_into(client: PodiumClient) -> None:
    client.merge("ct_0000001_aaaaaa", ["ct_0000002_bbbbbb"])
    restored = client.restore_contact("ct_0000002_bbbbbb")
    assert restored.deleted_at is None and restored.merged_into_uid is None
    assert restored.marketing_opt_out is True


@pytest.mark.parametrize(
    "duplicates",
    [["ct_9999999_ffffff"], ["ct_0000001_aaaaaa"], ["ct_0000002_bbbbbb", "ct_0000009_eeeeee"]],
    ids=["unknown", "equals-primary", "one-unknown"],
)
def test_merge_invalid_duplicate(client: PodiumClient, org: EmulatorServer, duplicates: list[str]) -> None:
    with pytest.raises(InvalidDuplicateError) as info:
        client.merge("ct_0000001_aaaaaa", duplicates)
    err = info.value
    assert (err.http_status, err.code) == (400, "invalid_duplicate_uid")
    assert err.uid in duplicates
    assert isinstance(err, InvalidRequestError)
    assert org.stats()["merges"] == 0 and not org.state.get("ct_0000002_bbbbbb").is_deleted


def test_merge_of_a_soft_deleted_duplicate_is_invalid(client: PodiumClient) -> None:
    client.delete_contact("ct_0000002_bbbbbb")
    with pytest.raises(InvalidDuplicateError) as info:
        client.merge("ct_0000001_aaaaaa", ["ct_0000002_bbbbbb"])
    assert info.value.uid == "ct_0000002_bbbbbb"


def test_merge_into_unknown_or_deleted_primary_is_not_found(client: PodiumClient) -> None:
    with pytest.raises(NotFoundError) as info:
        client.merge("ct_9999999_ffffff", ["ct_0000002_bbbbbb"])
    assert info.value.uid == "ct_9999999_ffffff"
    client.delete_contact("ct_0000001_aaaaaa")
    with pytest.raises(NotFoundError):
        client.merge("ct_0000001_aaaaaa", ["ct_0000002_bbbbbb"])


def test_merge_needs_duplicates(client: PodiumClient) -> None:
    with pytest.raises(ValueError):
        client.merge("ct_0000001_aaaaaa", [])


def test_concurrent_merges_touching_a_contact_conflict(
    org: EmulatorServer, podium_factory: Callable[..., PodiumClient]
) -> None:
    org.latency_ms = 400
    client = podium_factory(org)
    results: dict[str, object] = {}

    def first() -> None:
        results["first"] = client.merge("ct_0000001_aaaaaa", ["ct_0000002_bbbbbb"])

    thread = threading.Thread(target=first)
    thread.start()
    deadline = time.monotonic() + 2
    while not org.state.in_flight():
        assert time.monotonic() < deadline, "the first merge never went in flight"
        time.sleep(0.005)
    with pytest.raises(ConflictError) as info:
        client.merge("ct_0000003_cccccc", ["ct_0000002_bbbbbb"])
    thread.join()
    assert (info.value.http_status, info.value.code) == (409, "merge_in_progress")
    assert info.value.uid == "ct_0000002_bbbbbb"
    assert org.state.get("ct_0000002_bbbbbb").merged_into_uid == "ct_0000001_aaaaaa"
    assert org.state.in_flight() == frozenset()


def test_cross_location_merge_blocked_only_when_configured(client: PodiumClient, org: EmulatorServer) -> None:
    org.block_cross_location = True
    with pytest.raises(UnprocessableError) as info:
        client.merge("ct_0000001_aaaaaa", ["ct_0000004_dddddd"])
    assert (info.value.http_status, info.value.code) == (422, "cross_location_merge_blocked")
    assert not org.state.get("ct_0000004_dddddd").is_deleted
    org.block_cross_location = False
    client.merge("ct_0000001_aaaaaa", ["ct_0000004_dddddd"])
    assert org.state.get("ct_0000004_dddddd").merged_into_uid == "ct_0000001_aaaaaa"


def test_bad_token_is_unauthorized_and_not_retried(
    org: EmulatorServer, podium_factory: Callable[..., PodiumClient]
) -> None:
    client = podium_factory(org, access_token="wrong")
    with pytest.raises(AuthenticationError) as info:
        client.list_locations()
    assert (info.value.http_status, info.value.code) == (401, "unauthorized")
    assert org.stats()["requests"] == 1


def test_hard_delete_is_refused_for_lack_of_scope_and_counted(
    client: PodiumClient, org: EmulatorServer
) -> None:
    resp = requests.delete(
        f"{org.url}/v4/contacts/ct_0000001_aaaaaa",
        params={"hard": "true"},
        headers={"Authorization": f"Bearer {org.token}"},
        timeout=5,
    )
    assert resp.status_code == 403
    assert resp.json()["error"]["code"] == "insufficient_scope"
    assert resp.headers["X-Request-Id"].startswith("req_")
    assert org.stats()["hard_delete_attempts"] == 1
    assert not org.state.get("ct_0000001_aaaaaa").is_deleted
    # The client maps that answer to its class (there is no public method that could send it).
    with pytest.raises(PermissionDeniedError) as info:
        client._request("DELETE", "/v4/contacts/ct_0000001_aaaaaa", params={"hard": "true"})
    assert info.value.code == "insufficient_scope" and isinstance(info.value, AuthenticationError)


def test_the_client_offers_no_hard_delete(client: PodiumClient, org: EmulatorServer) -> None:
    public = {name for name, _ in inspect.getmembers(PodiumClient, callable) if not name.startswith("_")}
    assert public == {
        "close",
        "list_locations",
        "list_contacts_page",
        "iter_contact_pages",
        "iter_contacts",
        "get_contact",
        "create_contact",
        "update_contact",
        "delete_contact",
        "restore_contact",
        "merge",
    }
    assert list(inspect.signature(PodiumClient.delete_contact).parameters) == ["self", "uid"]
    # Exercise every method; not one of them may reach for the hard delete.
    client.list_locations()
    list(client.iter_contacts("loc_sydney", include_deleted=True))
    created = client.create_contact("loc_sydney", name="Temp", channels=[Channel.phone("0400 000 009")])
    client.update_contact(created.uid, {"name": "Temp 2"})
    client.delete_contact(created.uid)
    client.restore_contact(created.uid)
    client.merge("ct_0000001_aaaaaa", [created.uid])
    assert org.stats()["hard_delete_attempts"] == 0


def test_every_response_carries_a_request_id(org: EmulatorServer) -> None:
    auth = {"Authorization": f"Bearer {org.token}"}
    calls: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/v4/locations", {}),
        ("GET", "/v4/contacts", {}),
        ("GET", "/v4/contacts", {"params": {"locationUid": "loc_sydney", "limit": "101"}}),
        ("GET", "/v4/contacts", {"params": {"locationUid": "loc_sydney", "cursor": "garbage!"}}),
        ("GET", "/v4/nothing", {}),
        ("PUT", "/v4/contacts/ct_0000001_aaaaaa", {"json": {}}),
        ("POST", "/v4/contacts/ct_0000001_aaaaaa/merge", {"data": b"not json"}),
        ("GET", "/_emulator/stats", {}),
    ]
    for method, path, kwargs in calls:
        resp = requests.request(method, org.url + path, headers=auth, timeout=5, **kwargs)
        assert resp.headers.get("X-Request-Id", "").startswith("req_"), (method, path)
        if path.startswith("/v4/contacts") and resp.status_code == 400:
            assert resp.json()["error"]["code"] == "invalid_request"
    missing = requests.get(org.url + "/v4/contacts", headers=auth, timeout=5)
    assert missing.status_code == 400 and "locationUid" in missing.json()["error"]["message"]
