"""The review queue as a query: its filters, its order (what this person can decide first), the cluster
that comes next, and approving every auto cluster that matches a filter.

The queue is two segments, each read in the chosen order off the queue's indexes: the clusters this
person may decide, then those they may only read (a cross-location cluster that also touches a location
they were not granted). A page is cut from the two segments by offset, so ordering "decidable first"
never sorts the whole visible set; ``access.split_by_decidable`` says which cluster falls in which.

Approving "all matching this filter" is a background job (``approve_matching``): the request counts,
confirms and enqueues, and the job walks the matching clusters in primary-key chunks (``pk > last``),
so neither side builds an IN list that grows with the selection.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, overload

from django.contrib.auth import get_user_model
from django.db.models import BooleanField, Exists, Field, OuterRef, Q, QuerySet
from django.db.models.expressions import RawSQL

from dedup import access, audit, tallies
from dedup.access import AnyUser
from dedup.dblimits import in_values
from dedup.models import Cluster, ClusterMember, Contact, ContactKey, ContactLocation, MergeBatch
from dedup.names import normalize_name
from dedup.phones import normalize_email, normalize_phone

logger = logging.getLogger(__name__)

SORTS: dict[str, tuple[str, ...]] = {
    "-confidence": ("-confidence", "-id"),
    "confidence": ("confidence", "id"),
    "-created": ("-created_at", "-id"),
    "created": ("created_at", "id"),
    "-members": ("-member_count", "-id"),
}
DEFAULT_SORT = "-confidence"
# Clusters approved per chunk by the "all matching" job: one short read per chunk, never a long IN list.
APPROVE_CHUNK = 200
# Contacts one uid, phone or email may name, and their clusters, taken into a search at most.
DIRECT_CAP = 5000
# A search's clusters are counted up to this many; past it the queue says "more than".
SEARCH_COUNT_CAP = 100
# A name matching at most this many contacts is searched through their list, not cluster by cluster.
NAME_LIST_CAP = 5000


@dataclass(frozen=True)
class QueueFilter:
    """What the queue is narrowed to, as plain values (kept in links, in the audit and in the job)."""

    location_uid: str = ""
    kind: str = ""
    status: str = ""
    min_confidence: str = ""
    max_confidence: str = ""
    q: str = ""
    sort: str = DEFAULT_SORT

    @classmethod
    def from_cleaned(cls, data: Mapping[str, Any]) -> QueueFilter:
        """From ``ClusterFilterForm.cleaned_data`` (an invalid form gives the empty filter)."""
        location = data.get("location")

        def number(value: Any) -> str:
            return "" if value is None else f"{Decimal(value):.2f}"

        return cls(
            location_uid=getattr(location, "uid", "") or "",
            kind=str(data.get("kind") or ""),
            status=str(data.get("status") or ""),
            min_confidence=number(data.get("min_confidence")),
            max_confidence=number(data.get("max_confidence")),
            q=str(data.get("q") or "").strip(),
            sort=str(data.get("sort") or DEFAULT_SORT),
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QueueFilter:
        fields = set(cls.__dataclass_fields__)
        return cls(**{k: str(v) for k, v in data.items() if k in fields})

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @property
    def order(self) -> tuple[str, ...]:
        return SORTS.get(self.sort, SORTS[DEFAULT_SORT])


def _decimal(text: str) -> Decimal | None:
    try:
        return Decimal(text) if text else None
    except InvalidOperation:
        return None


def name_search_q(text: str, prefix: str = "") -> Q:
    """Contacts whose name holds every word typed, ignoring accents and case ("Garcia" finds "GARCÍA").

    Matched on the index's ``normalized_name`` with the query normalized by the same ``normalize_name``,
    so it behaves alike on SQLite and PostgreSQL whatever their collations. A query that normalizes to
    nothing (a title alone, "Guest") is matched on the name as typed. ``prefix`` reaches the contact
    through a relation (``"contact__"``).
    """
    words = normalize_name(text).split()
    if not words:
        return Q(**{f"{prefix}name__icontains": text.strip()})
    match = Q()
    for word in words:
        match &= Q(**{f"{prefix}normalized_name__contains": word})
    return match


# A stable cluster id as people copy it from the CLI, an export or the audit log.
_CLUSTER_REF = re.compile(r"clx?_[A-Za-z0-9]+")


def _member_visible_q(ids: frozenset[int]) -> Q:
    """Cluster members (rows of ``ClusterMember``) that a viewer granted ``ids`` reads in full.

    Its home or another of its locations is theirs (``access.masks_contact``); the other locations are
    probed per member on ``ContactLocation``'s (contact, location) index, never hashed whole.
    """
    granted = in_values(ids)
    elsewhere = ContactLocation.objects.filter(contact_id=OuterRef("contact_id"), location_id__in=granted)
    return Q(location_id__in=granted) | Q(Exists(elsewhere))


def search_q(user: AnyUser, text: str, region: str) -> Q:
    """Clusters a typed search finds: a ``cl_…`` id, a member's uid, phone, email or name.

    Names are matched accent- and case-insensitively on the index's ``normalized_name``, with the query
    normalized by the same ``normalize_name`` ("Garcia" finds "GARCÍA", on SQLite and PostgreSQL alike);
    every word typed must appear in one member's name. Only members in locations the user sees in full
    are searched, so a search cannot reveal a masked member of another location.

    What a uid, a phone or an email names is a handful of contacts: they are looked up first (indexed
    equalities) and their clusters passed on as a list. So are the contacts of a name that matches at
    most ``NAME_LIST_CAP`` of them (read off the trigram index on ``normalized_name`` on PostgreSQL).
    A more common name stays one correlated ``EXISTS`` per cluster: its clusters are dense, and walking
    the queue in order, probing each cluster's members, fills a page after a few hundred clusters.
    A text that names a contact by uid, email or phone is not also searched as a name.
    """
    text = text.strip()
    if not text:
        return Q()
    ids = access.visible_location_ids(user)
    if ids is not None and not ids:
        return Q(pk__in=[])
    found = Q(cluster_id=text) if _CLUSTER_REF.fullmatch(text) else Q(pk__in=[])
    direct = list(Contact.objects.filter(uid=text).values_list("pk", flat=True)[:1])
    phone = normalize_phone(text, region)
    keys = [phone.e164] if phone.valid and phone.e164 else []
    email = normalize_email(text)
    if email:
        keys.append(email)
    if keys:
        direct += list(ContactKey.objects.filter(key__in=keys).values_list("contact_id", flat=True)[:DIRECT_CAP])
    if direct:
        members = ClusterMember.objects.filter(contact_id__in=in_values(set(direct)))
        if ids is not None:
            members = members.filter(_member_visible_q(ids))
        found |= Q(pk__in=in_values(set(members.values_list("cluster_id", flat=True)[:DIRECT_CAP])))
    if direct or email or not normalize_name(text) or _CLUSTER_REF.fullmatch(text):
        return found
    named = list(Contact.objects.filter(name_search_q(text)).values_list("pk", flat=True)[: NAME_LIST_CAP + 1])
    if len(named) <= NAME_LIST_CAP:
        # A rare name: its few contacts' clusters, as a list.
        members = ClusterMember.objects.filter(contact_id__in=in_values(named))
        if ids is not None:
            members = members.filter(_member_visible_q(ids))
        return found | Q(pk__in=in_values(set(members.values_list("cluster_id", flat=True))))
    # A common name: matching clusters are dense, so walking the queue in order finds a page quickly.
    by_name = ClusterMember.objects.filter(cluster_id=OuterRef("pk")).filter(name_search_q(text, "contact__"))
    if ids is not None:
        by_name = by_name.filter(_member_visible_q(ids))
    return found | Q(Exists(by_name))


def matching(user: AnyUser, flt: QueueFilter, region: str = "AU") -> QuerySet[Cluster]:
    """Every cluster matching the filter, before the user's locations narrow them (see ``segments``)."""
    qs = Cluster.objects.all()
    if flt.location_uid:
        location = access.visible_locations(user).filter(uid=flt.location_uid).values("pk").first()
        if location is None:
            return qs.none()
        qs = qs.filter(access.clusters_touching_q([location["pk"]]))
    if flt.kind:
        qs = qs.filter(kind=flt.kind)
    if flt.status:
        qs = qs.filter(status=flt.status)
    low, high = _decimal(flt.min_confidence), _decimal(flt.max_confidence)
    if low is not None:
        qs = qs.filter(confidence__gte=low)
    if high is not None:
        qs = qs.filter(confidence__lte=high)
    if flt.q:
        qs = qs.filter(search_q(user, flt.q, region))
    return qs


