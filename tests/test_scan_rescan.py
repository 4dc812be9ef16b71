"""Targeted rescans: after drift or a restore, re-read the contacts and re-detect their keys."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from dedup.models import AuditEvent, Cluster, Contact, Policy, RejectedRecord
from dedup.scanning import queue_rescan_of_keys, start_scan
from podium_client import PodiumClient
from podium_client.emulator import EmulatorServer

pytestmark = pytest.mark.django_db


@pytest.fixture
def scanned(emulator_factory: Callable[..., EmulatorServer], settings: Any) -> EmulatorServer:
    server = emulator_factory()
    settings.PODIUM_BASE_URL, settings.PODIUM_ACCESS_TOKEN = server.url, server.token
    policy = Policy.current()
    policy.rate_limit_per_minute = 0
    policy.save()
    start_scan(full=True, run_async=False)
    return server


def test_a_drifted_member_is_reread_and_its_cluster_rescored(
    scanned: EmulatorServer,
    podium_factory: Callable[..., PodiumClient],
    django_capture_on_commit_callbacks: Any,
) -> None:
    cluster = Cluster.objects.filter(status=Cluster.OPEN, auto_merge=True, member_count=2).first()
    assert cluster is not None
    uid = sorted(cluster.members.values_list("contact__uid", flat=True))[0]
    scanned.state.podium_edit(uid, {"name": "Somebody Different"})  # someone edits it in Podium

    with django_capture_on_commit_callbacks(execute=True):
        queue_rescan_of_keys(list(cluster.natural_keys), "updated_at_drift", actor="worker:w1", contact_uids=[uid])

    assert Contact.objects.get(uid=uid).name == "Somebody Different"
    refreshed = Cluster.objects.get(pk=cluster.pk)
    assert refreshed.status == Cluster.OPEN and not refreshed.auto_merge  # the names now conflict
    event = AuditEvent.objects.get(event_type="scan.keys_rescanned")
    assert event.actor == "worker:w1" and event.payload["reason"] == "updated_at_drift"
    assert event.payload["reread"] == 1


def test_without_uids_every_holder_of_the_keys_is_reread(
    scanned: EmulatorServer, django_capture_on_commit_callbacks: Any
) -> None:
    cluster = Cluster.objects.filter(status=Cluster.OPEN).first()
    assert cluster is not None
    with django_capture_on_commit_callbacks(execute=True):
        queue_rescan_of_keys(list(cluster.natural_keys), "contact restored")
    event = AuditEvent.objects.get(event_type="scan.keys_rescanned")
    # Every holder was asked for: re-read, or named as one Podium's published API cannot address
    # unambiguously (a number several contacts share), or as one Podium no longer has.
    attempted = event.payload["reread"] + len(event.payload["missing"]) + len(event.payload["unaddressable"])
    assert attempted >= cluster.member_count and event.payload["reread"] >= 1


def test_a_contact_podium_no_longer_knows_leaves_its_clusters(
    scanned: EmulatorServer,
    podium_factory: Callable[..., PodiumClient],
    django_capture_on_commit_callbacks: Any,
) -> None:
    cluster = Cluster.objects.filter(status=Cluster.OPEN, member_count=2, cross_location=False).first()
    assert cluster is not None
    gone = Contact.objects.filter(memberships__cluster=cluster).exclude(conversations=[]).first()
    assert gone is not None
    # Someone deleted it in Podium (the published API addresses it by its conversation).
    podium_factory(scanned).delete_contact(gone.conversations[0])
    with django_capture_on_commit_callbacks(execute=True):
        queue_rescan_of_keys(list(cluster.natural_keys), "gone", contact_uids=[gone.uid])
    assert Contact.objects.get(uid=gone.uid).deleted_at is not None
    assert AuditEvent.objects.get(event_type="scan.keys_rescanned").payload["missing"] == [gone.uid]
    cluster.refresh_from_db()
    assert cluster.status == Cluster.SUPERSEDED


def test_a_reread_contact_the_index_cannot_hold_is_set_aside_not_a_failure(
    scanned: EmulatorServer, django_capture_on_commit_callbacks: Any
) -> None:
    cluster = Cluster.objects.filter(status=Cluster.OPEN, member_count=2).first()
    assert cluster is not None
    uid = sorted(cluster.members.values_list("contact__uid", flat=True))[0]
    scanned.state.podium_edit(uid, {"name": "Nul\u0000Name"})
    with django_capture_on_commit_callbacks(execute=True):
        queue_rescan_of_keys(list(cluster.natural_keys), "updated_at_drift", contact_uids=[uid])
    rejected = RejectedRecord.objects.get()
    assert rejected.contact_uid == uid and "NUL" in rejected.reason and rejected.source == "podium"
    assert "Nul\\u0000Name" in rejected.raw  # escaped, so the database could store the text
    assert Contact.objects.get(uid=uid).name != "Nul\u0000Name"  # the index keeps what it had
    assert AuditEvent.objects.get(event_type="scan.keys_rescanned").payload["reread"] == 0
