"""The review of one cluster: its members side by side, the merge preview, approve, reject, change the primary.

The preview is the merge plan the approval would commit (``dedup.merge.planning.plan_for``): the record
that survives, the consent it is held to, what the merge cannot carry (losses, which a person must
accept by ticking a box) and what stops it (blockers: approving is not offered, and a member that could
be the primary without blockers is suggested).
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from django.contrib import messages
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from dedup import access, queue
from dedup.detection import member_records
from dedup.forms import ChangePrimaryForm, RejectForm
from dedup.masking import Revealer
from dedup.merge import ClusterBusyError, MergeRefused, approve_cluster, change_primary, reject_cluster
from dedup.merge.planning import current_strategy, plan_for
from dedup.models import Cluster, MergeOperation, Policy
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
from dedup.survivorship import MergePlan, plan_merge
from dedup.views import presenting
from dedup.views.clusters import queue_filter, region_for
from dedup.views.common import login_required

# What each piece of evidence adds to a pair's score (the spec's weights), shown next to the reason.
EVIDENCE_WEIGHTS: dict[str, float] = {
    SAME_PHONE: PHONE_POINTS / 100,
    SAME_NAME: NAME_POINTS / 100,
    SAME_EMAIL: EMAIL_POINTS / 100,
    SHARED_TAGS: TAGS_POINTS / 100,
}

OPT_OUT_LABELS = [("marketingOptOut", "Marketing"), ("smsOptOut", "SMS"), ("emailOptOut", "Email")]
OPT_OUT_MEANING = {
    "marketingOptOut": "will not receive marketing messages",
    "smsOptOut": "will not receive text messages",
    "emailOptOut": "will not receive email",
}


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
class _Alternative:
    """A member that could be the primary without blockers, and what choosing it would lose."""

    uid: str
    name: str
    losses: int


@dataclass
class _Preview:
    plan: MergePlan
    survivor: presenting.Survivor
    opt_outs: list[tuple[str, bool, list[str], str]]
    losses: list[dict[str, str]] = field(default_factory=list)
    losses_digest: str = ""
    blockers: list[str] = field(default_factory=list)
    alternatives: list[_Alternative] = field(default_factory=list)
    strategy: str = ""
    strategy_sentence: str = ""

    # The survivor's fields by their old names, for templates and tests that read them directly.
    @property
    def name(self) -> str:
        return self.survivor.name

    @property
    def address(self) -> str:
        return self.survivor.address

    @property
    def phones(self) -> list[str]:
        return [p for p, _added in self.survivor.phones]

    @property
    def emails(self) -> list[str]:
        return [e for e, _added in self.survivor.emails]

    @property
    def tags(self) -> list[str]:
        return [t for t, _added in self.survivor.tags]

    @property
    def attributes(self) -> list[tuple[str, str]]:
        return [(label, value) for label, value, _added in self.survivor.attributes]


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
    members = list(cluster.members.select_related("contact"))
    masked = {m.contact.uid for m in members if access.masks_contact(request.user, m.contact)}
    reveal = _revealer([r for r in records if r.uid not in masked], everything=not masked)
    names = {r.uid: (reveal.name(r.name) if r.name else r.uid) for r in records}
    location_names = presenting.location_names({loc for r in records for loc in r.location_uids})
    is_open = cluster.status == Cluster.OPEN
    preview = _preview(cluster, records, reveal, location_names, names, alternatives=is_open)
    ordered = _primary_first(records, preview.plan.primary_uid if preview else primary_uid)
    can_approve = access.can_act_on_cluster(request.user, cluster, "dedup.approve_cluster")
    can_reject = access.can_act_on_cluster(request.user, cluster, "dedup.reject_cluster")
    operations = list(
        MergeOperation.objects.filter(cluster=cluster).select_related("requested_by").order_by("-created_at")[:10]
    )
    upcoming = queue.next_cluster(request.user, flt, cluster, region_for(flt))
    blocked = bool(preview and preview.blockers)
    return render(
        request,
        "clusters/detail.html",
        {
            "cluster": cluster,
            "members": ordered,
            "masked_count": len(masked),
            "rows": _comparison(ordered, masked, reveal, location_names),
            "pairs": _pairs(cluster, names),
            "cluster_reasons": [reason_text(r) for r in cluster.reasons],
            "natural_keys": [reveal.key(k) for k in cluster.natural_keys or []],
            "preview": preview,
            "threshold": Policy.current().auto_merge_threshold,
            "is_open": is_open,
            "can_approve": can_approve and is_open and not blocked,
            "blocked_reason": (
                f"Approving is not offered: this merge cannot run onto {preview.plan.primary_uid} (see why above)."
                if preview and blocked and can_approve and is_open else ""
            ),
            "can_reject": can_reject and is_open,
            # A blocked automatic cluster may take another primary: the rule's cannot be merged onto.
            "can_change_primary": can_approve and is_open and (cluster.kind != Cluster.AUTO or blocked),
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
        seen.add(presenting.address_text(dict(r.address_parts)))
    return Revealer(seen)


def _plan_with_primary(cluster: Cluster, records: Sequence[MemberRecord], primary_uid: str, strategy: str) -> MergePlan:
    """The plan if a reviewer chose ``primary_uid`` (the cluster itself is not changed)."""
    candidate = copy.copy(cluster)
    candidate.chosen_primary_uid = primary_uid
    candidate.auto_merge = False
    return plan_for(candidate, records, strategy=strategy)


def _preview(
    cluster: Cluster,
    records: Sequence[MemberRecord],
    reveal: Revealer,
    location_names: dict[str, str],
    names: dict[str, str],
    *,
    alternatives: bool,
) -> _Preview | None:
    """The record that will survive, and what the merge cannot carry (losses) or cannot do (blockers)."""
    if len(records) < 2:
        return None
    strategy = current_strategy()
    try:
        plan = plan_for(cluster, records, strategy=strategy)
    except MergeRefused:
        return None
    primary = next(r for r in records if r.uid == plan.primary_uid)
    sources: dict[str, list[str]] = {}
    for uid, flags in plan.member_opt_outs.items():
        for wire, _label in OPT_OUT_LABELS:
            if flags.to_wire()[wire]:
                sources.setdefault(wire, []).append(uid)
    union = plan.opt_outs.to_wire()
    others: list[_Alternative] = []
    # A member the published API cannot reach blocks every primary alike; only consent blockers (what the
    # rule's primary could not carry) may lift with another primary, so only then are candidates planned.
    if plan.blockers and alternatives and plan_merge(records, primary_uid=plan.primary_uid).blockers:
        for r in records:
            if r.uid == plan.primary_uid:
                continue
            candidate = _plan_with_primary(cluster, records, r.uid, strategy)
            if not candidate.blockers:
                others.append(_Alternative(r.uid, names.get(r.uid, r.uid), len(candidate.losses)))
        others.sort(key=lambda a: (a.losses, a.uid))
    return _Preview(
        plan=plan,
        survivor=presenting.survivor(plan, primary, reveal, location_names),
        opt_outs=[
            (label, union[wire], sources.get(wire, []), OPT_OUT_MEANING[wire]) for wire, label in OPT_OUT_LABELS
        ],
        losses=presenting.loss_rows(plan.losses, reveal),
        losses_digest=presenting.losses_digest(plan.losses),
        blockers=list(plan.blockers),
        alternatives=others,
        strategy=strategy,
        strategy_sentence=presenting.strategy_sentence(
            strategy, len(plan.duplicate_uids), len(plan.conversation_uids)
        ),
    )


def _primary_first(records: Sequence[MemberRecord], primary_uid: str | None) -> list[MemberRecord]:
    return sorted(records, key=lambda r: (r.uid != primary_uid, r.uid))


def _comparison(
    records: Sequence[MemberRecord],
    masked: Collection[str] = (),
    reveal: Revealer | None = None,
    location_names: dict[str, str] | None = None,
) -> list[_FieldRow]:
    """The side-by-side rows; a row ``differs`` when the members do not all hold the same value.

    A member in ``masked`` (another location's customer) shows its name, phones, emails, address and
    attribute values masked, except values the viewer reads on a member of their own (``reveal``);
    whether the values differ is still said, which is what a reviewer needs.
    """
    reveal = reveal or Revealer()
    names = location_names or {}

    def row(label: str, values: list[list[str]], compare: list[Any] | None = None, opt_out: bool = False) -> _FieldRow:
        keys = compare if compare is not None else [tuple(v) for v in values]
        return _FieldRow(label, values, differs=len({_freeze(k) for k in keys}) > 1, opt_out=opt_out)

    def shown(r: MemberRecord, values: Sequence[str], mask: Any) -> list[str]:
        return [mask(v) for v in values] if r.uid in masked else list(values)

    def address(r: MemberRecord) -> str:
        return presenting.address_text(dict(r.address_parts)) or (r.address or "")

    def consent(r: MemberRecord) -> list[str]:
        member_reveal = reveal if r.uid in masked else Revealer(reveal_all=True)
        return [presenting.consent_line(c, r.location_uids, names, member_reveal) for c in r.consent]

    rows = [
        row("Name", [shown(r, [r.name] if r.name else [], reveal.name) for r in records],
            [r.name.strip().casefold() for r in records]),
        row("Locations", [presenting.names_of(r.location_uids, names) for r in records],
            [sorted(r.location_uids) for r in records]),
        row("Phones", [shown(r, r.raw_phones, reveal.phone) for r in records],
            [sorted(set(r.phones)) for r in records]),
        row("Emails", [shown(r, r.raw_emails or r.emails, reveal.email) for r in records],
            [sorted(set(r.emails)) for r in records]),
        row("Consent per channel", [consent(r) for r in records],
            [sorted((c.identity, tuple(sorted(c.opted_in)), c.transactional_opt_out) for c in r.consent)
             for r in records]),
        row("Tags", [list(r.tags) for r in records], [sorted({t.strip().casefold() for t in r.tags}) for r in records]),
        row(
            "Attributes",
            [[f"{label}: {reveal.text(value) if r.uid in masked else value}" for label, value in r.attributes]
             for r in records],
            [sorted(r.attributes) for r in records],
        ),
        row("Address", [shown(r, [address(r)] if address(r) else [], reveal.text) for r in records],
            [address(r).casefold() for r in records]),
        row("Conversations", [[str(len(r.conversation_uids))] for r in records], [0 for _ in records]),
    ]  # fmt: skip
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
    if isinstance(value, list | tuple):
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
    refusal = _losses_refusal(request, cluster)
    if refusal:
        messages.error(request, refusal)
        return redirect(_cluster_url(cluster, filter_query))
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


def _losses_refusal(request: HttpRequest, cluster: Cluster) -> str:
    """Why this approval may not go ahead over what the merge would lose ("" when it may).

    A merge that loses values needs the box ticked, and accepts exactly the losses the page showed: if
    they changed since (a rescan, another primary), the person looks again.
    """
    if cluster.status != Cluster.OPEN:
        return ""  # the approval itself says who decided it first
    try:
        plan = plan_for(cluster, member_records(cluster))
    except MergeRefused:
        return ""
    if not plan.losses:
        return ""
    if request.POST.get("accept_losses") != "1":
        return (
            f"This merge cannot carry {len(plan.losses)} value(s) onto the surviving record: tick “I accept these "
            "losses” to approve it."
        )
    if request.POST.get("losses_seen") != presenting.losses_digest(plan.losses):
        return "What this merge would lose changed since the page was shown; check the list again before approving."
    return ""


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
    upcoming = queue.next_cluster(request.user, flt, cluster, region_for(flt))
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
    if cluster.auto_merge and not _rule_is_blocked(cluster):
        messages.error(request, "An automatic merge always keeps the rule's primary; only review clusters can change it.")
        return redirect(_cluster_url(cluster, filter_query))
    if not form.is_valid():
        messages.error(request, "Choose one of this cluster's members as the primary.")
        return redirect(_cluster_url(cluster, filter_query))
    try:
        change_primary(cluster, user=request.user, primary_uid=form.cleaned_data["primary_uid"])
    except (ClusterBusyError, MergeRefused) as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, "Primary changed. The preview below shows the record that will survive.")
    return redirect(_cluster_url(cluster, filter_query))


def _rule_is_blocked(cluster: Cluster) -> bool:
    """Whether the rule's primary cannot be merged onto (then an automatic cluster may take another)."""
    try:
        return bool(plan_for(cluster, member_records(cluster)).blockers)
    except MergeRefused:
        return False
