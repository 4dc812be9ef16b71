"""The one place that decides who may see and do what, by role and by location.

Every view fetches its object through a helper here, so no view can forget a check:

* anonymous people never reach these helpers (views are ``login_required``);
* an object outside the user's locations is *not theirs*: ``Http404``, as if it did not exist;
* an object they may see but not change (an auditor; a manager looking at a cross-location cluster
  that also touches a location they were not granted) raises ``PermissionDenied`` (403) on ``write``.

Locations a user sees:

* **Admins** (the Admin group, or a superuser) see every location and may do everything.
* **Managers** see and act on exactly the locations granted to them (``LocationGrant``); none granted
  means they see nothing.
* **Auditors** read every location unless grants restrict them: an auditor with no grant sees all
  locations (the usual compliance reviewer), one with grants sees only those. They change nothing.
* A signed-in user in no role group has no view permission and gets 403 on every page.

A within-location cluster belongs to its location: visible and actionable with that location. A
cross-location cluster is *visible* when any of its locations is visible to the user and *actionable*
only when all of them are. A Podium contact may belong to several locations; it is read in full by anyone
granted one of them (``masks_contact``).
"""

from __future__ import annotations

from collections.abc import Collection

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser, PermissionsMixin
from django.core.exceptions import PermissionDenied
from django.db import connection
from django.db.models import Case, Count, Exists, Max, Min, OuterRef, Q, QuerySet, Subquery, Value, When
from django.http import Http404, HttpRequest

from dedup.dblimits import SMALL_LIST, JsonListHasAny, in_values
from dedup.models import (
    AuditEvent,
    Cluster,
    Contact,
    ContactLocation,
    Location,
    LocationGrant,
    MergeOperation,
    RejectedRecord,
    ScanRun,
    UncategorizedPhone,
)
from dedup.roles import ADMIN, AUDITOR, MANAGER

AnyUser = AbstractBaseUser | AnonymousUser

# Cached on the user object, which lives as long as the request.
_ROLE_ATTR = "_dedup_role"
_LOCATIONS_ATTR = "_dedup_location_ids"
_UIDS_ATTR = "_dedup_location_uids"

ROLE_ADMIN = "admin"
ROLE_MANAGER = "manager"
ROLE_AUDITOR = "auditor"
_GROUP_ROLE = {ADMIN: ROLE_ADMIN, MANAGER: ROLE_MANAGER, AUDITOR: ROLE_AUDITOR}
# A user in several groups gets the strongest role's visibility rule.
_ROLE_ORDER = [ROLE_ADMIN, ROLE_MANAGER, ROLE_AUDITOR]


def role_of(user: AnyUser) -> str | None:
    """``admin``, ``manager``, ``auditor`` or None (anonymous, or in no role group)."""
    if not user.is_authenticated:
        return None
    cached = getattr(user, _ROLE_ATTR, "unset")
    if cached != "unset":
        return cached
    role: str | None
    if not isinstance(user, PermissionsMixin):
        role = None
    elif user.is_superuser:
        role = ROLE_ADMIN
    else:
        names = set(user.groups.values_list("name", flat=True))
        roles = {_GROUP_ROLE[n] for n in names if n in _GROUP_ROLE}
        role = next((r for r in _ROLE_ORDER if r in roles), None)
    setattr(user, _ROLE_ATTR, role)
    return role


def is_admin(user: AnyUser) -> bool:
    return role_of(user) == ROLE_ADMIN


def visible_location_ids(user: AnyUser) -> frozenset[int] | None:
    """The ids of the locations this user sees, or None for *all of them*."""
    if not user.is_authenticated:
        return frozenset()
    cached = getattr(user, _LOCATIONS_ATTR, None)
    if cached is not None:
        return cached if cached != "all" else None
    role = role_of(user)
    ids: frozenset[int] | None
    if role == ROLE_ADMIN:
        ids = None
    elif role is None:
        ids = frozenset()
    else:
        # The uids come along in the same query: masking a contact of several locations compares uids.
        grants = list(LocationGrant.objects.filter(user_id=user.pk).values_list("location_id", "location__uid"))
        ids = frozenset(pk for pk, _uid in grants)
        setattr(user, _UIDS_ATTR, frozenset(uid for _pk, uid in grants))
        if role == ROLE_AUDITOR and not ids:
            ids = None
    setattr(user, _LOCATIONS_ATTR, "all" if ids is None else ids)
    return ids


