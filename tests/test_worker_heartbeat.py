"""Workers beat: a row per worker process, live or silent, on the Scans page and at ``/healthz?workers=1``.

The last test starts a real ``qcluster`` (two workers, a SQLite file, as ``make run`` does) and watches
its heartbeats appear, move, and say "stopped" when the cluster is stopped.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from dedup.heartbeat import Beater, mark_cluster_stopped, worker_status
from dedup.models import WorkerHeartbeat
from tests.processes import child_env

ROOT = Path(__file__).resolve().parent.parent


def _row(
    name: str, *, ago: float, task: str = "", cluster: str = "vm:1", stopped: bool = False
) -> WorkerHeartbeat:
    now = timezone.now()
    return WorkerHeartbeat.objects.create(
        name=name, host=name.split(":")[0], pid=int(name.split(":")[1]), cluster=cluster,
        beat_at=now - timedelta(seconds=ago), task=task, task_started_at=now if task else None,
        stopped_at=now if stopped else None,
    )  # fmt: skip


@pytest.mark.django_db
def test_a_beater_writes_its_row_and_the_task_in_hand() -> None:
    beater = Beater(cluster="host-a:100")
    beater.beat(first=True)
    row = WorkerHeartbeat.objects.get(name=beater.name)
    assert (row.cluster, row.task, row.tasks_done, row.stopped_at) == ("host-a:100", "", 0, None)
    beater.note_task("scan #12")
    beater.beat()
    row.refresh_from_db()
    assert row.task == "scan #12" and row.task_started_at is not None
    beater.note_task(None)
    beater.beat()
    row.refresh_from_db()
    assert (row.task, row.tasks_done) == ("", 1)


@pytest.mark.django_db
def test_live_silent_and_stopped_workers(settings: Any) -> None:
    settings.WORKER_STALE_SECONDS = 30
    _row("alpha:1", ago=2, task="merge-op-7")
    _row("alpha:2", ago=10)
    _row("beta:3", ago=45)  # killed without a word
    _row("beta:4", ago=1, stopped=True)
    status = worker_status()
    assert [w.name for w in status.live] == ["alpha:1", "alpha:2"]
    assert [w.name for w in status.silent] == ["beta:3"]
    assert status.busy == 1 and status.hosts == ["alpha"]
    assert mark_cluster_stopped("vm:1") == 3
    assert worker_status().live == []


@pytest.mark.django_db
def test_healthz_workers_answers_503_without_a_live_worker(client: Client) -> None:
    _row("gone:9", ago=300)
    response = client.get("/healthz?workers=1")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "error" and body["problems"] == ["no live worker"]
    assert body["workers"]["live"] == 0 and body["workers"]["silent"] == 1
    # The plain probe (the web server's) does not depend on the workers.
    assert client.get("/healthz").status_code == 200


@pytest.mark.django_db
def test_healthz_workers_answers_200_with_a_live_worker(client: Client) -> None:
    _row("alpha:1", ago=1, task="scan #3")
    response = client.get("/healthz?workers=1")
    assert response.status_code == 200
    body = response.json()
    assert (
        body["workers"]["live"] == 1
        and body["workers"]["busy"] == 1
        and body["workers"]["hosts"] == ["alpha"]
    )
    assert body["workers"]["queued"] == 0
    assert set(body["budget"]) == {"granted", "rate_limited"}


@pytest.mark.django_db
def test_healthz_workers_answers_503_when_the_queue_cannot_be_read(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    _row("alpha:1", ago=1)

    class Broken:
        def queue_size(self) -> int:
            raise ConnectionError("Redis is down")

    monkeypatch.setattr("django_q.brokers.get_broker", lambda *a, **kw: Broken())
    response = client.get("/healthz?workers=1")
    assert response.status_code == 503
    assert response.json()["problems"] == ["the task queue cannot be read"]


@pytest.mark.django_db
def test_the_scans_page_shows_the_workers(client: Client) -> None:
    from django.core.management import call_command

    call_command(
        "create_user", "boss", "--role", "admin", "--password", "a-long-test-password-1", verbosity=0
    )
    client.force_login(get_user_model().objects.get(username="boss"))
    page = client.get("/scans/").content.decode()
    assert "No live worker" in page and "python manage.py qcluster" in page
    _row("alpha:1", ago=1, task="scan #3")
    _row("beta:2", ago=2)
    _row("gamma:3", ago=120)
    page = client.get("/scans/").content.decode()
    assert "2 workers live" in page and "1 busy · on alpha, beta" in page
    assert "scan #3" in page and "silent" in page and "gamma:3" in page


# --- a real qcluster ------------------------------------------------------------------------------------


def _env(var_dir: Path) -> dict[str, str]:
    return child_env(DEDUP_VAR_DIR=str(var_dir), Q_WORKERS="2", Q_STOP_GRACE="1", WORKER_HEARTBEAT_SECONDS="0.5")


def _rows(var_dir: Path) -> list[tuple[str, str, str | None]]:
    with sqlite3.connect(var_dir / "dedup.sqlite3", timeout=10) as db:
        return list(db.execute("SELECT name, beat_at, stopped_at FROM dedup_workerheartbeat ORDER BY name"))


def _wait(condition: Any, what: str, log: Path, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        assert time.monotonic() < deadline, f"{what}:\n{log.read_text()}"
        time.sleep(0.3)


def test_a_real_cluster_beats_and_says_when_it_stopped(tmp_path: Path) -> None:
    env = _env(tmp_path)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
    log = tmp_path / "qcluster.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "qcluster"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        first = _wait(lambda: (r := _rows(tmp_path)) and len(r) == 2 and r, "two workers beating", log)
        assert all(stopped is None for _name, _beat, stopped in first)
        # Each beat moves on.
        _wait(
            lambda: all(b[1] > a[1] for a, b in zip(first, _rows(tmp_path), strict=True)), "beats moving", log
        )
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    rows = _rows(tmp_path)
    assert len(rows) == 2 and all(stopped is not None for _name, _beat, stopped in rows), rows