class SegmentedClusters(Sequence[Cluster]):
    """The queue's rows for a paginator: the decidable segment, then the readable-only one.

    Slicing reads the primary keys of the requested window from each segment in order (an index walk
    with a LIMIT), then the rows themselves in one query through ``display``; so a page costs the same
    number of queries whatever its size and position.
    """

    def __init__(
        self,
        segments: Sequence[tuple[QuerySet[Cluster], int]],
        order: Sequence[str],
        display: Callable[[QuerySet[Cluster]], QuerySet[Cluster]],
    ) -> None:
        self.segments = list(segments)
        self.order = tuple(order)
        self.display = display
        # The first ``boundary`` rows are the ones this person may decide.
        self.boundary = self.segments[0][1] if len(self.segments) > 1 else None

    def __len__(self) -> int:
        return sum(n for _qs, n in self.segments)

    @overload
    def __getitem__(self, window: int) -> Cluster: ...

    @overload
    def __getitem__(self, window: slice) -> list[Cluster]: ...

    def __getitem__(self, window: int | slice) -> Cluster | list[Cluster]:
        if not isinstance(window, slice):
            found = self[window : window + 1]
            if not found:
                raise IndexError(window)
            return found[0]
        start = window.start or 0
        stop = len(self) if window.stop is None else window.stop
        pks: list[int] = []
        offset = 0
        for qs, n in self.segments:
            lo, hi = max(start - offset, 0), min(stop - offset, n)
            if lo < hi:
                pks.extend(qs.order_by(*self.order).values_list("pk", flat=True)[lo:hi])
            offset += n
        if not pks:
            return []
        rows = {c.pk: c for c in self.display(Cluster.objects.filter(pk__in=pks))}
        return [rows[pk] for pk in pks if pk in rows]