def sees_all_locations(user: AnyUser) -> bool:
    return user.is_authenticated and visible_location_ids(user) is None


def visible_locations(user: AnyUser) -> QuerySet[Location]:
    ids = visible_location_ids(user)
    if ids is None:
        return Location.objects.all()
    return Location.objects.filter(id__in=in_values(ids))


def visible_location_uids(user: AnyUser) -> list[str] | None:
    """The uids of the visible locations, or None for all."""
    ids = visible_location_ids(user)
    if ids is None:
        return None
    return list(Location.objects.filter(id__in=in_values(ids)).values_list("uid", flat=True))


def has_perm(user: AnyUser, perm: str) -> bool:
    """Whether the user holds ``perm`` through their role group (or is a superuser)."""
    return isinstance(user, PermissionsMixin) and user.is_active and user.has_perm(perm)


def require_admin(request: HttpRequest) -> None:
    """403 unless the user is an admin: pages that show what no location owns (a scan's rejected records,
    raw and from any location) and what only admins decide (a location's region)."""
    if not is_admin(request.user):
        raise PermissionDenied("Only admins can see or do this.")


def require_perm(request: HttpRequest, perm: str) -> None:
    """403 unless the user holds ``perm`` (read-only people lack every action permission)."""
    if not has_perm(request.user, perm):
        raise PermissionDenied(f"You do not have permission to do this ({perm.split('.')[-1].replace('_', ' ')}).")


# --- clusters ------------------------------------------------------------------------------------

# A manager's decidable cross-location clusters are listed up to this many (``split_by_decidable``).
_DECIDABLE_CROSS_LIST = 2000

def clusters_touching_q(ids: Collection[int]) -> Q:
    """Clusters with a member in one of these locations.

    ``Cluster.locations`` holds every member's location, a within-location cluster's own included, so
    the through table alone answers it; a single semi-join lets PostgreSQL walk the queue's index in
    order instead of sorting every visible cluster (see ``bench/bench_views.py``).
    """
    return Q(pk__in=Cluster.locations.through.objects.filter(location_id__in=in_values(ids)).values("cluster_id"))


def restrict_clusters(user: AnyUser, clusters: QuerySet[Cluster]) -> QuerySet[Cluster]:
    """``clusters`` narrowed to those this user sees: a within-location cluster through its location, a
    cross-location one through any of its locations.

    A within-location cluster may list other locations too (a member that also belongs elsewhere: a
    Podium contact may belong to several); it is still its location's, filed there by detection because
    every member belongs to it, so every member is that location's customer.
    """
    ids = visible_location_ids(user)
    if ids is None:
        return clusters
    if not ids:
        return clusters.none()
    return clusters.filter(Q(location_id__in=in_values(ids)) | (Q(location__isnull=True) & clusters_touching_q(ids)))


def clusters_visible_to(user: AnyUser) -> QuerySet[Cluster]:
    """Clusters with at least one location this user sees."""
    return restrict_clusters(user, Cluster.objects.all())


def count_visible_clusters(user: AnyUser, clusters: QuerySet[Cluster]) -> int:
    """``restrict_clusters(user, clusters).count()``, computed the fast way for the review queue.

    A within-location cluster is visible exactly when its own location is (an index-only count on
    ``(location, status)``); only the few cross-location clusters need the locations table. At 100,000
    open clusters this is ~7 ms instead of ~30 ms for a manager (``bench/bench_views.py``).
    """
    ids = visible_location_ids(user)
    if ids is None:
        return clusters.count()
    if not ids:
        return 0
    within = clusters.filter(location_id__in=in_values(ids)).count()
    cross = clusters.filter(location__isnull=True).filter(clusters_touching_q(ids)).count()
    return within + cross


