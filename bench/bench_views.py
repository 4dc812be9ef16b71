"""Server time and query count of the review queue and a cluster page with 100,000 open clusters.

Runs against its own PostgreSQL database (``dedup_bench_views``, or ``$BENCH_DB``, next to ``BENCH_PG_URL``'s, default
``postgres://postgres@127.0.0.1:5432/postgres``), created and filled on first use (bulk inserts, about a
minute) and reused afterwards. Times are measured in-process through Django's test ``Client`` (the whole
request: middleware, session, view, template), so they are server time without the network.

    .venv/bin/python bench/bench_views.py [--clusters 100000] [--samples 60]

Prints p50/p95 per page for an admin (every location) and a manager (3 of 10 locations), and the number
of queries for 25 and 100 rows per page, which must be the same.
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BENCH_DB = os.environ.get("BENCH_DB", "dedup_bench_views")
LOCATIONS = 10
TARGET_P95_MS = 150.0


def _database_url() -> str:
    base = os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    parts = urlsplit(base)
    return urlunsplit(parts._replace(path=f"/{BENCH_DB}"))


def _ensure_database(url: str) -> None:
    import psycopg

    admin = urlunsplit(urlsplit(url)._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [BENCH_DB]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{BENCH_DB}"')


def _setup_django(url: str) -> None:
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DEBUG", "1")
    os.environ["DJANGO_SETTINGS_MODULE"] = "dedup.settings_test"
    import django

    django.setup()
    from django.conf import settings

    settings.ALLOWED_HOSTS = ["testserver", "localhost"]
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


FIRST = ["Maria", "Wei", "Jack", "Olivia", "Noah", "Aisha", "Liam", "Priya", "Mateo", "Chloe", "Tane", "Sofia"]
LAST = ["Garcia", "Chen", "Smith", "Nguyen", "Williams", "Patel", "Brown", "Kaur", "Jones", "Taylor", "Ngata"]


def _fill(n_clusters: int) -> None:
    """Bulk-create ``n_clusters`` open clusters (2–4 members each) with their contacts, keys and scores."""
    from django.db import transaction

    from dedup.clustering import stable_cluster_id
    from dedup.models import Cluster, ClusterMember, Contact, ContactKey, Location
    from dedup.records import MemberRecord
    from dedup.scoring import assess_cluster
    from dedup.survivorship import choose_primary

    have = Cluster.objects.filter(status=Cluster.OPEN).count()
    if have >= n_clusters:
        print(f"reusing {have:,} open clusters in {BENCH_DB}")
        return
    print(f"creating {n_clusters - have:,} open clusters in {BENCH_DB} …", flush=True)
    started = time.perf_counter()
    rng = random.Random(2026)
    locations = []
    for i in range(LOCATIONS):
        loc, _ = Location.objects.get_or_create(uid=f"loc_bench_{i:02d}", defaults={"name": f"Bench site {i:02d}"})
        locations.append(loc)
    through = Cluster.locations.through
    batch = 5000
    now = datetime(2026, 1, 1, tzinfo=UTC)
    seq = Contact.objects.count()
    for start in range(have, n_clusters, batch):
        count = min(batch, n_clusters - start)
        contacts: list[Contact] = []
        keys: list[tuple[int, str, str]] = []  # (contact index, e164, raw)
        plans = []
        for _ in range(count):
            loc = rng.choice(locations)
            size = rng.choice((2, 2, 2, 3, 3, 4))
            first, last = rng.choice(FIRST), rng.choice(LAST)
            e164 = f"+614{rng.randrange(10**7, 10**8)}"
            same_name = rng.random() < 0.6
            members = []
            for m in range(size):
                seq += 1
                name = f"{first} {last}" if same_name or m == 0 else f"{rng.choice(FIRST)} {last}"
                updated = now - timedelta(days=rng.randrange(400))
                raw = [e164, "0" + e164[3:6] + " " + e164[6:9] + " " + e164[9:], "(0" + e164[3] + ") " + e164[4:]][m % 3]
                contacts.append(Contact(
                    uid=f"ct_b{seq:08d}_bench", location=loc, name=name, normalized_name=name.lower(),
                    channels=[{"type": "PHONE", "identifier": raw}], tags=["VIP"] if m % 2 else [],
                    field_count=2 + m % 2, marketing_opt_out=rng.random() < 0.1, updated_at=updated,
                    created_at=updated,
                ))
                keys.append((len(contacts) - 1, e164, raw))
                members.append(MemberRecord.build(
                    uid=f"ct_b{seq:08d}_bench", location_uid=loc.uid, updated_at=updated, name=name,
                    phone_channels=[(raw, e164)], tags=["VIP"] if m % 2 else [],
                ))
            plans.append((loc, e164, members))
        with transaction.atomic():
            created = Contact.objects.bulk_create(contacts, batch_size=5000)
            ContactKey.objects.bulk_create(
                [ContactKey(contact=created[i], location=created[i].location, kind="PHONE", key=k, raw=r)
                 for i, k, r in keys],
                batch_size=5000,
            )
            clusters = []
            for loc, e164, members in plans:
                a = assess_cluster(members)
                clusters.append(Cluster(
                    cluster_id=stable_cluster_id([m.uid for m in members]), natural_keys=[e164], location=loc,
                    kind=Cluster.AUTO if a.auto_merge else Cluster.REVIEW,
                    confidence=Decimal(f"{a.confidence:.2f}"), auto_merge=a.auto_merge, status=Cluster.OPEN,
                    reasons=list(a.reasons), pair_scores=[a.pairs[k].to_dict() for k in sorted(a.pairs)],
                    member_count=len(members), suggested_primary_uid=choose_primary(members).uid,
                ))
            clusters = Cluster.objects.bulk_create(clusters, batch_size=5000)
            by_uid = {c.uid: c for c in created}
            ClusterMember.objects.bulk_create(
                [ClusterMember(cluster=cl, contact=by_uid[m.uid], location=loc,
                               updated_at_when_scored=m.updated_at)
                 for cl, (loc, _e, members) in zip(clusters, plans, strict=True) for m in members],
                batch_size=5000,
            )
            through.objects.bulk_create(
                [through(cluster_id=cl.pk, location_id=loc.pk) for cl, (loc, _e, _m) in zip(clusters, plans, strict=True)],
                batch_size=5000,
            )
        print(f"  {start + count:,} clusters", flush=True)
    print(f"filled in {time.perf_counter() - started:.1f} s")


def _fill_cross(n_cross: int) -> None:
    """Open cross-location clusters (two members at two locations): a manager reads some, decides few."""
    from django.db import transaction

    from dedup.clustering import stable_cluster_id
    from dedup.models import Cluster, ClusterMember, Contact, Location

    have = Cluster.objects.filter(status=Cluster.OPEN, cross_location=True).count()
    if have >= n_cross:
        return
    rng = random.Random(99)
    locations = list(Location.objects.filter(uid__startswith="loc_bench_").order_by("uid"))
    now = datetime(2026, 1, 1, tzinfo=UTC)
    seq = Contact.objects.count()
    with transaction.atomic():
        contacts, pairs = [], []
        for _ in range(n_cross - have):
            a, b = rng.sample(locations, 2)
            first, last = rng.choice(FIRST), rng.choice(LAST)
            for loc in (a, b):
                seq += 1
                contacts.append(Contact(uid=f"ct_x{seq:08d}_bench", location=loc, name=f"{first} {last}",
                                        normalized_name=f"{first} {last}".lower(), updated_at=now, created_at=now))
            pairs.append((a, b))
        created = Contact.objects.bulk_create(contacts, batch_size=5000)
        clusters = Cluster.objects.bulk_create(
            [Cluster(cluster_id=stable_cluster_id([created[2 * i].uid, created[2 * i + 1].uid], True), location=None,
                     cross_location=True, kind=Cluster.CROSS, confidence=Decimal(rng.choice(("0.80", "0.95", "1.00"))),
                     status=Cluster.OPEN, member_count=2, suggested_primary_uid=created[2 * i].uid)
             for i in range(len(pairs))],
            batch_size=5000,
        )
        ClusterMember.objects.bulk_create(
            [ClusterMember(cluster=cl, contact=created[2 * i + m], location=pairs[i][m])
             for i, cl in enumerate(clusters) for m in (0, 1)],
            batch_size=5000,
        )
        through = Cluster.locations.through
        through.objects.bulk_create(
            [through(cluster_id=cl.pk, location_id=loc.pk) for i, cl in enumerate(clusters) for loc in pairs[i]],
            batch_size=5000,
        )
    print(f"added {n_cross - have:,} cross-location clusters")


def _vacuum() -> None:
    """What autovacuum does after a bulk load: statistics and the visibility map (index-only counts)."""
    from django.db import connection

    with connection.cursor() as cursor:
        for table in ("dedup_cluster", "dedup_cluster_locations", "dedup_clustermember", "dedup_contact"):
            cursor.execute(f"VACUUM ANALYZE {table}")


def _users() -> tuple[object, object]:
    from django.contrib.auth.models import Group, User

    from dedup.models import Location, LocationGrant
    from dedup.roles import ADMIN, MANAGER

    admin, created = User.objects.get_or_create(username="bench_admin")
    if created:
        admin.groups.add(Group.objects.get(name=ADMIN))
    manager, created = User.objects.get_or_create(username="bench_manager")
    if created:
        manager.groups.add(Group.objects.get(name=MANAGER))
        for loc in Location.objects.filter(uid__in=["loc_bench_00", "loc_bench_01", "loc_bench_02"]):
            LocationGrant.objects.create(user=manager, location=loc)
    return admin, manager


def _detail_path(rng: random.Random, ids: list[str]) -> str:
    return f"/clusters/{rng.choice(ids)}/"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def _measure(client: object, paths: list[str]) -> list[float]:
    times = []
    for path in paths:
        t0 = time.perf_counter()
        response = client.get(path)  # type: ignore[attr-defined]
        times.append((time.perf_counter() - t0) * 1000)
        assert response.status_code == 200, (path, response.status_code)
    return times


def _queries(client: object, path: str) -> int:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as ctx:
        response = client.get(path)  # type: ignore[attr-defined]
    assert response.status_code == 200
    return len(ctx.captured_queries)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=60)
    args = parser.parse_args()

    url = _database_url()
    _ensure_database(url)
    _setup_django(url)
    _fill(args.clusters)
    _fill_cross(args.clusters // 50)
    _vacuum()

    from django.test import Client

    from dedup.models import Cluster

    admin, manager = _users()
    rng = random.Random(7)
    open_total = Cluster.objects.filter(status=Cluster.OPEN).count()
    print(f"\n{open_total:,} open clusters; {args.samples} samples per row, after 5 warm-up requests\n")
    print(f"{'page':<44} {'user':<8} {'p50 ms':>8} {'p95 ms':>8} {'queries':>8}")
    worst = 0.0
    for label, user in (("admin", admin), ("manager", manager)):
        client = Client()
        client.force_login(user)  # type: ignore[arg-type]
        visible = list(
            Cluster.objects.filter(status=Cluster.OPEN, location__uid__in=["loc_bench_00", "loc_bench_01"])
            .values_list("cluster_id", flat=True)[:2000]
        )
        cases: list[tuple[str, Callable[[], str]]] = [
            ("/clusters/ (25 rows, first pages)", lambda: f"/clusters/?page={rng.randint(1, 20)}"),
            ("/clusters/?per_page=100", lambda: f"/clusters/?per_page=100&page={rng.randint(1, 20)}"),
            ("/clusters/?kind=review&sort=confidence", lambda: f"/clusters/?kind=review&sort=confidence&page={rng.randint(1, 5)}"),
            ("/clusters/ (last pages)", lambda: f"/clusters/?page={rng.randint(1180, 1200)}"),
            ("/clusters/?q=garcia", lambda: f"/clusters/?q=garcia&page={rng.randint(1, 3)}"),
            ("/clusters/approve-matching/", lambda: "/clusters/approve-matching/"),
            ("/clusters/<id>/", functools.partial(_detail_path, rng, visible)),
            ("/ (dashboard: counts and charts)", lambda: "/"),
        ]
        for name, make in cases:
            _measure(client, [make() for _ in range(5)])
            times = _measure(client, [make() for _ in range(args.samples)])
            p50, p95 = statistics.median(times), _percentile(times, 0.95)
            if name.startswith("/clusters/"):  # the target covers the queue and the review page
                worst = max(worst, p95)
            print(f"{name:<44} {label:<8} {p50:>8.1f} {p95:>8.1f} {_queries(client, make()):>8}")
        q25 = _queries(client, "/clusters/?per_page=25")
        q100 = _queries(client, "/clusters/?per_page=100")
        print(f"{'  queries for 25 rows vs 100 rows':<44} {label:<8} {q25:>8} {q100:>8} {'constant' if q25 == q100 else 'GROWS':>8}")
    verdict = "meets" if worst <= TARGET_P95_MS else "MISSES"
    print(f"\nworst p95 of the queue and the review page {worst:.1f} ms: {verdict} the {TARGET_P95_MS:.0f} ms target")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
