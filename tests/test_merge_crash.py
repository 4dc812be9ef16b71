"""A worker killed at every state boundary; resume finishes the merge exactly once, losing nothing.

The PostgreSQL tests run ``manage.py merge --cluster ID`` in a real subprocess that SIGKILLs itself at a
boundary (``DEDUP_CRASH_AT``, inert unless set), then ``manage.py merge --resume`` in another. They need
a database shared with the subprocess, which pytest-django's in-memory SQLite is not, so they are
PostgreSQL-only. The in-process test below (both databases) simulates the death by an exception no
handler catches, and resumes through the worker-start hook.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from django.contrib.auth.models import User
from django.db import connection

from dedup import merging
from dedup.audit import verify_chain
from dedup.merging import approve_cluster, run_operation
from dedup.models import AuditEvent, Cluster, MergeOperation
from dedup.records import OptOuts
from dedup.worker_hooks import resume_merges_at_worker_start
from podium_client import Contact as PodiumContact

if TYPE_CHECKING:
    from tests.merge_helpers import MergeEnv

pytest_plugins = ["tests.merge_helpers"]

ROOT = Path(__file__).resolve().parent.parent
UNION = OptOuts(marketing=True, sms=True, email=False)

# Boundary → the state the operation is left in when the worker dies there.
BOUNDARIES = {
    "pending": MergeOperation.PENDING,
    "merging": MergeOperation.MERGING,
    "after_merge_call": MergeOperation.MERGING,
    "merged": MergeOperation.MERGED,
    "after_patch": MergeOperation.MERGED,
}


def _manage(env: MergeEnv, *args: str, crash_at: str | None = None) -> subprocess.CompletedProcess[str]:
    settings_dict = connection.settings_dict
    environ = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "dedup.settings_test",
        "DATABASE_URL": (
            f"postgres://{settings_dict['USER']}:{settings_dict['PASSWORD'] or ''}@{settings_dict['HOST']}:"
            f"{settings_dict['PORT'] or 5432}/{settings_dict['NAME']}"
        ),
        "PODIUM_BASE_URL": env.server.url,
        "PODIUM_ACCESS_TOKEN": env.server.token,
        "PODIUM_OAUTH_URL": "",
        "LOG_LEVEL": "WARNING",
    }
    environ.pop("DEDUP_CRASH_AT", None)
    if crash_at:
        environ["DEDUP_CRASH_AT"] = crash_at
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "merge", *args],
        env=environ, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )


def _assert_merged_once_and_whole(env: MergeEnv, op: MergeOperation) -> None:
    op.refresh_from_db()
    assert op.state == MergeOperation.PATCHED, (op.state, op.last_error)
    assert op.cluster.status == Cluster.MERGED
    stats = env.server.stats()
    assert stats["merges"] == 1, "merged exactly once"
    assert stats["hard_delete_attempts"] == 0
    primary = env.live("ct_m1")
    assert OptOuts.from_wire(primary.to_wire()).covers(UNION)
    assert {t.casefold() for t in primary.tags} >= {"vip", "newsletter"}
    assert "02 9876 5432" in {c.identifier for c in primary.channels}
    assert all(env.live(uid).merged_into_uid == "ct_m1" for uid in ("ct_m2", "ct_m3"))
    assert not MergeOperation.objects.exclude(state__in=MergeOperation.TERMINAL_STATES).exists()
    assert verify_chain().ok


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("pg_flushable")
@pytest.mark.parametrize("boundary", list(BOUNDARIES))
def test_sigkill_at_each_boundary_then_resume(merge_env: MergeEnv, boundary: str) -> None:
    uids = merge_env.maria()
    merge_env.index()
    cluster = merge_env.cluster(uids)

    crashed = _manage(merge_env, "--cluster", cluster.cluster_id, crash_at=boundary)

    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    op = MergeOperation.objects.get(cluster=cluster)
    assert op.state == BOUNDARIES[boundary]
    merges_at_crash = merge_env.server.stats()["merges"]
    assert merges_at_crash == (0 if boundary in ("pending", "merging") else 1)

    resumed = _manage(merge_env, "--resume")

    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert summary["operations"]["patched"] == 1
    _assert_merged_once_and_whole(merge_env, op)
    if boundary in ("after_merge_call", "merging"):
        reconciled = AuditEvent.objects.filter(operation_ref=op.pk, event_type="merge.reconciled")
        assert reconciled.exists(), "resume read Podium before acting"


class _Died(BaseException):
    """Stands for the process dying: no handler in the product catches a BaseException."""


@pytest.mark.django_db
def test_a_worker_start_reconciles_a_merge_left_half_done(merge_env: MergeEnv, manager: User) -> None:
    uids = merge_env.maria()
    merge_env.index()
    op = approve_cluster(merge_env.cluster(uids), user=manager, run_async=True)
    client = merge_env.client()

    def merge_then_die(primary: str, dups: list[str]) -> PodiumContact:
        client.real_merge(primary, dups)
        raise _Died

    client.merge_override = merge_then_die
    with pytest.raises(_Died):
        run_operation(op.pk, client=client)
    op.refresh_from_db()
    assert op.state == MergeOperation.MERGING
    assert not merge_env.live("ct_m1").sms_opt_out  # half done: merged, opt-outs not yet written back

    # A worker process starts: the hook enqueues the resume (run inline here: Q_CLUSTER sync).
    resume_merges_at_worker_start(sender="django_q", proc_name="Process-1")

    _assert_merged_once_and_whole(merge_env, op)
    from django_q.models import Schedule

    assert Schedule.objects.filter(func="dedup.merging.run_due_operations").count() == 1
    assert merging.resume_operations() == {"waiting_for_person": 0}
