"""What a merge costs in requests, for each strategy, and how many merges fit Podium's request budget.

For each strategy — *consolidate* (Podium's published API only) and *native* (the ``merge,restore,
soft-delete`` capabilities) — a fresh emulator runs in its own process, as Podium would, loaded with
synthetic customers whose contacts are one person typed several ways (one number in different
spellings, a conversation each, a tag on each duplicate to carry; one customer in four with a duplicate
not opted in for marketing). The product
scans it over HTTP, detects the clusters and merges them inline, as ``manage.py merge`` does:

1. *requests per merged duplicate*: every pair, then every 4-member cluster, without a rate limit
   (the emulator's request counter, divided by the duplicates retired);
2. *the budget*: the emulator limits to ``--budget`` requests per minute (Podium's 300) over a sliding
   minute, the product's client paces at the same budget, and merges run for ``--budget-seconds``
   (clusters of 2 to 4 as the demo corpus has them): merges per minute, the share of the budget used
   (target >= 95%) and the share of requests answered 429 (target < 1%).

    .venv/bin/python bench/bench_merge.py [--pairs 40] [--quads 20] [--budget 300] [--budget-seconds 120]

It also merges every auto-mergeable cluster of the demo corpus (``--demo-people``, the product's own
demo data: clusters as detection finds them) and prints its average requests per merged duplicate, the
figure issue 10 measured before the rework (2,029 requests for 328 merges: 6.2 per merged pair).

The database is a fresh SQLite file in a temporary directory unless ``--database-url`` names another
(the figures are Podium requests, not database speed).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

from podium_client.corpus import write_corpus

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STRATEGIES = {"consolidate": "", "native": "merge,restore,soft-delete"}
TARGET_NATIVE_PER_DUPLICATE = 4.0
TARGET_BUDGET_USE = 0.95
TARGET_429_SHARE = 0.01
ORGANIZATION = "0f4e6c2a-9d1b-4c57-8e3f-5a2b7c9d1e00"
LOCATIONS = {"pairs": "b0000000-0000-4000-8000-000000000002", "quads": "b0000000-0000-4000-8000-000000000004",
             "budget": "b0000000-0000-4000-8000-0000000000bb"}  # fmt: skip
FIRST = [
    "Maria",
    "Wei",
    "Jack",
    "Olivia",
    "Noah",
    "Aisha",
    "Liam",
    "Priya",
    "Mateo",
    "Chloe",
    "Tane",
    "Sofia",
]
LAST = ["Garcia", "Chen", "Smith", "Nguyen", "Williams", "Patel", "Brown", "Kaur", "Jones", "Taylor", "Ngata"]


# --- the corpus ---------------------------------------------------------------------------------------------


def _contact(
    uid: str, location: str, name: str, phone: str, tags: list[str], opted_in: bool, serial: int
) -> str:
    stamp = f"2026-01-01T{serial // 3600 % 24:02d}:{serial // 60 % 60:02d}:{serial % 60:02d}Z"
    channel = {"type": "PHONE", "identifier": phone, "label": None,
               "marketingOptedInLocationUids": [location] if opted_in else [], "transactionalOptedOutAt": None,
               "createdAt": stamp, "updatedAt": stamp}  # fmt: skip
    contact = {
        "uid": uid, "name": name, "locations": [{"uid": location}], "organization": {"uid": ORGANIZATION},
        "phoneNumbers": [phone], "emails": [], "channels": [channel],
        "tags": [{"uid": f"7a900000-0000-4000-8000-{abs(hash(t)) % 10**12:012d}", "label": t, "description": None}
                 for t in tags],
        "attributes": [], "address": None, "conversations": [{"uid": f"c{uid[1:]}"}],
        "createdAt": stamp, "updatedAt": stamp,
    }  # fmt: skip
    return json.dumps(contact)


def _customers(kind: str, count: int, rnd: random.Random, serial: Iterator[int]) -> Iterator[str]:
    """``count`` customers at the kind's location; each of 2 (pairs), 4 (quads) or 2-4 (budget) contacts."""
    location = LOCATIONS[kind]
    for person in range(count):
        size = {"pairs": 2, "quads": 4}.get(kind) or rnd.choice((2, 2, 2, 3, 4))
        digits = f"4{list(LOCATIONS).index(kind)}{person:07d}"
        spellings = [
            f"0{digits}",
            f"+61{digits}",
            f"0{digits[:3]} {digits[3:6]} {digits[6:]}",
            f"(0{digits[0]}) {digits[1:5]}-{digits[5:]}",
        ]
        name = f"{FIRST[person % len(FIRST)]} {LAST[(person // len(FIRST)) % len(LAST)]}"
        for i in range(size):
            n = next(serial)
            tags = ["vip", "newsletter"] if i == 0 else [f"visit-{i}"]
            # One customer in four has a duplicate not opted in for marketing: the survivor's number is
            # then opted out (campaigns/opt_out).
            opted_in = not (i == 1 and person % 4 == 0)
            yield _contact(
                f"a{n:07d}-0000-4000-8000-000000000000", location, name, spellings[i], tags, opted_in, n
            )


