"""Planning a cluster's merge before any call: the typed plan, what blocks it, what a person must accept.

The plan (``dedup.survivorship.MergePlan``) is computed from the indexed members. The strategy adds its
own limits: consolidating through the published API needs every member reachable by an identifier that
reaches it alone (``dedup.podium.identifier_of``); Podium's ``merge`` capability addresses contacts by uid.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

from django.conf import settings

from dedup.merge.common import ERR_RESTORE_LOOP, RESTORE_LOOP_ROUNDS, MergeRefused, strategy_for
from dedup.merge.progress import restore_rounds
from dedup.models import Cluster, Contact, MergeOperation
from dedup.podium import identifier_of, indexed_contact_as_podium
from dedup.records import MemberRecord
from dedup.survivorship import MergePlan, plan_merge
from podium_client import UnaddressableContact


def member_records(cluster: Cluster) -> list[MemberRecord]:
    """The domain view of a cluster's members as indexed, sorted by uid."""
    from dedup.detection import member_records as load

    return list(load(cluster))


def current_strategy() -> str:
    """The strategy this deployment merges with (its tenant's declared capabilities decide)."""
    return strategy_for(set(settings.PODIUM_CAPABILITIES))


def _preferred_name(records: Sequence[MemberRecord]) -> str | None:
    """The best-formed spelling of the members' shared name, when the names module offers one."""
    from dedup import names

    best = getattr(names, "best_spelling", None)
    if best is None:
        return None
    chosen: str | None = best([r.name for r in records if r.name.strip()])
    return chosen


def plan_for(cluster: Cluster, records: Sequence[MemberRecord], *, strategy: str | None = None) -> MergePlan:
    """The plan for merging these members of the cluster, with the strategy's blockers added.

    A reviewer's chosen primary is taken for clusters that do not merge automatically. Raises
    MergeRefused when the members cannot be planned at all (not members, fewer than two).
    """
    strategy = strategy or current_strategy()
    chosen = cluster.chosen_primary_uid if (cluster.chosen_primary_uid and not cluster.auto_merge) else None
    try:
        plan = plan_merge(records, primary_uid=chosen, preferred_name=_preferred_name(records))
    except ValueError as exc:
        raise MergeRefused(f"Cluster {cluster.cluster_id} cannot be planned: {exc}", cluster=cluster) from exc
    if strategy == MergeOperation.CONSOLIDATE:
        unreachable = _unreachable(plan)
        if unreachable:
            plan = dataclasses.replace(plan, blockers=(*plan.blockers, *unreachable))
    return plan


def _unreachable(plan: MergePlan) -> list[str]:
    """Members the published API cannot address alone (no conversation, no phone or email only they hold)."""
    rows = {
        c.uid: c for c in Contact.objects.filter(uid__in=list(plan.member_uids)).select_related("location")
    }
    problems = []
    for uid in plan.member_uids:
        row = rows.get(uid)
        if row is None:
            continue
        try:
            identifier_of(indexed_contact_as_podium(row), row.location.country)
        except UnaddressableContact:
            role = "the primary" if uid == plan.primary_uid else "duplicate"
            problems.append(
                f"{role} {uid} has no conversation and no phone or email that only it holds, so Podium's published "
                "API cannot reach it without risking another contact"
            )
    return problems


def restore_counts(uids: Iterable[str]) -> dict[str, int]:
    """How many times each contact (or a contact it was re-created from) was restored after a merge."""
    return restore_rounds(uids)


def restore_loops(plan: MergePlan) -> dict[str, int]:
    """Members restored after a merge ``RESTORE_LOOP_ROUNDS`` times or more (``ERR_DEDUP_013``)."""
    return {uid: n for uid, n in restore_counts(plan.member_uids).items() if n >= RESTORE_LOOP_ROUNDS}


