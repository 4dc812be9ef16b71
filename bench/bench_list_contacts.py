"""Throughput of listing contacts through PodiumClient from the emulator over real HTTP.

Generates a demo corpus of about 100,000 contacts in memory, serves it from an emulator on a free
port, lists every location's contacts (soft-deleted ones included) page by page, and prints
contacts per second. Run: `python bench/bench_list_contacts.py [--contacts N]`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# Runnable as a plain script from anywhere: make the repository importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from podium_client import PodiumClient  # noqa: E402
from podium_client.corpus import generate_corpus  # noqa: E402
from podium_client.emulator import EmulatorServer, EmulatorState  # noqa: E402

CONTACTS_PER_PERSON = 1.72  # measured average of the demo corpus


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()

    started = time.perf_counter()
    lines, truth = generate_corpus(int(args.contacts / CONTACTS_PER_PERSON) + 1, args.seed)
    state = EmulatorState.from_lines(lines)
    print(f"corpus: {len(truth)} contacts generated and loaded in {time.perf_counter() - started:.1f}s")

    with EmulatorServer(state) as server, PodiumClient(server.url, access_token=server.token) as client:
        started = time.perf_counter()
        seen = 0
        pages = 0
        for location in client.list_locations():
            for page in client.iter_contact_pages(location.uid, include_deleted=True):
                seen += len(page)
                pages += 1
        elapsed = time.perf_counter() - started
    if seen != len(truth):
        print(f"FAIL: listed {seen} contacts, expected {len(truth)}")
        return 1
    print(f"listed {seen} contacts in {pages} pages in {elapsed:.2f}s: {seen / elapsed:,.0f} contacts/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
