"""Merge throughput against the emulator with 1, 2 and 4 workers, and rate-limit budget use.

Runs against its own PostgreSQL database (``dedup_bench_merge`` next to ``BENCH_PG_URL``'s, default
``postgres://postgres@127.0.0.1:5432/postgres``), dropped and created afresh each run (audit events are
append-only, so a clean slate is a new database). The emulator runs in its own process, as Podium would,
loaded with synthetic customers (each two or three contacts with one phone in different spellings and
opt-outs on one of them), one location per measured run so each run merges clusters nobody touched.
Workers are processes running ``run_operation`` on operations queued for them, as django-q2 workers do.

    .venv/bin/python bench/bench_merge.py [--clusters 400] [--budget 1200] [--budget-seconds 20]

Prints clusters merged per second for 1, 2 and 4 workers with no latency (target >= 50/s), then, with
the emulator limiting to the budget and the clients pacing at it (split between workers), the share of
the budget used (target >= 90%) and the share of calls answered 429 (target < 1%).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BENCH_DB = "dedup_bench_merge"
WORKER_COUNTS = (1, 2, 4)
TARGET_RATE = 50.0
TARGET_BUDGET_USE = 0.90
TARGET_429_SHARE = 0.01
FIRST = ["Maria", "Wei", "Jack", "Olivia", "Noah", "Aisha", "Liam", "Priya", "Mateo", "Chloe", "Tane", "Sofia"]
LAST = ["Garcia", "Chen", "Smith", "Nguyen", "Williams", "Patel", "Brown", "Kaur", "Jones", "Taylor", "Ngata"]


def _database_url() -> str:
    base = os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    return urlunsplit(urlsplit(base)._replace(path=f"/{BENCH_DB}"))


def _fresh_database(url: str) -> None:
    import psycopg

    admin = urlunsplit(urlsplit(url)._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{BENCH_DB}"')


def _setup_django(url: str) -> None:
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DEBUG", "1")
    os.environ["DJANGO_SETTINGS_MODULE"] = "dedup.settings_test"
    os.environ.setdefault("LOG_LEVEL", "ERROR")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


# --- the corpus ---------------------------------------------------------------------------------------


def _write_corpus(path: Path, runs: list[tuple[str, int]], seed: int) -> None:
    """One location per run, each with ``n`` customers of 2-3 contacts sharing a phone."""
    from podium_client.types import Channel, Contact, Location, contact_export_line, location_export_line

    rnd = random.Random(seed)
    base = datetime(2026, 1, 1, tzinfo=UTC)
    serial = 0
    with path.open("w") as out:
        for location_uid, _n in runs:
            out.write(location_export_line(Location(location_uid, location_uid, "AU")) + "\n")
        for run_index, (location_uid, n) in enumerate(runs):
            for person in range(n):
                digits = f"4{run_index:02d}{person:06d}"
                spellings = [f"0{digits}", f"+61{digits}", f"0{digits[:3]} {digits[3:6]} {digits[6:]}"]
                name = f"{FIRST[person % len(FIRST)]} {LAST[(person // len(FIRST)) % len(LAST)]}"
                for i in range(rnd.choice((2, 2, 3))):
                    serial += 1
                    moment = base + timedelta(seconds=serial)
                    contact = Contact(
                        uid=f"ct_{serial:07d}_bench", location_uid=location_uid, name=name,
                        channels=(Channel.phone(spellings[i]),), tags=(f"t{i}",) if i else ("vip",),
                        attributes=(), address=None,
                        marketing_opt_out=i == 1 and rnd.random() < 0.5, sms_opt_out=i == 2,
                        email_opt_out=False, created_at=moment, updated_at=moment, deleted_at=None,
                        merged_into_uid=None, conversation_count=1,
                    )  # fmt: skip
                    out.write(contact_export_line(contact) + "\n")


def _start_emulator(corpus: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "podium_client.emulator", "--load", str(corpus), "--port", "0", "--seed", "3"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if "listening on" not in line:
        proc.kill()
        raise SystemExit(f"the emulator did not start: {line!r}")
    return proc, line.rsplit(" ", 1)[-1]


def _index_and_detect(corpus: Path) -> None:
    from dedup.detection import detect
    from dedup.indexing import IndexWriter, prepare_contact
    from dedup.models import Policy
    from podium_client.types import Contact, Location, parse_export_line

    writer = IndexWriter(Policy.current().default_region)
    locations: list[Location] = []
    contacts: list[Contact] = []
    with corpus.open() as lines:
        for line in lines:
            item = parse_export_line(line)
            (locations if isinstance(item, Location) else contacts).append(item)  # type: ignore[arg-type]
    writer.ensure_locations(locations)
    writer.write([prepare_contact(c, writer.region_for(c.location_uid)) for c in contacts])
    detect()


def _plan_run(location_uid: str) -> list[int]:
    """Approve every open cluster of the location (the plan committed, nothing called); their op ids."""
    from dedup import merging
    from dedup.models import Cluster

    clusters = list(Cluster.objects.filter(location__uid=location_uid, status=Cluster.OPEN, auto_merge=True))
    ids = []
    for cluster in clusters:
        ids.append(merging.approve_cluster(cluster, user=None, run_async=True, actor="bench").pk)
    return ids


# --- workers ------------------------------------------------------------------------------------------------


def _worker(queue: Any, name: str, requests_per_minute: int | None, results: Any) -> None:
    from dedup import merging
    from dedup.podium import get_client

    done = 0
    cpu = time.process_time()
    with get_client(requests_per_minute=requests_per_minute) as client:
        while True:
            op_id = queue.get()
            if op_id is None:
                break
            op = merging.run_operation(op_id, worker=name, client=client)
            done += op.state == "patched"
    results.put((done, time.process_time() - cpu))


def _run_workers(op_ids: list[int], workers: int, requests_per_minute: int | None = None) -> tuple[float, int, float]:
    """Merge the operations with ``workers`` processes; (elapsed seconds, merged, worker CPU seconds)."""
    from django.db import connections

    connections.close_all()  # children open their own
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    results = ctx.Queue()
    for op_id in op_ids:
        queue.put(op_id)
    for _ in range(workers):
        queue.put(None)
    procs = [ctx.Process(target=_worker, args=(queue, f"bench-{i}", requests_per_minute, results))
             for i in range(workers)]
    started = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    elapsed = time.perf_counter() - started
    outcomes = [results.get() for _ in procs]
    return elapsed, sum(done for done, _cpu in outcomes), sum(cpu for _done, cpu in outcomes)


def _emulator(url: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    if body is None:
        resp = requests.get(url + path, timeout=10)
    else:
        resp = requests.post(url + path, data=json.dumps(body), timeout=10)
    resp.raise_for_status()
    return resp.json() if resp.content else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=400, help="clusters merged per worker-count run")
    parser.add_argument("--budget", type=int, default=1200, help="rate-limit budget, requests per minute")
    parser.add_argument("--budget-seconds", type=float, default=20.0, help="length of each budget run")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()

    url = _database_url()
    _fresh_database(url)
    _setup_django(url)
    from unittest import mock

    from django.conf import settings

    from dedup import merging
    from dedup.models import MergeOperation, Policy

    # Requests a budget run can make at most (about 6 calls per 2-3 member merge), with room to spare.
    budget_clusters = int(args.budget / 60 * args.budget_seconds / 4) + 20
    runs = [(f"loc_w{w}", args.clusters) for w in WORKER_COUNTS]
    runs += [(f"loc_budget{w}", budget_clusters) for w in (1, 2)]
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "bench.ndjson"
        _write_corpus(corpus, runs, args.seed)
        emulator, podium_url = _start_emulator(corpus)
        try:
            settings.PODIUM_BASE_URL = podium_url
            settings.PODIUM_ACCESS_TOKEN = "dev-token"
            settings.PODIUM_OAUTH_URL = ""
            policy = Policy.current()
            policy.rate_limit_per_minute = 0
            policy.save()
            started = time.perf_counter()
            _index_and_detect(corpus)
            print(f"indexed and detected {sum(n for _, n in runs):,} customers in "
                  f"{time.perf_counter() - started:.1f}s (not timed below)")
            with mock.patch.object(merging, "_enqueue", lambda op_id: None):
                plans = {loc: _plan_run(loc) for loc, _n in runs}

            print(f"\nclusters merged per second, emulator without latency (PostgreSQL, worker processes; "
                  f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} before):")
            for workers in WORKER_COUNTS:
                op_ids = plans[f"loc_w{workers}"]
                elapsed, patched, cpu = _run_workers(op_ids, workers)
                rate = patched / elapsed
                verdict = "ok" if rate >= TARGET_RATE else f"BELOW target {TARGET_RATE:.0f}/s"
                print(f"  {workers} worker(s): {patched}/{len(op_ids)} merged in {elapsed:5.2f}s = "
                      f"{rate:6.1f} clusters/s  [{verdict}]  (worker CPU {1000 * cpu / max(patched, 1):.1f} ms/merge)")

            print(f"\nrate-limit budget {args.budget}/min (emulator limit = client pacing, split between workers):")
            _emulator(podium_url, "/_emulator/config", {"rate_limit": args.budget, "rate_window_s": 10})
            for workers in (1, 2):
                op_ids = plans[f"loc_budget{workers}"]
                _emulator(podium_url, "/_emulator/stats/reset", {})
                # Only as many merges as fill the run's length; the rest stay pending and are not counted.
                elapsed, patched = _run_workers_for(op_ids, workers, args.budget, args.budget_seconds)
                stats = _emulator(podium_url, "/_emulator/stats")
                sent = stats["requests"]
                limited = stats["by_status"].get("429", 0)
                capacity = args.budget / 60 * elapsed
                use, share_429 = sent / capacity, limited / max(sent, 1)
                ok = use >= TARGET_BUDGET_USE and share_429 < TARGET_429_SHARE
                print(f"  {workers} worker(s): {sent} calls in {elapsed:5.2f}s ({patched} merges) = "
                      f"{use:6.1%} of the budget, {limited} answered 429 ({share_429:.2%})  "
                      f"[{'ok' if ok else 'BELOW target'}]")
            left = MergeOperation.objects.exclude(state__in=MergeOperation.TERMINAL_STATES).count()
            print(f"\n(operations left unfinished on purpose when the budget runs ended: {left})")
        finally:
            emulator.terminate()
            emulator.wait(10)


def _run_workers_for(op_ids: list[int], workers: int, budget: int, seconds: float) -> tuple[float, int]:
    """Run paced workers over the queue until ``seconds`` have passed; returns (elapsed, merged)."""
    from django.db import connections

    connections.close_all()
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    results = ctx.Queue()
    for op_id in op_ids:
        queue.put(op_id)
    for _ in range(workers):
        queue.put(None)
    share = max(1, budget // workers)
    deadline = time.time() + seconds
    procs = [ctx.Process(target=_timed_worker, args=(queue, f"budget-{i}", share, deadline, results))
             for i in range(workers)]
    started = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    elapsed = time.perf_counter() - started
    return elapsed, sum(results.get() for _ in procs)


def _timed_worker(queue: Any, name: str, requests_per_minute: int, deadline: float, results: Any) -> None:
    from dedup import merging
    from dedup.podium import get_client

    done = 0
    with get_client(requests_per_minute=requests_per_minute) as client:
        while time.time() < deadline:
            op_id = queue.get()
            if op_id is None:
                break
            op = merging.run_operation(op_id, worker=name, client=client)
            done += op.state == "patched"
    results.put(done)


if __name__ == "__main__":
    main()
