"""The consolidate strategy: a merge through Podium's published API alone.

``merging``: every duplicate that will have no identifier of its own once its conversations move gets a
*retirement handle* first — a unique address on the reserved ``.invalid`` domain, added as its email and
read back to prove it reaches that duplicate alone and that nothing it held was replaced. Then the
add-only write-back puts onto the primary what only the duplicates held and moves their conversations
(``PATCH conversationUid``), and the primary is read back and verified, consent included.

``merged``: each duplicate is read once more (by its handle or its own identifier): unchanged since its
snapshot, it is retired with ``DELETE``; changed, the merge stops before deleting it and the cluster is
re-detected. A deletion is announced in the operation before it is sent, so a crash in between is
resolved by reading (gone: done; there: delete). Never a purge; every snapshot stays with the operation.
"""

from __future__ import annotations

import secrets
from typing import Any

from dedup.consent import mask, requirements, violations
from dedup.merge.common import ERR_DRIFT, ERR_UNRECONCILABLE, crash_point
from dedup.merge.finish import (
    compliance_failed,
    index_survivor,
    mark_duplicates_merged,
    mark_duplicates_retired,
    unmark_duplicates,
)
from dedup.merge.machine import Runner
from dedup.merge.readback import channel_consent
from dedup.merge.writeback import missing_conversations, write_back
from dedup.models import MergeOperation
from dedup.podium import Unaddressable
from dedup.records import normalize_email
from dedup.survivorship import MergePlan
from podium_client import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PodiumError,
    UnaddressableContact,
    UnprocessableError,
)
from podium_client import Contact as PodiumContact

#: Retirement handles live on the reserved ``.invalid`` top-level domain (RFC 2606): never deliverable.
HANDLE_DOMAIN = "dedup-retire.invalid"


def merging(runner: Runner) -> bool:
    """Give duplicates their retirement handles, write onto the primary, move conversations, verify."""
    op, plan = runner.op, runner.plan
    runner.fresh_merging = False
    if not _handles(runner):
        return False
    primary = runner.live.get(op.primary_uid) or runner.read(op.primary_uid)
    if primary is None:
        runner.primary_gone()
        return False
    if isinstance(primary, Unaddressable):
        runner.back_to_review(
            ERR_UNRECONCILABLE, f"the primary cannot be reached: {primary.reason}", "unreachable_member"
        )
        return False
    before = runner.snapshot(op.primary_uid)
    try:
        result = write_back(
            runner.client, plan, primary, identifier=runner.identifier(op.primary_uid), region=runner.region,
            primary_name_before=before.name if before else None, move_conversations=True,
        )  # fmt: skip
    except NotFoundError as exc:
        # The primary, or a conversation being moved, is gone from Podium: the members changed under the
        # merge. Nothing was deleted; the cluster is re-detected.
        runner.transition(
            MergeOperation.RE_INDEX_REQUIRED, error_code=ERR_DRIFT,
            last_error=f"{ERR_DRIFT} updated_at_drift: {exc.message} during the write-back; nothing was deleted",
            evidence={"notFound": exc.message},
            in_transaction=lambda: unmark_duplicates(list(plan.duplicate_uids)),
        )  # fmt: skip
        runner.queue_rescan("changed_during_merge", list(plan.member_uids))
        return False
    except (InvalidRequestError, UnprocessableError, ConflictError) as exc:
        # Podium refuses a write for good: repeating it cannot help; nothing was deleted, a person looks.
        runner.back_to_review(
            ERR_UNRECONCILABLE, f"Podium refused the write-back ({exc.http_status} {exc.code}): {exc.message}; "
            "nothing was deleted", "write_back_refused", evidence={"refused": exc.message},
        )  # fmt: skip
        return False
    except PodiumError as exc:
        # Unlike Podium's merge, nothing is retired before the primary verified: a write-back that could
        # not be sent loses nothing and is no compliance incident. It is retried later.
        runner.defer(exc)
        return False
    runner.live[op.primary_uid] = result.survivor
    crash_point("after_patch")
    if result.problems:
        stuck = missing_conversations(plan, result.survivor)
        if stuck:
            # The tenant does not move conversations that way: stop before any DELETE; a person decides.
            runner.back_to_review(
                ERR_UNRECONCILABLE,
                f"{ERR_UNRECONCILABLE} conversations_not_moved: Podium did not move conversation(s) "
                f"{', '.join(stuck)} onto the primary; nothing was deleted",
                "conversations_not_moved",
                evidence={"conversations": stuck, "problems": result.problems, "sent": result.sent},
            )
            return False
        compliance_failed(runner, result.problems, result.sent)
        return False
    # Whatever was read of the duplicates so far predates the write-back: the last look before each
    # DELETE must come after their data was carried, or an edit made meanwhile would be deleted with them.
    for uid in plan.duplicate_uids:
        runner.live.pop(uid, None)
    runner.transition(
        MergeOperation.MERGED,
        payload={"writtenBack": result.sent, "verified": True, "losses": [x.to_dict() for x in plan.losses]},
        in_transaction=lambda: _record_merged(plan, result.survivor),
    )
    crash_point("merged")
    return True


