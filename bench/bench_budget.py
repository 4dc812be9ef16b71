"""The shared Podium budget with 1, 2 and 4 workers, and how long a person's approval waits during a full scan.

Production shape: PostgreSQL (its own database, ``BENCH_DB`` next to ``BENCH_PG_URL``'s, default
``dedup_bench_budget``, dropped and created afresh per run), Redis (``BENCH_REDIS_URL``, default
``redis://127.0.0.1:6379/14``, emptied per run) as the django-q2 broker and the shared budget, real
``manage.py qcluster`` processes, and the emulator in this process limiting to 300 requests a minute
over a sliding minute, as Podium does.

1. Budget use. For each worker count, every auto-mergeable cluster of a demo corpus is queued
   (``merge --all-auto --queue --no-wait``) and the workers (each a ``qcluster`` of one worker, as on
   as many machines) merge for ``--seconds``; measured after the first ``--warmup`` seconds: requests
   Podium accepted per minute against its 300, the share refused with ``rate_limit``, merges finished
   per minute. Targets: >= 95% of the budget used, < 1% refused, at every count.
2. Queue latency. Two workers; a full scan of a large corpus runs on one while a person approves a
   cluster every few seconds (``approve_cluster``, as the dashboard does); for each approval, the seconds
   from its commit to its merge's first step committed (``merge.merging``: a worker took it and re-read
   the members, at interactive priority). Then again with a backlog of bulk merges queued ahead of the
   approvals. Target: p95 <= 5 s from approval to merge start.

    .venv/bin/python bench/bench_budget.py [--seconds 150] [--warmup 20] [--people 700] [--scan-people 20000]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BUDGET = 300
WORKER_COUNTS = (1, 2, 4)
TARGET_USE = 0.95
TARGET_REFUSED = 0.01
TARGET_P95 = 5.0
PASSWORD = "bench-password-123456"


def _database_url() -> str:
    base = os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    return urlunsplit(urlsplit(base)._replace(path="/" + os.environ.get("BENCH_DB", "dedup_bench_budget")))


def _fresh(url: str, redis_url: str) -> None:
    import psycopg
    import redis

    name = urlsplit(url).path.lstrip("/")
    admin = urlunsplit(urlsplit(url)._replace(path="/postgres"))
    from django.db import connections

    connections.close_all()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    redis.Redis.from_url(redis_url).flushdb()


class Deployment:
    """The product's processes against one emulator: commands, and qclusters started and stopped."""

    def __init__(self, url: str, redis_url: str, podium_url: str, token: str, log: Path) -> None:
        self.log = log
        base = {
            k: v
            for k, v in os.environ.items()
            if k not in {"DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE"}
        }
        self.env = {
            **base, "DEBUG": "1", "PYTHONUNBUFFERED": "1", "DATABASE_URL": url, "REDIS_URL": redis_url,
            "PODIUM_BASE_URL": podium_url, "PODIUM_ACCESS_TOKEN": token, "Q_WORKERS": "1", "LOG_LEVEL": "WARNING",
            "WORKER_HEARTBEAT_SECONDS": "2",
        }  # fmt: skip
        self.clusters: list[subprocess.Popen[bytes]] = []

    def run(self, *args: str, **env: str) -> None:
        with self.log.open("ab") as out:
            subprocess.run(
                [sys.executable, "manage.py", *args], cwd=ROOT, env={**self.env, **env}, stdout=out,
                stderr=subprocess.STDOUT, check=True,
            )  # fmt: skip

    def start_workers(self, processes: int, workers_each: int = 1) -> None:
        for _ in range(processes):
            with self.log.open("ab") as out:
                self.clusters.append(
                    subprocess.Popen(
                        [sys.executable, "manage.py", "qcluster"],
                        cwd=ROOT,
                        env={**self.env, "Q_WORKERS": str(workers_each)},
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )  # fmt: skip
                )
        from dedup.heartbeat import worker_status

        deadline = time.monotonic() + 90
        while len(worker_status().live) < processes * workers_each:
            if time.monotonic() > deadline:
                raise SystemExit(f"the workers did not start; see {self.log}")
            time.sleep(0.5)

    def stop_workers(self) -> None:
        for proc in self.clusters:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.clusters:
            proc.wait(timeout=60)
        self.clusters = []


