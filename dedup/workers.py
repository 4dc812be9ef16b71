"""How the product's django-q2 workers stop: within seconds of SIGTERM or Ctrl-C, whatever they are doing.

django-q2 (1.11) does not stop promptly by itself:

* SIGTERM to the cluster's main process makes its Sentinel wait for every worker to finish the task
  in hand, however long it takes (a full scan: up to the one-hour task timeout);
* SIGTERM to the whole process group (systemd's default, ``make run``) kills the Sentinel at once (it
  keeps SIGTERM's default action) while it waits on the cluster's stop ``Event``; the main process's
  handler then blocks for ever in ``stop_event.set()``, because multiprocessing's ``Condition``
  waits for the dead waiter to acknowledge (django-q2 issue #346 is the same deadlock).

``manage.py qcluster`` (dedup's command, which takes precedence over django-q2's) runs the cluster
under ``run_cluster``. Its signal handlers only take note; the main loop then asks a live Sentinel to
stop (from a helper thread, so a dead one cannot block it) and sends SIGINT to every process of the
cluster. The Sentinel, pusher and monitor ignore SIGINT; each worker handles it (and SIGTERM, for a
signal to the whole group) as a request to stop:

* an idle worker leaves at once;
* a busy one gives the task in hand ``Q_STOP_GRACE`` seconds (default 5) to finish, then interrupts
  it with ``WorkerStopping``, a ``SystemExit`` like django-q2's own task timeout. Transactions roll
  back and locks are released; a scan continues from its last committed page and a merge from its
  last committed step when they are next run. Long tasks may poll ``stop_requested()`` to stop
  sooner at a point of their choosing.

Processes a task forks (a big scan's preparing and scoring pools) are not workers: they do not keep
the worker's stop handlers. They ignore SIGINT, so the cluster's request reaches their task instead,
and keep SIGTERM's default action, which ``Pool.terminate`` uses when the task ends or is interrupted.
A pool process that kept the handlers ignored that SIGTERM once its worker was stopping, and the
worker hung in ``terminate`` until the cluster killed it.

Tasks queued in the cluster that no worker started go back to the broker, which hands them out again
(to this cluster when it next starts, or to another one now): a stopping worker does not start the
task it takes (``_task_started``), and the Sentinel's stop hands back whatever its queue still holds
(``_HandingBackSentinel``). django-q2's own stop counts on its workers to empty that queue, up to the
STOP pills it adds at the end; ours leave on the signal instead, so a full queue (it holds ``Q_WORKERS``
squared tasks) kept the Sentinel waiting for room for its pills, or for its pusher stuck putting one
more task, until the cluster killed it, and those tasks waited for the broker's ``retry`` (ORM) or were
lost (Redis).

Whatever is still running ``Q_STOP_GRACE`` + 5 seconds after the request is killed, and ``qcluster``
says so and exits with status 1.

Each worker process also beats (``dedup.heartbeat``): a row saying it is alive and what it is doing,
which the Scans page and ``/healthz?workers=1`` read; a cluster that stops marks its workers stopped.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
from types import FrameType
from typing import Any

import psutil
from django.conf import settings
from django.db import DatabaseError
from django.dispatch import receiver
from django_q.signals import post_execute_in_worker, post_spawn, pre_execute
from redis import RedisError

from dedup.heartbeat import CLUSTER_ENV, Beater, mark_cluster_stopped, this_process

logger = logging.getLogger("dedup.workers")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# What the cluster's own processes need after the grace to wind down (result saving, status rows).
_STOP_MARGIN = 5.0
_POLL = 0.2


class WorkerStopping(SystemExit):
    """Raised in a worker that was asked to stop: ends the task in hand, then the worker process."""


def stop_grace() -> float:
    """Seconds a busy worker's task gets to finish once the worker is asked to stop."""
    return float(getattr(settings, "Q_STOP_GRACE", 5.0))


# --- inside each worker process ----------------------------------------------------------------


class _Worker:
    """This process's stop state, when it is a cluster worker."""

    stopping = False
    task: str | None = None  # the task in hand, by name; None while idle
    heartbeat: Beater | None = None  # this worker's heartbeat (dedup.heartbeat), once started
    fork_hook = False  # whether processes forked from here drop the above (``_not_a_worker``)


def stop_requested() -> bool:
    """Whether this worker process was asked to stop: a long task may end early at a safe point."""
    return _Worker.stopping


def _is_cluster_worker() -> bool:
    # Synchronous mode (tests, inline commands) fires post_spawn in the calling process itself.
    return multiprocessing.parent_process() is not None and threading.current_thread() is threading.main_thread()


