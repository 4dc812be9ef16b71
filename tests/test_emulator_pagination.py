"""Cursor pagination over 10,000 contacts: complete, exactly once, stable while data changes, stale cursors."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from podium_client.corpus import BURLEIGH, LOCATIONS, SYDNEY
from podium_client.emulator import EmulatorServer, EmulatorState
from tests.fixtures_emulator import auth, empty_state, make_contact

N = 10_000
START = datetime(2024, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def big_state_lines() -> list[str]:
    state = empty_state()
    for i in range(N):
        stamp = START + timedelta(minutes=i)
        state.add_contact(make_contact(f"00000000-0000-4000-9000-{i:012d}", name=f"Person {i}",
                                       phones=[f"04{i % 4}{i:07d}"], created_at=stamp))  # fmt: skip
    return list(state.dump_lines())


@pytest.fixture
def big(emulator_factory: Callable[..., EmulatorServer], big_state_lines: list[str]) -> EmulatorServer:
    return emulator_factory(EmulatorState.from_lines(big_state_lines))


def _get(server: EmulatorServer, path: str, **params: Any) -> requests.Response:
    return requests.get(server.url + path, params=params, headers=auth(server), timeout=10)


def _pages(server: EmulatorServer, **params: Any) -> list[list[dict[str, Any]]]:
    pages = []
    query = dict(params)
    while True:
        body = _get(server, "/v4/contacts", **query).json()
        pages.append(body["data"])
        if not body["metadata"]["nextCursor"]:
            return pages
        query = {
            "cursor": body["metadata"]["nextCursor"],
            **({"limit": params["limit"]} if "limit" in params else {}),
        }


def test_every_contact_is_listed_exactly_once(big: EmulatorServer) -> None:
    seen = Counter(c["uid"] for page in _pages(big, limit=100) for c in page)
    assert len(seen) == N and max(seen.values()) == 1
    assert big.stats()["by_route"]["GET /v4/contacts"] == N // 100


def test_page_size_defaults_to_10_and_is_at_most_100(big: EmulatorServer) -> None:
    first = _get(big, "/v4/contacts").json()
    assert len(first["data"]) == 10 and first["metadata"]["nextCursor"]
    # The cursor remembers the page size; an explicit limit beside it wins.
    assert len(_get(big, "/v4/contacts", cursor=first["metadata"]["nextCursor"]).json()["data"]) == 10
    assert (
        len(_get(big, "/v4/contacts", cursor=first["metadata"]["nextCursor"], limit=100).json()["data"])
        == 100
    )
    for limit in ("101", "0", "-1", "ten"):
        resp = _get(big, "/v4/contacts", limit=limit)
        assert resp.status_code == 400 and resp.json()["code"] == "invalid_request_values", limit
        assert resp.json()["message"].startswith("limit")


def test_paging_is_stable_while_contacts_change(big: EmulatorServer) -> None:
    rng = random.Random(5)
    all_uids = [c["uid"] for c in big.state.contacts()]
    phones = {c["uid"]: c["phoneNumbers"][0] for c in big.state.contacts()}
    seen: Counter[str] = Counter()
    created: list[str] = []
    query: dict[str, Any] = {"limit": 100}
    while True:
        body = _get(big, "/v4/contacts", **query).json()
        seen.update(c["uid"] for c in body["data"])
        # Change contacts already seen and not yet seen, and add new ones, between pages.
        for uid in rng.sample(all_uids, 3):
            e164 = "+61" + phones[uid][1:]
            resp = requests.patch(f"{big.url}/v4/contacts/{e164}", json={"name": f"Renamed {rng.random():.4f}"},
                                  headers=auth(big), timeout=10)  # fmt: skip
            assert resp.status_code == 202
        if len(created) < 20:
            resp = requests.post(big.url + "/v4/contacts", json={"name": "New", "locations": [SYDNEY],
                                 "email": f"new{len(created)}@example.com"}, headers=auth(big), timeout=10)  # fmt: skip
            created.append(big.state.find(resp.json()["data"]["identifier"])["uid"])  # type: ignore[index]
        if not body["metadata"]["nextCursor"]:
            break
        query = {"limit": 100, "cursor": body["metadata"]["nextCursor"]}
    assert max(seen.values()) == 1
    assert set(all_uids) <= set(seen)
    # Contacts created during the listing come after everything else, so they are seen too.
    assert set(created) <= set(seen)


def test_updated_at_gives_contacts_changed_strictly_after_it_and_travels_in_the_cursor(
    big: EmulatorServer,
) -> None:
    since = START + timedelta(minutes=N - 250)
    text = since.strftime("%Y-%m-%dT%H:%M:%SZ")
    pages = _pages(big, limit=100, updated_at=text)
    uids = [c["uid"] for page in pages for c in page]
    assert len(uids) == len(set(uids)) == 249  # the contact updated exactly at `since` is not after it
    # A contact touched now is in the next incremental listing although it is old.
    old = big.state.contacts()[0]
    before = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
    resp = requests.patch(f"{big.url}/v4/contacts/{old['conversations'][0]['uid']}", json={"name": "Touched"},
                          headers=auth(big), timeout=10)  # fmt: skip
    assert resp.status_code == 202
    changed = [
        c["uid"] for page in _pages(big, updated_at=before.strftime("%Y-%m-%dT%H:%M:%SZ")) for c in page
    ]
    assert changed == [old["uid"]]
    for bad in ("2024-01-01", "2024-01-01T00:00:00+00:00", "2024-01-01T00:00:00.5Z", "last tuesday"):
        resp = _get(big, "/v4/contacts", updated_at=bad)
        assert resp.status_code == 400 and resp.json()["message"].startswith("updated_at"), bad


def test_stale_foreign_and_garbage_cursors_answer_invalid_cursor(big: EmulatorServer) -> None:
    cursor = _get(big, "/v4/contacts", limit=5).json()["metadata"]["nextCursor"]
    assert _get(big, "/v4/contacts", cursor=cursor).status_code == 200
    requests.post(big.url + "/_emulator/cursors/invalidate", timeout=5)
    stale = _get(big, "/v4/contacts", cursor=cursor)
    assert stale.status_code == 400 and stale.json()["code"] == "invalid_cursor"
    loc_cursor = _get(big, "/v4/locations", limit=1).json()["metadata"]["nextCursor"]
    for bad in (loc_cursor, "not-a-cursor", "W10"):
        resp = _get(big, "/v4/contacts", cursor=bad)
        assert resp.status_code == 400 and resp.json()["code"] == "invalid_cursor", bad
    big.configure(cursor_ttl_s=0.05)
    cursor = _get(big, "/v4/contacts", limit=5).json()["metadata"]["nextCursor"]
    time.sleep(0.1)
    assert _get(big, "/v4/contacts", cursor=cursor).json()["code"] == "invalid_cursor"


def test_a_deleted_contact_does_not_break_a_cursor_pointing_at_it(
    emulator_factory: Callable[..., EmulatorServer],
) -> None:
    state = empty_state()
    contacts = [state.add_contact(make_contact(phones=[f"0411 000 {i:03d}"])) for i in range(5)]
    server = emulator_factory(state)
    first = _get(server, "/v4/contacts", limit=2).json()
    requests.delete(server.url + "/v4/contacts/+61411000001", headers=auth(server), timeout=5)
    rest = _get(server, "/v4/contacts", cursor=first["metadata"]["nextCursor"], limit=10).json()
    assert [c["uid"] for c in first["data"] + rest["data"]] == [contacts[i]["uid"] for i in (0, 1, 2, 3, 4)]
    assert rest["metadata"]["nextCursor"] is None


def test_locations_page_and_filter_by_updated_after(emulator_factory: Callable[..., EmulatorServer]) -> None:
    state = empty_state()
    state.add_location({**LOCATIONS[1], "updatedAt": "2026-01-01T00:00:00Z"})
    server = emulator_factory(state)
    first = _get(server, "/v4/locations", limit=3).json()
    second = _get(
        server, "/v4/locations", cursor=first["metadata"]["nextCursor"], updatedAfter="2099-01-01T00:00:00Z"
    ).json()
    assert len(first["data"]) == 3 and len(second["data"]) == 1 and second["metadata"]["nextCursor"] is None
    assert first["metadata"]["totalItems"] == 4
    recent = _get(server, "/v4/locations", updatedAfter="2025-01-01T00:00:00Z").json()
    assert [loc["uid"] for loc in recent["data"]] == [BURLEIGH] and recent["metadata"]["totalItems"] == 1
    assert _get(server, "/v4/locations", updatedAfter="soon").json()["code"] == "invalid_request_values"
