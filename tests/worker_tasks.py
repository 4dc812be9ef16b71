"""Tasks for tests that run a real ``qcluster``: importable by its workers (``tests.worker_tasks.*``)."""

from __future__ import annotations

import time
from pathlib import Path


def mark_then_sleep(path: str, seconds: float) -> str:
    """Write ``started`` to ``path``, sleep, then write ``done``: shows whether the task ran to its end."""
    Path(path).write_text("started")
    time.sleep(seconds)
    Path(path).write_text("done")
    return "done"
