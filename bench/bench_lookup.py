"""Lookup API latency at a million indexed contacts: p50/p95 over a few thousand lookups (target p95 ≤ 20 ms).

Runs against its own PostgreSQL database (``BENCH_DB``, default ``dedup_bench_lookup``, next to
``BENCH_PG_URL``'s, default ``postgres://postgres@127.0.0.1:5432/postgres``), filled on first use in bulk
(COPY: contacts, their phone keys and locations, 5 % of them in two-member clusters) and reused afterwards.
Each lookup is a whole request through Django's test ``Client`` (middleware, token, rate limit, view, JSON)
with production settings (``DEBUG`` off), so the figures are server time without the network. Numbers are asked in national spellings
(``0412 345 678``), 10 % of them held by nobody.

    .venv/bin/python bench/bench_lookup.py [--contacts 1000000] [--lookups 3000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BENCH_DB = os.environ.get("BENCH_DB", "dedup_bench_lookup")
LOCATIONS = 10
CLUSTERED_SHARE = 0.05
TARGET_P95_MS = 20.0
CHUNK = 50_000


def _database_url() -> str:
    base = os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    return urlunsplit(urlsplit(base)._replace(path=f"/{BENCH_DB}"))


def _ensure_database(url: str) -> None:
    import psycopg

    admin = urlunsplit(urlsplit(url)._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [BENCH_DB]).fetchone():
            conn.execute(f'CREATE DATABASE "{BENCH_DB}"')


def _setup_django(url: str) -> None:
    # Production settings (DEBUG off: no query log, no debug wrappers), with throwaway keys.
    os.environ.update(
        DATABASE_URL=url, DEBUG="0", DJANGO_SETTINGS_MODULE="dedup.settings", SECURE_SSL_REDIRECT="0",
        ALLOWED_HOSTS="testserver,localhost", SECRET_KEY="bench-" + "s" * 50, AUDIT_HMAC_KEY="bench-" + "a" * 50,
        LOG_LEVEL="ERROR",
    )  # fmt: skip
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    settings.ALLOWED_HOSTS = ["testserver", "localhost"]
    settings.API_LOOKUP_RATE_LIMIT = "1000000/m"  # measure the lookup, not the limiter's refusals
    call_command("migrate", verbosity=0)


def _phone(i: int) -> str:
    """The i-th distinct Australian mobile number (E.164); the clustered ones are shared by two contacts."""
    return f"+61412{i:06d}" if i < 1_000_000 else f"+61413{i - 1_000_000:06d}"


def _fill(n: int) -> None:
    from django.db import connection, transaction

    from dedup.indexing import insert_rows
    from dedup.models import Cluster, ClusterMember, Contact, ContactKey, Location

    if Contact.objects.count() >= n:
        return
    print(f"filling {n:,} contacts (bulk, once) …", flush=True)
    started = time.perf_counter()
    with connection.cursor() as cursor:
        for model in (ClusterMember, Cluster.locations.through, Cluster, ContactKey, Contact, Location):
            cursor.execute(f"TRUNCATE {model._meta.db_table} CASCADE")
    locations = [
        Location.objects.create(uid=f"bench-loc-{k}", name=f"Bench {k}", country="AU")
        for k in range(LOCATIONS)
    ]
    pairs = int(n * CLUSTERED_SHARE / 2)
    now = datetime.now(UTC)
    contact_cols = [
        "uid", "location_id", "location_uids", "name", "normalized_name", "channels", "tags", "attributes",
        "address", "conversations", "field_count", "marketing_opt_out", "sms_opt_out", "email_opt_out",
        "conversation_count", "created_at", "updated_at", "deleted_at", "merged_into_uid", "indexed_at",
    ]  # fmt: skip

    def number_of(i: int) -> int:
        # Contacts 2k and 2k+1 (k < pairs) share a number; everyone else has their own.
        return i // 2 if i < 2 * pairs else i - pairs

    for start in range(0, n, CHUNK):
        rows = []
        for i in range(start, min(start + CHUNK, n)):
            loc = locations[(i // 2) % LOCATIONS]
            national = "0" + _phone(number_of(i))[3:]
            channels = json.dumps([{"type": "PHONE", "identifier": national, "label": None,
                                    "marketingOptedInLocationUids": [], "transactionalOptedOutAt": None}])  # fmt: skip
            rows.append((
                f"bench-{i:07d}", loc.pk, json.dumps([loc.uid]), f"Person {i}", f"person {i}", channels, "[]", "[]",
                None, "[]", 2, False, False, False, 0, now, now - timedelta(seconds=i % 86400), None, "", now,
            ))  # fmt: skip
        with transaction.atomic():
            insert_rows(Contact._meta.db_table, contact_cols, rows)
        print(f"  contacts {min(start + CHUNK, n):,}", flush=True)
    ids = dict(Contact.objects.values_list("uid", "pk"))
    for start in range(0, n, CHUNK):
        rows = []
        for i in range(start, min(start + CHUNK, n)):
            loc = locations[(i // 2) % LOCATIONS]
            e164 = _phone(number_of(i))
            rows.append((ids[f"bench-{i:07d}"], loc.pk, "PHONE", e164, "0" + e164[3:], ""))
        with transaction.atomic():
            insert_rows(
                ContactKey._meta.db_table,
                ["contact_id", "location_id", "kind", "key", "raw", "extension"],
                rows,
            )
    cluster_rows = []
    for k in range(pairs):
        loc = locations[k % LOCATIONS]
        cluster_rows.append((
            f"cl_bench{k:09d}", json.dumps([_phone(k)]), loc.pk, False, "auto", "0.90", True, "open", "[]", "[]", 2,
            f"bench-{2 * k:07d}", "", now, now, 1,
        ))  # fmt: skip
    with transaction.atomic():
        insert_rows(
            Cluster._meta.db_table,
            ["cluster_id", "natural_keys", "location_id", "cross_location", "kind", "confidence", "auto_merge",
             "status", "reasons", "pair_scores", "member_count", "suggested_primary_uid", "chosen_primary_uid",
             "created_at", "updated_at", "policy_version"],
            cluster_rows,
        )  # fmt: skip
        cluster_pk = dict(Cluster.objects.values_list("cluster_id", "pk"))
        insert_rows(
            ClusterMember._meta.db_table,
            ["cluster_id", "contact_id", "location_id", "updated_at_when_scored"],
            [(cluster_pk[f"cl_bench{k:09d}"], ids[f"bench-{2 * k + m:07d}"], locations[k % LOCATIONS].pk, now)
             for k in range(pairs) for m in (0, 1)],
        )  # fmt: skip
    with connection.cursor() as cursor:
        for model in (Contact, ContactKey, Cluster, ClusterMember):
            cursor.execute(f"ANALYZE {model._meta.db_table}")
    print(f"filled in {time.perf_counter() - started:.0f}s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--lookups", type=int, default=3000)
    args = parser.parse_args()
    url = _database_url()
    _ensure_database(url)
    _setup_django(url)
    _fill(args.contacts)

    from django.core.cache import cache
    from django.test import Client

    from dedup.api_tokens import create_token
    from dedup.models import ApiToken, Contact

    ApiToken.objects.filter(name="bench").delete()
    token = create_token("bench", [f"bench-loc-{k}" for k in range(LOCATIONS)], actor="worker:bench").token
    cache.clear()
    client = Client(headers={"Authorization": f"Bearer {token}"})
    rng = random.Random(11)
    total = Contact.objects.count()
    pairs = int(total * CLUSTERED_SHARE / 2)
    distinct = total - pairs
    queries = []
    for _ in range(args.lookups):
        miss = rng.random() < 0.10
        i = rng.randrange(distinct) if not miss else 1_000_000 + rng.randrange(1_000_000)
        # The location the number's holder is at (misses ask anywhere).
        first_holder = 2 * i if i < pairs else i + pairs
        loc = (
            f"bench-loc-{(first_holder // 2) % LOCATIONS}"
            if not miss
            else f"bench-loc-{rng.randrange(LOCATIONS)}"
        )
        e164 = _phone(i)
        national = f"0{e164[3:6]} {e164[6:9]} {e164[9:]}"
        queries.append((f"/api/v1/lookup?phone={quote(national)}&location={loc}", miss, i < pairs))
    for path, _miss, _c in queries[:50]:  # warm up connections and caches
        client.get(path)
    times: list[float] = []
    found = clustered = 0
    for path, miss, in_cluster in queries:
        t = time.perf_counter()
        response = client.get(path)
        times.append((time.perf_counter() - t) * 1000)
        body = response.json()
        assert response.status_code == 200, body
        assert (body["contact"] is None) == miss, (path, body)
        if in_cluster:
            assert body["cluster"] is not None and len(body["cluster"]["memberUids"]) == 2, body
            clustered += 1
        found += 0 if miss else 1
    times.sort()
    p50 = statistics.median(times)
    p95 = times[int(len(times) * 0.95) - 1]
    print(f"lookup API at {total:,} indexed contacts ({pairs:,} two-member clusters), {len(times)} lookups "
          f"({found} found, {clustered} in a cluster, {len(times) - found} held by nobody):")  # fmt: skip
    print(
        f"  p50 {p50:.2f} ms   p95 {p95:.2f} ms   max {times[-1]:.2f} ms   (target p95 ≤ {TARGET_P95_MS:.0f} ms)"
    )
    if p95 > TARGET_P95_MS:
        print("  OVER TARGET")
        sys.exit(1)


if __name__ == "__main__":
    main()
