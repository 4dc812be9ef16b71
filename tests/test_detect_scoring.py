"""Detection's lean scoring (``dedup.detect.proposals.propose``) gives exactly the verdicts of the rules
it stands for: ``dedup.scoring.assess_cluster`` and ``dedup.survivorship.choose_primary``."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from dedup.clustering import ClusterGroup, stable_cluster_id
from dedup.detect.proposals import Member, Scoring, propose
from dedup.detect.sql import EPOCH
from dedup.names import normalize_name
from dedup.records import MemberRecord, normalize_email, tag_key
from dedup.scoring import assess_cluster
from dedup.survivorship import choose_primary

NAMES = [
    "Maria Garcia", "GARCIA, Maria", "M Garcia", "Jose Garcia", "", "Unknown", "Bob Smith", "Robert Smith",
    "Robert Smith Jr", "Mrs. María García", "Jen Murphy", "Jennifer Murphy", "Lee Kim",
]  # fmt: skip
PHONES = ["+61412345678", "+61412000000", "+61400111222"]
EMAILS = ["home@example.com", "Work@Example.com", "x@y.org"]
TAGS = ["vip", "VIP ", "review-sent", "new"]
LOCATIONS = {1: "loc_a", 2: "loc_b", 3: "loc_c"}
MOMENTS = [datetime(2025, 1, 1, tzinfo=UTC) + timedelta(seconds=s) for s in (0, 1, 3600, 86_400)]


def pick(rnd: random.Random, pool: list[str], most: int) -> tuple[str, ...]:
    return tuple(rnd.sample(pool, rnd.randint(0, most)))


def member_pair(rnd: random.Random, uid: str, shared_phone: str) -> tuple[MemberRecord, Member]:
    name = rnd.choice(NAMES)
    phones = tuple(dict.fromkeys((shared_phone, *pick(rnd, PHONES, 1)) if rnd.random() < 0.8 else pick(rnd, PHONES, 2)))
    emails = pick(rnd, EMAILS, 2)
    tags = pick(rnd, TAGS, 2)
    home = rnd.choice(list(LOCATIONS))
    others = [loc for loc in LOCATIONS if loc != home and rnd.random() < 0.3]
    location_uids = tuple(LOCATIONS[loc] for loc in (home, *others))
    field_count = rnd.randint(0, 5)
    updated = rnd.choice(MOMENTS)
    record = MemberRecord(
        uid=uid, location_uid=LOCATIONS[home], name=name, phones=phones, raw_phones=phones,
        emails=tuple(normalize_email(e) for e in emails), raw_emails=(), tags=tags, attributes=(), address=None,
        marketing_opt_out=False, sms_opt_out=False, email_opt_out=False, field_count=field_count,
        updated_at=updated, location_uids=location_uids,
    )  # fmt: skip
    member = Member(
        id=int(uid.split("_")[1]), uid=uid, location_id=home, location_uids=location_uids,
        name=normalize_name(name), phones=frozenset(phones), emails=frozenset(normalize_email(e) for e in emails),
        tags=frozenset(tag_key(t) for t in tags if t.strip()), field_count=field_count, updated_at=updated,
        updated_us=(updated - EPOCH) // timedelta(microseconds=1),
    )  # fmt: skip
    return record, member


@pytest.mark.parametrize("seed", range(4))
def test_propose_gives_the_verdicts_of_assess_cluster_and_choose_primary(seed: int) -> None:
    rnd = random.Random(seed)
    for case in range(400):
        threshold = rnd.choice([Decimal("0.60"), Decimal("0.80"), Decimal("0.85"), Decimal("1.00")])
        scoring = Scoring(
            threshold=threshold, cross_location_auto_merge=rnd.random() < 0.5, email_secondary_key=rnd.random() < 0.5,
            location_uid_of=LOCATIONS, location_id_of={uid: pk for pk, uid in LOCATIONS.items()},
            policy_changed_at=MOMENTS[0], rescore=False,
        )  # fmt: skip
        size = rnd.choice([2, 2, 2, 3, 4])
        shared = rnd.choice(PHONES)
        pairs = [member_pair(rnd, f"ct_{case * 10 + i:05d}", shared) for i in range(size)]
        records = [r for r, _m in pairs]
        members = [m for _r, m in pairs]
        uids = tuple(sorted(r.uid for r in records))
        cross = rnd.random() < 0.3
        group = ClusterGroup(
            member_uids=uids, natural_keys=(shared,), location_uid=None if cross else records[0].location_uid,
            stable_id=stable_cluster_id(uids, cross), location_uids=tuple(sorted({r.location_uid for r in records})),
        )  # fmt: skip
        by_uid = {m.uid: m for m in members}
        proposal = propose(0, group, [by_uid[uid] for uid in uids], scoring)
        assessment = assess_cluster(
            records, threshold=threshold, allow_cross_location_auto=scoring.cross_location_auto_merge,
            use_email_key=scoring.email_secondary_key,
        )  # fmt: skip
        context = f"seed {seed} case {case}"
        assert proposal.auto_merge == assessment.auto_merge, context
        assert json.loads(proposal.reasons_json) == list(assessment.reasons), context
        assert proposal.confidence == Decimal(f"{assessment.confidence:.2f}"), context
        expected_pairs = [
            {"a": p.uid_a, "b": p.uid_b, "score": p.score, "reasons": list(p.reasons), "conflict": p.conflict}
            for _key, p in sorted(assessment.pairs.items())
        ]
        assert json.loads(proposal.pair_scores_json) == expected_pairs, context
        assert proposal.suggested_primary_uid == choose_primary(records).uid, context
