"""Client-side pacing so a long run stays under Podium's request budget instead of bouncing off 429s.

``RateLimiter`` paces one process. ``TokenBucketPacer`` paces every process that uses the same
credentials against one budget kept in a ``BucketStore`` (the product keeps it in Redis or its
database, ``dedup.budget``), with priorities so that a person waiting is served before bulk work.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

logger = logging.getLogger("podium_client")


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


# --- one budget shared by every process using the same credentials --------------------------------------

#: Priorities a caller may ask for. Bulk work (scans, batches of merges, resumes) draws what is free;
#: interactive work (a person or an integration waiting on an answer) is served before any bulk caller.
BULK = 0
INTERACTIVE = 10

#: Rounding slack when comparing times (stores keep microseconds), so a caller told to come back at a
#: time is served then rather than told to wait a few nanoseconds more.
SLACK = 1e-4

_context_priority: contextvars.ContextVar[int] = contextvars.ContextVar("podium_priority", default=BULK)


def current_priority() -> int:
    """The priority set for this context with ``prioritized`` (``BULK`` when none was)."""
    return _context_priority.get()


@contextlib.contextmanager
def prioritized(level: int) -> Iterator[None]:
    """Calls made in this block (this thread or task context) ask a shared budget for ``level``.

    What ``PodiumClient.priority`` does for one client, for every client the block creates: a web
    request or a worker's task sets it once and every Podium call made on its behalf inherits it.
    """
    token = _context_priority.set(level)
    try:
        yield
    finally:
        _context_priority.reset(token)


def credentials_key(base_url: str, identity: str) -> str:
    """The name of the budget of one set of Podium credentials, safe to store and log.

    ``identity`` is what Podium counts requests against: the OAuth client id, else the static access
    token. Only a hash is kept, so the budget's name never reveals a secret.
    """
    digest = hashlib.sha256(f"{base_url.rstrip('/')}\x00{identity}".encode()).hexdigest()
    return digest[:32]


@dataclass(frozen=True, slots=True)
class Take:
    """A store's answer to one request for a slot.

    ``granted``: the slot is this caller's and starts ``wait`` seconds from now (it sleeps that long).
    Otherwise ``wait`` is how long to sleep before asking again.
    """

    granted: bool
    wait: float


@dataclass(frozen=True, slots=True)
class BucketParams:
    """The arithmetic of one budget.

    ``interval``: seconds between two request starts (60 / requests per minute, widened by the safety
    margin). ``lookahead``: how far ahead a bulk caller may book a slot; interactive callers book any
    distance ahead, so they are never queued behind more than one bulk booking.
    """

    interval: float
    lookahead: float


class BucketStore(Protocol):
    """Where a shared budget lives: each call is one atomic step on the state of ``key``."""

    def take(self, key: str, params: BucketParams, priority: int) -> Take: ...

    def penalize(self, key: str, pause: float) -> None: ...


class BucketUnavailable(Exception):
    """The store of a shared budget could not be reached (the pacer falls back to local pacing)."""


@dataclass
class BucketState:
    """The state of one budget: a token bucket of one token kept as its theoretical arrival time.

    ``tat`` is when the next request may start, ``blocked_until`` the end of Podium's last refusal.
    ``granted`` and ``rate_limited`` count what happened (monitoring).
    """

    tat: float = 0.0
    blocked_until: float = 0.0
    granted: int = 0
    rate_limited: int = 0


def take_slot(state: BucketState, now: float, params: BucketParams, priority: int) -> Take:
    """The budget's rule, applied to ``state`` in place (stores run it atomically; Redis runs it in Lua).

    A slot starts at the later of ``tat``, now and the end of a penalty; idle time is not banked, so
    no burst follows a quiet spell (a burst on top of the steady rate is what trips Podium's sliding
    window). A bulk caller gets the slot only when it starts within ``lookahead``; otherwise it is told
    when to ask again, and an interactive caller arriving meanwhile books that slot first.
    """
    start = max(state.tat, now, state.blocked_until)
    if priority > BULK or start - now <= params.lookahead + SLACK:
        state.tat = start + params.interval
        state.granted += 1
        return Take(True, start - now)
    return Take(False, start - now - params.lookahead)


def block(state: BucketState, now: float, pause: float) -> None:
    """Podium refused a call for pace: nobody starts a request before ``now + pause``."""
    state.blocked_until = max(state.blocked_until, now + pause)
    state.rate_limited += 1


class MemoryBucketStore:
    """A budget shared by the threads of one process (tests, and a process without a shared store)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.states: dict[str, BucketState] = {}

    def take(self, key: str, params: BucketParams, priority: int) -> Take:
        with self._lock:
            return take_slot(self.states.setdefault(key, BucketState()), self._clock(), params, priority)

    def penalize(self, key: str, pause: float) -> None:
        with self._lock:
            block(self.states.setdefault(key, BucketState()), self._clock(), pause)


class TokenBucketPacer:
    """The client's ``Pacer`` over a shared ``BucketStore``: every process with the same ``key`` shares
    one budget of ``requests_per_minute``.

    ``acquire(priority)`` books a slot and sleeps until it starts; the priority is the larger of the
    caller's and the context's (``prioritized``). ``penalize(retry_after)`` blocks every process of the
    budget until Podium's ``Retry-After`` has passed (``default_penalty`` seconds when it sent none).
    When the store cannot be reached the pacer paces this process alone at the same rate (logging a
    warning at most once a minute) rather than stopping the work: Podium's own refusals then set
    the pace.
    """

    def __init__(
        self,
        store: BucketStore,
        key: str,
        requests_per_minute: float,
        *,
        safety_margin: float = 0.02,
        lookahead: float | None = None,
        default_penalty: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if requests_per_minute <= 0:
            raise ValueError("requests_per_minute must be positive")
        interval = 60.0 / requests_per_minute * (1.0 + safety_margin)
        self.store = store
        self.key = key
        self.requests_per_minute = requests_per_minute
        self.params = BucketParams(interval, interval / 2 if lookahead is None else lookahead)
        self.default_penalty = default_penalty
        self._sleep = sleep
        self._fallback = RateLimiter(requests_per_minute, safety_margin, sleep=sleep)
        self._warned_at: float | None = None

    def acquire(self, priority: int = BULK) -> float:
        """Block until this caller may send one request; returns the seconds waited."""
        level = max(priority, current_priority())
        waited = 0.0
        while True:
            try:
                take = self.store.take(self.key, self.params, level)
            except BucketUnavailable as exc:
                self._warn(exc)
                return waited + self._fallback.acquire(level)
            if take.granted:
                if take.wait > 0:
                    self._sleep(take.wait)
                    waited += take.wait
                return waited
            # At least a millisecond, so a clock that moves in coarse steps cannot make this spin.
            pause = max(take.wait, 0.001)
            self._sleep(pause)
            waited += pause

    def penalize(self, retry_after: float | None) -> None:
        """Podium answered ``rate_limit``: every process of this budget waits it out."""
        pause = retry_after if retry_after is not None else self.default_penalty
        try:
            self.store.penalize(self.key, pause)
        except BucketUnavailable as exc:
            self._warn(exc)
        self._fallback.penalize(pause)

    def _warn(self, exc: BucketUnavailable) -> None:
        now = time.monotonic()
        if self._warned_at is None or now - self._warned_at >= 60:
            self._warned_at = now
            logger.warning("the shared Podium budget is unreachable (%s); pacing this process alone", exc)
