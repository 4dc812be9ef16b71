"""Tasks for tests that run a real ``qcluster``: importable by its workers (``tests.worker_tasks.*``)."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path
from typing import Any


def mark_then_sleep(path: str, seconds: float) -> str:
    """Write ``started`` to ``path``, sleep, then write ``done``: shows whether the task ran to its end."""
    Path(path).write_text("started")
    time.sleep(seconds)
    Path(path).write_text("done")
    return "done"


def pool_then_sleep(path: str, seconds: float) -> str:
    """Start a pool of forked processes as a big scan does, write their pids to ``path``, then sleep.

    In a daemonic django-q2 worker starting the pool fails ("daemonic processes are not allowed to have
    children") and nothing is written.
    """
    with multiprocessing.get_context("fork").Pool(2) as pool:
        pids = sorted(set(pool.map(_pid_after, [0.2] * 8, chunksize=1)))
        _write(path, " ".join(map(str, pids)))
        time.sleep(seconds)
    return "done"


def pool_signal_handling(path: str, seconds: float) -> str:
    """Write what a process forked by this task does on SIGINT and SIGTERM, then sleep."""
    with multiprocessing.get_context("fork").Pool(1) as pool:
        handling = pool.apply(_signal_handling)
    _write(path, handling)
    time.sleep(seconds)
    return "done"


def _signal_handling() -> str:
    def name(handler: object) -> str:
        if isinstance(handler, signal.Handlers):
            return handler.name
        return getattr(handler, "__qualname__", repr(handler))

    return " ".join(f"{sig.name}={name(signal.getsignal(sig))}" for sig in (signal.SIGINT, signal.SIGTERM))


def _pid_after(seconds: float) -> int:
    time.sleep(seconds)  # long enough that both pool processes get a share of the work
    return os.getpid()


_forks = 0  # processes this process has forked since it imported this module


def _count_fork() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_parent=_count_fork)

def _as_a_big_scan() -> None:
    """In this worker process only: a small corpus takes the path a first load of a million contacts
    takes (the file prepared in a pool of forked processes, the whole index scored in another)."""
    from dedup import detection, exportfile, scanning

    exportfile.PARALLEL_MIN_LINES = 0
    detection.PARALLEL_MIN_CONTACTS = 0
    detection.BATCH_GROUPS = 25
    scanning._FILE_DETECT_CHANGED_MAX = 0  # a first load: detect the whole index, not the contacts written


def scan_with_pools(path: str, report: str = "") -> dict[str, object]:
    """Scan the export at ``path`` as a big one (``_as_a_big_scan``).

    Returns the run's counters and how many processes the scan forked, and writes them to ``report``
    as JSON when given (for a test that cannot read task results).
    """
    from dedup import scanning

    _as_a_big_scan()
    before = _forks
    run = scanning.start_scan(from_file=path, run_async=False, actor="tests")
    result: dict[str, object] = {
        "state": run.state,
        "contacts": run.contacts_seen,
        "clusters": run.clusters_found,
        "forks": _forks - before,
        "cpus": os.cpu_count() or 1,
    }
    if report:
        _write(report, json.dumps(result))
    return result


_prepare_block: Any = None  # exportfile's own, while ``scan_stalled_in_pool`` stands in for it
_stall_marker = ""


def _stalled_prepare_block(*args: Any) -> Any:
    """In a preparing process: write its pid to the marker, then take a minute over the block."""
    _write(_stall_marker, str(os.getpid()))
    time.sleep(60)
    return _prepare_block(*args)


def scan_stalled_in_pool(path: str, marker: str) -> None:
    """Scan the export at ``path`` as a big one whose preparing processes each stall for a minute
    after writing their pid to ``marker``: a scan to stop while its pool works."""
    global _prepare_block, _stall_marker
    from dedup import exportfile, scanning

    _as_a_big_scan()
    _prepare_block, _stall_marker = exportfile._prepare_block_in_worker, marker
    exportfile._prepare_block_in_worker = _stalled_prepare_block  # type: ignore[assignment]
    scanning.start_scan(from_file=path, run_async=False, actor="tests")


def _write(path: str, text: str) -> None:
    """Write ``text`` to ``path`` at once: a reader polling for the file never sees it half written."""
    partial = f"{path}.{os.getpid()}.tmp"  # one per process: several may write the same file
    Path(partial).write_text(text)
    os.replace(partial, path)
