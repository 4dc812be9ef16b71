"""Merge history: every merge operation with its state; one merge's plan, the calls it sent, what it retired.

The merge page reads the v4 plan the approval committed (``MergePlan``): the survivor it promised,
the consent it is held to, the losses a person accepted; the calls the write-back sent (from the
merge's audit events), each duplicate's retirement and restore, and how many requests it cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from dedup import access
from dedup.access import AnyUser
from dedup.detection import load_member_records
from dedup.forms import HistoryFilterForm, ResolveForm
from dedup.masking import Revealer
from dedup.merge import ClusterBusyError, MergeRefused, resolve_operation, retry_operation
from dedup.models import AuditEvent, ClusterMember, Contact, ContactKey, MergeOperation, Policy, RestoreRecord
from dedup.queue import next_cluster
from dedup.records import MemberRecord
from dedup.survivorship import MergePlan
from dedup.views import presenting
from dedup.views.clusters import queue_filter
from dedup.views.common import INCIDENT_STATES, login_required, paginate, query_without_page
from dedup.views.review import OPT_OUT_LABELS


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
    plan = _plan_of(op)
    events = list(AuditEvent.objects.filter(operation_ref=op.pk).order_by("id"))
    can_retry = op.state == MergeOperation.COMPLIANCE_FAILED and access.can_act_on_cluster(
        request.user, op.cluster, "dedup.retry_operation"
    )
    can_resolve = op.state == MergeOperation.UNRECONCILABLE and access.can_act_on_cluster(
        request.user, op.cluster, "dedup.resolve_operation"
    )
    reveal = _revealer(request.user, op)
    names = presenting.location_names()
    # Approving from a filtered queue comes here with the filter, so the next cluster is one click away.
    upcoming_url = ""
    if request.GET.get("from"):
        _form, flt, filter_query = queue_filter(request, QueryDict(request.GET["from"]))
        upcoming = next_cluster(request.user, flt, op.cluster, Policy.current().default_region)
        if upcoming is not None:
            upcoming_url = upcoming.get_absolute_url() + (f"?{filter_query}" if filter_query else "")
    duplicates = len(op.duplicate_uids) or 1
    return render(
        request,
        "history/detail.html",
        {
            **_state_context(op),
            "opt_outs": _opt_out_table(op),
            "plan": plan,
            "survivor": presenting.survivor(plan, _indexed(op.primary_uid), reveal, names) if plan else None,
            "calls": [presenting.call_text(call, reveal) for call in _calls_sent(events)],
            "accepted_losses": presenting.loss_rows(op.accepted_losses or [], reveal),
            "retired": _retired(op),
            "requests_per_duplicate": op.request_count / duplicates,
            "strategy_sentence": presenting.strategy_sentence(
                op.strategy, len(op.duplicate_uids), len(plan.conversation_uids) if plan else 0
            ),
            "events": [(event, presenting.mask_payload(event.payload, reveal)) for event in events],
            "can_retry": can_retry,
            "can_resolve": can_resolve,
            "resolve_form": ResolveForm(),
            "next_url": upcoming_url,
        },
    )


def _plan_of(op: MergeOperation) -> MergePlan | None:
    """The typed plan the operation committed (None for a row without one)."""
    if not isinstance(op.plan, dict) or not op.plan.get("primaryUid"):
        return None
    try:
        return MergePlan.from_dict(op.plan)
    except (KeyError, TypeError, ValueError):
        return None


def _indexed(uid: str) -> MemberRecord | None:
    """The contact as the index holds it now (the survivor once the merge wrote onto it)."""
    pk = Contact.objects.filter(uid=uid).values_list("pk", flat=True).first()
    return None if pk is None else load_member_records([pk]).get(pk)


def _calls_sent(events: Sequence[AuditEvent]) -> list[dict[str, Any]]:
    """What the write-back sent to Podium, from the merge's audit events (each attempt's list, in order)."""
    calls: list[dict[str, Any]] = []
    for event in events:
        sent = event.payload.get("writtenBack") if isinstance(event.payload, dict) else None
        if isinstance(sent, list):
            calls.extend(c for c in sent if isinstance(c, dict))
    return calls


@dataclass
class _Retired:
    uid: str
    outcome: str
    restore: RestoreRecord | None = None


def _retired(op: MergeOperation) -> list[_Retired]:
    """Each duplicate and what became of it: deleted by the merge, gone already, hidden by Podium, restored."""
    steps = op.steps if isinstance(op.steps, dict) else {}
    retired = steps.get("retired") if isinstance(steps.get("retired"), dict) else {}
    restores = {r.contact_uid: r for r in RestoreRecord.objects.filter(operation=op).order_by("restored_at")}
    rows = []
    for uid in op.duplicate_uids:
        outcome = (retired or {}).get(uid, "")
        if outcome == "deleted":
            text = "deleted in Podium by this merge (snapshot kept)"
        elif outcome:
            text = f"{outcome} when this merge came to delete it"
        elif op.strategy == MergeOperation.NATIVE and op.state in (MergeOperation.MERGED, MergeOperation.PATCHED):
            text = "merged and hidden by Podium"
        else:
            text = "not retired yet"
        rows.append(_Retired(uid, text, restores.get(uid)))
    return rows


def _revealer(user: AnyUser, op: MergeOperation) -> Revealer:
    """The merge page shows in full what members in the viewer's locations hold; the rest is masked."""
    members = list(ClusterMember.objects.filter(cluster_id=op.cluster_id).select_related("contact"))
    readable = [m.contact for m in members if not access.masks_contact(user, m.contact)]
    if len(readable) == len(members):
        return Revealer(reveal_all=True)
    seen: set[str] = set()
    for contact in readable:
        seen.add(contact.name)
        address = contact.address if isinstance(contact.address, dict) else None
        seen.add(presenting.address_text(address))
        seen.update(str(ch.get("identifier", "")) for ch in contact.channels or [] if isinstance(ch, dict))
        seen.update(str(a.get("value", "") or "") for a in contact.attributes or [] if isinstance(a, dict))
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