def _member_location_exists(ids: Collection[int], *, inside: bool) -> Exists:
    """A cluster (the outer row) has a location among ``ids`` (``inside``) or one outside them.

    Correlated on the through table's ``(cluster, location)`` index, so it costs one probe per
    cross-location cluster met, instead of hashing every cluster-location row of the deployment.
    """
    rows = Cluster.locations.through.objects.filter(cluster_id=OuterRef("pk"))
    rows = rows.filter(location_id__in=in_values(ids)) if inside else rows.exclude(location_id__in=in_values(ids))
    return Exists(rows)


def decides_every_visible_cluster(user: AnyUser) -> bool:
    """Whether every cluster this user sees is one they may also decide (an admin)."""
    return has_perm(user, "dedup.approve_cluster") and visible_location_ids(user) is None


def split_by_decidable(user: AnyUser, clusters: QuerySet[Cluster]) -> tuple[QuerySet[Cluster], QuerySet[Cluster]]:
    """``clusters`` this user sees, split into those they may decide and those they may only read.

    A manager decides a cluster when every one of its locations is granted to them; a cross-location
    cluster that also touches another location is readable only. Someone without the approve permission
    (an auditor) decides nothing, and an admin everything. Each half walks the queue's indexes: a
    within-location cluster is decidable exactly when its own location is granted; only the few
    cross-location clusters (no own location) probe the locations table (``bench/bench_views.py``).
    """
    visible = restrict_clusters(user, clusters)
    if not has_perm(user, "dedup.approve_cluster"):
        return clusters.none(), visible
    ids = visible_location_ids(user)
    if ids is None:
        return visible, clusters.none()
    if not ids:
        return clusters.none(), clusters.none()
    # A cross-location cluster's share of granted locations, as one scalar per row: 1 for "all of them",
    # read only for rows with no own location (PostgreSQL would hash an IN/EXISTS over the whole table).
    granted = Case(When(location_id__in=in_values(ids), then=Value(1)), default=Value(0))
    rows = Cluster.locations.through.objects.filter(cluster_id=OuterRef("pk")).order_by().values("cluster_id")
    all_granted = Subquery(rows.annotate(v=Min(granted)).values("v")[:1])
    any_granted = Subquery(rows.annotate(v=Max(granted)).values("v")[:1])
    # The decidable cross-location clusters are few: listed first (off the open cross-location index),
    # the segment is "own location granted, or one of these", which the database reads walking the
    # queue's index in order; with the subquery inline it sometimes sorted every cluster of the
    # manager's locations instead (page 1,000 of the queue: 260 -> ~45 ms). Past the bound, inline.
    cross = clusters.filter(location__isnull=True).alias(all_granted=all_granted).filter(all_granted=1)
    cross_ids = list(cross.order_by().values_list("pk", flat=True)[: _DECIDABLE_CROSS_LIST + 1])
    if len(cross_ids) <= _DECIDABLE_CROSS_LIST:
        decidable = clusters.filter(Q(location_id__in=in_values(ids)) | Q(pk__in=in_values(cross_ids)))
    else:
        # "No own location" before the subquery: inside an OR the database keeps the order given.
        decidable = clusters.alias(all_granted=all_granted).filter(
            Q(location_id__in=in_values(ids)) | (Q(location__isnull=True) & Q(all_granted=1))
        )
    readable_only = clusters.alias(all_granted=all_granted, any_granted=any_granted).filter(
        location__isnull=True, any_granted=1, all_granted=0
    )
    return decidable, readable_only


