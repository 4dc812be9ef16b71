"""Merge history: every merge operation with its state; one merge's opt-outs, write-back and audit trail."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from dedup import access
from dedup.access import AnyUser
from dedup.forms import HistoryFilterForm, ResolveForm
from dedup.masking import Revealer
from dedup.merge import ClusterBusyError, MergeRefused, resolve_operation, retry_operation
from dedup.models import AuditEvent, ClusterMember, ContactKey, MergeOperation, Policy
from dedup.queue import next_cluster
from dedup.views.clusters import OPT_OUT_LABELS, queue_filter
from dedup.views.common import INCIDENT_STATES, login_required, paginate, query_without_page


@login_required
@require_GET
def history_list(request: HttpRequest) -> HttpResponse:
    access.require_perm(request, "dedup.view_mergeoperation")
    form = HistoryFilterForm(request.GET)
    state = form.cleaned_data.get("state") if form.is_valid() else ""
    ops = access.operations_visible_to(request.user).select_related("cluster", "requested_by", "batch")
    if state:
        ops = ops.filter(state=state)
    page = paginate(request, ops.order_by("-created_at", "-id"), 50)
    return render(
        request,
        "history/list.html",
        {"form": form, "page": page, "query": query_without_page(request.GET)},
    )


def _opt_out_table(op: MergeOperation) -> dict[str, Any]:
    """Each member's opt-outs before the merge and the union the primary must carry after it."""
    plan = op.plan or {}
    members = plan.get("memberOptOuts") or {
        uid: (snap or {}).get("optOuts", {}) for uid, snap in (op.member_snapshot or {}).items()
    }
    union = plan.get("optOuts") or {}
    rows = []
    for uid in [op.primary_uid, *sorted(u for u in members if u != op.primary_uid)]:
        flags = members.get(uid)
        if flags is None:
            continue
        rows.append({"uid": uid, "is_primary": uid == op.primary_uid,
                     "flags": [bool(flags.get(wire)) for wire, _ in OPT_OUT_LABELS]})
    return {
        "labels": [label for _, label in OPT_OUT_LABELS],
        "rows": rows,
        "union": [bool(union.get(wire)) for wire, _ in OPT_OUT_LABELS],
    }


# While a merge moves, its page polls for the state; a merge waiting for its automatic retry changes
# rarely; a finished one, or one waiting for a person, does not change by itself, so the poll stops.
POLL_LIVE_SECONDS = 2
POLL_RETRY_SECONDS = 10
_LIVE_STATES = (MergeOperation.PENDING, MergeOperation.MERGING, MergeOperation.MERGED)
_RETRYING_STATES = (MergeOperation.COMPLIANCE_FAILED, MergeOperation.CONFLICT_PENDING)


def poll_seconds(op: MergeOperation) -> int | None:
    """How often the merge page asks for this merge's state; None once it will not change by itself."""
    if op.state in _LIVE_STATES:
        return POLL_LIVE_SECONDS
    if op.state in _RETRYING_STATES:
        return POLL_RETRY_SECONDS
    return None


def _state_context(op: MergeOperation) -> dict[str, Any]:
    return {"op": op, "poll_seconds": poll_seconds(op), "is_incident": op.state in INCIDENT_STATES}


@login_required
@require_GET
def operation_state(request: HttpRequest, operation_id: int) -> HttpResponse:
    """The merge's state as a fragment; the merge page swaps it in until the state settles.

    The fragment of a settled merge carries no polling trigger, so swapping it in stops the polling
    (htmx polls with the attributes of the element it swapped in).
    """
    op = access.get_operation_for_user(request, operation_id)
    context = _state_context(op)
    context["polled"] = True
    context["seen_state"] = request.GET.get("seen", "")
    return render(request, "history/_state.html", context)


