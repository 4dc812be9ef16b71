"""Tasks for tests that run a real ``qcluster``: importable by its workers (``tests.worker_tasks.*``)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path


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
        Path(path + ".tmp").write_text(" ".join(map(str, pids)))
        os.replace(path + ".tmp", path)
        time.sleep(seconds)
    return "done"


def pool_signal_handling(path: str, seconds: float) -> str:
    """Write what a process forked by this task does on SIGINT and SIGTERM, then sleep."""
    with multiprocessing.get_context("fork").Pool(1) as pool:
        handling = pool.apply(_signal_handling)
    Path(path + ".tmp").write_text(handling)
    os.replace(path + ".tmp", path)
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