def _setup_django(url: str, redis_url: str) -> None:
    os.environ.update(DEBUG="1", DATABASE_URL=url, REDIS_URL=redis_url, LOG_LEVEL="WARNING")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dedup.settings")
    import django

    django.setup()


def _emulator(people: int, seed: int) -> Any:
    from podium_client.corpus import generate_corpus
    from podium_client.emulator import EmulatorServer, EmulatorState

    lines, _truth = generate_corpus(people, seed)
    server = EmulatorServer(EmulatorState.from_lines(lines, seed=seed), rate_limit=BUDGET, rate_window_s=60.0)
    return server.start()


def _prepare(args: argparse.Namespace, people: int, seed: int, log: Path) -> tuple[Any, Deployment]:
    """A fresh database and Redis, the emulator with a corpus, migrated, a user, one full scan done."""
    url, redis_url = _database_url(), args.redis_url
    _fresh(url, redis_url)
    server = _emulator(people, seed)
    deployment = Deployment(url, redis_url, server.url, server.token, log)
    deployment.run("migrate", "-v", "0")
    deployment.run("create_user", "boss", "--role", "admin", "--password", PASSWORD)
    # The first scan is setup, not measured: no budget meanwhile, on either side.
    from django.db import connections

    from dedup.models import Policy

    server.rate_limit = None
    Policy.objects.filter(pk=Policy.current().pk).update(rate_limit_per_minute=0)
    deployment.run("scan", "--full")
    Policy.objects.filter(pk=Policy.current().pk).update(rate_limit_per_minute=BUDGET)
    server.rate_limit = BUDGET
    server.reset_stats()
    connections.close_all()
    return server, deployment


# --- 1. budget use ---------------------------------------------------------------------------------------


def budget_use(args: argparse.Namespace, workers: int, log: Path) -> dict[str, float]:
    from dedup.models import MergeOperation

    server, deployment = _prepare(args, args.people, 20260 + workers, log)
    try:
        deployment.run("merge", "--all-auto", "--queue", "--no-wait", "--as", "boss")
        queued = MergeOperation.objects.count()
        deployment.start_workers(workers)
        time.sleep(args.warmup)
        server.reset_stats()
        done_before = MergeOperation.objects.filter(state__in=MergeOperation.TERMINAL_STATES).count()
        start = time.monotonic()
        time.sleep(args.seconds)
        stats = server.stats()
        minutes = (time.monotonic() - start) / 60
        done = MergeOperation.objects.filter(state__in=MergeOperation.TERMINAL_STATES).count() - done_before
        left = MergeOperation.objects.exclude(state__in=MergeOperation.TERMINAL_STATES).count()
    finally:
        deployment.stop_workers()
        server.stop()
    refused = stats["by_status"].get("429", 0)
    accepted = stats["requests"] - refused
    return {
        "workers": workers,
        "queued": queued,
        "left": left,
        "minutes": minutes,
        "accepted_per_min": accepted / minutes,
        "use": accepted / minutes / BUDGET,
        "refused_share": refused / max(stats["requests"], 1),
        "peak": stats["peak_window_requests"],
        "merges_per_min": done / minutes,
    }


# --- 2. queue latency during a full scan --------------------------------------------------------------------


def _p95(values: list[float]) -> float:
    return (
        statistics.quantiles(values, n=20)[-1]
        if len(values) >= 2
        else (values[0] if values else float("nan"))
    )


