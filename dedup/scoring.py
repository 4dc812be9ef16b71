"""Pair and cluster scoring: how sure are we that the members of a cluster are one person?

Weights (product spec, applied literally and summed in hundredths so 0.60 + 0.20 is exactly 0.80):

============================================  ======
evidence                                      weight
============================================  ======
same E.164 (``same_phone``)                    0.60
same name (``same_name``)                     +0.20
same email (``same_email``)                   +0.15
overlapping tags (``shared_tags``)            +0.05
============================================  ======

Inside a cluster a pair normally shares a phone, but not always: a contact with two phones joins two
groups (union-find), so two members may be linked only through a third (``no_shared_phone``), and where
policy makes email a secondary key a pair may share only an email (``same_email_only``). The phone weight
is given only when the pair actually shares an E.164.

Names: a different name is a conflict (``different_names``) whatever else matches — households and
reassigned numbers share a phone, often an email and tags too. A missing name (``missing_name``) or a
merely compatible one such as "M Garcia" / "Maria Garcia" (``partial_name``) is no evidence either way: no
weight, no conflict. So a pair with one missing name scores 0.60 (+0.15 email, +0.05 tags).

A cluster merges automatically only when every pair reaches the threshold, no pair conflicts, every pair's
names are confirmed the same, and all members are in one location (unless the deployment allows
cross-location automatic merges). The name rule matters where the weights alone would not stop a wrong
merge: a household member saved without a name shares the phone, the email and the tags, and so reaches
0.80 on evidence that a household shares by definition. Without a confirmed name nothing tells the two
apart, so such a cluster goes to a person (``name_unconfirmed``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from itertools import combinations
from typing import Any

from dedup.names import NameRelation, name_relation, normalize_name
from dedup.records import MemberRecord, normalize_email, tag_key

# Weights in hundredths: integer sums are exact, unlike 0.6 + 0.2 in binary floating point.
PHONE_POINTS = 60
NAME_POINTS = 20
EMAIL_POINTS = 15
TAGS_POINTS = 5

DEFAULT_THRESHOLD = 0.80
ERR_BELOW_THRESHOLD = "ERR_DEDUP_004"

# Pair reason codes.
SAME_PHONE = "same_phone"
NO_SHARED_PHONE = "no_shared_phone"
SAME_EMAIL_ONLY = "same_email_only"
SAME_NAME = "same_name"
PARTIAL_NAME = "partial_name"
DIFFERENT_NAMES = "different_names"
MISSING_NAME = "missing_name"
SAME_EMAIL = "same_email"
SHARED_TAGS = "shared_tags"

# Cluster reason codes.
AUTO_MERGE_ELIGIBLE = "auto_merge_eligible"
BELOW_THRESHOLD = "below_threshold"
CONFLICTING_NAMES = "conflicting_names"
NAME_UNCONFIRMED = "name_unconfirmed"
CROSS_LOCATION = "cross_location"

_REASON_TEXT: dict[str, str] = {
    SAME_PHONE: "share a phone number",
    NO_SHARED_PHONE: "share no phone number (linked through another member)",
    SAME_EMAIL_ONLY: "share an email but no phone number (linked by email)",
    SAME_NAME: "same name",
    PARTIAL_NAME: "names could match (initials or a missing part) but are not the same",
    DIFFERENT_NAMES: "different names: a household or a reassigned number",
    MISSING_NAME: "a name is missing: no evidence either way",
    SAME_EMAIL: "share an email",
    SHARED_TAGS: "share a tag",
    AUTO_MERGE_ELIGIBLE: "every pair reaches the threshold with no conflict",
    NAME_UNCONFIRMED: "a name is missing or only partly matches, so a household cannot be ruled out",
    BELOW_THRESHOLD: "at least one pair is below the threshold",
    CONFLICTING_NAMES: "at least one pair has two different names",
    CROSS_LOCATION: "no location holds every member",
    "restored_by_person": "a member was restored after a merge by a person: a person decides again",
    "would_lose_data": "the merge would lose a value a person must accept",
    "cannot_carry": "consent or a member the published API cannot carry onto this primary",
}


def reason_text(code: str) -> str:
    """A short human sentence for a reason code (the code itself when unknown)."""
    return _REASON_TEXT.get(code, code)


def _decimal(value: float | Decimal) -> Decimal:
    """A number as the decimal a person typed ("0.8", not 0.8000000000000000444...)."""
    if isinstance(value, Decimal):
        return value
    return Decimal(repr(float(value)))


def meets_threshold(score: float, threshold: float | Decimal) -> bool:
    """Whether ``score`` reaches ``threshold``, compared in decimal so 0.80 >= 0.80 holds exactly.

    ``threshold`` may be the policy's ``Decimal`` or a float.
    """
    return _decimal(score) >= _decimal(threshold)


def _check_threshold(threshold: float | Decimal) -> None:
    # A mistyped policy (80 instead of 0.80, NaN) must fail loudly, not silently block or allow everything.
    ok = isinstance(threshold, int | float | Decimal) and not isinstance(threshold, bool)
    if not ok or not math.isfinite(threshold) or not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be a number between 0 and 1, got {threshold!r}")


@dataclass(frozen=True, slots=True)
class PairScore:
    """The evidence for one pair of members: score, reasons (machine codes) and per-evidence weights."""

    uid_a: str
    uid_b: str
    score: float
    reasons: tuple[str, ...]
    conflict: bool
    components: tuple[tuple[str, float], ...] = ()

    def explain(self) -> str:
        """A one-line human explanation, e.g. "0.80: share a phone number +0.60; same name +0.20"."""
        weights = dict(self.components)
        parts = []
        for code in self.reasons:
            text = reason_text(code)
            parts.append(f"{text} +{weights[code]:.2f}" if code in weights else text)
        head = f"{self.score:.2f}"
        if self.conflict:
            head += " (conflict)"
        return f"{head}: " + "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable form for storage and the review page."""
        return {
            "uids": [self.uid_a, self.uid_b],
            "score": self.score,
            "reasons": list(self.reasons),
            "conflict": self.conflict,
            "components": {code: weight for code, weight in self.components},
            "explanation": self.explain(),
        }


