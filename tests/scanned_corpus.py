"""A product pointed at a running emulator with the demo corpus scanned: for the queue, budget and worker tests.

Fixture ``scanned_corpus`` (database): the emulator (the 60-person demo corpus, published API only),
the settings pointing ``get_client`` at it, tiny retry backoffs, the Podium budget off unless a test
sets ``Policy.rate_limit_per_minute``, an admin ``boss`` and a full scan done. Register it with
``pytest_plugins = ["tests.scanned_corpus"]``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from dedup.merge import common as merge_common
from dedup.models import Cluster, Policy, ScanRun
from dedup.scanning import start_scan
from podium_client.emulator import EmulatorServer

PASSWORD = "a-long-test-password-1"


@dataclass
class ScannedCorpus:
    server: EmulatorServer
    boss: Any

    def auto_clusters(self) -> list[Cluster]:
        return list(Cluster.objects.filter(status=Cluster.OPEN, auto_merge=True).order_by("pk"))


def point_at(server: EmulatorServer, settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings and merge options for a product talking to ``server``."""
    settings.PODIUM_BASE_URL = server.url
    settings.PODIUM_ACCESS_TOKEN = server.token
    settings.PODIUM_REFRESH_TOKEN = ""
    settings.PODIUM_CAPABILITIES = []
    settings.REDIS_URL = ""
    monkeypatch.setattr(merge_common, "CLIENT_OPTIONS", {"backoff_base": 0.001, "backoff_cap": 0.01})


@pytest.fixture
def scanned_corpus(
    db: None,
    emulator_factory: Callable[..., EmulatorServer],
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> ScannedCorpus:
    server = emulator_factory()
    point_at(server, settings, monkeypatch)
    Policy.objects.filter(pk=Policy.current().pk).update(rate_limit_per_minute=0)
    call_command("create_user", "boss", "--role", "admin", "--password", PASSWORD, verbosity=0)
    run = start_scan(full=True, run_async=False, actor="test")
    assert run.state == ScanRun.SUCCEEDED, run.error_message
    env = ScannedCorpus(server=server, boss=get_user_model().objects.get(username="boss"))
    assert len(env.auto_clusters()) >= 6, "the demo corpus should give several auto-mergeable clusters"
    return env
