"""Throughput of listing contacts from the emulator over real HTTP, and the memory its state takes.

Writes a demo corpus of about `--contacts` contacts (v4 export) to a temporary file, loads it into an
EmulatorState (timing the load and measuring the process's resident memory before and after), serves it
on a free port, and lists the whole organization with `GET /v4/contacts?limit=100` page by page, the
way the product's scans do, printing contacts per second. Plain HTTP with one keep-alive session, so
the figure is the emulator's, not a client's. Run: `python bench/bench_list_contacts.py [--contacts N]`.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

import requests

# Runnable as a plain script from anywhere: make the repository importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from podium_client.corpus import write_corpus  # noqa: E402
from podium_client.emulator import EmulatorServer, EmulatorState  # noqa: E402

CONTACTS_PER_PERSON = 1.72  # measured average of the demo corpus


def rss_mb() -> float:
    """The process's resident memory now, in MiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--file", help="load this v4 export instead of generating one")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.file) if args.file else Path(tmp) / "corpus.ndjson"
        if not args.file:
            started = time.perf_counter()
            summary = write_corpus(path, int(args.contacts / CONTACTS_PER_PERSON) + 1, args.seed)
            print(f"corpus: {summary.contacts} contacts written in {time.perf_counter() - started:.1f}s")
        gc.collect()
        before = rss_mb()
        started = time.perf_counter()
        state = EmulatorState.from_file(path)
        loaded_in = time.perf_counter() - started
        gc.collect()
        grown = rss_mb() - before
    count = len(state)
    print(
        f"loaded {count} contacts in {loaded_in:.1f}s ({count / loaded_in:,.0f}/s); state memory "
        f"{grown:,.0f} MiB ({grown * 1024 * 1024 / max(count, 1):,.0f} bytes/contact), process RSS {rss_mb():,.0f} MiB"
    )

    with EmulatorServer(state) as server, requests.Session() as session:
        headers = {"Authorization": f"Bearer {server.token}"}
        started = time.perf_counter()
        seen = pages = 0
        params: dict[str, str | int] = {"limit": 100}
        while True:
            resp = session.get(server.url + "/v4/contacts", params=params, headers=headers, timeout=30)
            resp.raise_for_status()
            body = resp.json()
            seen += len(body["data"])
            pages += 1
            cursor = body["metadata"]["nextCursor"]
            if not cursor:
                break
            params = {"limit": 100, "cursor": cursor}
        elapsed = time.perf_counter() - started
    if seen != count:
        print(f"FAIL: listed {seen} contacts, expected {count}")
        return 1
    print(f"listed {seen} contacts in {pages} pages in {elapsed:.2f}s: {seen / elapsed:,.0f} contacts/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
