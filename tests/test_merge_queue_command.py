"""``manage.py merge --queue``: the merges go to the workers' queue, the command follows them and says how
they ended; ``--no-wait`` returns at once; the exit status says whether everything finished.

The test settings run django-q2 tasks inline (``sync``), which stands for workers that are always free.
Tests that need the merges to wait in the queue record the tasks instead and play a worker themselves.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django_q.models import Task

from dedup import workqueue
from dedup.management.commands import merge as merge_command
from dedup.models import MergeOperation
from podium_client.ratelimit import INTERACTIVE
from tests.scanned_corpus import ScannedCorpus


class Queue:
    """Stands in for django-q2's broker: tasks wait here until the test plays a worker."""

    def __init__(self) -> None:
        self.tasks: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def enqueue(self, *args: Any, **kwargs: Any) -> str:
        self.tasks.append((args, kwargs))
        return "task-id"

    def work(self, n: int = 1) -> None:
        """Run the first ``n`` waiting tasks, as a worker would."""
        ran = 0
        while self.tasks and ran < n:
            (func, operation_id), kwargs = self.tasks.pop(0)
            assert func == "dedup.workqueue.run_next"
            workqueue.run_next(operation_id, interactive=kwargs.get("interactive", False))
            ran += 1


@pytest.fixture
def queue(monkeypatch: pytest.MonkeyPatch) -> Queue:
    q = Queue()
    monkeypatch.setattr("django_q.tasks.async_task", q.enqueue)
    return q


def _merge(*args: str) -> tuple[int, str, str]:
    out, err = StringIO(), StringIO()
    try:
        call_command("merge", *args, stdout=out, stderr=err)
    except SystemExit as exc:
        return int(exc.code or 0), out.getvalue(), err.getvalue()
    return 0, out.getvalue(), err.getvalue()


def _operation_lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith('{"cluster"')]


def test_all_auto_queue_goes_through_the_workers_and_waits_for_them(scanned_corpus: ScannedCorpus) -> None:
    auto = len(scanned_corpus.auto_clusters())
    code, out, err = _merge("--all-auto", "--queue", "--as", "boss")
    operations = _operation_lines(out)
    assert code == 0, err
    assert operations and all(op["state"] == "patched" for op in operations)
    assert "queued for the workers" in err and f"{len(operations)}/{len(operations)} done" in err
    # Every merge was a queued task, one each.
    assert Task.objects.filter(func="dedup.workqueue.run_next").count() == len(operations) <= auto
    assert json.loads(out.splitlines()[-1])["operations"]["patched"] == len(operations)


def test_no_wait_returns_as_soon_as_the_merges_are_queued(
    scanned_corpus: ScannedCorpus, queue: Queue
) -> None:
    before = scanned_corpus.server.stats()["requests"]
    code, out, err = _merge("--all-auto", "--queue", "--no-wait", "--as", "boss")
    assert code == 0, err
    operations = _operation_lines(out)
    assert operations and all(op["state"] == "pending" for op in operations)
    assert len(queue.tasks) == len(operations)
    assert "not waiting (--no-wait)" in err
    assert scanned_corpus.server.stats()["requests"] == before  # nothing was sent to Podium
    # The workers do them later.
    queue.work(len(queue.tasks))
    assert set(MergeOperation.objects.values_list("state", flat=True)) == {MergeOperation.PATCHED}


def test_waiting_shows_progress_until_the_last_merge_ends(
    scanned_corpus: ScannedCorpus, queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(merge_command, "PLAIN_EVERY_SECONDS", 0)
    follow = workqueue.follow_operations

    def follow_while_a_worker_works(ids: Any, on_progress: Callable[..., None], **kwargs: Any) -> Any:
        # Each time the command would sleep, a worker finishes one merge.
        return follow(ids, on_progress, poll=0, sleep=lambda _s: queue.work(1), timeout=kwargs.get("timeout"))

    monkeypatch.setattr(merge_command, "follow_operations", follow_while_a_worker_works)
    code, out, err = _merge("--all-auto", "--queue", "--as", "boss")
    assert code == 0, err
    total = len(_operation_lines(out))
    lines = [line for line in err.splitlines() if line.startswith("merging:")]
    # A line per look: none done, then one more each time, the last one all done.
    assert lines[0].startswith(f"merging: 0/{total} done") and f"{total} queued" in lines[0]
    assert lines[-1].startswith(f"merging: {total}/{total} done")
    assert len(lines) == total + 1


def test_without_a_worker_it_says_so_and_gives_up_at_the_timeout(
    scanned_corpus: ScannedCorpus, queue: Queue
) -> None:
    code, out, err = _merge("--all-auto", "--queue", "--timeout", "0.2", "--as", "boss")
    assert code == 3
    assert "no background worker is alive" in err
    assert "stopped waiting after 0.2 s (--timeout)" in err
    assert "did not finish" in err and "pending" in err


def test_a_merge_that_did_not_finish_makes_the_exit_status_3(
    scanned_corpus: ScannedCorpus, queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    follow = workqueue.follow_operations

    def follow_after_an_edit_in_podium(ids: Any, on_progress: Callable[..., None], **kwargs: Any) -> Any:
        # Someone edits a member in Podium while its merge waits in the queue: the merge stops.
        first = MergeOperation.objects.get(pk=min(ids))
        scanned_corpus.server.state.podium_edit(first.duplicate_uids[0], {"name": "Somebody Else"})
        return follow(ids, on_progress, poll=0, sleep=lambda _s: queue.work(1), timeout=kwargs.get("timeout"))

    monkeypatch.setattr(merge_command, "follow_operations", follow_after_an_edit_in_podium)
    code, out, err = _merge("--all-auto", "--queue", "--as", "boss")
    states = [op["state"] for op in _operation_lines(out)]
    assert code == 3
    assert states.count("re_index_required") == 1 and states.count("patched") == len(states) - 1
    assert f"1 of {len(states)} merge(s) did not finish (1 re_index_required)" in err


def test_one_cluster_through_the_queue_is_a_persons_merge(
    scanned_corpus: ScannedCorpus, queue: Queue, django_capture_on_commit_callbacks: Any
) -> None:
    cluster = scanned_corpus.auto_clusters()[0]
    with django_capture_on_commit_callbacks(execute=True):  # the approval enqueues once it commits
        code, out, err = _merge("--cluster", cluster.cluster_id, "--queue", "--no-wait", "--as", "boss")
    assert code == 0, err
    assert len(queue.tasks) == 1
    operation = MergeOperation.objects.get(cluster=cluster)
    assert operation.state == MergeOperation.PENDING
    (_func, operation_id), kwargs = queue.tasks[0]
    assert workqueue.run_next(operation_id, interactive=kwargs["interactive"]) == {
        "asked": operation.pk, "ran": operation.pk, "priority": INTERACTIVE,
    }  # fmt: skip


@pytest.mark.parametrize(
    "args, message",
    [
        (["--resume", "--queue"], "--queue applies to merging --cluster and --all-auto"),
        (["--all-auto", "--dry-run", "--queue"], "--queue applies to merging --cluster and --all-auto"),
        (["--all-auto", "--no-wait", "--as", "boss"], "--no-wait and --timeout go with --queue"),
        (["--all-auto", "--timeout", "5", "--as", "boss"], "--no-wait and --timeout go with --queue"),
    ],
)
def test_queue_options_that_do_not_go_together_are_refused(
    scanned_corpus: ScannedCorpus, args: list[str], message: str
) -> None:
    with pytest.raises(CommandError, match=message):
        call_command("merge", *args, stdout=StringIO(), stderr=StringIO())
