"""A scan run by a ``qcluster`` worker forks its pools, as ``manage.py scan`` does, and leaves exactly the
clusters one process finds; the cluster then stops cleanly, leaving no process behind.

Two deployments, each with a real ``manage.py qcluster`` and the database broker:
* production's, PostgreSQL: the file is prepared in one pool of forked processes and scored in
  another (each process opens its own connection to the shared database);
* ``make run``'s, a SQLite file: the file is prepared in a pool; SQLite's one writer, and scoring,
  stay in the worker.

The worker runs ``tests.worker_tasks.scan_with_pools``, which lowers the size thresholds in that
process only, so a corpus of a few hundred contacts takes the path a first load of a million takes.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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
from tests.test_detect_parallel import snapshot

ROOT = Path(__file__).resolve().parent.parent
PEOPLE = 400


@dataclass
class QCluster:
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text()[-4000:]

    def assert_alive(self) -> None:
        assert self.proc.poll() is None, self.output()

    def stop_leaving_nothing(self) -> None:
        """SIGTERM to the main process, as ``systemctl stop`` sends: it exits cleanly, and so does
        every process it and its tasks ever started."""
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=30) == 0, self.output()
        deadline = time.monotonic() + 15
        while True:
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                return
            if time.monotonic() > deadline:
                ps = ["ps", "-o", "pid,stat,cmd", "-g", str(self.proc.pid)]
                raise AssertionError("left running:\n" + subprocess.run(ps, capture_output=True, text=True).stdout)
            time.sleep(0.2)


def _env(var_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE"}}
    env.update(
        DEBUG="1", PYTHONUNBUFFERED="1", DEDUP_VAR_DIR=str(var_dir), Q_WORKERS="1", Q_STOP_GRACE="2",
        LOG_LEVEL="INFO", **extra,
    )  # fmt: skip
    return env


@pytest.fixture
def start_qcluster(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], QCluster]]:
    started: list[QCluster] = []

    def start(env: dict[str, str]) -> QCluster:
        log = tmp_path / "qcluster.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "manage.py", "qcluster"], cwd=ROOT, env=env, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        started.append(QCluster(proc, log))
        return started[-1]

    yield start
    for cluster in started:
        if cluster.proc.poll() is None:
            os.killpg(cluster.proc.pid, signal.SIGKILL)
            cluster.proc.wait(timeout=10)
    connection.close()


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
    raise AssertionError("the scan did not finish:\n" + cluster.output())


@pytest.mark.postgres
@pytest.mark.usefixtures("committed_db")
def test_a_postgresql_worker_prepares_and_scores_in_forked_pools(
    start_qcluster: Callable[[dict[str, str]], QCluster], tmp_path: Path
) -> None:
    path, contacts = _corpus(tmp_path)
    s = connection.settings_dict
    auth = s["USER"] + (f":{s['PASSWORD']}" if s["PASSWORD"] else "")
    url = f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"
    cluster = start_qcluster(_env(tmp_path, DATABASE_URL=url))

    task_id = async_task("tests.worker_tasks.scan_with_pools", str(path), task_name="scan in pools", sync=False)
    task = _wait(lambda: Task.objects.filter(id=task_id).first(), cluster)
    assert task.success, task.result
    result = task.result

    run = ScanRun.objects.get()
    assert result["state"] == run.state == ScanRun.SUCCEEDED, run.error_message
    assert result["contacts"] == run.contacts_seen == Contact.objects.count() == contacts
    # A pool for preparing the file and one for scoring, each of a process per CPU.
    assert result["forks"] >= 2 * result["cpus"], result
    in_pools = snapshot()
    assert len(in_pools) == result["clusters"] > 25 * 3

    # One process, from the same index, finds the same clusters.
    Cluster.objects.all().delete()
    assert detection.detect(workers=0).created == len(in_pools)
    assert snapshot() == in_pools

    cluster.stop_leaving_nothing()


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
    enqueue = (
        "from django_q.tasks import async_task; "
        f"async_task('tests.worker_tasks.scan_with_pools', {str(path)!r}, {str(report)!r}, sync=False)"
    )
    subprocess.run([sys.executable, "manage.py", "shell", "-c", enqueue], cwd=ROOT, env=env, check=True)
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
    here = {
        (c.cluster_id, c.kind, tuple(sorted(c.members.values_list("contact__uid", flat=True))))
        for c in Cluster.objects.filter(status=Cluster.OPEN)
    }
    assert here == in_pool

    cluster.stop_leaving_nothing()
