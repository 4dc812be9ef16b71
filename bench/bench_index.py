"""Benchmark indexing: ``scan --from-file`` of a demo-corpus export into PostgreSQL or SQLite.

Run: ``.venv/bin/python bench/bench_index.py [--contacts N] [--database postgres|sqlite] [--seed S]
[--workers W] [--pg-url URL]``. The default (100,000 contacts) runs in a couple of minutes; the figures
in the issue are for ``--contacts 1000000``.

Printed, measured in the same run:

* the yardstick: the raw ``phonenumbers`` parse rate on one core over the corpus's own phone
  strings (``phonenumbers.parse`` alone; parse + validity + E.164 formatting, the issue's yardstick;
  the product's ``normalize_phone`` and the indexer's ``phone_key`` with their caches emptied), per
  phone and per contact;
* indexing: contacts/s of the file scan's indexing phase (read, parse, normalize, write contacts,
  keys and uncategorized phones) against the yardstick's numbers/s (target: at least 1.0x), the
  detection that follows, and the whole scan;
* where the CPU of indexing and of detection went (``cpuclock``): this process, its worker
  processes, the PostgreSQL server (when it runs on this machine) and the machine as a whole; per
  contact for indexing, beside what a contact may use at 1.0x (the CPUs' time per yardstick number);
* an unchanged rescan: a second scan of the same file (target: no writes, at most 15 s at 1M
  contacts), with the index and cluster rows it wrote;
* peak memory (high-water RSS) of this process during indexing and over the whole scan, and of the
  largest worker process.

The corpus (``make_demo_corpus``'s generator) is cached under ``var/bench/``. PostgreSQL uses its own
database (``dedup_bench`` by default, created if missing); SQLite a temporary file.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import cpuclock  # noqa: E402

CONTACTS_PER_PERSON = 1.72  # what the demo generator makes on average (duplicates, cross-location)


def corpus_for(contacts: int, seed: int) -> Path:
    """The cached demo corpus of about ``contacts`` contacts (generated on first use)."""
    from podium_client.corpus import write_corpus

    people = max(1, round(contacts / CONTACTS_PER_PERSON))
    path = ROOT / "var" / "bench" / f"corpus-{people}-{seed}.ndjson"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        summary = write_corpus(path, people, seed)
        print(
            f"generated {summary.contacts:,} contacts ({people:,} people) in {time.perf_counter() - started:.0f}s"
        )
    return path


def sample_phones(path: Path, limit: int) -> tuple[list[tuple[str, str]], float]:
    """Up to ``limit`` (phone identifier, region) pairs spread over the corpus, and phones per contact."""
    countries: dict[str, str] = {}
    phones: list[tuple[str, str]] = []
    contacts = 0
    total_phones = 0
    rnd = random.Random(1)
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            obj = json.loads(line)
            if obj.get("object") == "location":
                countries[obj["uid"]] = (obj.get("addressDetails") or {}).get("country") or "AU"
                continue
            contacts += 1
            locations = obj.get("locations") or []
            region = countries.get(locations[0]["uid"], "AU") if locations else "AU"
            for channel in obj.get("channels") or []:
                if channel["type"] != "PHONE":
                    continue
                total_phones += 1
                item = (channel["identifier"], region)
                if len(phones) < limit:
                    phones.append(item)
                elif rnd.random() < limit / total_phones:
                    phones[rnd.randrange(limit)] = item
    return phones, total_phones / max(contacts, 1)


def yardstick(phones: list[tuple[str, str]]) -> dict[str, float]:
    """Phones per second on this core: raw parse, parse+validate+format, and the product's normalizer."""
    import phonenumbers
    from phonenumbers import NumberParseException, PhoneNumberFormat

    from dedup.phones import normalize_phone, phone_key

    def timed(fn: Any) -> float:
        started = time.perf_counter()
        for raw, region in phones:
            fn(raw, region)
        return len(phones) / (time.perf_counter() - started)

    def parse(raw: str, region: str) -> None:
        try:
            phonenumbers.parse(raw, region)
        except NumberParseException:
            pass  # junk phones are part of the corpus; failing to parse is the parser's answer

    def parse_validate_format(raw: str, region: str) -> None:
        try:
            number = phonenumbers.parse(raw, region)
        except NumberParseException:
            return
        if phonenumbers.is_valid_number(number):
            phonenumbers.format_number(number, PhoneNumberFormat.E164)

    def normalize(raw: str, region: str) -> None:
        normalize_phone(raw, region)

    def key(raw: str, region: str) -> None:
        phone_key(raw, region)

    normalize_phone.cache_clear()
    phone_key.cache_clear()
    rates = {
        "parse": timed(parse),
        "parse_validate_e164": timed(parse_validate_format),
        "normalize_phone": timed(normalize),
        "phone_key": timed(key),
    }
    normalize_phone.cache_clear()
    phone_key.cache_clear()
    return rates