def segments(
    user: AnyUser, clusters: QuerySet[Cluster], flt: QueueFilter | None = None
) -> list[tuple[QuerySet[Cluster], int]]:
    """The queue's segments for this user with their counts: decidable first (one segment when all are).

    When ``flt`` narrows the open queue by kind at most, the within-location clusters are counted from
    the tallies the database keeps (``dedup.tallies``) and only the few cross-location ones live: an
    exact count that does not visit the 250,000 clusters of a large queue.
    """
    tallied = flt is not None and _tally_countable(flt)
    if access.decides_every_visible_cluster(user) or not access.has_perm(user, "dedup.approve_cluster"):
        visible = access.restrict_clusters(user, clusters)
        if tallied:
            cross = clusters.filter(location__isnull=True)
            return [(visible, _tallied_within(user, flt) + access.count_visible_clusters(user, cross))]
        return [(visible, access.count_visible_clusters(user, clusters))]
    decidable, readable = access.split_by_decidable(user, clusters)
    if tallied:
        n_cross_decidable, n_readable = access.count_split(user, clusters.filter(location__isnull=True))
        return [(decidable, _tallied_within(user, flt) + n_cross_decidable), (readable, n_readable)]
    n_decidable, n_readable = access.count_split(user, clusters)
    return [(decidable, n_decidable), (readable, n_readable)]


def _tally_countable(flt: QueueFilter) -> bool:
    """Whether the tallies count this filter's clusters: the open queue, narrowed by kind at most."""
    return (
        flt.status == Cluster.OPEN
        and not (flt.q or flt.location_uid or flt.min_confidence or flt.max_confidence)
        and flt.kind in ("", Cluster.AUTO, Cluster.REVIEW, Cluster.CROSS)
    )


def _tallied_within(user: AnyUser, flt: QueueFilter | None) -> int:
    """Open within-location clusters this user sees (of ``flt``'s kind), from the tallies."""
    kind = flt.kind if flt is not None else ""
    counts = tallies.open_within_counts(access.visible_location_ids(user))
    return sum(n for (_loc, k), n in counts.items() if not kind or k == kind)


def capped_segments(
    user: AnyUser, clusters: QuerySet[Cluster], cap: int = SEARCH_COUNT_CAP
) -> tuple[list[tuple[QuerySet[Cluster], int]], bool]:
    """``segments`` for a search, counted only up to ``cap``: the segments and whether more match.

    Counting every cluster a common name matches means visiting all of them; counting up to ``cap``
    stops early (``COUNT`` over a ``LIMIT``), and the page says "more than ``cap``" instead of a figure
    nobody pages through. The readable-only segment is counted only while the decidable one is under it.
    """
    if access.decides_every_visible_cluster(user) or not access.has_perm(user, "dedup.approve_cluster"):
        visible = access.restrict_clusters(user, clusters)
        n = _count_upto(visible, cap)
        return [(visible, min(n, cap))], n > cap
    decidable, readable = access.split_by_decidable(user, clusters)
    n_decidable = _count_upto(decidable, cap)
    if n_decidable > cap:
        return [(decidable, cap), (readable, 0)], True
    n_readable = _count_upto(readable, cap - n_decidable)
    capped = n_decidable + n_readable > cap
    return [(decidable, n_decidable), (readable, min(n_readable, cap - n_decidable))], capped


def _count_upto(qs: QuerySet[Cluster], cap: int) -> int:
    """``min(qs.count(), cap + 1)``, without visiting more than ``cap + 1`` rows."""
    return int(qs.order_by()[: cap + 1].count())


def _column(name: str) -> str:
    field = Cluster._meta.get_field(name)
    assert isinstance(field, Field)
    return str(field.column)


