"""Detection quality on v4 demo corpora, measured against the corpus's truth file (2,500 people, two seeds).

The corpus (``make_demo_corpus``: the export and ``OUT.truth.json`` beside it) knows who every contact
really is: households and reassigned numbers share a phone but are different people; some people appear
at two locations, as two contacts or as one contact Podium lists in both; names come in every spelling.
Pairs of one person are *same-location* when their contacts share a location (Podium lets a contact
belong to several), *cross-location* otherwise. Held:

* no auto-mergeable cluster contains two people;
* at least 99% of same-location duplicate pairs (both active, both with a valid phone) sit together in
  some cluster, and at least 57% of them in an auto-mergeable one;
* every cross-location duplicate pair sharing a valid natural key is found, and none auto-merges;
* detection flags a cluster auto on its score alone: members with a transactional opt-out do not stop
  it (the merge, not detection, sends a cluster whose consent the published API cannot carry to review).

Why 57% and not the 60% this test held before v4: the share is a property of the corpus's name mess
(missing, partial and nickname names are left to a person by design) and varies with the seed. Measured
at 2,500 people on seeds 1-9, 2 and 2026: before v4 (old shapes, old generator) 56.8%-62.6% (the 60%
held only at the two seeds this test used, 61.9% and 62.6%); on v4 58.4%-61.6%, 59.4% and 58.9% at
seeds 2 and 2026. No same-location pair of one person fails to auto-merge for any reason but its name
evidence (``below_threshold``, ``name_unconfirmed``, ``conflicting_names``) or because its only common
cluster spans locations. 57% keeps a margin under the lowest v4 seed and still catches a regression of
a few points.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import pytest

from dedup.models import Cluster, ClusterMember, Contact, ContactKey, ContactLocation, ScanRun
from dedup.scanning import start_scan
from podium_client.corpus import truth_path_for, write_corpus

pytestmark = pytest.mark.django_db

PEOPLE = 2500
AUTO_SHARE = 0.57


@dataclass
class Quality:
    auto_clusters_with_two_people: list[str]
    same_location_pairs: int
    same_location_found: int
    same_location_auto: int
    cross_pairs: int
    cross_found: int
    cross_auto: int
    auto_clusters_with_transactional_opt_out: int

    @property
    def found_share(self) -> float:
        return self.same_location_found / self.same_location_pairs

    @property
    def auto_share(self) -> float:
        return self.same_location_auto / self.same_location_pairs


def measure(truth: dict[str, str]) -> Quality:
    """Hold the open clusters against the truth (``{contact uid: person id}``)."""
    active = set(Contact.objects.filter(deleted_at__isnull=True, merged_into_uid="").values_list("uid", flat=True))
    locations: dict[str, set[str]] = defaultdict(set)
    for uid, location in ContactLocation.objects.values_list("contact__uid", "location__uid"):
        locations[uid].add(location)
    keys: dict[str, set[str]] = defaultdict(set)
    for uid, key in ContactKey.objects.filter(kind=ContactKey.PHONE).values_list("contact__uid", "key"):
        keys[uid].add(key)
    members_of: dict[str, list[str]] = defaultdict(list)
    auto_clusters: set[str] = set()
    opted_out: set[str] = set()
    rows = ClusterMember.objects.filter(cluster__status=Cluster.OPEN).values_list(
        "cluster__cluster_id", "contact__uid", "cluster__auto_merge", "contact__sms_opt_out", "contact__email_opt_out"
    )
    for cluster_id, uid, auto_merge, sms_out, email_out in rows:
        members_of[cluster_id].append(uid)
        if auto_merge:
            auto_clusters.add(cluster_id)
            if sms_out or email_out:
                opted_out.add(cluster_id)
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
            if locations[a] & locations[b]:
                if keys[a] and keys[b]:
                    same += 1
                    found += (a, b) in together
                    auto += (a, b) in auto_together
            elif keys[a] & keys[b]:
                cross += 1
                cross_found += (a, b) in together
                cross_auto += (a, b) in auto_together
    return Quality(two_people, same, found, auto, cross, cross_found, cross_auto, len(opted_out))


@pytest.mark.parametrize("seed", [2, 2026])
def test_detection_quality_on_a_v4_demo_corpus(seed: int, tmp_path: Path) -> None:
    path = tmp_path / "corpus.ndjson"
    write_corpus(path, PEOPLE, seed)
    truth: dict[str, str] = json.loads(truth_path_for(path).read_text(encoding="utf-8"))["personOf"]
    run = start_scan(from_file=str(path), run_async=False)
    assert run.state == ScanRun.SUCCEEDED and run.rejected_count == 0
    assert Contact.objects.count() == len(truth) == run.contacts_seen  # every contact of the export indexed

    q = measure(truth)
    assert q.auto_clusters_with_two_people == []
    assert q.same_location_pairs > 1000
    assert q.found_share >= 0.99, q
    assert q.auto_share >= AUTO_SHARE, q
    assert q.cross_pairs > 50
    assert q.cross_found == q.cross_pairs, q
    assert q.cross_auto == 0, q
    assert q.auto_clusters_with_transactional_opt_out > 0, q