def _on_stop_signal(signum: int, frame: FrameType | None) -> None:
    first = not _Worker.stopping
    _Worker.stopping = True
    if _Worker.task is None:
        raise WorkerStopping(0)
    if first:
        grace = stop_grace()
        logger.info("worker %s asked to stop: %s gets %.0f s to finish", os.getpid(), _Worker.task, grace)
        signal.signal(signal.SIGALRM, _on_grace_over)
        signal.setitimer(signal.ITIMER_REAL, max(grace, 0.01))


def _on_grace_over(signum: int, frame: FrameType | None) -> None:
    logger.warning(
        "worker %s interrupted %s to stop; it continues from its last committed step when run again",
        os.getpid(), _Worker.task,
    )
    raise WorkerStopping(0)


@receiver(post_spawn, dispatch_uid="dedup.workers.handle_stop_signals")
def handle_stop_signals(sender: Any, proc_name: str = "", **kwargs: Any) -> None:
    """django-q2 ``post_spawn``: this worker stops promptly on SIGTERM or SIGINT (see the module doc)."""
    if not _is_cluster_worker():
        return
    _Worker.stopping, _Worker.task = False, None
    for sig in STOP_SIGNALS:
        signal.signal(sig, _on_stop_signal)
    if not _Worker.fork_hook:
        _Worker.fork_hook = True
        os.register_at_fork(after_in_child=_not_a_worker)


def _not_a_worker() -> None:
    """In a process a worker's task forks: drop the worker's stop handlers and state (module doc)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    _Worker.stopping, _Worker.task, _Worker.heartbeat = False, None, None


@receiver(post_spawn, dispatch_uid="dedup.workers.start_heartbeat")
def start_heartbeat(sender: Any, proc_name: str = "", **kwargs: Any) -> None:
    """django-q2 ``post_spawn``: this worker beats until it ends (``dedup.heartbeat``)."""
    if not _is_cluster_worker():
        return
    _Worker.heartbeat = Beater()
    _Worker.heartbeat.start()


@receiver(pre_execute, dispatch_uid="dedup.workers.task_started")
def _task_started(sender: Any, func: Any = None, task: dict[str, Any] | None = None, **kwargs: Any) -> None:
    if not _is_cluster_worker():
        return
    if _Worker.stopping:
        # Asked to stop between two tasks: this one goes back to the broker, which hands it out again.
        from django_q.brokers import get_broker

        if task:
            hand_back(get_broker(), task)
        raise WorkerStopping(0)
    _Worker.task = f"task {(task or {}).get('name', '?')!r}"
    if _Worker.heartbeat is not None:
        _Worker.heartbeat.note_task(str((task or {}).get("name") or (task or {}).get("func") or "task"))


@receiver(post_execute_in_worker, dispatch_uid="dedup.workers.task_finished")
def _task_finished(sender: Any, **kwargs: Any) -> None:
    if not _is_cluster_worker():
        return
    _Worker.task = None
    if _Worker.heartbeat is not None:
        _Worker.heartbeat.note_task(None)
    if _Worker.stopping:
        # The task finished within its grace. Once its result is handed over the worker waits for the
        # next task, which may never come (a dead Sentinel sends no STOP): ask again, as an idle worker.
        signal.setitimer(signal.ITIMER_REAL, 0)
        timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
        timer.daemon = True
        timer.start()


def hand_back(broker: Any, task: dict[str, Any]) -> None:
    """Return to ``broker`` a task the cluster took from it and did not run.

    Queued again first, then the copy the cluster took acknowledged: a failure in between leaves the
    task twice (the ORM broker would also hand out its copy after ``retry``), never lost. A broker that
    cannot be reached is logged; the ORM broker still hands the task out again after ``retry``.
    """
    from django_q.signing import SignedPackage

    name = task.get("name") or task.get("func")
    try:
        broker.enqueue(SignedPackage.dumps({k: v for k, v in task.items() if k != "ack_id"}))
        if task.get("ack_id") is not None:
            broker.acknowledge(task["ack_id"])
    except (DatabaseError, RedisError, OSError) as exc:  # the ORM broker's, Redis's, a socket's
        logger.warning("could not hand task %r back to the broker: %s: %s", name, type(exc).__name__, exc)
        return
    logger.info("task %r handed back to the broker for the next worker", name)


def _sentinel_class() -> type:
    """``_HandingBackSentinel``, built when a cluster starts: only ``qcluster`` imports django-q2's cluster."""
    from django_q.cluster import Sentinel

    class _HandingBackSentinel(Sentinel):
        """django-q2's Sentinel, whose stop hands back to the broker what its task queue holds (module doc)."""

        def stop(self) -> None:
            # The pusher stops first, as in django-q2's stop (which sets this event again, harmlessly);
            # every task it queued until then goes back before the STOP pills are added.
            self.event_out.set()
            while True:
                pusher_gone = self.pusher is None or not self.pusher.is_alive()
                try:
                    task = self.task_queue.get(timeout=_POLL)
                except queue.Empty:
                    if pusher_gone:  # it put nothing more since: the queue is empty for good
                        break
                    continue
                hand_back(self.broker, task)
            super().stop()

    return _HandingBackSentinel


