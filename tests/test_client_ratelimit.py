"""Client-side pacing keeps a long run under the budget; the emulator's limit is a real window."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from podium_client import PodiumClient, RateLimitError
from podium_client.emulator import EmulatorServer
from podium_client.ratelimit import RateLimiter

# 3000 requests per minute enforced over a 1-second sliding window: 50 requests in any second.
BUDGET = 3000


def _hammer(client: PodiumClient, seconds: float, threads: int = 4) -> list[BaseException]:
    errors: list[BaseException] = []
    deadline = time.monotonic() + seconds

    def work() -> None:
        while time.monotonic() < deadline:
            try:
                client.list_locations()
            except RateLimitError as exc:
                errors.append(exc)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return errors


def test_paced_client_stays_under_the_budget(
    emulator_factory: Callable[..., EmulatorServer], podium_factory: Callable[..., PodiumClient]
) -> None:
    server = emulator_factory(rate_limit=BUDGET, rate_window_s=1.0)
    client = podium_factory(server, requests_per_minute=BUDGET)
    _hammer(client, seconds=5.0)
    stats = server.stats()
    total = stats["requests"]
    limited = stats["by_status"].get("429", 0)
    # Four threads wanting far more than the budget still get about the budget (49/s with the
    # client's 2% margin), and almost never bounce off the server's limit.
    assert total >= 0.85 * 5.0 * BUDGET / 60
    assert limited / total < 0.01, stats


def test_unpaced_client_bounces_off_the_same_limit(
    emulator_factory: Callable[..., EmulatorServer], podium_factory: Callable[..., PodiumClient]
) -> None:
    # The control for the test above: without pacing, the same load is refused a lot.
    server = emulator_factory(rate_limit=BUDGET, rate_window_s=1.0)
    client = podium_factory(server, max_retries=0)
    errors = _hammer(client, seconds=1.5)
    stats = server.stats()
    assert errors and all(e.retry_after is not None and e.retry_after >= 1 for e in errors)  # type: ignore[attr-defined]
    assert stats["by_status"]["429"] / stats["requests"] > 0.5


def test_emulator_window_admits_exactly_the_budget(
    emulator_factory: Callable[..., EmulatorServer], podium_factory: Callable[..., PodiumClient]
) -> None:
    server = emulator_factory(rate_limit=120, rate_window_s=60.0)
    client = podium_factory(server, max_retries=0)
    ok = 0
    for _ in range(130):
        try:
            client.list_locations()
            ok += 1
        except RateLimitError as exc:
            assert exc.http_status == 429 and exc.code == "rate_limited"
            assert exc.retry_after is not None and 1 <= exc.retry_after <= 60
    assert ok == 120
    assert server.stats()["rate_limited"] == 10


def test_limiter_spaces_calls_evenly() -> None:
    now = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)

    limiter = RateLimiter(600, safety_margin=0.0, clock=lambda: now[0], sleep=sleep)
    waits = [limiter.acquire() for _ in range(5)]
    assert waits == [0.0, 0.1, 0.2, 0.30000000000000004, 0.4] or all(
        abs(w - 0.1 * i) < 1e-9 for i, w in enumerate(waits)
    )
    now[0] += 10  # an idle spell does not bank a burst
    assert limiter.acquire() == 0.0
    assert limiter.acquire() > 0.09


def test_limiter_is_shared_safely_between_threads() -> None:
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
