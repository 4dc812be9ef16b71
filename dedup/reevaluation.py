"""Policy changes take effect: every open cluster is re-evaluated in the background.

Changing a field that decides how clusters are scored (``Policy.SCORING_FIELDS``: the auto-merge
threshold, cross-location auto-merge, email as a secondary key) moves ``Policy.scoring_version`` in the
same transaction as the change, and queues a ``PolicyReevaluation``. Every cluster records the version it
was scored with (``Cluster.policy_version``, written by detection), and ``dedup.merge.decisions`` refuses
to merge automatically or in bulk a cluster scored under another version — so until the re-evaluation
has rescored it, no cluster scored under the old policy can merge without a person.

The task rescores the open clusters still on an older version, a chunk at a time
(``detect(contact_ids=…, rescore=True)``: their members and whatever shares a key with them), recording
progress; when email became a secondary key it then runs a full detection, which finds the groups only
an email joins. A later change supersedes a running re-evaluation (the newer one does the work).
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from dedup import audit
from dedup.detection import detect
from dedup.indexing import chunked
from dedup.models import Cluster, ClusterMember, Policy, PolicyReevaluation

logger = logging.getLogger(__name__)

CHUNK = 500
TASK = "dedup.reevaluation.run_reevaluation"
ACTOR = "system:policy"
# Passes over clusters still on an older version: a detection that read the old policy just before the
# change may write a few after the first pass listed the clusters.
_MAX_PASSES = 3


def policy_changed(
    changes: dict[str, Any], *, user: Any = None, actor: str = "system", actor_user_id: int | None = None
) -> PolicyReevaluation | None:
    """After the policy was saved (call it in the same transaction): when a scoring field changed, move
    the scoring version and queue the re-evaluation (started when the transaction commits)."""
    scoring = {name: change for name, change in changes.items() if name in Policy.SCORING_FIELDS}
    if not scoring:
        return None
    policy = Policy.current()
    Policy.objects.filter(pk=policy.pk).update(scoring_version=F("scoring_version") + 1)
    version = Policy.objects.values_list("scoring_version", flat=True).get(pk=policy.pk)
    now = timezone.now()
    PolicyReevaluation.objects.filter(state__in=PolicyReevaluation.ACTIVE_STATES).update(
        state=PolicyReevaluation.SUPERSEDED, finished_at=now
    )
    run = PolicyReevaluation.objects.create(
        policy_version=version,
        changes=scoring,
        requested_by=user if getattr(user, "is_authenticated", False) else None,
    )
    audit.record(
        "policy.reevaluation_started",
        actor=actor,
        actor_user_id=actor_user_id,
        payload={"reevaluation": run.pk, "policyVersion": version, "changes": scoring},
    )
    transaction.on_commit(lambda: enqueue(run.pk))
    return run


def start_again(
    *, user: Any = None, actor: str = "system", actor_user_id: int | None = None
) -> PolicyReevaluation:
    """Queue a re-evaluation for the version in force (after one failed)."""
    with transaction.atomic():
        version = Policy.current().scoring_version
        PolicyReevaluation.objects.filter(state__in=PolicyReevaluation.ACTIVE_STATES).update(
            state=PolicyReevaluation.SUPERSEDED, finished_at=timezone.now()
        )
        run = PolicyReevaluation.objects.create(
            policy_version=version, changes={"restarted": True},
            requested_by=user if getattr(user, "is_authenticated", False) else None,
        )  # fmt: skip
        audit.record(
            "policy.reevaluation_started", actor=actor, actor_user_id=actor_user_id,
            payload={"reevaluation": run.pk, "policyVersion": version, "restarted": True},
        )  # fmt: skip
        transaction.on_commit(lambda: enqueue(run.pk))
    return run


def enqueue(run_id: int) -> None:
    from django_q.tasks import async_task

    async_task(TASK, run_id, task_name=f"policy re-evaluation #{run_id}", group="policy")


def current() -> PolicyReevaluation | None:
    """The latest re-evaluation (for the settings page)."""
    return PolicyReevaluation.objects.order_by("-created_at", "-id").first()


def stale_open_clusters(version: int) -> int:
    """Open clusters scored under another version than ``version``."""
    return Cluster.objects.filter(status=Cluster.OPEN).exclude(policy_version=version).count()


def run_reevaluation(run_id: int, chunk: int = CHUNK) -> dict[str, Any]:
    """The task: rescore every open cluster scored under an older version, with progress."""
    run = PolicyReevaluation.objects.get(pk=run_id)
    if run.state not in PolicyReevaluation.ACTIVE_STATES:
        return {"state": run.state}
    PolicyReevaluation.objects.filter(pk=run.pk).update(
        state=PolicyReevaluation.RUNNING, started_at=timezone.now(), phase="rescoring open clusters"
    )
    try:
        outcome = _rescore_all(run, chunk)
    except Exception as exc:
        PolicyReevaluation.objects.filter(pk=run.pk).update(
            state=PolicyReevaluation.FAILED,
            finished_at=timezone.now(),
            error=f"{type(exc).__name__}: {exc}"[:2000],
        )
        logger.exception("policy re-evaluation #%s failed; clusters on the old policy stay held", run.pk)
        raise
    run.refresh_from_db()
    if outcome == PolicyReevaluation.SUPERSEDED:
        return {"state": run.state}
    PolicyReevaluation.objects.filter(pk=run.pk).update(
        state=PolicyReevaluation.SUCCEEDED, finished_at=timezone.now(), phase=""
    )
    run.refresh_from_db()
    audit.record(
        "policy.reevaluation_finished",
        actor=ACTOR,
        payload={"reevaluation": run.pk, "policyVersion": run.policy_version, "clusters": run.done},
    )
    logger.info("policy re-evaluation #%s finished: %d cluster(s) rescored", run.pk, run.done)
    return {"state": run.state, "clusters": run.done}


def _superseded(run: PolicyReevaluation) -> bool:
    if Policy.current().scoring_version == run.policy_version:
        return False
    PolicyReevaluation.objects.filter(pk=run.pk).update(
        state=PolicyReevaluation.SUPERSEDED, finished_at=timezone.now()
    )
    return True


def _rescore_all(run: PolicyReevaluation, chunk: int) -> str:
    done = 0
    for passes in range(_MAX_PASSES):
        pending = list(
            Cluster.objects.filter(status=Cluster.OPEN)
            .exclude(policy_version=run.policy_version)
            .order_by("pk")
            .values_list("pk", flat=True)
        )
        if passes == 0:
            PolicyReevaluation.objects.filter(pk=run.pk).update(total=len(pending))
        elif pending:
            PolicyReevaluation.objects.filter(pk=run.pk).update(total=F("total") + len(pending))
        if not pending:
            break
        for part in chunked(pending, chunk):
            if _superseded(run):
                return PolicyReevaluation.SUPERSEDED
            member_ids = sorted(
                set(
                    ClusterMember.objects.filter(cluster_id__in=list(part)).values_list(
                        "contact_id", flat=True
                    )
                )
            )
            detect(contact_ids=member_ids, rescore=True, actor=ACTOR)
            done += len(part)
            PolicyReevaluation.objects.filter(pk=run.pk).update(done=done)
    email = run.changes.get("email_secondary_key") if isinstance(run.changes, dict) else None
    if isinstance(email, dict) and email.get("after") is True:
        if _superseded(run):
            return PolicyReevaluation.SUPERSEDED
        PolicyReevaluation.objects.filter(pk=run.pk).update(phase="looking for clusters an email joins")
        detect(actor=ACTOR)
    return PolicyReevaluation.SUCCEEDED