def count_split(user: AnyUser, clusters: QuerySet[Cluster]) -> tuple[int, int]:
    """``(decidable, readable only)`` counts of :func:`split_by_decidable`, the index-friendly way."""
    if not has_perm(user, "dedup.approve_cluster"):
        return 0, count_visible_clusters(user, clusters)
    ids = visible_location_ids(user)
    if ids is None:
        return clusters.count(), 0
    if not ids:
        return 0, 0
    within = clusters.filter(location_id__in=in_values(ids)).count()
    outside = _member_location_exists(ids, inside=False)
    cross = clusters.filter(location__isnull=True).filter(_member_location_exists(ids, inside=True)).aggregate(
        decidable=Count("pk", filter=~Q(outside)), readable=Count("pk", filter=Q(outside))
    )
    return within + (cross["decidable"] or 0), cross["readable"] or 0


def masks_location(user: AnyUser, location_id: int | None) -> bool:
    """Whether this user sees the contacts of ``location_id`` only masked.

    A cross-location cluster shows members from locations the viewer was not granted; their name,
    phones, emails and address are shown masked (``dedup.masking``), so reviewing a cluster never reveals
    another location's customers. Admins, and auditors without grants, see every location in full.
    """
    ids = visible_location_ids(user)
    return ids is not None and location_id not in ids


def masks_contact(user: AnyUser, contact: Contact) -> bool:
    """Whether this user sees ``contact`` only masked: none of its locations is one they see.

    A Podium contact may belong to several locations; it is the customer of each, so a viewer granted
    any of them reads it in full (as ``contacts_visible_to`` lists it), not only one granted its home.
    """
    ids = visible_location_ids(user)
    if ids is None or contact.location_id in ids:
        return False
    others = [uid for uid in contact.location_uids or () if isinstance(uid, str)]
    return not others or not set(others) & set(_visible_uids(user))


def _visible_uids(user: AnyUser) -> frozenset[str]:
    """The uids of the granted locations, read once per request (cached on the user object)."""
    visible_location_ids(user)
    cached = getattr(user, _UIDS_ATTR, None)
    if cached is None:
        cached = frozenset(visible_location_uids(user) or ())
        setattr(user, _UIDS_ATTR, cached)
    return cached


def cluster_location_ids(cluster: Cluster) -> set[int]:
    """Every location of the cluster: its own and those of its members (prefetch ``locations``)."""
    ids = {loc.pk for loc in cluster.locations.all()}
    if cluster.location_id is not None:
        ids.add(cluster.location_id)
    return ids


def can_see_cluster(user: AnyUser, cluster: Cluster) -> bool:
    """As ``restrict_clusters``: a within-location cluster through its location, a cross-location one
    through any of its locations."""
    ids = visible_location_ids(user)
    if ids is None:
        return True
    if cluster.location_id is not None:
        return cluster.location_id in ids
    return bool(cluster_location_ids(cluster) & ids)


def can_act_on_cluster(user: AnyUser, cluster: Cluster, perm: str = "dedup.approve_cluster") -> bool:
    """Holds ``perm`` and is granted the cluster: its own location, or every location of a cross-location one.

    A within-location cluster is its location's even when a member also belongs to other locations (a
    Podium contact may belong to several; detection files such a group under the location every member
    shares), which is what the queue's ``split_by_decidable`` reads in SQL.
    """
    return has_perm(user, perm) and is_granted_cluster(user, cluster)


def is_granted_cluster(user: AnyUser, cluster: Cluster) -> bool:
    """The location half of ``can_act_on_cluster``, for a caller that checked the permission once already
    (the queue asks it for each of 100 rows; the permission check is the costly half)."""
    ids = visible_location_ids(user)
    if ids is None:
        return True
    if cluster.location_id is not None:
        return cluster.location_id in ids
    locations = cluster_location_ids(cluster)
    return bool(locations) and locations <= ids


def is_numeric_ref(ref: str | int) -> bool:
    """Whether a cluster reference is a database id (the old URLs) rather than a stable ``cl_…`` id."""
    return isinstance(ref, int) or str(ref).isdigit()