@dataclass(frozen=True, slots=True)
class _Features:
    """What scoring needs from a member, computed once per member rather than once per pair."""

    uid: str
    name: str
    phones: frozenset[str]
    emails: frozenset[str]
    tags: frozenset[str]

    @classmethod
    def of(cls, m: MemberRecord) -> _Features:
        return cls(
            uid=m.uid,
            name=normalize_name(m.name),
            phones=frozenset(p for p in m.phones if p),
            # Keys from both views, so a record built with only raw or only normalized emails still scores.
            emails=frozenset(normalize_email(e) for e in m.emails if e.strip())
            | frozenset(key for _raw, key in m.email_channels()),
            tags=frozenset(tag_key(t) for t in m.tags if t.strip()),
        )


def _score_features(a: _Features, b: _Features, use_email_key: bool) -> PairScore:
    reasons: list[str] = []
    components: list[tuple[str, float]] = []
    points = 0

    def add(code: str, weight: int) -> None:
        nonlocal points
        points += weight
        reasons.append(code)
        components.append((code, weight / 100))

    shares_email = bool(a.emails & b.emails)
    if a.phones & b.phones:
        add(SAME_PHONE, PHONE_POINTS)
    elif shares_email and use_email_key:
        reasons.append(SAME_EMAIL_ONLY)
    else:
        reasons.append(NO_SHARED_PHONE)

    relation = name_relation(a.name, b.name)
    if relation is NameRelation.SAME:
        add(SAME_NAME, NAME_POINTS)
    elif relation is NameRelation.COMPATIBLE:
        reasons.append(PARTIAL_NAME)
    elif relation is NameRelation.MISSING:
        reasons.append(MISSING_NAME)
    else:
        reasons.append(DIFFERENT_NAMES)

    if shares_email:
        add(SAME_EMAIL, EMAIL_POINTS)
    if a.tags & b.tags:
        add(SHARED_TAGS, TAGS_POINTS)

    uid_a, uid_b = sorted((a.uid, b.uid))
    return PairScore(
        uid_a=uid_a,
        uid_b=uid_b,
        score=points / 100,
        reasons=tuple(reasons),
        conflict=relation is NameRelation.DIFFERENT,
        components=tuple(components),
    )


def score_pair(a: MemberRecord, b: MemberRecord, use_email_key: bool = False) -> PairScore:
    """Score one pair of members with the spec weights.

    ``use_email_key`` says whether policy lets a shared email join a cluster; it only changes how a pair
    without a shared phone is explained (``same_email_only`` rather than ``no_shared_phone``). A shared
    email earns its 0.15 either way, and never the phone's 0.60.
    """
    if a.uid == b.uid:
        raise ValueError(f"cannot score a member against itself ({a.uid})")
    return _score_features(_Features.of(a), _Features.of(b), use_email_key)


