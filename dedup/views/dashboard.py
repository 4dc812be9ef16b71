"""The state of the corpus at a glance, and the live progress partial the dashboard polls."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.db.models import Count, Q
from django.db.models.functions import TruncDate
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from dedup import access, charts, tallies
from dedup.access import AnyUser
from dedup.dblimits import in_values
from dedup.forms import ScanForm
from dedup.merge import batch_progress, current_strategy
from dedup.models import Cluster, Location, MergeBatch, MergeOperation, ScanRun
from dedup.views.common import INCIDENT_STATES, login_required
from dedup.views.presenting import location_names

LIVE_STATES = (MergeOperation.PENDING, MergeOperation.MERGING, MergeOperation.MERGED)
MERGE_DAYS = 14
RATE_SCANS = 30
# A finished batch stays on the dashboard this long so people see it reach 100%.
FINISHED_BATCH_GRACE = timedelta(minutes=10)


@login_required
@require_GET
def dashboard(request: HttpRequest) -> HttpResponse:
    access.require_perm(request, "dedup.view_cluster")
    user = request.user
    by_kind, per_location = _open_cluster_counts(user)
    ops = access.operations_visible_to(user)
    incidents = ops.filter(state__in=INCIDENT_STATES).select_related("cluster").order_by("created_at")
    context: dict[str, Any] = {
        "contacts_indexed": tallies.active_contacts(user),
        "strategy": current_strategy(),
        "open_auto": by_kind.get(Cluster.AUTO, 0),
        "open_review": by_kind.get(Cluster.REVIEW, 0),
        "open_cross": by_kind.get(Cluster.CROSS, 0),
        "uncategorized": access.uncategorized_visible_to(user).count(),
        "merges_today": _merges_today(ops),
        "incidents": list(incidents[:20]),
        "incident_count": incidents.count(),
        "rate_chart": charts.line_chart(_duplicate_rates(user), title="Duplicate rate per scan", percent=True,
                                        empty="No finished scans yet"),
        "location_chart": charts.hbar_chart(per_location, title="Open clusters per location",
                                            empty="No open clusters"),
        "merge_chart": charts.bar_chart(_merges_per_day(ops), title=f"Merges per day, last {MERGE_DAYS} days",
                                        empty="No merges yet"),
        "scan_form": ScanForm(),
        "can_scan": access.has_perm(user, "dedup.run_scan"),
    }
    context.update(_progress(user))
    return render(request, "dashboard/index.html", context)


@login_required
@require_GET
def progress(request: HttpRequest) -> HttpResponse:
    """The running scans and merge batches; the dashboard swaps this in every few seconds."""
    access.require_perm(request, "dedup.view_cluster")
    context = _progress(request.user)
    # The figures a running batch changes ride along as out-of-band swaps, so they move with the bars.
    context["live_figures"] = {
        "merges_today": _merges_today(access.operations_visible_to(request.user)),
        "open_auto": tallies.open_auto_clusters(request.user),
    }
    return render(request, "dashboard/_progress.html", context)


def _merges_today(ops: Any) -> int:
    today = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
    return int(ops.filter(state=MergeOperation.PATCHED, finished_at__gte=today).count())


def _progress(user: AnyUser) -> dict[str, Any]:
    scans = list(access.scans_visible_to(user).filter(state__in=ScanRun.ACTIVE_STATES).order_by("created_at")[:10])
    # Scopes hold Podium's location uids; people read names.
    names = location_names({uid for scan in scans for uid in scan.scope or ()})
    for scan in scans:
        scan.scope_names = [names.get(uid, uid) for uid in scan.scope or ()]  # type: ignore[attr-defined]
    visible_ops = access.operations_visible_to(user)
    recent = timezone.now() - FINISHED_BATCH_GRACE
    batch_ids = (
        visible_ops.filter(batch__isnull=False)
        .filter(Q(state__in=LIVE_STATES) | Q(batch__created_at__gte=recent))
        .values("batch_id")
    )
    batches = list(MergeBatch.objects.filter(pk__in=batch_ids).order_by("created_at")[:10])
    batch_rows: list[dict[str, Any]] = [{"batch": b, "progress": batch_progress(b)} for b in batches]
    active = bool(scans) or any(row["progress"].get("running") for row in batch_rows)
    return {"running_scans": scans, "batches": batch_rows, "progress_active": active}


def _duplicate_rates(user: AnyUser) -> list[charts.Point]:
    scans = list(
        access.scans_visible_to(user)
        .filter(state=ScanRun.SUCCEEDED, duplicate_rate__isnull=False)
        .order_by("-created_at")
        .values_list("created_at", "duplicate_rate")[:RATE_SCANS]
    )
    return [
        charts.Point(timezone.localtime(at).strftime("%d %b"), float(rate or 0)) for at, rate in reversed(scans)
    ]


def _open_cluster_counts(user: AnyUser) -> tuple[dict[str, int], list[charts.Point]]:
    """Open clusters by kind, and per location (a cross-location cluster counts at each of its locations).

    The within-location figures come from the tallies the database keeps (``dedup.tallies``): a few
    hundred rows to sum instead of 250,000 clusters to group. The cross-location ones are few and counted.
    """
    ids = access.visible_location_ids(user)
    by_kind: dict[str, int] = {}
    per_id: dict[int, int] = {}
    for (location_id, kind), n in tallies.open_within_counts(ids).items():
        by_kind[kind] = by_kind.get(kind, 0) + n
        per_id[location_id] = per_id.get(location_id, 0) + n
    cross_total, cross_per_location = tallies.open_cross_clusters(user)
    if cross_total:
        by_kind[Cluster.CROSS] = by_kind.get(Cluster.CROSS, 0) + cross_total
    for location_id, n in cross_per_location.items():
        per_id[location_id] = per_id.get(location_id, 0) + n
    counted = [pk for pk, n in per_id.items() if n]
    names = dict(Location.objects.filter(pk__in=in_values(counted)).values_list("pk", "name"))
    per_location: dict[str, int] = {}
    for pk, n in per_id.items():
        if n and pk in names:
            per_location[names[pk]] = per_location.get(names[pk], 0) + n
    top = sorted(per_location.items(), key=lambda kv: (-kv[1], kv[0]))[:12]
    return by_kind, [charts.Point(name, float(n)) for name, n in top]


def _merges_per_day(ops: Any) -> list[charts.Point]:
    today = timezone.localdate()
    start = today - timedelta(days=MERGE_DAYS - 1)
    rows = (
        ops.filter(state=MergeOperation.PATCHED, finished_at__date__gte=start)
        .annotate(day=TruncDate("finished_at"))
        .order_by()
        .values("day")
        .annotate(n=Count("id"))
        .values_list("day", "n")
    )
    per_day = dict(rows)
    return [
        charts.Point((start + timedelta(days=i)).strftime("%d %b"), float(per_day.get(start + timedelta(days=i), 0)))
        for i in range(MERGE_DAYS)
    ]
