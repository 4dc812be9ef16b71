"""Policy changes take effect: open clusters are re-evaluated in the background, and until then no cluster
scored under the old policy merges automatically or in bulk."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client

from dedup import reevaluation
from dedup.detection import detect
from dedup.indexing import IndexWriter, prepare_contact
from dedup.merge import approve_many, merge_all_auto
from dedup.models import AuditEvent, Cluster, MergeOperation, Policy, PolicyReevaluation
from dedup.roles import ROLE_NAMES
from podium_client.types import Contact as PodiumContact
from tests.fixtures_emulator import make_contact
from tests.realtime_helpers import seed_locations

pytestmark = pytest.mark.django_db


def index(*contacts: dict[str, Any]) -> None:
    writer = IndexWriter(Policy.current().default_region)
    writer.write([prepare_contact(PodiumContact.from_wire(c), "AU") for c in contacts])


@pytest.fixture
def auto_cluster() -> Cluster:
    """One open auto-mergeable cluster at the default threshold (0.80)."""
    seed_locations()
    index(
        make_contact(uid="m-1", name="Maria Garcia", phones=("0412 345 678",)),
        make_contact(uid="m-2", name="Maria Garcia", phones=("+61 412 345 678",)),
    )
    detect()
    cluster = Cluster.objects.get(status=Cluster.OPEN)
    assert cluster.kind == Cluster.AUTO and cluster.auto_merge and cluster.policy_version == 1
    assert cluster.confidence < Decimal("1.00")
    return cluster


@pytest.fixture
def admin() -> tuple[User, Client]:
    user = User.objects.create_user(username="boss", password="pw-123456789")
    user.groups.add(Group.objects.get(name=ROLE_NAMES["admin"]))
    client = Client()
    client.force_login(user)
    return user, client


def change_policy(client: Client, **fields: Any) -> Any:
    policy = Policy.current()
    data = {
        "default_region": policy.default_region, "auto_merge_threshold": str(policy.auto_merge_threshold),
        "scan_interval_minutes": policy.scan_interval_minutes, "rate_limit_per_minute": policy.rate_limit_per_minute,
    }  # fmt: skip
    if policy.cross_location_auto_merge:
        data["cross_location_auto_merge"] = "on"
    if policy.email_secondary_key:
        data["email_secondary_key"] = "on"
    for name, value in fields.items():
        if value is False:
            data.pop(name, None)
        else:
            data[name] = "on" if value is True else value
    return client.post("/settings/", data)


def test_an_auto_cluster_under_the_old_threshold_is_not_merged_while_reevaluation_runs_and_is_rekinded_after(
    auto_cluster: Cluster, admin: tuple[User, Client]
) -> None:
    user, client = admin
    # The re-evaluation task is queued when the change commits; inside the test's transaction it has
    # not run yet — exactly the window in which nothing may merge on the old policy.
    response = change_policy(client, auto_merge_threshold="1.00")
    assert response.status_code == 302
    policy = Policy.current()
    assert policy.auto_merge_threshold == Decimal("1.00") and policy.scoring_version == 2
    run = PolicyReevaluation.objects.get()
    assert run.state == PolicyReevaluation.QUEUED and run.changes["auto_merge_threshold"]["after"] == "1.00"

    results = merge_all_auto(actor="test", client=None)
    assert results == [] and not MergeOperation.objects.exists()
    batch = approve_many([auto_cluster], user=user)
    assert len(batch.refused) == 1 and "earlier policy" in batch.refused[0]["message"]  # type: ignore[attr-defined]
    auto_cluster.refresh_from_db()
    assert auto_cluster.status == Cluster.OPEN and auto_cluster.kind == Cluster.AUTO

    outcome = reevaluation.run_reevaluation(run.pk)
    assert outcome["state"] == PolicyReevaluation.SUCCEEDED
    run.refresh_from_db()
    assert (run.total, run.done) == (1, 1) and run.finished_at is not None
    auto_cluster.refresh_from_db()
    assert auto_cluster.status == Cluster.OPEN
    assert (
        auto_cluster.kind == Cluster.REVIEW
        and not auto_cluster.auto_merge
        and auto_cluster.policy_version == 2
    )
    assert merge_all_auto(actor="test") == []
    assert {"policy.reevaluation_started", "policy.reevaluation_finished"} <= set(
        AuditEvent.objects.values_list("event_type", flat=True)
    )


def test_lowering_the_threshold_makes_review_clusters_auto_only_after_reevaluation(
    auto_cluster: Cluster, admin: tuple[User, Client]
) -> None:
    _user, client = admin
    change_policy(client, auto_merge_threshold="1.00")
    reevaluation.run_reevaluation(PolicyReevaluation.objects.get().pk)
    auto_cluster.refresh_from_db()
    assert auto_cluster.kind == Cluster.REVIEW
    change_policy(client, auto_merge_threshold="0.80")
    latest = reevaluation.current()
    assert latest is not None and latest.policy_version == 3
    reevaluation.run_reevaluation(latest.pk)
    auto_cluster.refresh_from_db()
    assert auto_cluster.kind == Cluster.AUTO and auto_cluster.policy_version == 3


def test_a_cluster_scored_under_the_old_policy_is_held_even_if_a_scan_runs_first(
    auto_cluster: Cluster, admin: tuple[User, Client]
) -> None:
    _user, client = admin
    change_policy(client, cross_location_auto_merge=True)
    # A detection of other keys does not touch it: it stays on version 1 and held.
    detect(keys=["+61499999999"])
    auto_cluster.refresh_from_db()
    assert auto_cluster.policy_version == 1
    assert merge_all_auto(actor="test") == []


def test_a_change_of_a_field_that_does_not_score_starts_nothing(
    auto_cluster: Cluster, admin: tuple[User, Client]
) -> None:
    _user, client = admin
    change_policy(client, scan_interval_minutes=60)
    assert Policy.current().scoring_version == 1
    assert not PolicyReevaluation.objects.exists()


def test_turning_email_on_finds_clusters_only_an_email_joins(admin: tuple[User, Client]) -> None:
    seed_locations()
    index(
        make_contact(uid="e-1", name="Sam Lee", phones=(), emails=("sam@example.com",)),
        make_contact(uid="e-2", name="Sam Lee", phones=(), emails=("SAM@example.com",)),
    )
    detect()
    assert not Cluster.objects.exists()
    _user, client = admin
    change_policy(client, email_secondary_key=True)
    reevaluation.run_reevaluation(PolicyReevaluation.objects.get().pk)
    (cluster,) = Cluster.objects.filter(status=Cluster.OPEN)
    assert cluster.natural_keys == ["sam@example.com"] and cluster.policy_version == 2


def test_a_later_change_supersedes_a_running_reevaluation(
    auto_cluster: Cluster, admin: tuple[User, Client]
) -> None:
    _user, client = admin
    change_policy(client, auto_merge_threshold="1.00")
    first = PolicyReevaluation.objects.get()
    change_policy(client, auto_merge_threshold="0.90")
    first.refresh_from_db()
    assert first.state == PolicyReevaluation.SUPERSEDED
    assert reevaluation.run_reevaluation(first.pk) == {"state": PolicyReevaluation.SUPERSEDED}
    latest = reevaluation.current()
    assert latest is not None and latest.policy_version == 3
    reevaluation.run_reevaluation(latest.pk)
    auto_cluster.refresh_from_db()
    assert auto_cluster.policy_version == 3


def test_the_settings_page_shows_the_reevaluation_progress(
    auto_cluster: Cluster, admin: tuple[User, Client]
) -> None:
    _user, client = admin
    change_policy(client, auto_merge_threshold="1.00")
    page = client.get("/settings/").content.decode()
    assert "Re-evaluation #" in page and "Queued" in page and 'hx-get="/settings/reevaluation/"' in page
    reevaluation.run_reevaluation(PolicyReevaluation.objects.get().pk)
    partial = client.get("/settings/reevaluation/").content.decode()
    assert "Finished" in partial and "1 of 1 open cluster rescored" in partial


def test_a_person_may_still_approve_one_held_cluster(
    auto_cluster: Cluster, admin: tuple[User, Client]
) -> None:
    from dedup.merge.decisions import start_operation

    user, client = admin
    change_policy(client, auto_merge_threshold="1.00")
    from django.db import transaction

    with transaction.atomic():
        operation = start_operation(
            auto_cluster, user=user, actor="user:boss", actor_user_id=user.pk, primary_uid=None, batch=None,
            automatic=False,
        )  # fmt: skip
    assert operation.state == MergeOperation.PENDING
