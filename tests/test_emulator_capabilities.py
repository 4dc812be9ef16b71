"""Part 2 of the contract: merge, restore and soft-delete, served only when switched on."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import requests

from podium_client.corpus import AUCKLAND, BURLEIGH, SYDNEY
from podium_client.emulator import EmulatorError, EmulatorServer
from tests.fixtures_emulator import auth, empty_state, make_contact


def _send(
    server: EmulatorServer, method: str, path: str, body: Any = None, **params: Any
) -> requests.Response:
    return requests.request(
        method, server.url + path, headers=auth(server), json=body, params=params, timeout=10
    )


def _merge(server: EmulatorServer, primary: str, dups: list[str]) -> requests.Response:
    return _send(server, "POST", f"/v4/contacts/{primary}/merge", {"duplicateUids": dups})


@pytest.mark.parametrize("capabilities", [None, "restore", "soft-delete"])
def test_merge_is_served_only_with_its_capability(
    emulator_factory: Callable[..., EmulatorServer], capabilities: str | None
) -> None:
    state = empty_state(capabilities=capabilities)
    a, b = state.add_contact(make_contact()), state.add_contact(make_contact())
    server = emulator_factory(state)
    resp = _merge(server, a["uid"], [b["uid"]])
    assert resp.status_code == 404 and resp.json()["code"] == "route_not_found"
    assert server.stats()["by_route"] == {"POST (unknown)": 1}


def test_merge_keeps_the_primary_and_hides_duplicates_moving_their_conversations(
    emulator_factory: Callable[..., EmulatorServer],
) -> None:
    state = empty_state(capabilities="merge")
    primary = state.add_contact(make_contact(name="Maria", phones=["0412 345 678"], conversations=1))
    dup = state.add_contact(
        make_contact(name="MARIA GARCIA", phones=["0499 000 111"], tags=["vip"], conversations=2)
    )
    server = emulator_factory(state)
    resp = _merge(server, primary["uid"], [dup["uid"]])
    assert resp.status_code == 200
    merged = resp.json()["data"]
    # Only its own fields, plus the duplicate's conversations.
    assert merged["name"] == "Maria" and merged["tags"] == [] and merged["phoneNumbers"] == ["0412 345 678"]
    assert merged["conversations"] == primary["conversations"] + dup["conversations"]
    assert merged["deletedAt"] is None and merged["mergedIntoUid"] is None
    hidden = state.get(dup["uid"])
    assert hidden["mergedIntoUid"] == primary["uid"] and hidden["deletedAt"] and hidden["conversations"] == []
    # Hidden from the published ways of finding it, visible by uid on a capability tenant.
    assert _send(server, "GET", "/v4/contacts/+61499000111").status_code == 404
    assert (
        _send(server, "GET", f"/v4/contacts/{dup['uid']}").json()["data"]["mergedIntoUid"] == primary["uid"]
    )
    conv = dup["conversations"][0]["uid"]
    assert _send(server, "GET", f"/v4/contacts/{conv}").json()["data"]["uid"] == primary["uid"]
    listed = _send(server, "GET", "/v4/contacts", limit=100).json()["data"]
    assert [c["uid"] for c in listed] == [primary["uid"]]
    assert server.stats()["merges"] == 1


def test_merge_refusals(emulator_factory: Callable[..., EmulatorServer]) -> None:
    state = empty_state(capabilities="merge")
    primary = state.add_contact(make_contact(locations=[SYDNEY]))
    same = state.add_contact(make_contact(locations=[SYDNEY]))
    away = state.add_contact(make_contact(locations=[AUCKLAND]))
    both = state.add_contact(make_contact(locations=[SYDNEY, BURLEIGH]))
    server = emulator_factory(state, block_cross_location=True)
    for dups, status, code in [
        ([primary["uid"]], 400, "invalid_duplicate_uid"),
        (["00000000-0000-4000-8000-0000000000ff"], 400, "invalid_duplicate_uid"),
        ([away["uid"]], 422, "cross_location_merge_blocked"),
        ([both["uid"]], 422, "cross_location_merge_blocked"),
    ]:
        resp = _merge(server, primary["uid"], dups)
        assert (resp.status_code, resp.json()["code"]) == (status, code), dups
    bodies: list[dict[str, Any]] = [{}, {"duplicateUids": []}, {"duplicateUids": "x"}, {"dups": ["x"]}]
    for body in bodies:
        resp = _send(server, "POST", f"/v4/contacts/{primary['uid']}/merge", body)
        assert resp.status_code == 400 and resp.json()["code"] == "invalid_request_values", body
    assert _merge(server, "00000000-0000-4000-8000-0000000000fe", [same["uid"]]).status_code == 404
    assert _merge(server, primary["uid"], [same["uid"]]).status_code == 200
    assert _merge(server, primary["uid"], [same["uid"]]).json()["code"] == "invalid_duplicate_uid"
    # A merge into a contact with both locations is not cross-location for the one it absorbs.
    assert _merge(server, both["uid"], [primary["uid"]]).status_code == 200


def test_a_merge_in_flight_holds_its_contacts(emulator_factory: Callable[..., EmulatorServer]) -> None:
    state = empty_state(capabilities="merge")
    a, b, c = (state.add_contact(make_contact()) for _ in range(3))
    server = emulator_factory(state, latency_ms=400)
    results: list[requests.Response] = []
    slow = threading.Thread(target=lambda: results.append(_merge(server, a["uid"], [b["uid"]])))
    slow.start()
    deadline = threading.Event()
    while not state.in_flight() and not deadline.wait(0.01):
        pass
    second = _merge(server, c["uid"], [b["uid"]])
    assert second.status_code == 409 and second.json()["code"] == "merge_in_progress"
    slow.join(10)
    assert results[0].status_code == 200 and state.in_flight() == frozenset()


def test_a_merge_whose_answer_is_lost_was_applied(emulator_factory: Callable[..., EmulatorServer]) -> None:
    state = empty_state(capabilities="merge")
    a, b = state.add_contact(make_contact()), state.add_contact(make_contact())
    server = emulator_factory(state, drop_after_commit_rate=1.0)
    with pytest.raises(requests.ConnectionError):
        _merge(server, a["uid"], [b["uid"]])
    assert state.get(b["uid"])["mergedIntoUid"] == a["uid"]


def test_soft_delete_hides_and_include_deleted_lists(emulator_factory: Callable[..., EmulatorServer]) -> None:
    state = empty_state(capabilities="soft-delete")
    kept = state.add_contact(make_contact(phones=["0499 000 111"]))
    gone = state.add_contact(make_contact(phones=["0412 345 678"]))
    server = emulator_factory(state)
    assert _send(server, "DELETE", "/v4/contacts/+61412345678").status_code == 202
    assert _send(server, "GET", "/v4/contacts/+61412345678").status_code == 404
    default = _send(server, "GET", "/v4/contacts").json()["data"]
    assert [c["uid"] for c in default] == [kept["uid"]] and default[0]["deletedAt"] is None
    everything = _send(server, "GET", "/v4/contacts", includeDeleted="true").json()["data"]
    assert [(c["uid"], bool(c["deletedAt"])) for c in everything] == [
        (kept["uid"], False),
        (gone["uid"], True),
    ]
    assert state.deleted()[0]["soft"] is True and state.deleted()[0]["contact"]["deletedAt"] is None
    # Writes never reach a hidden contact, even by uid.
    assert _send(server, "PATCH", f"/v4/contacts/{gone['uid']}", {"name": "x"}).status_code == 404


def test_without_soft_delete_include_deleted_changes_nothing(
    emulator_factory: Callable[..., EmulatorServer],
) -> None:
    state = empty_state()
    state.add_contact(make_contact())
    server = emulator_factory(state)
    listed = _send(server, "GET", "/v4/contacts", includeDeleted="true").json()["data"]
    assert len(listed) == 1 and "deletedAt" not in listed[0]


def test_restore_unhides_merged_and_deleted_contacts(emulator_factory: Callable[..., EmulatorServer]) -> None:
    state = empty_state(capabilities="merge,restore,soft-delete")
    primary, dup, deleted = (
        state.add_contact(make_contact(phones=[p])) for p in ("0411 000 001", "0411 000 002", "0411 000 003")
    )
    state.merge(primary["uid"], [dup["uid"]])
    server = emulator_factory(state)
    _send(server, "DELETE", "/v4/contacts/+61411000003")
    for uid in (dup["uid"], deleted["uid"]):
        resp = _send(server, "POST", f"/v4/contacts/{uid}/restore")
        assert resp.status_code == 200
        assert resp.json()["data"]["deletedAt"] is None and resp.json()["data"]["mergedIntoUid"] is None
    assert _send(server, "GET", "/v4/contacts/+61411000002").json()["data"]["uid"] == dup["uid"]
    assert (
        _send(server, "POST", "/v4/contacts/00000000-0000-4000-8000-0000000000fd/restore").status_code == 404
    )
    assert server.stats()["restores"] == 2


def test_restore_without_soft_delete_cannot_bring_back_a_deleted_contact(
    emulator_factory: Callable[..., EmulatorServer],
) -> None:
    state = empty_state(capabilities="restore")
    gone = state.add_contact(make_contact(phones=["0412 345 678"]))
    server = emulator_factory(state)
    _send(server, "DELETE", "/v4/contacts/+61412345678")
    assert _send(server, "POST", f"/v4/contacts/{gone['uid']}/restore").status_code == 404


def test_state_merge_helper_releases_its_reservation() -> None:
    state = empty_state(capabilities="merge")
    a = state.add_contact(make_contact(conversations=1))
    b = state.add_contact(make_contact(conversations=4))
    primary = state.merge(a["uid"], [b["uid"]])
    assert len(primary["conversations"]) == 5 and state.in_flight() == frozenset()
    with pytest.raises(EmulatorError) as info:
        state.merge(a["uid"], [b["uid"]])
    assert info.value.code == "invalid_duplicate_uid" and state.in_flight() == frozenset()
