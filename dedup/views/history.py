"""Merge history: every merge operation with its state; one merge's opt-outs, write-back and audit trail."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from dedup import access
from dedup.forms import HistoryFilterForm, ResolveForm
from dedup.merge import ClusterBusyError, MergeRefused, resolve_operation, retry_operation
from dedup.models import AuditEvent, MergeOperation
from dedup.views.clusters import OPT_OUT_LABELS
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
    return render(
        request,
        "history/detail.html",
        {
            "op": op,
            "opt_outs": _opt_out_table(op),
            "write_back": {
                "name": write_back.get("name", ""),
                "address": write_back.get("address", ""),
                "phones": [c.get("identifier", "") for c in channels if c.get("type") == "PHONE"],
                "emails": [c.get("identifier", "") for c in channels if c.get("type") == "EMAIL"],
                "tags": [t.get("label", "") for t in write_back.get("tags") or []],
                "attributes": [(a.get("label", ""), a.get("value", "")) for a in write_back.get("attributes") or []],
            },
            "conflicts": plan.get("conflicts") or [],
            "events": events,
            "can_retry": can_retry,
            "can_resolve": can_resolve,
            "resolve_form": ResolveForm(),
            "is_incident": op.state in INCIDENT_STATES,
        },
    )


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
