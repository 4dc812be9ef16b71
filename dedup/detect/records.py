"""What detection's tables say about clusters and their members, for exports, merges and previews:
``cluster_to_dict`` (the NDJSON of ``manage.py clusters``), ``member_records`` / ``load_member_records``
(the domain view of indexed contacts, ``MemberRecord``)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.db.models import Prefetch, QuerySet

from dedup.consent import ChannelConsent
from dedup.dblimits import chunked, in_list_size
from dedup.detect.sql import EPOCH, tag_label
from dedup.models import Cluster, ClusterMember, Contact, ContactKey, Location
from dedup.phones import normalize_phone
from dedup.records import MemberRecord, normalize_email, phone_identity
from podium_client.types import Address, format_timestamp


def cluster_to_dict(cluster: Cluster) -> dict[str, Any]:
    """The NDJSON line of ``manage.py clusters`` for one cluster (members sorted by uid).

    Fetch the clusters with ``clusters_for_export`` when converting many.
    """
    members = sorted(cluster.members.all(), key=lambda m: m.contact.uid)
    return {
        "clusterId": cluster.cluster_id,
        "naturalKeys": list(cluster.natural_keys),
        "locationUid": None if cluster.cross_location or cluster.location is None else cluster.location.uid,
        "crossLocation": cluster.cross_location,
        "kind": cluster.kind,
        "confidence": float(cluster.confidence),
        "autoMerge": cluster.auto_merge,
        "status": cluster.status,
        "suggestedPrimaryUid": cluster.suggested_primary_uid,
        "reasons": list(cluster.reasons),
        "members": [
            {
                "contactUid": m.contact.uid,
                "locationUid": m.location.uid,
                "name": m.contact.name,
                "fieldCount": m.contact.field_count,
                "updatedAt": _iso(m.updated_at_when_scored or m.contact.updated_at),
                "marketingOptOut": m.contact.marketing_opt_out,
                "smsOptOut": m.contact.sms_opt_out,
                "emailOptOut": m.contact.email_opt_out,
            }
            for m in members
        ],
    }


def clusters_for_export(queryset: QuerySet[Cluster] | None = None) -> QuerySet[Cluster]:
    """Clusters with everything ``cluster_to_dict`` reads prefetched (a fixed number of queries).

    The members' contacts and locations come joined to the members, not prefetched through their
    foreign keys: Django 5.2 sends that prefetch to SQLite as one ``OR`` term per contact, which
    SQLite refuses past 1000 terms (``dedup.dblimits``). Iterate with ``chunk_size`` at most
    ``dedup.dblimits.in_list_size()``: each chunk's members are read with one ``IN`` list of its ids.
    """
    qs = queryset if queryset is not None else Cluster.objects.all()
    members = Prefetch("members", queryset=ClusterMember.objects.select_related("contact", "location"))
    return qs.select_related("location").prefetch_related(members)


def member_records(cluster: Cluster) -> list[MemberRecord]:
    """The domain view of a cluster's members as indexed, sorted by uid (for merging and previews)."""
    ids = list(cluster.members.values_list("contact_id", flat=True))
    records = load_member_records(ids)
    return sorted(records.values(), key=lambda r: r.uid)


def load_member_records(
    contact_ids: Sequence[int], location_uid_of: dict[int, str] | None = None
) -> dict[int, MemberRecord]:
    """``MemberRecord`` of indexed contacts by row id, in a few bulk queries.

    Phone channels are paired with their natural keys from the key table; a spelling the table does
    not hold (a second spelling of a number already keyed, or a phone in the uncategorized queue) is
    normalized again with the location's country, which costs nothing for the rare cases it serves.
    """
    if location_uid_of is None:
        location_uid_of = dict(Location.objects.values_list("pk", "uid"))
    region_of = dict(Location.objects.values_list("pk", "country"))
    result: dict[int, MemberRecord] = {}
    fields = (
        "pk", "uid", "location_id", "name", "channels", "tags", "attributes", "address", "field_count",
        "marketing_opt_out", "sms_opt_out", "email_opt_out", "updated_at", "location_uids", "conversations",
    )  # fmt: skip
    for chunk in chunked(list(contact_ids), in_list_size()):
        key_of: dict[int, dict[str, str]] = defaultdict(dict)
        for contact_id, raw, key in ContactKey.objects.filter(
            contact_id__in=chunk, kind=ContactKey.PHONE
        ).values_list("contact_id", "raw", "key"):
            key_of[contact_id][raw] = key
        for row in Contact.objects.filter(pk__in=chunk).values_list(*fields):
            (pk, uid, location_id, name, channels, tags, attributes, address, field_count,
             marketing, sms, email, updated_at, location_uids, conversations) = row  # fmt: skip
            keys = key_of.get(pk, {})
            region = region_of.get(location_id, "")
            phones: list[tuple[str, str | None]] = []
            emails: list[str] = []
            consent: list[ChannelConsent] = []
            for channel in channels or ():
                if not isinstance(channel, dict):
                    continue
                identifier = str(channel.get("identifier") or "")
                kind = str(channel.get("type") or "").upper()
                if kind == ContactKey.PHONE:
                    phone_key: str | None = keys.get(identifier)
                    if phone_key is None:
                        phone_key = normalize_phone(identifier, region).natural_key
                    phones.append((identifier, phone_key))
                    identity = phone_identity(phone_key, identifier)
                elif kind == ContactKey.EMAIL:
                    emails.append(identifier)
                    identity = normalize_email(identifier)
                else:
                    continue
                consent.append(
                    ChannelConsent(
                        kind=kind,
                        identity=identity,
                        identifier=identifier,
                        opted_in=frozenset(channel.get("marketingOptedInLocationUids") or ()),
                        transactional_opt_out=bool(channel.get("transactionalOptedOutAt")),
                    )
                )
            result[pk] = MemberRecord.build(
                uid=uid,
                location_uid=location_uid_of.get(location_id, ""),
                updated_at=updated_at or EPOCH,
                name=name or "",
                phone_channels=phones,
                raw_emails=emails,
                tags=[tag_label(t) for t in tags or ()],
                attributes=[
                    (str(a.get("label") or ""), _attribute_text(a.get("value")))
                    for a in attributes or ()
                    if isinstance(a, dict)
                ],
                address=_address_text(address),
                marketing_opt_out=marketing,
                sms_opt_out=sms,
                email_opt_out=email,
                field_count=field_count,
                location_uids=location_uids or (),
                consent=consent,
                tag_refs=[(t.get("uid"), str(t.get("label") or "")) for t in tags or () if isinstance(t, dict)],
                attribute_refs=[
                    (a.get("uid"), str(a.get("label") or ""), _attribute_text(a.get("value")))
                    for a in attributes or ()
                    if isinstance(a, dict)
                ],
                address_parts=address if isinstance(address, dict) else None,
                conversation_uids=conversations or (),
            )
    return result


def _attribute_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _address_text(address: Any) -> str | None:
    """An address object (or a pre-v4 string) as one line; None when it holds nothing."""
    if address is None or isinstance(address, str):
        return address or None
    if isinstance(address, dict):
        parsed = Address.from_wire(address)
        return None if parsed is None else parsed.one_line()
    return None


def _iso(value: datetime | None) -> str | None:
    return None if value is None else format_timestamp(value)
