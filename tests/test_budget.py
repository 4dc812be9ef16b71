"""The shared Podium budget: the pacing rule, its priorities and penalties, and the stores that share it.

``take_slot`` is the rule; the stores (memory, the database, Redis) must apply it identically, because
processes of one deployment may use any of them. The cross-process proof against Podium's limit is in
``test_budget_processes.py``; the wiring into ``get_client`` in ``test_budget_client.py``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import pytest
from django.db import connection
from django.test import RequestFactory

from dedup.budget import DatabaseBucketStore, InteractivePriority, RedisBucketStore
from dedup.models import RateBudget
from podium_client.ratelimit import (
    BULK,
    INTERACTIVE,
    BucketParams,
    BucketState,
    BucketStore,
    BucketUnavailable,
    MemoryBucketStore,
    Take,
    TokenBucketPacer,
    block,
    credentials_key,
    current_priority,
    prioritized,
    take_slot,
)

RPM = 300
INTERVAL = 60 / RPM * 1.02  # the pacer's default 2% safety margin


class FakeTime:
    """A clock that only moves when someone sleeps."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def fake() -> FakeTime:
    return FakeTime()


def _pacer(store: BucketStore, fake: FakeTime, key: str = "k") -> TokenBucketPacer:
    return TokenBucketPacer(store, key, RPM, sleep=fake.sleep)


# --- the rule ----------------------------------------------------------------------------------------


def test_requests_start_one_interval_apart_at_the_budget(fake: FakeTime) -> None:
    pacer = _pacer(MemoryBucketStore(fake.clock), fake)
    starts = []
    for _ in range(30):
        pacer.acquire()
        starts.append(fake.now)
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert min(gaps) == pytest.approx(INTERVAL)
    # 30 requests at 300/min with the margin: a little over 29 intervals, never faster.
    assert starts[-1] - starts[0] == pytest.approx(29 * INTERVAL)


def test_a_quiet_spell_is_not_banked_as_a_burst(fake: FakeTime) -> None:
    # A burst on top of the steady rate is what trips Podium's sliding window.
    pacer = _pacer(MemoryBucketStore(fake.clock), fake)
    pacer.acquire()
    fake.now += 60  # idle for a minute
    first = fake.now
    pacer.acquire()
    pacer.acquire()
    assert fake.now - first == pytest.approx(INTERVAL)


def test_a_bulk_caller_books_no_more_than_half_an_interval_ahead() -> None:
    params = BucketParams(interval=1.0, lookahead=0.5)
    state = BucketState()
    assert take_slot(state, 10.0, params, BULK) == Take(True, 0.0)
    # The next slot starts at 11: too far ahead for bulk, which is told to ask again at 10.5.
    assert take_slot(state, 10.0, params, BULK) == Take(False, 0.5)
    assert take_slot(state, 10.5, params, BULK) == Take(True, 0.5)
    assert state.tat == 12.0 and state.granted == 2


def _rounded(take: Take) -> Take:
    return Take(take.granted, round(take.wait, 6))


def test_an_interactive_caller_goes_before_waiting_bulk_callers() -> None:
    params = BucketParams(interval=1.0, lookahead=0.5)
    state = BucketState()
    take_slot(state, 10.0, params, BULK)
    refused = take_slot(state, 10.0, params, BULK)  # bulk waits until 10.5 to ask again
    assert not refused.granted
    # A person arrives meanwhile and books the slot at 11 at once.
    assert _rounded(take_slot(state, 10.2, params, INTERACTIVE)) == Take(True, 0.8)
    # The bulk caller, back at 10.5, finds the next free slot at 12.
    assert _rounded(take_slot(state, 10.5, params, BULK)) == Take(False, 1.0)
    assert _rounded(take_slot(state, 11.5, params, BULK)) == Take(True, 0.5)


def test_interactive_callers_wait_behind_at_most_one_bulk_booking(fake: FakeTime) -> None:
    store = MemoryBucketStore(fake.clock)
    bulk = _pacer(store, fake)
    for _ in range(5):
        bulk.acquire()
    # However many bulk callers wait, one booking at most is ahead of a person.
    interactive_wait = _pacer(store, fake).acquire(INTERACTIVE)
    assert interactive_wait <= 1.5 * INTERVAL