@login_required
@require_GET
def history_detail(request: HttpRequest, operation_id: int) -> HttpResponse:
    op = access.get_operation_for_user(request, operation_id)
    plan = op.plan or {}
    write_back = plan.get("writeBack") or {}
    events = AuditEvent.objects.filter(operation_ref=op.pk).order_by("id")
    can_retry = op.state == MergeOperation.COMPLIANCE_FAILED and access.can_act_on_cluster(
        request.user, op.cluster, "dedup.retry_operation"
    )
    can_resolve = op.state == MergeOperation.UNRECONCILABLE and access.can_act_on_cluster(
        request.user, op.cluster, "dedup.resolve_operation"
    )
    channels = write_back.get("channels") or []
    reveal = _revealer(request.user, op)
    # Approving from a filtered queue comes here with the filter, so the next cluster is one click away.
    upcoming_url = ""
    if request.GET.get("from"):
        _form, flt, filter_query = queue_filter(request, QueryDict(request.GET["from"]))
        upcoming = next_cluster(request.user, flt, op.cluster, Policy.current().default_region)
        if upcoming is not None:
            upcoming_url = upcoming.get_absolute_url() + (f"?{filter_query}" if filter_query else "")
    return render(
        request,
        "history/detail.html",
        {
            **_state_context(op),
            "opt_outs": _opt_out_table(op),
            "write_back": {
                "name": reveal.name(str(write_back.get("name", "") or "")),
                "address": reveal.text(str(write_back.get("address", "") or "")),
                "phones": [reveal.phone(c.get("identifier", "")) for c in channels if c.get("type") == "PHONE"],
                "emails": [reveal.email(c.get("identifier", "")) for c in channels if c.get("type") == "EMAIL"],
                "tags": [t.get("label", "") for t in write_back.get("tags") or []],
                "attributes": [(a.get("label", ""), reveal.text(str(a.get("value", "") or "")))
                               for a in write_back.get("attributes") or []],
            },
            "conflicts": [{**c, "kept": reveal.text(str(c.get("kept", ""))),
                           "dropped": reveal.text(str(c.get("dropped", "")))} for c in plan.get("conflicts") or []],
            "events": events,
            "can_retry": can_retry,
            "can_resolve": can_resolve,
            "resolve_form": ResolveForm(),
            "next_url": upcoming_url,
        },
    )


def _revealer(user: AnyUser, op: MergeOperation) -> Revealer:
    """The write-back shows in full what members in the viewer's locations hold; the rest is masked."""
    members = list(ClusterMember.objects.filter(cluster_id=op.cluster_id).select_related("contact"))
    if not any(access.masks_location(user, m.location_id) for m in members):
        return Revealer(reveal_all=True)
    seen: set[str] = set()
    readable = [m.contact for m in members if not access.masks_location(user, m.location_id)]
    for contact in readable:
        seen.add(contact.name)
        seen.add(str(contact.address or ""))
        seen.update(str(ch.get("identifier", "")) for ch in contact.channels or [])
        seen.update(str(a.get("value", "") or "") for a in contact.attributes or [])
    seen.update(ContactKey.objects.filter(contact__in=readable).values_list("key", flat=True))
    return Revealer(seen)


@login_required
@require_POST
def retry(request: HttpRequest, operation_id: int) -> HttpResponse:
    op = access.get_operation_for_user(request, operation_id, write=True, perm="dedup.retry_operation")
    if op.state != MergeOperation.COMPLIANCE_FAILED:
        messages.error(request, f"Only a compliance-failed merge can be retried; this one is {op.get_state_display()}.")
        return redirect(reverse("history_detail", args=[op.pk]))
    try:
        retry_operation(op, user=request.user)
    except (ClusterBusyError, MergeRefused) as exc:
        messages.error(request, str(exc))
    else:
        op.refresh_from_db()
        if op.state == MergeOperation.PATCHED:
            messages.success(request, "Retried: the opt-outs are now written back and verified.")
        else:
            messages.warning(request, f"Retried; the merge is now {op.get_state_display()}.")
    return redirect(reverse("history_detail", args=[op.pk]))


@login_required
@require_POST
def resolve(request: HttpRequest, operation_id: int) -> HttpResponse:
    op = access.get_operation_for_user(request, operation_id, write=True, perm="dedup.resolve_operation")
    if op.state != MergeOperation.UNRECONCILABLE:
        messages.error(request, f"Only a merge that needs manual reconciliation can be resolved; this one is "
                                f"{op.get_state_display()}.")
        return redirect(reverse("history_detail", args=[op.pk]))
    form = ResolveForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose what Podium shows and say what you checked.")
        return redirect(reverse("history_detail", args=[op.pk]))
    try:
        resolve_operation(op, user=request.user, resolution=form.cleaned_data["resolution"],
                          note=form.cleaned_data["note"])
    except (ClusterBusyError, MergeRefused, ValueError) as exc:
        messages.error(request, str(exc))
    else:
        op.refresh_from_db()
        messages.success(request, f"Resolved; the merge is now {op.get_state_display()}.")
    return redirect(reverse("history_detail", args=[op.pk]))