def latency(args: argparse.Namespace, backlog: bool, log: Path) -> dict[str, Any]:
    from django.contrib.auth import get_user_model

    from dedup.merge import ClusterBusyError, MergeRefused, approve_cluster, approve_many
    from dedup.models import AuditEvent, Cluster, MergeOperation, ScanRun

    server, deployment = _prepare(args, args.scan_people, 777, log)
    person = get_user_model().objects.get(username="boss")
    results: list[float] = []
    try:
        deployment.start_workers(1, workers_each=2)
        clusters = list(Cluster.objects.filter(status=Cluster.OPEN, auto_merge=True).order_by("?")[:400])
        if backlog:
            # Half the clusters as one bulk batch queued ahead of every approval (as `merge --all-auto
            # --queue` or a bulk approval would); the person's approvals still go first (dedup.workqueue).
            half = len(clusters) // 2
            approve_many(clusters[:half], user=None, actor="bench")
            clusters = clusters[half:]
        deployment.run("scan", "--full", "--queue", "--no-wait")
        while not ScanRun.objects.filter(state=ScanRun.RUNNING).exists():
            time.sleep(0.2)
        approved: list[tuple[int, float]] = []
        for cluster in clusters:
            if not ScanRun.objects.filter(state=ScanRun.RUNNING).exists() or len(approved) >= args.approvals:
                break
            try:
                op = approve_cluster(cluster, user=person, run_async=True)
            except (ClusterBusyError, MergeRefused):
                continue
            approved.append((op.pk, time.time()))
            time.sleep(args.every)
        scan_still_running = ScanRun.objects.filter(state=ScanRun.RUNNING).exists()
        deadline = time.monotonic() + 120
        pks = [pk for pk, _ in approved]
        while MergeOperation.objects.filter(pk__in=pks, state=MergeOperation.PENDING).exists():
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        for pk, at in approved:
            merging = (
                AuditEvent.objects.filter(operation_ref=pk, event_type="merge.merging").order_by("id").first()
            )
            if merging is not None:
                results.append(merging.created_at.timestamp() - at)
    finally:
        deployment.stop_workers()
        server.stop()
    start = results
    return {
        "backlog": backlog,
        "approvals": len(approved),
        "started": len(results),
        "scan_running_throughout": scan_still_running,
        "start_p50": statistics.median(start) if start else float("nan"),
        "start_p95": _p95(start),
        "start_max": max(start) if start else float("nan"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=150.0, help="measured seconds per worker count")
    parser.add_argument("--warmup", type=float, default=20.0)
    parser.add_argument("--people", type=int, default=700, help="corpus for the budget runs")
    parser.add_argument("--scan-people", type=int, default=20000, help="corpus for the latency runs")
    parser.add_argument("--approvals", type=int, default=20)
    parser.add_argument("--every", type=float, default=3.0, help="seconds between two approvals")
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14"))
    parser.add_argument("--skip-budget", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--log", default=str(ROOT / "var" / "bench_budget.log"))
    args = parser.parse_args()
    log = Path(args.log)
    log.parent.mkdir(parents=True, exist_ok=True)
    _setup_django(_database_url(), args.redis_url)
    _fresh(_database_url(), args.redis_url)
    ok = True
    if not args.skip_budget:
        print(
            f"budget use at {BUDGET}/min, {args.seconds:.0f} s measured per count after {args.warmup:.0f} s warm-up"
        )
        for workers in WORKER_COUNTS:
            r = budget_use(args, workers, log)
            good = r["use"] >= TARGET_USE and r["refused_share"] < TARGET_REFUSED
            ok &= good
            print(
                f"  {workers} worker(s): {r['accepted_per_min']:.0f} accepted/min = {r['use']:.1%} of the budget, "
                f"{r['refused_share']:.2%} refused (rate_limit), peak {r['peak']} in a minute, "
                f"{r['merges_per_min']:.1f} merges/min ({r['queued']} queued, {r['left']} left) "
                f"{'OK' if good else 'BELOW TARGET'}",
                flush=True,
            )
    if not args.skip_latency:
        print(
            f"queue latency during a full scan of {args.scan_people} people, an approval every {args.every:g} s"
        )
        for backlog in (False, True):
            r = latency(args, backlog, log)
            good = r["start_p95"] <= TARGET_P95
            ok &= good
            what = "with bulk merges queued ahead" if backlog else "no other merges"
            print(
                f"  {what}: {r['approvals']} approvals ({r['started']} started); approval -> merge start "
                f"p50 {r['start_p50']:.2f} s, "
                f"p95 {r['start_p95']:.2f} s, max {r['start_max']:.2f} s; scan running throughout: "
                f"{r['scan_running_throughout']} {'OK' if good else 'ABOVE TARGET'}",
                flush=True,
            )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
