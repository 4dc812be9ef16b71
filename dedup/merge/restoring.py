"""Restoring a contact a merge retired, with at least the consent the merge computed.

Two ways, by what the tenant has:

* ``restore`` capability (Part 2): Podium un-hides the contact;
* otherwise (the published API): the contact is **re-created** from the snapshot its merge kept — name,
  locations, phone, email, address, tags, attributes — and its conversations are moved back. Podium gives
  the re-created contact a new uid, recorded beside the old one. ``POST /v4/contacts`` is an upsert on a
  matching phone or email, so the contact is created with none the survivor holds and they are added
  after (``PATCH`` never merges).

Either way the restored contact ends with consent at least as strict as the merge required for every
number and address it holds: marketing is withdrawn where needed (``campaigns/opt_out``); a channel whose
transactional opt-out the published API cannot set is not re-attached (named in ``not_restored``). A
contact that un-hiding would leave weaker stays hidden and is re-created instead, without that channel,
so every retired contact is restorable. "These are different people" can
be remembered with the restore. A restore by a person is a decision: the pair is not merged again
automatically. A contact restored three times is a restore loop (``ERR_DEDUP_013``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from dedup import audit
from dedup.consent import mask, needs_for, violations
from dedup.merge.common import ERR_COMPLIANCE, ERR_RESTORE_LOOP, RESTORE_LOOP_ROUNDS, MergeRefused, new_client
from dedup.merge.decisions import User, person_of
from dedup.merge.finish import index_survivor
from dedup.merge.progress import restore_loop_contacts, restore_rounds
from dedup.merge.readback import channel_consent, contact_from_snapshot
from dedup.models import Cluster, Contact, ContactKey, MergeOperation, RestoreRecord, ReviewDecision
from dedup.podium import shared_keys
from dedup.records import normalize_email
from dedup.survivorship import MergePlan
from podium_client import Contact as PodiumContact
from podium_client import NotFoundError, PodiumClient, PodiumError

logger = logging.getLogger("dedup.merge.restoring")

__all__ = ["RestoreError", "RestoreLoopError", "restore_contact", "restore_loop_contacts"]


class RestoreError(Exception):
    """The contact cannot be restored (unknown, not retired, no snapshot) or its consent did not hold."""

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
    """The latest merge operation that took this contact as a duplicate (None when the product did not)."""
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


@dataclass
class _Outcome:
    """What a restore did, for the record and the audit event."""

    method: str
    contact: PodiumContact
    new_uid: str = ""
    not_restored: list[dict[str, str]] = field(default_factory=list)
    opted_out: list[str] = field(default_factory=list)


def restore_contact(
    contact_uid: str,
    *,
    user: User,
    different_people: bool = False,
    note: str = "",
    client: PodiumClient | None = None,
) -> RestoreRecord:
    """Restore a contact a merge retired (see the module docstring); callers check the person may (admins).

    Raises RestoreError when there is nothing to restore, when Podium fails, or when the consent did not
    hold (``ERR_DEDUP_010``; a re-created contact stays and is audited, the restore is to be retried).
    """
    actor, actor_user_id = audit.actor_for(person_of(user), "system" if user is None else None)
    operation = merge_operation_for(contact_uid)
    if operation is None:
        raise RestoreError(f"{contact_uid} was not merged away by this product; there is nothing to restore")
    plan = MergePlan.from_dict(operation.plan)
    region = _region(contact_uid)
    own = client is None
    active = client or new_client()
    try:
        outcome = _unhide(active, contact_uid, plan, region) if active.has("restore") else None
        if outcome is None:
            outcome = _recreate(active, operation, contact_uid, plan, region, hidden=active.has("restore"))
    except PodiumError as exc:
        audit.record(
            "contact.restore_failed",
            actor=actor, actor_user_id=actor_user_id, operation_ref=operation.pk, contact_uids=[contact_uid],
            payload={"error": f"{type(exc).__name__}: {exc}"},
        )  # fmt: skip
        raise RestoreError(f"restoring {contact_uid} failed: {exc}") from exc
    finally:
        if own:
            active.close()
    problems = violations(plan.consent, channel_consent(outcome.contact, region))
    record = _record(
        contact_uid, operation, plan, outcome, actor=actor, actor_user_id=actor_user_id, user=user,
        different_people=different_people, note=note, verified=not problems,
    )  # fmt: skip
    if problems:
        logger.error(
            "COMPLIANCE restore of %s: consent did not hold (%d problem(s))", contact_uid, len(problems)
        )
        raise RestoreError(
            f"{contact_uid} was restored but its consent is weaker than the merge required: {'; '.join(problems)}; "
            "retry the restore",
            code=ERR_COMPLIANCE,
        )
    return record


def _region(uid: str) -> str:
    country = Contact.objects.filter(uid=uid).values_list("location__country", flat=True).first()
    return (country or "AU").upper()


def _unhide(client: PodiumClient, uid: str, plan: MergePlan, region: str) -> _Outcome | None:
    """Un-hide the contact; None when that would leave it less strict than its merge required (a
    channel without a transactional opt-out the published API cannot set): it is re-created instead,
    without that channel, and stays hidden."""
    try:
        before = client.get_contact(uid)
    except NotFoundError as exc:
        raise RestoreError(f"{uid} is unknown to Podium", code="ERR_DEDUP_007") from exc
    if not before.is_hidden:
        raise RestoreError(f"{uid} is not deleted or merged in Podium; there is nothing to restore")
    needs = needs_for(plan.consent, channel_consent(before, region))
    if needs.uncarriable:
        logger.info("%s cannot be un-hidden without weakening its consent; re-created instead", uid)
        return None
    restored = client.restore_contact(uid)
    for phone in needs.opt_out_phones:
        client.opt_out_phone(phone)
    after = client.get_contact(uid) if needs.opt_out_phones else restored
    return _Outcome("unhidden", after, opted_out=[mask(p) for p in needs.opt_out_phones])


def _recreate(
    client: PodiumClient, operation: MergeOperation, uid: str, plan: MergePlan, region: str, *, hidden: bool
) -> _Outcome:
    """Re-create the contact from its snapshot; ``hidden`` when Podium was seen to hold it hidden."""
    raw = (operation.member_snapshot.get(uid) or {}).get("contact")
    if not isinstance(raw, dict):
        raise RestoreError(f"the merge of {uid} kept no snapshot to re-create it from")
    if not hidden and (operation.steps.get("retired") or {}).get(uid) != "deleted":
        raise RestoreError(
            f"{uid} was not deleted by its merge (operation #{operation.pk}); there is nothing to restore"
        )
    done = RestoreRecord.objects.filter(
        contact_uid=uid, operation=operation, method=RestoreRecord.RECREATED
    ).first()
    if done is not None:
        raise RestoreError(f"{uid} was already re-created from this merge as {done.new_uid}")
    snapshot = contact_from_snapshot(raw)
    phone_identity = {
        c.identifier: c.identity for c in channel_consent(snapshot, region) if c.kind == "PHONE"
    }
    not_restored: list[dict[str, str]] = []

    def attachable(kind: str, identity: str, value: str) -> bool:
        need = plan.consent.get(identity)
        if need is not None and need.transactional_opt_out:
            not_restored.append(
                {
                    "field": kind,
                    "value": mask(identity),
                    "reason": "it opted out of transactional messages, which Podium's published API cannot set",
                }  # fmt: skip
            )
            return False
        return True

    phones = [(p, phone_identity.get(p, "")) for p in snapshot.phones]
    emails = [(e, normalize_email(e)) for e in snapshot.emails]
    phone = next(((p, i) for p, i in phones if i.startswith("+") and attachable("phone", i, p)), None)
    email = next(((e, i) for e, i in emails if attachable("email", i, e)), None)
    # Each value left out is named once: for its consent (above) or because one of a kind is taken.
    for kind, values, chosen in (("phone", phones, phone), ("email", emails, email)):
        for _v, i in values:
            named = any(x["field"] == kind and x["value"] == mask(i) for x in not_restored)
            if (chosen is None or i != chosen[1]) and not named:
                reason = f"Podium's published API takes one {kind}"
                not_restored.append({"field": kind, "value": mask(i), "reason": reason})
    # The create is an upsert on phone and email: only ones no live contact holds go in it.
    taken = shared_keys(uid, [i for _v, i in ([phone] if phone else []) + ([email] if email else [])])
    create_phone = phone if phone and phone[1] not in taken else None
    create_email = email if email and email[1] not in taken else None
    name = snapshot.name or "Restored contact"
    # Re-creation is resumable: the create is announced before it is sent and its identifier kept after,
    # so a restore repeated after a failure continues with the same contact instead of making another.
    progress = dict((operation.steps.get("recreating") or {}).get(uid) or {})
    identifier = progress.get("identifier")
    if identifier is None and progress.get("attemptAt"):
        identifier = _find_lost_creation(
            client, uid, name, snapshot, progress["attemptAt"], create_phone, create_email
        )
    if identifier is None:
        attempt = timezone.now()
        _save_progress(operation, uid, {"attemptAt": attempt.isoformat()})
        identifier = client.create_contact(
            name,
            list(snapshot.location_uids),
            phone_number=create_phone[1] if create_phone else None,
            email=create_email[0] if create_email else None,
        )
        if not identifier:
            raise RestoreError(f"Podium created {uid}'s replacement but named no identifier to reach it")
        _save_progress(operation, uid, {"attemptAt": attempt.isoformat(), "identifier": identifier})
    created = client.get_contact(identifier)
    if created.uid in plan.member_uids or Contact.objects.filter(uid=created.uid).exists():
        raise RestoreError(
            f"re-creating {uid} reached the existing contact {created.uid} (Podium matched it); nothing was changed"
        )
    fields: dict[str, Any] = {}
    if phone and not create_phone:
        fields["phoneNumber"] = phone[1]
    if email and not create_email:
        fields["email"] = email[0]
    if snapshot.address is not None:
        fields["address"] = snapshot.address
    if fields:
        client.update_contact(identifier, fields)
    for tag in snapshot.tags:
        tag_uid = tag.uid or client.ensure_tag(tag.label).uid
        if tag_uid:
            client.attach_tag(identifier, tag_uid)
    for attribute in snapshot.attributes:
        if attribute.uid and attribute.text:
            client.set_attribute(identifier, attribute.uid, attribute.text)
    for conversation in snapshot.conversation_uids:
        client.update_contact(identifier, {"conversationUid": conversation})
    after = client.get_contact(identifier)
    needs = needs_for(plan.consent, channel_consent(after, region))
    for number in needs.opt_out_phones:
        client.opt_out_phone(number)
    if needs.opt_out_phones:
        after = client.get_contact(identifier)
    return _Outcome(
        "recreated",
        after,
        new_uid=after.uid,
        not_restored=not_restored,
        opted_out=[mask(p) for p in needs.opt_out_phones],
    )


def _save_progress(operation: MergeOperation, uid: str, progress: dict[str, Any]) -> None:
    steps = dict(operation.steps)
    steps["recreating"] = {**(steps.get("recreating") or {}), uid: progress}
    MergeOperation.objects.filter(pk=operation.pk).update(steps=steps, updated_at=timezone.now())
    operation.steps = steps


def _find_lost_creation(
    client: PodiumClient,
    uid: str,
    name: str,
    snapshot: PodiumContact,
    attempt_at: str,
    phone: tuple[str, str] | None,
    email: tuple[str, str] | None,
) -> str | None:
    """The identifier of the contact an earlier attempt created when its answer was lost, else None.

    Contacts created since the attempt are few: the listing of those updated after it finds the one with
    this name and these locations that the index does not know. Two such contacts are for a person.
    """
    since = datetime.fromisoformat(attempt_at) - timedelta(seconds=2)
    found: list[PodiumContact] = []
    for page in client.iter_contact_pages(updated_after=since):
        for contact in page:
            if (
                contact.name == name
                and set(contact.location_uids) == set(snapshot.location_uids)
                and contact.created_at is not None
                and contact.created_at >= since
                and not Contact.objects.filter(uid=contact.uid).exists()
            ):
                found.append(contact)
    if len(found) > 1:
        raise RestoreError(
            f"re-creating {uid}: an earlier attempt's outcome was unknown and {len(found)} new contacts named like it "
            f"exist ({', '.join(c.uid for c in found)}); a person must look before it is re-created again"
        )
    if not found:
        return None
    # Reached the way it was created: its phone or email, else its uid (a contact created without either).
    return phone[1] if phone else email[0] if email else found[0].uid


def _record(
    contact_uid: str,
    operation: MergeOperation,
    plan: MergePlan,
    outcome: _Outcome,
    *,
    actor: str,
    actor_user_id: int | None,
    user: User,
    different_people: bool,
    note: str,
    verified: bool,
) -> RestoreRecord:
    merged_into = operation.primary_uid
    with transaction.atomic():
        record = RestoreRecord.objects.create(
            contact_uid=contact_uid,
            merged_into_uid=merged_into,
            operation=operation,
            method=outcome.method,
            new_uid=outcome.new_uid,
            not_restored=outcome.not_restored,
            opt_outs_applied={"optedOut": outcome.opted_out},
            marked_different_people=different_people,
            restored_by=person_of(user),
        )
        restored_uid = outcome.new_uid or contact_uid
        pair: list[str] = []
        if different_people:
            uid_a, uid_b = ReviewDecision.sorted_pair(restored_uid, merged_into)
            ReviewDecision.objects.get_or_create(
                decision=ReviewDecision.DIFFERENT_PEOPLE, uid_a=uid_a, uid_b=uid_b,
                defaults={"decided_by": person_of(user), "note": note or "restored: different people",
                          "cluster": operation.cluster},
            )  # fmt: skip
            pair = [uid_a, uid_b]
        index_survivor(outcome.contact)
        # The merged cluster no longer describes Podium: superseded, so a rescan re-detects the contacts.
        reopened = bool(
            Cluster.objects.filter(pk=operation.cluster_id, status=Cluster.MERGED).update(
                status=Cluster.SUPERSEDED, updated_at=timezone.now()
            )
        )
        rounds = restore_rounds([contact_uid]).get(contact_uid, 0)
        keys = sorted(set(ContactKey.objects.filter(contact__uid=restored_uid).values_list("key", flat=True)))
        common: dict[str, Any] = {
            "actor": actor,
            "actor_user_id": actor_user_id,
            "cluster_ref": operation.cluster.cluster_id,
            "operation_ref": operation.pk,
            "location_uids": list(outcome.contact.location_uids),
            "contact_uids": sorted({contact_uid, restored_uid, merged_into}),
            "natural_keys": keys,
        }
        audit.record(
            "contact.restored",
            **common,
            payload={
                "method": outcome.method,
                "newUid": outcome.new_uid or None,
                "mergedIntoUid": merged_into,
                "mergeOptOutUnion": plan.opt_outs.to_wire(),
                "optedOut": outcome.opted_out,
                "notRestored": outcome.not_restored,
                "verified": verified,
                "differentPeople": pair,
                "note": note,
                "restoreRound": rounds,
                "clusterSupersededForRescan": reopened,
            },
        )
        if rounds >= RESTORE_LOOP_ROUNDS:
            audit.record(
                "restore.loop_detected",
                **common,
                payload={"code": ERR_RESTORE_LOOP, "rounds": rounds,
                         "message": f"{contact_uid} restored after a merge {rounds} times; it will not be merged again"},
            )  # fmt: skip
            logger.warning(
                "%s restore_loop: %s restored %d times; not merged again",
                ERR_RESTORE_LOOP,
                contact_uid,
                rounds,
            )
    if keys:
        from dedup.scanning import queue_rescan_of_keys

        queue_rescan_of_keys(keys, "contact restored", actor=actor, contact_uids=[restored_uid])
    return record
