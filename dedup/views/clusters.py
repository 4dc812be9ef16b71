"""The review queue: filters, the decidable-first order, approving many auto clusters at once.

One cluster's page and its decisions are in ``dedup.views.review``.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib import messages
from django.db import transaction
from django.db.models import Max, Prefetch, QuerySet
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import redirect, render
from django.template.defaultfilters import pluralize
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods

from dedup import access, audit, queue
from dedup.access import AnyUser
from dedup.forms import ApproveMatchingForm, BulkApproveForm, ClusterFilterForm
from dedup.masking import mask_name
from dedup.merge import ClusterBusyError, MergeRefused, approve_many, person_of
from dedup.models import Cluster, ClusterMember, MergeBatch, Policy
from dedup.queue import QueueFilter
from dedup.views.common import login_required, paginate, query_without_page

# Bulk approval is for the clear cases only; a bigger selection is a scripted job (`merge --all-auto`).
MAX_BULK = 100


def queue_filter(request: HttpRequest, params: QueryDict) -> tuple[ClusterFilterForm, QueueFilter, str]:
    """The queue's filter from query parameters: the bound form, the filter, and its canonical query string.

    The query string carries the filter from the queue to a cluster's page and on to the next cluster;
    only the form's own fields go into it, each as the form cleaned it.
    """
    params = params.copy()
    if "status" not in params:
        params["status"] = Cluster.OPEN
    form = ClusterFilterForm(params)
    form.limit_locations(access.visible_locations(request.user))
    # A field with an error is dropped (the page shows the error next to it); the others still apply.
    form.is_valid()
    flt = QueueFilter.from_cleaned(form.cleaned_data)
    kept = QueryDict(mutable=True)
    for name in form.fields:
        value = params.get(name, "")
        if name != "per_page" and name not in form.errors and isinstance(value, str) and value != "":
            kept[name] = value
    return form, flt, kept.urlencode()


def region_for(flt: QueueFilter) -> str:
    # The policy row is read only when a search may hold a phone number written in national format.
    return Policy.current().default_region if flt.q else "AU"


@login_required
@require_GET
def cluster_list(request: HttpRequest) -> HttpResponse:
    access.require_perm(request, "dedup.view_cluster")
    form, flt, filter_query = queue_filter(request, request.GET)
    per_page = int(form.cleaned_data.get("per_page") or 25)
    clusters = queue.matching(request.user, flt, region_for(flt))
    capped = False
    if flt.q:
        segments, capped = queue.capped_segments(request.user, clusters, queue.SEARCH_COUNT_CAP)
    else:
        segments = queue.segments(request.user, clusters, flt)
    source = queue.SegmentedClusters(segments, flt.order, _for_display)
    page = paginate(request, source, per_page, count=len(source))
    can_approve = access.has_perm(request.user, "dedup.approve_cluster")
    rows = [
        _ClusterRow.of(c, request.user, can_approve and access.is_granted_cluster(request.user, c), filter_query)
        for c in page
    ]
    if can_approve and source.boundary is not None:
        # Mark where the clusters this person may decide end and those they may only read begin.
        first = page.start_index() - 1
        for i, row in enumerate(rows):
            row.starts_readable_only = first + i == source.boundary
    return render(
        request,
        "clusters/list.html",
        {
            "form": form,
            "page": page,
            "rows": rows,
            "query": query_without_page(form.data),  # type: ignore[arg-type]
            "filter_query": filter_query,
            "can_bulk": any(r.selectable for r in rows),
            "can_approve": can_approve,
            "max_bulk": MAX_BULK,
            "count_capped": capped,
            "count_cap": queue.SEARCH_COUNT_CAP,
        },
    )


def _for_display(qs: QuerySet[Cluster]) -> QuerySet[Cluster]:
    """What a row shows, fetched in a fixed number of queries (no N+1)."""
    members = Prefetch(
        "members",
        queryset=ClusterMember.objects.select_related("contact").only(
            "id", "cluster_id", "location_id", "contact__id", "contact__uid", "contact__name",
            "contact__location_id", "contact__location_uids",
        ).order_by("id"),
    )
    # The pair scores and reasons are for the review page; decoding them for 100 rows is wasted work.
    return qs.select_related("location").defer("pair_scores", "reasons", "natural_keys").prefetch_related(
        "locations", members
    )


@dataclass
class _ClusterRow:
    """One line of the queue, with its text prepared here: 100 rows render in a fraction of the time."""

    cluster: Cluster
    url: str
    names: str
    location_names: str
    selectable: bool
    decidable: bool
    kind_label: str
    status_label: str
    found: str
    starts_readable_only: bool = False

    @classmethod
    def of(cls, cluster: Cluster, user: AnyUser, can_act: bool, filter_query: str) -> _ClusterRow:
        names = " · ".join(
            mask_name(m.contact.name) if m.contact.name and access.masks_contact(user, m.contact)
            else m.contact.name or m.contact.uid
            for m in cluster.members.all()
        )
        locs = {loc.name for loc in cluster.locations.all()}
        if cluster.location is not None:
            locs.add(cluster.location.name)
        return cls(
            cluster=cluster,
            url=cluster.get_absolute_url() + (f"?{filter_query}" if filter_query else ""),
            names=names if len(names) <= 160 else names[:159] + "…",
            location_names=", ".join(sorted(locs)),
            selectable=can_act and cluster.kind == Cluster.AUTO and cluster.status == Cluster.OPEN,
            decidable=can_act,
            kind_label=cluster.get_kind_display(),
            status_label=cluster.get_status_display(),
            found=f"{cluster.created_at:%d %b %Y}",
        )


@login_required
@require_http_methods(["GET", "POST"])
def approve_selected(request: HttpRequest) -> HttpResponse:
    """Approve many auto clusters at once: GET shows what was ticked for confirmation, POST starts them."""
    access.require_perm(request, "dedup.approve_cluster")
    source = request.POST if request.method == "POST" else request.GET
    form = BulkApproveForm(source)
    if not form.is_valid():
        for error in form.errors.get("clusters", []):
            messages.error(request, str(error))
        return redirect(reverse("cluster_list"))
    ids = list(dict.fromkeys(form.cleaned_data["clusters"]))[:MAX_BULK]
    clusters = [access.get_cluster_for_user(request, cid, write=True) for cid in ids]
    not_auto = [c for c in clusters if c.kind != Cluster.AUTO or c.status != Cluster.OPEN]
    if not_auto:
        messages.error(
            request,
            f"Only open auto-mergeable clusters can be approved together; {len(not_auto)} of the selected "
            "are not (review them one by one).",
        )
        return redirect(reverse("cluster_list"))
    if request.method == "GET" or not form.cleaned_data.get("confirm"):
        return render(request, "clusters/approve_selected.html", {"clusters": clusters})
    try:
        batch = approve_many(clusters, user=request.user)
    except (ClusterBusyError, MergeRefused) as exc:
        messages.error(request, str(exc))
        return redirect(reverse("cluster_list"))
    refused = getattr(batch, "refused", [])
    started = len(clusters) - len(refused)
    messages.success(request, f"Started merging {started} cluster{'s' if started != 1 else ''}. Progress is on the dashboard.")
    for item in refused:
        messages.warning(request, f"{item['clusterId']} did not start: {item['message']}")
    return redirect(reverse("dashboard"))


@login_required
@require_http_methods(["GET", "POST"])
def approve_matching(request: HttpRequest) -> HttpResponse:
    """Approve every open auto cluster matching the queue's filter that this person may decide.

    GET counts them and asks for confirmation; POST (CSRF-checked) checks the count again, records the
    request in the audit log and hands the work to a background job, whose progress is on the dashboard.
    Review and cross-location clusters are never included: each needs its own page's confirmation.
    """
    access.require_perm(request, "dedup.approve_cluster")
    query = request.POST.get("filters", "") if request.method == "POST" else request.GET.urlencode()
    _form, flt, filter_query = queue_filter(request, QueryDict(query))
    region = region_for(flt)
    approvable = queue.approvable(request.user, flt, region)
    confirm = ApproveMatchingForm(request.POST or None)
    if request.method == "POST" and confirm.is_valid():
        upto = confirm.cleaned_data["upto"]
        expected = confirm.cleaned_data["expected"]
        count = approvable.filter(pk__lte=upto).count()
        if count == 0:
            messages.info(request, "No open auto-mergeable cluster you can decide matches this filter any more.")
            return redirect(reverse("cluster_list") + f"?{filter_query}")
        if count <= expected:
            batch = _start_matching_batch(request, flt, count, upto, region)
            messages.success(
                request,
                f"Approving {count} cluster{pluralize(count)} in the background. Progress is on the dashboard.",
            )
            return redirect(reverse("dashboard") + f"#batch-{batch.pk}")
        messages.warning(request, "More clusters match than when you looked; check the new count and confirm again.")
    n_auto, n_other = queue.count_approvable(request.user, flt, region)
    # The newest cluster now: every cluster counted here has an id up to it, and the job takes no later
    # one. The primary key's index answers at once, where the newest *matching* one meant a scan.
    upto = Cluster.objects.aggregate(top=Max("pk"))["top"] or 0
    return render(
        request,
        "clusters/approve_matching.html",
        {
            "count": n_auto,
            "others": n_other,
            "upto": upto,
            "filter_query": filter_query,
            "filter": flt,
            "form": ApproveMatchingForm(initial={"expected": n_auto, "upto": upto}),
        },
    )


def _start_matching_batch(request: HttpRequest, flt: QueueFilter, count: int, upto: int, region: str) -> MergeBatch:
    from django_q.tasks import async_task

    actor, actor_user_id = audit.actor_for(request.user)
    with transaction.atomic():
        batch = MergeBatch.objects.create(
            label=f"Approve {count} matching cluster(s) — {actor} {timezone.now():%Y-%m-%d %H:%M}",
            requested_by=person_of(request.user),
        )
        audit.record(
            "merge.bulk_requested",
            actor=actor,
            actor_user_id=actor_user_id,
            location_uids=sorted(access.visible_location_uids(request.user) or []),
            payload={"batch": batch.pk, "count": count, "upto": upto, "filters": flt.to_dict()},
        )
        args = (batch.pk, request.user.pk, flt.to_dict(), upto, region)
        transaction.on_commit(
            lambda: async_task("dedup.queue.approve_matching", *args, task_name=f"approve-matching-{args[0]}")
        )
    return batch
