"""Races on PostgreSQL: workers and managers on the same or overlapping clusters; exactly one wins.

Each thread has its own database connection (its own session), as separate workers do: row locks
(``select_for_update`` NOWAIT / SKIP LOCKED) decide between transactions, holder locks (session
advisory locks) between whole merges. The emulator adds latency so the contenders really overlap.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest
from django.contrib.auth.models import User
from django.db import connection, transaction

from dedup.merge import (
    ClusterBusyError,
    MergeRefused,
    approve_cluster,
    merge_all_auto,
    reject_cluster,
    run_operation,
)
from dedup.merge.decisions import _snapshot_basis, one_run
from dedup.merge.machine import _run
from dedup.merge.planning import member_records, plan_for
from dedup.models import AuditEvent, Cluster, MergeOperation
from tests.merge_helpers import BURLEIGH

if TYPE_CHECKING:
    from tests.merge_helpers import MergeEnv

pytest_plugins = ["tests.merge_helpers"]
pytestmark = [
    pytest.mark.postgres,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("pg_flushable"),
]


@pytest.fixture(autouse=True)
def no_enqueue(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Approvals here only plan (the test suite runs tasks inline); the test decides which worker runs what."""
    queued: list[int] = []
    monkeypatch.setattr("dedup.merge.decisions.enqueue", queued.append)
    return queued


