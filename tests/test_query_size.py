"""No query grows with the data past what SQLite accepts: every list, export and command at 10,000 clusters.

SQLite refuses a statement with more bound parameters than its build allows (Django assumes 999, the
historical default; Debian's build allows more, so the tests lower the live connection's limit to 999)
and an expression nested deeper than 1000 levels: ``a = 1 OR a = 2 OR ...`` nests one level per term,
which is what Django 5.2 sends for a prefetch through a forward foreign key on SQLite. The corpus is
built with bulk inserts (about 3 s) once for the module: 10,000 clusters over 1,500 locations, their
members, merges, audit events, scans and unreadable phones. Besides an admin it holds two people whose
visible locations make SQL that grows with the data: a manager and an auditor granted all 1,500
locations.

On PostgreSQL the same tests run unchanged (its limit is 65,535 parameters and no depth limit bites).
"""

from __future__ import annotations

import io
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.core.management import call_command
from django.db import connection, transaction
from django.test import Client
from django.utils import timezone

from dedup.access import audit_events_visible_to, clusters_visible_to, contacts_visible_to, scans_visible_to
from dedup.detection import detect
from dedup.models import (
    AuditEvent,
    Cluster,
    ClusterMember,
    Contact,
    ContactKey,
    Location,
    LocationGrant,
    MergeBatch,
    MergeOperation,
    ScanRun,
    UncategorizedPhone,
)
from dedup.roles import ROLE_NAMES

CLUSTERS = 10_000
LOCATIONS = 1_500
MERGED_EVERY = 5  # every fifth cluster was merged: 2,000 merge operations and 2,000 merged-away contacts
CROSS_EVERY = 10  # every tenth cluster spans two locations
AUDIT_EVENTS = 10_000
SQLITE_MAX_PARAMS = 999


@dataclass
class Corpus:
    admin: User
    manager_everywhere: User
    auditor_everywhere: User
    manager_sydney: User
    open_clusters: int
    cluster_pk: int
    operation_pk: int
    sydney_clusters: int


def _user(username: str, role: str) -> User:
    user = User.objects.create_user(username=username, password="unused-password-1", is_staff=role == "admin")
    user.groups.add(Group.objects.get(name=ROLE_NAMES[role]))
    return user


