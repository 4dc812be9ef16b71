"""A worker killed anywhere; resume finishes the merge exactly once, losing nothing, for each strategy.

The PostgreSQL tests run ``manage.py merge --cluster ID --as alice`` in a real subprocess that SIGKILLs
itself at a state boundary (``DEDUP_CRASH_AT``, inert unless set), then ``manage.py merge --resume`` in
another. They need a database shared with the subprocess, which pytest-django's in-memory SQLite is
not, so they are PostgreSQL-only. The in-process tests (both databases) stop the worker after *every*
single call to Podium in turn (an exception no handler catches stands for the process dying) and resume
through the worker-start hook: no step is done twice and no duplicate is retired before its data landed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from django.contrib.auth.models import User
from django.db import connection

from dedup.audit import verify_chain
from dedup.merge import approve_cluster, resume_operations, run_operation
from dedup.models import AuditEvent, Cluster, MergeOperation
from dedup.worker_hooks import resume_merges_at_worker_start
from podium_client import Contact as PodiumContact
from tests.merge_helpers import CAPABILITIES, consent_problems, grant_every_location, missing_on

if TYPE_CHECKING:
    from tests.merge_helpers import MergeEnv

pytest_plugins = ["tests.merge_helpers"]

ROOT = Path(__file__).resolve().parent.parent

# Boundary → the state the operation is left in, and whether Podium's merge already happened (native)
# or which duplicates are already deleted (consolidate), when the worker dies there.
NATIVE_POINTS = {
    "pending": (MergeOperation.PENDING, 0),
    "merging": (MergeOperation.MERGING, 0),
    "after_pre_write": (MergeOperation.MERGING, 0),
    "after_merge_call": (MergeOperation.MERGING, 1),
    "merged": (MergeOperation.MERGED, 1),
    "after_patch": (MergeOperation.MERGED, 1),
}
CONSOLIDATE_POINTS = {
    "pending": (MergeOperation.PENDING, 0),
    "merging": (MergeOperation.MERGING, 0),
    "after_patch": (MergeOperation.MERGING, 0),
    "merged": (MergeOperation.MERGED, 0),
    "before_delete": (MergeOperation.MERGED, 0),
    "after_delete": (MergeOperation.MERGED, 1),
}
POINTS = [("native", p) for p in NATIVE_POINTS] + [("consolidate", p) for p in CONSOLIDATE_POINTS]


def _manage(env: MergeEnv, *args: str, crash_at: str | None = None) -> subprocess.CompletedProcess[str]:
    db = connection.settings_dict
    environ = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "dedup.settings_test",
        "DATABASE_URL": f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}",
        "PODIUM_BASE_URL": env.server.url,
        "PODIUM_ACCESS_TOKEN": env.server.token,
        "PODIUM_CAPABILITIES": ",".join(CAPABILITIES[env.strategy]),
        "LOG_LEVEL": "WARNING",
    }
    environ.pop("DEDUP_CRASH_AT", None)
    if crash_at:
        environ["DEDUP_CRASH_AT"] = crash_at
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "merge", *args],
        env=environ, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _retired_once(env: MergeEnv, uids: Sequence[str]) -> int:
    """How many of these duplicates are retired (and check none was retired twice)."""
    if env.native:
        return sum(1 for uid in uids if env.retired(uid))
    deletions = [d["uid"] for d in env.state.deleted() if d["uid"] in uids]
    assert len(deletions) == len(set(deletions)), f"deleted twice: {deletions}"
    return len(deletions)


def _merged_once_and_whole(env: MergeEnv, op: MergeOperation, before: dict[str, PodiumContact]) -> None:
    op.refresh_from_db()
    assert op.state == MergeOperation.PATCHED, (op.state, op.last_error)
    assert op.cluster.status == Cluster.MERGED
    stats = env.stats()
    if env.native:
        assert stats["merges"] == 1, "merged exactly once"
    assert _retired_once(env, op.duplicate_uids) == len(op.duplicate_uids)
    assert stats["purge_attempts"] == 0 and stats["ambiguous_identifier_uses"] == 0
    survivor = env.alive(op.primary_uid)
    for uid, member in before.items():
        assert missing_on(survivor, member) == [], uid
    assert consent_problems(before.values(), survivor) == []
    assert not MergeOperation.objects.exclude(state__in=MergeOperation.TERMINAL_STATES).exists()
    assert verify_chain().ok


# --- a real process killed at each state boundary (PostgreSQL) ----------------------------------------------


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("pg_flushable")
@pytest.mark.parametrize(("strategy", "point"), POINTS)
def test_sigkill_at_each_state_boundary_then_resume(
    merge_env_factory: Callable[..., MergeEnv], manager: User, strategy: str, point: str
) -> None:
    env = merge_env_factory(strategy)
    uids = env.maria()
    before = {uid: env.alive(uid) for uid in uids}
    env.index()
    grant_every_location(manager)
    cluster = env.cluster(uids)

    crashed = _manage(env, "--cluster", cluster.cluster_id, "--as", "alice", crash_at=point)

    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    op = MergeOperation.objects.get(cluster=cluster)
    state, done = (NATIVE_POINTS if env.native else CONSOLIDATE_POINTS)[point]
    assert op.state == state
    if env.native:
        assert env.stats()["merges"] == done
    else:
        assert _retired_once(env, op.duplicate_uids) == done
        if point in ("after_patch", "merged", "before_delete", "after_delete"):
            # The data landed on the primary before anything was deleted.
            survivor = env.alive("ct_m1")
            assert all(missing_on(survivor, m) == [] for m in before.values())

    resumed = _manage(env, "--resume")

    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["operations"]["patched"] == 1
    _merged_once_and_whole(env, op, before)
    if env.native and point in ("merging", "after_pre_write", "after_merge_call"):
        assert AuditEvent.objects.filter(operation_ref=op.pk, event_type="merge.reconciled").exists(), (
            "resume read Podium before acting"
        )


# --- the worker stopped after every single call (both databases) ----------------------------------------


class _Died(BaseException):
    """Stands for the process dying: no handler in the product catches a BaseException."""


@pytest.mark.django_db
def test_a_worker_stopped_after_any_call_is_resumed_without_repeating_or_losing_anything(
    merge_env: MergeEnv, manager: User
) -> None:
    calls_per_merge = 0
    for k in range(1, 40):
        prefix, number = f"k{k:02d}_", f"4{k:02d}000111"
        uids = merge_env.maria(prefix, number)
        before = {uid: merge_env.alive(uid) for uid in uids}
        merge_env.index(uids)
        op = approve_cluster(merge_env.cluster(uids), user=manager, run_async=True)
        merge_env.server.reset_stats()
        client = merge_env.client()
        sent: list[str] = []

        def die_after_call_k(name: str, k: int = k, sent: list[str] = sent) -> None:
            sent.append(name)
            if len(sent) == k:
                raise _Died

        client.after = die_after_call_k
        try:
            run_operation(op.pk, client=client)
        except _Died:
            op.refresh_from_db()
            assert op.state not in MergeOperation.TERMINAL_STATES, k
            # A worker process starts: the hook enqueues the resume (run inline here: Q_CLUSTER sync).
            resume_merges_at_worker_start(sender="django_q", proc_name=f"Process-{k}")
            _merged_once_and_whole(merge_env, op, before)
            continue
        # The run got through all of its calls without stopping: every position was tried.
        calls_per_merge = len(sent)
        _merged_once_and_whole(merge_env, op, before)
        break
    assert calls_per_merge == k - 1 and calls_per_merge >= (8 if merge_env.native else 15)
    assert resume_operations() == {"waiting_for_person": 0}
