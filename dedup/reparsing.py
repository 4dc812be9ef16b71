"""Re-parsing a location's indexed contacts after its region changed, from the index (no Podium calls).

A location's region is the default region its contacts' national-format numbers are parsed with, so
it decides their natural keys: "021 123 4567" is an Auckland mobile in NZ and a Sydney landline in AU.
The region in force changes when an admin sets the region of a location Podium gives no country for,
when Podium's ``addressDetails.country`` appears or changes, or when the deployment default changes for
a location that uses it. ``Location.region_parsed`` records the region the index last parsed the
location's contacts with; while it differs from ``Location.country`` the location is *stale*.

The index keeps every channel as typed, so a stale location's contacts (those whose home it is: the
home location's region parses a contact's numbers) are prepared again with the region in force and
rewritten by the ordinary ``IndexWriter``; their keys and uncategorized phones follow, and detection
re-reads what they now connect to. Scans do this at their end for the stale locations of their scope;
an admin's region change starts a ``reparse`` scan run that does only this (``dedup.regions``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace

from django.db import transaction
from django.db.models import F

from dedup.indexing import IndexWriter, PreparedContact, WriteResult, prepare_contact
from dedup.models import Contact, Location
from dedup.podium import indexed_contact_as_podium

logger = logging.getLogger(__name__)

# Contacts re-prepared and written per transaction.
BATCH_SIZE = 2000

OnBatch = Callable[[WriteResult, int], None]


def stale_locations(scope: Sequence[str] = ()) -> list[Location]:
    """Locations (of ``scope``, or all) whose contacts were parsed with another region than theirs."""
    locations = Location.objects.exclude(region_parsed=F("country"))
    if scope:
        locations = locations.filter(uid__in=list(scope))
    return list(locations.order_by("pk"))


def contacts_homed_at(location_ids: Sequence[int]) -> int:
    """How many indexed contacts have one of these locations as their home (what a re-parse rewrites)."""
    return Contact.objects.filter(location_id__in=list(location_ids)).count()


def reprepared(row: Contact, region: str) -> PreparedContact:
    """The index row prepared again, as Podium showed it when indexed, with ``region``."""
    contact = replace(
        indexed_contact_as_podium(row), deleted_at=row.deleted_at, merged_into_uid=row.merged_into_uid or None
    )
    return prepare_contact(contact, region)


def reparse_location(writer: IndexWriter, location: Location, on_batch: OnBatch | None = None) -> int:
    """Re-prepare every contact whose home is ``location`` with its region in force; returns how many.

    Each batch commits on its own, and ``on_batch(result, rows)`` runs inside that transaction (so a
    caller's progress and checkpoint commit with the rows). The location is marked parsed with its
    region at the end, unless the region changed again meanwhile: then it stays stale for the next pass.
    """
    region = Location.objects.values_list("country", flat=True).get(pk=location.pk)
    writer.reload_locations()
    last_pk = 0
    done = 0
    while True:
        rows = list(
            Contact.objects.filter(location_id=location.pk, pk__gt=last_pk).select_related("location").order_by("pk")[
                :BATCH_SIZE
            ]
        )
        if not rows:
            break
        last_pk = rows[-1].pk
        prepared = [reprepared(row, region) for row in rows]
        with transaction.atomic():
            result = writer.write(prepared)
            if on_batch is not None:
                on_batch(result, len(rows))
        done += len(rows)
    marked = Location.objects.filter(pk=location.pk, country=region).update(region_parsed=region)
    logger.info(
        "re-parsed %d contact(s) of location %s with region %s%s",
        done, location.uid, region, "" if marked else " (its region changed meanwhile; it stays stale)",
    )  # fmt: skip
    return done
