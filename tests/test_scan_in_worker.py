"""A scan run by a ``qcluster`` worker forks its pools, as ``manage.py scan`` does, and leaves exactly the
clusters one process finds; the cluster then stops cleanly, leaving no process behind.

Two deployments, each with a real ``manage.py qcluster`` and the database broker:
* production's, PostgreSQL: the file is prepared in one pool of forked processes and scored in
  another (each process opens its own connection to the shared database);
* ``make run``'s, a SQLite file: the file is prepared in a pool; SQLite's one writer, and scoring,
  stay in the worker.

And a cluster stopped while its pool works, with tasks queued behind the scan: the pool ends with the
scan, the queued tasks go back to the broker, the cluster exits cleanly, and its next start finishes
the scan and runs the tasks.

The worker runs ``tests.worker_tasks.scan_with_pools``, which lowers the size thresholds in that
process only, so a corpus of a few hundred contacts takes the path a first load of a million takes.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django_q.models import Task
from django_q.tasks import async_task

from dedup import detection
from dedup.models import Cluster, Contact, ScanRun
from dedup.scanning import start_scan
from podium_client.corpus import generate_corpus
from tests.index_helpers import open_clusters
from tests.processes import ROOT, QCluster, child_env, database_url

PEOPLE = 400


@pytest.fixture
def start_qcluster(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], QCluster]]:
    started: list[QCluster] = []

    def start(env: dict[str, str]) -> QCluster:
        started.append(QCluster(env, tmp_path / f"qcluster-{len(started)}.log"))
        return started[-1]

    yield start
    for cluster in started:
        cluster.stop()
    connection.close()


def _env(var_dir: Path, **extra: str) -> dict[str, str]:
    return child_env(DEDUP_VAR_DIR=str(var_dir), Q_WORKERS="1", Q_STOP_GRACE="2", LOG_LEVEL="INFO", **extra)


def _corpus(tmp_path: Path) -> tuple[Path, int]:
    lines, truth = generate_corpus(PEOPLE, 5)
    path = tmp_path / "corpus.ndjson"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, len(truth)


def _wait(done: Callable[[], Any], cluster: QCluster, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = done()
        if found:
            return found
        cluster.assert_alive()
        time.sleep(0.3)
    raise AssertionError(f"still waiting after {timeout:.0f} s:\n" + cluster.output())


@pytest.mark.postgres
@pytest.mark.usefixtures("committed_db")
def test_a_postgresql_worker_prepares_and_scores_in_forked_pools(
    start_qcluster: Callable[[dict[str, str]], QCluster], tmp_path: Path
) -> None:
    path, contacts = _corpus(tmp_path)
    cluster = start_qcluster(_env(tmp_path, DATABASE_URL=database_url()))

    task_id = async_task("tests.worker_tasks.scan_with_pools", str(path), task_name="scan in pools", sync=False)
    task = _wait(lambda: Task.objects.filter(id=task_id).first(), cluster)
    assert task.success, task.result
    result = task.result

    run = ScanRun.objects.get()
    assert result["state"] == run.state == ScanRun.SUCCEEDED, run.error_message
    assert result["contacts"] == run.contacts_seen == Contact.objects.count() == contacts
    # A pool for preparing the file and one for scoring, each of a process per CPU.
    assert result["forks"] >= 2 * result["cpus"], result
    in_pools = open_clusters()
    assert len(in_pools) == result["clusters"] > 25 * 3

    # One process, from the same index, finds the same clusters.
    Cluster.objects.all().delete()
    assert detection.detect(workers=0).created == len(in_pools)
    assert open_clusters() == in_pools

    cluster.stop_leaving_nothing()


def _enqueue(env: dict[str, str], func: str, *args: object) -> None:
    """Queue a task from a process of its own, as the dashboard does (this test's database is not the
    cluster's)."""
    code = f"from django_q.tasks import async_task; async_task({func!r}, *{args!r}, sync=False)"
    subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, env=env, check=True)


def _scan_runs(var_dir: Path) -> list[tuple[str, int, str]]:
    with sqlite3.connect(var_dir / "dedup.sqlite3", timeout=10) as db:
        rows = db.execute("SELECT state, contacts_seen, error_message FROM dedup_scanrun ORDER BY id")
        return [(str(state), int(seen), str(error)) for state, seen, error in rows]