def _build() -> Corpus:
    now = timezone.now()
    Location.objects.bulk_create(
        [Location(uid="loc_sydney", name="Sydney CBD"), Location(uid="loc_burleigh", name="Burleigh Heads")]
        + [Location(uid=f"loc_{i:04d}", name=f"Site {i:04d}") for i in range(2, LOCATIONS)]
    )
    locations = list(Location.objects.order_by("pk"))
    contacts: list[Contact] = []
    clusters: list[Cluster] = []
    for i in range(CLUSTERS):
        home = locations[i % LOCATIONS]
        other = locations[(i + 1) % LOCATIONS] if i % CROSS_EVERY == 0 else home
        merged = i % MERGED_EVERY == 1
        first, second = f"ct_{i:05d}a", f"ct_{i:05d}b"
        contacts.append(Contact(uid=first, location=home, name=f"Person {i}", field_count=3, updated_at=now))
        contacts.append(
            Contact(
                uid=second, location=other, name=f"PERSON {i}", field_count=2, updated_at=now,
                deleted_at=now if merged else None, merged_into_uid=first if merged else "",
            )
        )
        cross = home != other
        kind = Cluster.CROSS if cross else (Cluster.AUTO if i % 3 == 0 else Cluster.REVIEW)
        clusters.append(
            Cluster(
                cluster_id=f"cl_{i:08d}", natural_keys=[f"+6141{i:07d}"], location=None if cross else home,
                cross_location=cross, kind=kind, confidence=Decimal("0.95") if kind == Cluster.AUTO else Decimal("0.70"),
                auto_merge=kind == Cluster.AUTO, status=Cluster.MERGED if merged else Cluster.OPEN,
                reasons=["same_phone", "same_name"], member_count=2, suggested_primary_uid=first,
                created_at=now - timedelta(minutes=i),
            )
        )
    Contact.objects.bulk_create(contacts)
    Cluster.objects.bulk_create(clusters)
    contact_pk = dict(Contact.objects.values_list("uid", "pk"))
    contact_loc = dict(Contact.objects.values_list("pk", "location_id"))
    cluster_rows = list(Cluster.objects.order_by("cluster_id").values_list("pk", "cluster_id", "status"))
    members: list[ClusterMember] = []
    through: list[Any] = []
    for pk, cluster_id, _status in cluster_rows:
        i = int(cluster_id[3:])
        seen: set[int] = set()
        for suffix in "ab":
            cid = contact_pk[f"ct_{i:05d}{suffix}"]
            members.append(ClusterMember(cluster_id=pk, contact_id=cid, location_id=contact_loc[cid], updated_at_when_scored=now))
            if contact_loc[cid] not in seen:
                seen.add(contact_loc[cid])
                through.append(Cluster.locations.through(cluster_id=pk, location_id=contact_loc[cid]))
    ClusterMember.objects.bulk_create(members)
    Cluster.locations.through.objects.bulk_create(through)
    # Each cluster's two contacts share one phone key, so detection can rebuild the clusters.
    ContactKey.objects.bulk_create(
        [
            ContactKey(contact_id=m.contact_id, location_id=m.location_id, kind=ContactKey.PHONE,
                       key=f"+6141{n // 2:07d}", raw=f"041{n // 2:07d}")
            for n, m in enumerate(members)
        ]
    )

    batch = MergeBatch.objects.create(label="bulk approve")
    operations = []
    for pk, cluster_id, status in cluster_rows:
        i = int(cluster_id[3:])
        if status == Cluster.MERGED:
            state, finished = MergeOperation.PATCHED, now - timedelta(hours=i % 300)
        elif i % 97 == 0:
            state, finished = MergeOperation.COMPLIANCE_FAILED, None  # an incident on the dashboard
        else:
            continue
        operations.append(
            MergeOperation(
                cluster_id=pk, batch=batch, state=state, primary_uid=f"ct_{i:05d}a", duplicate_uids=[f"ct_{i:05d}b"],
                plan={"optOuts": {}}, automatic=True, finished_at=finished, created_at=now - timedelta(minutes=i),
            )
        )
    MergeOperation.objects.bulk_create(operations)

    UncategorizedPhone.objects.bulk_create(
        [
            UncategorizedPhone(
                contact_id=contact_pk[f"ct_{i:05d}a"], location=locations[i % LOCATIONS], raw=f"04{i:04d}",
                code="ERR_DEDUP_001", reason="too short", region="AU",
            )
            for i in range(0, CLUSTERS, 5)
        ]
    )
    ScanRun.objects.bulk_create(
        [
            ScanRun(
                kind=ScanRun.INCREMENTAL, scope=[] if n % 2 else [loc.uid for loc in locations[n : n + 20]],
                scope_key=f"scope-{n}", state=ScanRun.SUCCEEDED, duplicate_rate=0.1, contacts_seen=100,
                started_at=now, finished_at=now, created_at=now - timedelta(hours=n),
            )
            for n in range(60)
        ]
    )

    events = []
    prev = AuditEvent.GENESIS
    for n in range(AUDIT_EVENTS):
        i = n % CLUSTERS
        event = AuditEvent(
            created_at=now - timedelta(seconds=AUDIT_EVENTS - n), event_type="cluster.created", actor="system",
            cluster_ref=f"cl_{i:08d}",
            location_uids=sorted({locations[i % LOCATIONS].uid, locations[(i + 1) % LOCATIONS].uid})
            if i % CROSS_EVERY == 0 else [locations[i % LOCATIONS].uid],
            subjects=f" ct_{i:05d}a ct_{i:05d}b +6141{i:07d} ", payload={"n": n}, prev_hash=prev,
        )
        event.hash = event.compute_hash()
        prev = event.hash
        events.append(event)
    AuditEvent.objects.bulk_create(events)

    admin = _user("admin1", "admin")
    manager_everywhere = _user("mgr_everywhere", "manager")
    auditor_everywhere = _user("aud_everywhere", "auditor")
    manager_sydney = _user("mgr_sydney", "manager")
    LocationGrant.objects.bulk_create(
        [LocationGrant(user=u, location=loc) for u in (manager_everywhere, auditor_everywhere) for loc in locations]
        + [LocationGrant(user=manager_sydney, location=locations[0])]
    )
    open_clusters = sum(1 for _pk, _cid, status in cluster_rows if status == Cluster.OPEN)
    sydney = Cluster.locations.through.objects.filter(location=locations[0]).count()
    op = MergeOperation.objects.filter(state=MergeOperation.PATCHED).order_by("pk").first()
    assert op is not None
    return Corpus(
        admin=admin, manager_everywhere=manager_everywhere, auditor_everywhere=auditor_everywhere,
        manager_sydney=manager_sydney, open_clusters=open_clusters, cluster_pk=cluster_rows[0][0],
        operation_pk=op.pk, sydney_clusters=sydney,
    )


