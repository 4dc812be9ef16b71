"""Fill a PostgreSQL database for ``bench_views.py``: contacts, open clusters and the history around them.

Everything goes in with COPY (``dedup.indexing.insert_rows``), ids computed here, in one transaction per
table group; a million contacts take a minute or two. What is made, at ``--contacts 1000000
--clusters 250000`` (the issue's figures):

* 10 locations; 250,000 open within-location clusters of 2–4 members (auto or review, scored by the
  product's own ``assess_cluster``), ``clusters // 50`` open cross-location pairs;
* the rest of the contacts are singletons, so the index holds ``--contacts`` in all; every contact has
  a phone key, one in five an email key too, one in twenty a second location;
* ``clusters // 25`` merged clusters with a patched merge operation each, their duplicates retired
  (the deleted-contacts page), and a few hundred rejected and superseded clusters;
* audit events (four per merge, one per decision), uncategorized phones, rejected records, scan runs.
"""

from __future__ import annotations

import json
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

LOCATIONS = 10
FIRST = ["Maria", "Wei", "Jack", "Olivia", "Noah", "Aisha", "Liam", "Priya", "Mateo", "Chloe", "Tane", "Sofia",
         "José", "Zoë", "Ngaio", "Hemi", "Grace", "Oscar", "Ruby", "Leo"]
LAST = ["Garcia", "Chen", "Smith", "Nguyen", "Williams", "Patel", "Brown", "Kaur", "Jones", "Taylor", "Ngata",
        "García", "Müller", "O'Brien", "Wilson", "Walker", "Hall", "Young", "King", "Wright", "Scott", "Green",
        "Baker", "Adams", "Nelson", "Hill", "Campbell", "Mitchell", "Roberts", "Carter", "Phillips", "Evans",
        "Turner", "Torres", "Parker", "Collins", "Edwards", "Stewart", "Morris", "Murphy", "Cook", "Rogers"]
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _j(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _next_id(table: str) -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"SELECT COALESCE(MAX(id), 0) + 1 FROM {table}")
        return int(cursor.fetchone()[0])


def _reset_sequences(tables: list[str]) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        for table in tables:
            cursor.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT COALESCE(MAX(id), 1) FROM {table}))"
            )


class _Rows:
    """Rows per table, flushed with COPY when a table's list grows big."""

    FLUSH = 50_000

    def __init__(self) -> None:
        self.rows: dict[str, tuple[list[str], list[tuple[Any, ...]]]] = {}

    def add(self, table: str, columns: list[str], row: tuple[Any, ...]) -> None:
        entry = self.rows.setdefault(table, (columns, []))
        entry[1].append(row)
        if len(entry[1]) >= self.FLUSH:
            self.flush(table)

    def flush(self, table: str | None = None) -> None:
        from dedup.indexing import insert_rows

        for name in [table] if table else list(self.rows):
            columns, rows = self.rows[name]
            insert_rows(name, columns, rows)
            rows.clear()


CONTACT_COLS = ["id", "uid", "location_id", "location_uids", "name", "normalized_name", "channels", "tags",
                "attributes", "address", "conversations", "field_count", "marketing_opt_out", "sms_opt_out",
                "email_opt_out", "conversation_count", "created_at", "updated_at", "deleted_at", "merged_into_uid",
                "indexed_at"]
CLUSTER_COLS = ["id", "cluster_id", "natural_keys", "location_id", "cross_location", "kind", "confidence",
                "auto_merge", "status", "reasons", "pair_scores", "member_count", "suggested_primary_uid",
                "chosen_primary_uid", "superseded_by_id", "policy_version", "scan_run_id", "decided_by_id",
                "decided_at", "created_at", "updated_at"]
MEMBER_COLS = ["cluster_id", "contact_id", "location_id", "updated_at_when_scored"]


