"""Shared set-up for the merge, restore and merge-audit tests: an emulator, the index, hand-made clusters.

``merge_env`` starts an empty emulator (the three demo locations), points the product's Podium
settings at it, turns pacing off and shrinks every backoff, so a test builds exactly the contacts and
clusters it is about. ``HookedClient`` is a real ``PodiumClient`` whose calls a test can intercept,
to make something happen in Podium at an exact moment (a member deleted just before the merge call,
a response lost after the merge applied, a PATCH that does not stick).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.db.models.signals import post_migrate

from dedup import merging
from dedup.clustering import stable_cluster_id
from dedup.detection import member_records
from dedup.indexing import IndexWriter, prepare_contact
from dedup.models import Cluster, ClusterMember, Contact, Location, Policy
from dedup.survivorship import choose_primary
from podium_client import Contact as PodiumContact
from podium_client import PodiumClient
from podium_client.emulator import EmulatorServer, EmulatorState
from tests.fixtures_emulator import empty_state, make_contact

FAST_TIMINGS = merging.Timings(
    conflict_attempts=3,
    conflict_backoff=0.001,
    conflict_backoff_cap=0.005,
    retry_base=0.01,
    retry_cap=0.05,
    busy_retry=0.01,
)
FAST_CLIENT = {"backoff_base": 0.001, "backoff_cap": 0.01, "max_retries": 3}

_clock = itertools.count(1)


def moment(minutes: int = 0) -> datetime:
    """A distinct, increasing timestamp for test contacts."""
    return datetime(2026, 3, 1, 9, 0, tzinfo=UTC) + timedelta(minutes=minutes or next(_clock))


class HookedClient(PodiumClient):
    """A real client whose calls a test may intercept; records every PATCH body and merge call."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.before_merge: Callable[[str, list[str]], None] | None = None
        self.merge_override: Callable[[str, list[str]], PodiumContact] | None = None
        self.patch_override: Callable[[str, dict[str, Any]], PodiumContact] | None = None
        self.patches: list[tuple[str, dict[str, Any]]] = []
        self.merges: list[tuple[str, list[str]]] = []

    def merge(self, primary_uid: str, duplicate_uids: Sequence[str]) -> PodiumContact:
        dups = list(duplicate_uids)
        self.merges.append((primary_uid, dups))
        if self.before_merge is not None:
            self.before_merge(primary_uid, dups)
        if self.merge_override is not None:
            return self.merge_override(primary_uid, dups)
        return super().merge(primary_uid, dups)

    def real_merge(self, primary_uid: str, duplicate_uids: Sequence[str]) -> PodiumContact:
        """The un-intercepted merge call (for overrides that still want it to happen)."""
        return super().merge(primary_uid, duplicate_uids)

    def update_contact(self, uid: str, fields: Mapping[str, Any]) -> PodiumContact:
        body = dict(fields)
        self.patches.append((uid, body))
        if self.patch_override is not None:
            return self.patch_override(uid, body)
        return super().update_contact(uid, body)

    def real_update(self, uid: str, fields: Mapping[str, Any]) -> PodiumContact:
        """The un-intercepted PATCH."""
        return super().update_contact(uid, fields)


@dataclass
class MergeEnv:
    """An emulator, the index built from it, and helpers to make contacts and clusters."""

    server: EmulatorServer
    clients: list[PodiumClient] = field(default_factory=list)

    @property
    def state(self) -> EmulatorState:
        return self.server.state

    def client(self, **kwargs: Any) -> HookedClient:
        """A hooked client for this emulator (tiny backoff); closed at teardown."""
        options: dict[str, Any] = {"timeout": 5, **FAST_CLIENT, **kwargs}
        client = HookedClient(self.server.url, access_token=self.server.token, **options)
        self.clients.append(client)
        return client

    def add(self, uid: str, **kwargs: Any) -> PodiumContact:
        """Create a contact in the emulator (``make_contact`` arguments)."""
        kwargs.setdefault("updated_at", moment())
        return self.state.add_contact(make_contact(uid=uid, **kwargs))

    def live(self, uid: str) -> PodiumContact:
        """The contact as the emulator holds it now."""
        return self.state.get(uid)

    def index(self, uids: Iterable[str] | None = None) -> None:
        """Index the emulator's contacts (all, or the given ones) as a scan would."""
        writer = IndexWriter(Policy.current().default_region)
        writer.ensure_locations(self.state.locations())
        wanted = set(uids) if uids is not None else None
        contacts = [c for c in self.state.contacts() if wanted is None or c.uid in wanted]
        writer.write([prepare_contact(c, writer.region_for(c.location_uid)) for c in contacts])

    def cluster(
        self,
        uids: Sequence[str],
        *,
        auto: bool = True,
        kind: str | None = None,
        natural_keys: Sequence[str] = (),
    ) -> Cluster:
        """A proposed cluster of indexed contacts (auto-mergeable unless ``auto=False``)."""
        contacts = list(Contact.objects.filter(uid__in=uids).select_related("location"))
        locations = {c.location_id for c in contacts}
        cross = len(locations) > 1
        keys = list(natural_keys) or sorted(
            {k for c in contacts for k in c.keys.filter(kind="PHONE").values_list("key", flat=True)}
        )
        # A pair proposed again (say after a restore) keeps its stable id: the row is re-opened.
        cluster, _ = Cluster.objects.update_or_create(
            cluster_id=stable_cluster_id(uids, cross),
            defaults={
                "natural_keys": keys,
                "location": None if cross else contacts[0].location,
                "cross_location": cross,
                "kind": kind or (Cluster.CROSS if cross else (Cluster.AUTO if auto else Cluster.REVIEW)),
                "auto_merge": auto,
                "member_count": len(contacts),
                "status": Cluster.OPEN,
                "decided_by": None,
                "decided_at": None,
                "chosen_primary_uid": "",
            },
        )
        cluster.locations.set(Location.objects.filter(pk__in=locations))
        ClusterMember.objects.filter(cluster=cluster).delete()
        for c in contacts:
            ClusterMember.objects.create(
                cluster=cluster, contact=c, location=c.location, updated_at_when_scored=c.updated_at
            )
        cluster.suggested_primary_uid = choose_primary(list(member_records(cluster))).uid
        cluster.save()
        return cluster

    def maria(self, prefix: str = "ct_m") -> list[str]:
        """Three spellings of one customer with data and opt-outs spread over them; returns their uids.

        ``{prefix}1`` is the richest (the primary by the rule); ``{prefix}2`` alone holds the SMS opt-out, a
        second phone and a tag; ``{prefix}3`` alone holds the marketing opt-out and an attribute.
        """
        self.add(
            f"{prefix}1", name="Maria Garcia", phones=["0412 345 678"], emails=["maria@example.com"],
            tags=["vip"], attributes=[("birthday", "1990-01-01")], address="1 George St, Sydney",
        )
        self.add(
            f"{prefix}2", name="maria garcia", phones=["+61412345678", "02 9876 5432"], tags=["Newsletter"],
            sms_opt_out=True,
        )
        self.add(
            f"{prefix}3", name="Garcia, Maria", phones=["(04) 1234-5678"], attributes=[("loyalty", "gold")],
            marketing_opt_out=True,
        )
        return [f"{prefix}1", f"{prefix}2", f"{prefix}3"]


