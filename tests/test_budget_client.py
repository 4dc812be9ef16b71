"""``get_client`` draws every client of the deployment from one Podium budget, and Podium's refusals reach all.

Before: each client got a private pacer at the policy's whole budget, so two clients (two workers, a
scan beside a merge) sent twice the budget, and a ``rate_limit`` answer slowed only the client that
received it.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connections

from dedup import budget
from dedup.budget import DatabaseBucketStore, RedisBucketStore
from dedup.models import Policy, RateBudget
from dedup.podium import get_client
from podium_client import PodiumClient
from podium_client.emulator import EmulatorServer
from podium_client.ratelimit import TokenBucketPacer, credentials_key
from tests.scanned_corpus import point_at

RPM = 600
INTERVAL = 60 / RPM * 1.02


@pytest.fixture
def server(
    db: None, emulator_factory: Callable[..., EmulatorServer], settings: Any, monkeypatch: pytest.MonkeyPatch
) -> EmulatorServer:
    emulator = emulator_factory()
    point_at(emulator, settings, monkeypatch)
    # A budget of its own per test: the key hashes the token.
    emulator.token = settings.PODIUM_ACCESS_TOKEN = f"token-{uuid.uuid4().hex}"
    Policy.objects.filter(pk=Policy.current().pk).update(rate_limit_per_minute=RPM)
    return emulator


def _timed(calls: list[Callable[[], object]]) -> float:
    start = time.monotonic()
    for call in calls:
        call()
    return time.monotonic() - start


@pytest.mark.django_db
def test_two_clients_share_one_budget(server: EmulatorServer) -> None:
    with get_client() as first, get_client() as second:
        assert first.rate_limiter is second.rate_limiter
        assert isinstance(first.rate_limiter, TokenBucketPacer)
        assert isinstance(first.rate_limiter.store, DatabaseBucketStore)
        calls: list[Callable[[], object]] = [first.list_locations, second.list_locations] * 4
        elapsed = _timed(calls)
    # Eight requests from two clients start one interval apart: as one client would, not two.
    assert elapsed >= 7 * INTERVAL * 0.95
    row = RateBudget.objects.get(key=budget.budget_key())
    assert row.granted == 8


@pytest.mark.django_db
def test_the_budget_is_the_policys_and_zero_turns_pacing_off(server: EmulatorServer) -> None:
    with get_client() as client:
        assert isinstance(client.rate_limiter, TokenBucketPacer)
        assert client.rate_limiter.requests_per_minute == RPM
    Policy.objects.filter(pk=Policy.current().pk).update(rate_limit_per_minute=0)
    with get_client() as client:
        assert client.rate_limiter is None


@pytest.mark.django_db
def test_with_redis_the_budget_lives_in_redis(server: EmulatorServer, redis_url: str, settings: Any) -> None:
    import redis

    settings.REDIS_URL = redis_url
    with get_client() as client:
        assert isinstance(client.rate_limiter, TokenBucketPacer)
        assert isinstance(client.rate_limiter.store, RedisBucketStore)
        client.list_locations()
        client.list_locations()
    stored = redis.Redis.from_url(redis_url).hgetall(RedisBucketStore.PREFIX + budget.budget_key())
    assert int(stored[b"granted"]) == 2
    assert not RateBudget.objects.filter(key=budget.budget_key()).exists()


@pytest.mark.django_db
def test_the_budget_is_named_after_who_podium_counts(settings: Any) -> None:
    settings.PODIUM_BASE_URL = "https://api.podium.com"
    settings.PODIUM_ACCESS_TOKEN = "static-secret"
    settings.PODIUM_REFRESH_TOKEN = ""
    assert budget.budget_key() == credentials_key("https://api.podium.com", "static-secret")
    # OAuth: every access token issued to the client id shares one budget.
    settings.PODIUM_REFRESH_TOKEN = "refresh-secret"
    settings.PODIUM_CLIENT_ID = "client-42"
    assert budget.budget_key() == credentials_key("https://api.podium.com", "client-42")
    assert "secret" not in budget.budget_key()


def _two_processes(server: EmulatorServer, store: Any) -> tuple[PodiumClient, PodiumClient]:
    """Two clients whose pacers share only the store's state (as two processes would)."""
    key = credentials_key(server.url, server.token)
    return (
        PodiumClient(server.url, access_token=server.token, rate_limiter=TokenBucketPacer(store(), key, RPM)),
        PodiumClient(server.url, access_token=server.token, rate_limiter=TokenBucketPacer(store(), key, RPM)),
    )


@pytest.mark.parametrize(
    # On SQLite the test database is in memory, where connections of two threads lock each other out
    # instead of waiting; a SQLite file (what development uses) is shared in test_budget_processes.py.
    "where",
    [pytest.param("database", marks=pytest.mark.postgres), "redis"],
)
def test_a_rate_limit_answer_backs_every_process_off(
    emulator_factory: Callable[..., EmulatorServer], where: str, request: pytest.FixtureRequest
) -> None:
    server = emulator_factory(token=f"token-{uuid.uuid4().hex}")
    if where == "redis":
        url = request.getfixturevalue("redis_url")
        a, b = _two_processes(server, lambda: RedisBucketStore(url))
    else:
        request.getfixturevalue("committed_db")  # the threads' connections see the budget's row
        a, b = _two_processes(server, DatabaseBucketStore)
    # Podium refuses A's next call and asks for 1.5 s of quiet.
    server.configure(fail_next=1, fault_statuses=[429], fault_retry_after=1.5)
    elapsed: list[float] = []

    def first() -> None:
        try:
            a.list_locations_page(limit=1)  # refused, then retried after the pause
        finally:
            connections.close_all()

    def second() -> None:
        try:
            elapsed.append(_timed([lambda: b.list_locations_page(limit=1)]))
        finally:
            connections.close_all()

    # Each in a thread of its own, with its own database connection in autocommit, as in production.
    thread = threading.Thread(target=first)
    thread.start()
    deadline = time.monotonic() + 5
    while server.stats()["faults_injected"] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)  # A hears the refusal and tells the budget
    other = threading.Thread(target=second)
    other.start()
    other.join(10)
    thread.join(10)
    # B never met a refusal, yet waited out A's: every process backs off together.
    assert elapsed and elapsed[0] >= 1.2
    stats = server.stats()
    assert stats["by_status"].get("429", 0) == 1 and stats["by_status"]["200"] == 2
    a.close()
    b.close()
