"""Merge everything auto-mergeable in a demo corpus under faults, resume, and check nothing was lost.

A few hundred people with the mess of real life (one number in many spellings, households, reassigned
numbers, opt-outs on one duplicate only) are indexed and detected; every auto-mergeable cluster is merged
while the emulator fails 10% of requests and drops 5% of answers after applying the change; then the
outage ends and ``resume`` runs. Checked against the emulator's final state and the corpus's ground
truth: every primary holds the union of its members' opt-outs, tags, phones and emails; nothing was
hard-deleted; no two people were merged; no operation is left unfinished; a rescan proposes nothing
auto-mergeable.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from dedup import merging
from dedup.models import Cluster, MergeOperation, ScanRun
from dedup.phones import normalize_phone
from dedup.records import OptOuts, normalize_email, tag_key
from dedup.scanning import start_scan
from podium_client import Contact as PodiumContact
from podium_client.corpus import generate_corpus
from podium_client.emulator import EmulatorState

if TYPE_CHECKING:
    from tests.merge_helpers import MergeEnv

pytest_plugins = ["tests.merge_helpers"]
pytestmark = pytest.mark.django_db

PEOPLE = 300
COUNTRY = {"loc_sydney": "AU", "loc_burleigh": "AU", "loc_auckland": "NZ"}


def _phone_keys(contact: PodiumContact) -> set[str]:
    keys = set()
    for channel in contact.channels:
        if channel.type == "PHONE":
            result = normalize_phone(channel.identifier, COUNTRY[contact.location_uid])
            keys.add(result.e164 if result.valid and result.e164 else "raw:" + channel.identifier.strip())
    return keys


def _emails(contact: PodiumContact) -> set[str]:
    return {normalize_email(c.identifier) for c in contact.channels if c.type == "EMAIL" and c.identifier.strip()}


def _tags(contact: PodiumContact) -> set[str]:
    return {tag_key(t) for t in contact.tags if t.strip()}


def _rescan() -> None:
    """A full scan of Podium (over HTTP, as in production) and detection."""
    run = start_scan(full=True, run_async=False, actor="worker:test")
    assert run.state == ScanRun.SUCCEEDED, run.error_message


@pytest.fixture
def corpus_env(merge_env_factory: Callable[..., MergeEnv]) -> tuple[MergeEnv, dict[str, str], dict[str, PodiumContact]]:
    lines, truth = generate_corpus(PEOPLE, 20260)
    env = merge_env_factory(EmulatorState.from_lines(lines, seed=5), seed=11)
    before = {c.uid: c for c in env.state.contacts()}
    return env, truth, before


def test_merge_all_auto_under_faults_then_resume_loses_nothing(
    corpus_env: tuple[MergeEnv, dict[str, str], dict[str, PodiumContact]], monkeypatch: pytest.MonkeyPatch
) -> None:
    env, truth, before = corpus_env
    # One retry only, so some calls fail through the client and the orchestrator's own paths run:
    # deferrals, compliance incidents, reconciliation after lost answers.
    monkeypatch.setattr(merging, "CLIENT_OPTIONS", {**merging.CLIENT_OPTIONS, "max_retries": 1})
    _rescan()
    auto_clusters = Cluster.objects.filter(status=Cluster.OPEN, auto_merge=True).count()
    assert auto_clusters >= 20, "the corpus should give plenty to merge"

    env.server.configure(fail_rate=0.1, drop_after_commit_rate=0.05)
    first = merging.merge_all_auto(actor="corpus")
    assert len(first) == auto_clusters
    left_over = [op for op in first if isinstance(op, MergeOperation) and op.state != MergeOperation.PATCHED]
    env.server.configure(fail_rate=0.0, drop_after_commit_rate=0.0)
    resumed = merging.resume_operations(worker="corpus-resume")
    assert resumed.get(MergeOperation.PATCHED, 0) == len(left_over)

    stats = env.server.stats()
    assert stats["faults_injected"] > 0 and stats["drops"] > 0, "the faults really happened"
    assert stats["hard_delete_attempts"] == 0
    summary = merging.operation_summary()
    unfinished = {s: n for s, n in summary.items() if n and s not in MergeOperation.TERMINAL_STATES}
    assert not unfinished, (unfinished, list(MergeOperation.objects.exclude(
        state__in=MergeOperation.TERMINAL_STATES).values_list("state", "last_error")))
    assert summary["patched"] == auto_clusters, summary

    after = {c.uid: c for c in env.state.contacts()}
    members_of: dict[str, list[str]] = defaultdict(list)
    for uid, contact in after.items():
        if contact.merged_into_uid:
            members_of[contact.merged_into_uid].append(uid)
            # Ground truth: a merge only ever joins contacts of one person.
            assert truth[uid] == truth[contact.merged_into_uid], f"{uid} merged into another person"
            assert contact.deleted_at is not None
    assert env.server.stats()["merges"] == auto_clusters, "each cluster merged exactly once"
    for op in MergeOperation.objects.filter(state=MergeOperation.PATCHED):
        primary = after[op.primary_uid]
        assert sorted(members_of[op.primary_uid]) == sorted(op.duplicate_uids)
        members = [before[op.primary_uid], *(before[u] for u in op.duplicate_uids)]
        union = OptOuts.union_all(OptOuts.from_wire(m.to_wire()) for m in members)
        assert OptOuts.from_wire(primary.to_wire()).covers(union), op.primary_uid
        assert set().union(*(_tags(m) for m in members)) <= _tags(primary), op.primary_uid
        assert set().union(*(_phone_keys(m) for m in members)) <= _phone_keys(primary), op.primary_uid
        assert set().union(*(_emails(m) for m in members)) <= _emails(primary), op.primary_uid

    # Nothing else changed hands: every contact not in a merge is as it was.
    touched = {op.primary_uid for op in MergeOperation.objects.all()} | {
        u for op in MergeOperation.objects.all() for u in op.duplicate_uids
    }
    for uid, contact in before.items():
        if uid not in touched:
            assert _wire(after[uid]) == _wire(contact), uid

    _rescan()
    assert not Cluster.objects.filter(status=Cluster.OPEN, auto_merge=True).exists()


def _wire(contact: PodiumContact) -> str:
    data: dict[str, Any] = contact.to_wire()
    return json.dumps(data, sort_keys=True)
