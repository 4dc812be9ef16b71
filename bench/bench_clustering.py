"""Benchmark duplicate detection: build_clusters over 1,000,000 synthetic contacts.

Run: ``.venv/bin/python bench/bench_clustering.py [--contacts N] [--locations L] [--seed S]``

The synthetic index resembles a real multi-location business: contacts ordered by location (as the
detector reads them from the key index), about 1.2 natural keys per contact (a fifth have a second
phone or an email), about 15% of contacts re-using a key already in their location (the duplicates),
and about 1% re-using a key from another location (cross-location duplicates). Generation is not
timed; only ``build_clusters`` is.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dedup.clustering import build_clusters  # noqa: E402


def synthetic_contacts(n: int, locations: int, seed: int) -> list[tuple[str, str, tuple[str, ...]]]:
    """``n`` contacts as (uid, location_uid, keys), grouped by location."""
    rnd = random.Random(seed)
    per_location = n // locations
    contacts: list[tuple[str, str, tuple[str, ...]]] = []
    all_keys: list[str] = []
    for loc_index in range(locations):
        location = f"loc{loc_index:04d}"
        local_keys: list[str] = []
        count = per_location if loc_index < locations - 1 else n - per_location * (locations - 1)
        for _ in range(count):
            roll = rnd.random()
            if roll < 0.15 and local_keys:
                first = rnd.choice(local_keys)  # a duplicate in this location
            elif roll < 0.16 and all_keys:
                first = rnd.choice(all_keys)  # the same customer at another location
            else:
                first = f"+614{rnd.randrange(10**8):08d}"
            keys: tuple[str, ...] = (first,)
            if rnd.random() < 0.2:
                second = (
                    f"+612{rnd.randrange(10**8):08d}"
                    if rnd.random() < 0.7
                    else f"c{len(contacts)}@example.com"
                )
                keys = (first, second)
            local_keys.extend(keys)
            contacts.append((f"ct_{len(contacts):08d}", location, keys))
        all_keys.extend(rnd.sample(local_keys, min(len(local_keys), 200)))
    return contacts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--locations", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--shuffle", action="store_true", help="feed contacts in random order, not by location"
    )
    args = parser.parse_args()

    started = time.perf_counter()
    contacts = synthetic_contacts(args.contacts, args.locations, args.seed)
    if args.shuffle:
        random.Random(args.seed).shuffle(contacts)
    keys = sum(len(k) for _, _, k in contacts)
    print(
        f"generated {len(contacts):,} contacts, {keys:,} keys ({keys / len(contacts):.2f}/contact), "
        f"{args.locations} locations in {time.perf_counter() - started:.1f}s (not timed below)"
    )
    # A handful of remembered "different people" pairs, as a real deployment accumulates.
    excluded = {(contacts[i][0], contacts[i + 1][0]) for i in range(0, 2000, 2)}

    for label, cross, exclusions in (
        ("within-location", False, None),
        ("within-location + 1,000 excluded pairs", False, excluded),
        ("cross-location", True, None),
    ):
        timings = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            groups = build_clusters(contacts, cross_location=cross, excluded_pairs=exclusions)
            timings.append(time.perf_counter() - t0)
        in_clusters = sum(len(g.member_uids) for g in groups)
        biggest = max((len(g.member_uids) for g in groups), default=0)
        print(
            f"{label:40s} best {min(timings):.2f}s  worst {max(timings):.2f}s  "
            f"{len(groups):,} clusters, {in_clusters:,} contacts in clusters, largest {biggest}"
        )


if __name__ == "__main__":
    main()