def setup_django(database: str, pg_url: str, sqlite_path: str | None = None) -> str:
    """Point Django at the benchmark database (created and migrated); returns a description."""
    if database == "postgres":
        import psycopg

        base, _, name = pg_url.rpartition("/")
        with psycopg.connect(base + "/postgres", autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{name}"')
        os.environ["DATABASE_URL"] = pg_url
        where = pg_url
    else:
        path = (
            Path(sqlite_path)
            if sqlite_path
            else Path(tempfile.mkdtemp(prefix="dedup-bench-")) / "bench.sqlite3"
        )
        os.environ["DATABASE_URL"] = f"sqlite:///{path}"
        where = str(path)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dedup.settings_test")
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    settings.DEBUG = False  # no per-query logging: production does not log queries either
    call_command("migrate", verbosity=0)
    return where


def empty_index() -> None:
    """Remove the index, clusters and scan runs of a previous benchmark run (not the audit log)."""
    from django.db import connection

    from dedup.models import Cluster, ClusterMember, Contact, ContactKey, ScanRun, UncategorizedPhone

    tables = [
        ClusterMember._meta.db_table,
        Cluster.locations.through._meta.db_table,
        Cluster._meta.db_table,
        UncategorizedPhone._meta.db_table,
        ContactKey._meta.db_table,
        Contact._meta.db_table,
        ScanRun._meta.db_table,
    ]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"TRUNCATE {', '.join(tables)} CASCADE")
        else:
            for table in tables:
                cursor.execute(f"DELETE FROM {table}")


_WRITTEN_TABLES = (
    "contact",
    "contactkey",
    "contactlocation",
    "uncategorizedphone",
    "cluster",
    "clustermember",
)


def rows_written() -> dict[str, int]:
    """Rows inserted, updated or deleted so far in the index and cluster tables (PostgreSQL's counters)."""
    from django.db import connection

    if connection.vendor != "postgresql":
        return {}
    time.sleep(1.1)  # a backend reports its counters at most once a second
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_force_next_flush()")
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT relname, n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_user_tables WHERE relname = ANY(%s)",
            [[f"dedup_{t}" for t in _WRITTEN_TABLES]],
        )
        return dict(cursor.fetchall())


def rescan(path: Path) -> dict[str, Any]:
    """A second scan of the same file: seconds, and the index and cluster rows it wrote."""
    from django.db.models import Max

    from dedup.models import Cluster, Contact, ContactKey
    from dedup.scanning import start_scan

    before = rows_written()
    keys_before = ContactKey.objects.aggregate(n=Max("pk"))["n"]
    started_at = time.time()
    started = time.perf_counter()
    run = start_scan(from_file=str(path), run_async=False, actor="bench")
    seconds = time.perf_counter() - started
    after = rows_written()
    from datetime import UTC, datetime

    since = datetime.fromtimestamp(started_at, UTC)
    return {
        "seconds": round(seconds, 2),
        "contacts_seen": run.contacts_seen,
        "contacts_written": Contact.objects.filter(indexed_at__gte=since).count(),
        "keys_added": (ContactKey.objects.aggregate(n=Max("pk"))["n"] or 0) - (keys_before or 0),
        "clusters_touched": Cluster.objects.filter(updated_at__gte=since).count(),
        "table_rows_written": sum(after.get(t, 0) - before.get(t, 0) for t in after) if after else None,
        "peak_rss_mb": round(high_water_mb()),
        "largest_worker_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
    }


def high_water_mb() -> float:
    """This process's peak resident set so far, in MB (VmHWM)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def print_cpu(phase: str, cpu: cpuclock.Reading, wall: float) -> None:
    """Where a phase's CPU went: this process, its workers, PostgreSQL, and the machine as a whole."""
    print(
        f"  CPU, {phase:<16} this process {cpuclock.seconds(cpu.this_process)}, workers "
        f"{cpuclock.seconds(cpu.children)}, PostgreSQL {cpuclock.seconds(cpu.postgres)}; machine busy "
        f"{cpuclock.seconds(cpu.machine)} of {wall * (os.cpu_count() or 1):.1f} CPU-s"
    )


def per_contact_cpu(cpu: cpuclock.Reading, contacts: int) -> str:
    parts = {"this process": cpu.this_process, "workers": cpu.children, "PostgreSQL": cpu.postgres}
    known = {name: value / contacts * 1e6 for name, value in parts.items() if value is not None}
    text = ", ".join(f"{name} {value:.0f} us" for name, value in known.items())
    return f"{text} = {sum(known.values()):.0f} us of CPU"