def _write_corpus(path: Path, pairs: int, quads: int, budget: int, seed: int) -> None:
    rnd = random.Random(seed)
    serial = iter(range(1, 10**7))
    with path.open("w") as out:
        for kind, uid in LOCATIONS.items():
            out.write(json.dumps({"object": "location", "uid": uid, "name": f"Bench {kind}", "displayName": kind,
                                  "organizationUid": ORGANIZATION, "archived": False, "addressDetails": {"country": "AU"},
                                  "createdAt": "2024-01-01T00:00:00Z", "updatedAt": "2024-01-01T00:00:00Z"}) + "\n")  # fmt: skip
        for kind, count in (("pairs", pairs), ("quads", quads), ("budget", budget)):
            for line in _customers(kind, count, rnd, serial):
                out.write(line + "\n")


# --- the emulator and the product -----------------------------------------------------------------------------


def _start_emulator(corpus: Path, capabilities: str) -> tuple[subprocess.Popen[str], str]:
    args = [
        sys.executable,
        "-m",
        "podium_client.emulator",
        "--load",
        str(corpus),
        "--port",
        "0",
        "--seed",
        "3",
    ]
    if capabilities:
        args += ["--capabilities", capabilities]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if "listening on" not in line:
        proc.kill()
        raise SystemExit(f"the emulator did not start: {line!r}")
    return proc, line.rsplit(" ", 1)[-1]