@pytest.fixture
def merge_env_factory(
    emulator_factory: Callable[..., EmulatorServer], settings: Any, monkeypatch: pytest.MonkeyPatch, db: None
) -> Iterator[Callable[..., MergeEnv]]:
    """``make(state=None, **server_kwargs)``: an emulator the product talks to, no pacing, tiny backoffs.

    Without ``state`` the emulator starts empty (the three demo locations only).
    """
    envs: list[MergeEnv] = []
    monkeypatch.setattr(merging, "CLIENT_OPTIONS", dict(FAST_CLIENT))
    monkeypatch.setattr(merging, "TIMINGS", FAST_TIMINGS)

    def make(state: EmulatorState | None = None, **server_kwargs: Any) -> MergeEnv:
        server = emulator_factory(state if state is not None else empty_state(), **server_kwargs)
        settings.PODIUM_BASE_URL = server.url
        settings.PODIUM_ACCESS_TOKEN = server.token
        settings.PODIUM_OAUTH_URL = ""
        policy = Policy.current()
        policy.rate_limit_per_minute = 0
        policy.save()
        env = MergeEnv(server)
        envs.append(env)
        return env

    yield make
    for env in envs:
        for client in env.clients:
            client.close()


@pytest.fixture
def merge_env(merge_env_factory: Callable[..., MergeEnv]) -> MergeEnv:
    """An empty emulator the product talks to, without pacing and with tiny backoffs."""
    return merge_env_factory()


@pytest.fixture
def pg_flushable(transactional_db: None) -> Iterator[None]:
    """Let pytest-django flush PostgreSQL after a ``transaction=True`` test despite the audit guard.

    Migration 0002 refuses TRUNCATE of audit events, which is how the test database is emptied after a
    transactional test. The guard is switched off just for that flush and back on right after it
    (flush emits ``post_migrate``), so every other test still runs with it.
    """
    yield
    if connection.vendor != "postgresql":
        return

    def guard_again(**kwargs: Any) -> None:
        with connection.cursor() as cursor:
            cursor.execute("ALTER TABLE dedup_auditevent ENABLE TRIGGER dedup_audit_no_truncate")
        post_migrate.disconnect(dispatch_uid=_GUARD_UID)

    post_migrate.connect(guard_again, weak=False, dispatch_uid=_GUARD_UID)
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE dedup_auditevent DISABLE TRIGGER dedup_audit_no_truncate")


_GUARD_UID = "tests.merge_helpers.audit_guard_again"


@pytest.fixture
def rescans(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every rescan the product queues (the real ``queue_rescan_of_keys`` still runs)."""
    from dedup import scanning

    calls: list[dict[str, Any]] = []
    real = scanning.queue_rescan_of_keys

    def spy(natural_keys: Any, reason: str, **kwargs: Any) -> Any:
        calls.append({"keys": list(natural_keys), "reason": reason, **kwargs})
        return real(natural_keys, reason, **kwargs)

    monkeypatch.setattr(scanning, "queue_rescan_of_keys", spy)
    return calls


@pytest.fixture
def manager(db: None) -> User:
    """A signed-in person who approves and rejects clusters."""
    return User.objects.create_user("alice", password="x")


@pytest.fixture
def admin_user(db: None) -> User:
    """A person who restores contacts and resolves merges."""
    return User.objects.create_user("root", password="x", is_staff=True)

