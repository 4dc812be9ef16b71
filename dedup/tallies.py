"""The dashboard's big counts without counting: active contacts and open clusters, kept by the database.

At a million contacts and 250,000 open clusters, counting them on every dashboard view costs 200 ms and
more. On PostgreSQL, statement-level triggers (``migrations/0012_dashboard_tallies``) append the signed
change of every INSERT, UPDATE and DELETE on ``dedup_contact`` and ``dedup_cluster`` to ``ContactTally``
and ``ClusterTally``, grouped the way the dashboard reads them; every path that writes those tables (the
ORM, COPY, raw ``UPDATE … FROM``) is covered because the database does it. Reading sums a few hundred
rows. The figures are exact, not estimates.

* active contacts (not deleted, not merged away) per home location and set of locations, so a manager's
  figure counts each contact of their locations once, whichever of its locations they were granted;
* open within-location clusters per location and kind. Cross-location clusters (no own location) are
  few and are counted live, as a cluster touching two of a manager's locations must count once.

SQLite deployments are small: there the same figures are counted live, with the same answers.
"""

from __future__ import annotations

import json
from collections.abc import Collection

from django.db import connection
from django.db.models import Count, Sum

from dedup import access
from dedup.access import AnyUser
from dedup.dblimits import in_values
from dedup.models import Cluster, ClusterTally, Contact, ContactTally

# Fold the appended rows together once there are this many more than groups (each scan chunk and each
# merge appends a few); reading stays a scan of a few hundred rows.
COMPACT_SLACK = 2000

CONTACT_TRIGGER_SQL = """
CREATE OR REPLACE FUNCTION dedup_contact_tally() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO dedup_contacttally (location_id, location_uids, n)
        SELECT location_id, location_uids::text, count(*) FROM new_rows
        WHERE deleted_at IS NULL AND merged_into_uid = '' GROUP BY 1, 2;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO dedup_contacttally (location_id, location_uids, n)
        SELECT location_id, location_uids::text, -count(*) FROM old_rows
        WHERE deleted_at IS NULL AND merged_into_uid = '' GROUP BY 1, 2;
    ELSE
        INSERT INTO dedup_contacttally (location_id, location_uids, n)
        SELECT location_id, uids, sum(d) FROM (
            SELECT location_id, location_uids::text AS uids, 1 AS d FROM new_rows
            WHERE deleted_at IS NULL AND merged_into_uid = ''
            UNION ALL
            SELECT location_id, location_uids::text, -1 FROM old_rows
            WHERE deleted_at IS NULL AND merged_into_uid = ''
        ) AS changed GROUP BY 1, 2 HAVING sum(d) <> 0;
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER dedup_contact_tally_ins AFTER INSERT ON dedup_contact
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION dedup_contact_tally();
CREATE TRIGGER dedup_contact_tally_upd AFTER UPDATE ON dedup_contact
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION dedup_contact_tally();
CREATE TRIGGER dedup_contact_tally_del AFTER DELETE ON dedup_contact
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION dedup_contact_tally();
"""

CLUSTER_TRIGGER_SQL = """
CREATE OR REPLACE FUNCTION dedup_cluster_tally() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO dedup_clustertally (location_id, kind, n)
        SELECT location_id, kind, count(*) FROM new_rows
        WHERE status = 'open' AND location_id IS NOT NULL GROUP BY 1, 2;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO dedup_clustertally (location_id, kind, n)
        SELECT location_id, kind, -count(*) FROM old_rows
        WHERE status = 'open' AND location_id IS NOT NULL GROUP BY 1, 2;
    ELSE
        INSERT INTO dedup_clustertally (location_id, kind, n)
        SELECT location_id, kind, sum(d) FROM (
            SELECT location_id, kind, 1 AS d FROM new_rows WHERE status = 'open' AND location_id IS NOT NULL
            UNION ALL
            SELECT location_id, kind, -1 FROM old_rows WHERE status = 'open' AND location_id IS NOT NULL
        ) AS changed GROUP BY 1, 2 HAVING sum(d) <> 0;
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER dedup_cluster_tally_ins AFTER INSERT ON dedup_cluster
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION dedup_cluster_tally();
CREATE TRIGGER dedup_cluster_tally_upd AFTER UPDATE ON dedup_cluster
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION dedup_cluster_tally();
CREATE TRIGGER dedup_cluster_tally_del AFTER DELETE ON dedup_cluster
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION dedup_cluster_tally();
"""

