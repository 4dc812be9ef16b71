"""Cursor pagination over 10,000 contacts: complete, exactly once, and stable while data changes."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
import requests

from podium_client import Channel, PodiumClient
from podium_client.emulator import EmulatorServer, EmulatorState
from tests.fixtures_emulator import empty_state, make_contact

N = 10_000


def _big_state() -> EmulatorState:
    state = empty_state()
    start = datetime(2024, 1, 1, tzinfo=UTC)
    for i in range(N):
        state.add_contact(
            make_contact(
                f"ct_{i + 1:07d}_{i % 0xFFFFFF:06x}",
                name=f"Person {i}",
                phones=[f"04{i:08d}"],
                created_at=start + timedelta(minutes=i),
                # Every 10th contact is soft-deleted and must stay out of default listings.
                deleted_at=start + timedelta(minutes=i, seconds=30) if i % 10 == 9 else None,
                updated_at=start + timedelta(minutes=i, seconds=30) if i % 10 == 9 else None,
            )
        )
    return state


@pytest.fixture(scope="module")
def big_state_lines() -> list[str]:
    return list(_big_state().dump_lines())


@pytest.fixture
def big(emulator_factory: Callable[..., EmulatorServer], big_state_lines: list[str]) -> EmulatorServer:
    return emulator_factory(EmulatorState.from_lines(big_state_lines))


def test_every_live_contact_is_listed_exactly_once(
    big: EmulatorServer, podium_factory: Callable[..., PodiumClient]
) -> None:
    client = podium_factory(big)
    seen = Counter(c.uid for c in client.iter_contacts("loc_sydney"))
    expected = {c.uid for c in big.state.contacts("loc_sydney", include_deleted=False)}
    assert len(expected) == N - N // 10
    assert set(seen) == expected
    assert max(seen.values()) == 1
    assert big.stats()["by_route"]["GET /v4/contacts"] == len(expected) // 100


def test_include_deleted_lists_all(big: EmulatorServer, podium_factory: Callable[..., PodiumClient]) -> None:
    client = podium_factory(big)
    uids = [c.uid for c in client.iter_contacts("loc_sydney", include_deleted=True, page_size=73)]
    assert len(uids) == N == len(set(uids))


def test_paging_is_stable_while_contacts_change(
    big: EmulatorServer, podium_factory: Callable[..., PodiumClient]
) -> None:
    client = podium_factory(big)
    writer = podium_factory(big)
    rng = random.Random(5)
    all_uids = [c.uid for c in big.state.contacts("loc_sydney", include_deleted=False)]
    seen: Counter[str] = Counter()
    created: list[str] = []
    for page in client.iter_contact_pages("loc_sydney", page_size=100):
        seen.update(c.uid for c in page)
        # Change contacts already seen and not yet seen, and add new ones, between pages.
        for uid in rng.sample(all_uids, 3):
            writer.update_contact(
                uid, {"tags": [f"t{rng.randint(0, 9)}"], "name": f"Renamed {rng.random():.4f}"}
            )
        if len(created) < 20:
            created.append(
                writer.create_contact("loc_sydney", name="New", channels=[Channel.phone("0400 000 000")]).uid
            )
    assert max(seen.values()) == 1
    assert set(all_uids) <= set(seen)
    # Contacts created during the listing come after everything else, so they are seen too.
    assert set(created) <= set(seen)


def test_updated_since_filter_travels_in_the_cursor(
    big: EmulatorServer, podium_factory: Callable[..., PodiumClient]
) -> None:
    client = podium_factory(big)
    since = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(minutes=N - 250)
    first = client.list_contacts_page("loc_sydney", updated_since=since, page_size=100)
    assert all(c.updated_at >= since for c in first)
    assert len(first) == 100 and first.next_cursor
    # The filter comes from the cursor; a client changing its mind cannot widen the listing.
    rest = list(client.iter_contact_pages("loc_sydney", page_size=100, cursor=first.next_cursor))
    uids = [c.uid for c in first] + [c.uid for p in rest for c in p]
    assert len(uids) == len(set(uids)) == 225  # 250 minutes back, every 10th deleted
    # A contact touched now is in the next incremental listing even though it is old.
    old = big.state.contacts("loc_sydney")[0]
    touched = client.update_contact(old.uid, {"name": "Touched"})
    changed = list(client.iter_contacts("loc_sydney", updated_since=touched.updated_at))
    assert [c.uid for c in changed] == [old.uid]


def test_listing_parameters_are_validated(big: EmulatorServer) -> None:
    auth = {"Authorization": f"Bearer {big.token}"}

    def get(params: dict[str, str]) -> requests.Response:
        return requests.get(big.url + "/v4/contacts", params=params, headers=auth, timeout=5)

    for params in (
        {},
        {"locationUid": "loc_sydney", "limit": "101"},
        {"locationUid": "loc_sydney", "limit": "0"},
        {"locationUid": "loc_sydney", "limit": "ten"},
        {"locationUid": "loc_sydney", "cursor": "not-a-cursor"},
        {"locationUid": "loc_sydney", "updatedSince": "last tuesday"},
        {"locationUid": "loc_sydney", "includeDeleted": "maybe"},
    ):
        resp = get(params)
        assert resp.status_code == 400, params
        assert resp.json()["error"]["code"] == "invalid_request"
    default = get({"locationUid": "loc_sydney"}).json()
    assert len(default["data"]) == 100 and default["metadata"]["nextCursor"]
    # The cursor carries the filters: asking for deleted ones alongside it changes nothing.
    cursor = default["metadata"]["nextCursor"]
    with_cursor = get({"locationUid": "loc_sydney", "cursor": cursor, "includeDeleted": "true"}).json()
    assert all(c["deletedAt"] is None for c in with_cursor["data"])
    last = get({"locationUid": "loc_sydney", "limit": "100", "updatedSince": "2099-01-01T00:00:00Z"}).json()
    assert last == {"data": [], "metadata": {"nextCursor": None}}
