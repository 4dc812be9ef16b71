"""The lookup integrations call before they create a contact: is this phone (or email) already here?

``parse_query`` turns the request's parameters into a natural key: a phone in any spelling becomes its
E.164 with the location's region (``dedup.phones.normalize_phone``, as the index does), an email its
normalized form. ``lookup`` answers from the index alone, with a handful of indexed queries (the key,
then the contacts by id, then their cluster), never a join over the big tables, so it stays fast at a
million contacts:

* ``contact``: the canonical contact at that location — the would-be primary of its cluster when it is
  in one, else the one the primary rule picks among the holders (most fields, newest, lowest uid);
* ``matches``: every active contact at the location holding the key;
* ``cluster``: the live within-location cluster of those contacts (id, status, kind, members, primary);
* ``wouldDuplicate``: creating another contact with this key at this location makes a duplicate.

Only contacts of the asked location are considered: a token sees nothing of locations it may not see.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dedup.models import Cluster, ClusterMember, Contact, ContactKey, Location
from dedup.phones import normalize_email, normalize_phone
from dedup.records import MemberRecord
from dedup.survivorship import choose_primary
from podium_client.types import format_timestamp

LIVE_CLUSTER_STATES = (Cluster.OPEN, Cluster.APPROVED, Cluster.MERGING)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_INPUT = 320


class LookupRefused(Exception):
    """A request the lookup refuses: an HTTP status, a short code and a message for the integration."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def as_dict(self) -> dict[str, str]:
        return {"error": self.code, "message": self.message}


@dataclass(frozen=True)
class Query:
    """A validated lookup: which key, at which location (row id, uid, region)."""

    kind: str
    natural_key: str
    location_pk: int
    location_uid: str
    region: str


# Locations by uid, per process: a lookup then costs no query for them. A region an admin changes takes
# effect here within LOCATION_TTL_S.
LOCATION_TTL_S = 30.0
_locations: dict[str, tuple[float, tuple[int, str]]] = {}


def _location(uid: str) -> tuple[int, str] | None:
    """(row id, region) of a known location."""
    now = time.monotonic()
    cached = _locations.get(uid)
    if cached is not None and now - cached[0] < LOCATION_TTL_S:
        return cached[1]
    row = Location.objects.filter(uid=uid).values_list("pk", "country").first()
    if row is None:
        return None
    if len(_locations) > 10_000:
        _locations.clear()
    _locations[uid] = (now, (int(row[0]), str(row[1])))
    return _locations[uid][1]


def forget_locations() -> None:
    """Drop the per-process location cache (tests; after a location's region changed here)."""
    _locations.clear()


def parse_query(params: Mapping[str, str], allowed_location_uids: list[str]) -> Query:
    """Validate ``phone``/``email`` and ``location``; raises LookupRefused (400, or 404 out of scope)."""
    phone = (params.get("phone") or "").strip("\t\r\n")
    email = (params.get("email") or "").strip()
    location_uid = (params.get("location") or "").strip()
    if phone.strip() and email:
        raise LookupRefused(400, "bad_request", "give one of phone or email, not both")
    if not phone.strip() and not email:
        raise LookupRefused(400, "bad_request", "give a phone or an email to look up")
    if not location_uid:
        raise LookupRefused(
            400, "bad_request", "give the location (its Podium uid) the contact would be created at"
        )
    if len(location_uid) > 64 or len(phone) > _MAX_INPUT or len(email) > _MAX_INPUT:
        raise LookupRefused(400, "bad_request", "a parameter is too long")
    row = _location(location_uid)
    if row is None:
        raise LookupRefused(400, "unknown_location", f"no location {location_uid} is known")
    if location_uid not in allowed_location_uids:
        # As for people (dedup.access): a location outside the token's scope is not theirs.
        raise LookupRefused(404, "not_found", f"this token may not look up location {location_uid}")
    location_pk, region = row
    if phone.strip():
        # An unencoded "+" in a query string arrives as a space: " 61412…" was "+61412…".
        if phone[:1] == " " and phone.lstrip()[:1].isdigit():
            phone = "+" + phone.lstrip()
        result = normalize_phone(phone, region)
        if not result.valid or not result.e164:
            raise LookupRefused(400, "invalid_phone", f"{result.code}: the phone {result.reason}")
        return Query(ContactKey.PHONE, result.e164, location_pk, location_uid, region)
    key = normalize_email(email)
    if key is None:
        raise LookupRefused(400, "invalid_email", "the email has no @")
    return Query(ContactKey.EMAIL, key, location_pk, location_uid, region)


