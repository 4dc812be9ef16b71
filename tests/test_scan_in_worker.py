"""A scan run by a ``qcluster`` worker forks its preparing and scoring pools, as ``manage.py scan`` does,
and leaves exactly the clusters one process finds; the cluster then stops cleanly, leaving no process.

The deployment is production's: PostgreSQL (the pools' processes need connections of their own to a
shared database), the database broker, a real ``manage.py qcluster``. Its worker runs
``tests.worker_tasks.scan_with_pools``, which lowers the size thresholds in that process only, so a
corpus of a few hundred contacts takes the path a million take.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django_q.models import Task
from django_q.tasks import async_task

from dedup import detection
from dedup.models import Cluster, Contact, ScanRun
from podium_client.corpus import generate_corpus
from tests.test_detect_parallel import snapshot

pytestmark = [pytest.mark.postgres, pytest.mark.usefixtures("committed_db")]

ROOT = Path(__file__).resolve().parent.parent


def _database_url() -> str:
    s = connection.settings_dict
    auth = s["USER"] + (f":{s['PASSWORD']}" if s["PASSWORD"] else "")
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


@dataclass
class QCluster:
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text()[-4000:]


@pytest.fixture
def qcluster(tmp_path: Path) -> Iterator[QCluster]:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE"}}
    env.update(
        DEBUG="1", PYTHONUNBUFFERED="1", DEDUP_VAR_DIR=str(tmp_path), DATABASE_URL=_database_url(),
        Q_WORKERS="1", Q_STOP_GRACE="2", LOG_LEVEL="INFO",
    )  # fmt: skip
    log = tmp_path / "qcluster.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "qcluster"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    yield QCluster(proc, log)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    connection.close()


def _group_gone(pgid: int, within: float) -> bool:
    """Whether every process of the group ``pgid`` has exited (and been reaped) within ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def _result(task_id: str, cluster: QCluster, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = Task.objects.filter(id=task_id).first()
        if task is not None:
            assert task.success, task.result
            return task.result
        assert cluster.proc.poll() is None, cluster.output()
        time.sleep(0.3)
    raise AssertionError("the scan did not finish:\n" + cluster.output())


def test_a_worker_scans_a_big_export_in_forked_pools_and_stops_cleanly(
    qcluster: QCluster, tmp_path: Path
) -> None:
    lines, truth = generate_corpus(400, 5)
    path = tmp_path / "corpus.ndjson"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    task_id = async_task("tests.worker_tasks.scan_with_pools", str(path), task_name="scan in pools", sync=False)
    result = _result(task_id, qcluster, timeout=120)

    run = ScanRun.objects.get()
    assert result["state"] == run.state == ScanRun.SUCCEEDED, run.error_message
    assert result["contacts"] == run.contacts_seen == Contact.objects.count() == len(truth)
    # A pool for preparing the file and one for scoring, each of a process per CPU.
    assert result["forks"] >= 2 * result["cpus"], result
    in_pools = snapshot()
    assert len(in_pools) == result["clusters"] > 25 * 3

    # One process, from the same index, finds the same clusters.
    Cluster.objects.all().delete()
    assert detection.detect(workers=0).created == len(in_pools)
    assert snapshot() == in_pools

    # Stopping the cluster (SIGTERM to its main process, as ``systemctl stop``) ends every process it
    # and the scan ever started.
    qcluster.proc.send_signal(signal.SIGTERM)
    assert qcluster.proc.wait(timeout=30) == 0, qcluster.output()
    assert _group_gone(qcluster.proc.pid, within=15), subprocess.run(
        ["ps", "-o", "pid,stat,cmd", "-g", str(qcluster.proc.pid)], capture_output=True, text=True
    ).stdout