def _control(url: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    resp = (requests.get(url + path, timeout=10) if body is None
            else requests.post(url + path, data=json.dumps(body), timeout=10))  # fmt: skip
    resp.raise_for_status()
    data: dict[str, Any] = resp.json() if resp.content else {}
    return data


def _setup_django(database_url: str) -> None:
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("DEBUG", "1")
    os.environ["DJANGO_SETTINGS_MODULE"] = "dedup.settings_test"
    os.environ.setdefault("LOG_LEVEL", "ERROR")
    import django

    django.setup()


def _fresh_product(podium_url: str, capabilities: str) -> None:
    """Point the product at this emulator and empty its database (migrated, flushed)."""
    from django.conf import settings
    from django.core.management import call_command

    from dedup.models import Policy

    call_command("migrate", verbosity=0)
    settings.PODIUM_BASE_URL = podium_url
    settings.PODIUM_ACCESS_TOKEN = "dev-token"
    settings.PODIUM_REFRESH_TOKEN = ""
    settings.PODIUM_CAPABILITIES = [c for c in capabilities.split(",") if c]
    policy = Policy.current()
    policy.rate_limit_per_minute = 0
    policy.save()


def _scan() -> None:
    from dedup.models import ScanRun
    from dedup.scanning import start_scan

    run = start_scan(full=True, run_async=False, actor="worker:bench")
    if run.state != ScanRun.SUCCEEDED:
        raise SystemExit(f"the scan failed: {run.error_message}")


def _clusters(kind: str) -> list[Any]:
    from dedup.models import Cluster

    return list(
        Cluster.objects.filter(locations__uid=LOCATIONS[kind], status=Cluster.OPEN, auto_merge=True).order_by(
            "pk"
        )
    )


def _merge(cluster: Any, client: Any) -> Any:
    from dedup.merge import approve_cluster

    return approve_cluster(cluster, user=None, run_async=False, actor="bench", client=client)


def _requests_per_duplicate(url: str, kind: str) -> tuple[int, int, int, float]:
    """Merge every cluster of the kind; (clusters merged, duplicates retired, requests, per duplicate)."""
    from dedup.merge.common import new_client

    clusters = _clusters(kind)
    before = _control(url, "/_emulator/stats")["requests"]
    merged = duplicates = 0
    with new_client() as client:
        for cluster in clusters:
            op = _merge(cluster, client)
            if op.state == "patched":
                merged += 1
                duplicates += len(op.duplicate_uids)
    sent = _control(url, "/_emulator/stats")["requests"] - before
    return merged, duplicates, sent, sent / max(duplicates, 1)


def _budget_run(url: str, budget: int, seconds: float) -> dict[str, float]:
    """Merge for ``seconds`` with the emulator limiting and the client pacing at ``budget`` per minute."""
    from dedup.podium import get_client

    _control(
        url, "/_emulator/config", {"rate_limit": budget, "rate_window_s": 60.0, "fault_retry_after": 1.0}
    )
    _control(url, "/_emulator/stats/reset", {})
    clusters = _clusters("budget")
    merged = duplicates = 0
    started = time.perf_counter()
    with get_client(requests_per_minute=budget) as client:
        for cluster in clusters:
            if time.perf_counter() - started >= seconds:
                break
            op = _merge(cluster, client)
            if op.state == "patched":
                merged += 1
                duplicates += len(op.duplicate_uids)
    elapsed = time.perf_counter() - started
    stats = _control(url, "/_emulator/stats")
    sent = stats["requests"]
    limited = stats["by_status"].get("429", 0)
    if merged == len(clusters):
        raise SystemExit("the budget run ran out of clusters: raise the corpus size")
    return {
        "elapsed": elapsed, "merges": merged, "duplicates": duplicates, "sent": sent, "limited": limited,
        "per_minute": merged / elapsed * 60, "use": sent / (budget / 60 * elapsed), "share_429": limited / max(sent, 1),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=40, help="customers with two contacts")
    parser.add_argument("--quads", type=int, default=20, help="customers with four contacts")
    parser.add_argument("--budget", type=int, default=300, help="Podium's request budget per minute")
    parser.add_argument("--budget-seconds", type=float, default=120.0, help="length of each budget run")
    parser.add_argument("--database-url", default="", help="default: a fresh SQLite file per strategy")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--strategy", choices=list(STRATEGIES), help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--demo", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--demo-people", type=int, default=300, help="people in the demo corpus run")
    args = parser.parse_args()
    if args.strategy:
        # A child run: one strategy, one fresh product; the figures as one JSON line.
        print(json.dumps(_one_strategy(args)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "bench.ndjson"
        # Enough 2-4 member customers that the budget run never runs dry (at least ~6 requests per merge).
        budget_customers = int(args.budget / 60 * args.budget_seconds / 6) + 40
        _write_corpus(corpus, args.pairs, args.quads, budget_customers, args.seed)
        demo = Path(tmp) / "demo.ndjson"
        write_corpus(demo, args.demo_people, 20260)
        results: dict[str, dict[str, Any]] = {}
        for strategy in STRATEGIES:
            results[strategy] = {}
            for name, path, extra in (("synthetic", corpus, []), ("demo", demo, ["--demo"])):
                database = args.database_url or f"sqlite:///{tmp}/bench-{strategy}-{name}.sqlite3"
                child = subprocess.run(
                    [sys.executable, __file__, *sys.argv[1:], "--strategy", strategy, "--corpus", str(path),
                     "--database-url", database, *extra],
                    cwd=ROOT, capture_output=True, text=True,
                    env={**os.environ, "DEDUP_VAR_DIR": f"{tmp}/var-{strategy}-{name}"},
                )  # fmt: skip
                if child.returncode != 0:
                    raise SystemExit(f"{strategy} run failed:\n{child.stderr[-3000:]}")
                results[strategy].update(json.loads(child.stdout.strip().splitlines()[-1]))
        _report(results, args)


def _one_strategy(args: argparse.Namespace) -> dict[str, Any]:
    capabilities = STRATEGIES[args.strategy]
    _setup_django(args.database_url)
    emulator, url = _start_emulator(Path(args.corpus), capabilities)
    try:
        _fresh_product(url, capabilities)
        _scan()
        if args.demo:
            return {"demo": _demo_corpus(url)}
        return {
            "pairs": _requests_per_duplicate(url, "pairs"),
            "quads": _requests_per_duplicate(url, "quads"),
            "budget": _budget_run(url, args.budget, args.budget_seconds),
        }
    finally:
        emulator.terminate()
        emulator.wait(10)


def _demo_corpus(url: str) -> tuple[int, int, int, float]:
    """Every auto-mergeable cluster of the demo corpus, as ``manage.py merge --all-auto`` merges them."""
    from dedup.merge import merge_all_auto
    from dedup.merge.common import new_client

    before = _control(url, "/_emulator/stats")["requests"]
    with new_client() as client:
        results = merge_all_auto(actor="bench", client=client)
    done = [op for op in results if getattr(op, "state", "") == "patched"]
    duplicates = sum(len(op.duplicate_uids) for op in done)  # type: ignore[union-attr]
    sent = _control(url, "/_emulator/stats")["requests"] - before
    return len(done), duplicates, sent, sent / max(duplicates, 1)


def _report(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    print("requests per merged duplicate (no rate limit):")
    for strategy, r in results.items():
        for kind, label in (("pairs", "pairs"), ("quads", "4-member clusters"), ("demo", "demo corpus")):
            merged, duplicates, sent, per = r[kind]
            verdict = ""
            if strategy == "native":
                verdict = (
                    "  [ok]"
                    if per <= TARGET_NATIVE_PER_DUPLICATE
                    else f"  [above target {TARGET_NATIVE_PER_DUPLICATE:g}]"
                )
            print(f"  {strategy:<12} {label:<18} {merged:4d} merged, {duplicates:4d} duplicates, {sent:5d} requests = "
                  f"{per:5.2f} per duplicate{verdict}")  # fmt: skip
    print(f"\nat a {args.budget} requests/min budget (the emulator limits, the client paces; {args.budget_seconds:g}s runs, "
          "clusters of 2-4):")  # fmt: skip
    for strategy, r in results.items():
        b = r["budget"]
        ok = b["use"] >= TARGET_BUDGET_USE and b["share_429"] < TARGET_429_SHARE
        print(f"  {strategy:<12} {b['merges']:4.0f} merges ({b['duplicates']:.0f} duplicates) in {b['elapsed']:5.1f}s = "
              f"{b['per_minute']:5.1f} merges/min; {b['sent']:.0f} requests = {b['use']:6.1%} of the budget, "
              f"{b['limited']:.0f} answered 429 ({b['share_429']:.2%})  [{'ok' if ok else 'BELOW target'}]")  # fmt: skip


if __name__ == "__main__":
    main()
