"""Every auto-mergeable cluster of a demo corpus merged, for each strategy, with and without faults.

A few hundred people with the mess of real life (one number in many spellings, households, junk phones,
consent that sits on one duplicate only, people at two locations) are scanned from the emulator over
HTTP and detected; every auto-mergeable cluster is merged — once cleanly, once while the emulator fails
requests (5xx and 429), drops answers after applying writes and rate-limits, then resumed until every
operation settled. Checked against the emulator's final state, ``/_emulator/deleted`` and the corpus's
ground truth:

* every auto cluster is merged, or was sent to review naming what it would lose or what blocks it;
* nothing lost: every phone, email, tag, attribute, conversation and location of every member is on its
  survivor, and every member's consent per number and address is kept (Podium's per-channel model), the
  survivor's three flags covering theirs;
* nothing merged twice, no two people merged, no ambiguous identifier used, no purge, nothing else
  touched (other holders of a number may only have become stricter);
* every retired contact is restorable.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest
from django.contrib.auth.models import User

from dedup.merge import approve_cluster, merge_all_auto, operation_summary, resume_operations
from dedup.merge.restoring import restore_contact
from dedup.models import AuditEvent, Cluster, MergeOperation, RestoreRecord, ScanRun
from dedup.scanning import start_scan
from podium_client import Contact as PodiumContact
from podium_client.corpus import AUCKLAND, generate_corpus
from podium_client.emulator import EmulatorState
from tests.merge_helpers import CAPABILITIES, consent_problems, flags, missing_on, union_of_flags

if TYPE_CHECKING:
    from tests.merge_helpers import MergeEnv

pytest_plugins = ["tests.merge_helpers"]
pytestmark = pytest.mark.django_db

PEOPLE = 300
SEED = 20260
#: 10% of requests fail (500, 502, 503 or an injected 429 with Retry-After), 5% of writes are applied and
#: then hung up on, and a sliding-window limit of 50 requests a second answers 429 to bursts beyond it
#: (whether a burst reaches it depends on the machine's speed; the injected 429s always happen).
FAULTS = {"fail_rate": 0.1, "drop_after_commit_rate": 0.05, "rate_limit": 3000, "rate_window_s": 1.0}


def _region(contact: PodiumContact) -> str:
    return "NZ" if contact.location_uid == AUCKLAND else "AU"


def _scan() -> None:
    run = start_scan(full=True, run_async=False, actor="worker:test")
    assert run.state == ScanRun.SUCCEEDED, run.error_message


def _settle(env: MergeEnv) -> None:
    """Resume until no operation is left to continue (deferred ones are retried at once)."""
    for _ in range(10):
        resume_operations(worker="corpus-resume", client=env.client())
        if not MergeOperation.objects.filter(state__in=MergeOperation.RESUMABLE_STATES).exists():
            return
    pytest.fail(f"operations did not settle: {operation_summary()}")


def _named(missing: str, losses: list[dict[str, str]]) -> bool:
    """Whether a value missing on the survivor (``missing_on``'s ``kind:value``) is one of the accepted losses."""
    kind, _, value = missing.partition(":")
    for loss in losses:
        field = loss["field"].split(":")[0]
        if kind == "address" and field == "address":
            return True
        if (
            kind == "phone"
            and field == "phone"
            and value[-8:] == "".join(c for c in loss["value"] if c.isdigit())[-8:]
        ):
            return True
        if kind == "email" and field == "email" and value == loss["value"].strip().lower():
            return True
        if (
            kind == "attribute"
            and field == "attribute"
            and value == loss["field"].split(":", 1)[1].casefold()
        ):
            return True
    return False


def _without_consent(contact: PodiumContact) -> str:
    data: dict[str, Any] = contact.to_wire()
    data.pop("updatedAt")
    for channel in data["channels"]:
        channel.pop("marketingOptedInLocationUids")
        channel.pop("updatedAt")
    return json.dumps(data, sort_keys=True)


@pytest.fixture
def corpus(merge_env_factory: Callable[..., MergeEnv], strategy: str) -> tuple[MergeEnv, dict[str, str]]:
    lines, truth = generate_corpus(PEOPLE, SEED)
    state = EmulatorState.from_lines(lines, seed=5, capabilities=CAPABILITIES[strategy])
    return merge_env_factory(strategy, state, seed=11), truth


@pytest.mark.parametrize("faults", [False, True], ids=["clean", "faults"])
def test_every_auto_cluster_merges_with_nothing_lost(
    corpus: tuple[MergeEnv, dict[str, str]], manager: User, faults: bool
) -> None:
    env, truth = corpus
    _scan()
    before = {c["uid"]: PodiumContact.from_wire(c) for c in env.state.contacts()}
    auto = {
        c.cluster_id: sorted(c.members.values_list("contact__uid", flat=True))
        for c in Cluster.objects.filter(status=Cluster.OPEN, auto_merge=True)
    }
    assert len(auto) >= 40, "the corpus gives plenty to merge"
    env.server.reset_stats()

    if faults:
        env.server.configure(**FAULTS)
    results = merge_all_auto(actor="corpus", client=env.client(max_retries=1))
    env.server.configure(fail_rate=0.0, drop_after_commit_rate=0.0, rate_limit=None)
    _settle(env)

    stats = env.stats()
    if faults:
        assert stats["faults_injected"] > 10 and stats["drops"] > 0, stats
        assert stats["by_status"].get("429", 0) > 0, "answered 429 (injected or by the limit)"
        assert any(r.attempts for r in MergeOperation.objects.all()), "some operations were deferred"
    assert stats["purge_attempts"] == 0 and stats["ambiguous_identifier_uses"] == 0, stats[
        "ambiguous_identifiers"
    ]

    # Every auto cluster is merged, or in review with what it would lose or what blocks it named.
    ops = {op.cluster.cluster_id: op for op in MergeOperation.objects.select_related("cluster")}
    assert len(results) == len(ops)
    patched = {cid: op for cid, op in ops.items() if op.state == MergeOperation.PATCHED}
    assert set(ops) <= set(auto)
    settled_otherwise = {cid: (op.state, op.last_error) for cid, op in ops.items() if cid not in patched}
    assert not settled_otherwise, settled_otherwise
    for cid in set(auto) - set(ops):
        cluster = Cluster.objects.get(cluster_id=cid)
        assert (cluster.status, cluster.auto_merge) == (Cluster.OPEN, False), cid
        refusal = AuditEvent.objects.filter(event_type="merge.refused", cluster_ref=cid).latest("id").payload
        assert {"would_lose_data", "cannot_carry"} & set(cluster.reasons), cluster.reasons
        assert refusal["losses"] or refusal["blockers"]
    assert len(patched) >= 0.6 * len(auto), (len(patched), len(auto))

    # Nothing lost, consent kept, nothing merged twice, no two people merged.
    deleted = env.deleted()
    if env.native:
        assert stats["merges"] == len(patched) and not deleted
    else:
        assert stats["by_route"].get("DELETE /v4/contacts/{identifier}", 0) >= len(deleted)
        assert len(env.state.deleted()) == len(deleted), "each duplicate deleted once"
    retired: dict[str, str] = {}
    for op in patched.values():
        members = [before[uid] for uid in auto[op.cluster.cluster_id]]
        assert sorted([op.primary_uid, *op.duplicate_uids]) == auto[op.cluster.cluster_id]
        assert len({truth[m.uid] for m in members}) == 1, "one person per merge"
        survivor = env.alive(op.primary_uid)
        region = _region(survivor)
        for member in members:
            assert missing_on(survivor, member, region) == [], (op.pk, member.uid)
        assert consent_problems(members, survivor, region) == [], op.pk
        assert flags(survivor).covers(union_of_flags(members)), op.pk
        for uid in op.duplicate_uids:
            assert env.retired(uid), uid
            retired[uid] = op.primary_uid
            if not env.native:
                # What DELETE removed (its last JSON, the retirement handle included) is on the survivor.
                assert missing_on(survivor, deleted[uid], region) == [], uid
    if not env.native:
        assert set(deleted) == set(retired)

    # Nothing else touched; another holder of a merged number may only have become stricter.
    for uid, contact in before.items():
        if uid in retired or any(op.primary_uid == uid for op in patched.values()):
            continue
        now = env.alive(uid)
        assert _without_consent(now) == _without_consent(contact), uid
        assert consent_problems([contact], now, _region(contact)) == [], uid

    # A cluster sent to review for what it would lose merges once a person accepts it, and loses only that.
    lossy = [
        Cluster.objects.get(cluster_id=cid)
        for cid in sorted(set(auto) - set(ops))
        if "would_lose_data" in Cluster.objects.get(cluster_id=cid).reasons
    ]
    assert lossy, "the corpus has clusters that would lose a value"
    for cluster in lossy:
        op = approve_cluster(cluster, user=manager, run_async=False, accept_losses=True, client=env.client())
        assert op.state == MergeOperation.PATCHED, op.last_error
        survivor = env.alive(op.primary_uid)
        for uid in auto[cluster.cluster_id]:
            for gone in missing_on(survivor, before[uid], _region(survivor)):
                assert _named(gone, op.accepted_losses), (uid, gone, op.accepted_losses)
        assert (
            consent_problems([before[u] for u in auto[cluster.cluster_id]], survivor, _region(survivor)) == []
        )

    # A rescan finds nothing left to merge automatically.
    _scan()
    assert not Cluster.objects.filter(status=Cluster.OPEN, auto_merge=True).exists()

    # Every retired contact is restorable, with its fields and at least its merge's consent.
    for uid, primary in sorted(retired.items()):
        record = restore_contact(uid, user=None, client=env.client())
        restored = env.alive(record.new_uid or uid)
        member = before[uid]
        missing = missing_on(restored, member, _region(member))
        # Un-hidden (native): the conversations stay with the survivor. Re-created: everything comes back
        # but what the published API cannot put back, named in the record.
        expected = (
            [f"conversation:{c}" for c in member.conversation_uids] if record.method == "unhidden" else []
        )
        left_off = {x["field"] for x in record.not_restored}
        assert [m for m in missing if m.split(":")[0] not in left_off] == expected, uid
        op = next(op for op in patched.values() if uid in op.duplicate_uids)
        op_members = [before[m] for m in auto[op.cluster.cluster_id]]
        assert consent_problems(op_members, restored, _region(restored)) == [], uid
        assert consent_problems(op_members, env.alive(primary), _region(env.alive(primary))) == [], primary
    methods = Counter(RestoreRecord.objects.values_list("method", flat=True))
    assert methods == ({"unhidden": len(retired) - methods["recreated"], "recreated": methods["recreated"]}
                       if env.native else {"recreated": len(retired)})  # fmt: skip
