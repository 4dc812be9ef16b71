"""The review queue and the review of one cluster: approve, reject as different people, change the primary."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from django.contrib import messages
from django.db import transaction
from django.db.models import Max, Prefetch, QuerySet
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import redirect, render
from django.template.defaultfilters import pluralize
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from dedup import access, audit, queue
from dedup.access import AnyUser
from dedup.detection import member_records
from dedup.forms import ApproveMatchingForm, BulkApproveForm, ChangePrimaryForm, ClusterFilterForm, RejectForm
from dedup.masking import Revealer, mask_name
from dedup.merge import (
    ClusterBusyError,
    MergeRefused,
    approve_cluster,
    approve_many,
    change_primary,
    person_of,
    reject_cluster,
)
from dedup.merge.planning import current_strategy, plan_for
from dedup.models import Cluster, ClusterMember, MergeBatch, MergeOperation, Policy
from dedup.queue import QueueFilter
from dedup.records import MemberRecord
from dedup.scoring import (
    EMAIL_POINTS,
    NAME_POINTS,
    PHONE_POINTS,
    SAME_EMAIL,
    SAME_NAME,
    SAME_PHONE,
    SHARED_TAGS,
    TAGS_POINTS,
    reason_text,
)
from dedup.survivorship import MergePlan
from dedup.views.common import login_required, paginate, query_without_page

# What each piece of evidence adds to a pair's score (the spec's weights), shown next to the reason.
EVIDENCE_WEIGHTS: dict[str, float] = {
    SAME_PHONE: PHONE_POINTS / 100,
    SAME_NAME: NAME_POINTS / 100,
    SAME_EMAIL: EMAIL_POINTS / 100,
    SHARED_TAGS: TAGS_POINTS / 100,
}
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


def _region(flt: QueueFilter) -> str:
    # The policy row is read only when a search may hold a phone number written in national format.
    return Policy.current().default_region if flt.q else "AU"


@login_required
@require_GET
def cluster_list(request: HttpRequest) -> HttpResponse:
    access.require_perm(request, "dedup.view_cluster")
    form, flt, filter_query = queue_filter(request, request.GET)
    per_page = int(form.cleaned_data.get("per_page") or 25)
    source = queue.SegmentedClusters(
        queue.segments(request.user, queue.matching(request.user, flt, _region(flt))), flt.order, _for_display
    )
    page = paginate(request, source, per_page, count=len(source))
    can_approve = access.has_perm(request.user, "dedup.approve_cluster")
    rows = [
        _ClusterRow.of(c, request.user, can_approve and access.can_act_on_cluster(request.user, c), filter_query)
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
        },
    )


def _for_display(qs: QuerySet[Cluster]) -> QuerySet[Cluster]:
    """What a row shows, fetched in a fixed number of queries (no N+1)."""
    members = Prefetch(
        "members",
        queryset=ClusterMember.objects.select_related("contact").only(
            "id", "cluster_id", "location_id", "contact__id", "contact__uid", "contact__name"
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
            mask_name(m.contact.name) if m.contact.name and access.masks_location(user, m.location_id)
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
    region = _region(flt)
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
    upto = approvable.aggregate(top=Max("pk"))["top"] or 0
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


@dataclass
class _FieldRow:
    """One line of the side-by-side comparison: a field and each member's value."""

    label: str
    values: list[list[str]]
    differs: bool = False
    opt_out: bool = False


@dataclass
class _PairRow:
    uid_a: str
    uid_b: str
    name_a: str
    name_b: str
    score: float
    reasons: list[tuple[str, str]]
    conflict: bool
    explanation: str


@dataclass
class _Preview:
    plan: MergePlan
    name: str
    address: str
    phones: list[str]
    emails: list[str]
    tags: list[str]
    attributes: list[tuple[str, str]]
    opt_outs: list[tuple[str, bool, list[str], str]]
    losses: list[dict[str, str]] = field(default_factory=list)
    blockers: list[str] = field(default_factory=list)
    strategy: str = ""


OPT_OUT_LABELS = [("marketingOptOut", "Marketing"), ("smsOptOut", "SMS"), ("emailOptOut", "Email")]
OPT_OUT_MEANING = {
    "marketingOptOut": "will not receive marketing messages",
    "smsOptOut": "will not receive text messages",
    "emailOptOut": "will not receive email",
}