# --- the cluster's main process --------------------------------------------------------------------


class _Processes:
    """Every process the cluster started (Sentinel, workers, pusher, monitor), remembered by pid.

    Remembered, not just listed when stopping: once a signal to the group has killed the Sentinel, its
    workers are no longer this process's descendants.
    """

    def __init__(self) -> None:
        self.me = psutil.Process()
        self.known: dict[int, psutil.Process] = {}

    def refresh(self) -> None:
        try:
            for child in self.me.children(recursive=True):
                self.known.setdefault(child.pid, child)
        except psutil.Error:
            logger.debug("could not list the cluster's processes", exc_info=True)

    def alive(self) -> list[psutil.Process]:
        return [p for p in self.known.values() if _running(p)]

    def ask_to_stop(self) -> None:
        """SIGINT to every process still running: workers stop, the others ignore it (django-q2).

        Sent again while they run: a worker that was starting ignored it until its handler was set;
        a busy one only counts the first.
        """
        for proc in self.alive():
            try:
                proc.send_signal(signal.SIGINT)
            except psutil.Error:
                logger.debug("process %s went away before it was asked to stop", proc.pid)


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def run_cluster(*, run_once: bool = False) -> int:
    """Run a django-q2 cluster until SIGTERM or SIGINT (or, with ``run_once``, start and stop it).

    Returns the exit status: 0 when every process of the cluster stopped by itself, 1 when one had to
    be killed or the cluster died on its own.
    """
    import django_q.cluster
    from django_q.cluster import Cluster

    # Cluster.start starts the Sentinel by this module-level name: ours hands back what it queued.
    django_q.cluster.Sentinel = _sentinel_class()
    requested: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # Only take note: the main loop does the rest, outside signal context.
        requested.append(signum)

    # Every process of this cluster names it in its heartbeat (dedup.heartbeat); the workers inherit it.
    os.environ[CLUSTER_ENV] = this_process()
    cluster = Cluster()  # installs django-q2's own handlers, replaced right here
    for sig in STOP_SIGNALS:
        signal.signal(sig, on_signal)
    processes = _Processes()
    cluster.start()
    processes.refresh()
    status = 0
    while not requested and not run_once:
        if cluster.sentinel is None or not cluster.sentinel.is_alive():
            logger.error("the cluster's Sentinel died; stopping the rest")
            status = 1
            break
        processes.refresh()
        time.sleep(_POLL)
    if requested:
        logger.info("stopping the cluster (%s)", signal.Signals(requested[0]).name)
    status = max(status, _stop(cluster, processes))
    try:
        mark_cluster_stopped(os.environ[CLUSTER_ENV])
    except DatabaseError as exc:
        logger.warning("could not mark this cluster's workers stopped: %s", exc)
    return status


def _stop(cluster: Any, processes: _Processes) -> int:
    processes.refresh()
    grace = stop_grace()
    if cluster.sentinel is not None and cluster.sentinel.is_alive():
        # From a thread: if the Sentinel dies right now, setting the event blocks for ever (module doc).
        threading.Thread(target=cluster.stop_event.set, name="qcluster-stop", daemon=True).start()
        # Give its guard loop a moment to see the event, so it does not replace the workers that stop.
        time.sleep(min(1.0, grace))
    deadline = time.monotonic() + grace + _STOP_MARGIN
    asked_at = 0.0
    while time.monotonic() < deadline:
        processes.refresh()
        if not processes.alive():
            break
        if time.monotonic() - asked_at >= 1.0:
            processes.ask_to_stop()
            asked_at = time.monotonic()
        time.sleep(_POLL)
    left = processes.alive()
    for proc in left:
        try:
            proc.kill()
        except psutil.Error:
            logger.debug("process %s went away before it was killed", proc.pid)
    psutil.wait_procs(left, timeout=5)
    if cluster.sentinel is not None:
        cluster.sentinel.join(timeout=5)
    if left:
        logger.warning(
            "the cluster did not stop within %.0f s; killed %d process(es): %s",
            grace + _STOP_MARGIN, len(left), ", ".join(str(p.pid) for p in left),
        )
        return 1
    logger.info("the cluster stopped")
    return 0
