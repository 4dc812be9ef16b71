"""One Podium request budget for every process of the deployment: in Redis when ``REDIS_URL`` is set, else
in the database.

Podium allows about 300 requests a minute per set of credentials, whoever sends them. Each web process
and each worker, on one machine or several, used to pace itself at the whole budget, so N workers sent N
times what Podium allows. Here the budget lives where they all see it, and the pacing rule
(``podium_client.ratelimit.take_slot``) runs as one atomic step on it: a Lua script in Redis, one
``UPDATE … RETURNING`` statement on a ``RateBudget`` row otherwise (SQLite and PostgreSQL). Times come
from the store's own clock (Redis ``TIME``, PostgreSQL ``statement_timestamp()``), so machines whose
clocks disagree still share one pace; SQLite serves one machine, whose clock it uses.

Priority: calls made while a web request is served (a person restoring a contact, resolving a merge,
an integration's lookup) are interactive (``InteractivePriority``), and so is the merge of a cluster a
person approved on its own (``dedup.workqueue``). Interactive callers book the next free slot at once;
bulk callers (scans, batches, resumes) take a slot only when it starts within half an interval, so a
person's call waits behind at most one bulk request, and bulk work still uses every slot nobody
interactive wants.

A ``rate_limit`` answer from Podium blocks the budget for its ``Retry-After``: every process backs off
together. If the store cannot be reached, each process paces itself alone at the same rate and logs
a warning (``TokenBucketPacer``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import OperationalError, connections
from django.http import HttpRequest, HttpResponse

from podium_client.ratelimit import (
    BULK,
    INTERACTIVE,
    SLACK,
    BucketParams,
    BucketUnavailable,
    Take,
    TokenBucketPacer,
    credentials_key,
    prioritized,
)

#: An idle budget's Redis key expires after a day; it is recreated on the next request.
REDIS_TTL_SECONDS = 86_400

_TAKE_LUA = """
local key = KEYS[1]
local interval = tonumber(ARGV[1])
local lookahead = tonumber(ARGV[2])
local priority = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local now = tonumber(ARGV[5])
local slack = tonumber(ARGV[6])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local tat = tonumber(redis.call('HGET', key, 'tat')) or 0
local blocked = tonumber(redis.call('HGET', key, 'blocked_until')) or 0
local start = math.max(tat, now, blocked)
if priority > 0 or start - now <= lookahead + slack then
  redis.call('HSET', key, 'tat', string.format('%.6f', start + interval))
  redis.call('HINCRBY', key, 'granted', 1)
  redis.call('EXPIRE', key, ttl)
  return {1, string.format('%.6f', start - now)}
end
return {0, string.format('%.6f', start - now - lookahead)}
"""

_PENALIZE_LUA = """
local key = KEYS[1]
local pause = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local blocked = tonumber(redis.call('HGET', key, 'blocked_until')) or 0
if now + pause > blocked then
  redis.call('HSET', key, 'blocked_until', string.format('%.6f', now + pause))