def _record_merged(plan: MergePlan, survivor: PodiumContact) -> None:
    mark_duplicates_merged(plan)
    index_survivor(survivor)


def retry_write_back(runner: Runner) -> bool:
    """A compliance incident: write onto the primary again (nothing was deleted yet)."""
    return merging(runner)


def _handles(runner: Runner) -> bool:
    """Decide how each duplicate will be reached to retire it; give a handle to those that need one.

    Returns False when the merge stopped (a duplicate cannot be given a handle safely).
    """
    op, plan = runner.op, runner.plan
    retire_by: dict[str, str] = dict(op.steps.get("retireBy") or {})
    handle_set: dict[str, bool] = dict(op.steps.get("handleSet") or {})
    fills = [x for x in (normalize_email(plan.email) if plan.email else None, plan.phone) if x]
    for uid in plan.duplicate_uids:
        if uid in retire_by and (handle_set.get(uid, True) or not _is_handle(retire_by[uid])):
            continue
        if uid not in retire_by:
            snapshot = runner.snapshot(uid)
            moving = snapshot.conversation_uids if snapshot else ()
            try:
                retire_by[uid] = runner.identifier(uid, avoid_conversations=moving, extra_shared=fills)
                runner.save_steps(retireBy=retire_by)
                continue
            except UnaddressableContact:
                retire_by[uid] = f"retire-{op.pk}-{secrets.token_hex(6)}@{HANDLE_DOMAIN}"
                handle_set[uid] = False
                # The intent is durable before the call: a resumed run re-sends the same handle.
                runner.save_steps(retireBy=retire_by, handleSet=handle_set)
        handle = retire_by[uid]
        runner.client.update_contact(runner.identifier(uid), {"email": handle})
        problem = _check_handle(runner, uid, handle)
        if problem:
            runner.transition(
                MergeOperation.UNRECONCILABLE, error_code=ERR_UNRECONCILABLE,
                last_error=f"{ERR_UNRECONCILABLE} merge_state_unreconcilable: {problem}",
                evidence={"duplicate": uid, "handle": handle, "problem": problem},
                payload={"finding": problem},
            )  # fmt: skip
            return False
        handle_set[uid] = True
        runner.save_steps(handleSet=handle_set)
    return True


def _is_handle(identifier: str) -> bool:
    return identifier.endswith("@" + HANDLE_DOMAIN)


def _check_handle(runner: Runner, uid: str, handle: str) -> str | None:
    """Read the duplicate back by its handle: it must be that duplicate, still holding every email."""
    try:
        live = runner.client.get_contact(handle)
    except NotFoundError:
        return f"the retirement handle written on {uid} does not reach it (Podium ignored the email)"
    if live.uid != uid:
        return f"the retirement handle of {uid} reaches another contact, {live.uid}"
    snapshot = runner.snapshot(uid)
    kept = {normalize_email(e) for e in live.emails}
    lost = [e for e in (snapshot.emails if snapshot else ()) if normalize_email(e) not in kept]
    if lost:
        # This tenant replaces the email on PATCH: put the duplicate's own back and stop.
        runner.client.update_contact(handle, {"email": lost[0]})
        return (
            f"Podium replaced {uid}'s email {mask(normalize_email(lost[0]))} with the handle; it was put back"
        )
    runner.live[uid] = live
    return None