DROP_TRIGGERS_SQL = """
DROP TRIGGER IF EXISTS dedup_contact_tally_ins ON dedup_contact;
DROP TRIGGER IF EXISTS dedup_contact_tally_upd ON dedup_contact;
DROP TRIGGER IF EXISTS dedup_contact_tally_del ON dedup_contact;
DROP FUNCTION IF EXISTS dedup_contact_tally();
DROP TRIGGER IF EXISTS dedup_cluster_tally_ins ON dedup_cluster;
DROP TRIGGER IF EXISTS dedup_cluster_tally_upd ON dedup_cluster;
DROP TRIGGER IF EXISTS dedup_cluster_tally_del ON dedup_cluster;
DROP FUNCTION IF EXISTS dedup_cluster_tally();
"""

SEED_SQL = """
DELETE FROM dedup_contacttally;
INSERT INTO dedup_contacttally (location_id, location_uids, n)
SELECT location_id, location_uids::text, count(*) FROM dedup_contact
WHERE deleted_at IS NULL AND merged_into_uid = '' GROUP BY 1, 2;
DELETE FROM dedup_clustertally;
INSERT INTO dedup_clustertally (location_id, kind, n)
SELECT location_id, kind, count(*) FROM dedup_cluster
WHERE status = 'open' AND location_id IS NOT NULL GROUP BY 1, 2;
"""

_COMPACT_SQL = {
    "dedup_contacttally": """
        WITH gone AS (DELETE FROM dedup_contacttally RETURNING location_id, location_uids, n)
        INSERT INTO dedup_contacttally (location_id, location_uids, n)
        SELECT location_id, location_uids, sum(n) FROM gone GROUP BY 1, 2 HAVING sum(n) <> 0
    """,
    "dedup_clustertally": """
        WITH gone AS (DELETE FROM dedup_clustertally RETURNING location_id, kind, n)
        INSERT INTO dedup_clustertally (location_id, kind, n)
        SELECT location_id, kind, sum(n) FROM gone GROUP BY 1, 2 HAVING sum(n) <> 0
    """,
}


def kept_by_database() -> bool:
    """Whether the tallies are kept (PostgreSQL's triggers); elsewhere the figures are counted live."""
    return connection.vendor == "postgresql"


def rebuild() -> None:
    """Recount both tallies from the tables (after a restore from backup, or to check the triggers).

    The tables are locked against writers meanwhile, so no change slips between the count and the swap.
    """
    if not kept_by_database():
        return
    from django.db import transaction

    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("LOCK TABLE dedup_contact, dedup_cluster IN SHARE MODE")
        for statement in SEED_SQL.split(";"):
            if statement.strip():
                cursor.execute(statement)


def _maybe_compact(table: str, rows: int, groups: int) -> None:
    if rows - groups > COMPACT_SLACK:
        with connection.cursor() as cursor:
            cursor.execute(_COMPACT_SQL[table])


def compact() -> None:
    """Fold both tallies' appended rows into one per group (a scan ends with it; reads do it as needed).

    Each statement that writes contacts or clusters appends a row per group it changed, so a scan of a
    million contacts leaves a few thousand; folding them after the scan keeps the table small even when
    nobody opens the dashboard for a while.
    """
    if kept_by_database():
        with connection.cursor() as cursor:
            for statement in _COMPACT_SQL.values():
                cursor.execute(statement)


