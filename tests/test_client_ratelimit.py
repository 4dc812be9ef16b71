"""Client-side pacing keeps a long run under Podium's budget; the emulator's limit is a real window."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from podium_client import PodiumClient, RateLimitError
from podium_client.emulator import EmulatorServer
from podium_client.ratelimit import RateLimiter

# 3000 requests per minute: 50 requests in any second, 100 in any two.
BUDGET = 3000


def _hammer(client: PodiumClient, seconds: float, threads: int = 4) -> list[RateLimitError]:
    errors: list[RateLimitError] = []
    deadline = time.monotonic() + seconds

    def work() -> None:
        while time.monotonic() < deadline:
            try:
                client.list_locations_page(limit=1)
            except RateLimitError as exc:
                errors.append(exc)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return errors


def test_a_paced_client_stays_under_the_budget(
    emulator_factory: Callable[..., EmulatorServer], podium_factory: Callable[..., PodiumClient]
) -> None:
    # A two-second window: the server sees arrival times, which a loaded machine jitters by tens of
    # milliseconds; over two seconds that noise is small beside the client's 2% margin.
    server = emulator_factory(rate_limit=BUDGET, rate_window_s=2.0)
    client = podium_factory(server, requests_per_minute=BUDGET)
    # Eight threads so the client always wants more than the budget, even on a loaded machine where
    # one request takes longer than a few slots.
    _hammer(client, seconds=5.0, threads=8)
    stats = server.stats()
    total = stats["requests"]
    limited = stats["by_status"].get("429", 0)
    # Threads wanting far more than the budget still get about the budget (49/s with the client's 2%
    # margin), never more, and almost never bounce off the server's limit.
    assert total >= 0.8 * 5.0 * BUDGET / 60
    assert total <= 1.02 * 5.0 * BUDGET / 60 + 50
    assert limited / total < 0.03, stats


def test_an_unpaced_client_bounces_off_the_same_limit(
    emulator_factory: Callable[..., EmulatorServer], podium_factory: Callable[..., PodiumClient]
) -> None:
    # The control for the test above: without pacing, the same load is refused a lot.
    server = emulator_factory(rate_limit=BUDGET, rate_window_s=1.0)
    client = podium_factory(server, max_retries=0)
    errors = _hammer(client, seconds=1.5)
    stats = server.stats()
    assert errors and all(e.retry_after is not None and e.retry_after >= 1 for e in errors)
    assert stats["by_status"]["429"] / stats["requests"] > 0.5


def test_the_emulator_window_admits_exactly_the_budget(
    emulator_factory: Callable[..., EmulatorServer], podium_factory: Callable[..., PodiumClient]
) -> None:
    server = emulator_factory(rate_limit=120, rate_window_s=60.0)
    client = podium_factory(server, max_retries=0)
    ok = 0
    for _ in range(130):
        try:
            client.list_locations_page(limit=1)
            ok += 1
        except RateLimitError as exc:
            assert exc.http_status == 429 and exc.code == "rate_limit"
            assert exc.retry_after is not None and 1 <= exc.retry_after <= 60
    assert ok == 120
    assert server.stats()["rate_limited"] == 10


class RecordingPacer:
    """A pacer that never waits and remembers what the client told it."""

    def __init__(self) -> None:
        self.acquired: list[int] = []
        self.penalties: list[float | None] = []

    def acquire(self, priority: int = 0) -> float:
        self.acquired.append(priority)
        return 0.0

    def penalize(self, retry_after: float | None) -> None:
        self.penalties.append(retry_after)


def test_a_refusal_for_pace_pushes_back_the_shared_pacer(
    emulator_factory: Callable[..., EmulatorServer], podium_factory: Callable[..., PodiumClient]
) -> None:
    # Every process sharing the credentials shares one budget: a 429 must slow all of them, not one call.
    server = emulator_factory(fail_next=2, fault_statuses=[429], fault_retry_after=0)
    pacer = RecordingPacer()
    client = podium_factory(server, rate_limiter=pacer)
    with client.priority(5):
        client.list_locations_page(limit=1)
    client.list_locations_page(limit=1)
    assert pacer.penalties == [0.0, 0.0]
    # Each attempt waited for a slot, the retries too, at the caller's priority.
    assert pacer.acquired == [5, 5, 5, 0]
    server.configure(fail_next=1, fault_statuses=[503])
    client.list_locations_page(limit=1)
    assert pacer.penalties == [0.0, 0.0], "a server error is not a refusal for pace"


def test_the_limiter_spaces_calls_evenly_and_banks_no_burst() -> None:
    now = [100.0]
    slept: list[float] = []
    limiter = RateLimiter(600, safety_margin=0.0, clock=lambda: now[0], sleep=slept.append)
    waits = [limiter.acquire() for _ in range(5)]
    assert [round(w, 9) for w in waits] == [0.0, 0.1, 0.2, 0.3, 0.4]
    assert slept == waits[1:]
    now[0] += 10  # an idle spell does not bank a burst
    assert limiter.acquire() == 0.0
    assert round(limiter.acquire(), 9) == 0.1


def test_the_limiter_waits_out_a_retry_after() -> None:
    now = [0.0]
    limiter = RateLimiter(600, safety_margin=0.0, clock=lambda: now[0], sleep=lambda s: None)
    limiter.acquire()
    limiter.penalize(7.0)
    assert limiter.acquire() == 7.0
    limiter.penalize(None)  # no hint: one interval
    assert round(limiter.acquire(), 9) == 7.1


def test_the_limiter_is_shared_safely_between_threads() -> None:
    limiter = RateLimiter(60_000, safety_margin=0.0)  # one slot per millisecond
    stamps: list[float] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(50):
            limiter.acquire()
            with lock:
                stamps.append(time.monotonic())

    threads = [threading.Thread(target=work) for _ in range(4)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # 200 slots of 1 ms each cannot all be taken in much less than 200 ms.
    assert time.monotonic() - started >= 0.19
    assert len(stamps) == 200