def get_cluster_for_user(
    request: HttpRequest, ref: str | int, write: bool = False, perm: str = "dedup.approve_cluster"
) -> Cluster:
    """The cluster if this user may see it (404 otherwise); with ``write``, 403 unless they may act.

    ``ref`` is the stable ``cl_…``/``clx_…`` id people see in the CLI, exports and the audit log, or the
    database id of older links (the views redirect those to the stable form).
    """
    require_perm(request, "dedup.view_cluster")
    lookup: dict[str, int | str] = {"pk": int(ref)} if is_numeric_ref(ref) else {"cluster_id": str(ref)}
    cluster = (
        Cluster.objects.select_related("location", "decided_by", "superseded_by")
        .prefetch_related("locations")
        .filter(**lookup)
        .first()
    )
    if cluster is None or not can_see_cluster(request.user, cluster):
        raise Http404("No such cluster.")
    if write:
        require_perm(request, perm)
        if not can_act_on_cluster(request.user, cluster, perm):
            raise PermissionDenied(
                "This cluster spans a location you are not granted; only someone who manages all of its "
                "locations can act on it."
            )
    return cluster


# A successor can itself be superseded by a later scan; the chain is short in practice, bounded here.
_MAX_SUCCESSOR_HOPS = 20


def live_successor(user: AnyUser, cluster: Cluster) -> Cluster | None:
    """The cluster that now holds a superseded cluster's contacts, following the chain, if this user sees it."""
    current = cluster
    for _ in range(_MAX_SUCCESSOR_HOPS):
        if current.status != Cluster.SUPERSEDED or current.superseded_by_id is None:
            break
        nxt = Cluster.objects.prefetch_related("locations").filter(pk=current.superseded_by_id).first()
        if nxt is None:
            break
        current = nxt
    if current.pk == cluster.pk or not can_see_cluster(user, current):
        return None
    return current


# --- contacts ------------------------------------------------------------------------------------

def contacts_visible_to(user: AnyUser) -> QuerySet[Contact]:
    """Contacts in at least one of the user's locations (a Podium contact may belong to several)."""
    ids = visible_location_ids(user)
    if ids is None:
        return Contact.objects.all()
    granted = in_values(ids)
    return Contact.objects.filter(
        Q(location_id__in=granted)
        | Exists(ContactLocation.objects.filter(contact_id=OuterRef("pk"), location_id__in=granted))
    )


def get_contact_for_user(
    request: HttpRequest, uid: str, write: bool = False, perm: str = "dedup.restore_contact"
) -> Contact:
    """The contact (by Podium uid) if it is in one of the user's locations; 403 on ``write`` without ``perm``."""
    require_perm(request, "dedup.view_contact")
    contact = contacts_visible_to(request.user).select_related("location").filter(uid=uid).first()
    if contact is None:
        raise Http404("No such contact.")
    if write:
        require_perm(request, perm)
    return contact


# --- merge operations ----------------------------------------------------------------------------

def operations_visible_to(user: AnyUser) -> QuerySet[MergeOperation]:
    ids = visible_location_ids(user)
    if ids is None:
        return MergeOperation.objects.all()
    if not ids:
        return MergeOperation.objects.none()
    # As ``restrict_clusters``, through the cluster's own location copied onto each merge; only merges
    # of cross-location clusters (no own location) probe their cluster's locations, row by row. A page
    # of the history and its count then read the merges alone, not every cluster of the user's
    # locations (828 -> ~30 ms for a manager, ``bench/bench_views.py``).
    granted = in_values(ids)
    touching = Cluster.locations.through.objects.filter(cluster_id=OuterRef("cluster_id"), location_id__in=granted)
    return MergeOperation.objects.filter(Q(location_id__in=granted) | (Q(location__isnull=True) & Q(Exists(touching))))