@dataclass(frozen=True, slots=True)
class ClusterAssessment:
    """The verdict on a whole cluster: every pair's score, the confidence, and whether it may auto-merge."""

    member_uids: tuple[str, ...]
    pairs: dict[tuple[str, str], PairScore]
    confidence: float
    auto_merge: bool
    reasons: tuple[str, ...]
    error_code: str | None
    threshold: float
    location_uids: tuple[str, ...] = field(default=())

    def explain(self) -> str:
        """A human summary: verdict, confidence, cluster reasons, then the weakest pairs first."""
        verdict = "merges automatically" if self.auto_merge else f"needs review ({self.error_code})"
        lines = [
            f"Cluster of {len(self.member_uids)} {verdict}; confidence {self.confidence:.2f} "
            f"(threshold {self.threshold:.2f}): " + "; ".join(reason_text(r) for r in self.reasons)
        ]
        for key, pair in sorted(self.pairs.items(), key=lambda kv: (kv[1].score, kv[0])):
            lines.append(f"  {key[0]} / {key[1]}: {pair.explain()}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable form for storage and the review page."""
        return {
            "member_uids": list(self.member_uids),
            "location_uids": list(self.location_uids),
            "confidence": self.confidence,
            "threshold": self.threshold,
            "auto_merge": self.auto_merge,
            "reasons": list(self.reasons),
            "error_code": self.error_code,
            "pairs": [self.pairs[k].to_dict() for k in sorted(self.pairs)],
        }


def assess_cluster(
    members: Sequence[MemberRecord],
    threshold: float | Decimal = DEFAULT_THRESHOLD,
    allow_cross_location_auto: bool = False,
    use_email_key: bool = False,
) -> ClusterAssessment:
    """Score every pair of a cluster and decide whether it may merge without a person.

    ``auto_merge`` is True only if every pair scores >= ``threshold``, no pair has conflicting names,
    every pair's names are confirmed the same, and the members share one location (or
    ``allow_cross_location_auto``). Otherwise ``error_code`` is ``ERR_DEDUP_004`` and ``reasons`` say why
    (``below_threshold``, ``conflicting_names``, ``name_unconfirmed``, ``cross_location``).
    ``confidence`` is the lowest pair score.

    The number of pairs grows with the square of the cluster size; member features are computed once so
    each pair costs only a few set intersections.
    """
    _check_threshold(threshold)
    if len(members) < 2:
        raise ValueError("a cluster has at least two members")
    uids = [m.uid for m in members]
    if len(set(uids)) != len(uids):
        raise ValueError("a cluster cannot hold the same member twice")

    features = sorted((_Features.of(m) for m in members), key=lambda f: f.uid)
    pairs: dict[tuple[str, str], PairScore] = {}
    for a, b in combinations(features, 2):
        pair = _score_features(a, b, use_email_key)
        pairs[(pair.uid_a, pair.uid_b)] = pair

    confidence = min(p.score for p in pairs.values())
    locations = tuple(sorted({loc for m in members for loc in m.location_uids}))
    # A Podium contact may belong to several locations: members are "in one location" when some
    # location holds them all, even if some of them are in others too.
    common = set.intersection(*(set(m.location_uids) for m in members)) if members else set()
    spans = not common
    reasons: list[str] = []
    if not all(meets_threshold(p.score, threshold) for p in pairs.values()):
        reasons.append(BELOW_THRESHOLD)
    if any(p.conflict for p in pairs.values()):
        reasons.append(CONFLICTING_NAMES)
    elif not all(SAME_NAME in p.reasons for p in pairs.values()):
        reasons.append(NAME_UNCONFIRMED)
    if spans:
        reasons.append(CROSS_LOCATION)
    blocked = bool({BELOW_THRESHOLD, CONFLICTING_NAMES, NAME_UNCONFIRMED} & set(reasons)) or (
        spans and not allow_cross_location_auto
    )
    if not blocked:
        reasons.insert(0, AUTO_MERGE_ELIGIBLE)
    return ClusterAssessment(
        member_uids=tuple(f.uid for f in features),
        pairs=pairs,
        confidence=confidence,
        auto_merge=not blocked,
        reasons=tuple(reasons),
        error_code=None if not blocked else ERR_BELOW_THRESHOLD,
        threshold=float(threshold),
        location_uids=locations,
    )
