"""Helpers for tests that build the contact index without Podium: typed v4 contacts and the real indexer.

Locations have readable uids here (``loc_sydney`` ...); the demo corpus's UUID locations are for tests
that scan a corpus. ``contact(...)`` is ``tests.fixtures_emulator.make_contact`` parsed into the typed
``podium_client.Contact`` the indexer takes (soft-delete fields set when given, as a capability tenant
would report them); ``index(...)`` writes contacts with ``prepare_contact`` + ``IndexWriter``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime
from typing import Any

from dedup.indexing import IndexWriter, PreparedContact, prepare_contact
from dedup.models import Cluster
from podium_client import Contact as PodiumContact
from podium_client import Location as PodiumLocation
from tests.fixtures_emulator import make_contact

SYDNEY = PodiumLocation("loc_sydney", "Sydney CBD", "AU")
BURLEIGH = PodiumLocation("loc_burleigh", "Burleigh Heads", "AU")
AUCKLAND = PodiumLocation("loc_auckland", "Auckland", "NZ")
#: A location Podium gives no country for (``addressDetails.country`` null).
POPUP = PodiumLocation("loc_popup", "Pop-up Van", None)
LOCATIONS = (SYDNEY, BURLEIGH, AUCKLAND, POPUP)


def contact(
    uid: str,
    *,
    locations: Iterable[str] = ("loc_sydney",),
    deleted_at: datetime | None = None,
    merged_into_uid: str | None = None,
    **fields: Any,
) -> PodiumContact:
    """A typed v4 contact (``make_contact``'s keywords: name, phones, emails, tags, attributes, ...)."""
    parsed = PodiumContact.from_wire(make_contact(uid=uid, locations=tuple(locations), **fields))
    if deleted_at is not None or merged_into_uid is not None:
        parsed = replace(parsed, deleted_at=deleted_at, merged_into_uid=merged_into_uid)
    return parsed


def index(
    *contacts: PodiumContact, locations: Iterable[PodiumLocation] = LOCATIONS, default_region: str = "AU"
) -> list[PreparedContact]:
    """Write contacts into the index with the real indexer, each parsed with its home location's region."""
    writer = IndexWriter(default_region)
    writer.ensure_locations(locations)
    prepared = [prepare_contact(c, writer.region_for(c.location_uid or "")) for c in contacts]
    writer.write(prepared)
    return prepared


def open_clusters() -> set[tuple[object, ...]]:
    """The open clusters as comparable tuples: id, kind, confidence, auto-merge, reasons, suggested
    primary, member uids (two detections of the same index give equal sets)."""
    return {
        (c.cluster_id, c.kind, c.confidence, c.auto_merge, tuple(c.reasons), c.suggested_primary_uid,
         tuple(sorted(c.members.values_list("contact__uid", flat=True))))
        for c in Cluster.objects.filter(status=Cluster.OPEN)
    }  # fmt: skip