def get_operation_for_user(
    request: HttpRequest, operation_id: int, write: bool = False, perm: str = "dedup.retry_operation"
) -> MergeOperation:
    """The merge operation if its cluster is visible (404 otherwise); with ``write``, 403 unless allowed."""
    require_perm(request, "dedup.view_mergeoperation")
    op = (
        MergeOperation.objects.select_related("cluster", "cluster__location", "requested_by", "batch")
        .prefetch_related("cluster__locations")
        .filter(pk=operation_id)
        .first()
    )
    if op is None or not can_see_cluster(request.user, op.cluster):
        raise Http404("No such merge.")
    if write:
        require_perm(request, perm)
        if not can_act_on_cluster(request.user, op.cluster, perm):
            raise PermissionDenied("This merge touches a location you are not granted.")
    return op


# --- everything else that is filtered by location ------------------------------------------------

def uncategorized_visible_to(user: AnyUser) -> QuerySet[UncategorizedPhone]:
    """Phones of contacts the user sees: through the contact's home or any other of its locations."""
    ids = visible_location_ids(user)
    if ids is None:
        return UncategorizedPhone.objects.all()
    granted = in_values(ids)
    return UncategorizedPhone.objects.filter(
        Q(location_id__in=granted)
        | Exists(ContactLocation.objects.filter(contact_id=OuterRef("contact_id"), location_id__in=granted))
    )


def _names_a_location(field: str, ids: frozenset[int]) -> Q:
    """Rows whose JSON list of location uids in ``field`` names one of these locations.

    A JSON list of uids holds ``"uid"`` with its quotes, so a text match per location works on SQLite
    and PostgreSQL and is the fastest for the usual few. Past a handful, one term per location would
    grow the statement with the grants (SQLite refuses an ``OR`` chain past 1000 terms): the uids go
    as one parameter instead (``JsonListHasAny``).
    """
    uids = list(Location.objects.filter(id__in=in_values(ids)).values_list("uid", flat=True))
    if connection.vendor == "postgresql":
        # jsonb's ``?|`` (any of these strings is an element of the list), which the GIN index on the
        # audit log's locations answers (migration 0015); the text match read every event's JSON.
        return Q(**{f"{field}__has_any_keys": uids}) if uids else Q(pk__in=[])
    if len(uids) > SMALL_LIST:
        return Q(JsonListHasAny(field, uids))
    q = Q(pk__in=[])
    for uid in uids:
        q |= Q(**{f"{field}__icontains": f'"{uid}"'})
    return q


def audit_events_visible_to(user: AnyUser) -> QuerySet[AuditEvent]:
    """Events that name one of the user's locations; events naming none (policy, logins) need all."""
    ids = visible_location_ids(user)
    if ids is None:
        return AuditEvent.objects.all()
    if not ids:
        return AuditEvent.objects.none()
    return AuditEvent.objects.filter(_names_a_location("location_uids", ids))


def scans_visible_to(user: AnyUser) -> QuerySet[ScanRun]:
    """Scans of every location (empty scope) or of at least one location the user sees."""
    ids = visible_location_ids(user)
    if ids is None:
        return ScanRun.objects.all()
    return ScanRun.objects.filter(Q(scope=[]) | _names_a_location("scope", ids))


def scan_scope_for(user: AnyUser) -> list[str] | None:
    """What "Scan now" scans for this user: every location (None) or the locations granted to them."""
    uids = visible_location_uids(user)
    return None if uids is None else sorted(uids)



def rejected_records_visible_to(user: AnyUser) -> QuerySet[RejectedRecord]:
    """Records scans set aside. Admins only: their raw text may be any location's, so no grant covers it."""
    if not is_admin(user):
        return RejectedRecord.objects.none()
    return RejectedRecord.objects.all()


# --- locations ------------------------------------------------------------------------------------

def get_location_for_user(request: HttpRequest, location_id: int, write: bool = False) -> Location:
    """The location if the user sees it (404 otherwise); with ``write`` (its region), 403 unless an admin."""
    require_perm(request, "dedup.view_location")
    location = visible_locations(request.user).filter(pk=location_id).first()
    if location is None:
        raise Http404("No such location.")
    if write:
        require_admin(request)
    return location
