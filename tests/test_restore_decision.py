"""A restore by a person is a decision (issue 12 item 9): the restored pair is not merged again without one.

Before, a contact restored without "different people" was proposed auto-mergeable again by the next
detection and merged straight back by the next ``merge --all-auto``. Now detection keeps any cluster
holding a contact a person restored (under its own uid or the uid it was re-created as) out of
automatic merging, with the reason ``restored_by_person``; a person may still approve it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from django.contrib.auth.models import User

from dedup.detection import detect
from dedup.merge import approve_cluster, merge_all_auto
from dedup.merge.restoring import restore_contact
from dedup.models import Cluster, MergeOperation

if TYPE_CHECKING:
    from tests.merge_helpers import MergeEnv

pytest_plugins = ["tests.merge_helpers"]
pytestmark = pytest.mark.django_db


def _open_cluster_with(uid: str) -> Cluster:
    return Cluster.objects.get(status=Cluster.OPEN, members__contact__uid=uid)


def test_a_restored_pair_is_proposed_for_a_person_not_merged_back_automatically(
    merge_env: MergeEnv, manager: User, admin_user: User
) -> None:
    primary, duplicate = merge_env.pair()
    merge_env.index()
    first = approve_cluster(merge_env.cluster([primary, duplicate]), user=manager, run_async=False)
    assert first.state == MergeOperation.PATCHED, first.last_error

    record = restore_contact(duplicate, user=admin_user)
    restored = record.new_uid or duplicate
    merge_env.index()
    detect(keys=["+61411111111"])

    cluster = _open_cluster_with(restored)
    assert (cluster.kind, cluster.auto_merge) == (Cluster.REVIEW, False)
    assert "restored_by_person" in cluster.reasons and "auto_merge_eligible" not in cluster.reasons

    requests = merge_env.stats()["requests"]
    assert merge_all_auto(actor="test") == []
    assert merge_env.stats()["requests"] == requests, "no call: nothing was merged back"
    assert merge_env.live(restored) is not None

    # A person who looks at it may still decide they are one customer.
    again = approve_cluster(cluster, user=manager, run_async=False)
    assert again.state == MergeOperation.PATCHED, again.last_error


def test_a_pair_never_restored_still_merges_automatically(merge_env: MergeEnv) -> None:
    primary, duplicate = merge_env.pair()
    merge_env.index()
    detect(keys=["+61411111111"])
    cluster = _open_cluster_with(duplicate)
    assert cluster.auto_merge and "restored_by_person" not in cluster.reasons
