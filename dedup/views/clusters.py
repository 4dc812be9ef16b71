"""The review queue and the review of one cluster: approve, reject as different people, change the primary."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from django.contrib import messages
from django.db.models import Prefetch, QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from dedup import access
from dedup.detection import member_records
from dedup.forms import CLUSTER_SORTS, BulkApproveForm, ChangePrimaryForm, ClusterFilterForm, RejectForm
from dedup.merge import (
    ClusterBusyError,
    MergeRefused,
    approve_cluster,
    approve_many,
    change_primary,
    reject_cluster,
)
from dedup.merge.planning import current_strategy, plan_for
from dedup.models import Cluster, ClusterMember, MergeOperation, Policy
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


@login_required
@require_GET
def cluster_list(request: HttpRequest) -> HttpResponse:
    access.require_perm(request, "dedup.view_cluster")
    params = request.GET.copy()
    if "status" not in params:
        params["status"] = Cluster.OPEN
    form = ClusterFilterForm(params)
    form.limit_locations(access.visible_locations(request.user))
    filters = form.cleaned_data if form.is_valid() else {}
    matching = _filtered_clusters(filters)
    per_page = int(filters.get("per_page") or 25)
    page = paginate(
        request,
        _for_display(access.restrict_clusters(request.user, matching), filters),
        per_page,
        count=access.count_visible_clusters(request.user, matching),
    )
    can_approve = access.has_perm(request.user, "dedup.approve_cluster")
    rows = [_ClusterRow.of(c, can_approve and access.can_act_on_cluster(request.user, c)) for c in page]
    return render(
        request,
        "clusters/list.html",
        {
            "form": form,
            "page": page,
            "rows": rows,
            "query": query_without_page(params),
            "can_bulk": any(r.selectable for r in rows),
            "max_bulk": MAX_BULK,
        },
    )


def _filtered_clusters(filters: dict[str, Any]) -> QuerySet[Cluster]:
    """Every cluster matching the queue's filters, before the user's locations narrow them."""
    qs = Cluster.objects.all()
    if filters.get("location"):
        qs = qs.filter(access.clusters_touching_q([filters["location"].pk]))
    if filters.get("kind"):
        qs = qs.filter(kind=filters["kind"])
    if filters.get("status"):
        qs = qs.filter(status=filters["status"])
    if filters.get("min_confidence") is not None:
        qs = qs.filter(confidence__gte=filters["min_confidence"])
    if filters.get("max_confidence") is not None:
        qs = qs.filter(confidence__lte=filters["max_confidence"])
    return qs


def _for_display(qs: QuerySet[Cluster], filters: dict[str, Any]) -> QuerySet[Cluster]:
    """Sorted, with what a row shows fetched in a fixed number of queries (no N+1)."""
    order = CLUSTER_SORTS.get(filters.get("sort") or "-confidence", CLUSTER_SORTS["-confidence"])
    members = Prefetch(
        "members",
        queryset=ClusterMember.objects.select_related("contact").only(
            "id", "cluster_id", "contact__id", "contact__uid", "contact__name"
        ).order_by("id"),
    )
    # The pair scores and reasons are for the review page; decoding them for 100 rows is wasted work.
    return (
        qs.select_related("location")
        .defer("pair_scores", "reasons", "natural_keys")
        .prefetch_related("locations", members)
        .order_by(*order)
    )


@dataclass
class _ClusterRow:
    """One line of the queue, with its text prepared here: 100 rows render in a fraction of the time."""

    cluster: Cluster
    names: str
    location_names: str
    selectable: bool
    kind_label: str
    status_label: str
    found: str

    @classmethod
    def of(cls, cluster: Cluster, can_act: bool) -> _ClusterRow:
        names = " · ".join(m.contact.name or m.contact.uid for m in cluster.members.all())
        locs = {loc.name for loc in cluster.locations.all()}
        if cluster.location is not None:
            locs.add(cluster.location.name)
        return cls(
            cluster=cluster,
            names=names if len(names) <= 160 else names[:159] + "…",
            location_names=", ".join(sorted(locs)),
            selectable=can_act and cluster.kind == Cluster.AUTO and cluster.status == Cluster.OPEN,
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
def cluster_detail(request: HttpRequest, cluster_id: int) -> HttpResponse:
    cluster = access.get_cluster_for_user(request, cluster_id)
    records = member_records(cluster)
    # Only a reviewer's choice is passed on: without one the rule picks, as the merge itself will.
    primary_uid = cluster.chosen_primary_uid if cluster.chosen_primary_uid and not cluster.auto_merge else None
    names = {r.uid: r.name or r.uid for r in records}
    preview = _preview(cluster, records)
    ordered = _primary_first(records, preview.plan.primary_uid if preview else primary_uid)
    can_approve = access.can_act_on_cluster(request.user, cluster, "dedup.approve_cluster")
    can_reject = access.can_act_on_cluster(request.user, cluster, "dedup.reject_cluster")
    operations = list(
        MergeOperation.objects.filter(cluster=cluster).select_related("requested_by").order_by("-created_at")[:10]
    )
    member_locations = {
        m.contact.uid: m.location.name for m in cluster.members.select_related("contact", "location")
    }
    return render(
        request,
        "clusters/detail.html",
        {
            "cluster": cluster,
            "members": ordered,
            "member_locations": [member_locations.get(r.uid, "") for r in ordered],
            "rows": _comparison(ordered),
            "pairs": _pairs(cluster, names),
            "cluster_reasons": [reason_text(r) for r in cluster.reasons],
            "preview": preview,
            "threshold": Policy.current().auto_merge_threshold,
            "is_open": cluster.status == Cluster.OPEN,
            "can_approve": can_approve and cluster.status == Cluster.OPEN,
            "can_reject": can_reject and cluster.status == Cluster.OPEN,
            "can_change_primary": can_approve and cluster.status == Cluster.OPEN and cluster.kind != Cluster.AUTO,
            "reject_form": RejectForm(),
            "primary_form": ChangePrimaryForm(
                initial={"primary_uid": preview.plan.primary_uid if preview else ""},
                member_uids=[(r.uid, f"{r.name or '(no name)'} · {r.uid}") for r in ordered],
            ),
            "operations": operations,
            "is_cross": cluster.cross_location,
        },
    )


def _preview(cluster: Cluster, records: Sequence[MemberRecord]) -> _Preview | None:
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
        name=plan.name or primary.name,
        address=address,
        phones=[*primary.raw_phones, *([plan.phone] if plan.phone else [])],
        emails=[*(primary.raw_emails or primary.emails), *([plan.email] if plan.email else [])],
        tags=[*primary.tags, *(t.label for t in plan.tags)],
        attributes=[*primary.attributes, *((a.label, a.value) for a in plan.attributes)],
        opt_outs=[
            (label, union[wire], sources.get(wire, []), OPT_OUT_MEANING[wire]) for wire, label in OPT_OUT_LABELS
        ],
        losses=[loss.to_dict() for loss in plan.losses],
        blockers=list(plan.blockers),
        strategy=current_strategy(),
    )


def _primary_first(records: Sequence[MemberRecord], primary_uid: str | None) -> list[MemberRecord]:
    return sorted(records, key=lambda r: (r.uid != primary_uid, r.uid))


def _comparison(records: Sequence[MemberRecord]) -> list[_FieldRow]:
    """The side-by-side rows; a row ``differs`` when the members do not all hold the same value."""

    def row(label: str, values: list[list[str]], compare: list[Any] | None = None, opt_out: bool = False) -> _FieldRow:
        keys = compare if compare is not None else [tuple(v) for v in values]
        return _FieldRow(label, values, differs=len({_freeze(k) for k in keys}) > 1, opt_out=opt_out)

    rows = [
        row("Name", [[r.name] if r.name else [] for r in records], [r.name.strip().casefold() for r in records]),
        row("Phones", [list(r.raw_phones) for r in records], [sorted(set(r.phones)) for r in records]),
        row("Emails", [list(r.raw_emails or r.emails) for r in records], [sorted(set(r.emails)) for r in records]),
        row("Tags", [list(r.tags) for r in records], [sorted({t.strip().casefold() for t in r.tags}) for r in records]),
        row(
            "Attributes",
            [[f"{label}: {value}" for label, value in r.attributes] for r in records],
        ),
        row("Address", [[r.address] if r.address else [] for r in records]),
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


@login_required
@require_POST
def approve(request: HttpRequest, cluster_id: int) -> HttpResponse:
    cluster = access.get_cluster_for_user(request, cluster_id, write=True, perm="dedup.approve_cluster")
    try:
        op = approve_cluster(cluster, user=request.user, accept_losses=request.POST.get("accept_losses") == "1")
    except (ClusterBusyError, MergeRefused) as exc:
        messages.error(request, str(exc))
        return redirect(reverse("cluster_detail", args=[cluster.pk]))
    op.refresh_from_db()
    messages.success(request, f"Merge approved. {_state_sentence(op)}")
    return redirect(reverse("history_detail", args=[op.pk]))


def _state_sentence(op: MergeOperation) -> str:
    if op.state == MergeOperation.PATCHED:
        return "The duplicates are merged and the opt-outs are written back and verified."
    if op.state == MergeOperation.COMPLIANCE_FAILED:
        return "The merge ran but the opt-out write-back failed: this is a compliance incident and is retried."
    if op.is_terminal:
        return f"The merge stopped: {op.get_state_display()} {op.error_code}".strip() + "."
    return "The merge is running; this page shows its state."


@login_required
@require_POST
def reject(request: HttpRequest, cluster_id: int) -> HttpResponse:
    cluster = access.get_cluster_for_user(request, cluster_id, write=True, perm="dedup.reject_cluster")
    form = RejectForm(request.POST)
    note = form.cleaned_data["note"] if form.is_valid() else ""
    try:
        reject_cluster(cluster, user=request.user, note=note)
    except (ClusterBusyError, MergeRefused) as exc:
        messages.error(request, str(exc))
        return redirect(reverse("cluster_detail", args=[cluster.pk]))
    messages.success(
        request, "Rejected: these contacts are remembered as different people and will not be proposed together again."
    )
    return redirect(reverse("cluster_list"))


@login_required
@require_POST
def set_primary(request: HttpRequest, cluster_id: int) -> HttpResponse:
    cluster = access.get_cluster_for_user(request, cluster_id, write=True, perm="dedup.approve_cluster")
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
    return redirect(reverse("cluster_detail", args=[cluster.pk]))
