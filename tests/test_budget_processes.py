"""Several processes with the same Podium credentials stay, together, under Podium's limit.

Three real processes hammer the emulator, whose limit is a real sliding window, through one shared
budget: in Redis, and in the database (a SQLite file as in development; PostgreSQL in its pass).
Before the shared budget each process paced itself at the whole budget (the control case below:
three private pacers), so three processes sent three times the budget and met a storm of
``rate_limit`` answers.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from django.db import connection

from podium_client.emulator import EmulatorServer
from tests.processes import ROOT, child_env, database_url

PROCESSES = 3
SECONDS = 5.0
# 1200 requests a minute enforced over a 2-second window (40 per window); the processes pace at the
# same budget with a 10% margin, because a 2-second window leaves less room for jitter than a minute.
BUDGET = 1200
WINDOW = 2.0
MARGIN = 0.10


def _run(server: EmulatorServer, store: str, env: dict[str, str], *extra: str) -> list[dict[str, float]]:
    start_at = time.time() + 3.0  # every process imports and connects first, then they start together
    suffix = uuid.uuid4().hex
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.budget_worker",
                "--store",
                store,
                "--base-url",
                server.url,
                "--token",
                server.token,
                "--key-suffix",
                suffix,
                "--rpm",
                str(BUDGET),
                "--margin",
                str(MARGIN),
                "--seconds",
                str(SECONDS),
                "--start-at",
                str(start_at),
                *extra,
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(PROCESSES)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
        # Falling back to pacing alone would pass for the wrong reason.
        assert "budget is unreachable" not in err, err
    return results


def _check_shared(server: EmulatorServer, results: list[dict[str, float]]) -> None:
    stats = server.stats()
    sent = sum(r["sent"] for r in results)
    accepted = sent - sum(r["rate_limited"] for r in results)
    paced = SECONDS * BUDGET / 60 / (1 + MARGIN)
    # Together, about one budget, not three. Slots start one interval apart from the first, so at most
    # ceil(paced) start inside the window, and each process may start one last request past its end:
    # 94 here. CI once counted 95 on SQLite with Podium's window never exceeded (the two checks below
    # are the limit itself), so the count allows 5% besides; three budgets would be about 270.
    assert 0.85 * paced <= accepted <= 1.05 * paced + PROCESSES + 1, (results, stats)
    assert stats["rate_limited"] == 0, stats
    assert stats["peak_window_requests"] <= int(BUDGET * WINDOW / 60), stats
    # None of them starved: each got a share of the time it was sending (one whose start a loaded
    # machine delayed, ``late``, shares a shorter stretch). Shares are not equal: a process whose
    # requests or lock waits run slower reserves its slots less often (13 of 94 seen once in CI on
    # SQLite, 26-43 under load otherwise), so the floor is 30% of an even share.
    even = paced / PROCESSES
    assert all(r["sent"] >= 0.3 * even * (SECONDS - r["late"]) / SECONDS for r in results), results


@pytest.fixture
def limited_emulator(emulator_factory: Callable[..., EmulatorServer]) -> EmulatorServer:
    return emulator_factory(rate_limit=BUDGET, rate_window_s=WINDOW)


def test_three_processes_sharing_a_redis_budget_stay_under_the_limit(
    limited_emulator: EmulatorServer, redis_url: str
) -> None:
    results = _run(limited_emulator, "redis", child_env(), "--redis-url", redis_url)
    _check_shared(limited_emulator, results)


def test_three_processes_pacing_themselves_alone_are_refused(limited_emulator: EmulatorServer) -> None:
    # The control: what every worker did before the budget was shared. Each backs off after a refusal
    # (its own pacer hears the Retry-After), so they do not send three budgets, but each is refused.
    results = _run(limited_emulator, "private", child_env())
    stats = limited_emulator.stats()
    assert all(r["rate_limited"] >= 1 for r in results), results
    assert stats["rate_limited"] >= PROCESSES, stats
    assert stats["peak_window_requests"] > int(BUDGET * WINDOW / 60), stats


@pytest.fixture
def shared_database_url(tmp_path: Path) -> str:
    """A migrated database the worker processes share: the PostgreSQL test database in the PostgreSQL
    pass, a SQLite file (as ``make run`` uses) otherwise."""
    if connection.vendor == "postgresql":
        # The test database (the test is marked django_db so it exists); the workers' rows are committed
        # by their own connections.
        return database_url()
    url = f"sqlite:///{tmp_path / 'budget.sqlite3'}"
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=child_env(DATABASE_URL=url), check=True
    )
    return url


@pytest.mark.django_db
def test_three_processes_sharing_a_database_budget_stay_under_the_limit(
    limited_emulator: EmulatorServer, shared_database_url: str
) -> None:
    results = _run(limited_emulator, "database", child_env(DATABASE_URL=shared_database_url))
    _check_shared(limited_emulator, results)
