"""Client-side pacing so a long run stays under Podium's request budget instead of bouncing off 429s."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class RateLimiter:
    """Spaces requests evenly so at most `requests_per_minute` start in any 60-second window.

    Smooth spacing (rather than a token bucket with a burst) is what keeps a sliding-window server
    limit happy: a bucket's burst is spent on top of the steady rate and overshoots the window. The
    interval is widened by `safety_margin` because the server measures arrival times, which jitter
    by network and scheduling delay; without slack, a run at exactly the budget trips the server's
    window about half the time. One limiter is shared by every thread using the client: each caller
    reserves the next free slot under a lock and sleeps outside it.
    """

    def __init__(
        self,
        requests_per_minute: float,
        safety_margin: float = 0.02,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if requests_per_minute <= 0:
            raise ValueError("requests_per_minute must be positive")
        self.requests_per_minute = requests_per_minute
        self.interval = 60.0 / requests_per_minute * (1.0 + safety_margin)
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next_slot = 0.0

    def acquire(self, priority: int = 0) -> float:
        """Block until this caller may send a request; returns the seconds waited.

        A private limiter serves callers in arrival order; ``priority`` matters only to a shared budget.
        """
        with self._lock:
            now = self._clock()
            slot = max(now, self._next_slot)
            self._next_slot = slot + self.interval
        wait = slot - now
        if wait > 0:
            self._sleep(wait)
        return max(wait, 0.0)

    def penalize(self, retry_after: float | None) -> None:
        """Podium refused a call for pace: push the next free slot past its ``Retry-After`` (or one interval)."""
        pause = retry_after if retry_after is not None else self.interval
        with self._lock:
            self._next_slot = max(self._next_slot, self._clock() + pause)
