"""The parsing region of a location: what an admin may choose, and changing it (audited, then re-parsed).

A location's national-format numbers are parsed with its region: Podium's ``addressDetails.country``
when it has one, else the region an admin set here, else the deployment default (``Location``). A
location with neither is shown to admins as needing one. Setting it records ``location.region_set`` in
the audit log and starts a ``reparse`` scan run that re-parses the location's indexed contacts with the
new region in the background, with progress on the Scans page (``dedup.reparsing``); when a scan of
that location is already running, that scan re-parses them when it finishes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import phonenumbers
from django.db import transaction

from dedup import audit
from dedup.models import Location, Policy, ScanRun
from dedup.scanning import ConcurrentRunError, start_scan


@cache
def region_choices() -> tuple[tuple[str, str], ...]:
    """Every ISO 3166 alpha-2 region phone numbers can be parsed in, as ``(code, "Name (CODE)")`` by name.

    The regions are libphonenumber's (a region it cannot parse in would be no use), named in English
    by its geocoder from one example number of each; the few it has no name for show their code.

    The geocoder is imported here, not with this module: importing it loads every prefix's place names
    (about 100 MB), and this module is imported with the URLconf, so by every web process and every
    ``manage.py`` command (Django's system checks load the URLconf). Only a process that shows an admin
    the region form pays for it.
    """
    from phonenumbers import geocoder

    named = []
    for code in phonenumbers.SUPPORTED_REGIONS:
        example = phonenumbers.example_number(code)
        name = geocoder.country_name_for_number(example, "en") if example is not None else ""
        named.append((name or code, code))
    return tuple((code, f"{name} ({code})") for name, code in sorted(named))


def is_region(code: str) -> bool:
    """Whether ``code`` is a region an admin may choose."""
    return code in phonenumbers.SUPPORTED_REGIONS


@dataclass(frozen=True)
class RegionChange:
    """What setting a region did: the location after it, and the re-parse started (or the scan that will)."""

    location: Location
    changed: bool
    reparse: ScanRun | None = None
    waiting_for: ConcurrentRunError | None = None


class RegionNotSettable(Exception):
    """Podium gives this location a country: that is its region, an admin's choice would not be used."""


def set_region(location: Location, region: str, user: Any) -> RegionChange:
    """Set the region an admin chose for ``location`` (audited) and re-parse its contacts if it changed.

    Raises ``RegionNotSettable`` for a location Podium gives a country (Podium's wins) and ValueError for
    a region phone numbers cannot be parsed in. The re-parse is a background scan run; when a scan of
    the location is queued or running, that scan re-parses them at its end instead (``waiting_for``).
    """
    region = region.strip().upper()
    if not is_region(region):
        raise ValueError(f"{region!r} is not a region phone numbers can be parsed in")
    actor, actor_id = audit.actor_for(user)
    with transaction.atomic():
        current = Location.objects.select_for_update().get(pk=location.pk)
        if current.podium_country:
            raise RegionNotSettable(
                f"Podium gives {current.name} the country {current.podium_country}; that is its region."
            )
        before = {"regionOverride": current.region_override or None, "region": current.country,
                  "source": current.region_source}  # fmt: skip
        if current.region_override == region:
            return RegionChange(current, changed=False)
        current.region_override = region
        current.country = Location.effective_region(current.podium_country, region, Policy.current().default_region)
        current.save(update_fields=["region_override", "country"])
        audit.record(
            "location.region_set",
            actor=actor,
            actor_user_id=actor_id,
            location_uids=[current.uid],
            payload={
                "location": current.uid,
                "name": current.name,
                "before": before,
                "after": {"regionOverride": region, "region": current.country, "source": current.region_source},
            },
        )
    if not current.needs_reparse:
        # The region in force did not change (the default was right): nothing to re-parse.
        return RegionChange(current, changed=True)
    return RegionChange(current, changed=True, **_start_reparse(current, user))


def start_reparse(location: Location, user: Any) -> RegionChange:
    """Re-parse a location's contacts with its region now (for a re-parse still pending)."""
    return RegionChange(location, changed=False, **_start_reparse(location, user))


def _start_reparse(location: Location, user: Any) -> dict[str, Any]:
    try:
        run = start_scan(locations=[location.uid], reparse=True, requested_by=user)
    except ConcurrentRunError as exc:
        return {"waiting_for": exc}
    return {"reparse": run}