class Filler:
    def __init__(self, n_contacts: int, n_clusters: int) -> None:
        self.n_contacts = n_contacts
        self.n_clusters = n_clusters
        self.rng = random.Random(2026)
        self.rows = _Rows()
        self.contact_id = _next_id("dedup_contact")
        self.cluster_id = _next_id("dedup_cluster")
        self.made = 0
        self.locations: list[tuple[int, str]] = []

    # --- contacts -------------------------------------------------------------------------------

    def contact(self, loc: tuple[int, str], name: str, e164: str, raw: str, *, deleted: bool = False,
                merged_into: str = "") -> tuple[int, str, datetime]:
        from dedup.names import normalize_name

        rng = self.rng
        cid = self.contact_id
        self.contact_id += 1
        self.made += 1
        uid = f"ct_b{cid:08d}_bench"
        updated = NOW - timedelta(days=rng.randrange(400), seconds=rng.randrange(86400))
        locs = [loc]
        if rng.random() < 0.05:
            other = rng.choice(self.locations)
            if other != loc:
                locs.append(other)
        channels: list[dict[str, Any]] = [{"type": "PHONE", "identifier": raw}]
        email = ""
        if rng.random() < 0.2:
            email = f"{name.split()[0].lower()}.{cid}@example.com"
            channels.append({"type": "EMAIL", "identifier": email})
        tags = [{"uid": "tag_vip", "label": "VIP"}] if rng.random() < 0.3 else []
        self.rows.add("dedup_contact", CONTACT_COLS, (
            cid, uid, loc[0], _j([u for _i, u in locs]), name, normalize_name(name), _j(channels), _j(tags), "[]",
            None, "[]", 2 + len(tags), rng.random() < 0.1, False, False, 0, updated, updated,
            updated + timedelta(days=1) if deleted else None, merged_into, NOW,
        ))
        for lid, _u in locs:
            self.rows.add("dedup_contactlocation", ["contact_id", "location_id"], (cid, lid))
        self.rows.add("dedup_contactkey", ["contact_id", "location_id", "kind", "key", "raw", "extension"],
                      (cid, loc[0], "PHONE", e164, raw, ""))
        if email:
            self.rows.add("dedup_contactkey", ["contact_id", "location_id", "kind", "key", "raw", "extension"],
                          (cid, loc[0], "EMAIL", email, email, ""))
        return cid, uid, updated

    def _phone(self) -> tuple[str, list[str]]:
        e164 = f"+614{self.rng.randrange(10**7, 10**8)}"
        raws = [e164, "0" + e164[3:6] + " " + e164[6:9] + " " + e164[9:], "(0" + e164[3] + ") " + e164[4:]]
        return e164, raws

    # --- clusters -------------------------------------------------------------------------------

    def cluster(self, loc: tuple[int, str] | None, members: list[tuple[int, str, datetime, tuple[int, str], str]],
                e164: str, *, status: str = "open", cross: bool = False, decided_at: datetime | None = None,
                superseded_by: int | None = None) -> int:
        from dedup.clustering import stable_cluster_id
        from dedup.records import MemberRecord
        from dedup.scoring import assess_cluster
        from dedup.survivorship import choose_primary

        records = [
            MemberRecord.build(uid=uid, location_uid=mloc[1], updated_at=updated, name=name,
                               phone_channels=[(e164, e164)], tags=[])
            for _cid, uid, updated, mloc, name in members
        ]
        a = assess_cluster(records)
        pk = self.cluster_id
        self.cluster_id += 1
        kind = "cross" if cross else ("auto" if a.auto_merge else "review")
        created = NOW - timedelta(days=self.rng.randrange(60))
        self.rows.add("dedup_cluster", CLUSTER_COLS, (
            pk, stable_cluster_id([m[1] for m in members], cross) if status == "open" else f"cl_old{pk:010d}",
            _j([e164]), None if cross else loc[0] if loc else None, cross, kind, f"{a.confidence:.2f}",
            a.auto_merge and not cross, status, _j(list(a.reasons)),
            _j([a.pairs[k].to_dict() for k in sorted(a.pairs)]), len(members), choose_primary(records).uid, "",
            superseded_by, 1, None, None, decided_at, created, created,
        ))
        for cid, _uid, updated, mloc, _name in members:
            self.rows.add("dedup_clustermember", MEMBER_COLS, (pk, cid, mloc[0], updated))
        for lid in sorted({m[3][0] for m in members}):
            self.rows.add("dedup_cluster_locations", ["cluster_id", "location_id"], (pk, lid))
        return pk

    def group(self, loc: tuple[int, str], size: int, *, merged_into_first: bool = False) -> tuple[
            list[tuple[int, str, datetime, tuple[int, str], str]], str]:
        rng = self.rng
        first, last = rng.choice(FIRST), rng.choice(LAST)
        same = rng.random() < 0.6
        e164, raws = self._phone()
        members = []
        primary_uid = ""
        for m in range(size):
            name = f"{first} {last}" if same or m == 0 else f"{rng.choice(FIRST)} {last}"
            retired = merged_into_first and m > 0
            cid, uid, updated = self.contact(loc, name, e164, raws[m % 3], deleted=retired,
                                             merged_into=primary_uid if retired else "")
            if m == 0:
                primary_uid = uid
            members.append((cid, uid, updated, loc, name))
        return members, e164