def test_a_penalty_holds_every_priority_until_it_ends(fake: FakeTime) -> None:
    store = MemoryBucketStore(fake.clock)
    pacer = _pacer(store, fake)
    pacer.acquire()
    pacer.penalize(3.0)
    start = fake.now
    assert pacer.acquire(INTERACTIVE) == pytest.approx(3.0)
    assert fake.now - start == pytest.approx(3.0)
    assert store.states["k"].rate_limited == 1
    # Podium sent no Retry-After: the default pause.
    pacer.penalize(None)
    assert store.states["k"].blocked_until == pytest.approx(fake.now + 1.0)


def test_the_priority_of_a_context_reaches_the_budget(fake: FakeTime) -> None:
    store = MemoryBucketStore(fake.clock)
    bulk = _pacer(store, fake)
    bulk.acquire()
    assert current_priority() == BULK
    with prioritized(INTERACTIVE):
        assert current_priority() == INTERACTIVE
        # Booked ahead at once (one sleep of about one interval), not refused and polled like bulk.
        before = len(fake.sleeps)
        bulk.acquire()
        assert len(fake.sleeps) == before + 1
    assert current_priority() == BULK


def test_web_requests_are_interactive() -> None:
    seen: list[int] = []

    def view(request: object) -> object:
        seen.append(current_priority())
        return object()

    middleware = InteractivePriority(view)  # type: ignore[arg-type]
    middleware(RequestFactory().get("/contacts/deleted/"))
    assert seen == [INTERACTIVE] and current_priority() == BULK


def test_the_budget_is_named_by_a_hash_never_the_secret() -> None:
    key = credentials_key("https://api.podium.com/", "secret-token-123")
    assert "secret" not in key and len(key) == 32
    assert key == credentials_key("https://api.podium.com", "secret-token-123")
    assert key != credentials_key("https://api.podium.com", "another-token")
    assert key != credentials_key("https://eu.podium.test", "secret-token-123")


class _Down:
    def take(self, key: str, params: BucketParams, priority: int) -> Take:
        raise BucketUnavailable("Redis: ConnectionError: refused")

    def penalize(self, key: str, pause: float) -> None:
        raise BucketUnavailable("Redis: ConnectionError: refused")


def test_an_unreachable_store_paces_this_process_alone_and_says_so(
    caplog: pytest.LogCaptureFixture, fake: FakeTime
) -> None:
    pacer = TokenBucketPacer(_Down(), "k", 600, sleep=fake.sleep)
    with caplog.at_level(logging.WARNING, logger="podium_client"):
        waits = [pacer.acquire() for _ in range(3)]
        pacer.penalize(2.0)
    # Paced locally at the same rate: the second request waits about one interval after the first.
    assert waits[0] == 0
    assert waits[1] == pytest.approx(60 / 600 * 1.02, abs=0.02)
    warnings = [r for r in caplog.records if "shared Podium budget is unreachable" in r.getMessage()]
    assert len(warnings) == 1  # once a minute, not once a request


def test_an_unreachable_redis_is_reported_as_unavailable() -> None:
    store = RedisBucketStore("redis://127.0.0.1:1/0")
    with pytest.raises(BucketUnavailable):
        store.take("k", BucketParams(0.2, 0.1), BULK)
    with pytest.raises(BucketUnavailable):
        store.penalize("k", 1.0)


# --- every store applies the same rule -----------------------------------------------------------------

#: (seconds since the start, what happens): a request of that priority, or a penalty of that length.
SCRIPT: list[tuple[float, str, float]] = [
    (0.0, "take", BULK),
    (0.0, "take", BULK),
    (0.05, "take", INTERACTIVE),
    (0.1, "take", BULK),
    (0.3, "take", BULK),
    (0.35, "take", INTERACTIVE),
    (0.35, "take", INTERACTIVE),
    (0.4, "penalize", 1.5),
    (0.5, "take", BULK),
    (0.6, "take", INTERACTIVE),
    (1.95, "take", BULK),
    (30.0, "take", BULK),
    (30.0, "take", BULK),
]


