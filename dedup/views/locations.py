"""Locations and their parsing region: everyone sees their locations, admins set a missing region.

A location Podium gives no ``addressDetails.country`` is parsed with the deployment default until an
admin chooses its region here (audited; its contacts are then re-parsed in the background, with
progress on the Scans page). Such locations come first in the list, and the dashboard tells admins
about them (``templates/locations/_banner.html``).
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from dedup import access, regions, tallies
from dedup.models import Policy, ScanRun
from dedup.views.common import login_required


class LocationRegionForm(forms.Form):
    region = forms.ChoiceField(
        label="Region",
        help_text="The country this location's customers' national-format numbers belong to.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["region"]
        assert isinstance(field, forms.ChoiceField)
        field.choices = [("", "Choose a region…"), *regions.region_choices()]


@login_required
@require_GET
def location_list(request: HttpRequest) -> HttpResponse:
    access.require_perm(request, "dedup.view_location")
    locations = list(access.visible_locations(request.user).order_by("name", "pk"))
    # Active contacts homed at each location, from the tallies the database keeps (no count of the index).
    homed = tallies.active_contacts_by_home([loc.pk for loc in locations])
    reparsing = _active_reparses([loc.uid for loc in locations])
    rows = [
        {"location": loc, "contacts": homed.get(loc.pk, 0), "reparsing": reparsing.get(loc.uid)}
        for loc in sorted(locations, key=lambda loc: (not loc.needs_region, not loc.needs_reparse))
    ]
    return render(
        request,
        "locations/list.html",
        {
            "rows": rows,
            "is_admin": access.is_admin(request.user),
            "default_region": Policy.current().default_region,
            "needing_region": sum(1 for loc in locations if loc.needs_region),
        },
    )


@login_required
@require_http_methods(["GET", "POST"])
def location_region(request: HttpRequest, location_id: int) -> HttpResponse:
    location = access.get_location_for_user(request, location_id, write=True)
    form = LocationRegionForm(request.POST or None, initial={"region": location.region_override})
    status = 200
    if request.method == "POST":
        if location.podium_country:
            messages.error(request, f"Podium gives {location.name} the country {location.podium_country}; that is its region.")
            status = 409
        elif form.is_valid():
            change = regions.set_region(location, form.cleaned_data["region"], request.user)
            _report(request, change)
            return redirect(reverse("locations"))
        else:
            status = 400
    return render(
        request,
        "locations/region.html",
        {"location": location, "form": form, "default_region": Policy.current().default_region},
        status=status,
    )


@login_required
@require_POST
def location_reparse(request: HttpRequest, location_id: int) -> HttpResponse:
    """Re-parse a location's contacts now (a re-parse still pending, e.g. after a scan finished first)."""
    location = access.get_location_for_user(request, location_id, write=True)
    _report(request, regions.start_reparse(location, request.user))
    return redirect(reverse("locations"))


def _report(request: HttpRequest, change: regions.RegionChange) -> None:
    location = change.location
    if change.changed:
        messages.success(request, f"{location.name} now parses phone numbers as {location.country}. "
                                  "The change is in the audit log.")  # fmt: skip
        if change.reparse is None and change.waiting_for is None:
            return  # the region in force is the one its contacts were parsed with
    elif change.reparse is None and change.waiting_for is None:
        messages.info(request, f"{location.name} already had the region {location.country}; nothing changed.")
        return
    if change.reparse is not None:
        messages.success(request, f"Re-parsing the contacts of {location.name} with {location.country}: "
                                  f"scan #{change.reparse.pk} (progress on the Scans page).")  # fmt: skip
    elif change.waiting_for is not None:
        holder = change.waiting_for.holder
        messages.warning(request, f"Scan #{holder.pk} is {holder.state} for this location; it re-parses the "
                                  f"contacts of {location.name} with {location.country} when it finishes.")  # fmt: skip


def _active_reparses(uids: list[str]) -> dict[str, ScanRun]:
    active: dict[str, ScanRun] = {}
    for run in ScanRun.objects.filter(state__in=ScanRun.ACTIVE_STATES).order_by("created_at"):
        for uid in run.scope or uids:
            if uid in uids:
                active.setdefault(uid, run)
    return active