def active_contacts(user: AnyUser) -> int:
    """Contacts this user sees (``access.contacts_visible_to``) that are neither deleted nor merged away."""
    if not kept_by_database():
        return int(access.contacts_visible_to(user).filter(deleted_at__isnull=True, merged_into_uid="").count())
    grouped = list(
        ContactTally.objects.order_by().values("location_id", "location_uids").annotate(n=Sum("n"), rows=Count("id"))
    )
    _maybe_compact("dedup_contacttally", sum(g["rows"] for g in grouped), len(grouped))
    ids = access.visible_location_ids(user)
    if ids is None:
        return sum(int(g["n"]) for g in grouped)
    uids = set(access.visible_location_uids(user) or ())
    total = 0
    for g in grouped:
        if g["location_id"] in ids or _lists_one_of(g["location_uids"], uids):
            total += int(g["n"])
    return total


def _lists_one_of(location_uids: str, uids: Collection[str]) -> bool:
    try:
        listed = json.loads(location_uids)
    except ValueError:
        return False
    return isinstance(listed, list) and any(isinstance(u, str) and u in uids for u in listed)


def open_within_counts(location_ids: Collection[int] | None) -> dict[tuple[int, str], int]:
    """Open within-location clusters per ``(location id, kind)``, for these locations (None: all)."""
    if not kept_by_database():
        rows = Cluster.objects.filter(status=Cluster.OPEN, location__isnull=False)
        if location_ids is not None:
            rows = rows.filter(location_id__in=in_values(location_ids))
        return {
            (r["location_id"], r["kind"]): int(r["n"])
            for r in rows.order_by().values("location_id", "kind").annotate(n=Count("id"))
        }
    grouped = list(ClusterTally.objects.order_by().values("location_id", "kind").annotate(n=Sum("n"), rows=Count("id")))
    _maybe_compact("dedup_clustertally", sum(g["rows"] for g in grouped), len(grouped))
    return {
        (g["location_id"], g["kind"]): int(g["n"])
        for g in grouped
        if int(g["n"]) and (location_ids is None or g["location_id"] in location_ids)
    }


def open_cross_clusters(user: AnyUser) -> tuple[int, dict[int, int]]:
    """Open cross-location clusters this user sees: how many, and how many touch each visible location."""
    ids = access.visible_location_ids(user)
    through = Cluster.locations.through.objects.filter(cluster__status=Cluster.OPEN, cluster__location__isnull=True)
    if ids is not None:
        through = through.filter(location_id__in=in_values(ids))
    per_location = {
        r["location_id"]: int(r["n"]) for r in through.order_by().values("location_id").annotate(n=Count("id"))
    }
    cross = Cluster.objects.filter(status=Cluster.OPEN, location__isnull=True)
    total = access.count_visible_clusters(user, cross) if ids is not None else cross.count()
    return total, per_location


def open_auto_clusters(user: AnyUser) -> int:
    """Open auto-mergeable clusters this user sees (cross-location clusters are never auto)."""
    counts = open_within_counts(access.visible_location_ids(user))
    return sum(n for (_loc, kind), n in counts.items() if kind == Cluster.AUTO)



def active_contacts_by_home(location_ids: Collection[int]) -> dict[int, int]:
    """Active contacts per home location, for these locations (the Locations page's column)."""
    if not kept_by_database():
        rows = Contact.objects.filter(location_id__in=in_values(location_ids), deleted_at__isnull=True,
                                      merged_into_uid="")
        return {r["location_id"]: int(r["n"]) for r in rows.order_by().values("location_id").annotate(n=Count("id"))}
    tally = ContactTally.objects.filter(location_id__in=in_values(location_ids))
    sums = tally.order_by().values("location_id").annotate(n=Sum("n"))
    return {r["location_id"]: int(r["n"]) for r in sums if r["n"]}