@login_required
@require_GET
def cluster_detail(request: HttpRequest, ref: str) -> HttpResponse:
    cluster = access.get_cluster_for_user(request, ref)
    if access.is_numeric_ref(ref):
        # Old links by database id lead to the stable address people see everywhere else.
        query = request.GET.urlencode()
        return redirect(cluster.get_absolute_url() + (f"?{query}" if query else ""))
    _form, flt, filter_query = queue_filter(request, request.GET)
    records = member_records(cluster)
    # Only a reviewer's choice is passed on: without one the rule picks, as the merge itself will.
    primary_uid = cluster.chosen_primary_uid if cluster.chosen_primary_uid and not cluster.auto_merge else None
    members = list(cluster.members.select_related("contact", "location"))
    member_locations = {m.contact.uid: m.location.name for m in members}
    masked = {m.contact.uid for m in members if access.masks_location(request.user, m.location_id)}
    reveal = _revealer([r for r in records if r.uid not in masked], everything=not masked)
    names = {r.uid: (reveal.name(r.name) if r.name else r.uid) for r in records}
    preview = _preview(cluster, records, reveal)
    ordered = _primary_first(records, preview.plan.primary_uid if preview else primary_uid)
    can_approve = access.can_act_on_cluster(request.user, cluster, "dedup.approve_cluster")
    can_reject = access.can_act_on_cluster(request.user, cluster, "dedup.reject_cluster")
    operations = list(
        MergeOperation.objects.filter(cluster=cluster).select_related("requested_by").order_by("-created_at")[:10]
    )
    upcoming = queue.next_cluster(request.user, flt, cluster, _region(flt))
    return render(
        request,
        "clusters/detail.html",
        {
            "cluster": cluster,
            "members": ordered,
            "member_locations": [member_locations.get(r.uid, "") for r in ordered],
            "masked_count": len(masked),
            "rows": _comparison(ordered, masked, reveal),
            "pairs": _pairs(cluster, names),
            "cluster_reasons": [reason_text(r) for r in cluster.reasons],
            "natural_keys": [reveal.key(k) for k in cluster.natural_keys or []],
            "preview": preview,
            "threshold": Policy.current().auto_merge_threshold,
            "is_open": cluster.status == Cluster.OPEN,
            "can_approve": can_approve and cluster.status == Cluster.OPEN,
            "can_reject": can_reject and cluster.status == Cluster.OPEN,
            "can_change_primary": can_approve and cluster.status == Cluster.OPEN and cluster.kind != Cluster.AUTO,
            "reject_form": RejectForm(),
            "primary_form": ChangePrimaryForm(
                initial={"primary_uid": preview.plan.primary_uid if preview else ""},
                member_uids=[(r.uid, f"{names[r.uid] if r.name else '(no name)'} · {r.uid}") for r in ordered],
            ),
            "operations": operations,
            "is_cross": cluster.cross_location,
            "successor": access.live_successor(request.user, cluster) if cluster.status == Cluster.SUPERSEDED else None,
            "filter_query": filter_query,
            "next_url": _cluster_url(upcoming, filter_query) if upcoming else "",
        },
    )


def _cluster_url(cluster: Cluster, filter_query: str) -> str:
    return cluster.get_absolute_url() + (f"?{filter_query}" if filter_query else "")


def _revealer(readable: Sequence[MemberRecord], *, everything: bool) -> Revealer:
    """What of a cluster's values this viewer reads in full: those of the members in their locations."""
    if everything:
        return Revealer(reveal_all=True)
    seen: set[str] = set()
    for r in readable:
        seen.update([r.name, r.address or "", *r.raw_phones, *r.phones, *r.raw_emails, *r.emails])
        seen.update(value for _label, value in r.attributes)
    return Revealer(seen)


