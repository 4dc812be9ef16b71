"""The benches' CPU clock (``bench/cpuclock.py``): the figures that say where a phase's CPU went.

Each check measures a process's CPU independently (the process itself, or the kernel's figure for
one backend) and asks the clock to have counted at least that much, while the process runs and after
it has exited.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from django.db import connection

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import cpuclock  # noqa: E402

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads Linux /proc")

_BURN = """
import sys, time
start = time.process_time()
while time.process_time() - start < 0.3:
    sum(range(1000))
print(time.process_time(), flush=True)
sys.stdin.read()
"""


def test_a_command_name_with_spaces_and_parentheses_is_parsed() -> None:
    line = "4242 (postgres: a (b) c) S 17 4242 4242 0 -1 4194560 1 2 3 4 250 150 30 20 20 0 1 0 9 9 9"
    stat = cpuclock.parse_stat(line)
    assert (stat.pid, stat.ppid) == (4242, 17)
    assert stat.own == pytest.approx(400 / cpuclock._TICK)
    assert stat.reaped_children == pytest.approx(50 / cpuclock._TICK)


def test_a_child_process_is_counted_while_it_runs_and_after_it_is_reaped() -> None:
    before = cpuclock.read(None)
    child = subprocess.Popen(
        [sys.executable, "-c", _BURN], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None and child.stdin is not None
    burned = float(child.stdout.readline())
    running = cpuclock.read(None) - before
    child.stdin.close()
    assert child.wait(timeout=30) == 0
    reaped = cpuclock.read(None) - before
    assert burned >= 0.3
    assert running.children is not None and running.children >= burned - 0.02
    assert reaped.children is not None and reaped.children >= burned - 0.02
    # This process only waited: the child's CPU is not booked to it.
    assert running.this_process < burned


@pytest.mark.postgres
@pytest.mark.django_db
def test_a_backend_that_has_exited_still_counts_for_the_server() -> None:
    postmaster = cpuclock.django_postmaster()
    if postmaster is None:
        pytest.skip("the PostgreSQL server runs on another machine")
    params = connection.settings_dict
    before = cpuclock.read(postmaster)
    with psycopg.connect(
        dbname=params["NAME"], user=params["USER"], host=params["HOST"] or None, port=params["PORT"] or None
    ) as conn:
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert backend is not None
        stat_path = Path(f"/proc/{backend[0]}/stat")
        own_before = cpuclock.parse_stat(stat_path.read_text()).own
        conn.execute("SELECT count(*) FROM generate_series(1, 3000000) g WHERE g % 7 = 3").fetchone()
        used = cpuclock.parse_stat(stat_path.read_text()).own - own_before
        running = cpuclock.read(postmaster) - before
    deadline = time.monotonic() + 10
    while stat_path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # the postmaster reaps the backend once it has exited
    assert not stat_path.exists()
    gone = cpuclock.read(postmaster) - before
    assert used >= 0.05
    assert running.postgres is not None and running.postgres >= used - 0.02
    assert gone.postgres is not None and gone.postgres >= used - 0.02
    assert gone.machine is not None and gone.machine >= used - 0.02