def merged(runner: Runner) -> bool:
    """Retire each duplicate that is unchanged since its snapshot; stop before deleting a changed one."""
    op, plan = runner.op, runner.plan
    retire_by: dict[str, str] = dict(op.steps.get("retireBy") or {})
    retired: dict[str, str] = dict(op.steps.get("retired") or {})
    for uid in plan.duplicate_uids:
        if uid in retired:
            continue
        identifier = retire_by.get(uid)
        if identifier is None:
            # Planned before this step existed, or the steps were lost: decide now (conversations moved).
            return merging(runner)
        # The last look, after the data was carried (``merging`` forgets earlier reads of duplicates).
        live = runner.live.get(uid)
        if live is None or op.steps.get("deleting") == uid:
            try:
                live = runner.client.get_contact(identifier)
            except NotFoundError:
                retired[uid] = "deleted" if op.steps.get("deleting") == uid else "already gone"
                runner.save_steps(retired=retired, deleting=None)
                continue
        if live.uid != uid:
            runner.transition(
                MergeOperation.UNRECONCILABLE, error_code=ERR_UNRECONCILABLE,
                last_error=f"{ERR_UNRECONCILABLE} merge_state_unreconcilable: {identifier} now reaches {live.uid}, "
                f"not the duplicate {uid}; nothing was deleted",
                evidence={"duplicate": uid, "reached": live.uid},
            )  # fmt: skip
            return False
        changed = _changes(runner, uid, live)
        if changed:
            runner.transition(
                MergeOperation.RE_INDEX_REQUIRED, error_code="ERR_DEDUP_011",
                last_error=f"ERR_DEDUP_011 updated_at_drift: {uid} changed in Podium after its data was carried "
                f"({', '.join(changed)}); it was not deleted and the cluster is re-detected",
                evidence={"duplicate": uid, "changed": changed},
                in_transaction=lambda: unmark_duplicates([u for u in plan.duplicate_uids if u not in retired]),
            )  # fmt: skip
            runner.queue_rescan("changed_during_merge", [uid])
            return False
        runner.save_steps(deleting=uid)
        crash_point("before_delete")
        try:
            runner.client.delete_contact(identifier)
        except NotFoundError:
            # The client repeats a DELETE whose answer was lost; the repeat finds nothing: it was ours
            # (the duplicate answered to this identifier alone a moment ago).
            pass
        retired[uid] = "deleted"
        runner.save_steps(retired=retired, deleting=None)
        crash_point("after_delete")
    runner.transition(
        MergeOperation.PATCHED,
        error_code="",
        last_error="",
        payload={"retired": retired, "snapshotsKept": sorted(plan.duplicate_uids)},
        in_transaction=lambda: mark_duplicates_retired(list(plan.duplicate_uids), plan.primary_uid),
    )
    return False


def _signature(contact: PodiumContact, moved: set[str]) -> dict[str, Any]:
    return {
        "name": contact.name or "",
        "emails": sorted(normalize_email(e) for e in contact.emails if not _is_handle(e)),
        "phones": sorted(contact.phones),
        "tags": sorted((t.uid or "", t.label) for t in contact.tags),
        "attributes": sorted((a.uid or "", a.label, a.text) for a in contact.attributes),
        "address": None if contact.address is None else contact.address.to_wire(),
        "locations": sorted(contact.location_uids),
        "conversations": sorted(c for c in contact.conversation_uids if c not in moved),
    }


def _changes(runner: Runner, uid: str, live: PodiumContact) -> list[str]:
    """What the duplicate holds now that its snapshot (all carried) did not: names of the fields.

    Consent counts as changed when the survivor no longer satisfies the duplicate's consent as it is
    now (an opt-out made meanwhile on a number or address the survivor holds).
    """
    snapshot = runner.snapshot(uid)
    if snapshot is None:
        return ["no snapshot"]
    moved = set(runner.plan.conversation_uids) | set(snapshot.conversation_uids)
    before, now = _signature(snapshot, moved), _signature(live, moved)
    changed = [name for name in before if before[name] != now[name]]
    survivor = _survivor(runner)
    if survivor is None or violations(
        requirements({uid: channel_consent(live, runner.region)}), channel_consent(survivor, runner.region)
    ):
        changed.append("consent")
    return changed


def _survivor(runner: Runner) -> PodiumContact | None:
    """The primary as verified in this run; read once when this run did not verify it (a resume)."""
    primary = runner.live.get(runner.op.primary_uid)
    if primary is None:
        read = runner.read(runner.op.primary_uid)
        primary = read if isinstance(read, PodiumContact) else None
    return primary
