"""Detection quality on demo corpora with ground truth (a few thousand people at two seeds).

The corpus knows who every contact really is: households and reassigned numbers share a phone but are
different people; some people appear at two locations; names come in every spelling. Held:

* no auto-mergeable cluster contains two people;
* at least 99% of same-location duplicate pairs (both active, both with a valid phone) sit together in
  some cluster, and at least 60% of them in an auto-mergeable one;
* every cross-location duplicate pair sharing a valid natural key is found, and none auto-merges.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import pytest

from dedup.models import Cluster, ClusterMember, Contact, ContactKey, ScanRun
from dedup.scanning import start_scan
from podium_client.corpus import generate_corpus

pytestmark = pytest.mark.django_db

PEOPLE = 2500


@dataclass
class Quality:
    auto_clusters_with_two_people: list[str]
    same_location_pairs: int
    same_location_found: int
    same_location_auto: int
    cross_pairs: int
    cross_found: int
    cross_auto: int


def measure(truth: dict[str, str]) -> Quality:
    active = dict(
        Contact.objects.filter(deleted_at__isnull=True, merged_into_uid="").values_list("uid", "location__uid")
    )
    keys: dict[str, set[str]] = defaultdict(set)
    for uid, key in ContactKey.objects.filter(kind=ContactKey.PHONE).values_list("contact__uid", "key"):
        keys[uid].add(key)
    members_of: dict[str, list[str]] = defaultdict(list)
    auto_clusters: set[str] = set()
    for cluster_id, uid, auto_merge in ClusterMember.objects.filter(cluster__status=Cluster.OPEN).values_list(
        "cluster__cluster_id", "contact__uid", "cluster__auto_merge"
    ):
        members_of[cluster_id].append(uid)
        if auto_merge:
            auto_clusters.add(cluster_id)
    together: set[tuple[str, str]] = set()
    auto_together: set[tuple[str, str]] = set()
    two_people: list[str] = []
    for cluster_id, members in members_of.items():
        pairs = set(combinations(sorted(members), 2))
        together |= pairs
        if cluster_id in auto_clusters:
            auto_together |= pairs
            if len({truth[uid] for uid in members}) > 1:
                two_people.append(cluster_id)

    by_person: dict[str, list[str]] = defaultdict(list)
    for uid in sorted(active):
        by_person[truth[uid]].append(uid)
    same = found = auto = cross = cross_found = cross_auto = 0
    for uids in by_person.values():
        for a, b in combinations(uids, 2):
            if active[a] == active[b]:
                if keys[a] and keys[b]:
                    same += 1
                    found += (a, b) in together
                    auto += (a, b) in auto_together
            elif keys[a] & keys[b]:
                cross += 1
                cross_found += (a, b) in together
                cross_auto += (a, b) in auto_together
    return Quality(two_people, same, found, auto, cross, cross_found, cross_auto)


@pytest.mark.parametrize("seed", [2, 2026])
def test_detection_quality_on_a_demo_corpus(seed: int, tmp_path: Path) -> None:
    lines, truth = generate_corpus(PEOPLE, seed)
    path = tmp_path / "corpus.ndjson"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    run = start_scan(from_file=str(path), run_async=False)
    assert run.state == ScanRun.SUCCEEDED

    q = measure(truth)
    assert q.auto_clusters_with_two_people == []
    assert q.same_location_pairs > 1000
    assert q.same_location_found / q.same_location_pairs >= 0.99, q
    assert q.same_location_auto / q.same_location_pairs >= 0.60, q
    assert q.cross_pairs > 50
    assert q.cross_found == q.cross_pairs, q
    assert q.cross_auto == 0, q