def _preview(cluster: Cluster, records: Sequence[MemberRecord], reveal: Revealer) -> _Preview | None:
    """The record that will survive, and what the merge cannot carry (losses) or cannot do (blockers)."""
    if not records:
        return None
    try:
        plan = plan_for(cluster, records)
    except MergeRefused:
        return None
    primary = next(r for r in records if r.uid == plan.primary_uid)
    sources: dict[str, list[str]] = {}
    for uid, flags in plan.member_opt_outs.items():
        for wire, _label in OPT_OUT_LABELS:
            if flags.to_wire()[wire]:
                sources.setdefault(wire, []).append(uid)
    union = plan.opt_outs.to_wire()
    address = ", ".join(v for v in (plan.address or {}).values() if v) if plan.address else (primary.address or "")
    return _Preview(
        plan=plan,
        name=reveal.name(plan.name or primary.name),
        address=reveal.text(address),
        phones=[reveal.phone(p) for p in [*primary.raw_phones, *([plan.phone] if plan.phone else [])]],
        emails=[reveal.email(e) for e in [*(primary.raw_emails or primary.emails), *([plan.email] if plan.email else [])]],
        tags=[*primary.tags, *(t.label for t in plan.tags)],
        attributes=[
            (label, reveal.text(value))
            for label, value in [*primary.attributes, *((a.label, a.value) for a in plan.attributes)]
        ],
        opt_outs=[
            (label, union[wire], sources.get(wire, []), OPT_OUT_MEANING[wire]) for wire, label in OPT_OUT_LABELS
        ],
        losses=[{**loss.to_dict(), "value": reveal.text(loss.value)} for loss in plan.losses],
        blockers=list(plan.blockers),
        strategy=current_strategy(),
    )


def _primary_first(records: Sequence[MemberRecord], primary_uid: str | None) -> list[MemberRecord]:
    return sorted(records, key=lambda r: (r.uid != primary_uid, r.uid))


def _comparison(records: Sequence[MemberRecord], masked: Collection[str] = (),
                reveal: Revealer | None = None) -> list[_FieldRow]:
    """The side-by-side rows; a row ``differs`` when the members do not all hold the same value.

    A member in ``masked`` (another location's customer) shows its name, phones, emails, address and
    attribute values masked, except values the viewer reads on a member of their own (``reveal``);
    whether the values differ is still said, which is what a reviewer needs.
    """
    reveal = reveal or Revealer()

    def row(label: str, values: list[list[str]], compare: list[Any] | None = None, opt_out: bool = False) -> _FieldRow:
        keys = compare if compare is not None else [tuple(v) for v in values]
        return _FieldRow(label, values, differs=len({_freeze(k) for k in keys}) > 1, opt_out=opt_out)

    def shown(r: MemberRecord, values: Sequence[str], mask: Any) -> list[str]:
        return [mask(v) for v in values] if r.uid in masked else list(values)

    rows = [
        row("Name", [shown(r, [r.name] if r.name else [], reveal.name) for r in records],
            [r.name.strip().casefold() for r in records]),
        row("Phones", [shown(r, r.raw_phones, reveal.phone) for r in records],
            [sorted(set(r.phones)) for r in records]),
        row("Emails", [shown(r, r.raw_emails or r.emails, reveal.email) for r in records],
            [sorted(set(r.emails)) for r in records]),
        row("Tags", [list(r.tags) for r in records], [sorted({t.strip().casefold() for t in r.tags}) for r in records]),
        row(
            "Attributes",
            [[f"{label}: {reveal.text(value) if r.uid in masked else value}" for label, value in r.attributes]
             for r in records],
            [sorted(r.attributes) for r in records],
        ),
        row("Address", [shown(r, [r.address] if r.address else [], reveal.text) for r in records],
            [r.address or "" for r in records]),
    ]
    for wire, label in OPT_OUT_LABELS:
        flags = [r.opt_outs.to_wire()[wire] for r in records]
        rows.append(
            row(f"{label} opt-out", [["Opted out" if f else "—"] for f in flags], list(flags), opt_out=True)
        )
    rows.append(row("Fields filled", [[str(r.field_count)] for r in records], [0 for _ in records]))
    rows.append(
        row("Last updated in Podium", [[r.updated_at.strftime("%Y-%m-%d %H:%M")] for r in records], [0 for _ in records])
    )
    return rows


