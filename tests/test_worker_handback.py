"""A task a cluster took from its broker and did not run goes back to the broker (``dedup.workers``).

The cluster's pusher takes tasks off the broker ahead of its workers. A worker asked to stop starts
none of them, and the Sentinel's stop returns whatever its queue holds, both through ``hand_back``:
the task is queued again and the taken copy acknowledged, on the database broker and on Redis. The
whole stop, with a full queue and a pusher waiting for room, is ``tests/test_scan_in_worker.py``'s.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from django_q.brokers import Broker, get_broker
from django_q.brokers.orm import ORM
from django_q.brokers.redis_broker import Redis
from django_q.conf import Conf
from django_q.signing import SignedPackage

from dedup import workers

TASK = {"id": "5f0c", "name": "scan #7", "func": "dedup.scanning.run_scan_task", "args": (7,), "kwargs": {}}


def _take(broker: Broker) -> dict[str, Any]:
    """What the cluster's pusher does: take the next task off the broker and note how to acknowledge it."""
    taken = broker.dequeue()
    assert taken, "the broker held no task"
    ack_id, package = taken[0]
    task: dict[str, Any] = SignedPackage.loads(package)
    task["ack_id"] = ack_id
    return task


def _same(task: dict[str, Any]) -> dict[str, Any]:
    return {k: task[k] for k in ("id", "name", "func", "args", "kwargs")}


@pytest.mark.django_db
def test_the_database_broker_holds_the_task_again_and_not_the_taken_copy() -> None:
    broker = ORM(list_key="handback")
    broker.enqueue(SignedPackage.dumps(TASK))
    task = _take(broker)
    assert (broker.queue_size(), broker.lock_size()) == (0, 1)  # taken: locked until the broker's retry

    workers.hand_back(broker, task)

    assert (broker.queue_size(), broker.lock_size()) == (1, 0)
    assert _same(_take(broker)) == _same(TASK)


def test_redis_holds_the_task_again(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Conf, "REDIS", redis_url)
    broker = Redis(list_key="handback")
    broker.delete_queue()
    broker.enqueue(SignedPackage.dumps(TASK))
    task = _take(broker)
    assert broker.queue_size() == 0  # Redis forgets a task once taken: without the hand-back it is lost

    workers.hand_back(broker, task)

    assert broker.queue_size() == 1
    assert _same(_take(broker)) == _same(TASK)
    broker.delete_queue()


def test_an_unreachable_broker_is_logged_and_the_stop_goes_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(Conf, "REDIS", "redis://127.0.0.1:1/0")  # nothing listens on port 1
    broker = Redis(list_key="handback")
    with caplog.at_level(logging.WARNING, logger="dedup.workers"):
        workers.hand_back(broker, {**TASK, "ack_id": None})
    assert "could not hand task 'scan #7' back to the broker: ConnectionError" in caplog.text


@pytest.mark.django_db
def test_a_stopping_worker_hands_back_the_task_it_would_have_started(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workers, "_is_cluster_worker", lambda: True)
    monkeypatch.setattr(workers._Worker, "stopping", True)
    broker = get_broker()
    broker.enqueue(SignedPackage.dumps(TASK))
    task = _take(broker)

    with pytest.raises(workers.WorkerStopping):
        workers._task_started(sender="django_q", func=None, task=task)

    assert (broker.queue_size(), broker.lock_size()) == (1, 0)
    assert _same(_take(broker)) == _same(TASK)
    assert workers._Worker.task is None  # it never started