end
redis.call('HINCRBY', key, 'rate_limited', 1)
redis.call('EXPIRE', key, ttl)
return 1
"""


class RedisBucketStore:
    """The budget as a Redis hash (``dedup:budget:<key>``), changed only by Lua scripts (atomic).

    ``clock`` replaces Redis's ``TIME`` (tests); production leaves it None so every machine shares
    the server's clock.
    """

    PREFIX = "dedup:budget:"

    def __init__(self, url: str, *, clock: Callable[[], float] | None = None) -> None:
        import redis

        self._errors: tuple[type[BaseException], ...] = (
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
        )
        self.redis = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._take = self.redis.register_script(_TAKE_LUA)
        self._penalize = self.redis.register_script(_PENALIZE_LUA)
        self._clock = clock

    def _now(self) -> str:
        return "" if self._clock is None else repr(self._clock())

    def take(self, key: str, params: BucketParams, priority: int) -> Take:
        args: list[str | float | int] = [
            params.interval,
            params.lookahead,
            priority,
            REDIS_TTL_SECONDS,
            self._now(),
            SLACK,
        ]
        try:
            granted, wait = self._take(keys=[self.PREFIX + key], args=args)
        except self._errors as exc:
            raise BucketUnavailable(f"Redis: {type(exc).__name__}: {exc}") from exc
        return Take(int(granted) == 1, float(wait))

    def penalize(self, key: str, pause: float) -> None:
        try:
            self._penalize(keys=[self.PREFIX + key], args=[pause, REDIS_TTL_SECONDS, self._now()])
        except self._errors as exc:
            raise BucketUnavailable(f"Redis: {type(exc).__name__}: {exc}") from exc

    def counts(self, key: str) -> dict[str, int]:
        """Slots granted and Podium refusals counted for this budget (while its key lives)."""
        try:
            raw: Any = self.redis.hmget(self.PREFIX + key, ["granted", "rate_limited"])
        except self._errors as exc:
            raise BucketUnavailable(f"Redis: {type(exc).__name__}: {exc}") from exc
        return {"granted": int(raw[0] or 0), "rate_limited": int(raw[1] or 0)}


class DatabaseBucketStore:
    """The budget as a ``RateBudget`` row, changed by one ``UPDATE … RETURNING`` statement per request.

    The statement runs on the calling thread's connection: in autocommit (how every Podium call is
    made, between committed steps) the row is locked for that statement only. ``clock`` replaces the
    database's clock (tests); SQLite, which serves one machine, always uses this process's clock.
    """

    def __init__(self, using: str = "default", *, clock: Callable[[], float] | None = None) -> None:
        self.using = using
        self._clock = clock

    def _sql(self, vendor: str) -> tuple[str, str]:
        """(the expression of "now" in epoch seconds, the name of SQL's two-or-more-argument max)."""
        greatest = "GREATEST" if vendor == "postgresql" else "MAX"
        if vendor == "postgresql" and self._clock is None:
            return "EXTRACT(EPOCH FROM statement_timestamp())::float8", greatest
        return "%(now)s", greatest

    def _params(self, **values: Any) -> dict[str, Any]:
        values["now"] = (self._clock or time.time)()
        return values

    def take(self, key: str, params: BucketParams, priority: int) -> Take:
        from dedup.models import RateBudget

        conn = connections[self.using]
        now, greatest = self._sql(conn.vendor)
        q = conn.ops.quote_name
        table = q(RateBudget._meta.db_table)
        start = f"{greatest}({q('tat')}, {now}, {q('blocked_until')})"
        grant = f"(%(priority)s > 0 OR {start} - {now} <= %(lookahead)s + %(slack)s)"
        sql = (
            f"UPDATE {table} SET {q('last_now')} = {now}, {q('last_start')} = {start}, "
            f"{q('last_granted')} = {grant}, "
            f"{q('tat')} = CASE WHEN {grant} THEN {start} + %(interval)s ELSE {q('tat')} END, "
            f"{q('granted')} = {q('granted')} + CASE WHEN {grant} THEN 1 ELSE 0 END "
            f"WHERE {q('key')} = %(key)s RETURNING {q('last_now')}, {q('last_start')}, {q('last_granted')}"
        )
        values = self._params(
            key=key, priority=priority, lookahead=params.lookahead, interval=params.interval, slack=SLACK
        )
        row = self._execute(sql, values, key)
        at, begins, granted = float(row[0]), float(row[1]), bool(row[2])
        if granted:
            return Take(True, begins - at)
        return Take(False, begins - at - params.lookahead)

    def penalize(self, key: str, pause: float) -> None:
        from dedup.models import RateBudget

        conn = connections[self.using]
        now, greatest = self._sql(conn.vendor)
        q = conn.ops.quote_name
        sql = (
            f"UPDATE {q(RateBudget._meta.db_table)} SET "
            f"{q('blocked_until')} = {greatest}({q('blocked_until')}, {now} + %(pause)s), "
            f"{q('rate_limited')} = {q('rate_limited')} + 1 WHERE {q('key')} = %(key)s RETURNING {q('key')}"
        )
        self._execute(sql, self._params(key=key, pause=pause), key)

    def counts(self, key: str) -> dict[str, int]:
        """Slots granted and Podium refusals counted for this budget."""
        from dedup.models import RateBudget

        row = RateBudget.objects.using(self.using).filter(key=key).values("granted", "rate_limited").first()
        return (
            {"granted": int(row["granted"]), "rate_limited": int(row["rate_limited"])}
            if row
            else {
                "granted": 0,
                "rate_limited": 0,
            }
        )

    def _execute(self, sql: str, values: dict[str, Any], key: str) -> tuple[Any, ...]:
        conn = connections[self.using]
        try:
            for _ in range(2):
                with conn.cursor() as cursor:
                    cursor.execute(sql, values)
                    row = cursor.fetchone()
                if row is not None:
                    return tuple(row)
                self._create(key)
        except OperationalError as exc:
            if conn.in_atomic_block:
                raise
            raise BucketUnavailable(f"database: {exc}") from exc
        raise BucketUnavailable(f"the budget row {key[:8]}… could not be created")

    def _create(self, key: str) -> None:
        from dedup.models import RateBudget

        conn = connections[self.using]
        q = conn.ops.quote_name
        columns = (
            "key",
            "tat",
            "blocked_until",
            "last_now",
            "last_start",
            "last_granted",
            "granted",
            "rate_limited",
        )
        sql = (
            f"INSERT INTO {q(RateBudget._meta.db_table)} ({', '.join(q(c) for c in columns)}) "
            f"VALUES (%(key)s, 0, 0, 0, 0, %(no)s, 0, 0) ON CONFLICT ({q('key')}) DO NOTHING"
        )
        with conn.cursor() as cursor:
            cursor.execute(sql, {"key": key, "no": False})


Store = RedisBucketStore | DatabaseBucketStore

_stores: dict[str, Store] = {}
_pacers: dict[tuple[str, str, float], TokenBucketPacer] = {}
_lock = threading.Lock()


def budget_key() -> str:
    """The name of this deployment's budget: a hash of the Podium base URL and who Podium counts.

    With OAuth that is the client id (every token it is issued shares one budget), else the static
    access token.
    """
    identity = settings.PODIUM_CLIENT_ID if settings.PODIUM_REFRESH_TOKEN else settings.PODIUM_ACCESS_TOKEN
    return credentials_key(settings.PODIUM_BASE_URL, identity or "")


def store() -> Store:
    """Where this deployment keeps its budget: Redis when ``REDIS_URL`` is set, else the database."""
    name = settings.REDIS_URL or "database"
    with _lock:
        found = _stores.get(name)
        if found is None:
            found = RedisBucketStore(settings.REDIS_URL) if settings.REDIS_URL else DatabaseBucketStore()
            _stores[name] = found
        return found


def shared_pacer(requests_per_minute: float) -> TokenBucketPacer:
    """The pacer every client of this deployment's credentials uses (one object per process and rate)."""
    chosen = store()
    key = budget_key()
    name = (settings.REDIS_URL or "database", key, float(requests_per_minute))
    with _lock:
        pacer = _pacers.get(name)
        if pacer is None:
            pacer = TokenBucketPacer(chosen, key, requests_per_minute)
            _pacers[name] = pacer
        return pacer


def counts() -> dict[str, int] | None:
    """Slots granted and Podium ``rate_limit`` answers counted for this deployment's budget (None when
    the store cannot be read)."""
    try:
        return store().counts(budget_key())
    except BucketUnavailable:
        return None


class InteractivePriority:
    """Middleware: Podium calls made while a web request is served are interactive.

    Someone is waiting on the answer (a person restoring a contact or resolving a merge, an
    integration asking the lookup API), so those calls go before bulk work in the shared budget.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        with prioritized(INTERACTIVE):
            return self.get_response(request)


__all__ = [
    "BULK",
    "INTERACTIVE",
    "DatabaseBucketStore",
    "InteractivePriority",
    "RedisBucketStore",
    "budget_key",
    "counts",
    "shared_pacer",
    "store",
]