def cpu_json(cpu: cpuclock.Reading) -> dict[str, float | None]:
    return {name: None if value is None else round(value, 2) for name, value in asdict(cpu).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--database", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument(
        "--workers", type=int, default=None, help="preparation processes (default: one per CPU)"
    )
    parser.add_argument("--pg-url", default="postgres://postgres@127.0.0.1:5432/dedup_bench")
    parser.add_argument("--sqlite-path", default=None, help="SQLite file to use (default: a temporary one)")
    parser.add_argument("--yardstick-phones", type=int, default=200_000)
    args = parser.parse_args()

    path = corpus_for(args.contacts, args.seed)
    where = setup_django(args.database, args.pg_url, args.sqlite_path)

    from dedup import exportfile as indexing
    from dedup.models import Policy, ScanRun
    from dedup.scanning import start_scan

    if args.workers is not None:
        workers = args.workers
        indexing.default_workers = lambda _path: workers  # type: ignore[assignment]
    empty_index()
    Policy.current()
    # This process then holds what ``manage.py scan`` holds when it starts scanning: Django's system
    # checks load the URLconf and everything the views import (the workers fork from it).
    from django.core import checks

    checks.run_checks()
    marks: dict[str, float] = {}

    postmaster = cpuclock.django_postmaster()
    clocks: dict[str, cpuclock.Reading] = {}

    def progress(run: ScanRun) -> None:
        if run.contacts_total and run.contacts_seen >= run.contacts_total and "indexed" not in marks:
            marks["indexed"] = time.perf_counter()
            marks["index_hwm"] = high_water_mb()
            clocks["indexed"] = cpuclock.read(postmaster)

    clocks["started"] = cpuclock.read(postmaster)
    started = time.perf_counter()
    run = start_scan(from_file=str(path), run_async=False, actor="bench", progress_callback=progress)
    finished = time.perf_counter()
    clocks["finished"] = cpuclock.read(postmaster)
    scan_hwm = high_water_mb()
    indexed_at = marks.get("indexed", finished)
    index_seconds = indexed_at - started
    detect_seconds = finished - indexed_at
    children_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

    contacts_per_second = run.contacts_seen / index_seconds
    index_cpu = clocks.get("indexed", clocks["finished"]) - clocks["started"]
    detect_cpu = clocks["finished"] - clocks.get("indexed", clocks["finished"])
    again = rescan(path)
    # The yardstick runs after the scans, in the same run: its sample of phones (and the parser metadata
    # of every region it meets) would otherwise count in the scan's peak memory.
    phones, phones_per_contact = sample_phones(path, args.yardstick_phones)
    rates = yardstick(phones)
    del phones
    per_contact = {name: rate / phones_per_contact for name, rate in rates.items()}
    ratio = contacts_per_second / rates["parse_validate_e164"]
    print()
    print(f"database                {args.database} ({where})")
    print(
        f"corpus                  {path.name}: {run.contacts_seen:,} contacts, {phones_per_contact:.2f} phones/contact"
    )
    print(f"CPUs                    {os.cpu_count()}")
    print("yardstick, one core     phones/s       contacts/s")
    for name in ("parse", "parse_validate_e164", "normalize_phone", "phone_key"):
        print(f"  {name:<21} {rates[name]:>10,.0f}   {per_contact[name]:>10,.0f}")
    print(f"indexing                {index_seconds:8.1f} s   {contacts_per_second:>10,.0f} contacts/s")
    print(f"  vs yardstick          {ratio:.2f}x parse_validate_e164 numbers/s (target >= 1.0x)")
    print_cpu("indexing", index_cpu, index_seconds)
    budget = (os.cpu_count() or 1) / rates["parse_validate_e164"] * 1e6
    parse = phones_per_contact / rates["parse_validate_e164"] * 1e6
    print(f"  per contact           {per_contact_cpu(index_cpu, run.contacts_seen)}")
    print(
        f"  at 1.0x               a contact may use {budget:.0f} us of CPU on {os.cpu_count()} CPUs, "
        f"its phones' parse (one core) {parse:.0f} us of it"
    )
    print(f"detection after it      {detect_seconds:8.1f} s   {run.clusters_found:,} open clusters")
    print_cpu("detection", detect_cpu, detect_seconds)
    print(f"whole scan              {finished - started:8.1f} s")
    print(f"peak RSS, indexing      {marks.get('index_hwm', 0):8.0f} MB (this process)")
    print(
        f"peak RSS, whole scan    {scan_hwm:8.0f} MB (this process); largest worker {children_mb:.0f} MB"
    )
    print(
        f"unchanged rescan        {again['seconds']:8.1f} s   contacts written {again['contacts_written']}, "
        f"keys added {again['keys_added']}, clusters touched {again['clusters_touched']}, "
        f"table rows written {again['table_rows_written']} (target: 0 writes, <= 15 s at 1M)"
    )
    print(f"peak RSS, after rescan  {again['peak_rss_mb']:8.0f} MB (this process)")
    print(
        json.dumps(
            {
                "database": args.database,
                "contacts": run.contacts_seen,
                "phones_per_contact": round(phones_per_contact, 3),
                "yardstick_phones_per_s": {k: round(v) for k, v in rates.items()},
                "index_seconds": round(index_seconds, 2),
                "index_contacts_per_s": round(contacts_per_second),
                "detect_seconds": round(detect_seconds, 2),
                "scan_seconds": round(finished - started, 2),
                "peak_rss_mb_indexing": round(marks.get("index_hwm", 0)),
                "peak_rss_mb_scan": round(scan_hwm),
                "peak_rss_mb_worker": round(children_mb),
                "index_vs_yardstick": round(ratio, 3),
                "cpu_seconds_indexing": cpu_json(index_cpu),
                "cpu_seconds_detection": cpu_json(detect_cpu),
                "rescan": again,
            }
        )
    )


if __name__ == "__main__":
    main()