def _expected(params: BucketParams) -> list[Take | None]:
    state = BucketState()
    out: list[Take | None] = []
    for at, what, value in SCRIPT:
        if what == "take":
            out.append(take_slot(state, 5_000.0 + at, params, int(value)))
        else:
            block(state, 5_000.0 + at, value)
            out.append(None)
    return out


@pytest.fixture(params=["memory", "database", "redis"])
def store_and_clock(request: pytest.FixtureRequest) -> Iterator[tuple[BucketStore, FakeTime]]:
    fake = FakeTime(5_000.0)
    if request.param == "memory":
        yield MemoryBucketStore(fake.clock), fake
    elif request.param == "database":
        request.getfixturevalue("db")
        yield DatabaseBucketStore(clock=fake.clock), fake
    else:
        yield RedisBucketStore(request.getfixturevalue("redis_url"), clock=fake.clock), fake


def test_every_store_applies_the_rule_exactly(store_and_clock: tuple[BucketStore, FakeTime]) -> None:
    store, fake = store_and_clock
    params = BucketParams(interval=0.2, lookahead=0.1)
    key = uuid.uuid4().hex
    got: list[Take | None] = []
    for at, what, value in SCRIPT:
        fake.now = 5_000.0 + at
        if what == "take":
            got.append(store.take(key, params, int(value)))
        else:
            store.penalize(key, value)
            got.append(None)
    for i, (a, b) in enumerate(zip(got, _expected(params), strict=True)):
        if a is None or b is None:
            assert a is b
            continue
        assert a.granted == b.granted, (i, a, b)
        assert a.wait == pytest.approx(b.wait, abs=1e-5), (i, a, b)


@pytest.mark.django_db
def test_the_database_budget_counts_what_it_granted_and_what_podium_refused() -> None:
    fake = FakeTime()
    store = DatabaseBucketStore(clock=fake.clock)
    pacer = _pacer(store, fake, key="counts")
    for _ in range(4):
        pacer.acquire()
    pacer.penalize(2.0)
    row = RateBudget.objects.get(key="counts")
    assert (row.granted, row.rate_limited) == (4, 1)
    assert store.counts("counts") == {"granted": 4, "rate_limited": 1}
    assert row.blocked_until == pytest.approx(fake.now + 2.0)


@pytest.mark.django_db
def test_the_database_budget_uses_the_database_clock_on_postgresql(on_postgres: bool) -> None:
    # Several machines share one budget only if they share one clock: PostgreSQL's, not theirs.
    store = DatabaseBucketStore()
    store.take("clock", BucketParams(0.2, 0.1), BULK)
    row = RateBudget.objects.get(key="clock")
    if on_postgres:
        with connection.cursor() as cursor:
            cursor.execute("SELECT EXTRACT(EPOCH FROM clock_timestamp())::float8")
            db_now = cursor.fetchone()[0]
        assert abs(row.last_now - db_now) < 5
    assert row.tat == pytest.approx(row.last_start + 0.2)


def test_redis_budget_counts_and_expires(redis_url: str) -> None:
    import redis

    fake = FakeTime()
    store = RedisBucketStore(redis_url, clock=fake.clock)
    key = uuid.uuid4().hex
    pacer = _pacer(store, fake, key=key)
    pacer.acquire()
    pacer.acquire()
    pacer.penalize(None)
    assert store.counts(key) == {"granted": 2, "rate_limited": 1}
    ttl = redis.Redis.from_url(redis_url).ttl(RedisBucketStore.PREFIX + key)
    assert 0 < ttl <= 86_400  # an idle budget does not stay in Redis for ever


def test_redis_budget_uses_the_server_clock(redis_url: str) -> None:
    store = RedisBucketStore(redis_url)
    key = uuid.uuid4().hex
    params = BucketParams(interval=0.5, lookahead=0.25)
    assert store.take(key, params, BULK).granted
    refused = store.take(key, params, BULK)
    assert not refused.granted and 0 < refused.wait <= 0.25 + 0.05