def _freeze(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def _pairs(cluster: Cluster, names: dict[str, str]) -> list[_PairRow]:
    rows = []
    for pair in cluster.pair_scores or []:
        if not isinstance(pair, dict):
            continue
        uids = pair.get("uids") or [pair.get("a", ""), pair.get("b", "")]
        uid_a, uid_b = str(uids[0]), str(uids[1])
        components = pair.get("components")
        if not isinstance(components, dict):
            components = EVIDENCE_WEIGHTS
        reasons = []
        for code in pair.get("reasons", []):
            weight = components.get(code)
            reasons.append((reason_text(str(code)), f"+{float(weight):.2f}" if weight else ""))
        rows.append(
            _PairRow(
                uid_a=uid_a,
                uid_b=uid_b,
                name_a=names.get(uid_a, uid_a),
                name_b=names.get(uid_b, uid_b),
                score=float(pair.get("score", 0)),
                reasons=reasons,
                conflict=bool(pair.get("conflict")),
                explanation=str(pair.get("explanation", "")),
            )
        )
    return sorted(rows, key=lambda p: (p.score, p.uid_a, p.uid_b))


def _decision_filter(request: HttpRequest) -> tuple[QueueFilter, str]:
    """The queue filter a decision was taken under (posted back by the cluster page), for "next cluster"."""
    _form, flt, filter_query = queue_filter(request, QueryDict(request.POST.get("filters", "")))
    return flt, filter_query


@login_required
@require_POST
def approve(request: HttpRequest, ref: str) -> HttpResponse:
    cluster = access.get_cluster_for_user(request, ref, write=True, perm="dedup.approve_cluster")
    _flt, filter_query = _decision_filter(request)
    try:
        op = approve_cluster(cluster, user=request.user, accept_losses=request.POST.get("accept_losses") == "1")
    except (ClusterBusyError, MergeRefused) as exc:
        messages.error(request, str(exc))
        return redirect(_cluster_url(cluster, filter_query))
    op.refresh_from_db()
    messages.success(request, f"Merge approved. {_state_sentence(op)}")
    # The merge page polls its state and offers the next cluster of the same filter.
    url = reverse("history_detail", args=[op.pk])
    return redirect(url + (f"?{urlencode({'from': filter_query})}" if filter_query else ""))


def _state_sentence(op: MergeOperation) -> str:
    if op.state == MergeOperation.PATCHED:
        return "The duplicates are merged and the opt-outs are written back and verified."
    if op.state == MergeOperation.COMPLIANCE_FAILED:
        return "The merge ran but the opt-out write-back failed: this is a compliance incident and is retried."
    if op.is_terminal:
        return f"The merge stopped: {op.get_state_display()} {op.error_code}".strip() + "."
    return "The merge is running; this page shows its state as it changes."


@login_required
@require_POST
def reject(request: HttpRequest, ref: str) -> HttpResponse:
    cluster = access.get_cluster_for_user(request, ref, write=True, perm="dedup.reject_cluster")
    flt, filter_query = _decision_filter(request)
    form = RejectForm(request.POST)
    note = form.cleaned_data["note"] if form.is_valid() else ""
    try:
        reject_cluster(cluster, user=request.user, note=note)
    except (ClusterBusyError, MergeRefused) as exc:
        messages.error(request, str(exc))
        return redirect(_cluster_url(cluster, filter_query))
    messages.success(
        request, "Rejected: these contacts are remembered as different people and will not be proposed together again."
    )
    upcoming = queue.next_cluster(request.user, flt, cluster, _region(flt))
    if upcoming is None:
        messages.info(request, "That was the last cluster you can decide in this filter.")
        return redirect(reverse("cluster_list") + (f"?{filter_query}" if filter_query else ""))
    return redirect(_cluster_url(upcoming, filter_query))


@login_required
@require_POST
def set_primary(request: HttpRequest, ref: str) -> HttpResponse:
    cluster = access.get_cluster_for_user(request, ref, write=True, perm="dedup.approve_cluster")
    _flt, filter_query = _decision_filter(request)
    uids = list(cluster.members.values_list("contact__uid", flat=True))
    form = ChangePrimaryForm(request.POST, member_uids=[(u, u) for u in uids])
    if cluster.kind == Cluster.AUTO:
        messages.error(request, "An automatic merge always keeps the rule's primary; only review clusters can change it.")
    elif not form.is_valid():
        messages.error(request, "Choose one of this cluster's members as the primary.")
    else:
        try:
            change_primary(cluster, user=request.user, primary_uid=form.cleaned_data["primary_uid"])
        except (ClusterBusyError, MergeRefused) as exc:
            messages.error(request, str(exc))
        else:
            messages.success(request, "Primary changed. The preview below shows the record that will survive.")
    return redirect(_cluster_url(cluster, filter_query))
