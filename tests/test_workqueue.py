"""Queued merges: a person's approval runs before queued bulk merges, at the interactive priority, and no
merge runs twice or is left without a task.

django-q2's queue is first in, first out, so before this a person's approval waited behind every bulk
merge queued ahead of it, and its Podium calls waited behind the bulk ones.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.db import transaction

from dedup import audit
from dedup.merge import MergeRefused
from dedup.merge.decisions import start_operation
from dedup.models import AuditEvent, Cluster, MergeBatch, MergeOperation, Policy
from dedup.workqueue import enqueue_operation, is_interactive, run_next
from podium_client.ratelimit import BULK, INTERACTIVE, current_priority, prioritized
from tests.scanned_corpus import ScannedCorpus


class RecordingPacer:
    """Paces nothing; remembers the priority each Podium request asked for."""

    def __init__(self) -> None:
        self.priorities: list[int] = []

    def acquire(self, priority: int = BULK) -> float:
        self.priorities.append(max(priority, current_priority()))
        return 0.0

    def penalize(self, retry_after: float | None) -> None:
        return None

    def take(self) -> list[int]:
        out, self.priorities = self.priorities, []
        return out


@pytest.fixture
def pacer(scanned_corpus: ScannedCorpus, monkeypatch: pytest.MonkeyPatch) -> RecordingPacer:
    recorder = RecordingPacer()
    monkeypatch.setattr("dedup.budget.shared_pacer", lambda rpm: recorder)
    Policy.objects.filter(pk=Policy.current().pk).update(rate_limit_per_minute=60_000)
    return recorder


def _pending(cluster: Cluster, *, user: Any = None, batch: MergeBatch | None = None) -> MergeOperation:
    """A merge approved and committed, not yet run (as it waits in the queue)."""
    actor, actor_id = audit.actor_for(user, "test")
    with transaction.atomic():
        return start_operation(
            cluster, user=user, actor=actor, actor_user_id=actor_id, primary_uid=None, batch=batch,
            automatic=user is None,
        )  # fmt: skip


def _mergeable(clusters: list[Cluster], n: int, **kwargs: Any) -> list[MergeOperation]:
    """Approve the first ``n`` clusters that can be approved (a cluster with a blocker is refused)."""
    out: list[MergeOperation] = []
    for cluster in clusters:
        if len(out) == n:
            break
        try:
            out.append(_pending(cluster, **kwargs))
        except MergeRefused:
            continue
    assert len(out) == n
    return out


def _patched_events(op: MergeOperation) -> int:
    return AuditEvent.objects.filter(operation_ref=op.pk, event_type="merge.patched").count()


def test_a_queued_task_runs_a_persons_approval_first(
    scanned_corpus: ScannedCorpus, pacer: RecordingPacer
) -> None:
    clusters = scanned_corpus.auto_clusters()
    batch = MergeBatch.objects.create(label="merge --all-auto")
    bulk = _mergeable(clusters, 3, batch=batch)
    person = _mergeable([c for c in scanned_corpus.auto_clusters()], 1, user=scanned_corpus.boss)[0]
    assert is_interactive(person) and not any(is_interactive(op) for op in bulk)

    # The next worker to be free takes the first bulk task: it runs the person's merge first.
    assert run_next(bulk[0].pk) == {"asked": bulk[0].pk, "ran": person.pk, "priority": INTERACTIVE}
    person.refresh_from_db()
    assert person.state == MergeOperation.PATCHED
    priorities = pacer.take()
    assert priorities and set(priorities) == {INTERACTIVE}
    assert MergeOperation.objects.get(pk=bulk[0].pk).state == MergeOperation.PENDING

    # The person's own task then finds its merge done and runs the bulk merge whose task it used.
    assert run_next(person.pk) == {"asked": person.pk, "ran": bulk[0].pk, "priority": BULK}
    assert set(pacer.take()) == {BULK}
    assert run_next(bulk[1].pk)["ran"] == bulk[1].pk
    assert run_next(bulk[2].pk)["ran"] == bulk[2].pk

    # One task per merge, each merge run once.
    for op in [*bulk, person]:
        op.refresh_from_db()
        assert op.state == MergeOperation.PATCHED, (op.pk, op.last_error)
        assert _patched_events(op) == 1
    requests = scanned_corpus.server.stats()["requests"]
    assert run_next(bulk[1].pk) == {"asked": bulk[1].pk, "ran": None}
    assert scanned_corpus.server.stats()["requests"] == requests


def test_a_merge_enqueued_while_a_person_waits_runs_interactive(
    scanned_corpus: ScannedCorpus, pacer: RecordingPacer, monkeypatch: pytest.MonkeyPatch
) -> None:
    queued: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    monkeypatch.setattr("django_q.tasks.async_task", lambda *a, **kw: queued.append((a, kw)))
    clusters = scanned_corpus.auto_clusters()
    batch = MergeBatch.objects.create(label="retry")
    op = _mergeable(clusters, 1, batch=batch)[0]  # part of a batch: bulk by itself
    enqueue_operation(op.pk)
    with prioritized(INTERACTIVE):  # what InteractivePriority sets while a web request is served
        enqueue_operation(op.pk)
    assert [(a[:2], kw["interactive"]) for a, kw in queued] == [
        (("dedup.workqueue.run_next", op.pk), False),
        (("dedup.workqueue.run_next", op.pk), True),
    ]
    assert run_next(op.pk, interactive=True)["priority"] == INTERACTIVE
    assert set(pacer.take()) == {INTERACTIVE}
