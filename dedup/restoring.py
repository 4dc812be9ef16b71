"""Restoring a contact that a merge (or anyone) soft-deleted, without losing an opt-out.

Podium's merge and delete only hide a contact, so a merge is undone by restoring the duplicate. The
restored contact gets at least the opt-outs the merge computed for its cluster (the plan's union), on
top of its own: a customer who opted out on any member stays opted out on every contact that carries
their number. "These are different people" can be remembered with the restore, so detection does not
propose the pair again. A contact restored after a merge three times is a restore loop
(``ERR_DEDUP_013``): it is surfaced here and the orchestrator refuses to merge it again.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction
from django.utils import timezone

from dedup import audit
from dedup.merging import (
    ERR_COMPLIANCE,
    ERR_RESTORE_LOOP,
    RESTORE_LOOP_ROUNDS,
    MergeRefused,
    User,
    new_client,
    person_of,
    restore_loop_contacts,
)
from dedup.models import Cluster, Contact, ContactKey, MergeOperation, Policy, RestoreRecord, ReviewDecision
from dedup.records import OPT_OUT_WIRE_FIELDS, OptOuts
from dedup.survivorship import MergePlan
from podium_client import Contact as PodiumContact
from podium_client import NotFoundError, PodiumClient, PodiumError

logger = logging.getLogger("dedup.restoring")

__all__ = ["RestoreError", "RestoreLoopError", "restore_contact", "restore_loop_contacts"]


class RestoreError(Exception):
    """The contact cannot be restored: unknown to Podium, not soft-deleted, or its opt-outs did not hold."""

    def __init__(self, message: str, *, code: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class RestoreLoopError(MergeRefused):
    """``ERR_DEDUP_013`` restore_loop: a member was restored and re-merged three times; not merged again."""

    def __init__(self, message: str, **kwargs: Any) -> None:
        kwargs.setdefault("code", ERR_RESTORE_LOOP)
        super().__init__(message, **kwargs)


def merge_operation_for(contact_uid: str) -> MergeOperation | None:
    """The latest merge operation that merged this contact away as a duplicate (None when the product did not)."""
    candidates = (
        MergeOperation.objects.filter(cluster__members__contact__uid=contact_uid)
        .exclude(primary_uid=contact_uid)
        .exclude(state=MergeOperation.PENDING)
        .order_by("-created_at", "-pk")
        .distinct()
    )
    for operation in candidates:
        if contact_uid in operation.duplicate_uids:
            return operation
    return None


def restore_contact(
    contact_uid: str,
    *,
    user: User,
    different_people: bool = False,
    note: str = "",
    client: PodiumClient | None = None,
) -> RestoreRecord:
    """Restore a soft-deleted contact through Podium and give it at least the merge's opt-outs.

    The opt-outs forced onto it are the union of its own and the plan's union of the merge that took it
    (only flags that are on are sent, so nothing is ever turned off), then read back and verified
    (``RestoreError`` with ``ERR_DEDUP_010`` if they do not hold; the restore itself stands and is
    audited). With ``different_people`` the pair (restored contact, the primary it was merged into) is
    remembered so detection does not propose it again. The index row is updated, the merged cluster is
    marked superseded (it no longer describes Podium; the rescan re-detects its contacts), the event
    audited, and the contact's keys queued for a rescan. Callers check the person may restore (admins).
    """
    actor, actor_user_id = audit.actor_for(person_of(user), "system" if user is None else None)
    operation = merge_operation_for(contact_uid)
    plan = MergePlan.from_dict(operation.plan) if operation is not None and operation.plan else None
    own = client is None
    active = client or new_client()
    request_ids: list[str] = []
    try:
        try:
            before = active.get_contact(contact_uid)
        except NotFoundError as exc:
            raise RestoreError(f"{contact_uid} is unknown to Podium", code="ERR_DEDUP_007") from exc
        _rid(request_ids, before)
        if before.deleted_at is None:
            return _repair_or_refuse(active, before, actor=actor, actor_user_id=actor_user_id)
        merged_into = before.merged_into_uid or (operation.primary_uid if operation is not None else "")
        restored = active.restore_contact(contact_uid)
        _rid(request_ids, restored)
        own_flags = OptOuts.from_wire(before.to_wire()).union(OptOuts.from_wire(restored.to_wire()))
        wanted = own_flags.union(plan.opt_outs) if plan is not None else own_flags
        fields = {name: True for name, on in wanted.to_wire().items() if on}
        after = _force_opt_outs(active, restored, wanted, request_ids)
    except PodiumError as exc:
        _rid(request_ids, exc)
        audit.record(
            "contact.restore_failed",
            actor=actor, actor_user_id=actor_user_id, operation_ref=operation.pk if operation else None,
            contact_uids=[contact_uid], payload={"error": f"{type(exc).__name__}: {exc}", "requestIds": request_ids},
        )
        raise RestoreError(f"restoring {contact_uid} failed: {exc}") from exc
    finally:
        if own:
            active.close()

    after_flags = OptOuts.from_wire(after.to_wire())
    held = after_flags.covers(wanted)
    with transaction.atomic():
        record = RestoreRecord.objects.create(
            contact_uid=contact_uid,
            merged_into_uid=merged_into,
            operation=operation,
            opt_outs_applied=wanted.to_wire(),
            marked_different_people=bool(different_people and merged_into),
            restored_by=person_of(user),
        )
        pair: list[str] = []
        if different_people and merged_into:
            uid_a, uid_b = ReviewDecision.sorted_pair(contact_uid, merged_into)
            ReviewDecision.objects.get_or_create(
                decision=ReviewDecision.DIFFERENT_PEOPLE, uid_a=uid_a, uid_b=uid_b,
                defaults={"decided_by": person_of(user), "note": note or "restored: different people",
                          "cluster": operation.cluster if operation else None},
            )
            pair = [uid_a, uid_b]
        _reindex(after)
        reopened = False
        if operation is not None:
            # The merged cluster no longer describes Podium: superseded, so the rescan re-detects the
            # contacts (detection never touches a merged cluster) and proposes them again unless a person
            # said they are different people. That is also how a restore loop shows itself.
            reopened = bool(
                Cluster.objects.filter(pk=operation.cluster_id, status=Cluster.MERGED).update(
                    status=Cluster.SUPERSEDED, updated_at=timezone.now()
                )
            )
        rounds = RestoreRecord.objects.filter(contact_uid=contact_uid).count()
        keys = sorted(set(ContactKey.objects.filter(contact__uid=contact_uid).values_list("key", flat=True)))
        location = Contact.objects.filter(uid=contact_uid).values_list("location__uid", flat=True).first()
        common: dict[str, Any] = {
            "actor": actor,
            "actor_user_id": actor_user_id,
            "cluster_ref": operation.cluster.cluster_id if operation else "",
            "operation_ref": operation.pk if operation else None,
            "location_uids": [location] if location else [],
            "contact_uids": [contact_uid, *([merged_into] if merged_into else [])],
            "natural_keys": keys,
        }
        audit.record(
            "contact.restored",
            **common,
            payload={
                "mergedIntoUid": merged_into,
                "optOutsBefore": OptOuts.from_wire(before.to_wire()).to_wire(),
                "mergeOptOutUnion": plan.opt_outs.to_wire() if plan else None,
                "optOutsApplied": fields,
                "optOutsAfter": after_flags.to_wire(),
                "verified": held,
                "differentPeople": pair,
                "note": note,
                "restoreRound": rounds,
                "clusterSupersededForRescan": reopened,
                "requestIds": request_ids,
            },
        )
        if rounds >= RESTORE_LOOP_ROUNDS:
            audit.record(
                "restore.loop_detected",
                **common,
                payload={"code": ERR_RESTORE_LOOP, "rounds": rounds,
                         "message": f"{contact_uid} restored after a merge {rounds} times; it will not be merged again"},
            )
            logger.warning("%s restore_loop: %s restored %d times; not merged again", ERR_RESTORE_LOOP, contact_uid, rounds)
    if not held:
        missing = [name for name in OPT_OUT_WIRE_FIELDS if wanted.to_wire()[name] and not after_flags.to_wire()[name]]
        logger.error("COMPLIANCE restore of %s: opt-outs did not hold after PATCH: %s", contact_uid, missing)
        raise RestoreError(
            f"{contact_uid} was restored but its opt-outs {missing} did not hold; retry the restore", code=ERR_COMPLIANCE
        )
    if keys:
        from dedup.scanning import queue_rescan_of_keys

        queue_rescan_of_keys(keys, "contact restored", actor=actor, contact_uids=[contact_uid])
    return record


def _force_opt_outs(
    client: PodiumClient, current: PodiumContact, wanted: OptOuts, request_ids: list[str], attempts: int = 3
) -> PodiumContact:
    """PATCH the flags that must be on (never one set to False), read back, and repeat a few times."""
    fields = {name: True for name, on in wanted.to_wire().items() if on}
    after = current
    for _ in range(attempts):
        if OptOuts.from_wire(after.to_wire()).covers(wanted):
            return after
        _rid(request_ids, client.update_contact(current.uid, fields))
        after = client.get_contact(current.uid)
        _rid(request_ids, after)
    return after


def _repair_or_refuse(client: PodiumClient, live: PodiumContact, *, actor: str, actor_user_id: int | None) -> RestoreRecord:
    """A live contact: re-apply the opt-outs of its last restore if they do not hold, else refuse."""
    record = RestoreRecord.objects.filter(contact_uid=live.uid).order_by("-restored_at", "-pk").first()
    if record is None:
        raise RestoreError(f"{live.uid} is not soft-deleted; there is nothing to restore")
    wanted = OptOuts.from_wire(record.opt_outs_applied)
    if OptOuts.from_wire(live.to_wire()).covers(wanted):
        raise RestoreError(f"{live.uid} is not soft-deleted; it was already restored and its opt-outs hold")
    request_ids: list[str] = []
    after = _force_opt_outs(client, live, wanted, request_ids)
    held = OptOuts.from_wire(after.to_wire()).covers(wanted)
    audit.record(
        "contact.restore_repaired",
        actor=actor, actor_user_id=actor_user_id, operation_ref=record.operation_id, contact_uids=[live.uid],
        payload={"optOutsWanted": wanted.to_wire(), "optOutsAfter": OptOuts.from_wire(after.to_wire()).to_wire(),
                 "verified": held, "requestIds": request_ids},
    )
    if not held:
        logger.error("COMPLIANCE restore of %s: opt-outs still do not hold", live.uid)
        raise RestoreError(f"{live.uid}: its opt-outs still do not hold; retry", code=ERR_COMPLIANCE)
    _reindex(after)
    return record


def _rid(request_ids: list[str], value: PodiumContact | PodiumError | None) -> None:
    request_id = getattr(value, "request_id", None)
    if request_id:
        request_ids.append(request_id)


def _reindex(contact: PodiumContact) -> None:
    from dedup.indexing import IndexWriter, prepare_contact

    writer = IndexWriter(Policy.current().default_region)
    writer.write([prepare_contact(contact, writer.region_for(contact.location_uid))])