def fill(n_contacts: int, n_clusters: int) -> None:
    """Fill (or top up nothing: a database already holding ``n_contacts`` is reused as is)."""
    from django.db import connection, transaction

    from dedup.models import Contact, Location

    have = Contact.objects.count()
    if have >= n_contacts:
        print(f"reusing {have:,} contacts in {connection.settings_dict['NAME']}")
        return
    if have:
        raise SystemExit(f"{connection.settings_dict['NAME']} holds {have:,} contacts, fewer than asked: drop it first")
    print(f"filling {n_contacts:,} contacts, {n_clusters:,} open clusters …", flush=True)
    started = time.perf_counter()
    f = Filler(n_contacts, n_clusters)
    for i in range(LOCATIONS):
        loc, _ = Location.objects.get_or_create(uid=f"loc_bench_{i:02d}", defaults={"name": f"Bench site {i:02d}"})
        f.locations.append((loc.pk, loc.uid))
    rng = f.rng
    merged_ops: list[tuple[int, str, list[str], int]] = []  # (cluster pk, primary uid, duplicate uids, loc id)
    with transaction.atomic():
        for n in range(n_clusters):
            loc = rng.choice(f.locations)
            members, e164 = f.group(loc, rng.choice((2, 2, 2, 3, 3, 4)))
            f.cluster(loc, members, e164)
            if n % 50_000 == 0:
                print(f"  {n:,} open clusters", flush=True)
        for _ in range(n_clusters // 50):
            a, b = rng.sample(f.locations, 2)
            ma, e164 = f.group(a, 1)
            mb, _e = f.group(b, 1)
            f.cluster(None, ma + mb, e164, cross=True)
        for _n in range(n_clusters // 25):
            loc = rng.choice(f.locations)
            members, e164 = f.group(loc, 2, merged_into_first=True)
            at = NOW - timedelta(days=rng.randrange(30), seconds=rng.randrange(86400))
            pk = f.cluster(loc, members, e164, status="merged", decided_at=at)
            merged_ops.append((pk, members[0][1], [m[1] for m in members[1:]], loc[0]))
        for _n in range(n_clusters // 500):
            loc = rng.choice(f.locations)
            members, e164 = f.group(loc, 2)
            f.cluster(loc, members, e164, status="rejected", decided_at=NOW)
        print(f"  {f.made:,} contacts in clusters; singletons next", flush=True)
        while f.made < n_contacts:
            loc = rng.choice(f.locations)
            e164, raws = f._phone()
            f.contact(loc, f"{rng.choice(FIRST)} {rng.choice(LAST)}", e164, rng.choice(raws))
        f.rows.flush()
        _history(f, merged_ops)
        f.rows.flush()
        _reset_sequences(["dedup_contact", "dedup_cluster", "dedup_clustermember", "dedup_contactkey",
                          "dedup_contactlocation", "dedup_cluster_locations", "dedup_mergeoperation",
                          "dedup_auditevent", "dedup_uncategorizedphone", "dedup_rejectedrecord", "dedup_scanrun"])
    print(f"filled in {time.perf_counter() - started:.1f} s", flush=True)


def _history(f: Filler, merged_ops: list[tuple[int, str, list[str], int]]) -> None:
    """Merge operations, audit events, scans, uncategorized phones and rejected records around the clusters."""
    rng = f.rng
    uid_of = dict(f.locations)
    op_id = _next_id("dedup_mergeoperation")
    ev_id = _next_id("dedup_auditevent")
    scan_id = _next_id("dedup_scanrun")
    for i in range(200):
        scope = [] if i % 3 == 0 else [rng.choice(f.locations)[1]]
        at = NOW - timedelta(hours=200 - i)
        f.rows.add("dedup_scanrun", [
            "id", "kind", "scope", "scope_key", "source_file", "state", "holder", "pages", "contacts_seen",
            "contacts_total", "invalid_phones", "rejected_count", "clusters_found", "auto_clusters", "duplicate_rate",
            "checkpoint", "error_code", "error_message", "created_at", "started_at", "heartbeat_at", "finished_at"],
            (scan_id + i, "incremental", _j(scope), f"bench-{i}", "", "succeeded", "worker:bench", 10, 5000, 5000, 3,
             1, 40, 10, 0.12 + rng.random() / 50, "{}", "", "", at, at, at, at + timedelta(minutes=2)))
    for i in range(5000):
        f.rows.add("dedup_rejectedrecord", ["scan_run_id", "source", "line_number", "contact_uid", "reason", "raw",
                                            "created_at"],
                   (scan_id + rng.randrange(200), "export.ndjson", i + 1, "", "not JSON", "{broken", NOW))
    for i in range(20_000):
        loc = rng.choice(f.locations)
        f.rows.add("dedup_uncategorizedphone", ["contact_id", "location_id", "raw", "code", "reason", "region",
                                                "first_seen_at"],
                   (f.contact_id - 1 - i, loc[0], f"12{i:05d}", "ERR_DEDUP_001", "too short", "AU", NOW))
    ev_cols = ["id", "created_at", "event_type", "actor", "actor_user_id", "cluster_ref", "operation_ref",
               "location_uids", "subjects", "payload", "prev_hash", "hash", "chain_version"]
    for n, (cluster_pk, primary, dups, loc_id) in enumerate(merged_ops):
        at = NOW - timedelta(days=rng.randrange(30), seconds=rng.randrange(86400))
        pk = op_id + n
        f.rows.add("dedup_mergeoperation", [
            "id", "cluster_id", "state", "primary_uid", "duplicate_uids", "strategy", "plan", "accepted_losses", "steps",
            "request_count", "member_snapshot", "automatic", "attempts", "error_code", "last_error", "evidence",
            "request_ids", "created_at", "updated_at", "finished_at"],
            (pk, cluster_pk, "patched", primary, _j(dups), "consolidate", "{}", "[]",
             _j({"retired": {d: "deleted" for d in dups}}), 4, "{}", n % 2 == 0, 1, "", "", "{}", "[]", at, at, at))
        for step in ("merge.approved", "merge.started", "merge.written_back", "merge.completed"):
            f.rows.add("dedup_auditevent", ev_cols, (
                ev_id, at, step, "user:bench_admin", None, f"cl_old{cluster_pk:010d}", pk, _j([uid_of[loc_id]]),
                f" {primary} {' '.join(dups)} ", _j({"step": step}), "0" * 64, f"{ev_id:064x}", 2))
            ev_id += 1