def plan_payload(plan: MergePlan) -> dict[str, Any]:
    """The plan as audit events show it."""
    data = plan.to_dict()
    return {
        "primaryUid": data["primaryUid"],
        "duplicateUids": data["duplicateUids"],
        "chosenBy": data["chosenBy"],
        "optOutsBefore": data["memberOptOuts"],
        "optOutsUnion": data["optOuts"],
        "writeBack": {
            k: data[k]
            for k in ("name", "address", "email", "phone", "tags", "attributes", "locations", "optOutPhones")
        },
        "conversations": data["conversations"],
        "losses": data["losses"],
        "blockers": data["blockers"],
    }


def planned_calls(plan: MergePlan, strategy: str) -> list[dict[str, Any]]:
    """The calls a merge of this plan makes, in order, for a dry run (no values of the members' PII)."""
    calls: list[dict[str, Any]] = [
        {"call": "GET /v4/contacts/{identifier}", "contact": uid, "why": "re-read: drift check and snapshot"}
        for uid in plan.member_uids
    ]
    if strategy == MergeOperation.NATIVE:
        calls.append({"call": "POST /v4/contacts/{uid}/merge", "contact": plan.primary_uid,
                      "duplicates": list(plan.duplicate_uids)})  # fmt: skip
    fills = [k for k in ("name", "address", "email", "phone") if getattr(plan, k) is not None]
    if fills or plan.locations:
        calls.append({"call": "PATCH /v4/contacts/{identifier}", "contact": plan.primary_uid,
                      "fields": fills + (["locations"] if plan.locations else [])})  # fmt: skip
    calls += [{"call": "POST /v4/contacts/{identifier}/tags/{uid}", "tag": t.label} for t in plan.tags]
    calls += [
        {"call": "POST /v4/contacts/{identifier}/attributes/{uid}", "attribute": a.label}
        for a in plan.attributes
    ]
    calls += [
        {"call": "POST /v4/contacts/campaigns/opt_out", "why": "marketing consent"}
        for _ in plan.opt_out_phones
    ]
    if strategy == MergeOperation.CONSOLIDATE:
        calls += [
            {"call": "PATCH /v4/contacts/{identifier}", "contact": plan.primary_uid, "conversationUid": c}
            for c in plan.conversation_uids
        ]
    calls.append(
        {"call": "GET /v4/contacts/{identifier}", "contact": plan.primary_uid, "why": "read back, verify"}
    )
    if strategy == MergeOperation.CONSOLIDATE:
        for uid in plan.duplicate_uids:
            calls.append(
                {"call": "GET /v4/contacts/{identifier}", "contact": uid, "why": "unchanged since snapshot?"}
            )
            calls.append(
                {"call": "DELETE /v4/contacts/{identifier}", "contact": uid, "why": "retire, snapshot kept"}
            )
    return calls


def describe_plan(cluster: Cluster) -> dict[str, Any]:
    """The dry run of a cluster's merge: the plan and the calls it would make, calling nothing."""
    records = member_records(cluster)
    strategy = current_strategy()
    plan = plan_for(cluster, records, strategy=strategy)
    data = plan.to_dict()
    loops = restore_loops(plan)
    refused = None
    if loops:
        refused = {"code": ERR_RESTORE_LOOP, "restoreCounts": loops}
    elif plan.blockers:
        refused = {"code": "blocked", "blockers": list(plan.blockers)}
    return {
        "clusterId": cluster.cluster_id,
        "status": cluster.status,
        "kind": cluster.kind,
        "autoMerge": cluster.auto_merge,
        "strategy": strategy,
        "primaryUid": data["primaryUid"],
        "chosenBy": data["chosenBy"],
        "duplicateUids": data["duplicateUids"],
        "optOutsBefore": data["memberOptOuts"],
        "optOutUnion": data["optOuts"],
        "losses": data["losses"],
        "blockers": data["blockers"],
        "refused": refused,
        "calls": [] if refused else planned_calls(plan, strategy),
    }