def _open_clusters(db: sqlite3.Connection) -> set[tuple[str, str, tuple[str, ...]]]:
    rows = db.execute(
        "SELECT c.cluster_id, c.kind, t.uid FROM dedup_cluster c JOIN dedup_clustermember m ON m.cluster_id = c.id "
        "JOIN dedup_contact t ON t.id = m.contact_id WHERE c.status = 'open'"
    )
    members: dict[tuple[str, str], list[str]] = {}
    for cluster_id, kind, uid in rows:
        members.setdefault((cluster_id, kind), []).append(uid)
    return {(cluster_id, kind, tuple(sorted(uids))) for (cluster_id, kind), uids in members.items()}


@pytest.mark.django_db
def test_a_sqlite_worker_prepares_in_a_forked_pool(
    start_qcluster: Callable[[dict[str, str]], QCluster], tmp_path: Path
) -> None:
    path, contacts = _corpus(tmp_path)
    env = _env(tmp_path)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
    cluster = start_qcluster(env)

    report = tmp_path / "report.json"
    _enqueue(env, "tests.worker_tasks.scan_with_pools", str(path), str(report))
    _wait(report.exists, cluster)
    result = json.loads(report.read_text())

    assert result["state"] == ScanRun.SUCCEEDED and result["contacts"] == contacts, result
    # The preparing pool: a process per CPU (scoring forks no pool on SQLite).
    assert result["forks"] >= result["cpus"], result
    with sqlite3.connect(tmp_path / "dedup.sqlite3", timeout=10) as db:
        in_pool = _open_clusters(db)
    assert len(in_pool) == result["clusters"] > 25 * 3

    # The same export scanned in one process (this test's own database) gives the same clusters.
    run = start_scan(from_file=str(path), run_async=False)
    assert run.contacts_seen == contacts
    assert {(c[0], c[1], c[-1]) for c in open_clusters()} == in_pool

    cluster.stop_leaving_nothing()


def _taken_by_the_cluster(var_dir: Path) -> int:
    """Tasks the cluster's pusher took from the database broker (locked until the broker's ``retry``)."""
    with sqlite3.connect(var_dir / "dedup.sqlite3", timeout=10) as db:
        return int(db.execute("SELECT count(*) FROM django_q_ormq WHERE lock > datetime('now')").fetchone()[0])


@pytest.mark.django_db
def test_a_cluster_stopped_mid_scan_ends_the_pool_hands_back_what_it_queued_and_restarts_it_all(
    start_qcluster: Callable[[dict[str, str]], QCluster], tmp_path: Path
) -> None:
    path, contacts = _corpus(tmp_path)
    env = _env(tmp_path)  # one worker: django-q2 queues at most one task for it
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
    cluster = start_qcluster(env)
    marker = tmp_path / "preparing"
    _enqueue(env, "tests.worker_tasks.scan_stalled_in_pool", str(path), str(marker))
    _wait(marker.exists, cluster)
    # Two more tasks while the worker is busy: the cluster queues one, and its pusher holds the other,
    # waiting for room.
    later = [tmp_path / "later-1", tmp_path / "later-2"]
    for path_later in later:
        _enqueue(env, "tests.worker_tasks.mark_then_sleep", str(path_later), 0)
    _wait(lambda: _taken_by_the_cluster(tmp_path) == 3, cluster)

    # Stopped while a preparing process works: the worker interrupts the scan after its grace, the pool
    # ends with it, the two tasks go back to the broker, and the cluster exits cleanly. (A pool process
    # that ignored the pool's SIGTERM hung the worker; a full queue hung the Sentinel: both times the
    # cluster was killed, exiting 1, and the queued tasks waited an hour for the broker's retry.)
    cluster.stop_leaving_nothing()
    assert "interrupted task" in cluster.output()
    assert cluster.output().count("handed back to the broker") == 2, cluster.output()
    assert _scan_runs(tmp_path) == [(ScanRun.RUNNING, 0, "")]  # as a crash leaves it
    assert not any(p.exists() for p in later)

    # The next start continues the scan (in one process now: the corpus is small) to its end, and runs
    # the two tasks.
    again = start_qcluster(env)
    runs = _wait(lambda: [r for r in _scan_runs(tmp_path) if r[0] == ScanRun.SUCCEEDED], again)
    assert runs == [(ScanRun.SUCCEEDED, contacts, "")]
    interrupted = _scan_runs(tmp_path)[0]
    assert interrupted[0] == ScanRun.FAILED and "resumed by system:worker-start" in interrupted[2], interrupted
    _wait(lambda: all(p.exists() and p.read_text() == "done" for p in later), again)
    again.stop_leaving_nothing()
