"""The web entry point loads every view and freezes the start-up heap (``dedup.heap``), in its own process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = (
    "import gc, sys\n"
    "import dedup.wsgi\n"
    "print(gc.get_freeze_count(), 'dedup.views.clusters' in sys.modules, 'dedup.views.dashboard' in sys.modules)\n"
)


def test_the_wsgi_process_starts_with_its_views_loaded_and_its_heap_frozen() -> None:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "dedup.settings_test", "DEBUG": "1"}
    env.pop("DATABASE_URL", None)  # nothing here touches the database
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    frozen, clusters, dashboard = result.stdout.split()
    assert int(frozen) > 10_000  # Django, the URL conf, the views: tens of thousands of objects
    assert clusters == dashboard == "True"