@pytest.fixture(scope="module")
def corpus(django_db_setup: None, django_db_blocker: Any) -> Iterator[Corpus]:
    """The corpus, built once for the module inside a transaction rolled back at its end."""
    with django_db_blocker.unblock():
        atomic = transaction.atomic()
        atomic.__enter__()
        try:
            yield _build()
        finally:
            transaction.set_rollback(True)
            atomic.__exit__(None, None, None)


@pytest.fixture
def strict_sqlite(corpus: Corpus, db: None) -> Iterator[None]:
    """On SQLite, the strictest limit Django assumes (999 parameters) for the duration of a test."""
    if connection.vendor != "sqlite":
        yield
        return
    raw = connection.connection
    before = raw.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    raw.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, SQLITE_MAX_PARAMS)
    try:
        yield
    finally:
        raw.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, before)


pytestmark = pytest.mark.usefixtures("strict_sqlite")


def _command(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def _client(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _get(client: Client, url: str) -> Any:
    response = client.get(url)
    assert response.status_code == 200, (url, response.status_code)
    return response


def _streamed(response: Any) -> str:
    return b"".join(response.streaming_content).decode()


def test_the_sqlite_limit_is_in_force(corpus: Corpus) -> None:
    # Guards the guard: without the lowered limit the tests below would prove less on this build.
    if connection.vendor == "sqlite":
        marks = ", ".join(["%s"] * (SQLITE_MAX_PARAMS + 1))
        with pytest.raises(Exception, match="too many SQL variables"), connection.cursor() as cursor:
            cursor.execute(f"SELECT 1 WHERE 1 IN ({marks})", list(range(SQLITE_MAX_PARAMS + 1)))


def test_clusters_command_ndjson_prints_every_cluster(corpus: Corpus) -> None:
    lines = _command("clusters", "--format", "ndjson", "--status", "all").splitlines()
    assert len(lines) == CLUSTERS
    first = json.loads(lines[0])
    assert first["clusterId"] == "cl_00000000" and len(first["members"]) == 2
    assert {m["locationUid"] for m in first["members"]} == {"loc_sydney", "loc_burleigh"}
    assert all(len(json.loads(line)["members"]) == 2 for line in lines[::997])


def test_clusters_command_open_table_and_filters(corpus: Corpus) -> None:
    table = _command("clusters", "--format", "table").splitlines()
    assert table[-1] == f"{corpus.open_clusters} cluster(s)"
    cross = _command("clusters", "--format", "ndjson", "--cross-location").splitlines()
    assert len(cross) == CLUSTERS // CROSS_EVERY  # no cross-location cluster was merged (i % 10 == 0)
    sydney = _command("clusters", "--format", "ndjson", "--status", "all", "--location", "loc_sydney").splitlines()
    assert len(sydney) == corpus.sydney_clusters


@pytest.mark.parametrize("who", ["admin", "manager_everywhere", "auditor_everywhere", "manager_sydney"])
def test_every_list_page_renders(corpus: Corpus, who: str) -> None:
    client = _client(getattr(corpus, who))
    for url in (
        "/",
        "/progress/",
        "/clusters/",
        "/clusters/?status=&per_page=100",
        "/clusters/?status=merged&sort=-members&per_page=100",
        "/clusters/?kind=cross&sort=created",
        "/clusters/?location=loc_sydney",
        "/history/",
        "/history/?state=patched&page=7",
        "/audit/",
        "/audit/?location=loc_sydney",
        "/contacts/deleted/",
        "/contacts/deleted/?q=ct_00001b",
        "/uncategorized/",
        "/scans/",
        "/settings/",
    ):
        _get(client, url)
    if who != "manager_sydney":
        _get(client, f"/clusters/{Cluster.objects.get(pk=corpus.cluster_pk).cluster_id}/")
        _get(client, f"/history/{corpus.operation_pk}/")


def test_the_review_queue_counts_every_visible_cluster(corpus: Corpus) -> None:
    body = _get(_client(corpus.manager_everywhere), "/clusters/?per_page=100").content.decode()
    assert f"{corpus.open_clusters:,}" in body or str(corpus.open_clusters) in body


@pytest.mark.parametrize("who", ["admin", "auditor_everywhere"])
def test_the_audit_export_streams_every_visible_event(corpus: Corpus, who: str) -> None:
    client = _client(getattr(corpus, who))
    # An export records its own event (naming no location, so only the admin sees it) after choosing
    # what to export: the admin's second export holds the first one's event.
    ndjson = _streamed(_get(client, "/audit/?format=ndjson")).splitlines()
    assert len(ndjson) == AUDIT_EVENTS
    csv_lines = _streamed(_get(client, "/audit/?format=csv")).splitlines()
    assert len(csv_lines) == 1 + AUDIT_EVENTS + (1 if who == "admin" else 0)
    sydney = _streamed(_get(client, "/audit/?format=ndjson&location=loc_sydney")).splitlines()
    assert sydney and all("loc_sydney" in json.loads(line)["location_uids"] for line in sydney)


def test_the_admin_changelists_render(corpus: Corpus) -> None:
    client = _client(corpus.admin)
    corpus.admin.is_superuser = True
    corpus.admin.save()
    for model in ("cluster", "contact", "mergeoperation", "auditevent", "uncategorizedphone", "clustermember"):
        response = client.get(f"/admin/dedup/{model}/")
        assert response.status_code in (200, 404), (model, response.status_code)
    _get(client, f"/admin/dedup/cluster/{corpus.cluster_pk}/change/")


def test_verify_audit_walks_the_whole_chain(corpus: Corpus) -> None:
    assert f"{AUDIT_EVENTS} events verified" in _command("verify_audit")


def test_someone_granted_many_locations_sees_exactly_theirs(corpus: Corpus) -> None:
    # 150 of the 1,500 locations: more than a literal list or OR chain is sent for, so the
    # one-parameter forms (dedup.dblimits) decide what this manager sees.
    granted = list(Location.objects.order_by("pk")[100:250])
    user = _user("mgr_150", "manager")
    LocationGrant.objects.bulk_create([LocationGrant(user=user, location=loc) for loc in granted])
    uids = {loc.uid for loc in granted}
    ids = {loc.pk for loc in granted}

    events = AuditEvent.objects.values_list("pk", "location_uids")
    assert set(audit_events_visible_to(user).values_list("pk", flat=True)) == {
        pk for pk, listed in events if uids.intersection(listed)
    }
    scans = ScanRun.objects.values_list("pk", "scope")
    assert set(scans_visible_to(user).values_list("pk", flat=True)) == {
        pk for pk, scope in scans if not scope or uids.intersection(scope)
    }
    through = Cluster.locations.through.objects.values_list("cluster_id", "location_id")
    assert set(clusters_visible_to(user).values_list("pk", flat=True)) == {c for c, loc in through if loc in ids}
    assert contacts_visible_to(user).count() == Contact.objects.filter(location__in=granted).count()
    body = _get(_client(user), "/audit/?per_page=50").content.decode()
    assert "Site 0100" in body or "loc_0100" in body


def test_a_rescan_of_many_keys_rewrites_their_clusters(corpus: Corpus) -> None:
    # 1,300 clusters' keys: over 1,000 open clusters to reconsider and supersede, more than one
    # IN list may carry. The corpus's cluster ids are not the stable ids detection derives, so
    # every open cluster touched is superseded by a new one with the same members.
    keys = [f"+6141{i:07d}" for i in range(1_300)]
    touched = Cluster.objects.filter(status=Cluster.OPEN, cluster_id__lt="cl_00001300").count()
    assert touched > SQLITE_MAX_PARAMS
    summary = detect(keys=keys, workers=0)
    assert summary.superseded == touched
    assert summary.created == touched
    superseded = Cluster.objects.filter(status=Cluster.SUPERSEDED, cluster_id__lt="cl_00001300")
    assert superseded.count() == touched
    assert not superseded.filter(superseded_by__isnull=True).exists()
