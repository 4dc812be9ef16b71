"""Three ``qcluster`` processes on Redis and PostgreSQL merge a demo corpus under faults; one is SIGKILLed
mid-merge and restarted; then Podium (the emulator) is checked.

The product runs as in production: PostgreSQL (the test database), Redis as the django-q2 broker and as
the shared Podium budget, three real ``manage.py qcluster`` processes of two workers each, the
``scan --queue`` and ``merge --all-auto --queue`` commands in processes of their own. The emulator
allows 300 requests a minute over a sliding minute, fails 6% of requests (500, 502, 503 and 429) and
drops 3% of its answers after applying a write. While the merges run, one whole cluster (its main
process and every worker) is SIGKILLed while one of its workers holds a merge, and a new one starts.

Then, against the emulator's own records:
* nothing lost: every retired duplicate's phones, emails, tags, attributes, consent, conversations,
  locations and address are on its survivor, which is live;
* nothing merged twice: each duplicate was retired once, by one merge; no survivor was retired; no
  contact was created;
* nothing stuck: every operation is terminal, no cluster is left approved or merging;
* every operation's audit trail is complete and chained, and the audit chain verifies;
* the emulator saw no more than the budget: no request refused for pace, never more than 300 arrivals
  within a minute.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection

from dedup.audit import verify_chain
from dedup.heartbeat import worker_status
from dedup.models import AuditEvent, Cluster, MergeOperation, ScanRun
from dedup.phones import normalize_phone
from dedup.records import normalize_email, tag_key
from podium_client.emulator import EmulatorServer
from tests.processes import ROOT, QCluster, child_env, database_url

pytestmark = [pytest.mark.postgres, pytest.mark.usefixtures("committed_db")]

PEOPLE = 150
BUDGET = 300
CLUSTERS = 3
WORKERS_EACH = 2
RETIREMENT_DOMAIN = "@dedup-retire.invalid"
#: The whole test stays well inside CI's patience.
DEADLINE = 170.0


@pytest.fixture
def emulator(emulator_factory: Callable[..., EmulatorServer]) -> EmulatorServer:
    return emulator_factory(
        people=PEOPLE, corpus_seed=20261, seed=7, rate_limit=BUDGET, rate_window_s=60.0, fail_rate=0.06,
        fault_statuses=(500, 502, 503, 429), fault_retry_after=1, drop_after_commit_rate=0.03,
    )  # fmt: skip


@pytest.fixture
def env(emulator: EmulatorServer, redis_url: str, tmp_path: Path, settings: Any) -> dict[str, str]:
    """The environment of every process of the deployment; the Redis database starts empty."""
    import redis

    redis.Redis.from_url(redis_url).flushdb()  # this project's own test database (TEST_REDIS_URL)
    settings.WORKER_STALE_SECONDS = 5
    return child_env(
        DEDUP_VAR_DIR=str(tmp_path),
        DATABASE_URL=database_url(),
        REDIS_URL=redis_url,
        PODIUM_BASE_URL=emulator.url,
        PODIUM_ACCESS_TOKEN=emulator.token,
        Q_WORKERS=str(WORKERS_EACH),
        Q_STOP_GRACE="2",
        WORKER_HEARTBEAT_SECONDS="1",
        WORKER_STALE_SECONDS="5",
        LOG_LEVEL="INFO",
    )


@pytest.fixture
def clusters(env: dict[str, str], tmp_path: Path) -> Iterator[list[QCluster]]:
    started: list[QCluster] = []
    yield started
    for cluster in started:
        cluster.stop()
    connection.close()


def _wait(condition: Callable[[], Any], what: str, timeout: float, logs: list[Path]) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in logs if p.exists())
            raise AssertionError(f"timed out waiting for {what}\n{tails}")
        time.sleep(0.5)


def _command(env: dict[str, str], *args: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )


def test_three_workers_merge_a_corpus_under_faults_and_a_kill_losing_nothing(
    emulator: EmulatorServer, env: dict[str, str], clusters: list[QCluster], tmp_path: Path
) -> None:
    started = time.monotonic()
    logs = [tmp_path / f"qcluster-{n}.log" for n in range(CLUSTERS + 1)] + [tmp_path / "commands.log"]
    call_command(
        "create_user", "boss", "--role", "admin", "--password", "a-long-test-password-1", verbosity=0
    )
    for n in range(CLUSTERS):
        clusters.append(QCluster(env, logs[n]))
    _wait(lambda: len(worker_status().live) >= CLUSTERS * WORKERS_EACH, "every worker's heartbeat", 60, logs)

    # The scan, on a worker.
    scan = _command(env, "scan", "--full", "--queue", "--timeout", "60", log=logs[-1])
    assert scan.wait(timeout=90) == 0, logs[-1].read_text()
    assert ScanRun.objects.filter(state=ScanRun.SUCCEEDED).count() == 1
    before = {c["uid"]: c for c in emulator.state.contacts()}

    # Every auto-mergeable cluster, on the workers.
    merge = _command(env, "merge", "--all-auto", "--queue", "--as", "boss", "--timeout", "150", log=logs[-1])
    # The batch is audited once every operation of it is created.
    _wait(
        lambda: AuditEvent.objects.filter(event_type="merge.batch").exists(),
        "the merges to be queued",
        30,
        logs,
    )
    total = MergeOperation.objects.count()
    assert total >= 15, f"the corpus should give plenty to merge, got {total}"

    # Mid-run: SIGKILL the cluster one of whose workers holds a merge, then start a new one.
    def victim() -> tuple[QCluster, MergeOperation] | None:
        if MergeOperation.objects.filter(state=MergeOperation.PATCHED).count() < total // 4:
            return None
        for op in MergeOperation.objects.filter(state__in=[MergeOperation.MERGING, MergeOperation.MERGED]):
            actor = (
                AuditEvent.objects.filter(operation_ref=op.pk)
                .order_by("-id")
                .values_list("actor", flat=True)[0]
            )
            holder = worker_status().live
            cluster_of = {f"worker:{w.name}": w.cluster for w in holder}
            for cluster in clusters:
                if cluster.proc.poll() is None and cluster_of.get(actor) == cluster.name:
                    return cluster, op
        return None

    killed, in_flight = _wait(victim, "a merge in flight on a worker", 90, logs)
    killed.kill()
    clusters.append(QCluster(env, logs[CLUSTERS]))

    assert merge.wait(timeout=max(10.0, DEADLINE - (time.monotonic() - started))) in (0, 3), logs[
        -1
    ].read_text()
    _wait(
        lambda: not MergeOperation.objects.exclude(state__in=MergeOperation.TERMINAL_STATES).exists(),
        "every operation to end", max(5.0, DEADLINE - (time.monotonic() - started)), logs,
    )  # fmt: skip
    elapsed = time.monotonic() - started

    operations = list(MergeOperation.objects.select_related("cluster").order_by("pk"))
    _nothing_stuck(operations)
    patched = [op for op in operations if op.state == MergeOperation.PATCHED]
    assert len(patched) >= 0.9 * total, Counter(op.state for op in operations)
    in_flight.refresh_from_db()
    assert in_flight.state == MergeOperation.PATCHED
    # The merge the dead worker held was finished by another.
    actors = set(AuditEvent.objects.filter(operation_ref=in_flight.pk).values_list("actor", flat=True))
    assert len(actors - {"user:boss"}) >= 2, actors
    _nothing_lost(emulator, before, operations)
    _nothing_merged_twice(emulator, operations)
    _audit_complete(patched)
    stats = emulator.stats()
    assert stats["rate_limited"] == 0, stats
    assert stats["peak_window_requests"] <= BUDGET, stats
    assert stats["faults_injected"] > 0, stats  # the faults were there (drops too, most runs)
    # The killed cluster's workers went silent; the others, and the new one, are live.
    status = worker_status()
    assert {w.cluster for w in status.live} == {c.name for c in clusters if c is not killed}
    assert killed.name in {w.cluster for w in status.silent}
    print(
        f"{total} merges ({len(patched)} patched) in {elapsed:.0f} s; emulator: {stats['requests']} requests, "
        f"peak {stats['peak_window_requests']}/min, {stats['faults_injected']} faults, {stats['drops']} drops"
    )


# --- the checks -------------------------------------------------------------------------------------------


def _nothing_stuck(operations: list[MergeOperation]) -> None:
    states = Counter(op.state for op in operations)
    assert set(states) <= set(MergeOperation.TERMINAL_STATES), states
    assert not Cluster.objects.filter(status__in=[Cluster.APPROVED, Cluster.MERGING]).exists()


def _region(emulator: EmulatorServer, contact: dict[str, Any]) -> str:
    locations = contact.get("locations") or []
    return emulator.state.region_of(locations[0]["uid"]) if locations else "AU"


def _channel_key(channel: dict[str, Any], region: str) -> str:
    identifier = str(channel.get("identifier") or "")
    if channel.get("type") == "EMAIL":
        return "email:" + normalize_email(identifier)
    result = normalize_phone(identifier, region)
    return "phone:" + (result.e164 if result.valid and result.e164 else identifier.strip())


def _values(emulator: EmulatorServer, contact: dict[str, Any]) -> dict[str, Any]:
    region = _region(emulator, contact)
    channels = {
        _channel_key(c, region): c
        for c in contact.get("channels") or []
        if not str(c.get("identifier") or "").endswith(RETIREMENT_DOMAIN)
    }
    return {
        "channels": channels,
        "tags": {tag_key(t["label"]) for t in contact.get("tags") or [] if t.get("label")},
        "attributes": {(a.get("uid"), str(a.get("value"))) for a in contact.get("attributes") or []},
        "conversations": {c["uid"] for c in contact.get("conversations") or []},
        "locations": {loc["uid"] for loc in contact.get("locations") or []},
        "address": any((contact.get("address") or {}).values()),
    }


def _nothing_lost(
    emulator: EmulatorServer, before: dict[str, dict[str, Any]], ops: list[MergeOperation]
) -> None:
    survivor_of = {
        d: op.primary_uid for op in ops if op.state == MergeOperation.PATCHED for d in op.duplicate_uids
    }
    retired = emulator.state.deleted()
    assert retired, "the merges retired no duplicate"
    for entry in retired:
        uid = entry["uid"]
        assert uid in survivor_of, f"{uid} was deleted but no finished merge retired it"
        survivor = emulator.state.get(survivor_of[uid])
        assert survivor_of[uid] in {c["uid"] for c in emulator.state.contacts()}, "the survivor is not live"
        had, has = _values(emulator, before[uid]), _values(emulator, survivor)
        where = f"duplicate {uid} -> survivor {survivor_of[uid]}"
        assert set(had["channels"]) <= set(has["channels"]), (
            where,
            set(had["channels"]) - set(has["channels"]),
        )
        for key, channel in had["channels"].items():
            kept = has["channels"][key]
            if channel.get("transactionalOptedOutAt"):
                assert kept.get("transactionalOptedOutAt"), (where, key, "transactional opt-out lost")
            opted_in = set(kept.get("marketingOptedInLocationUids") or [])
            assert opted_in <= set(channel.get("marketingOptedInLocationUids") or []), (
                where,
                key,
                "marketing",
            )
        assert had["tags"] <= has["tags"], (where, had["tags"] - has["tags"])
        assert had["attributes"] <= has["attributes"], (where, had["attributes"] - has["attributes"])
        assert had["conversations"] <= has["conversations"], (
            where,
            had["conversations"] - has["conversations"],
        )
        assert had["locations"] <= has["locations"], (where, had["locations"] - has["locations"])
        assert has["address"] or not had["address"], (where, "address")
    # A merge that did not finish retired nobody.
    unfinished = {d for op in ops if op.state != MergeOperation.PATCHED for d in op.duplicate_uids}
    assert not unfinished & {e["uid"] for e in retired}


def _nothing_merged_twice(emulator: EmulatorServer, ops: list[MergeOperation]) -> None:
    retired = [e["uid"] for e in emulator.state.deleted()]
    assert len(retired) == len(set(retired)), Counter(retired).most_common(3)
    patched = [op for op in ops if op.state == MergeOperation.PATCHED]
    duplicates = [d for op in patched for d in op.duplicate_uids]
    assert sorted(retired) == sorted(duplicates)
    assert not {op.primary_uid for op in patched} & set(retired)
    assert len({op.cluster_id for op in patched}) == len(patched)
    stats = emulator.stats()
    assert stats["by_route"].get("POST /v4/contacts", 0) == 0 and stats["purge_attempts"] == 0


def _audit_complete(patched: list[MergeOperation]) -> None:
    for op in patched:
        events = list(AuditEvent.objects.filter(operation_ref=op.pk).order_by("id"))
        moves = [e.payload for e in events if e.event_type.startswith("merge.") and "to" in e.payload]
        assert moves, f"merge #{op.pk} has no audited transition"
        reached = [m["to"] for m in moves]
        for state in (MergeOperation.MERGING, MergeOperation.MERGED, MergeOperation.PATCHED):
            assert state in reached, (op.pk, reached)
        # The approval commits the plan in pending; each transition then starts where the last ended.
        assert moves[0]["from"] is None and reached[0] == MergeOperation.PENDING, reached
        assert reached[-1] == MergeOperation.PATCHED, reached
        for earlier, later in zip(moves, moves[1:], strict=False):
            assert later["from"] == earlier["to"], (op.pk, reached)
        assert events[-1].event_type == "merge.patched"
        assert sum(1 for e in events if e.event_type == "merge.patched") == 1
    status = verify_chain()
    assert status.ok, status.describe()