def _after_q(order: Sequence[str], cluster: Cluster) -> Q:
    """Clusters strictly after ``cluster`` in ``order`` (a keyset condition the queue's index answers).

    When every field runs the same way (all the queue's sorts do), it is one row comparison,
    ``(confidence, id) < (x, y)``, which PostgreSQL and SQLite both read as where to start walking the
    index. The spelled-out ``OR`` form is read as a filter instead: finding the next cluster then
    walked every open cluster tied on confidence (385 ms at 250,000 open clusters).
    """
    fields = [field.lstrip("-") for field in order]
    descending = {field.startswith("-") for field in order}
    if len(descending) == 1:
        table = Cluster._meta.db_table
        columns = ", ".join(f'"{table}"."{_column(f)}"' for f in fields)
        marks = ", ".join(["%s"] * len(fields))
        op = "<" if descending == {True} else ">"
        values = [getattr(cluster, f) for f in fields]
        return Q(RawSQL(f"({columns}) {op} ({marks})", values, output_field=BooleanField()))
    after = Q(pk__in=[])
    ties = Q()
    for field in order:
        name = field.lstrip("-")
        value = getattr(cluster, name)
        after |= ties & Q(**{f"{name}__{'lt' if field.startswith('-') else 'gt'}": value})
        ties &= Q(**{name: value})
    return after


def next_cluster(user: AnyUser, flt: QueueFilter, after: Cluster, region: str = "AU") -> Cluster | None:
    """The next open cluster this person may decide, in the queue's order after ``after`` (wrapping round)."""
    if not access.has_perm(user, "dedup.approve_cluster"):
        return None
    decidable, _readable = access.split_by_decidable(
        user, matching(user, flt, region).filter(status=Cluster.OPEN).exclude(pk=after.pk)
    )
    ordered = decidable.order_by(*flt.order)
    return ordered.filter(_after_q(flt.order, after)).first() or ordered.first()


def approvable(user: AnyUser, flt: QueueFilter, region: str = "AU") -> QuerySet[Cluster]:
    """Matching clusters this person may approve together: open, auto-mergeable, every location theirs.

    A review or cross-location cluster needs the look and the confirmation its own page asks for, so
    it is never part of a bulk approval, whatever the filter says.
    """
    auto = matching(user, flt, region).filter(status=Cluster.OPEN, kind=Cluster.AUTO, auto_merge=True)
    decidable, _readable = access.split_by_decidable(user, auto)
    return decidable


def count_approvable(user: AnyUser, flt: QueueFilter, region: str = "AU") -> tuple[int, int]:
    """``(approvable, matching but left for one-by-one review)`` for the confirmation page."""
    every = matching(user, flt, region)
    auto = every.filter(status=Cluster.OPEN, kind=Cluster.AUTO, auto_merge=True)
    n_auto, _n_readable = access.count_split(user, auto)
    n_open = sum(access.count_split(user, every.filter(status=Cluster.OPEN)))
    return n_auto, max(n_open - n_auto, 0)


def approve_matching(batch_id: int, user_id: int, filters: dict[str, str], upto: int, region: str = "AU") -> dict[str, int]:
    """The background job behind "approve all matching": approve each matching auto cluster into the batch.

    Only clusters with ``pk <= upto`` (the newest the person saw counted when confirming) are taken, and
    each is checked again: still open, still auto-mergeable, still decidable by this person, whose rights
    are read afresh. A cluster that cannot start (busy, stale, a restore loop) is reported under the
    batch's ``refused``, as for a bulk approval of ticked clusters.
    """
    from dedup.merge import ClusterBusyError, MergeRefused, approve_cluster

    user = get_user_model().objects.get(pk=user_id)
    batch = MergeBatch.objects.get(pk=batch_id)
    flt = QueueFilter.from_dict(filters)
    actor, actor_user_id = audit.actor_for(user)
    refused: list[dict[str, str]] = []
    started = 0
    last = 0
    while True:
        chunk = list(approvable(user, flt, region).filter(pk__gt=last, pk__lte=upto).order_by("pk")[:APPROVE_CHUNK])
        if not chunk:
            break
        for cluster in chunk:
            last = cluster.pk
            try:
                approve_cluster(cluster, user=user, batch=batch)
            except (ClusterBusyError, MergeRefused) as exc:
                refused.append({"clusterId": cluster.cluster_id, "message": str(exc)})
            else:
                started += 1
    audit.record(
        "merge.batch",
        actor=actor,
        actor_user_id=actor_user_id,
        payload={"batch": batch.pk, "label": batch.label, "clusters": started + len(refused), "refused": refused,
                 "filters": filters, "allMatching": True},
    )
    logger.info("batch %s approved %d matching cluster(s), %d refused", batch.pk, started, len(refused))
    return {"started": started, "refused": len(refused)}
