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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, overload

from django.contrib.auth import get_user_model
from django.db.models import Q, QuerySet

from dedup import access, audit
from dedup.access import AnyUser
from dedup.dblimits import in_values
from dedup.models import Cluster, ClusterMember, ContactKey, ContactLocation, MergeBatch
from dedup.names import normalize_name
from dedup.phones import normalize_phone

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


def search_q(user: AnyUser, text: str, region: str) -> Q:
    """Clusters a typed search finds: a ``cl_…`` id, a member's uid, phone or name.

    Names are matched accent- and case-insensitively on the index's ``normalized_name``, with the query
    normalized by the same ``normalize_name`` ("Garcia" finds "GARCÍA", on SQLite and PostgreSQL alike);
    every word typed must appear. Only members in locations the user sees in full are searched, so a
    search cannot reveal a masked member of another location.
    """
    text = text.strip()
    if not text:
        return Q()
    ids = access.visible_location_ids(user)
    by_member = Q(contact__uid=text)
    phone = normalize_phone(text, region)
    if phone.valid and phone.e164:
        by_member |= Q(contact_id__in=ContactKey.objects.filter(key=phone.e164).values("contact_id"))
    if normalize_name(text):
        by_member |= name_search_q(text, "contact__")
    if ids is None:
        return Q(cluster_id=text) | Q(pk__in=ClusterMember.objects.filter(by_member).values("cluster_id"))
    # A member is searched when the user reads it in full: its home or another of its locations is theirs
    # (``access.masks_contact``). Two semi-joins rather than one OR, so each keeps its own index.
    granted = in_values(ids)
    home = ClusterMember.objects.filter(location_id__in=granted).filter(by_member)
    elsewhere = ClusterMember.objects.filter(
        contact_id__in=ContactLocation.objects.filter(location_id__in=granted).values("contact_id")
    ).filter(by_member)
    return Q(cluster_id=text) | Q(pk__in=home.values("cluster_id")) | Q(pk__in=elsewhere.values("cluster_id"))


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


def segments(user: AnyUser, clusters: QuerySet[Cluster]) -> list[tuple[QuerySet[Cluster], int]]:
    """The queue's segments for this user with their counts: decidable first (one segment when all are)."""
    if access.decides_every_visible_cluster(user) or not access.has_perm(user, "dedup.approve_cluster"):
        return [(access.restrict_clusters(user, clusters), access.count_visible_clusters(user, clusters))]
    decidable, readable = access.split_by_decidable(user, clusters)
    n_decidable, n_readable = access.count_split(user, clusters)
    return [(decidable, n_decidable), (readable, n_readable)]


def _after_q(order: Sequence[str], cluster: Cluster) -> Q:
    """Clusters strictly after ``cluster`` in ``order`` (a keyset condition, index-friendly)."""
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