def _together(*jobs: Callable[[], Any]) -> list[Any]:
    """Run the jobs in threads released at the same instant; results (or raised exceptions) in order."""
    barrier = threading.Barrier(len(jobs))
    results: list[Any] = [None] * len(jobs)

    def run(i: int, job: Callable[[], Any]) -> None:
        try:
            barrier.wait()
            results[i] = job()
        except Exception as exc:  # noqa: BLE001 - handed back to the test, which asserts on it
            results[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i, job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def _shared_contact_clusters(env: MergeEnv) -> tuple[Cluster, Cluster]:
    """Two clusters sharing ct_s2: one within Sydney, one across to Burleigh Heads."""
    env.add("ct_s1", phones=["0411 111 111"], tags=["a"], address="1 George St")
    env.add("ct_s2", phones=["0411111111", "0422 222 222"])
    env.add("ct_s3", phones=["0422222222"], locations=[BURLEIGH], tags=["b"])
    env.index()
    return env.cluster(["ct_s1", "ct_s2"]), env.cluster(["ct_s2", "ct_s3"], auto=False)


def _merges(env: MergeEnv) -> int:
    """How many merges Podium saw: merge calls (native) or duplicates deleted (consolidate)."""
    return int(env.stats()["merges"]) if env.native else len(env.state.deleted())


def test_two_workers_on_one_operation_merge_it_once(merge_env: MergeEnv, manager: User) -> None:
    uids = merge_env.maria()
    merge_env.index()
    op = approve_cluster(merge_env.cluster(uids), user=manager, run_async=True)
    merge_env.server.latency_ms = 20
    a, b = merge_env.client(), merge_env.client()
    results = _together(
        lambda: _run(op.pk, worker="w1", client=a, force=True),
        lambda: _run(op.pk, worker="w2", client=b, force=True),
    )
    assert sorted(r[1] for r in results) == [False, True], results
    op.refresh_from_db()
    assert op.state == MergeOperation.PATCHED
    assert _merges(merge_env) == (1 if merge_env.native else 2)
    assert AuditEvent.objects.filter(operation_ref=op.pk, event_type="merge.merging").count() == 1
    assert merge_env.stats()["ambiguous_identifier_uses"] == 0


def test_two_workers_on_clusters_sharing_a_contact_one_wins(merge_env: MergeEnv, manager: User) -> None:
    within, cross = _shared_contact_clusters(merge_env)
    first = approve_cluster(within, user=manager, run_async=True, accept_losses=True)
    # A second live operation on the shared contact, as two detections racing could leave behind
    # (approvals refuse it; the claim must hold the line on its own).
    plan = plan_for(cross, member_records(cross))
    second = MergeOperation.objects.create(
        cluster=cross, strategy=first.strategy, primary_uid=plan.primary_uid, duplicate_uids=list(plan.duplicate_uids),
        plan=plan.to_dict(), member_snapshot=_snapshot_basis(cross, plan, {}),
    )  # fmt: skip
    Cluster.objects.filter(pk=cross.pk).update(status=Cluster.APPROVED)
    merge_env.server.latency_ms = 30
    a, b = merge_env.client(), merge_env.client()
    _together(
        lambda: run_operation(first.pk, worker="w1", client=a),
        lambda: run_operation(second.pk, worker="w2", client=b),
    )
    first.refresh_from_db()
    second.refresh_from_db()
    states = {first.state, second.state}
    assert MergeOperation.PATCHED in states and states != {MergeOperation.PATCHED}, states
    loser = second if first.state == MergeOperation.PATCHED else first
    assert AuditEvent.objects.filter(event_type="merge.conflict", operation_ref=loser.pk).exists() or (
        loser.state in MergeOperation.TERMINAL_STATES
    ), "the loser's conflict is visible"
    # Once the winner is done, the loser finds its contact changed or gone: never a second merge.
    run_operation(loser.pk, worker="w3", client=a)
    loser.refresh_from_db()
    assert loser.state in (MergeOperation.RE_INDEX_REQUIRED, MergeOperation.FAILED_PERMANENT), (
        loser.last_error
    )
    assert loser.cluster.status == Cluster.SUPERSEDED
    assert _merges(merge_env) == 1


def test_a_manager_cannot_act_on_what_a_worker_is_merging(merge_env: MergeEnv, manager: User) -> None:
    within, cross = _shared_contact_clusters(merge_env)
    op = approve_cluster(within, user=manager, run_async=True, accept_losses=True)
    merge_env.server.latency_ms = 150
    client = merge_env.client()
    started = threading.Event()
    client.before["get_contact"] = lambda identifier: started.set()

    def work() -> None:
        try:
            run_operation(op.pk, worker="w1", client=client)
        finally:
            connection.close()

    worker = threading.Thread(target=work)
    worker.start()
    assert started.wait(10)
    bob = User.objects.create_user("bob")
    with pytest.raises(ClusterBusyError, match="already approved by alice|being merged by worker w1"):
        reject_cluster(within, user=bob)
    with pytest.raises(ClusterBusyError, match="shares a contact"):
        approve_cluster(cross, user=bob, run_async=True, accept_losses=True)
    worker.join(30)
    op.refresh_from_db()
    assert op.state == MergeOperation.PATCHED
    conflicts = AuditEvent.objects.filter(event_type="merge.conflict", actor="user:bob")
    assert {e.cluster_ref for e in conflicts} == {within.cluster_id, cross.cluster_id}
    assert not MergeOperation.objects.filter(cluster=cross).exists()


def test_two_managers_approving_overlapping_clusters_at_once(merge_env: MergeEnv, manager: User) -> None:
    within, cross = _shared_contact_clusters(merge_env)
    bob = User.objects.create_user("bob")
    results = _together(
        lambda: approve_cluster(within, user=manager, run_async=True, accept_losses=True),
        lambda: approve_cluster(cross, user=bob, run_async=True, accept_losses=True),
    )
    winners = [r for r in results if isinstance(r, MergeOperation)]
    losers = [r for r in results if isinstance(r, ClusterBusyError)]
    assert len(winners) == 1 and len(losers) == 1, results
    assert MergeOperation.objects.count() == 1
    assert AuditEvent.objects.filter(
        event_type="merge.conflict", cluster_ref=losers[0].cluster.cluster_id
    ).exists()
    assert merge_env.stats()["requests"] == 0


def test_a_manager_holding_the_cluster_row_defers_the_worker(merge_env: MergeEnv, manager: User) -> None:
    uids = merge_env.maria()
    merge_env.index()
    op = approve_cluster(merge_env.cluster(uids), user=manager, run_async=True)
    holding, release = threading.Event(), threading.Event()

    def manager_holds_row() -> None:
        with transaction.atomic():
            list(Cluster.objects.select_for_update().filter(pk=op.cluster_id))
            holding.set()
            release.wait(10)
        connection.close()

    holder = threading.Thread(target=manager_holds_row)
    holder.start()
    assert holding.wait(10)
    try:
        result = run_operation(op.pk, worker="w1", client=merge_env.client())
    finally:
        release.set()
        holder.join(10)
    assert result.state == MergeOperation.PENDING and result.next_attempt_at is not None
    assert AuditEvent.objects.filter(event_type="merge.conflict", operation_ref=op.pk).exists()
    assert merge_env.stats()["requests"] == 0
    assert run_operation(op.pk, worker="w1", client=merge_env.client()).state == MergeOperation.PATCHED


def test_a_second_all_auto_run_is_refused_naming_the_first(merge_env: MergeEnv) -> None:
    uids = merge_env.maria()
    merge_env.index()
    merge_env.cluster(uids)
    started, release = threading.Event(), threading.Event()

    def first_run() -> None:
        try:
            with one_run("nightly"):
                started.set()
                release.wait(10)
        finally:
            connection.close()

    holder = threading.Thread(target=first_run)
    holder.start()
    assert started.wait(10)
    try:
        with pytest.raises(MergeRefused, match="already running \\(worker nightly since") as caught:
            merge_all_auto(actor="cli")
        assert caught.value.code == "ERR_DEDUP_014"
        assert not MergeOperation.objects.exists()
    finally:
        release.set()
        holder.join(10)
    [op] = merge_all_auto(actor="cli", client=merge_env.client())
    assert isinstance(op, MergeOperation) and op.state == MergeOperation.PATCHED
