"""A process sending Podium requests through a pacer, for ``tests/test_budget_processes.py`` and the bench.

``python -m tests.budget_worker --store redis|database|private --base-url URL --token T --rpm R
--seconds S [--start-at EPOCH] [--redis-url URL] [--margin M] [--priority P]``: from ``--start-at``
on, lists the organization's locations as fast as the pacer allows for ``--seconds``, then prints
one JSON line: requests sent and ``rate_limit`` answers.
``database`` needs Django settings (``DATABASE_URL``) and uses ``dedup.budget``'s store.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from podium_client import PodiumClient, RateLimitError
from podium_client.client import Pacer
from podium_client.ratelimit import RateLimiter, TokenBucketPacer, credentials_key


def _pacer(args: argparse.Namespace) -> Pacer:
    key = credentials_key(args.base_url, args.token + args.key_suffix)
    if args.store == "private":
        return RateLimiter(args.rpm, safety_margin=args.margin)
    if args.store == "redis":
        from dedup.budget import RedisBucketStore

        return TokenBucketPacer(RedisBucketStore(args.redis_url), key, args.rpm, safety_margin=args.margin)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dedup.settings")
    import django

    django.setup()
    from dedup.budget import DatabaseBucketStore

    return TokenBucketPacer(DatabaseBucketStore(), key, args.rpm, safety_margin=args.margin)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", choices=["redis", "database", "private"], required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--token", default="dev-token")
    parser.add_argument("--key-suffix", default="", help="keeps the budgets of separate test runs apart")
    parser.add_argument("--redis-url", default="")
    parser.add_argument("--rpm", type=float, required=True)
    parser.add_argument("--margin", type=float, default=0.02)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--start-at", type=float, default=0.0)
    parser.add_argument("--priority", type=int, default=0)
    args = parser.parse_args(argv)
    pacer = _pacer(args)
    client = PodiumClient(
        args.base_url, access_token=args.token, rate_limiter=pacer, max_retries=0, timeout=10
    )
    sent = limited = 0
    start_at = args.start_at or time.time()
    delay = start_at - time.time()
    if delay > 0:
        time.sleep(delay)
    # Every process stops at the same moment, ``--seconds`` after ``--start-at``: one that started late
    # (its imports slowed by a loaded machine) sends for less time, rather than stretching the window the
    # shared budget is measured over.
    # The wall clock, not the monotonic one: the shared budget's slots are wall-clock times (this
    # process's clock on SQLite, the server's ``statement_timestamp()`` on PostgreSQL).
    deadline = start_at + args.seconds
    with client, client.priority(args.priority):
        while time.time() < deadline:
            try:
                client.list_locations_page(limit=1)
            except RateLimitError:
                limited += 1
            sent += 1
    # How late this process began (its imports and connection took longer than the lead it was given).
    late = round(max(0.0, -delay), 3)
    print(json.dumps({"sent": sent, "rate_limited": limited, "seconds": args.seconds, "late": late}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