def _contact_json(row: tuple[Any, ...]) -> dict[str, Any]:
    _pk, uid, name, _loc, location_uids, _fields, updated_at = row
    return {
        "uid": uid,
        "name": name,
        "locationUids": list(location_uids or ()),
        "updatedAt": format_timestamp(updated_at) if updated_at else None,
    }


def _record(row: tuple[Any, ...]) -> MemberRecord:
    """Just what the primary rule reads (field count, ``updatedAt``, uid)."""
    _pk, uid, name, _loc, location_uids, field_count, updated_at = row
    return MemberRecord(
        uid=uid, location_uid="", name=name or "", phones=(), raw_phones=(), emails=(), raw_emails=(), tags=(),
        attributes=(), address=None, marketing_opt_out=False, sms_opt_out=False, email_opt_out=False,
        field_count=field_count, updated_at=updated_at or _EPOCH, location_uids=tuple(location_uids or ()),
    )  # fmt: skip


_FIELDS = ("pk", "uid", "name", "location_id", "location_uids", "field_count", "updated_at")


def _at_location(query: Query, location_id: int, location_uids: list[str] | None) -> bool:
    return query.location_uid in location_uids if location_uids else location_id == query.location_pk


def lookup(query: Query) -> dict[str, Any]:
    """The answer for one validated query (see the module docstring)."""
    holder_ids = list(
        ContactKey.objects.filter(key=query.natural_key, kind=query.kind).values_list("contact_id", flat=True)
    )
    matches: list[tuple[Any, ...]] = []
    if holder_ids:
        for row in Contact.objects.filter(
            pk__in=holder_ids, deleted_at__isnull=True, merged_into_uid=""
        ).values_list(*_FIELDS):
            if _at_location(query, row[3], row[4]):
                matches.append(row)
    matches.sort(key=lambda r: r[1])
    cluster = _cluster_of(query, [r[0] for r in matches]) if matches else None
    canonical: tuple[Any, ...] | None = None
    if cluster is not None:
        primary_uid = cluster["primaryUid"]
        canonical = next((r for r in matches if r[1] == primary_uid), None)
        if canonical is None:
            canonical = Contact.objects.filter(uid=primary_uid).values_list(*_FIELDS).first()
    if canonical is None and matches:
        chosen = choose_primary([_record(r) for r in matches]).uid
        canonical = next(r for r in matches if r[1] == chosen)
    return {
        "query": {
            "kind": query.kind.lower(),
            "naturalKey": query.natural_key,
            "location": query.location_uid,
            "region": query.region,
        },
        "contact": _contact_json(canonical) if canonical is not None else None,
        "matches": [_contact_json(r) for r in matches],
        "cluster": cluster,
        "wouldDuplicate": bool(matches),
    }


def _cluster_of(query: Query, contact_ids: list[int]) -> dict[str, Any] | None:
    """The newest live within-location cluster of this location holding one of these contacts."""
    cluster_ids = set(
        ClusterMember.objects.filter(contact_id__in=contact_ids).values_list("cluster_id", flat=True)
    )
    if not cluster_ids:
        return None
    row = (
        Cluster.objects.filter(
            pk__in=cluster_ids,
            status__in=LIVE_CLUSTER_STATES,
            cross_location=False,
            location_id=query.location_pk,
        )
        .order_by("-pk")
        .values(
            "pk",
            "cluster_id",
            "status",
            "kind",
            "confidence",
            "auto_merge",
            "suggested_primary_uid",
            "chosen_primary_uid",
        )  # fmt: skip
        .first()
    )
    if row is None:
        return None
    member_ids = list(ClusterMember.objects.filter(cluster_id=row["pk"]).values_list("contact_id", flat=True))
    member_uids = sorted(Contact.objects.filter(pk__in=member_ids).values_list("uid", flat=True))
    primary = (
        row["chosen_primary_uid"]
        if row["chosen_primary_uid"] and not row["auto_merge"]
        else row["suggested_primary_uid"]
    )
    return {
        "id": row["cluster_id"],
        "status": row["status"],
        "kind": row["kind"],
        "confidence": float(row["confidence"]),
        "memberUids": member_uids,
        "primaryUid": primary,
    }
