"""Workers say they are alive: a heartbeat row per worker process, read by the Scans page and ``/healthz``.

Each django-q2 worker process of a ``qcluster`` (``dedup.workers``) starts a small thread that writes
its ``WorkerHeartbeat`` row every ``WORKER_HEARTBEAT_SECONDS`` (5 by default) with the task in hand,
whatever the task is doing: a worker busy with a long scan still beats. A worker whose row has not
moved for ``WORKER_STALE_SECONDS`` (30) is dead or cut off from the database; a ``qcluster`` that stops
cleanly marks its workers stopped. Rows are per process, so a worker on another machine shows up
under its own host name as soon as it starts.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection
from django.utils import timezone

logger = logging.getLogger("dedup.heartbeat")

#: Silent workers are forgotten after a day (their rows are removed by the next worker to start).
FORGET_AFTER = timedelta(days=1)
#: The environment variable a ``qcluster`` sets for its processes: its own ``host:pid``.
CLUSTER_ENV = "DEDUP_QCLUSTER"


def interval() -> float:
    """Seconds between two beats of a worker."""
    return float(getattr(settings, "WORKER_HEARTBEAT_SECONDS", 5.0))


def stale_after() -> timedelta:
    """How long a worker may stay silent before it counts as dead."""
    return timedelta(seconds=float(getattr(settings, "WORKER_STALE_SECONDS", 30.0)))


def this_process() -> str:
    """``host:pid`` of this process: the name of its heartbeat row."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Beater:
    """The heartbeat of one worker process: a daemon thread writing its row until the process ends.

    ``task`` is read at every beat; the worker's main thread sets it when a task starts and clears it
    when the task ends (``note_task``), and the row says so at once.
    """

    def __init__(self, cluster: str = "") -> None:
        self.name = this_process()
        self.cluster = cluster or os.environ.get(CLUSTER_ENV, "")
        self.task = ""
        self.task_started_at: datetime | None = None
        self.tasks_done = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Write the first beat now (the worker shows up at once), then beat from a daemon thread."""
        self.beat(first=True)
        self._thread = threading.Thread(target=self._run, name="dedup-heartbeat", daemon=True)
        self._thread.start()

    def note_task(self, task: str | None) -> None:
        """The worker took a task (its name) or finished one (None); the next beat, right away, says so."""
        if task:
            self.task, self.task_started_at = task[:200], timezone.now()
        else:
            if self.task:
                self.tasks_done += 1
            self.task, self.task_started_at = "", None
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._wake.wait(interval())
                self._wake.clear()
                if self._stop.is_set():
                    break
                self.beat()
        finally:
            connection.close()

    def beat(self, *, first: bool = False) -> None:
        """Write this worker's row (a failure is logged and the next beat tries again)."""
        from dedup.models import WorkerHeartbeat

        now = timezone.now()
        fields: dict[str, Any] = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "cluster": self.cluster,
            "beat_at": now,
            "task": self.task,
            "task_started_at": self.task_started_at,
            "tasks_done": self.tasks_done,
            "stopped_at": None,
        }
        if first:
            fields["started_at"] = now
        try:
            WorkerHeartbeat.objects.update_or_create(name=self.name, defaults=fields)
            if first:
                WorkerHeartbeat.objects.filter(beat_at__lt=now - FORGET_AFTER).delete()
        except DatabaseError as exc:
            logger.warning("worker %s could not write its heartbeat: %s", self.name, exc)
            connection.close()


def mark_cluster_stopped(cluster: str) -> int:
    """A ``qcluster`` stopped cleanly: its workers' rows say so (they no longer count as live)."""
    from dedup.models import WorkerHeartbeat

    return WorkerHeartbeat.objects.filter(cluster=cluster, stopped_at__isnull=True).update(
        stopped_at=timezone.now()
    )


@dataclass(frozen=True)
class WorkerStatus:
    """What the Scans page and ``/healthz?workers=1`` show about the workers and the queue."""

    live: list[Any]
    silent: list[Any]
    queued: int | None
    checked_at: datetime

    @property
    def busy(self) -> int:
        return sum(1 for w in self.live if w.task)

    @property
    def hosts(self) -> list[str]:
        return sorted({w.host for w in self.live})

    def as_json(self) -> dict[str, Any]:
        return {
            "live": len(self.live),
            "busy": self.busy,
            "hosts": self.hosts,
            "queued": self.queued,
            "silent": len(self.silent),
            "lastBeat": max((w.beat_at for w in self.live), default=None),
        }


def queue_depth() -> int | None:
    """Tasks waiting in the django-q2 queue (None when the broker cannot be asked)."""
    from django_q.brokers import get_broker

    try:
        return int(get_broker().queue_size() or 0)
    except Exception as exc:  # noqa: BLE001 - any broker failure (Redis down, database error) reads as unknown
        logger.warning("could not read the queue depth: %s", exc)
        return None


def worker_status(now: datetime | None = None) -> WorkerStatus:
    """Live workers (beat within ``WORKER_STALE_SECONDS``), recently silent ones, the queue depth."""
    from dedup.models import WorkerHeartbeat

    now = now or timezone.now()
    cutoff = now - stale_after()
    rows = list(WorkerHeartbeat.objects.filter(beat_at__gte=now - FORGET_AFTER).order_by("host", "name"))
    live = [r for r in rows if r.stopped_at is None and r.beat_at >= cutoff]
    silent = [r for r in rows if r.stopped_at is None and r.beat_at < cutoff]
    return WorkerStatus(live=live, silent=silent, queued=queue_depth(), checked_at=now)
